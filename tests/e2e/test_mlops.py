"""The MLOps loop through make: promote the best version, serve it, package it as an image that runs
on its own."""

import json
import re
import subprocess
import time
import uuid

import pytest
import requests
from mlflow.tracking import MlflowClient
from wine_data import features_and_target, load_wine_data

from tests.support.helpers import background_process, free_port

ROWS, _ = features_and_target(load_wine_data().head(5))
BODY = {"dataframe_split": json.loads(ROWS.to_json(orient="split", index=False))}


@pytest.fixture(scope="module")
def two_versions(stack, trained_run):
    """A second, better version beside the trained one; {version: rmse}."""
    stack.make("train", "ALPHA=0.0001", "L1=0.5", timeout=600)
    client = MlflowClient(stack.url("TRACKING_PORT"))
    return {v.version: client.get_run(v.run_id).data.metrics["rmse"]
            for v in client.search_model_versions("name = 'wine-quality'")}


def test_promote_moves_champion_to_the_lowest_rmse_and_serve_serves_it(stack, two_versions):
    best = min(two_versions, key=lambda v: (two_versions[v], -int(v)))
    output = stack.make("promote", timeout=300).stdout
    assert f"@champion: wine-quality version {best} (rmse {two_versions[best]:.4f})" in output
    client = MlflowClient(stack.url("TRACKING_PORT"))
    assert client.get_model_version_by_alias("wine-quality", "champion").version == best
    served = stack.make("serve", timeout=900).stdout
    assert f"serving models:/wine-quality/{best} (@champion)" in served


