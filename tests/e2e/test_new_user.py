"""What a new user meets: plain Compose commands, saving notebooks, telemetry, a second checkout run
by another user beside the first, the remote SSH workflow, VS Code's devcontainer.json, make doctor."""

import getpass
import json
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.support.helpers import SSH_BATCH, free_port
from tests.support.stack import PORT_VARIABLES, Stack, base_env, running

OTHER_USER = "devstack-e2e"


def image_ids(stack):
    """{container: image ID} of the stack's running containers."""
    ids = {}
    for container in stack.container_ids():
        ids[container] = subprocess.run(["docker", "inspect", "-f", "{{.Image}}", container],
                                        capture_output=True, text=True, check=True).stdout.strip()
    return ids


def health(stack, *services):
    containers = [stack.container_of(service) for service in services]
    return subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", *containers],
                          capture_output=True, text=True, check=True).stdout.split()


def save_notebook_through_jupyter(stack, name="experiment.ipynb"):
    """Add a cell to a notebook through the Jupyter contents API, as JupyterLab's Save does; return
    the marker the cell holds. Fails if JupyterLab opens the notebook read-only."""
    headers = {"Authorization": f"token {stack.secret('jupyter_token')}"}
    api = f"{stack.url('JUPYTER_PORT')}/api/contents/{name}"
    notebook = requests.get(api, headers=headers, timeout=30).json()
    assert notebook["writable"] is True, "JupyterLab would open the notebook read-only"
    marker = f"saved-{uuid.uuid4().hex[:8]}"
    content = notebook["content"]
    content["cells"].append({"cell_type": "markdown", "metadata": {}, "source": marker, "id": marker})
    response = requests.put(api, headers=headers, timeout=30,
                            json={"type": "notebook", "format": "json", "content": content})
    assert response.status_code == 200, response.text
    return marker


def test_plain_compose_commands_need_nothing_but_env(stack):
    env = {name: value for name, value in base_env().items() if name not in PORT_VARIABLES}
    compose = [*stack.compose]

    def run(*args):
        return subprocess.run([*compose, *args], cwd=stack.root, env=env, capture_output=True, text=True,
                              timeout=120)

    ps = run("ps")
    assert ps.returncode == 0, ps.stderr
    assert "tracking" in ps.stdout and "dev" in ps.stdout
    logs = run("logs", "--no-color", "tracking")
    assert logs.returncode == 0, logs.stderr
    assert "Uvicorn running on http://0.0.0.0:5000" in logs.stdout
    # Compose v2 can report exit 0 for a failed exec: the printed values are what is checked.
    exec_ = run("exec", "-T", "dev", "python", "-c",
                "import os, mlflow; print(os.getcwd(), os.environ['MLFLOW_TRACKING_URI'], mlflow.__version__)")
    assert exec_.stdout.split() == ["/home/mlflow/workspace", "http://tracking:5000", "3.17.2"], exec_.stderr


def test_a_notebook_saved_in_jupyterlab_lands_in_workspace_as_the_host_user(stack):
    marker = save_notebook_through_jupyter(stack)
    on_host = stack.root / "workspace" / "experiment.ipynb"
    assert marker in on_host.read_text()
    assert on_host.stat().st_uid == stack.app_uid


def test_every_file_in_workspace_and_mlruns_belongs_to_the_container_user(stack):
    foreign = [path for folder in ("workspace", "mlruns") for path in (stack.root / folder).rglob("*")
               if path.lstat().st_uid != stack.app_uid]
    assert foreign == []


def test_telemetry_is_off_in_every_container_and_the_ui(stack, served):
    probe = "from mlflow.telemetry.utils import is_telemetry_disabled as off; print(off())"
    for container in stack.container_ids():
        result = subprocess.run(["docker", "exec", container, "python", "-c", probe], capture_output=True,
                                text=True, timeout=120)
        assert result.stdout.strip() == "True", (container, result.stderr)
    ui = requests.get(stack.url("TRACKING_PORT") + "/ajax-api/3.0/mlflow/ui-telemetry", timeout=30).json()
    assert ui["disable_ui_telemetry"] is True


