"""images/serve/serve_model.py, the serve container's entry point, on the host."""

import json
import sys

import mlflow
import pytest
import requests
from wine_data import features_and_target, load_wine_data

from tests.support.helpers import ROOT, background_process, free_port, run_python, worker_pids

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


@pytest.mark.parametrize("server", ["devstack", "mlflow"])
def test_serves_the_model_with_its_workers_and_the_same_predictions(client_env, trained, tmp_path, server):
    port = free_port()
    command = [sys.executable, str(SERVE_MODEL), "--model-uri", trained.model_uri, "--host", "127.0.0.1",
               "--port", str(port)]
    rows, _ = features_and_target(load_wine_data().head(5))
    env = dict(client_env, SERVE_SERVER=server, SERVE_WORKERS="2")
    with background_process(command, tmp_path / "serve.log", f"http://127.0.0.1:{port}/ping", timeout=180,
                            env=env, cwd=tmp_path) as process:
        # exec'd into uvicorn's supervisor (no CLI left waiting), which runs the two workers
        assert len(worker_pids(process.pid)) == 2
        body = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
        predictions = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60).json()
    assert f"with the {server} scoring server" in (tmp_path / "serve.log").read_text()
    expected = mlflow.pyfunc.load_model(trained.model_uri).predict(rows)
    assert predictions["predictions"] == pytest.approx(list(expected), abs=1e-9)


@pytest.mark.parametrize("setting,value", [("SERVE_SERVER", "mlserver"), ("SERVE_WORKERS", "0"),
                                           ("SERVE_WORKERS", "two"), ("SERVE_MAX_REQUEST_MB", "-1"),
                                           ("SERVE_TIMEOUT", "soon"), ("SERVE_METRICS", "yes")])
def test_a_bad_setting_is_one_line_naming_it(client_env, setting, value):
    result = run_python(SERVE_MODEL, env=dict(client_env, **{setting: value}), timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith(f"serve: {setting}={value}: ")
    assert len(result.stderr.splitlines()) == 1


def test_check_loads_the_model_and_exits_without_serving(client_env, trained):
    result = run_python(SERVE_MODEL, "--model-uri", trained.model_uri, "--check", env=client_env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("can be served")


def test_check_of_a_missing_model_fails_in_one_line(client_env, trained):
    result = run_python(SERVE_MODEL, "--model-uri", "models:/wine-quality/999", "--check", env=client_env,
                        timeout=300)
    assert result.returncode == 1
    assert "cannot load models:/wine-quality/999" in result.stderr and "Traceback" not in result.stderr


def test_without_a_model_uri_it_says_what_sets_it(client_env):
    env = {key: value for key, value in client_env.items() if key != "MODEL_URI"}
    result = run_python(SERVE_MODEL, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr == ("serve: MODEL_URI is not set: run the server with make serve (it sets it from .env), "
                             "or give --model-uri\n")
