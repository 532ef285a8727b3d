"""workspace/MLproject as MLflow reads it: the tutorial's docker_env project on the stack's dev image."""

from mlflow.projects._project_spec import load_project

from tests.support.helpers import WORKSPACE


def test_the_project_runs_train_py_in_a_docker_env_on_the_dev_image():
    project = load_project(str(WORKSPACE))
    assert project.docker_env["image"] == "mlflow-devstack-project-base"
    assert ["MLFLOW_TRACKING_URI", "http://tracking:5000"] in project.docker_env["environment"]
    entry = project.get_entry_point("main")
    assert entry.compute_command({"alpha": "1.0", "l1_ratio": "1.0"}, storage_dir=None) == \
        "python train.py --alpha 1.0 --l1-ratio 1.0"
