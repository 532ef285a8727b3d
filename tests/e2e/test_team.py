"""Team mode (`make up TEAM=1`): PostgreSQL, Garage, two tracking replicas behind nginx, a login.

One copy of the project plays a user's checkout: it trains on the local stack first, then moves to
team mode, so the copy of local runs is tested on a real local history. Faults (a replica killed,
storage stopped, PostgreSQL restarted) are real container kills and restarts on loopback.
"""

import json
import re
import subprocess
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.helpers import VENV_BIN
from tests.support.stack import Stack, running

SERVICES = ("tracking", "tracking-a", "tracking-b", "postgres", "storage", "dev")


@pytest.fixture(scope="module")
def team(docker, tmp_path_factory, request):
    def start(stack):
        # A user's history on the local stack first (TEAM= on the command line: local mode).
        stack.make("up", "TEAM=", timeout=3600)
        stack.local_run_id, _ = stack.train("TEAM=", "ALPHA=0.3", "L1=0.3")
        stack.make("down", "TEAM=", timeout=600)
        stack.make("up", timeout=5400)

    with running(Stack.copy_of_project(tmp_path_factory.mktemp("team"), team=True), request, start) as stack:
        yield stack


def in_dev(stack, script, timeout=600):
    """Runs a Python script in the dev container (logged in as the admin, as users are there)."""
    result = subprocess.run(["docker", "exec", "-i", stack.container_of("dev"), "python", "-"],
                            input=textwrap.dedent(script), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"script failed in dev:\n{result.stdout}\n{result.stderr}")
    return result


