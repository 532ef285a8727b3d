"""Model quality a user can see, through make: each run's datasets, evaluation plots and system
metrics in the MLflow UI (headless Chromium), promotion gated on the held-out rows, and links the
host's browser opens."""

import re

import pytest
import requests
from mlflow.tracking import MlflowClient

from tests.support.browser import chromium_path, dump_dom, screenshot, visible_text
from tests.support.helpers import printed_run

PLOTS = ("predicted_vs_actual", "residuals_vs_predicted", "coefficients")


@pytest.fixture(scope="module")
def client(stack):
    return MlflowClient(stack.url("TRACKING_PORT"))


def contexts(run):
    """{context: digest} of a run's dataset inputs."""
    return {tag.value: dataset_input.dataset.digest for dataset_input in run.inputs.dataset_inputs
            for tag in dataset_input.tags if tag.key == "mlflow.data.context"}


def test_a_run_logs_its_datasets_plots_and_system_metrics(stack, trained_run, client):
    run_id, _ = trained_run
    run = client.get_run(run_id)
    assert set(contexts(run)) == {"training", "evaluation"}
    names = {artifact.path for artifact in client.list_artifacts(run_id)}
    for plot in PLOTS:
        assert [name for name in names if name.startswith(plot) and name.endswith(".png")], (plot, names)
    assert run.data.metrics["example_count"] == 400
    assert "system/cpu_utilization_percentage" in run.data.metrics


def test_two_runs_on_the_same_data_show_the_same_digests(stack, trained_run, client):
    other_run, _ = stack.train("ALPHA=0.3", "L1=0.3")
    assert contexts(client.get_run(other_run)) == contexts(client.get_run(trained_run[0]))


def test_the_run_page_shows_the_datasets_and_a_plot(stack, trained_run, client, tmp_path):
    if chromium_path() is None:
        pytest.fail("end-to-end tests need Debian's chromium (apt-get install chromium)")
    run_id, _ = trained_run
    experiment = client.get_run(run_id).info.experiment_id
    base = f"{stack.url('TRACKING_PORT')}/#/experiments/{experiment}/runs/{run_id}"
    overview = f"{base}?workflowType=machine_learning"
    text = visible_text(dump_dom(overview, tmp_path / "profile-run"))
    digest = contexts(client.get_run(run_id))["training"]
    try:
        # "Datasets: winequality-red (<digest>) Training +1": the evaluation set is behind the +1.
        assert f"Datasets | winequality-red ({digest}) | training" in text
    except AssertionError:
        picture = screenshot(overview, tmp_path / "run.png", tmp_path / "profile-run-shot")
        raise AssertionError(f"no dataset on the run page; screenshot: {picture}\n{text[:2000]}") from None
    plot = next(name for name in (a.path for a in client.list_artifacts(run_id)) if name.startswith(PLOTS[0]))
    artifacts = f"{base}/artifacts/{plot}?workflowType=machine_learning"
    html = dump_dom(artifacts, tmp_path / "profile-artifacts")
    # The UI fetches the PNG and shows it from a blob: URL, under the file's name.
    images = re.findall(r"<img[^>]+src=\"(blob:[^\"]+)\"", html)
    assert images and plot in visible_text(html), (
        f"no image of {plot}; screenshot: {screenshot(artifacts, tmp_path / 'artifacts.png', tmp_path / 'p2')}")


def printed_urls(output):
    return re.findall(r"https?://[^\s)]+", output)


def test_every_url_make_train_and_make_promote_print_opens_from_the_host(stack, trained_run):
    trained = stack.make("train", "ALPHA=0.2", "L1=0.2", timeout=600)
    _, version = printed_run(trained.stdout)
    promoted = stack.make("promote", f"VERSION={version}", "FORCE=yes", timeout=600)
    urls = printed_urls(trained.stdout) + printed_urls(promoted.stdout)
    assert [url for url in urls if "/runs/" in url] and [url for url in urls if "/models/" in url], urls
    for url in urls:
        assert url.startswith(stack.url("TRACKING_PORT")), url  # never a container-only name
        assert requests.get(url, timeout=30).status_code == 200, url
    assert "tracking:5000" not in trained.stdout + trained.stderr
    assert "Failed to resolve installed pip version" not in trained.stdout + trained.stderr


def test_a_worse_model_is_refused_forced_with_force_and_the_best_promoted_again(stack, trained_run, client):
    good_run, good = trained_run
    client.set_registered_model_alias("wine-quality", "champion", good)
    _, worse = stack.train("ALPHA=10", "L1=0.5")
    refused = stack.make("promote", f"VERSION={worse}", check=False, timeout=600)
    assert refused.returncode != 0
    [line] = [line for line in refused.stderr.splitlines() if not line.startswith("make")]
    good_rmse = client.get_run(good_run).data.metrics["rmse"]
    assert f"version {worse} (rmse " in line and f"version {good} (rmse {good_rmse:.4f})" in line
    assert client.get_model_version_by_alias("wine-quality", "champion").version == good
    assert client.get_model_version("wine-quality", worse).tags["devstack.gate.decision"] == "refused"
    forced = stack.make("promote", f"VERSION={worse}", "FORCE=yes", timeout=600)
    assert "moved anyway (FORCE=yes)" in forced.stdout
    assert client.get_model_version_by_alias("wine-quality", "champion").version == worse
    back = stack.make("promote", timeout=600)  # the best version, through the gate: better
    assert "better by" in back.stdout
    assert client.get_model_version_by_alias("wine-quality", "champion").version != worse


def test_make_sweep_promote_ends_with_the_gates_decision(stack, trained_run):
    result = stack.make("sweep", "ALPHAS=5,8", "L1_RATIOS=0.5", "PARALLEL=2", "PROMOTE=yes", timeout=1800)
    last = result.stdout.strip().splitlines()[-1]
    # The champion is far better than these two: the gate keeps it, and says so with both figures.
    assert last.startswith("@champion not moved: version ") and "worse by" in last, result.stdout[-2000:]
