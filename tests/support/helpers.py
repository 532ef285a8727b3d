"""Shared test plumbing: free ports, readiness by polling, processes that are always cleaned up."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
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


def printed_run(printed):
    """(run id, registered model version) from what train.py (and so `make train`) prints."""
    run_id = re.search(r"^run_id: (\w+)$", printed, re.M).group(1)
    version = re.search(r"^model_uri: models:/wine-quality/(\d+)$", printed, re.M).group(1)
    return run_id, version


@contextmanager
def scoring_server(server, model_path, log_dir, workers=2, model_uri=None, **settings):
    """SERVE_SERVER=server on model_path (from model_uri, if given), as serve_model.py execs it;
    yields (base URL, process)."""
    import serve_model  # images/serve, on the tests' path (pytest.ini), not on bench's
    port = free_port()
    env = tool_env(SERVE_SERVER=server, SERVE_WORKERS=workers, **settings)
    command, env = serve_model.server_command(str(model_path), "127.0.0.1", port, env, model_uri)
    base = f"http://127.0.0.1:{port}"
    with background_process(command, Path(log_dir) / f"{server}.log", f"{base}/ping", timeout=180,
                            env=env, cwd=log_dir) as process:
        yield base, process


def wrk(url, body, seconds, connections, threads=2, host=None):
    """POST body (JSON) to url with wrk for `seconds` (with this Host header, if given); returns its
    figures: requests, errors (non-2xx answers and socket errors), requests_per_s, p50/p99 in ms."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                     f"wrk.body = {json.dumps(body)}\n")
        script.flush()
        result = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                                 *(["-H", f"Host: {host}"] if host else []), "-s", script.name, url],
                                capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stderr or result.stdout}")
    report = result.stdout
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    return {"requests": int(re.search(r"(\d+) requests in", report).group(1)),
            "errors": (sum(map(int, socket_errors.groups())) if socket_errors else 0)
                      + (int(non_2xx.group(1)) if non_2xx else 0),
            "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", report).group(1)),
            "p50_ms": _ms(re.search(r"^\s+50%\s+(\S+)$", report, re.M).group(1)),
            "p99_ms": _ms(re.search(r"^\s+99%\s+(\S+)$", report, re.M).group(1)),
            "report": report}


def _ms(value):
    """wrk's latency (e.g. 812.00us, 1.24ms, 2.01s) in ms."""
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000}[unit]


def worker_pids(supervisor_pid):
    """pids of the uvicorn workers under a supervisor (multiprocessing's resource tracker excluded)."""
    children = subprocess.run(["pgrep", "-P", str(supervisor_pid)], capture_output=True, text=True).stdout
    found = []
    for pid in children.split():
        try:
            if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except FileNotFoundError:  # exited meanwhile
            pass
    return sorted(found)
