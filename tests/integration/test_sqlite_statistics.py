"""images/tracking/bin/sqlite-plan-statistics on a real MLflow SQLite database: with its statistics,
SQLite indexes the metric sub-query of a run search instead of scanning it once per run."""

import sqlite3
import subprocess
import sys

import pytest
from mlflow.entities import Metric, ViewType
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from sqlalchemy import event

from tests.support.helpers import ROOT

SCRIPT = ROOT / "images" / "tracking" / "bin" / "sqlite-plan-statistics"


@pytest.fixture
def store_and_search(tmp_path):
    """A store with a few runs, and the plan SQLite picks for MLflow's own top-10-by-rmse query."""
    path = tmp_path / "mlflow.db"
    store = SqlAlchemyStore(f"sqlite:///{path}", str(tmp_path / "artifacts"))
    experiment = store.create_experiment("plans")
    for number in range(3):
        run = store.create_run(experiment, "user", number, [], f"run{number}")
        store.log_batch(run.info.run_id, metrics=[Metric("rmse", number / 10, 0, 0)], params=[], tags=[])
    statements = []
    event.listen(store.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, params, *_: statements.append((statement, params)))
    store.search_runs([experiment], "metrics.rmse < 1", ViewType.ACTIVE_ONLY, 10, ["metrics.rmse"])
    store.engine.dispose()
    [(search, params)] = [(s, p) for s, p in statements if "latest_metrics" in s and "ORDER BY" in s]

    def plan():
        with sqlite3.connect(path) as db:
            return [row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {search}", params)]
    return path, plan


def test_without_statistics_sqlite_scans_the_metric_subquery_per_run(store_and_search):
    _, plan = store_and_search
    assert any(step.startswith("SCAN anon_1") for step in plan())


def test_with_them_it_indexes_it(store_and_search):
    path, plan = store_and_search
    result = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    steps = plan()
    assert not any(step.startswith("SCAN anon_1") for step in steps), steps
    assert any("AUTOMATIC COVERING INDEX" in step for step in steps), steps


def test_a_database_without_tables_is_an_error_and_none_is_created(tmp_path):
    missing = tmp_path / "mlflow.db"
    assert subprocess.run([sys.executable, str(SCRIPT), str(missing)], capture_output=True).returncode != 0
    assert not missing.exists()
    sqlite3.connect(missing).close()
    assert subprocess.run([sys.executable, str(SCRIPT), str(missing)], capture_output=True).returncode == 1
