"""make doctor: one screen of the checks users trip on, one line each: "OK", "FIX" (what is wrong, then
the command or setting that fixes it) or "--" (information, or skipped). Exits 1 if anything needs
fixing. Everything goes to stdout, nothing to stderr: the screen is the report.

Docker and Compose are asked as commands (as a user would); the rest (ports, files, certificates,
host names) is looked at from Python, so that no GNU tool or shell is needed (a stock Mac has
neither `timeout` nor GNU find).
"""

import glob
import os
import platform
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import traceback
from http.client import HTTPConnection

from .proc import Failure, listening, publishes, quiet, state
from .settings import SettingsError, read_dotenv

# The settings every check needs; a Settings built by hand (not by load()) may lack one.
NEEDED = ("COMPOSE", "BIND_ADDRESS", "TRACKING_PORT", "JUPYTER_PORT", "SSH_PORT", "SERVE_PORT", "BASE_IMAGE",
          "LOCAL_BASE_IMAGE", "APP_UID", "APP_GID")
LOCAL_SERVICES = ("tracking", "dev", "serve")
TEAM_SERVICES = ("tracking-a", "tracking-b", "postgres", "storage")
# Each published port and the service whose container publishes it.
PORT_OWNERS = (("TRACKING_PORT", "tracking"), ("JUPYTER_PORT", "dev"), ("SSH_PORT", "dev"), ("SERVE_PORT", "serve"))
SYSTEM_CA_FOLDER = "/usr/local/share/ca-certificates"


class Report:
    """The lines printed so far, and how many of them are a FIX."""

    def __init__(self):
        self.problems = 0

    def ok(self, text):
        print(f"OK   {text}", flush=True)

    def fix(self, text):
        print(f"FIX  {text}", flush=True)
        self.problems += 1

    def info(self, text):
        print(f"--   {text}", flush=True)


def answer(command, timeout=None, **kwargs):
    """(exit status, stdout, stderr) of command; 127 when it is not installed, 124 when it gave no
    answer in timeout seconds (as `timeout` says it)."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout,
                                **kwargs)
    except OSError:
        return 127, "", ""
    except subprocess.TimeoutExpired as expired:
        return 124, "", decoded(expired.stderr)
    return result.returncode, result.stdout, result.stderr


def decoded(data):
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def user_name():
    """Who runs this, as `id -un` says it (the uid if it has no name): the user to add to a group."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def unwritable(root, top, uid, gid):
    """The paths of top (relative to root, as given: top first, each folder before what it holds, in
    the order of the folder, as find lists them) that uid cannot write: not its own with the owner's
    write bit, not gid's with the group's, nor anyone's. Symbolic links are not followed."""
    found = []
    pending = [iter([top])]
    while pending:
        shown = next(pending[-1], None)
        if shown is None:
            pending.pop()
            continue
        path = os.path.join(root, shown)
        try:
            info = os.lstat(path)
        except OSError:  # gone meanwhile
            continue
        mode = info.st_mode
        if not ((info.st_uid == uid and mode & stat.S_IWUSR) or (info.st_gid == gid and mode & stat.S_IWGRP)
                or mode & stat.S_IWOTH):
            found.append(shown)
        if stat.S_ISDIR(mode):
            try:
                names = os.listdir(path)
            except OSError:  # unreadable: it is listed itself if uid cannot write it
                continue
            pending.append(iter([os.path.join(shown, name) for name in names]))
    return found


def count_certificates(paths):
    """The lines holding BEGIN CERTIFICATE in the files, read one after the other (unreadable ones
    skipped), as `cat FILES | grep -c` counts them."""
    data = b""
    for path in paths:
        try:
            with open(path, "rb") as file:
                data += file.read()
        except OSError:
            continue
    return sum(b"BEGIN CERTIFICATE" in line for line in data.split(b"\n"))


