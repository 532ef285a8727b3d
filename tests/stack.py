"""A throwaway copy of the Compose stack, driven through the Makefile: for end-to-end tests and
benchmarks. The copy has its own ./mlruns and .secrets, a unique Compose project name and free
host ports, so it never touches the user's stack."""

import os
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from helpers import ROOT, free_port

NOT_COPIED = {".git", ".venv", ".build", ".secrets", "__pycache__", ".pytest_cache", ".ipynb_checkpoints"}
PORT_VARIABLES = ("TRACKING_PORT", "JUPYTER_PORT", "SSH_PORT", "SERVE_PORT")


def compose_command():
    """$COMPOSE if set, else `docker compose` (v2) if installed, else `docker-compose` (v1), else None:
    as the Makefile picks."""
    if os.environ.get("COMPOSE"):
        return shlex.split(os.environ["COMPOSE"])
    for candidate in (["docker", "compose"], ["docker-compose"]):
        try:
            if subprocess.run([*candidate, "version"], capture_output=True, timeout=60).returncode == 0:
                return candidate
        except FileNotFoundError:
            continue
    return None


def docker_problem():
    """Why the stack cannot run here, or None."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "the Docker daemon does not answer"
    if compose_command() is None:
        return "neither 'docker compose' nor 'docker-compose' is installed"
    return None


def copy_ignore(folder, names):
    """What a fresh clone would not have: local state, and runs in ./mlruns but its placeholder."""
    if Path(folder) == ROOT / "mlruns":
        return [name for name in names if name != ".gitkeep"]
    return [name for name in names if name in NOT_COPIED]


@dataclass
class Stack:
    root: Path
    env: dict
    ports: dict
    compose: list
    app_uid: int
    log: list = field(default_factory=list)

    @classmethod
    def copy_of_project(cls, parent):
        root = Path(parent) / "mlflow-devstack"
        shutil.copytree(ROOT, root, ignore=copy_ignore)
        ports = {name: free_port() for name in PORT_VARIABLES}
        env = dict(os.environ, COMPOSE_PROJECT_NAME=f"devstack-test-{uuid.uuid4().hex[:8]}",
                   MLRUNS_DIR=str(root / "mlruns"), **{name: str(port) for name, port in ports.items()})
        return cls(root, env, ports, compose_command(), os.getuid() or 1000)

    def make(self, *args, timeout=1800, check=True, input=None):
        result = subprocess.run(["make", "--no-print-directory", *args], cwd=self.root, env=self.env,
                                capture_output=True, text=True, timeout=timeout, input=input)
        self.log.append(f"$ make {' '.join(args)}  -> {result.returncode}\n{result.stdout}{result.stderr}")
        if check and result.returncode != 0:
            raise AssertionError(f"make {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def run_compose(self, *args, timeout=300):
        return subprocess.run([*self.compose, *args], cwd=self.root, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def container_ids(self):
        project = self.env["COMPOSE_PROJECT_NAME"]
        result = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                                capture_output=True, text=True, check=True)
        return result.stdout.split()

    def url(self, port_variable):
        return f"http://127.0.0.1:{self.ports[port_variable]}"

    def logs(self):
        result = self.run_compose("--profile", "serve", "logs", "--no-color", "--tail=200")
        return result.stdout + result.stderr

    def remove(self):
        """Remove containers, network and volume (the images stay, as build cache), then the copy."""
        down = self.run_compose("--profile", "serve", "down", "--volumes", "--remove-orphans")
        shutil.rmtree(self.root, ignore_errors=True)
        if down.returncode != 0:
            raise AssertionError(f"compose down failed: {down.stderr}")