def in_dev_background(stack, script):
    """Starts a Python script in the dev container; its stdin stays free for the test to talk to it."""
    dev = stack.container_of("dev")
    return subprocess.Popen(["docker", "exec", "-i", dev, "python", "-c", textwrap.dedent(script)],
                            text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def admin(stack):
    return ("admin", stack.secret("mlflow_admin_password"))


def api(stack, path, auth=None, **kwargs):
    return requests.get(stack.url("TRACKING_PORT") + path, auth=auth, timeout=60, **kwargs)


def psql(stack, query):
    result = subprocess.run(["docker", "exec", stack.container_of("postgres"), "psql", "--host=/run/postgresql",
                             "--username=mlflow", "--dbname=mlflow", "-Atc", query],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def in_bucket(stack, script):
    """Runs script in the dev container with `bucket`, the team bucket through boto3 (an S3 client
    inside the network), and `json` at hand."""
    setup = f"""
        import boto3, json
        bucket = boto3.resource("s3", endpoint_url="http://storage:3900", region_name="garage",
                                aws_access_key_id={stack.secret("s3_key_id")!r},
                                aws_secret_access_key={stack.secret("s3_secret_key")!r}).Bucket("mlflow")
    """
    return in_dev(stack, textwrap.dedent(setup) + textwrap.dedent(script))


def bucket_keys(stack):
    """Every object key in the team bucket, in S3's listing order."""
    return json.loads(in_bucket(stack, "print(json.dumps([item.key for item in bucket.objects.all()]))").stdout)


def container_state(container):
    status = "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}"
    return subprocess.run(["docker", "inspect", "-f", status,
                           container], capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def team_run(team):
    """(run id, model version) of `make train` in team mode."""
    return team.train("ALPHA=0.5", "L1=0.5")


def test_every_service_is_healthy_and_migrations_ran_once(team):
    for service in SERVICES:
        assert container_state(team.container_of(service)) == "running/healthy", service
    project = f"label=com.docker.compose.project={team.project}"
    migrate = subprocess.run(["docker", "ps", "-a", "-q", "--filter", project,
                              "--filter", "label=com.docker.compose.service=tracking-migrate"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert len(migrate) == 1
    assert subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", migrate[0]],
                          capture_output=True, text=True).stdout.strip() == "0"
    printed = team.make("urls").stdout
    assert f"admin / {team.secret('mlflow_admin_password')}" in printed


def test_anonymous_and_wrong_logins_get_401_and_the_admin_200(team):
    path = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert api(team, path).status_code == 401
    assert api(team, path, auth=("admin", "not-the-password")).status_code == 401
    assert api(team, path, auth=("nobody", "whatever")).status_code == 401
    assert api(team, path, auth=admin(team)).status_code == 200
    assert api(team, "/health").status_code == 200  # probes need no login


def test_a_run_is_in_postgres_and_its_model_in_the_bucket(team, team_run):
    run_id, version = team_run
    assert psql(team, f"SELECT status FROM runs WHERE run_uuid = '{run_id}'") == "FINISHED"
    source = psql(team, f"SELECT source FROM model_versions WHERE name = 'wine-quality' AND version = {version}")
    assert source.startswith("models:/m-"), source
    model_id = source.removeprefix("models:/")
    keys = bucket_keys(team)
    model_keys = [key for key in keys if f"/models/{model_id}/artifacts/" in key]
    assert any(key.endswith("/MLmodel") for key in model_keys), keys
    assert any(key.endswith("/model.skops") for key in model_keys), keys


def test_a_write_through_one_replica_is_read_through_the_other_and_the_proxy(team):
    result = in_dev(team, """
        from mlflow.tracking import MlflowClient
        a, b, proxy = (MlflowClient(f"http://{host}:5000") for host in ("tracking-a", "tracking-b", "tracking"))
        experiment = a.create_experiment("replica-check")
        run = a.create_run(experiment)
        a.log_param(run.info.run_id, "written_by", "tracking-a")
        for client in (b, proxy):
            assert client.get_run(run.info.run_id).data.params == {"written_by": "tracking-a"}
            assert client.get_experiment_by_name("replica-check").experiment_id == experiment
        print("ok")
    """)
    assert result.stdout.strip().endswith("ok")


def test_four_parallel_trainings_register_four_versions(team, team_run):
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda i: team.train(f"ALPHA=0.{i}1", "L1=0.5", timeout=900), range(1, 5)))
    versions = [version for _, version in runs]
    assert len(set(versions)) == 4


def test_killing_a_replica_during_a_burst_loses_no_acknowledged_write(team):
    # The client logs one metric step per request through the proxy and records each step the
    # server acknowledged; meanwhile one replica is killed.
    burst = in_dev_background(team, """
        import json, sys, time
        from mlflow.tracking import MlflowClient
        client = MlflowClient()
        run = client.create_run(client.create_experiment(f"burst-{time.time()}"))
        acknowledged = []
        print("started", flush=True)
        for step in range(200):
            try:
                client.log_metric(run.info.run_id, "step", step, step=step)
                acknowledged.append(step)
            except Exception as error:
                print(f"step {step} failed: {error}", file=sys.stderr)
        history = {m.step for m in client.get_metric_history(run.info.run_id, "step")}
        print(json.dumps({"acknowledged": acknowledged, "stored": sorted(history)}))
    """)
    assert burst.stdout.readline().strip() == "started"
    subprocess.run(["docker", "kill", team.container_of("tracking-a")], check=True, capture_output=True)
    out = burst.stdout.read()
    assert burst.wait(timeout=600) == 0, burst.stderr.read()
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["acknowledged"]) >= 195, "the proxy did not keep answering with one replica"
    assert set(result["acknowledged"]) <= set(result["stored"])
    team.make("up", timeout=600)  # brings the killed replica back and waits for it, as for a user


def test_the_host_loads_a_model_with_no_extra_setting(team, team_run):
    _, version = team_run
    # The replicas offer presigned downloads from storage:3900 (unreachable from the host); the
    # proxy tells clients they are off.
    direct = in_dev(team, """
        import requests
        from mlflow.utils.credentials import read_mlflow_creds
        creds = read_mlflow_creds()
        print(requests.get("http://tracking-a:5000/api/3.0/mlflow/server-info",
                           auth=(creds.username, creds.password), timeout=60).json()["multipart_downloads_enabled"])
    """)
    assert direct.stdout.strip() == "True"
    info = api(team, "/api/3.0/mlflow/server-info", auth=admin(team)).json()
    assert info["multipart_downloads_enabled"] is False and info["multipart_uploads_enabled"] is False
    script = f"""
import mlflow, pandas
model = mlflow.pyfunc.load_model("models:/wine-quality/{version}")
rows = pandas.read_csv("workspace/data/winequality-red.csv", sep=";").drop(columns="quality").head(2)
print(len(model.predict(rows)))
"""
    env = {key: value for key, value in team.env.items() if not key.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=team.url("TRACKING_PORT"), MLFLOW_TRACKING_USERNAME="admin",
               MLFLOW_TRACKING_PASSWORD=team.secret("mlflow_admin_password"))
    result = subprocess.run([str(VENV_BIN / "python"), "-c", script], cwd=team.root, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "2"


def test_a_created_user_can_log_a_run(team, team_run):
    created = team.make("user", "NAME=alice")
    password = re.search(r"Their password \(shown once, not stored\): (\w+)", created.stdout).group(1)
    again = team.make("user", "NAME=alice", check=False)
    assert again.returncode != 0 and "alice" in again.stderr
    bad = team.make("user", "NAME=not a name", check=False)
    assert bad.returncode != 0 and bad.stderr.count("\n") <= 2 and "NAME=" in bad.stderr
    base = team.url("TRACKING_PORT") + "/api/2.0/mlflow"
    alice = ("alice", password)
    experiment = requests.get(f"{base}/experiments/get-by-name", params={"experiment_name": "wine-quality"},
                              auth=alice, timeout=60).json()["experiment"]["experiment_id"]
    run = requests.post(f"{base}/runs/create", json={"experiment_id": experiment}, auth=alice, timeout=60)
    assert run.status_code == 200, run.text
    run_id = run.json()["run"]["info"]["run_id"]
    logged = requests.post(f"{base}/runs/log-metric", auth=alice, timeout=60,
                           json={"run_id": run_id, "key": "rmse", "value": 0.7, "timestamp": 0, "step": 0})
    assert logged.status_code == 200, logged.text
    assert requests.post(f"{base}/runs/create", json={"experiment_id": experiment}, auth=("alice", "wrong"),
                         timeout=60).status_code == 401


def test_make_promote_serve_and_package_work_in_team_mode(team, team_run):
    _, version = team_run
    promoted = team.make("promote", f"VERSION={version}", timeout=300).stdout
    assert f"@champion: wine-quality version {version}" in promoted
    alias = api(team, "/api/2.0/mlflow/registered-models/alias", auth=admin(team),
                params={"name": "wine-quality", "alias": "champion"})
    assert alias.json()["model_version"]["version"] == version
    served = team.make("serve", timeout=900).stdout
    assert f"serving models:/wine-quality/{version} (@champion)" in served
    served = team.make("predict")
    assert re.search(r"^\d+ predictions from ", served.stdout, re.M), served.stdout
    image = f"team-test-model:{team.project[-8:]}"
    try:
        built = team.make("package", f"MODEL=models:/wine-quality/{version}", f"IMAGE={image}", timeout=900)
        assert f"Built {image}" in built.stdout
        assert subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def test_make_project_and_make_sweep_log_in_in_team_mode(team, team_run):
    team.make("project", "ALPHA=0.9", "L1=0.9", timeout=1800)
    swept = team.make("sweep", "ALPHAS=0.05,0.15", "L1_RATIOS=0.5", "PARALLEL=2", timeout=1800)
    assert "sweep: study" in swept.stdout
    result = in_dev(team, """
        from mlflow.tracking import MlflowClient
        client = MlflowClient()
        experiment = client.get_experiment_by_name("wine-quality").experiment_id
        project = [r for r in client.search_runs([experiment], "params.alpha = '0.9'")
                   if "mlflow.docker.image.uri" in r.data.tags]
        swept = {r.data.params["alpha"] for r in client.search_runs([experiment], "params.l1_ratio = '0.5'")
                 if r.data.tags.get("mlflow.parentRunId")}
        print(len(project), project[0].info.status, sorted(swept))
    """)
    assert result.stdout.strip().splitlines()[-1] == "1 FINISHED ['0.05', '0.15']"


def test_local_runs_are_copied_once(team):
    first = team.make("copy-to-team", timeout=900)
    assert re.search(r"copied \d+ experiments, 1 runs, 1 logged models, 1 model versions", first.stdout), first.stdout
    copied = in_dev(team, f"""
        from mlflow.tracking import MlflowClient
        client = MlflowClient()
        runs = client.search_runs(
            [client.get_experiment_by_name("wine-quality").experiment_id],
            filter_string="tags.`devstack.copied_from` = '{team.local_run_id}'")
        assert len(runs) == 1, runs
        run = runs[0]
        assert run.data.params["alpha"] == "0.3" and "rmse" in run.data.metrics
        versions = client.search_model_versions(f"run_id = '{{run.info.run_id}}'")
        assert len(versions) == 1 and versions[0].tags["devstack.copied_from"].startswith("wine-quality/")
        import mlflow
        mlflow.pyfunc.load_model(f"models:/wine-quality/{{versions[0].version}}")
        print("ok")
    """)
    assert copied.stdout.strip().endswith("ok")
    second = team.make("copy-to-team", timeout=900)
    assert "copied 0 experiments, 0 runs, 0 logged models, 0 model versions" in second.stdout, second.stdout


def test_storage_down_gives_a_clear_artifact_error_and_metadata_still_works(team, team_run):
    run_id, _ = team_run
    auth = admin(team)
    storage = team.container_of("storage")
    subprocess.run(["docker", "stop", storage], check=True, capture_output=True)
    try:
        assert api(team, "/api/2.0/mlflow/runs/get", auth=auth, params={"run_id": run_id}).status_code == 200
        started = time.monotonic()
        listed = api(team, "/api/2.0/mlflow/artifacts/list", auth=auth, params={"run_id": run_id})
        assert listed.status_code >= 500 and time.monotonic() - started < 120
        assert "Traceback" not in listed.text and listed.json().get("message")
    finally:
        subprocess.run(["docker", "start", storage], check=True, capture_output=True)
    team.wait_healthy("storage", timeout=180)
    listed = api(team, "/api/2.0/mlflow/artifacts/list", auth=auth, params={"run_id": run_id})
    assert listed.status_code == 200


def test_a_run_resumes_logging_after_postgres_restarts(team):
    logger = in_dev_background(team, """
        import json, sys
        from mlflow.tracking import MlflowClient
        client = MlflowClient()
        run = client.create_run(client.get_experiment_by_name("wine-quality").experiment_id)
        print("started", flush=True)
        for step in range(20):
            client.log_metric(run.info.run_id, "loss", 1 / (step + 1), step=step)
            if step == 4:
                print("restart now", flush=True)
                sys.stdin.readline()  # the test restarts PostgreSQL, then says go on
        client.set_terminated(run.info.run_id)
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
        print(json.dumps(steps))
    """)
    assert logger.stdout.readline().strip() == "started"
    assert logger.stdout.readline().strip() == "restart now"
    subprocess.run(["docker", "restart", team.container_of("postgres")], check=True, capture_output=True)
    logger.stdin.write("go on\n")
    logger.stdin.close()
    out = logger.stdout.read()
    assert logger.wait(timeout=600) == 0, logger.stderr.read()
    assert json.loads(out.strip().splitlines()[-1]) == list(range(20))


def test_down_and_up_keep_runs_models_and_the_bucket(team, team_run):
    run_id, version = team_run
    keys_before = bucket_keys(team)
    team.make("down", timeout=600)
    team.make("up", timeout=1800)
    assert psql(team, f"SELECT status FROM runs WHERE run_uuid = '{run_id}'") == "FINISHED"
    assert bucket_keys(team) == keys_before
    loaded = in_dev(team, f"""
        import mlflow
        mlflow.pyfunc.load_model("models:/wine-quality/{version}")
        print("ok")
    """)
    assert loaded.stdout.strip().endswith("ok")


def empty_bucket(stack):
    """Deletes every object in the team bucket, as an accident would."""
    in_bucket(stack, "bucket.objects.all().delete()")


def test_backup_and_restore_bring_back_runs_models_logins_and_artifacts(team, team_run):
    run_id, version = team_run
    backup = team.root / "backups" / "before"
    team.make("backup", f"DIR={backup}", timeout=900)
    assert sorted(path.name for path in backup.iterdir()) == ["mlflow.sql", "mlflow_auth.sql", "secrets.sha256",
                                                              "storage.tgz"]
    assert backup.stat().st_mode & 0o077 == 0
    keys = bucket_keys(team)
    assert keys  # storage came back after the copy of its volumes
    later_run, _ = team.train("ALPHA=0.9", "L1=0.9")
    empty_bucket(team)
    assert bucket_keys(team) == []

    # A backup bound to other secrets is refused before anything stops.
    other = team.root / "backups" / "other-machine"
    other.mkdir()
    for path in backup.iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    (other / "secrets.sha256").write_text((backup / "secrets.sha256").read_text().replace("0", "1"))
    refused = team.make("restore", f"DIR={other}", "CONFIRM=yes", check=False)
    assert refused.returncode != 0 and "made with other secrets" in refused.stderr
    assert container_state(team.container_of("tracking-a")) == "running/healthy"

    team.make("restore", f"DIR={backup}", "CONFIRM=yes", timeout=1800)
    assert bucket_keys(team) == keys
    assert psql(team, f"SELECT status FROM runs WHERE run_uuid = '{run_id}'") == "FINISHED"
    assert psql(team, f"SELECT count(*) FROM runs WHERE run_uuid = '{later_run}'") == "0"
    assert api(team, "/api/2.0/mlflow/experiments/search?max_results=1", auth=admin(team)).status_code == 200
    loaded = in_dev(team, f"""
        import mlflow
        mlflow.pyfunc.load_model("models:/wine-quality/{version}")
        print("ok")
    """)
    assert loaded.stdout.strip().endswith("ok")


def test_team_commands_refuse_outside_team_mode(team):
    result = team.make("copy-to-team", "TEAM=", check=False)
    assert result.returncode != 0 and "TEAM=1" in result.stderr