def this_machines_names():
    """This machine's name and its full name (what `hostname` and `hostname -f` say), where known."""
    name = socket.gethostname()
    if platform.system() == "Darwin":  # macOS's hostname -f is its hostname
        return [name]
    try:
        full = socket.getaddrinfo(name, None, flags=socket.AI_CANONNAME)[0][3]
    except (OSError, IndexError, UnicodeError):
        full = ""
    return [name, full]


def health_status(address, port, host):
    """The status GET /health answers for Host: host; 0 if nothing answers."""
    connection = HTTPConnection(address, port, timeout=10)
    try:
        connection.request("GET", "/health", headers={"Host": host})
        return connection.getresponse().status
    except Exception:
        return 0
    finally:
        connection.close()


def doctor(settings):
    """Prints the checks, then how many need fixing; Failure(status=1) (with nothing more to print)
    if any does."""
    values = {"COMPOSE": shlex.join(settings.compose), "APP_UID": settings.app_uid, "APP_GID": settings.app_gid}
    for name in NEEDED:
        if not values.get(name, settings[name]):
            print(f"FIX  {name} is not set: run this as make doctor\n1 to fix.", flush=True)
            raise Failure(status=1)
    report = Report()
    try:
        checks(settings, report)
    except Exception as error:
        # A bug here must still end in one readable line, not in a traceback half-way down the screen.
        here = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
                if os.path.abspath(frame.filename) == os.path.abspath(__file__)]
        what = " ".join(f"{type(error).__name__}: {error}".split())
        print(f"FIX  devstack/doctor.py stopped at line {here[-1] if here else '?'} ({what}): please report it",
              flush=True)
        raise Failure(status=1) from None
    if report.problems > 0:
        print(f"{report.problems} to fix.", flush=True)
        raise Failure(status=1)
    print("Nothing to fix.", flush=True)


