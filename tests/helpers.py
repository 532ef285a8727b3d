"""Shared test plumbing: free ports, readiness by polling, processes that are always cleaned up."""

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

import serve_model

ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = ROOT / "workspace"
VENV_BIN = Path(sys.executable).parent
# ssh options for tests: never prompt, give up quickly on an unreachable host.
SSH_BATCH = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]


def free_port():
    """A TCP port nothing listens on right now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path, lines=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for_http(url, timeout, process=None, log=None):
    """Poll url until it answers 200; fail early if the process serving it has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before {url} was ready:\n"
                                 f"{tail(log)}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready after {timeout}s:\n{tail(log)}")


def tool_env(**extra):
    """The environment for the venv's tools: its bin first on PATH (mlflow models serve runs uvicorn)."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    env.update({key: str(value) for key, value in extra.items()})
    return env


@contextmanager
def background_process(command, log, ready_url, timeout=120, **popen):
    """Run command until the block ends; it is ready once ready_url answers. Killed with its children."""
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True, **popen)
    try:
        wait_for_http(ready_url, timeout, process, log)
        yield process
    finally:
        stop_process_group(process)


def stop_process_group(process):
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_python(script, *args, env=None, cwd=WORKSPACE, timeout=600):
    """Run a workspace script with the test venv's Python; return the CompletedProcess."""
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=cwd, env=env or tool_env(),
                          capture_output=True, text=True, timeout=timeout)


@contextmanager
def scoring_server(server, model_path, log_dir, workers=2, **settings):
    """SERVE_SERVER=server on model_path, as serve_model.py execs it; yields (base URL, process)."""
    port = free_port()
    env = tool_env(SERVE_SERVER=server, SERVE_WORKERS=workers, **settings)
    command, env = serve_model.server_command(str(model_path), "127.0.0.1", port, env)
    base = f"http://127.0.0.1:{port}"
    with background_process(command, Path(log_dir) / f"{server}.log", f"{base}/ping", timeout=180,
                            env=env, cwd=log_dir) as process:
        yield base, process
