"""devstack/doctor.py (make doctor), in a temporary project folder, against fake `docker` and Compose
commands: no Docker daemon is needed, and each test controls what "Docker" answers. The doctor runs
in-process on the settings load() makes of the folder's .env and the test's variables, as the user
whose ids the test gives: the root and non-root branches both run whoever runs the tests."""

import dataclasses
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager

import pytest

from devstack import doctor as doctor_module
from devstack.proc import Failure
from devstack.settings import load
from tests.support.helpers import ROOT, free_port

BASE_IMAGE = "python:3.11-slim-bookworm"
LOCAL_BASE_IMAGE = "mlflow-devstack-base:bookworm"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"

# Answers as Docker 20.10 does. FAKE_DAEMON: up, down or denied; FAKE_IMAGES: the images present;
# FAKE_STATE_<service> (dashes as underscores): that service's container state (status/health);
# FAKE_PORT_<service>: the host port it publishes. Every call is logged to $FAKE_LOG.
FAKE_DOCKER = r"""#!/usr/bin/env bash
echo "$*" >>"$FAKE_LOG"
case $1 in
  --version) echo "Docker version 20.10.24, build 297e128" ;;
  info)
    case $FAKE_DAEMON in
      up) echo "20.10.24" ;;
      denied) echo "permission denied while trying to connect to the Docker daemon socket at" \
        "unix:///var/run/docker.sock" >&2; exit 1 ;;
      *) echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." \
        "Is the docker daemon running?" >&2; exit 1 ;;
    esac ;;
  image)
    case " $FAKE_IMAGES " in *" $3 "*) echo "[{}]" ;; *) echo "Error: No such image: $3" >&2; exit 1 ;; esac ;;
  inspect)
    service=${4%-id} && state=FAKE_STATE_${service//-/_}
    [ -n "${!state:-}" ] || { echo "Error: No such object: $4" >&2; exit 1; }
    echo "${!state}" ;;
  port)
    port=FAKE_PORT_${2%-id}
    [ -z "${!port:-}" ] || echo "5000/tcp -> 127.0.0.1:${!port}" ;;
  *) echo "fake docker: unexpected call: $*" >&2; exit 1 ;;
esac
"""

# Compose v1 that knows no project: prints nothing, except a container id for each FAKE_STATE_<service>.
FAKE_COMPOSE = r"""#!/usr/bin/env bash
echo "compose $*" >>"$FAKE_LOG"
case $1 in
  version) echo "1.29.2" ;;
  ps)
    service=${!#} && state=FAKE_STATE_${service//-/_}
    [ -z "${!state:-}" ] || echo "${!#}-id" ;;
esac
exit 0
"""


@contextmanager
def busy_port():
    """A port on 127.0.0.1 that a program listens on for the block's duration."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def write_script(path, text):
    path.write_text(text)
    path.chmod(0o755)


def distinct_free_ports(count):
    ports = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


@pytest.fixture
def project(tmp_path):
    """A project folder with the checkout's .env, empty workspace/ and mlruns/, and a bin/ of fakes."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy2(ROOT / ".env", folder / ".env")
    for name in ("workspace", "mlruns"):
        (folder / name).mkdir()
        (folder / name).chmod(0o775)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_script(bin_dir / "docker", FAKE_DOCKER)
    write_script(bin_dir / "fake-compose", FAKE_COMPOSE)
    return folder


def doctor_env(project, settings):
    """make doctor's variables (overridden by settings; None removes one) with the fakes first on PATH."""
    bin_dir = project.parent / "bin"
    ports = distinct_free_ports(4)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(project.parent),
        "LANG": "C.UTF-8",
        "FAKE_LOG": str(project.parent / "docker.log"),
        "FAKE_DAEMON": "up",
        "FAKE_IMAGES": BASE_IMAGE,
        "COMPOSE": str(bin_dir / "fake-compose"),
        "BIND_ADDRESS": "127.0.0.1",
        "TRACKING_PORT": ports[0], "JUPYTER_PORT": ports[1], "SSH_PORT": ports[2], "SERVE_PORT": ports[3],
        "BASE_IMAGE": BASE_IMAGE,
        "LOCAL_BASE_IMAGE": LOCAL_BASE_IMAGE,
        # APP_UID and APP_GID: the UID rule's (yours, or 1000 for root), as make doctor has them.
        "EXTRA_CA_CERTS": "",
        "TRACKING_ALLOWED_HOSTS": "",
    }
    env.update(settings)
    return {key: str(value) for key, value in env.items() if value is not None}


