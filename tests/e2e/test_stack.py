"""make up / train / serve / predict / down, against the real containers."""

import json
import re
import socket
import subprocess
import time

import pytest
import requests
from mlflow.tracking import MlflowClient

from tests.support.helpers import ROOT, SSH_BATCH


def ssh_command(stack, *options, user="mlflow"):
    secrets = stack.root / ".secrets"
    return ["ssh", "-p", str(stack.ports["SSH_PORT"]), "-o", f"UserKnownHostsFile={secrets / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", *SSH_BATCH, *options, f"{user}@127.0.0.1"]


def test_up_reaches_healthy(stack):
    ids = [stack.container_of(service) for service in ("tracking", "dev")]
    health = subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", *ids],
                            capture_output=True, text=True, check=True).stdout.split()
    assert health == ["healthy", "healthy"]


def test_up_prints_the_urls(stack):
    output = stack.make("urls").stdout
    token = (stack.root / ".secrets" / "jupyter_token").read_text().strip()
    assert re.search(rf"MLflow UI +http://127\.0\.0\.1:{stack.ports['TRACKING_PORT']}/#/experiments\S*"
                     r"workflowType=machine_learning", output), output
    assert f"http://127.0.0.1:{stack.ports['JUPYTER_PORT']}/lab?token={token}" in output
    assert f"-p {stack.ports['SSH_PORT']}" in output


def test_tracking_ui_answers_from_the_host(stack):
    response = requests.get(stack.url("TRACKING_PORT"), timeout=30)
    assert response.status_code == 200
    assert "MLflow" in response.text


