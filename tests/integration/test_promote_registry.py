"""promote.py against a real tracking server, and what `make serve` then resolves to."""

import pytest
import serve_model
from mlflow.tracking import MlflowClient

from tests.support.helpers import run_python


@pytest.fixture(scope="module")
def client(client_env, trained):
    # A second, better version (less regularisation gives a lower rmse on this split).
    result = run_python("train.py", "--alpha", "0.0001", "--l1-ratio", "0.5", env=client_env)
    assert result.returncode == 0, result.stderr
    client = MlflowClient(client_env["MLFLOW_TRACKING_URI"])
    yield client
    if "champion" in client.get_registered_model("wine-quality").aliases:
        client.delete_registered_model_alias("wine-quality", "champion")


def rmse_by_version(client):
    return {v.version: client.get_run(v.run_id).data.metrics["rmse"]
            for v in client.search_model_versions("name = 'wine-quality'")}


def test_promote_moves_champion_to_the_lowest_rmse_and_serve_follows(client, client_env):
    scores = rmse_by_version(client)
    best = min(scores, key=lambda v: (scores[v], -int(v)))
    result = run_python("promote.py", env=client_env)
    assert result.returncode == 0, result.stderr
    assert f"@champion: wine-quality version {best} (rmse {scores[best]:.4f})" in result.stdout
    assert client.get_model_version_by_alias("wine-quality", "champion").version == best
    assert serve_model.resolve("models:/wine-quality", client) == (f"models:/wine-quality/{best}", "@champion")
    again = run_python("promote.py", env=client_env)
    assert f"@champion already on wine-quality version {best}" in again.stdout


def test_a_worse_version_is_refused_with_both_figures_and_forced_past_the_gate(client, client_env):
    scores = rmse_by_version(client)
    best, worst = min(scores, key=scores.get), max(scores, key=scores.get)
    assert scores[worst] > scores[best]
    client.set_registered_model_alias("wine-quality", "champion", best)
    refused = run_python("promote.py", "--version", worst, env=client_env)
    assert refused.returncode == 1
    [line] = refused.stderr.splitlines()
    assert f"version {worst} (rmse {scores[worst]:.4f})" in line and f"version {best} (rmse {scores[best]:.4f})" in line
    assert f"@champion stays on version {best} (FORCE=yes moves it anyway)" in line
    assert client.get_model_version_by_alias("wine-quality", "champion").version == best
    tags = client.get_model_version("wine-quality", worst).tags
    assert tags["devstack.gate.decision"] == "refused"
    assert float(tags["devstack.gate.rmse"]) == pytest.approx(scores[worst], abs=1e-6)
    assert tags["devstack.gate.current_version"] == best
    forced = run_python("promote.py", "--version", worst, "--force", env=client_env)
    assert forced.returncode == 0, forced.stderr
    assert f"@champion: wine-quality version {worst}" in forced.stdout and "moved anyway (FORCE=yes)" in forced.stdout
    assert f"was version {best}" in forced.stdout
    assert client.get_model_version("wine-quality", worst).tags["devstack.gate.decision"] == "forced"
    assert serve_model.resolve("models:/wine-quality@champion", client) == (f"models:/wine-quality/{worst}",
                                                                           "@champion")
    back = run_python("promote.py", "--version", best, env=client_env)
    assert back.returncode == 0 and "better by" in back.stdout


def test_within_the_tolerance_a_slightly_worse_version_moves(client, client_env):
    scores = rmse_by_version(client)
    best, worst = min(scores, key=scores.get), max(scores, key=scores.get)
    client.set_registered_model_alias("wine-quality", "champion", best)
    allowed = scores[worst] / scores[best]  # the tolerance that just lets it through
    result = run_python("promote.py", "--version", worst, "--tolerance", f"{allowed:.6f}", env=client_env)
    assert result.returncode == 0, result.stderr
    assert "within the tolerance" in result.stdout


@pytest.mark.parametrize("argv,message", [
    (["--version", "999"], "'wine-quality' has no version 999 (it has 1, "),
    (["--model", "no-such-model"], "there is no registered model named 'no-such-model'"),
])
def test_promoting_what_does_not_exist_is_one_line(client, client_env, argv, message):
    result = run_python("promote.py", *argv, env=client_env)
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.splitlines()) == 1


def test_without_champion_serve_takes_the_latest_version(client):
    client.delete_registered_model_alias("wine-quality", "champion")
    highest = max(int(v.version) for v in client.search_model_versions("name = 'wine-quality'"))
    assert serve_model.resolve("models:/wine-quality", client) == (f"models:/wine-quality/{highest}",
                                                                   "the latest version")
    assert serve_model.resolve("models:/wine-quality/latest", client)[0] == f"models:/wine-quality/{highest}"
    assert serve_model.resolve("models:/wine-quality/1", client) == ("models:/wine-quality/1", "as given")