def checked(stdout, stderr, status):
    """The doctor's lines, once its output is checked: never a word to stderr, every line a check or
    the summary, exit status 1 exactly when something needs fixing."""
    assert stderr == ""
    lines = stdout.splitlines()
    assert lines, "doctor printed nothing"
    for line in lines[:-1]:
        assert line[:5] in ("OK   ", "FIX  ", "--   "), line
    assert lines[-1] in ("Nothing to fix.", f"{len(fixes(lines))} to fix."), lines[-1]
    assert (status == 1) == bool(fixes(lines)), stdout
    return lines


@pytest.fixture
def doctor(project, monkeypatch, capfd):
    """Runs the doctor on make doctor's settings (overridden by keyword arguments), as the user uid
    (default: you); returns its lines and exit status (raw: its stdout, stderr and exit status,
    unchecked). unset: settings to drop from what load() made, as a Settings built by hand (not by
    make doctor) could lack them."""

    def run(uid=None, unset=(), raw=False, **settings):
        env = doctor_env(project, settings)
        # The fakes read their FAKE_* variables from the environment the doctor's commands inherit.
        for name in [name for name in os.environ if name.startswith("FAKE_")]:
            monkeypatch.delenv(name)
        for name in ("PATH", "FAKE_LOG", *(name for name in env if name.startswith("FAKE_"))):
            monkeypatch.setenv(name, env[name])
        host_ids = (os.getuid() if uid is None else uid, os.getgid())
        loaded = load(project, environ=env, host_ids=host_ids)
        if unset:
            loaded = dataclasses.replace(loaded, values={name: value for name, value in loaded.values.items()
                                                         if name not in unset})
        capfd.readouterr()
        status = 0
        try:
            doctor_module.doctor(loaded)
        except Failure as failure:
            assert failure.lines == (), failure.lines  # nothing for the command line to print
            status = failure.status
        captured = capfd.readouterr()
        if raw:
            return captured.out, captured.err, status
        return checked(captured.out, captured.err, status), status

    return run


def fixes(lines):
    return [line for line in lines if line.startswith("FIX  ")]


def test_a_healthy_machine_with_no_stack_has_nothing_to_fix(project, doctor):
    lines, status = doctor()
    assert status == 0 and lines[-1] == "Nothing to fix."
    assert "OK   docker CLI 20.10.24" in lines
    assert "OK   Docker daemon answers: server 20.10.24" in lines
    assert "OK   Compose: " + str(project.parent / "bin" / "fake-compose") + " 1.29.2" in lines
    assert f"OK   base image {BASE_IMAGE} is present" in lines
    assert sum("is free" in line for line in lines) == 4
    assert "--   the stack is not running: make up" in lines


@pytest.mark.parametrize("daemon, expected", [
    ("down", "the Docker daemon does not answer: start Docker (Docker Desktop, or sudo systemctl start docker)"),
    ("denied", "the Docker daemon refuses you (permission denied): sudo usermod -aG docker"),
])
def test_a_daemon_that_does_not_answer_gives_the_fix_and_skips_what_needs_it(project, daemon, expected, doctor):
    lines, status = doctor(uid=4242, FAKE_DAEMON=daemon)
    assert status == 1
    assert any(line.startswith("FIX  " + expected) for line in lines), lines
    if sys.platform.startswith("linux"):  # the docker group is a Linux thing
        assert any("usermod -aG docker" in line for line in fixes(lines))
    assert "--   base image: skipped, no Docker daemon" in lines
    assert "--   stack health: skipped, no Docker daemon" in lines
    calls = (project.parent / "docker.log").read_text().splitlines()
    assert not [call for call in calls if call.split()[0] in ("image", "inspect", "port")], calls
    assert not [call for call in calls if call.startswith("compose ps")], calls


def test_root_is_not_told_to_join_the_docker_group(doctor):
    lines, status = doctor(uid=0, FAKE_DAEMON="down")
    assert status == 1
    assert fixes(lines) == ["FIX  the Docker daemon does not answer: start Docker (Docker Desktop, "
                            "or sudo systemctl start docker)"]


