"""images/serve/serve_model.py, the serve container's entry point, on the host."""

import json
import subprocess
import sys

import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient

import serve_model
from helpers import ROOT, background_process, free_port, run_python
from wine_data import features_and_target, load_wine_data

SERVE_MODEL = ROOT / "images" / "serve" / "serve_model.py"


def test_missing_model_is_one_clear_message(client_env):
    result = run_python(SERVE_MODEL, "--model-uri", "models:/no-such-model/latest", env=client_env, timeout=120)
    assert result.returncode == 1
    assert "no registered model named 'no-such-model'" in result.stderr
    assert "make train" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_version_is_one_clear_message(client_env, trained):
    result = run_python(SERVE_MODEL, "--model-uri", "models:/wine-quality/999", env=client_env, timeout=120)
    assert result.returncode == 1
    assert "cannot load models:/wine-quality/999" in result.stderr
    assert "Traceback" not in result.stderr


def test_latest_resolves_to_the_highest_version(client_env, trained):
    client = MlflowClient(client_env["MLFLOW_TRACKING_URI"])
    highest = max(int(v.version) for v in client.search_model_versions("name = 'wine-quality'"))
    assert serve_model.resolve("models:/wine-quality/latest", client) == f"models:/wine-quality/{highest}"
    assert serve_model.resolve("models:/wine-quality/1", client) == "models:/wine-quality/1"


def test_serves_the_model_as_one_process_with_the_same_predictions(client_env, trained, tmp_path):
    port = free_port()
    command = [sys.executable, str(SERVE_MODEL), "--model-uri", trained.model_uri, "--host", "127.0.0.1",
               "--port", str(port)]
    rows, _ = features_and_target(load_wine_data().head(5))
    with background_process(command, tmp_path / "serve.log", f"http://127.0.0.1:{port}/ping", timeout=180,
                            env=client_env, cwd=tmp_path) as process:
        # exec'd into the scoring server: no child process left waiting beside it
        assert subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True).stdout == b""
        body = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
        predictions = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60).json()
    expected = mlflow.pyfunc.load_model(trained.model_uri).predict(rows)
    assert predictions["predictions"] == pytest.approx(list(expected), abs=1e-9)
