"""`make batch`'s checks on the host: what it refuses in one line, before any container starts."""

import pytest

from tests.unit.host.support import checkout, cli


@pytest.fixture
def folder(tmp_path):
    folder = checkout(tmp_path / "checkout")
    (folder / "in.csv").write_text("a,b\n1,2\n")
    (folder / "empty.csv").write_text("")
    (folder / "scored.parquet").mkdir()
    return folder


@pytest.mark.parametrize("args,line", [
    ([], "error: IN and OUT are needed: make batch IN=<file.csv|.parquet> OUT=<file.parquet|.csv>"),
    (["IN=in.csv"], "error: IN and OUT are needed"),
    (["IN=in.json", "OUT=o.csv"], "error: IN=in.json: unknown format '.json': use a .csv or .parquet file"),
    (["IN=in.csv", "OUT=o"], "error: OUT=o: unknown format '(no extension)'"),
    (["IN=missing.csv", "OUT=o.csv"], "error: IN=missing.csv: no such file"),
    (["IN=empty.csv", "OUT=o.csv"], "error: IN=empty.csv is empty"),
    (["IN=in.csv", "OUT=nowhere/o.csv"], "error: OUT=nowhere/o.csv cannot be written:"),
    (["IN=in.csv", "OUT=in.csv", "ENGINE=dask"], "error: ENGINE=dask: use ENGINE=spark"),
    (["IN=in.csv", "OUT=o.csv", "ENGINE=spark", "SPARK_MASTER=yarn"],
     "error: SPARK_MASTER=yarn: use local[*], local[N] or spark://host:port"),
    (["IN=in.csv", "OUT=o.csv", "ENGINE=spark", "SPARK_MASTER=spark://127.0.0.1:9"],
     "error: cannot reach SPARK_MASTER spark://127.0.0.1:9 within 5 s"),
])
def test_bad_arguments_are_one_line(folder, args, line):
    status, out, err = cli(folder, "batch", *args)
    assert status != 0
    assert err.startswith(line), err
    assert len(err.strip().splitlines()) == 1, err
    assert not (folder / "o.csv").exists()
    assert sorted(p.name for p in folder.iterdir()) == [".env", "empty.csv", "in.csv", "scored.parquet"]


def test_a_folder_is_not_an_output(folder):
    status, _, err = cli(folder, "batch", "IN=in.csv", "OUT=scored.parquet")
    assert status == 2
    assert err.strip() == "error: OUT=scored.parquet is a folder: name a file, e.g. OUT=scored.parquet/scored.parquet"
