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
    assert {"rmse", "mae", "r2"} <= set(run.data.metrics)
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


def test_the_run_is_evaluated_on_the_held_out_rows_by_mlflows_evaluation_api(client, trained):
    metrics = client.get_run(trained.run_id).data.metrics
    # MLflow's regressor metrics, on the same 400 rows as the tutorial's own rmse.
    assert metrics["example_count"] == 400
    assert metrics["root_mean_squared_error"] == pytest.approx(metrics["rmse"], rel=1e-9)
    assert metrics["mean_absolute_error"] == pytest.approx(metrics["mae"], rel=1e-9)


def test_cpu_and_memory_are_logged_as_system_metrics(client, trained):
    metrics = client.get_run(trained.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert metrics["system/system_memory_usage_megabytes"] > 0


def inputs_of(client, run_id):
    """{context: (name, digest, source)} of a run's dataset inputs."""
    found = {}
    for dataset_input in client.get_run(run_id).inputs.dataset_inputs:
        contexts = [tag.value for tag in dataset_input.tags if tag.key == "mlflow.data.context"]
        for context in contexts:
            dataset = dataset_input.dataset
            found[context] = (dataset.name, dataset.digest, dataset.source)
    return found


def test_training_and_evaluation_data_are_datasets_with_equal_digests_on_equal_data(client, client_env, trained):
    first = inputs_of(client, trained.run_id)
    assert set(first) == {"training", "evaluation"}
    assert first["training"][1] != first["evaluation"][1]
    assert "winequality-red.csv" in first["training"][2]
    result = run_python("train.py", "0.3", "0.7", env=client_env)
    assert result.returncode == 0, result.stderr
    second_run, _ = printed_run(result.stdout)
    second = inputs_of(client, second_run)
    assert second == first  # other parameters, the same data: the same digests


def test_the_plots_are_png_files_that_are_not_blank(client, trained, tmp_path):
    from PIL import Image, ImageStat
    names = {artifact.path for artifact in client.list_artifacts(trained.run_id)}
    for plot in train.PLOTS:
        [name] = [n for n in names if n.startswith(plot) and n.endswith(".png")]
        path = Path(mlflow.artifacts.download_artifacts(run_id=trained.run_id, artifact_path=name,
                                                        dst_path=str(tmp_path)))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            assert image.width >= 300 and image.height >= 300
            # A drawn plot has many pixels off the background: its greys vary.
            assert ImageStat.Stat(image.convert("L")).stddev[0] > 10, name


def test_an_evaluation_that_fails_fails_the_run_and_registers_nothing(client, tracking_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    # In this process, mlflow.set_experiment sets MLFLOW_EXPERIMENT_ID and the active experiment: both are
    # put back afterwards, so that later tests (and the make commands they run) do not inherit them.
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    data = load_wine_data()
    model, train_x, metrics = train.train_model(data, 0.5, 0.5)
    before = len(client.search_model_versions("name = 'wine-quality'"))
    # The held-out rows lack a column the model's signature requires: MLflow's evaluation refuses them.
    broken = data.drop(columns=["alcohol"])
    with pytest.raises(train.EvaluationError, match="evaluating models:/m-"):
        train.log_training(model, train_x, metrics, {"alpha": 0.5, "l1_ratio": 0.5}, "wine-quality-broken",
                           "wine-quality", data=broken)
    [run] = client.search_runs([client.get_experiment_by_name("wine-quality-broken").experiment_id])
    assert run.info.status == "FAILED"
    assert len(client.search_model_versions("name = 'wine-quality'")) == before