def test_a_busy_port_without_daemon_is_not_blamed_on_another_program(doctor):
    with busy_port() as port:
        lines, _ = doctor(FAKE_DAEMON="down", TRACKING_PORT=port)
    assert (f"--   port {port} on 127.0.0.1 (TRACKING_PORT) is in use: by this stack or not, "
            "only the Docker daemon knows") in lines
    assert not [line for line in fixes(lines) if "TRACKING_PORT" in line]


def test_a_busy_port_names_the_variable_to_change(doctor):
    with busy_port() as port:
        lines, status = doctor(JUPYTER_PORT=port)
    assert status == 1
    assert fixes(lines) == [f"FIX  port {port} on 127.0.0.1 (JUPYTER_PORT) is used by another program: "
                            "set JUPYTER_PORT=<free port> in .env"]
    assert sum("is free" in line for line in lines) == 3


def test_bind_address_0000_checks_the_ports_on_127001(doctor):
    with busy_port() as port:
        lines, status = doctor(BIND_ADDRESS="0.0.0.0", SSH_PORT=port)
    assert status == 1
    assert any(line.startswith(f"FIX  port {port} on 127.0.0.1 (SSH_PORT)") for line in lines), lines


@pytest.fixture
def tracking_server():
    """A stand-in for MLflow's host check: /health answers 200 for allowed Host headers, else 403."""
    allowed, seen = set(), []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers["Host"])
            self.send_response(200 if self.path == "/health" and self.headers["Host"] in allowed else 403)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_port
    allowed.update({f"127.0.0.1:{port}", f"localhost:{port}"})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port, allowed, seen
    server.shutdown()
    server.server_close()


def running_stack(port):
    return dict(TRACKING_PORT=port, FAKE_PORT_tracking=port, FAKE_STATE_tracking="running/healthy",
                FAKE_STATE_dev="running/healthy")


def test_a_host_name_tracking_refuses_gives_the_setting_to_change(tracking_server, doctor):
    port, allowed, seen = tracking_server
    lines, status = doctor(**running_stack(port),
                           TRACKING_ALLOWED_HOSTS=f"mlflow.example.com:{port},*.example.com:*")
    assert status == 1
    assert fixes(lines) == [f"FIX  tracking refuses the host name mlflow.example.com:{port} (403): "
                            "add it to TRACKING_ALLOWED_HOSTS in .env, then make up"]
    assert f"OK   tracking accepts the host name 127.0.0.1:{port}" in lines
    assert f"OK   tracking accepts the host name localhost:{port}" in lines
    assert sorted(seen) == sorted([f"127.0.0.1:{port}", f"localhost:{port}", f"mlflow.example.com:{port}"])


def test_a_running_healthy_stack_owns_its_ports_and_accepts_its_names(tracking_server, doctor):
    port, allowed, seen = tracking_server
    allowed.add(f"mlflow.example.com:{port}")
    lines, status = doctor(**running_stack(port), TRACKING_ALLOWED_HOSTS=f"mlflow.example.com:{port}")
    assert status == 0, lines
    assert f"OK   port {port} (TRACKING_PORT) is published by this stack's tracking" in lines
    assert "OK   tracking is running and healthy" in lines and "OK   dev is running and healthy" in lines
    assert "--   serve is not running: make serve" in lines
    assert f"OK   tracking accepts the host name mlflow.example.com:{port}" in lines


def test_an_unhealthy_or_stopped_service_is_a_fix(tracking_server, doctor):
    port, _, _ = tracking_server
    lines, status = doctor(**dict(running_stack(port), FAKE_STATE_dev="exited/unhealthy",
                                  FAKE_STATE_serve="running/unhealthy", FAKE_PORT_serve=None))
    assert status == 1
    assert fixes(lines) == ["FIX  dev is exited/unhealthy: see make logs SERVICE=dev, then make up",
                            "FIX  serve is running/unhealthy: see make logs SERVICE=serve, then make serve"]


def test_a_tracking_container_that_does_not_answer_is_a_fix(doctor):
    port = free_port()  # published, says "Docker", but nothing listens there
    lines, status = doctor(**running_stack(port))
    assert status == 1
    assert fixes(lines) == [f"FIX  tracking does not answer at http://127.0.0.1:{port}/health: "
                            "make logs SERVICE=tracking"]