def checks(settings, report):
    ok, fix, info = report.ok, report.fix, report.info
    root = str(settings.root)
    env = settings.compose_env()
    compose = list(settings.compose)
    compose_text = shlex.join(settings.compose)
    # Team mode (make doctor TEAM=1) has four services more, and its commands take TEAM=1.
    services = LOCAL_SERVICES + (TEAM_SERVICES if settings.team else ())
    team = " TEAM=1" if settings.team else ""
    address = settings.host_address  # where this machine reaches the published ports
    app_uid, app_gid = settings.app_uid, settings.app_gid

    # 1. Docker: the CLI, then the daemon. Without the daemon the checks that need it are skipped.
    daemon = False
    if shutil.which("docker") is None:
        fix("docker is not installed: install Docker Engine or Desktop (https://docs.docker.com/get-docker/)")
    else:
        _, text, _ = answer(["docker", "--version"])
        version = "\n".join(match.group(1) for match in
                            (re.match(r"Docker version ([^,]*)", line) for line in text.splitlines()) if match)
        ok(f"docker CLI {version}")
        status, server, error = answer(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=20, env=env)
        server = server.rstrip("\n")
        if status == 0 and server:
            daemon = True
            ok(f"Docker daemon answers: server {server}")
        elif "permission denied" in error.lower():
            fix("the Docker daemon refuses you (permission denied): sudo usermod -aG docker "
                f"{user_name()}, then log in again")
        else:  # a daemon that refuses a user outside the docker group is reported so by some clients only
            group = ""
            if platform.system() == "Linux" and not settings.is_root:
                group = (f"; if it runs, join the docker group: sudo usermod -aG docker {user_name()}, "
                         "then log in again")
            fix(f"the Docker daemon does not answer: start Docker (Docker Desktop, or sudo systemctl start docker)"
                f"{group}")

    # 2. Compose, the one the Makefile picked (v2 `docker compose` or v1 `docker-compose`).
    status, version, _ = answer([*compose, "version", "--short"], timeout=60, env=env, cwd=root)
    version = version.rstrip("\n")
    if status == 0 and version:
        ok(f"Compose: {compose_text} {version}")
    else:
        fix(f"'{compose_text}' does not run: install Compose (docker-compose-plugin, or Docker Desktop), "
            "or name the one you have: make doctor COMPOSE=docker-compose")
    # The stack's containers, asked once: Compose v1 takes seconds per call. (Not docker ps, which
    # lists running containers only: a stopped one is what the health check below reports.)
    ids = {service: "" for service in services}
    if daemon:
        for service in services:
            _, listed, _ = answer([*compose, "ps", "-q", service], timeout=60, env=env, cwd=root)
            ids[service] = (listed.splitlines() or [""])[0].strip()

    # 3. The base image the images build on: here already, or how `make up` gets it.
    if not daemon:
        info("base image: skipped, no Docker daemon")
    elif quiet(["docker", "image", "inspect", settings["BASE_IMAGE"]]):
        ok(f"base image {settings['BASE_IMAGE']} is present")
    elif quiet(["docker", "image", "inspect", settings["LOCAL_BASE_IMAGE"]]):
        ok(f"registry-free base {settings['LOCAL_BASE_IMAGE']} is present")
    else:
        # Only a pull tells whether a registry answers: too slow here, so how make up copes is a hint.
        info(f"base image {settings['BASE_IMAGE']} is not here yet: make up pulls it")
        debootstrap = shutil.which("debootstrap") is not None
        if settings.is_root and debootstrap:
            info(f"if no registry answers, make up builds {settings['LOCAL_BASE_IMAGE']} from Debian packages "
                 "(debootstrap)")
        elif debootstrap:
            info("if no registry answers, build a base from Debian packages first: sudo make base-image")
        else:
            info("if no registry answers: sudo apt-get install debootstrap && sudo make base-image")

    # 3b. Team mode's Garage: here already, or how `make up TEAM=1` gets it.
    if settings.team and daemon:
        garage, local_garage = settings["GARAGE_IMAGE"], settings["LOCAL_GARAGE_IMAGE"]
        if quiet(["docker", "image", "inspect", garage]):
            ok(f"Garage image {garage} is present")
        elif quiet(["docker", "image", "inspect", local_garage]):
            ok(f"Garage built here, {local_garage}, is present")
        else:
            info(f"Garage is not here yet: make up TEAM=1 pulls {garage}, or if no registry answers builds "
                 f"{local_garage} from crates.io once (about 20 min on 2 cores; make garage-image does only that)")

    # 4. Ports: free, or published by this stack's own container (what make up's port check accepts).
    for variable, service in PORT_OWNERS:
        port = settings[variable]
        if ids[service] and publishes(ids[service], int(port)):
            ok(f"port {port} ({variable}) is published by this stack's {service}")
        elif not listening(address, int(port), timeout=5):
            ok(f"port {port} on {address} ({variable}) is free")
        elif not daemon:
            info(f"port {port} on {address} ({variable}) is in use: by this stack or not, only the Docker daemon "
                 "knows")
        else:
            fix(f"port {port} on {address} ({variable}) is used by another program: set {variable}=<free port> "
                "in .env")

    # 5. The containers run as APP_UID:APP_GID: workspace/, mlruns/ and all below must be theirs to write.
    for folder in ("workspace", "mlruns"):
        if not os.path.isdir(os.path.join(root, folder)):
            fix(f"{folder}/ is missing: mkdir {folder}")
            continue
        # Writable by that uid as the owner, through its group, or by anyone; the rest is listed.
        bad = unwritable(root, folder, int(app_uid), int(app_gid))
        if not bad:
            ok(f"{folder}/ is writable by uid:gid {app_uid}:{app_gid} of the containers")
            continue
        what = f"{folder}/ holds {len(bad)} path(s) the containers' uid {app_uid} cannot write (e.g. {bad[0]})"
        if settings.is_root:
            info(f"{what}: make up, run as root, hands them over")
        else:
            fix(f"{what}: sudo chown -R {app_uid}:{app_gid} {folder}")
    # `make` fills APP_UID in; plain `docker compose` and VS Code Dev Containers read only .env.
    try:
        stated = read_dotenv(os.path.join(root, ".env")).get("APP_UID", "")
    except SettingsError:
        stated = ""
    if app_uid != "1000" and not re.match(r"[0-9]", stated):
        info(f"containers run as uid {app_uid}, which .env does not say: for plain docker compose and VS Code "
             f"Dev Containers, set APP_UID={app_uid} and APP_GID={app_gid} in .env")

    # 6. Extra CA certificates for a TLS-inspecting proxy: a PEM file, or a folder of *.crt (make build).
    ca = settings["EXTRA_CA_CERTS"]
    ca_path = os.path.join(root, ca)  # a relative one is the project folder's
    if not ca and glob.glob(os.path.join(SYSTEM_CA_FOLDER, "*.crt")):
        info(f"this machine trusts extra CAs in {SYSTEM_CA_FOLDER}; if a proxy inspects TLS, "
             f"builds need them too: EXTRA_CA_CERTS={SYSTEM_CA_FOLDER} in .env")
    elif not ca:
        info("EXTRA_CA_CERTS is empty: fine unless a proxy inspects TLS")
    elif not os.path.exists(ca_path):
        fix(f"EXTRA_CA_CERTS={ca} does not exist: set EXTRA_CA_CERTS in .env to your proxy's CA certificate "
            "(PEM) or a folder of *.crt files, or leave it empty")
    else:
        if os.path.isdir(ca_path):
            certs = count_certificates(sorted(glob.glob(os.path.join(glob.escape(ca_path), "*.crt"))))
        else:
            certs = count_certificates([ca_path])
        if certs == 0:
            fix(f"EXTRA_CA_CERTS={ca} holds no PEM certificate: point it at a PEM file or a folder of *.crt files")
        else:
            ok(f"EXTRA_CA_CERTS={ca}: {certs} certificate(s) for the images to trust")

    # 7. The stack: each service's container running and healthy (the healthchecks of compose.yaml).
    tracking_runs = False
    if not daemon:
        info("stack health: skipped, no Docker daemon")
    elif not (ids["tracking"] or ids["dev"] or ids["serve"]):
        info(f"the stack is not running: make up{team}")
    else:
        for service in services:
            remedy = f"make serve{team}" if service == "serve" else f"make up{team}"
            now = "not running/"
            if ids[service]:
                now = state(ids[service])
                if now == "missing/":  # docker inspect knows no such container any more
                    now = "gone/"
            if service == "tracking" and now.startswith("running/"):
                tracking_runs = True
            if service == "serve" and now == "not running/":
                info(f"serve is not running: make serve{team}")
            elif now == "running/healthy":
                ok(f"{service} is running and healthy")
            elif now == "running/":
                ok(f"{service} is running (it has no healthcheck)")
            elif now == "running/starting":
                info(f"{service} is starting: wait, then make ps")
            else:
                shown = now[:-1] if now.endswith("/") else now
                fix(f"{service} is {shown}: see make logs SERVICE={service}{team}, then {remedy}")

    # 8. Host names: MLflow answers 403 to a Host header missing from its allowed list.
    if tracking_runs:
        port = settings["TRACKING_PORT"]
        names = ["127.0.0.1", "localhost"]
        # Reached from other machines, it is by this machine's names.
        bind = settings.bind_address
        if not (bind.startswith("127.") or bind in ("localhost", "::1")):
            names += this_machines_names()
        lines = [f"{name}:{port}" for name in " ".join(names).split()]
        lines += settings["TRACKING_ALLOWED_HOSTS"].split(",")
        # Each name once; a wildcard entry is no name anyone types.
        seen, hosts = set(), []
        for line in lines:
            if "*" in line or not line.split() or line in seen:
                continue
            seen.add(line)
            hosts += line.split()
        # One GET /health per Host header.
        for host in hosts:
            status = health_status(address, int(port), host)
            if status == 200:
                ok(f"tracking accepts the host name {host}")
            elif status == 403:
                fix(f"tracking refuses the host name {host} (403): add it to TRACKING_ALLOWED_HOSTS in .env, "
                    "then make up")
            else:
                fix(f"tracking does not answer at http://{address}:{port}/health: make logs SERVICE=tracking")
                break
