"""images/batch/batch_score.py, the `make batch` job, on the host against the integration tracking
server and its registered model: the predictions are the stack's scoring server's, the output keeps
the input's columns, bad input gives one line and writes nothing, a killed job leaves nothing, and
memory does not grow with the file."""

import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from batch_score import sniff_delimiter
from wine_data import load_wine_data

from tests.support.batch import FEATURES, leftovers, read, served_predictions, wine_rows, write
from tests.support.helpers import ROOT

BATCH = ROOT / "images" / "batch" / "batch_score.py"
SUMMARY = re.compile(r"^batch: scored ([\d,]+) rows in [\d.]+ s \(([\d,]+) rows/s; [\d.]+ s in all\) with "
                     r"(\S+) \(([^)]*)\); peak memory ([\d,]+) MB$", re.M)


def batch(env, *args, timeout=600):
    return subprocess.run([sys.executable, str(BATCH), *map(str, args)], env=job_env(env), capture_output=True,
                          text=True, timeout=timeout)


def job_env(env):
    # As in the batch image: the model server's modules beside the job's.
    return dict(env, PYTHONPATH=str(ROOT / "images" / "serve"))


@pytest.fixture(scope="module")
def rows_200k():
    return wine_rows(200_000)


@pytest.mark.parametrize("in_format,out_format", [("csv", "parquet"), ("parquet", "csv")])
def test_predictions_are_the_scoring_servers(client_env, trained, devstack_server, rows_200k, tmp_path,
                                             in_format, out_format):
    source = tmp_path / f"in.{in_format}"
    write(rows_200k, source)
    out = tmp_path / f"out.{out_format}"
    result = batch(client_env, "--model-uri", trained.model_uri, "--in", source, "--out", out)
    assert result.returncode == 0, result.stderr
    scored = read(out)
    # The input's columns, in its order, with `prediction` last; the other columns kept as they were.
    assert list(scored.columns) == [*rows_200k.columns, "prediction"]
    assert (scored["id"].to_numpy() == rows_200k["id"].to_numpy()).all()
    assert np.allclose(scored[FEATURES].to_numpy(), rows_200k[FEATURES].to_numpy(), rtol=0, atol=1e-12)
    expected = served_predictions(f"{devstack_server}/invocations", rows_200k)
    assert np.abs(scored["prediction"].to_numpy() - expected).max() <= 1e-9
    summary = SUMMARY.search(result.stdout)
    assert summary, result.stdout
    assert summary.group(1) == "200,000"
    assert summary.group(3) == f"models:/wine-quality/{trained.version}"
    assert "Traceback" not in result.stderr
    assert leftovers(tmp_path, out.name) == []


def test_the_shipped_csv_and_the_progress_lines(client_env, trained, devstack_server, tmp_path):
    """The data set as shipped (semicolons, quoted names): its own columns, one progress line at the end."""
    out = tmp_path / "wine.parquet"
    shipped = ROOT / "workspace" / "data" / "winequality-red.csv"
    result = batch(client_env, "--model-uri", "models:/wine-quality", "--in", shipped, "--out", out)
    assert result.returncode == 0, result.stderr
    data = load_wine_data()
    scored = read(out)
    assert list(scored.columns) == [*data.columns, "prediction"]
    expected = served_predictions(f"{devstack_server}/invocations", data[FEATURES])
    assert np.abs(scored["prediction"].to_numpy() - expected).max() <= 1e-9
    assert re.search(r"^batch: 100%  1,599 rows  [\d,]+ rows/s$", result.stderr, re.M), result.stderr
    # models:/NAME is @champion if set, else the latest version: the summary says which.
    assert re.search(r"with models:/wine-quality/\d+ \((@champion|the latest version)\)", result.stdout)


def test_a_large_csv_shows_progress_as_it_goes(client_env, trained, tmp_path):
    """Progress lines come as the chunks are done (here every 0.1 s rather than 5): rows and percent rise."""
    source = tmp_path / "in.csv"
    write(wine_rows(600_000), source)
    out = tmp_path / "out.csv"
    result = batch(client_env, "--model-uri", trained.model_uri, "--in", source, "--out", out,
                   "--progress-every", "0.1")
    assert result.returncode == 0, result.stderr
    lines = re.findall(r"^batch: +(\d+)%  ([\d,]+) rows  ([\d,]+) rows/s$", result.stderr, re.M)
    assert len(lines) >= 3, result.stderr
    assert lines[-1][:2] == ("100", "600,000")
    done = [int(rows.replace(",", "")) for _, rows, _ in lines]
    percent = [int(p) for p, _, _ in lines]
    assert done == sorted(done) and percent == sorted(percent) and 0 < percent[0] < 100


BAD_INPUT = [
    # (what, how to make IN from good rows, the line expected)
    ("a column missing", lambda rows: rows.drop(columns="alcohol"), "IN has no column 'alcohol': the model needs"),
    ("a word for a number", lambda rows: rows.astype({"alcohol": object}).assign(
        alcohol=lambda f: f["alcohol"].where(f.index != 6, "lots")),
     "row 7 (line 8), column 'alcohol': 'lots' is not a number"),
    ("an empty value", lambda rows: rows.astype({"pH": object}).assign(
        pH=lambda f: f["pH"].where(f.index != 2, "")), "row 3 (line 4), column 'pH': no value"),
    ("a header and no rows", lambda rows: rows.head(0), "has no rows"),
    ("a prediction column already", lambda rows: rows.assign(prediction=1.0),
     "IN already has a column named 'prediction'"),
]


