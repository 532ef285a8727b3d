"""`make batch` side by side, in one run, on the same 1M-row CSV of the wine columns and the same model:
against stock `mlflow models predict -m <model> -i in.csv -o out.json --env-manager local` (in the
batch image, a one-off container of the same stack, as `make batch` runs), and against itself with
ENGINE=spark in local mode and on the two-worker cluster of `make up SPARK=1`. Then its peak memory
on 1M and on 10M rows. Each command is timed whole, as users wait for it: rows / seconds."""

import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from wine_data import TARGET, load_wine_data

ROUNDS = 2
SUMMARY = re.compile(r"batch: scored ([\d,]+) rows in ([\d.]+) s \(([\d,]+) rows/s; ([\d.]+) s in all\) with "
                     r"(\S+) .*peak memory ([\d,]+) MB")


def wine_csv(path, count, seed=0):
    """count rows of the wine features (sampled, with noise), comma-separated with a header."""
    data = load_wine_data().drop(columns=[TARGET])
    rows = data.sample(n=count, replace=True, random_state=seed).reset_index(drop=True)
    rows = rows + np.random.default_rng(seed).normal(scale=0.01, size=rows.shape)
    pacsv.write_csv(pa.Table.from_pandas(rows, preserve_index=False), path)
    return path


def seconds(action):
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def make_batch(stack, source, out, *args):
    """(wall seconds, the job's summary as a match) of one `make batch`."""
    took, result = seconds(lambda: stack.make("batch", f"IN={source}", f"OUT={out}", *args, timeout=3600))
    summary = SUMMARY.search(result.stdout)
    assert summary, result.stdout + result.stderr
    return took, summary


def stock_predict(stack, source, model):
    """Wall seconds of stock `mlflow models predict` on source, in a one-off container of the batch image."""
    folder = Path(tempfile.mkdtemp(prefix="stock-out."))
    settings = stack.settings()
    if settings.is_root:
        os.chown(folder, int(settings.app_uid), int(settings.app_gid))
    command = [*stack.compose, "--profile", "jobs", "run", "--rm", "--no-deps", "-T",
               "-v", f"{source}:/data/in.csv:ro", "-v", f"{folder}:/data/out", "batch",
               "mlflow", "models", "predict", "-m", model, "-i", "/data/in.csv", "-o", "/data/out/out.json",
               "--content-type", "csv", "--env-manager", "local"]
    try:
        took, result = seconds(lambda: subprocess.run(command, cwd=stack.root, env=stack.compose_env(),
                                                      capture_output=True, text=True, timeout=3600))
        assert result.returncode == 0 and (folder / "out.json").stat().st_size > 0, result.stderr[-2000:]
    finally:
        subprocess.run(["rm", "-rf", str(folder)])
    return took


def side_by_side(stack, parent, rows=1_000_000, large=10_000_000):
    """{figure: value}: rows/s of each way (medians of ROUNDS where a way is quick), their ratios,
    and the batch job's peak memory on `rows` and on `large` rows."""
    parent.mkdir(parents=True, exist_ok=True)
    source = wine_csv(parent / "in-1m.csv", rows)
    out = parent / "out.parquet"
    model = SUMMARY.search(stack.make("batch", f"IN={source}", f"OUT={out}").stdout).group(5)  # warm, and which
    timings = {"stock": [], "make batch": []}
    summaries = []
    for _ in range(ROUNDS):  # alternating, so that both see the same machine
        timings["stock"].append(stock_predict(stack, source, model))
        took, summary = make_batch(stack, source, out, f"MODEL={model}")
        timings["make batch"].append(took)
        summaries.append(summary)
    took, spark_local = make_batch(stack, source, out, f"MODEL={model}", "ENGINE=spark", "SPARK_MASTER=local[*]")
    timings["ENGINE=spark, local[*]"] = [took]
    stack.make("up", "SPARK=1", timeout=3600)
    try:
        took, spark_cluster = make_batch(stack, source, out, f"MODEL={model}", "ENGINE=spark")
        assert "2 executors" in spark_cluster.group(0), spark_cluster.group(0)
        timings["ENGINE=spark, 2-worker cluster"] = [took]
    finally:
        stack.make("up", timeout=3600)
    figures = {"rows": rows, "model": model}
    rate = {name: rows / statistics.median(values) for name, values in timings.items()}
    for name, value in rate.items():
        figures[f"{name}: rows/s, whole command"] = round(value)
        figures[f"{name}: seconds, whole command"] = round(statistics.median(timings[name]), 2)
    figures["make batch / stock mlflow models predict (rows/s)"] = round(rate["make batch"] / rate["stock"], 1)
    for name, summary in (("make batch", summaries[-1]), ("ENGINE=spark, local[*]", spark_local),
                          ("ENGINE=spark, 2-worker cluster", spark_cluster)):
        figures[f"{name}: rows/s, scoring only (read, score, write)"] = int(summary.group(3).replace(",", ""))
    for name in ("ENGINE=spark, local[*]", "ENGINE=spark, 2-worker cluster"):
        figures[f"make batch / {name} (rows/s)"] = round(rate["make batch"] / rate[name], 1)
    figures[f"peak memory, {rows:,} rows (MB)"] = int(summaries[-1].group(6).replace(",", ""))
    source.unlink()
    big = wine_csv(parent / "in-10m.csv", large)
    _, summary = make_batch(stack, big, out, f"MODEL={model}")
    figures[f"peak memory, {large:,} rows (MB)"] = int(summary.group(6).replace(",", ""))
    figures[f"make batch, {large:,} rows: rows/s, scoring only"] = int(summary.group(3).replace(",", ""))
    big.unlink()
    out.unlink(missing_ok=True)
    return figures


def print_table(figures):
    print("\nmake batch, side by side (one run)")
    for name, value in figures.items():
        print(f"  {name:<62} {value:>12}")
