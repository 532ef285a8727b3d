"""`make batch`, as users type it: a file scored in a container of the stack, with the predictions of
`make serve`; on one machine and on Spark (local, and the cluster of `make up SPARK=1`); stopped
mid-way or given bad input, it leaves nothing behind."""

import json
import os
import re
import signal
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from wine_data import load_wine_data

from tests.support.batch import FEATURES, leftovers, read, served_predictions, wine_rows, write

SHIPPED = "workspace/data/winequality-red.csv"
SUMMARY = re.compile(r"^batch: scored ([\d,]+) rows in .* with (models:/wine-quality/\d+) \([^)]*\)(.*); peak memory",
                     re.M)


def users_file(stack, name, make):
    """A file the user put in workspace/: made by make(path), owned by the containers' user as the
    folder's other files are (the tests run as root)."""
    path = stack.root / "workspace" / name
    make(path)
    os.chown(path, stack.app_uid, stack.app_uid if os.getuid() == 0 else os.getgid())
    return path


@pytest.fixture
def served_model(stack, served):
    """(the /invocations URL, the models:/ URI it serves): batch jobs name the same version."""
    logs = subprocess.run(["docker", "logs", stack.container_of("serve")], capture_output=True, text=True)
    uri = re.search(r"serve: serving (models:/wine-quality/\d+)", logs.stdout + logs.stderr).group(1)
    return served, uri


@pytest.fixture(scope="module")
def rows_200k(stack, tmp_path_factory):
    """200,000 generated rows, as CSV under workspace/ (where users keep their data)."""
    frame = wine_rows(200_000)
    users_file(stack, "rows-200k.csv", lambda path: write(frame, path))
    return frame


def test_the_shipped_csv_gets_the_servers_predictions(stack, served_model, tmp_path):
    url, model = served_model
    out = tmp_path / "wine.parquet"  # any host path, outside the checkout
    result = stack.make("batch", f"IN={SHIPPED}", f"OUT={out}", f"MODEL={model}", timeout=600)
    data = load_wine_data()
    scored = read(out)
    assert list(scored.columns) == [*data.columns, "prediction"]
    assert np.abs(scored["prediction"].to_numpy() - served_predictions(url, data[FEATURES])).max() <= 1e-9
    summary = SUMMARY.search(result.stdout)
    assert summary and summary.group(1) == "1,599" and summary.group(2) == model, result.stdout
    assert re.search(r"^batch: 100%  1,599 rows  [\d,]+ rows/s$", result.stderr, re.M), result.stderr
    assert f"Wrote {out}" in result.stdout
    # OUT is the user's, whoever the containers run as.
    assert (out.stat().st_uid, out.stat().st_gid) == (os.getuid(), os.getgid())
    assert leftovers(tmp_path, out.name) == []


def test_200k_rows_in_any_column_order_to_csv(stack, served_model, rows_200k):
    url, model = served_model
    stack.make("batch", "IN=workspace/rows-200k.csv", "OUT=workspace/scored-200k.csv", f"MODEL={model}", timeout=600)
    out = stack.root / "workspace" / "scored-200k.csv"
    # Under workspace/, OUT is the containers' user's, as make up hands the folder over (JupyterLab can change it).
    assert out.stat().st_uid == stack.app_uid
    scored = read(out)
    assert list(scored.columns) == [*rows_200k.columns, "prediction"]
    assert (scored["id"].to_numpy() == rows_200k["id"].to_numpy()).all()
    assert np.abs(scored["prediction"].to_numpy() - served_predictions(url, rows_200k)).max() <= 1e-9