def test_promote_of_a_missing_version_is_one_line(stack, two_versions):
    result = stack.make("promote", "VERSION=999", check=False, timeout=300)
    assert result.returncode != 0
    assert "promote.py: error: 'wine-quality' has no version 999" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def package(stack, two_versions):
    image = f"devstack-e2e-model-{uuid.uuid4().hex[:8]}:1"
    output = stack.make("package", "MODEL=models:/wine-quality/1", f"IMAGE={image}", timeout=900).stdout
    assert f"Built {image}: models:/wine-quality/1 (as given)" in output
    yield image
    subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def test_package_by_default_takes_the_champion_and_names_the_image_after_it(stack, two_versions):
    stack.make("promote", timeout=300)
    champion = MlflowClient(stack.url("TRACKING_PORT")).get_model_version_by_alias("wine-quality", "champion")
    image = f"wine-quality:{champion.version}"
    try:
        output = stack.make("package", timeout=900).stdout
        assert f"Built {image}: models:/wine-quality/{champion.version} (@champion)" in output
        assert images_named(image) == [image]
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def test_the_package_runs_alone_as_non_root_with_the_served_predictions(stack, package):
    stack.make("serve", "MODEL=models:/wine-quality/1", timeout=900)
    served = requests.post(stack.url("SERVE_PORT") + "/invocations", json=BODY, timeout=60).json()
    stack.make("down", timeout=300)
    try:
        port = free_port()
        name = f"devstack-e2e-package-{uuid.uuid4().hex[:8]}"
        command = ["docker", "run", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080", package]
        with background_process(command, stack.root / "package.log", f"http://127.0.0.1:{port}/ping", timeout=300):
            packaged = requests.post(f"http://127.0.0.1:{port}/invocations", json=BODY, timeout=60).json()
            printed = stack.make("predict", f"URL=http://127.0.0.1:{port}/invocations", timeout=300).stdout
            uid = subprocess.run(["docker", "exec", name, "id", "-u"], capture_output=True, text=True).stdout
            health = wait_for_health(name)
    finally:
        stack.make("up", timeout=1800)
    assert packaged["predictions"] == pytest.approx(served["predictions"], rel=1e-9, abs=1e-9)
    values = [float(v) for v in re.findall(r"^\s+row \d+: (-?[\d.]+)$", printed, re.M)]
    assert values == pytest.approx(served["predictions"], abs=1e-4)
    assert int(uid) != 0
    assert health == "healthy"


def wait_for_health(container):
    """The container's Docker health status once it leaves 'starting' (its healthcheck runs every 5 s)."""
    command = ["docker", "inspect", "-f", "{{.State.Health.Status}}", container]
    status = "starting"
    for _ in range(60):
        status = subprocess.run(command, capture_output=True, text=True).stdout.strip()
        if status != "starting":
            break
        time.sleep(1)
    return status


def images_named(prefix):
    listing = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                             capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize("arguments,message", [
    (["IMAGE=Not A Name"], "IMAGE=Not A Name is not a name Docker accepts"),
    (["MODEL=models:/no-such-model/1", "IMAGE=devstack-e2e-missing:1"], "cannot load models:/no-such-model/1"),
])
def test_package_refuses_bad_input_in_one_line_and_builds_nothing(stack, two_versions, arguments, message):
    result = stack.make("package", *arguments, check=False, timeout=600)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert images_named("devstack-e2e-missing") == []
    assert not re.search(r"package-model\.\w+", subprocess.run(["ls", "/tmp"], capture_output=True,
                                                              text=True).stdout)


def sweep_workers(stack):
    """docker ps filters for the stack's sweep workers (the sweep-worker service's one-off containers)."""
    return ["--filter", f"label=com.docker.compose.project={stack.project}",
            "--filter", "label=com.docker.compose.service=sweep-worker"]


def trials_of(stack, output):
    """(study name, its child runs) of the sweep whose `make sweep` printed output."""
    study = re.search(r"^sweep: study (sweep-\w+)", output, re.M).group(1)
    client = MlflowClient(stack.url("TRACKING_PORT"))
    experiment = client.get_experiment_by_name("wine-quality").experiment_id
    [parent] = client.search_runs([experiment], f"attributes.run_name = '{study}'")
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return study, children


def point(run):
    return float(run.data.params["alpha"]), float(run.data.params["l1_ratio"])


def test_sweep_runs_each_point_once_in_parallel_containers(stack, trained_run):
    result = stack.make("sweep", "ALPHAS=0.01,0.1,1.0", "L1_RATIOS=0.2,0.8", "PARALLEL=2", "PROMOTE=yes",
                        timeout=1800)
    _, children = trials_of(stack, result.stdout)
    assert sorted(point(run) for run in children) == sorted((a, r) for a in (0.01, 0.1, 1.0) for r in (0.2, 0.8))
    assert {run.info.status for run in children} == {"FINISHED"}
    spans = [(run.info.start_time, run.info.end_time) for run in children]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:]), spans
    rmses = [float(v) for v in re.findall(r"^\s+[\d.e-]+\s+[\d.]+\s+([\d.]+)\s+\d+$", result.stdout, re.M)]
    assert len(rmses) == 6 and rmses == sorted(rmses)
    client = MlflowClient(stack.url("TRACKING_PORT"))
    champion = client.get_model_version_by_alias("wine-quality", "champion")
    best = min(client.get_run(v.run_id).data.metrics["rmse"]
               for v in client.search_model_versions("name = 'wine-quality'"))
    assert client.get_run(champion.run_id).data.metrics["rmse"] == best
    # Through the gate: "@champion: wine-quality version N ..., was ...", or, where an earlier run is better
    # than the sweep's best, "@champion not moved: version M ... against @champion version N ...".
    assert re.search(rf"^@champion.* version {champion.version} ", result.stdout, re.M), result.stdout
    assert subprocess.run(["docker", "ps", "-aq", *sweep_workers(stack)], capture_output=True,
                          text=True).stdout == ""