@pytest.mark.parametrize("mode, writable", [(0o644, False), (0o664, True)])
def test_a_workspace_file_the_containers_cannot_write_is_a_fix_when_not_root(project, mode, writable, doctor):
    notes = project / "workspace" / "notes.txt"
    notes.write_text("mine\n")
    notes.chmod(mode)
    # Another uid in the file's group: only the group write bit lets the containers write it.
    uid, gid = os.getuid() + 1, notes.stat().st_gid
    lines, status = doctor(uid=4242, APP_UID=uid, APP_GID=gid)
    if writable:
        assert status == 0, lines
        assert f"OK   workspace/ is writable by uid:gid {uid}:{gid} of the containers" in lines
    else:
        assert status == 1
        assert fixes(lines) == [f"FIX  workspace/ holds 1 path(s) the containers' uid {uid} cannot write "
                                f"(e.g. workspace/notes.txt): sudo chown -R {uid}:{gid} workspace"]
    assert f"OK   mlruns/ is writable by uid:gid {uid}:{gid} of the containers" in lines


def test_as_root_make_up_hands_the_files_over(project, doctor):
    (project / "mlruns").chmod(0o755)
    uid = os.getuid() + 1
    lines, status = doctor(uid=0, APP_UID=uid, APP_GID=os.getgid() + 1)
    assert status == 0, lines
    assert (f"--   mlruns/ holds 1 path(s) the containers' uid {uid} cannot write (e.g. mlruns): "
            "make up, run as root, hands them over") in lines


def test_an_app_uid_missing_from_env_file_is_pointed_out(project, doctor):
    uid = 1234  # not 1000, the default the images and plain compose assume
    lines, _ = doctor(APP_UID=uid)
    assert any(line.startswith(f"--   containers run as uid {uid}, which .env does not say") for line in lines)
    dotenv = project / ".env"
    text = re.sub(r"(?m)^APP_UID=.*$", f"APP_UID={uid}", dotenv.read_text())
    dotenv.write_text(re.sub(r"(?m)^APP_GID=.*$", f"APP_GID={os.getgid()}", text))
    lines, _ = doctor(APP_UID=uid)
    assert not any("which .env does not say" in line for line in lines)


@pytest.mark.parametrize("images, expected", [
    (BASE_IMAGE, f"OK   base image {BASE_IMAGE} is present"),
    (LOCAL_BASE_IMAGE, f"OK   registry-free base {LOCAL_BASE_IMAGE} is present"),
    ("", f"--   base image {BASE_IMAGE} is not here yet: make up pulls it"),
])
def test_the_base_image(images, expected, doctor):
    lines, status = doctor(FAKE_IMAGES=images)
    assert expected in lines
    assert status == 0


def test_extra_ca_certs_pointing_nowhere_is_a_fix(project, doctor):
    missing = project.parent / "proxy-ca.crt"
    lines, status = doctor(EXTRA_CA_CERTS=missing)
    assert status == 1
    assert fixes(lines) == [f"FIX  EXTRA_CA_CERTS={missing} does not exist: set EXTRA_CA_CERTS in .env to "
                            "your proxy's CA certificate (PEM) or a folder of *.crt files, or leave it empty"]


def test_extra_ca_certs_are_counted(tmp_path, doctor):
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(PEM * 2)
    lines, status = doctor(EXTRA_CA_CERTS=bundle)
    assert status == 0 and f"OK   EXTRA_CA_CERTS={bundle}: 2 certificate(s) for the images to trust" in lines
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "proxy.crt").write_text(PEM)
    (folder / "notes.txt").write_text(PEM)  # make build copies *.crt only
    lines, status = doctor(EXTRA_CA_CERTS=folder)
    assert status == 0 and f"OK   EXTRA_CA_CERTS={folder}: 1 certificate(s) for the images to trust" in lines
    bundle.write_bytes(b"\x30\x82\x01\x0a DER, not PEM")
    lines, status = doctor(EXTRA_CA_CERTS=bundle)
    assert status == 1 and any("holds no PEM certificate" in line for line in fixes(lines))


def test_a_compose_that_does_not_run_is_a_fix(doctor):
    lines, status = doctor(COMPOSE="docker-compose-that-is-not-installed")
    assert status == 1
    assert fixes(lines)[0].startswith("FIX  'docker-compose-that-is-not-installed' does not run: install Compose")


