"""images/serve/serve_model.py, the serve container's entry point, on the host."""

from mlflow.tracking import MlflowClient

import serve_model
from helpers import ROOT, run_python

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
