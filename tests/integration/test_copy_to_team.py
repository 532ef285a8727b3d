"""images/dev/copy_to_team.py between real tracking servers on 127.0.0.1: the session's server plays the
local stack (its SQLite file and artifact folder are the ./mlruns the tool reads), a second, empty
server plays team mode."""

import re
import subprocess

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from wine_data import load_wine_data

from tests.support.helpers import ROOT, VENV_BIN, background_process, free_port, tool_env

COPY = [str(VENV_BIN / "python"), str(ROOT / "images" / "dev" / "copy_to_team.py")]


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("team")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--serve-artifacts",
               "--artifacts-destination", str(root / "artifacts")]
    with background_process(command, root / "server.log", f"{url}/health", cwd=root,
                            env=tool_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")):
        yield url


def copy(tracking_server, team_server):
    result = subprocess.run([*COPY, "--mlruns", str(tracking_server.root)], capture_output=True, text=True,
                            timeout=600, env=tool_env(MLFLOW_TRACKING_URI=team_server))
    assert result.returncode == 0, result.stderr
    return re.search(r"copied (\d+) experiments, (\d+) runs, (\d+) logged models, (\d+) model versions",
                     result.stdout).groups()


def test_runs_models_and_artifacts_are_copied_once(tracking_server, trained, team_server, monkeypatch):
    first = copy(tracking_server, team_server)
    assert int(first[1]) >= 1 and int(first[3]) >= 1
    team = MlflowClient(team_server)
    runs = team.search_runs([team.get_experiment_by_name("wine-quality").experiment_id],
                            filter_string=f"tags.`devstack.copied_from` = '{trained.run_id}'")
    assert len(runs) == 1
    source = MlflowClient(tracking_server.url).get_run(trained.run_id)
    copied = runs[0]
    assert copied.data.params == source.data.params
    assert copied.data.metrics == source.data.metrics
    assert copied.info.status == source.info.status and copied.info.start_time == source.info.start_time
    assert "devstack.copying_from" in copied.data.tags  # where it came from, kept with the finished tag
    versions = team.search_model_versions(f"run_id = '{copied.info.run_id}'")
    assert [v.tags["devstack.copied_from"] for v in versions] == [f"wine-quality/{trained.version}"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server)
    model = mlflow.pyfunc.load_model(f"models:/wine-quality/{versions[0].version}")
    assert len(model.predict(load_wine_data().drop(columns="quality").head(3))) == 3
    local = MlflowClient(tracking_server.url)
    assert ([a.path for a in team.list_artifacts(copied.info.run_id)]
            == [a.path for a in local.list_artifacts(trained.run_id)])
    assert copy(tracking_server, team_server) == ("0", "0", "0", "0")


def test_an_unfinished_copy_is_made_again(tracking_server, team_server):
    local = MlflowClient(tracking_server.url)
    experiment = local.create_experiment("unfinished-copy")
    run = local.create_run(experiment)
    local.log_param(run.info.run_id, "kept", "yes")
    local.set_terminated(run.info.run_id)
    copy(tracking_server, team_server)
    team = MlflowClient(team_server)
    team_experiment = team.get_experiment_by_name("unfinished-copy").experiment_id
    [first] = team.search_runs([team_experiment])
    # As a crash between creating the copy and finishing it leaves it.
    team.delete_tag(first.info.run_id, "devstack.copied_from")
    assert copy(tracking_server, team_server)[1] == "1"
    [again] = team.search_runs([team_experiment])
    assert again.info.run_id != first.info.run_id
    assert again.data.tags["devstack.copied_from"] == run.info.run_id and again.data.params == {"kept": "yes"}
    assert team.get_run(first.info.run_id).info.lifecycle_stage == "deleted"


def test_no_local_database_is_one_line(tmp_path, team_server):
    result = subprocess.run([*COPY, "--mlruns", str(tmp_path)], capture_output=True, text=True, timeout=120,
                            env=tool_env(MLFLOW_TRACKING_URI=team_server))
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "no local runs" in result.stderr