def test_dev_reaches_tracking_by_service_name(stack):
    probe = ("import requests; print(requests.get('http://tracking:5000/api/2.0/mlflow/experiments/search',"
             " params={'max_results': 1}, timeout=30).status_code)")
    result = stack.run_compose("exec", "-T", "dev", "python", "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "200"


def test_ssh_with_the_generated_key_logs_in_as_non_root(stack):
    commands = "id -u; id -un; python -c 'import mlflow; print(mlflow.__version__)'; echo $MLFLOW_TRACKING_URI\n"
    result = stack.make("ssh", input=commands, timeout=120)
    uid, user, version, tracking_uri = result.stdout.strip().splitlines()[-4:]
    assert int(uid) == stack.app_uid != 0
    assert user == "mlflow"
    assert version == "3.17.2"
    assert tracking_uri == "http://tracking:5000"


def test_ssh_config_block_works_as_printed(stack, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(stack.make("ssh-config").stdout)
    host = stack.project
    result = subprocess.run(["ssh", "-F", str(config), *SSH_BATCH, host, "pwd"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "/home/mlflow"


def test_password_login_is_refused(stack):
    result = subprocess.run(ssh_command(stack, "-o", "PubkeyAuthentication=no",
                                        "-o", "PreferredAuthentications=password,keyboard-interactive") + ["true"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_root_login_is_refused_even_with_the_key(stack):
    key = str(stack.root / ".secrets" / "id_ed25519")
    result = subprocess.run(ssh_command(stack, "-i", key, "-o", "IdentitiesOnly=yes", user="root") + ["true"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_jupyterlab_needs_the_token(stack):
    token = (stack.root / ".secrets" / "jupyter_token").read_text().strip()
    api = stack.url("JUPYTER_PORT") + "/api/contents"
    assert requests.get(api, headers={"Authorization": f"token {token}"}, timeout=30).status_code == 200
    assert requests.get(api, timeout=30).status_code == 403
    assert requests.get(api, headers={"Authorization": "token wrong"}, timeout=30).status_code == 403


def test_train_logs_the_tutorials_run_visible_from_the_host(stack, trained_run):
    run_id, version = trained_run
    client = MlflowClient(stack.url("TRACKING_PORT"))
    run = client.get_run(run_id)
    assert run.data.params == {"alpha": "0.5", "l1_ratio": "0.5"}
    assert run.data.metrics["rmse"] == pytest.approx(0.79, abs=0.01)
    assert client.get_model_version("wine-quality", version).run_id == run_id


def test_artifacts_sit_in_host_mlruns_owned_by_the_host_user(stack, trained_run):
    mlruns = stack.root / "mlruns"
    model_files = list(mlruns.glob("artifacts/**/model.skops"))
    assert model_files
    for path in (*model_files, mlruns / "mlflow.db"):
        assert path.stat().st_uid == stack.app_uid


def test_train_with_a_bad_alpha_is_one_clear_error(stack):
    result = stack.make("train", "ALPHA=abc", check=False, timeout=300)
    assert result.returncode != 0
    assert "train.py: error: alpha must be a number >= 0, got 'abc'" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_of_a_missing_model_says_so_and_leaves_the_running_server_as_it_was(stack, served):
    rows = {"dataframe_split": {"columns": ["fixed acidity", "volatile acidity", "citric acid", "residual sugar",
                                            "chlorides", "free sulfur dioxide", "total sulfur dioxide", "density",
                                            "pH", "sulphates", "alcohol"],
                                "data": [[7.4, 0.7, 0, 1.9, 0.076, 11, 34, 0.9978, 3.51, 0.56, 9.4]]}}
    before = requests.post(served, json=rows, timeout=60).json()
    container = stack.container_of("serve")
    result = stack.make("serve", "MODEL=models:/no-such-model/1", check=False, timeout=600)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert len(lines) == 1, result.stderr
    assert "cannot load models:/no-such-model/1" in lines[0] and "unchanged" in lines[0]
    assert stack.container_of("serve") == container  # not replaced
    assert requests.get(served.replace("/invocations", "/ping"), timeout=30).status_code == 200
    assert requests.post(served, json=rows, timeout=60).json() == before


def test_serve_on_a_busy_port_says_so(stack):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = stack.make("serve", f"SERVE_PORT={port}", check=False, timeout=300)
    assert result.returncode != 0
    assert f"port {port} on 127.0.0.1, needed by serve, is already in use" in result.stderr


def test_make_predict_prints_numeric_predictions(stack, served):
    output = stack.make("predict", timeout=300).stdout
    values = [float(v) for v in re.findall(r"^\s+row \d+: (-?[\d.]+)$", output, re.M)]
    assert len(values) == 5
    assert all(3 < value < 8 for value in values)


# The curl of the tutorial this stack is built from, as it was written (MLflow 1.x's body).
TUTORIAL_CURL = (
    """curl -X POST -H "Content-Type:application/json; format=pandas-split" --data '{"columns":["alcohol", """
    """"chlorides", "citric acid", "density", "fixed acidity", "free sulfur dioxide", "pH", "residual sugar", """
    """"sulphates", "total sulfur dioxide", "volatile acidity"],"data":[[12.8, 0.029, 0.48, 0.98, 6.2, 29, 3.33, """
    """1.2, 0.39, 75, 0.66]]}' http://127.0.0.1:1234/invocations""")


def readme_curl():
    """The curl command of the README's tutorial section, as a shell command."""
    readme = (ROOT / "README.md").read_text()
    return re.search(r"^(curl -s http://127\.0\.0\.1:5001/invocations .*?\}\}')$", readme, re.M | re.S).group(1)


@pytest.mark.parametrize("command", [TUTORIAL_CURL, readme_curl()], ids=["tutorial's curl", "README's curl"])
def test_curl_of_invocations_as_documented(stack, served, command):
    base = served.removesuffix("/invocations")
    command = command.replace("http://127.0.0.1:1234", base).replace("http://127.0.0.1:5001", base)
    result = subprocess.run(["bash", "-c", command + " --fail -sS"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [prediction] = json.loads(result.stdout)["predictions"]
    assert 3 < prediction < 8


def test_serve_runs_the_stacks_scoring_server_on_the_fast_path(stack, served):
    logs = subprocess.run(["docker", "logs", stack.container_of("serve")], capture_output=True, text=True)
    assert "with the devstack scoring server" in logs.stdout + logs.stderr
    assert "fast path, one matrix" in logs.stdout + logs.stderr


def test_a_foreign_host_header_is_refused(stack, served):
    body = {"dataframe_split": {"columns": ["pH"], "data": [[3.0]]}}
    response = requests.post(served, json=body, headers={"Host": "attacker.example"}, timeout=30)
    assert response.status_code == 403
    assert "SERVE_ALLOWED_HOSTS" in response.json()["message"]


def scrape(url, host=None):
    """{sample name and labels as Prometheus prints them: value} of a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    response = requests.get(url, headers={"Host": host} if host else {}, timeout=30)
    assert response.status_code == 200, response.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_the_model_servers_metrics_count_its_requests_and_name_its_model(stack, served):
    metrics = served.replace("/invocations", "/metrics")
    key = ("serve_requests_total", (("route", "/invocations"), ("status", "200")))
    before = scrape(metrics).get(key, 0)
    for _ in range(5):
        stack.make("predict")
    # Prometheus scrapes by address: a foreign Host is answered here, as on /ping. Each worker writes
    # its counts at most 0.25 s after a request (serve_metrics.FLUSH_SECONDS): 10 s is the bound.
    deadline = time.monotonic() + 10
    while (after := scrape(metrics, host="10.1.2.3:5001"))[key] - before < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert after[key] - before == 5
    # The version make serve resolved (wine-quality's @champion, else its latest), by name and number.
    [info] = [dict(labels) for name, labels in after if name == "serve_model_info"]
    assert info["name"] == "wine-quality" and info["version"].isdigit(), info
    assert info["uri"] == f"models:/wine-quality/{info['version']}" and info["server"] == "devstack"
    logs = subprocess.run(["docker", "logs", stack.container_of("serve")], capture_output=True, text=True)
    assert f"serving models:/wine-quality/{info['version']} " in logs.stdout + logs.stderr


def test_the_tracking_servers_metrics_count_its_requests(stack, trained_run):
    metrics = stack.url("TRACKING_PORT") + "/metrics"
    before = sum(v for (name, _), v in scrape(metrics).items() if name == "mlflow_http_request_total")
    for _ in range(3):
        requests.get(stack.url("TRACKING_PORT") + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
    after = sum(v for (name, _), v in scrape(metrics).items() if name == "mlflow_http_request_total")
    # The three searches (a scrape is not counted).
    assert after - before == 3


def test_stock_mlflow_scoring_is_one_setting_away(stack, trained_run):
    try:
        stack.make("serve", "SERVE_SERVER=mlflow", timeout=900)
        logs = subprocess.run(["docker", "logs", stack.container_of("serve")], capture_output=True, text=True)
        assert "with the mlflow scoring server" in logs.stdout + logs.stderr
        test_make_predict_prints_numeric_predictions(stack, None)
    finally:
        stack.make("serve", timeout=900)


def test_every_container_runs_as_non_root(stack, served):
    ids = stack.container_ids()
    assert len(ids) == 3
    for container in ids:
        uid = subprocess.run(["docker", "exec", container, "id", "-u"], capture_output=True, text=True, check=True)
        assert int(uid.stdout) == stack.app_uid != 0


def test_every_published_port_is_bound_to_localhost(stack, served):
    for container in stack.container_ids():
        ports = json.loads(subprocess.run(["docker", "inspect", "-f", "{{json .NetworkSettings.Ports}}", container],
                                          capture_output=True, text=True, check=True).stdout)
        bindings = [binding for mapped in ports.values() if mapped for binding in mapped]
        assert bindings, f"{container} publishes nothing"
        assert {binding["HostIp"] for binding in bindings} == {"127.0.0.1"}


def test_runs_and_models_survive_down_and_up(stack, trained_run):
    run_id, version = trained_run
    stack.make("down", timeout=300)
    assert stack.container_ids() == []
    stack.make("up", timeout=1200)
    client = MlflowClient(stack.url("TRACKING_PORT"))
    assert client.get_run(run_id).data.metrics["rmse"] == pytest.approx(0.79, abs=0.01)
    assert client.get_model_version("wine-quality", version).status == "READY"
