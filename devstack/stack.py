"""The stack's life: up, down, status, logs, the URLs, SSH, and clean."""

import base64
import json
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request

from . import images
from .proc import check_ports, check_project, compose, container_of, execute, fail, say, wait_healthy
from .secrets import make_secrets
from .settings import TRACKING_CONTAINER_PORT

UP_SECONDS = 300
EXPERIMENT = "wine-quality"
SHARED_VIEW = "metrics"
MODE = "workflowType=machine_learning"
# The folders the containers write, which become the containers' user's when make runs as root.
HANDED_OVER = ("workspace", "mlruns")


SPARK_SERVICES = ["spark-master", "spark-worker-1", "spark-worker-2"]


def services_to_start(settings):
    return (["tracking", "dev"] + (SPARK_SERVICES if settings.spark else [])
            + (["prometheus"] if settings.monitor else []))


def services_to_wait_for(settings):
    return (services_to_start(settings)
            + (["tracking-a", "tracking-b", "postgres", "storage"] if settings.team else []))


def hand_over(settings):
    """Containers run as APP_UID:APP_GID; when make runs as root, workspace/ and mlruns/ become theirs."""
    uid, gid = int(settings.app_uid), int(settings.app_gid)
    for name in HANDED_OVER:
        top = settings.root / name
        for folder, dirs, files in os.walk(top):
            for path in [folder, *(os.path.join(folder, entry) for entry in dirs + files)]:
                info = os.lstat(path)
                if info.st_uid != uid or info.st_gid != gid:
                    os.lchown(path, uid, gid)


def up(settings):
    if settings.monitor and settings.team:
        fail("MONITOR=1 with TEAM=1 is not built yet: team mode's replicas keep /metrics behind the login "
             "(docs/monitoring.md); use MONITOR=1 with the local stack", status=2)
    check_project(settings)
    ports = [("tracking", "TRACKING_PORT"), ("dev", "JUPYTER_PORT"), ("dev", "SSH_PORT")]
    ports += [("spark-master", "SPARK_UI_PORT")] if settings.spark else []
    ports += [("prometheus", "PROMETHEUS_PORT")] if settings.monitor else []
    check_ports(settings, ports, "up")
    make_secrets(settings)
    images.ensure_images(settings)
    if settings.spark:
        images.spark_image(settings)
    if settings.is_root:
        hand_over(settings)
    # Without SPARK=1 (or TEAM=1, MONITOR=1), --remove-orphans stops the cluster (or team mode,
    # Prometheus) of an earlier up.
    compose(settings, "up", "-d", "--remove-orphans", *services_to_start(settings))
    wait_healthy(settings, UP_SECONDS, services_to_wait_for(settings))
    urls(settings)


def down(settings):
    compose(settings, "--profile", "serve", "down", "--remove-orphans")


def ps(settings):
    compose(settings, "--profile", "serve", "ps")


def logs(settings):
    service = [settings["SERVICE"]] if settings["SERVICE"] else []
    execute([*settings.compose, "--profile", "serve", "logs", "--follow", "--tail=100", *service], settings)


def secret(settings, name):
    try:
        return (settings.secrets / name).read_text().strip()
    except OSError:
        fail(f"{settings.secrets / name} is missing: run 'make up{' TEAM=1' if settings.team else ''}' first")


def lab_url(settings):
    return f"{settings.url('JUPYTER_PORT')}/lab?token={secret(settings, 'jupyter_token')}"


def ssh_options(settings):
    return ["-i", ".secrets/id_ed25519", "-p", settings["SSH_PORT"], "-o", "IdentitiesOnly=yes",
            "-o", "UserKnownHostsFile=.secrets/known_hosts", "-o", "StrictHostKeyChecking=yes"]


def admin_login(settings):
    """The team admin's Authorization header value, or None outside team mode or before make up."""
    if not settings.team:
        return None
    try:
        password = (settings.secrets / "mlflow_admin_password").read_text().strip()
    except OSError:
        return None
    return "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()


def ask_tracking(settings, endpoint, query, timeout=5):
    """GET /api/2.0/mlflow/<endpoint>?<query> of the stack's tracking server (as the admin in team
    mode), straight to it (no proxy: it is local); the open answer. Raises OSError (HTTPError too)."""
    request = urllib.request.Request(f"{settings.ui_base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}")
    login = admin_login(settings)
    if login:
        request.add_header("Authorization", login)
    return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=timeout)


def ui_url(settings):
    """The MLflow UI address to open, in the "Model training" view (MLflow 3 opens on its GenAI view
    otherwise; the parameter must sit in the #-route to count). Once the tutorial's experiment exists,
    its runs table with the metrics as columns (the shared view train.py saves); before, the list."""
    base = settings.ui_base
    try:
        with ask_tracking(settings, "experiments/get-by-name", {"experiment_name": EXPERIMENT}) as answer:
            found = json.load(answer)["experiment"]
    except (OSError, ValueError, KeyError):  # not there yet, or the server is not up
        return f"{base}/#/experiments?{MODE}"
    url = f"{base}/#/experiments/{found['experiment_id']}/runs?{MODE}"
    if any(tag["key"] == f"mlflow.sharedViewState.{SHARED_VIEW}" for tag in found.get("tags", [])):
        url += f"&viewStateShareKey={SHARED_VIEW}"
    return url