def start_batch(stack, *args):
    return subprocess.Popen(stack.as_user(["make", "--no-print-directory", "batch", *args]), cwd=stack.root,
                            env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_until_writing(job, folder, out_name, timeout=600):
    """Until the job's temporary file beside OUT holds its first rows: the job is mid-way."""
    deadline = time.monotonic() + timeout
    while not any((folder / name).stat().st_size > 0 for name in leftovers(folder, out_name)):
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, f"make batch wrote nothing in {timeout} s"
        time.sleep(0.1)


def job_containers(stack):
    found = subprocess.run(["docker", "ps", "-aq", "--filter", f"name={stack.project}-batch-"],
                           capture_output=True, text=True)
    return found.stdout.split()


@pytest.fixture(scope="module")
def big_csv(stack, tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "rows-4m.csv"
    write(wine_rows(4_000_000, seed=1), path)
    return path


@pytest.mark.parametrize("how", ["ctrl-c", "container killed"])
def test_a_job_stopped_mid_way_leaves_nothing(stack, trained_run, big_csv, tmp_path, how):
    out = tmp_path / "scored.parquet"
    job = start_batch(stack, f"IN={big_csv}", f"OUT={out}")
    try:
        wait_until_writing(job, tmp_path, out.name)
        if how == "ctrl-c":
            os.killpg(job.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole foreground group
        else:
            subprocess.run(["docker", "kill", *job_containers(stack)], check=True, capture_output=True)
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0
    assert "Traceback" not in stderr
    assert not out.exists()
    assert leftovers(tmp_path, out.name) == []
    assert job_containers(stack) == []


BAD = [
    # (what, make's arguments, the line expected, the CLI's exit status: make itself exits 2 on any)
    ("no IN", ["OUT=x.parquet"], "error: IN and OUT are needed: make batch IN=", 2),
    ("IN missing", ["IN=workspace/no-such.csv", "OUT=x.parquet"], "error: IN=workspace/no-such.csv: no such file", 2),
    ("unknown format", ["IN=workspace/MLproject", "OUT=x.parquet"], "unknown format '(no extension)'", 2),
    ("OUT's folder missing", [f"IN={SHIPPED}", "OUT=/no/such/folder/x.csv"], "/no/such/folder does not exist", 2),
    ("OUT unknown format", [f"IN={SHIPPED}", "OUT=x.xlsx"], "error: OUT=x.xlsx: unknown format '.xlsx'", 2),
    ("bad ENGINE", [f"IN={SHIPPED}", "OUT=x.csv", "ENGINE=dask"], "ENGINE=dask: use ENGINE=spark", 2),
    ("bad SPARK_MASTER", [f"IN={SHIPPED}", "OUT=x.csv", "ENGINE=spark", "SPARK_MASTER=yarn"],
     "SPARK_MASTER=yarn: use local[*], local[N] or spark://host:port", 2),
    ("no such model", [f"IN={SHIPPED}", "OUT=x.csv", "MODEL=models:/no-such-model"],
     "batch: cannot load models:/no-such-model", 1),
    ("a column missing", ["IN=workspace/no-alcohol.csv", "OUT=x.csv"], "IN has no column 'alcohol'", 1),
    ("a word for a number", ["IN=workspace/a-word.csv", "OUT=x.csv"],
     "row 3 (line 4), column 'pH': 'high' is not a number", 1),
]


@pytest.mark.parametrize("what,args,expected,status", BAD, ids=[case[0] for case in BAD])
def test_bad_input_is_one_line_and_writes_nothing(stack, trained_run, what, args, expected, status):
    rows = wine_rows(10)
    users_file(stack, "no-alcohol.csv", lambda path: write(rows.drop(columns="alcohol"), path))
    words = rows.astype({"pH": object})
    words.loc[2, "pH"] = "high"
    users_file(stack, "a-word.csv", lambda path: words.to_csv(path, index=False))
    result = stack.make("batch", *args, check=False, timeout=600)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"batch] Error {status}" in result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    # One line says what is wrong (a missing model's comes with the fix: make train, or MODEL=).
    problems = [line for line in result.stderr.splitlines() if line.startswith(("error:", "batch: "))
                and "%" not in line and "make train" not in line]
    assert len(problems) == 1, result.stderr
    # Nothing but that line (and make's own): no Compose chatter, no exit status echoed.
    others = [line for line in result.stderr.splitlines() if line not in problems and not line.startswith(
        ("make: ", "note: EXTRA_CA_CERTS", "batch: train and register"))]
    assert others == [], result.stderr
    assert not list(stack.root.glob("x.*")) and not list(stack.root.glob(".x.*"))


def spark_predictions(stack, source, out, *args):
    result = stack.make("batch", "ENGINE=spark", f"IN={source}", f"OUT={out}", *args, timeout=1800)
    summary = SUMMARY.search(result.stdout)
    assert summary, result.stdout + result.stderr
    return read(stack.root / out), summary


def test_spark_local_mode_gives_the_same_predictions(stack, served_model, rows_200k):
    url, model = served_model
    scored, summary = spark_predictions(stack, "workspace/rows-200k.csv", "workspace/spark-local.parquet",
                                        f"MODEL={model}")
    assert summary.group(3) == ", on Spark local[*]"
    assert list(scored.columns) == [*rows_200k.columns, "prediction"]
    assert np.abs(scored["prediction"].to_numpy() - served_predictions(url, rows_200k)).max() <= 1e-9


def test_an_unreachable_spark_master_fails_soon_naming_it(stack, trained_run):
    started = time.monotonic()
    result = stack.make("batch", "ENGINE=spark", f"IN={SHIPPED}", "OUT=x.csv", "SPARK_MASTER=spark://127.0.0.1:9",
                        check=False, timeout=120)
    assert result.returncode != 0
    assert "cannot reach SPARK_MASTER spark://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 60
    assert not list(stack.root.glob("x.*"))


def spark_json(url):
    with urllib.request.urlopen(f"{url}/json/", timeout=10) as answer:
        return json.load(answer)


def test_spark_cluster_of_make_up_runs_the_job_on_its_executors(stack, served_model, rows_200k):
    url, model = served_model
    up = stack.make("up", "SPARK=1", timeout=1800)
    ui = stack.url("SPARK_UI_PORT")
    try:
        assert f"Spark UI     {ui}" in up.stdout
        assert len([w for w in spark_json(ui)["workers"] if w["state"] == "ALIVE"]) == 2
        scored, summary = spark_predictions(stack, "workspace/rows-200k.csv", "workspace/spark-cluster.parquet",
                                            f"MODEL={model}")
        assert summary.group(3) == ", on Spark spark://spark-master:7077 (2 executors)"
        assert np.abs(scored["prediction"].to_numpy() - served_predictions(url, rows_200k)).max() <= 1e-9
        # The master saw the job finish with both workers' cores, and each worker ran an executor of it.
        apps = [app for app in spark_json(ui)["completedapps"] if app["name"] == "devstack-batch"]
        assert apps and apps[-1]["cores"] == 2 and apps[-1]["state"] == "FINISHED", apps
        for worker in ("spark-worker-1", "spark-worker-2"):
            status = subprocess.run(["docker", "exec", stack.container_of(worker), "python", "-c",
                                     "import urllib.request as r; print(r.urlopen('http://localhost:8081/json/').read().decode())"],
                                    capture_output=True, text=True, check=True)
            executors = json.loads(status.stdout)["finishedexecutors"]
            assert any(e["appid"] == apps[-1]["id"] for e in executors), (worker, executors)
    finally:
        stack.make("up", timeout=1800)  # without SPARK=1: the cluster goes
    assert not stack.container_of("spark-master")
