"""Team mode's commands: `make user` (a login with a generated password), `make copy-to-team`
(the local stack's runs and models into team mode), `make backup` and `make restore`.

A backup is a new folder: each PostgreSQL database (runs, registry, logins) as SQL, Garage's
volumes (the bucket) as a tarball, and checksums of the secrets the data is bound to. Backup runs
with the stack up and stops storage for the copy; restore checks everything before it stops the
tracking servers and storage, replaces both, then starts the stack again (`make up`).
"""

import datetime
import gzip
import hashlib
import http.client
import json
import math
import os
import re
import secrets as random
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
import zlib

from . import stack
from .proc import Failure, compose, container_of, fail, output, run, say, wait_healthy

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
USER_SECONDS = 60
DATABASES = ("mlflow", "mlflow_auth")
# What the restored data only works with: Garage's key and node secret, the admin's login.
BOUND_SECRETS = ("s3_key_id", "s3_secret_key", "garage_rpc_secret", "mlflow_admin_password")
STORAGE_SECONDS = 120
CHUNK = 1 << 20


# --- make user ----------------------------------------------------------------------------------------

class NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer to report, not to follow (as curl without -L)."""

    def redirect_request(self, *args, **kwargs):
        return None


def user(settings):
    """Creates a login on the team stack's tracking server (MLflow's basic-auth users API, as the
    admin) with a generated password, and prints it once: it is not stored anywhere."""
    name = settings["NAME"]
    if not settings.team:
        fail(f"users exist in team mode only: make user NAME={name} TEAM=1", status=2)
    if not USER_NAME.fullmatch(name):
        fail(f"NAME='{name}' is not a user name: use letters, digits and . _ @ - (e.g. make user NAME=alice TEAM=1)",
             status=2)
    password = random.token_hex(16)
    login = stack.admin_login(settings)
    if login is None:
        fail(f"{settings.secrets / 'mlflow_admin_password'} is missing: run 'make up TEAM=1' first", status=2)
    base = settings.url("TRACKING_PORT")
    url = f"{base}/api/2.0/mlflow/users/create"
    # The passwords travel in the request body, never on a command line (ps shows those).
    request = urllib.request.Request(url, data=json.dumps({"username": name, "password": password}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": login},
                                     method="POST")
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)  # the stack is local
    try:
        with direct.open(request, timeout=USER_SECONDS) as answer:
            status, body = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, answer_body(error)
    except (OSError, http.client.HTTPException):
        fail(f"the team tracking server does not answer at {url}: is it up (make up TEAM=1)?", status=2)
    if status in (400, 409):
        fail(f"could not create {name}: {error_message(body)}", status=2)
    if status != 200:
        fail(f"could not create {name}: HTTP {status} from {url}", status=2)
    say(f"Created the user {name}. Their password (shown once, not stored): {password}")
    say(f"They log in to {base} with it, or set MLFLOW_TRACKING_USERNAME={name} and")
    say("MLFLOW_TRACKING_PASSWORD for MLflow's client. They may read and log to every experiment.")


def answer_body(error):
    try:
        return error.read()
    except (OSError, http.client.HTTPException):
        return b""


def error_message(body):
    """The "message" of MLflow's error answer, on one line (empty if there is none)."""
    text = body.decode("utf-8", "replace")
    try:
        message = json.loads(text).get("message", "")
    except (ValueError, AttributeError):
        found = re.findall(r'"message": *"([^"]*)"', text)
        message = found[-1] if found else ""
    return " ".join(str(message).split())


# --- make copy-to-team ----------------------------------------------------------------------------------

def copy_to_team(settings):
    """Copies the local stack's runs and models (./mlruns) into the running team stack, from a
    throwaway dev container on its network, logged in as the admin (compose.yaml's copy-to-team).
    Re-running it copies only what is new."""
    if not settings.team:
        fail("copy-to-team copies into team mode: run 'make copy-to-team TEAM=1' (after 'make up TEAM=1')",
             status=2)
    container_of(settings, "tracking-a")
    run([*settings.compose, "run", "--rm", "--no-deps", "-T", "copy-to-team"], settings)


# --- make backup, make restore ----------------------------------------------------------------------------

def refuse_outside_team_mode(settings, command):
    if not settings.team:
        fail(f"backups are of team mode: make {command} TEAM=1", status=2)


def secret_sums(settings):
    """secrets.sha256 of a backup, as sha256sum writes it; None if a bound secret is missing."""
    lines = []
    for name in BOUND_SECRETS:
        try:
            data = (settings.secrets / name).read_bytes()
        except OSError:
            return None
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    return "".join(lines)


def containers(settings):
    """(postgres, storage, the storage container's image): the running team containers."""
    postgres = container_of(settings, "postgres", required=False)
    storage = container_of(settings, "storage", required=False)
    if not postgres or not storage:
        fail("team mode is not running: make up TEAM=1 first")
    return postgres, storage, output(["docker", "inspect", "-f", "{{.Config.Image}}", storage], settings)


def in_storage(settings, storage, image, script, **kwargs):
    """Runs script in a one-off container of the storage image (its user) with Garage's volumes
    mounted: the tarball passes on stdin or stdout, so the backup folder stays yours."""
    run(["docker", "run", "--rm", "-i", "--network", "none", "--volumes-from", storage, "--entrypoint", "bash",
         image, "-c", script], settings, **kwargs)