def test_make_doctor_finds_nothing_to_fix_on_a_healthy_stack(stack):
    result = stack.make("doctor", check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FIX" not in result.stdout
    assert re.search(r"^OK .*tracking.*healthy", result.stdout, re.M | re.I), result.stdout


@pytest.fixture(scope="module")
def other_user():
    """A non-root user in the docker group, as a second person on the machine: only when the tests
    run as root (as in CI); otherwise the tests already run as a non-root user."""
    if os.getuid() != 0:
        yield None
        return
    remove_account(OTHER_USER)  # left by a run that was killed before its clean-up
    subprocess.run(["useradd", "--create-home", "--groups", "docker", OTHER_USER], check=True)
    try:
        yield OTHER_USER
    finally:
        remove_account(OTHER_USER)


def remove_account(name):
    """Remove the account and what still runs as it: userdel refuses an account with a running
    process, and the account then outlives the tests and fails the next run's useradd."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    subprocess.run(["pkill", "--signal", "KILL", "--uid", name], capture_output=True)
    subprocess.run(["userdel", "--force", "--remove", name], capture_output=True, text=True)
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    raise RuntimeError(f"the test account {name} could not be removed: userdel {name} by hand")


@pytest.fixture(scope="module")
def second_stack(stack, other_user, request):
    """A second checkout in another folder, started while the first runs, by the other user."""
    before = image_ids(stack)
    parent = Path(tempfile.mkdtemp(prefix="devstack-second-"))
    parent.chmod(0o755)
    try:
        with running(Stack.copy_of_project(parent, user=other_user), request,
                     lambda second: second.make("up", timeout=3600)) as second:
            yield second, before
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_a_second_checkout_runs_beside_the_first(stack, second_stack):
    second, before = second_stack
    for each in (stack, second):
        assert health(each, "tracking", "dev") == ["healthy", "healthy"]
    # The first stack's containers were neither recreated nor rebuilt.
    assert image_ids(stack) == before


def test_the_second_user_trains_and_saves_and_keeps_their_files(second_stack):
    second, _ = second_stack
    result = second.make("train", "ALPHA=0.1", "L1=0.1", timeout=600)
    assert re.search(r"^run_id: \w+$", result.stdout, re.M)
    marker = save_notebook_through_jupyter(second)
    assert marker in (second.root / "workspace" / "experiment.ipynb").read_text()
    owners = {path.lstat().st_uid for folder in ("workspace", "mlruns") for path in (second.root / folder).rglob("*")}
    assert owners == {second.app_uid}


@pytest.fixture
def vm_sshd(tmp_path):
    """The "VM" of the remote workflow: Debian's sshd on a free loopback port, letting the current
    user in with a fresh key. Returns (port, private key)."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    key, host_key = tmp_path / "laptop_key", tmp_path / "vm_host_key"
    for path in (key, host_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    (tmp_path / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
                      f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nPasswordAuthentication no\n"
                      "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
                      "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\n")
    if os.getuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "the VM's sshd did not listen"
                time.sleep(0.2)
        yield port, key
    finally:
        process.terminate()
        process.wait(timeout=30)


def laptop_ssh_config(stack, vm_port, vm_key, tmp_path):
    """The block `make ssh-config REMOTE=` prints, plus how this "laptop" logs in to the VM."""
    block = stack.make("ssh-config", f"REMOTE={getpass.getuser()}@127.0.0.1:{vm_port}").stdout
    config = tmp_path / "laptop_ssh_config"
    config.write_text(f"{block}\nHost 127.0.0.1\n  IdentityFile {vm_key}\n  IdentitiesOnly yes\n"
                      "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
    return block, config


def wait_for_local_port(port, process, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


def assert_tunnel_reaches_ui_and_lab(ssh_command, ui_port, lab_port):
    """Runs an ssh that forwards local ports, then asks the tracking server and JupyterLab through them."""
    tunnel = subprocess.Popen([*ssh_command[:1], "-o", "ExitOnForwardFailure=yes", *ssh_command[1:]],
                              stderr=subprocess.PIPE, text=True)
    try:
        for port in (ui_port, lab_port):
            wait_for_local_port(port, tunnel)
        assert requests.get(f"http://127.0.0.1:{ui_port}/health", timeout=30).text == "OK"
        assert requests.get(f"http://127.0.0.1:{lab_port}/api", timeout=30).status_code == 200
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=30)


def test_a_laptop_reaches_the_dev_container_through_the_vm(stack, vm_sshd, tmp_path):
    vm_port, vm_key = vm_sshd
    block, config = laptop_ssh_config(stack, vm_port, vm_key, tmp_path)
    alias = f"{stack.project}-remote"
    # The laptop's key: here the stack's own, already in .secrets/authorized_keys.
    key = ["-i", str(stack.root / ".secrets" / "id_ed25519"), "-o", "IdentitiesOnly=yes"]
    result = subprocess.run(["ssh", "-F", str(config), *key, *SSH_BATCH, alias, "pwd; id -un"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["/home/mlflow", "mlflow"]

    # The block's forwards: the UI from the tracking service, JupyterLab from the dev container. They
    # listen on the stack's own port numbers, busy here, so the test opens the same destinations on
    # free ports.
    forwards = dict(re.findall(r"^\s*LocalForward 127\.0\.0\.1:(\d+) (\S+)$", block, re.M))
    assert forwards == {str(stack.ports["TRACKING_PORT"]): "tracking:5000",
                        str(stack.ports["JUPYTER_PORT"]): "127.0.0.1:8888"}
    local = {destination: free_port() for destination in forwards.values()}
    without_forwards = tmp_path / "laptop_ssh_config_without_forwards"
    without_forwards.write_text(re.sub(r"^\s*LocalForward .*\n", "", config.read_text(), flags=re.M))
    assert_tunnel_reaches_ui_and_lab(
        ["ssh", "-F", str(without_forwards), *key, *SSH_BATCH, "-N",
         *[f"-L127.0.0.1:{port}:{destination}" for destination, port in local.items()], alias],
        local["tracking:5000"], local["127.0.0.1:8888"])


def test_make_tunnel_prints_a_command_that_forwards_the_ui_and_jupyterlab(stack, vm_sshd):
    vm_port, vm_key = vm_sshd
    printed = stack.make("tunnel", f"REMOTE={getpass.getuser()}@127.0.0.1:{vm_port}").stdout
    [command] = [shlex.split(line) for line in printed.splitlines() if line.startswith("ssh ")]
    # Each -L listens on the stack's own port number, busy on this machine (the "laptop" is the VM
    # here): the same forward is opened on a free port.
    local = {}
    for index, argument in enumerate(command[:-1]):
        if argument == "-L":
            address, port, destination = command[index + 1].split(":", 2)
            local[destination] = free_port()
            command[index + 1] = f"{address}:{local[destination]}:{destination}"
    assert set(local) == {f"127.0.0.1:{stack.ports['TRACKING_PORT']}", f"127.0.0.1:{stack.ports['JUPYTER_PORT']}"}
    assert_tunnel_reaches_ui_and_lab(
        [command[0], "-i", str(vm_key), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", *SSH_BATCH, *command[1:]],
        local[f"127.0.0.1:{stack.ports['TRACKING_PORT']}"], local[f"127.0.0.1:{stack.ports['JUPYTER_PORT']}"])


def devcontainer_project_name(root, env):
    """The Compose project VS Code's Dev Containers use, by the rules of devcontainers/cli
    (getProjectName): COMPOSE_PROJECT_NAME, else the one in .env, else the compose file's folder."""
    def normalise(name):
        return re.sub(r"[^-_a-z0-9]", "", name.lower())
    if env.get("COMPOSE_PROJECT_NAME"):
        return normalise(env["COMPOSE_PROJECT_NAME"])
    match = re.search(r"^COMPOSE_PROJECT_NAME=(.+)$", (root / ".env").read_text(), re.M)
    if match:
        return normalise(match.group(1).strip())
    return normalise(root.name)


def test_vs_code_devcontainer_attaches_to_the_running_dev_container(stack):
    config = json.loads((stack.root / ".devcontainer" / "devcontainer.json").read_text())
    assert [(stack.root / ".devcontainer" / name).resolve() for name in config["dockerComposeFile"]] == \
        [stack.root / "compose.yaml"]
    # Same project as make's: Dev Containers find the running container instead of starting a stack.
    assert devcontainer_project_name(stack.root, base_env()) == stack.project
    container = stack.container_of(config["service"])
    assert container
    probe = "id -u; pwd; test -w . && echo writable; python -c 'import mlflow; print(mlflow.__version__)'"
    result = subprocess.run(["docker", "exec", "-u", config["remoteUser"], "-w", config["workspaceFolder"],
                             container, "bash", "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == [str(stack.app_uid), config["workspaceFolder"], "writable", "3.17.2"], \
        result.stderr
    assert config["initializeCommand"] == "make up"
