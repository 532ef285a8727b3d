"""train.py against a real tracking server over HTTP, checked through MlflowClient."""

from importlib.metadata import version
from pathlib import Path

import mlflow
import pytest
import train
import yaml
from mlflow.tracking import MlflowClient
from wine_data import features_and_target, load_wine_data

from tests.support.helpers import printed_run, run_python


@pytest.fixture(scope="module")
def client(tracking_server):
    return MlflowClient(tracking_server.url)


def test_run_has_params_and_metrics(client, trained):
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"alpha": "0.5", "l1_ratio": "0.5"}
    assert run.data.metrics["rmse"] == pytest.approx(0.79, abs=0.01)
    assert set(run.data.metrics) == {"rmse", "mae", "r2"}
    assert client.get_experiment(run.info.experiment_id).name == "wine-quality"


def test_a_new_registered_version_points_at_the_run(client, trained):
    version = client.get_model_version("wine-quality", trained.version)
    assert version.run_id == trained.run_id
    assert version.status == "READY"


def test_model_artifacts_have_signature_and_example_and_sit_on_the_server(trained, tracking_server, tmp_path):
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=trained.model_uri, dst_path=str(tmp_path)))
    assert {"MLmodel", "model.skops", "input_example.json", "requirements.txt"} <= {p.name for p in local.iterdir()}
    signature = yaml.safe_load((local / "MLmodel").read_text())["signature"]
    assert "alcohol" in signature["inputs"] and "quality" not in signature["inputs"]
    # Proxied artifacts: the files live in the server's artifact destination.
    assert list((tracking_server.root / "artifacts").rglob("model.skops"))


def test_the_model_requires_exactly_the_installed_versions(trained, tmp_path):
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=trained.model_uri, dst_path=str(tmp_path)))
    requirements = (local / "requirements.txt").read_text().split()
    expected = {f"{package}=={version(package)}" for package in
                ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy", "cloudpickle")}
    assert set(requirements) == expected


def test_registered_model_loads_and_predicts_as_trained(trained):
    model = mlflow.pyfunc.load_model(f"models:/wine-quality/{trained.version}")
    data = load_wine_data()
    expected_model, _, _ = train.train_model(data, 0.5, 0.5)
    inputs, _ = features_and_target(data.head(20))
    assert model.predict(inputs) == pytest.approx(expected_model.predict(inputs))


def test_each_training_registers_a_further_version(client_env, trained):
    result = run_python("train.py", "0.1", "0.9", env=client_env)
    assert result.returncode == 0, result.stderr
    _, version = printed_run(result.stdout)
    assert int(version) > int(trained.version)