def test_settings_that_lack_a_needed_value_say_so_in_one_line(doctor):
    # load() refuses such settings; a Settings built another way gets one line, not a traceback.
    lines, status = doctor(unset=("TRACKING_PORT",))
    assert status == 1
    assert lines == ["FIX  TRACKING_PORT is not set: run this as make doctor", "1 to fix."]


def test_a_bug_in_the_doctor_still_ends_in_one_readable_line(doctor, monkeypatch):
    def broken(*args):
        raise ValueError("a bug\non two lines")

    monkeypatch.setattr(doctor_module, "unwritable", broken)
    stdout, stderr, status = doctor(raw=True)
    assert stderr == "" and status == 1
    assert re.fullmatch(r"FIX  devstack/doctor\.py stopped at line \d+ \(ValueError: a bug on two lines\): "
                        "please report it", stdout.splitlines()[-1]), stdout
    assert "OK   docker CLI 20.10.24" in stdout.splitlines()  # the checks before it were printed


@pytest.mark.parametrize("daemon", ["up", "down"])
def test_the_command_line_runs_it_with_the_env_file_and_its_exit_status(project, daemon):
    """python3 -m devstack doctor, as make doctor runs it: the settings the tests give on top of the
    folder's .env, the lines on stdout only, exit status 1 exactly when something needs fixing."""
    env = doctor_env(project, {"FAKE_DAEMON": daemon, "PYTHONPATH": str(ROOT)})
    result = subprocess.run([sys.executable, "-m", "devstack", "-C", str(project), "doctor"], env=env,
                            capture_output=True, text=True, timeout=120)
    lines = checked(result.stdout, result.stderr, result.returncode)
    assert result.returncode == (0 if daemon == "up" else 1), result.stdout
    assert f"OK   port {env['TRACKING_PORT']} on 127.0.0.1 (TRACKING_PORT) is free" in lines


TEAM_SERVICES = ("tracking_a", "tracking_b", "postgres", "storage")


def team_mode(port, **states):
    """A running team stack: every service healthy unless states says otherwise."""
    settings = dict(running_stack(port), TEAM="1", GARAGE_IMAGE="dxflrs/garage:v2.5.0",
                    LOCAL_GARAGE_IMAGE="mlflow-devstack-garage:2.5.0",
                    FAKE_IMAGES=f"{BASE_IMAGE} mlflow-devstack-garage:2.5.0")
    settings.update({f"FAKE_STATE_{service}": "running/healthy" for service in TEAM_SERVICES})
    settings.update({f"FAKE_STATE_{service}": state for service, state in states.items()})
    return settings


def test_team_mode_checks_every_team_service_and_garage(tracking_server, doctor):
    port, _, _ = tracking_server
    lines, status = doctor(**team_mode(port))
    assert status == 0, lines
    for service in ("tracking", "dev", "tracking-a", "tracking-b", "postgres", "storage"):
        assert f"OK   {service} is running and healthy" in lines
    assert "OK   Garage built here, mlflow-devstack-garage:2.5.0, is present" in lines
    assert "--   serve is not running: make serve TEAM=1" in lines


def test_a_stopped_team_service_is_a_fix_with_team_commands(tracking_server, doctor):
    port, _, _ = tracking_server
    lines, status = doctor(**team_mode(port, postgres="exited/", tracking_b="running/unhealthy"))
    assert status == 1
    assert fixes(lines) == [
        "FIX  tracking-b is running/unhealthy: see make logs SERVICE=tracking-b TEAM=1, then make up TEAM=1",
        "FIX  postgres is exited: see make logs SERVICE=postgres TEAM=1, then make up TEAM=1"]


def test_without_garage_team_mode_says_how_make_up_gets_it(tracking_server, doctor):
    port, _, _ = tracking_server
    lines, _ = doctor(**dict(team_mode(port), FAKE_IMAGES=BASE_IMAGE))
    assert any(line.startswith("--   Garage is not here yet: make up TEAM=1 pulls dxflrs/garage:v2.5.0")
               for line in lines)
    lines, _ = doctor(**running_stack(port))  # the local stack: no word of Garage or replicas
    assert not [line for line in lines if "Garage" in line or "tracking-a" in line]
