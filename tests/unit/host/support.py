"""Fakes for the host CLI's tests: a checkout folder with the real .env, and commands on PATH."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def checkout(folder, dotenv=None):
    """A folder that looks like a checkout to the CLI: the repository's .env (or dotenv's text)."""
    folder.mkdir(parents=True, exist_ok=True)
    if dotenv is None:
        shutil.copy(ROOT / ".env", folder / ".env")
    else:
        (folder / ".env").write_text(dotenv)
    return folder


def fake_command(folder, name, script):
    """An executable `name` in folder running the POSIX sh script."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def cli(folder, *args, env=None, path=None):
    """`python3 -m devstack -C folder ARGS...` as make would run it; (exit status, stdout, stderr)."""
    environment = dict(os.environ if env is None else env)
    environment["PYTHONPATH"] = str(ROOT)
    if path is not None:
        environment["PATH"] = path
    # What CI or a user's shell may set that would change what the command under test does.
    for name in ("TEAM", "SPARK", "COMPOSE_PROJECT_NAME", "APP_UID", "APP_GID", "MAKEFLAGS", "EXTRA_CA_CERTS",
                 "COMPOSE", "SPARK_MASTER"):
        environment.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "devstack", "-C", str(folder), *args], capture_output=True,
                            text=True, env=environment, timeout=120)
    return result.returncode, result.stdout, result.stderr
