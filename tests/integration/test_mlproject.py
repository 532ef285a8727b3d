"""`mlflow run workspace` with the local env manager, against the tracking server."""

import subprocess

import pytest
from mlflow.tracking import MlflowClient

from helpers import ROOT, VENV_BIN


def test_mlflow_run_trains_with_the_given_parameters(tracking_server, client_env):
    result = subprocess.run(
        [str(VENV_BIN / "mlflow"), "run", str(ROOT / "workspace"), "--env-manager", "local",
         "--experiment-name", "mlproject", "-P", "alpha=0.3", "-P", "l1_ratio=0.2"],
        env=client_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_server.url)
    experiment = client.get_experiment_by_name("mlproject")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["alpha"] == "0.3" and run.data.params["l1_ratio"] == "0.2"
    assert run.data.metrics["rmse"] == pytest.approx(0.75, abs=0.1)
