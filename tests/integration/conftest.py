"""Real processes on 127.0.0.1: an MLflow tracking server (SQLite, proxied artifacts in a temp dir),
the model trained against it by workspace/train.py, and both scoring servers on that model: the
stack's (scoring_app.py) and stock MLflow's, started the way the serve container starts them."""

from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from tests.support.helpers import (
    VENV_BIN,
    background_process,
    free_port,
    printed_run,
    run_python,
    scoring_server,
    tool_env,
)


@dataclass
class TrackingServer:
    url: str
    root: Path


@dataclass
class TrainedModel:
    run_id: str
    model_uri: str
    version: str


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    port = free_port()
    command = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
               "--serve-artifacts", "--artifacts-destination", str(root / "artifacts")]
    env = tool_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    url = f"http://127.0.0.1:{port}"
    with background_process(command, root / "server.log", f"{url}/health", env=env, cwd=root):
        # In-process MLflow calls of the tests (client, registry, model loading) use it too.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", url)
            yield TrackingServer(url, root)


@pytest.fixture(scope="session")
def client_env(tracking_server):
    # As the dev container has them: the tracking server, and promote's gate tolerance from .env.
    return tool_env(MLFLOW_TRACKING_URI=tracking_server.url, PROMOTE_TOLERANCE="0")


@pytest.fixture(scope="session")
def trained(client_env):
    result = run_python("train.py", "--alpha", "0.5", "--l1-ratio", "0.5", env=client_env)
    assert result.returncode == 0, result.stderr
    run_id, version = printed_run(result.stdout)
    return TrainedModel(run_id, f"models:/wine-quality/{version}", version)


@pytest.fixture(scope="session")
def model_dir(trained, tmp_path_factory):
    """The registered model, downloaded as the serve container downloads it."""
    return mlflow.artifacts.download_artifacts(artifact_uri=trained.model_uri,
                                               dst_path=str(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="session")
def stock_server(model_dir, tmp_path_factory):
    """Base URL of stock MLflow scoring (SERVE_SERVER=mlflow) on the model."""
    with scoring_server("mlflow", model_dir, tmp_path_factory.mktemp("stock")) as (base, _):
        yield base


@pytest.fixture(scope="session")
def devstack_server(model_dir, tmp_path_factory):
    """Base URL of the stack's scoring server (SERVE_SERVER=devstack, the default) on the model."""
    with scoring_server("devstack", model_dir, tmp_path_factory.mktemp("devstack")) as (base, _):
        yield base


@pytest.fixture(params=["devstack", "stock"])
def scoring_url(request):
    """/invocations of each scoring server in turn: both must pass the same protocol tests."""
    return request.getfixturevalue(f"{request.param}_server") + "/invocations"