def test_a_sweep_whose_worker_died_is_completed_by_a_rerun(stack, trained_run):
    grid = ("ALPHAS=0.02,0.2", "L1_RATIOS=0.3,0.6,0.9", "PARALLEL=2")
    first = subprocess.Popen(stack.as_user(["make", "--no-print-directory", "sweep", *grid]), cwd=stack.root,
                             env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = None
        for _ in range(600):  # until one worker has finished a trial (it has two more to go)
            workers = subprocess.run(["docker", "ps", "-q", *sweep_workers(stack)],
                                     capture_output=True, text=True).stdout.split()
            for worker in workers:
                logs = subprocess.run(["docker", "logs", worker], capture_output=True, text=True)
                if "rmse=" in logs.stdout + logs.stderr:
                    victim = worker
            if victim or first.poll() is not None:
                break
            time.sleep(0.5)
        assert victim, "no worker finished a trial"
        subprocess.run(["docker", "kill", victim], capture_output=True, check=True)
        out, err = first.communicate(timeout=1200)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode != 0
    assert "grid points did not finish (a worker failed): run the sweep again" in err
    second = stack.make("sweep", *grid, timeout=1800)
    _, children = trials_of(stack, second.stdout)
    finished = [point(run) for run in children if run.info.status == "FINISHED"]
    assert sorted(finished) == sorted((a, r) for a in (0.02, 0.2) for r in (0.3, 0.6, 0.9))


@pytest.mark.parametrize("arguments,message", [
    (["ALPHAS=0.1,abc"], "alphas must be comma-separated numbers, got 'abc'"),
    (["L1_RATIOS=0.5,2"], "l1-ratios values must be between 0 and 1, got '2'"),
    (["PARALLEL=0"], "parallel must be a whole number from 1 to 64, got '0'"),
])
def test_a_bad_sweep_is_one_line_and_starts_no_container(stack, arguments, message):
    result = stack.make("sweep", *arguments, check=False, timeout=300)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert subprocess.run(["docker", "ps", "-aq", *sweep_workers(stack)], capture_output=True,
                          text=True).stdout == ""


def layers(image):
    return json.loads(subprocess.run(["docker", "image", "inspect", "-f", "{{json .RootFS.Layers}}", image],
                                     capture_output=True, text=True, check=True).stdout)


def project_run(stack, alpha):
    """The newest run of `make project` (MLflow's docker backend) with this alpha."""
    client = MlflowClient(stack.url("TRACKING_PORT"))
    experiment = client.get_experiment_by_name("wine-quality").experiment_id
    runs = client.search_runs([experiment], f"params.alpha = '{alpha}'", order_by=["attributes.start_time DESC"])
    return next(run for run in runs if "mlflow.docker.image.uri" in run.data.tags)


def test_make_project_runs_the_mlproject_in_a_container_built_on_the_dev_image(stack, trained_run):
    stack.make("project", "ALPHA=1.0", "L1=1.0", timeout=1800)
    run = project_run(stack, "1.0")
    assert run.info.status == "FINISHED"
    assert run.data.params["l1_ratio"] == "1.0" and run.data.metrics["rmse"] > 0
    versions = MlflowClient(stack.url("TRACKING_PORT")).search_model_versions(f"run_id = '{run.info.run_id}'")
    assert len(versions) == 1  # its model, registered
    image = run.data.tags["mlflow.docker.image.uri"]
    assert image.startswith("wine-quality-project")
    dev_image = subprocess.run(["docker", "inspect", "-f", "{{.Config.Image}}", stack.container_of("dev")],
                               capture_output=True, text=True, check=True).stdout.strip()
    base = layers(dev_image)
    assert layers(image)[:len(base)] == base  # built on the dev image's layers


def test_make_project_from_a_git_url_runs_that_branch(stack, tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    for name in ("MLproject", "train.py", "wine_data.py", "data"):
        subprocess.run(["cp", "-r", str(stack.root / "workspace" / name), str(repo)], check=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "project"], check=True)
    subprocess.run([*git, "checkout", "-qb", "experiment"], check=True)
    (repo / "NOTES.md").write_text("the experiment branch\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "experiment"], check=True)
    branch_commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    subprocess.run([*git, "checkout", "-q", "main"], check=True)
    stack.make("project", f"PROJECT=file://{repo}", "PROJECT_VERSION=experiment", "ALPHA=0.7", "L1=0.3",
               timeout=1800)
    run = project_run(stack, "0.7")
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.git.commit"] == branch_commit


def test_make_project_with_the_stack_down_says_to_start_it(stack):
    env = dict(stack.env, COMPOSE_PROJECT_NAME=f"absent-{uuid.uuid4().hex[:8]}")
    result = subprocess.run(stack.as_user(["make", "--no-print-directory", "project"]), cwd=stack.root, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == ("error: the tracking container is not running: start the stack with "
                                             "'make up'")