def urls(settings):
    address = settings.host_address
    say()
    say(f"  MLflow UI    {ui_url(settings)}")
    say(f"  JupyterLab   {lab_url(settings)}")
    say(f"  SSH          ssh {' '.join(ssh_options(settings))} mlflow@{address}   (or: make ssh)")
    say(f"  Model server {settings.url('SERVE_PORT')}/invocations   (after: make serve)")
    if settings.spark or container_of(settings, "spark-master", required=False):
        say(f"  Spark UI     {settings.url('SPARK_UI_PORT')}   (make batch ENGINE=spark runs on this cluster)")
    if settings.monitor or container_of(settings, "prometheus", required=False):
        say(f"  Prometheus   {settings.url('PROMETHEUS_PORT')}   (scrapes tracking and serve; docs/monitoring.md)")
    from .k8s import local_running
    if local_running(settings):
        say(f"  Kubernetes   model {settings.url('K8S_SERVE_PORT')}/invocations, tracking "
            f"{settings.url('K8S_TRACKING_PORT')}   (the local cluster: make k8s-deploy)")
    if settings.team:
        say(f"  Team login   admin / {secret(settings, 'mlflow_admin_password')}   "
            "(more users: make user NAME=alice TEAM=1)")
    say()


def lab(settings):
    say(lab_url(settings))


def ssh(settings):
    execute(["ssh", *ssh_options(settings), f"mlflow@{settings.host_address}"], settings)


def ssh_config(settings, tunnel=False):
    """A ~/.ssh/config block for the dev container's sshd: for this machine, or (REMOTE=you@vm[:port])
    for a laptop that jumps through the machine running the stack and forwards the UI and JupyterLab;
    with tunnel, the one ssh command that only forwards those two."""
    secrets = os.path.realpath(settings.secrets)
    tracking, jupyter = settings["TRACKING_PORT"], settings["JUPYTER_PORT"]
    ui = f"http://127.0.0.1:{tracking}/#/experiments?{MODE}"
    lab = f"http://127.0.0.1:{jupyter}/lab?token=<make lab prints it>"
    remote = settings["REMOTE"]
    address = settings.host_address
    if tunnel:
        if not remote:
            fail("usage: make tunnel REMOTE=you@vm")
        # you@vm:port becomes -p port you@vm, as plain ssh wants it.
        match = re.fullmatch(r"(.+):([0-9]+)", remote)
        if match:
            remote = f"-p {match.group(2)} {match.group(1)}"
        say(f"# On your laptop (leave it running), then open {ui} and {lab}")
        say(f"ssh -N -L 127.0.0.1:{tracking}:{address}:{tracking} -L 127.0.0.1:{jupyter}:{address}:{jupyter} {remote}")
        return
    name = settings.project_name
    if not remote:
        say(f"Host {name}\n  HostName {address}\n  Port {settings['SSH_PORT']}\n  User mlflow\n"
            f"  IdentityFile {secrets}/id_ed25519\n  IdentitiesOnly yes\n  UserKnownHostsFile {secrets}/known_hosts")
        return
    public = os.path.join(secrets, "ssh_host_ed25519_key.pub")
    if not os.path.exists(public) or os.path.getsize(public) == 0:
        fail("no host key yet: run 'make up' first")
    with open(public) as file:
        host_key = " ".join(file.read().split()[:2])
    alias = f"{name}-remote"
    say(f"""# On your laptop: append this block to ~/.ssh/config, then 'ssh {alias}' (or VS Code Remote-SSH).
# It logs in with your laptop's own key: on {remote}, append its public key (~/.ssh/id_ed25519.pub)
# to {secrets}/authorized_keys. While connected, the MLflow UI is at
# {ui} and JupyterLab at {lab}.
# The container's host key is pinned here (KnownHostsCommand), so there is no prompt.
Host {alias}
  HostName {address}
  Port {settings['SSH_PORT']}
  User mlflow
  ProxyJump {remote}
  HostKeyAlias {alias}
  KnownHostsCommand /bin/echo {alias} {host_key}
  StrictHostKeyChecking yes
  LocalForward 127.0.0.1:{tracking} tracking:{TRACKING_CONTAINER_PORT}
  LocalForward 127.0.0.1:{jupyter} 127.0.0.1:8888""")


def confirm(settings, question, refusal):
    """True when CONFIRM=yes or the user answers y; False (after saying refusal) otherwise."""
    if settings["CONFIRM"] == "yes":
        return True
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip() == "y":
        return True
    say(refusal)
    return False


def clean(settings):
    """Removes the stack, its images and every run, model and artifact in ./mlruns (asks first)."""
    team = " and team mode's database and bucket" if settings.team else ""
    if not confirm(settings, f"Delete all runs, models and artifacts in ./mlruns{team}?", "Nothing deleted."):
        raise SystemExit(1)
    compose(settings, "--profile", "serve", "down", "--volumes", "--remove-orphans", "--rmi", "all")
    # Prometheus's samples (make up MONITOR=1): its volume is declared only in compose.monitor.yaml.
    subprocess.run(["docker", "volume", "rm", "-f", f"{settings.project_name}_prometheus-data"],
                   capture_output=True)
    mlruns = settings.root / "mlruns"
    for entry in mlruns.iterdir():
        if entry.name == ".gitkeep":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for stamp in (settings.root / ".build").glob("images-*"):
        stamp.unlink()


def tunnel(settings):
    ssh_config(settings, tunnel=True)