@pytest.mark.parametrize("what,make,expected", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_one_line_and_writes_nothing(client_env, trained, tmp_path, what, make, expected):
    source = tmp_path / "in.csv"
    make(wine_rows(20)).to_csv(source, index=False)
    out = tmp_path / "out.parquet"
    result = batch(client_env, "--model-uri", trained.model_uri, "--in", source, "--out", out)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("batch: ")]) == 1, result.stderr
    assert not out.exists()
    assert leftovers(tmp_path, out.name) == []


def test_a_bad_value_far_into_the_file_is_found_by_row(client_env, trained, tmp_path):
    """pyarrow fails on the block that holds it; the job names the row in the whole file."""
    rows = wine_rows(400_000).astype({"density": object})
    rows.loc[345_677, "density"] = "n/a?"
    source = tmp_path / "in.csv"
    rows.to_csv(source, index=False)  # pandas: pyarrow would not write a column of mixed types
    out = tmp_path / "out.parquet"
    result = batch(client_env, "--model-uri", trained.model_uri, "--in", source, "--out", out)
    assert result.returncode == 1
    assert "row 345,678 (line 345,679), column 'density': 'n/a?' is not a number" in result.stderr
    assert not out.exists() and leftovers(tmp_path, out.name) == []


@pytest.mark.parametrize("name,content,expected", [
    ("in.csv", b"", "is empty"),
    ("in.json", b"{}", "unknown format '.json': use a .csv or .parquet file"),
    ("in.parquet", b"not parquet at all", "is not a Parquet file"),
])
def test_unreadable_inputs(client_env, trained, tmp_path, name, content, expected):
    source = tmp_path / name
    source.write_bytes(content)
    out = tmp_path / "out.csv"
    result = batch(client_env, "--model-uri", trained.model_uri, "--in", source, "--out", out)
    assert result.returncode == 1
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and leftovers(tmp_path, out.name) == []


def test_a_model_that_does_not_exist(client_env, tmp_path):
    source = tmp_path / "in.csv"
    wine_rows(5).to_csv(source, index=False)
    out = tmp_path / "out.csv"
    result = batch(client_env, "--model-uri", "models:/no-such-model", "--in", source, "--out", out)
    assert result.returncode == 1
    assert "batch: cannot load models:/no-such-model" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and leftovers(tmp_path, out.name) == []


def test_a_killed_job_leaves_no_output_and_no_temporary_file(client_env, trained, tmp_path):
    source = tmp_path / "in.csv"
    write(wine_rows(2_000_000), source)
    out = tmp_path / "out.parquet"
    job = subprocess.Popen([sys.executable, str(BATCH), "--model-uri", trained.model_uri, "--in", str(source),
                            "--out", str(out)], env=job_env(client_env), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        # Mid-way: its temporary file beside OUT has its first rows.
        deadline = time.monotonic() + 300
        while not any((tmp_path / name).stat().st_size > 0 for name in leftovers(tmp_path, out.name)):
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline, "the job wrote nothing in 300 s"
            time.sleep(0.05)
        job.send_signal(signal.SIGTERM)
        _, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130, stderr
    assert "interrupted; nothing written" in stderr
    assert not out.exists()
    assert leftovers(tmp_path, out.name) == []


def test_memory_does_not_grow_with_the_file(client_env, trained, tmp_path):
    """Peak memory (the kernel's high-water mark, as the summary reports it) on a file 10 times larger."""
    peaks = []
    for count in (200_000, 2_000_000):
        source = tmp_path / f"in-{count}.csv"
        write(wine_rows(count), source)
        result = batch(client_env, "--model-uri", trained.model_uri, "--in", source, "--out", tmp_path / "o.parquet")
        assert result.returncode == 0, result.stderr
        peaks.append(int(SUMMARY.search(result.stdout).group(5).replace(",", "")))
        source.unlink()
    small, large = peaks
    assert large <= small * 1.25 + 64, f"peak memory {small} MB on 200k rows, {large} MB on 2M rows"


def test_delimiters_are_read_from_the_header():
    assert sniff_delimiter(b'"a";"b;c";"d"\n1;2;3\n') == ";"
    assert sniff_delimiter(b"a,b\tc\n") == ","
    assert sniff_delimiter(b"a\tb\tc\n") == "\t"
    assert sniff_delimiter(b"single\n") == ","


def test_a_full_disk_is_one_line_and_leaves_nothing(client_env, trained, tmp_path):
    """/dev/full: every write fails with ENOSPC, as on a full disk."""
    source = tmp_path / "in.csv"
    write(wine_rows(1000), source)
    result = batch(client_env, "--model-uri", trained.model_uri, "--in", source, "--out", "/dev/full",
                   "--out-format", "csv", "--direct")
    assert result.returncode == 1
    assert "batch: " in result.stderr and "nothing written" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_later_value_that_does_not_fit_an_extra_columns_type(client_env, trained, tmp_path):
    """Columns the model does not use keep the type of their first rows (int64 for `id`): a word far
    into the file is named by row, as a bad feature value is."""
    rows = wine_rows(300_000).astype({"id": object})
    rows.loc[299_990, "id"] = "x-17"
    source = tmp_path / "in.csv"
    rows.to_csv(source, index=False)
    out = tmp_path / "out.parquet"
    result = batch(client_env, "--model-uri", trained.model_uri, "--in", source, "--out", out)
    assert result.returncode == 1
    assert "row 299,991 (line 299,992), column 'id': 'x-17' does not fit the type its first rows gave the column " \
           "(int64)" in result.stderr
    assert not out.exists() and leftovers(tmp_path, out.name) == []