def disk_usage(top):
    """The disk space a folder takes, in bytes, as du counts it (its blocks, the folder's own too)."""
    total = 0
    for folder, _, files in os.walk(top):
        for path in [folder, *(os.path.join(folder, name) for name in files)]:
            info = os.lstat(path)
            total += info.st_blocks * 512 if hasattr(info, "st_blocks") else info.st_size
    return total


def human_size(size):
    """size in bytes as `du -h` prints it: powers of 1024, rounded up, one decimal below 10."""
    units = "KMGTPE"
    if size < 1024:
        return str(size)
    amount, unit = size / 1024, 0
    while amount >= 1024 and unit < len(units) - 1:
        amount, unit = amount / 1024, unit + 1
    if amount < 10:
        tenths = math.ceil(amount * 10) / 10
        if tenths < 10:
            return f"{tenths:.1f}{units[unit]}"
    whole = math.ceil(amount)
    if whole >= 1024 and unit < len(units) - 1:
        return f"1.0{units[unit + 1]}"
    return f"{whole}{units[unit]}"


def readable_tarball(path):
    """True when path is a gzipped tarball that lists to its end, as `tar -tzf` checks it."""
    try:
        with gzip.open(path, "rb") as stream:
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                for _ in archive:
                    pass
            while stream.read(CHUNK):  # the rest, so that gzip checks its length and checksum
                pass
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return False
    return True


def backup(settings):
    """Backs up the database and the bucket into a new folder (DIR=, else backups/team-<UTC time>)."""
    refuse_outside_team_mode(settings, "backup")
    old_umask = os.umask(0o077)  # the dumps hold the logins' password hashes
    try:
        make_backup(settings)
    finally:
        os.umask(old_umask)


def make_backup(settings):
    name = settings["DIR"] or f"backups/team-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}"
    folder = settings.root / name
    if folder.exists():
        fail(f"{name} exists: name a new folder (DIR=...)")
    postgres, storage, image = containers(settings)
    partial = folder.parent / f"{folder.name}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    # Whatever fails, storage runs again and no half-made backup is left.
    try:
        for database in DATABASES:
            with open(partial / f"{database}.sql", "wb") as dump:
                run(["docker", "exec", postgres, "pg_dump", "--host=/run/postgresql", "--username=mlflow", "--clean",
                     "--if-exists", f"--dbname={database}"], settings, stdout=dump)
        sums = secret_sums(settings)
        if sums is None:
            fail(f"a secret the data is bound to ({' '.join(BOUND_SECRETS)}) is missing in {settings.secrets}: "
                 "put it back first")
        (partial / "secrets.sha256").write_text(sums)
        run(["docker", "stop", storage], settings, stdout=subprocess.DEVNULL)
        with open(partial / "storage.tgz", "wb") as tarball:
            in_storage(settings, storage, image, "tar -C /var/lib/garage -czf - meta data", stdout=tarball)
        run(["docker", "start", storage], settings, stdout=subprocess.DEVNULL)
        partial.chmod(0o700)
        os.rename(partial, folder)
    except BaseException:
        subprocess.run(["docker", "start", storage], env=settings.compose_env(), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(partial, ignore_errors=True)
        raise
    wait_healthy(settings, STORAGE_SECONDS, ["storage"], echo=False)
    say(f"backup: {name} ({human_size(disk_usage(folder))}). Keep .secrets/ with it: the data only works with "
        "those.")


def restore(settings):
    """Replaces the database and the bucket with a backup's (DIR=), after asking, then starts the
    stack again."""
    refuse_outside_team_mode(settings, "restore")
    old_umask = os.umask(0o077)
    try:
        restore_backup(settings)
    finally:
        os.umask(old_umask)
    stack.up(settings)


def restore_backup(settings):
    name = settings["DIR"]
    if not name:
        fail("name the backup: make restore TEAM=1 DIR=backups/<folder>")
    folder = settings.root / name
    for file in (*(f"{database}.sql" for database in DATABASES), "storage.tgz", "secrets.sha256"):
        if not (folder / file).is_file():
            fail(f"{name} is not a backup of make backup: {file} is missing")
    sums = secret_sums(settings)
    if sums is None or sums.encode() != (folder / "secrets.sha256").read_bytes():
        fail(f"{name} was made with other secrets ({' '.join(BOUND_SECRETS)} in .secrets/): put those back first")
    if not readable_tarball(folder / "storage.tgz"):
        fail(f"{name}/storage.tgz is not a readable tarball")
    postgres, storage, image = containers(settings)
    if not stack.confirm(settings, f"Replace team mode's runs, models, logins and artifacts with {name}?",
                         "Nothing replaced."):
        raise Failure(status=1)
    compose(settings, "stop", "tracking", "tracking-a", "tracking-b", "storage")
    for database in DATABASES:
        with open(folder / f"{database}.sql", "rb") as dump:
            run(["docker", "exec", "-i", postgres, "psql", "--host=/run/postgresql", "--username=mlflow",
                 f"--dbname={database}", "--quiet", "--single-transaction", "-v", "ON_ERROR_STOP=1"], settings,
                stdin=dump, stdout=subprocess.DEVNULL)
    with open(folder / "storage.tgz", "rb") as tarball:
        in_storage(settings, storage, image, "find /var/lib/garage/meta /var/lib/garage/data -mindepth 1 -delete "
                   "&& tar -C /var/lib/garage -xzf -", stdin=tarball)
    say(f"restore: the databases and the bucket are as in {name}")
