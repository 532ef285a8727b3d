"""Development: the test venv, the tests, lint, the benchmarks and the lock file."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

from .images import base_image, sync_ca_certificates
from .proc import execute, fail, run

VENV = ".venv"
# The venv's pins (MLflow 3.17 and the test tools) are resolved for this Python and newer.
VENV_PYTHON = (3, 11)
INSTALLED = ".installed"


def ensure_venv(settings):
    """The test venv (.venv), made or refreshed when requirements/ changed since it was installed."""
    venv = settings.root / VENV
    stamp = venv / INSTALLED
    requirements = sorted((settings.root / "requirements").glob("*.txt"))
    if stamp.exists() and all(path.stat().st_mtime <= stamp.stat().st_mtime for path in requirements):
        return venv
    if sys.version_info < VENV_PYTHON:
        fail(f"make project, make test and make bench need Python {VENV_PYTHON[0]}.{VENV_PYTHON[1]} or newer for "
             f"their venv (requirements/constraints.txt; python3 here is {sys.version.split()[0]}): install one "
             "and name it, e.g. make test PYTHON3=python3.12")
    run([sys.executable, "-m", "venv", str(venv)], settings)
    run([str(venv / "bin" / "pip"), "install", "-r", "requirements/test.txt", "-c", "requirements/constraints.txt"],
        settings)
    stamp.touch()
    return venv


def pytest(settings, *paths):
    venv = ensure_venv(settings)
    execute([str(venv / "bin" / "python"), "-m", "pytest", *paths, *shlex.split(settings["PYTEST_ARGS"])],
            settings)


def test(settings):
    pytest(settings, "tests/unit", "tests/integration", "tests/e2e")


def test_e2e(settings):
    pytest(settings, "tests/e2e")


def test_fast(settings):
    pytest(settings, "tests/unit", "tests/integration")


def bench(settings):
    venv = ensure_venv(settings)
    # The benchmark imports the workspace's data loader as the containers do: a top-level module.
    os.environ["PYTHONPATH"] = str(settings.root / "workspace")
    execute([str(venv / "bin" / "python"), "-m", "bench", *shlex.split(settings["BENCH_ARGS"])], settings)


def lint(settings):
    """ruff over all Python, shellcheck over every shell script, and the host layer's limits (make
    3.81, POSIX sh, Python 3.9): the checks live in tests/unit/test_host_layer.py, run here too."""
    venv = ensure_venv(settings)
    python = str(venv / "bin" / "python")
    run([str(venv / "bin" / "ruff"), "check", "."], settings)
    scripts = shell_scripts(settings.root)
    run([str(venv / "bin" / "shellcheck"), *[str(path) for path in scripts]], settings)
    run([python, "-m", "pytest", "-q", "tests/unit/test_host_layer.py"], settings)


def shell_scripts(root):
    """Every tracked file that starts with a shell's #! line."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True)
    found = []
    for name in listed.stdout.split("\0"):
        path = Path(root, name)
        if not name or not path.is_file():
            continue
        with open(path, "rb") as file:
            first = file.readline(200)
        words = first[2:].split() if first.startswith(b"#!") else []
        program = os.path.basename(words[0]) if words else b""
        if program == b"env" and len(words) > 1:
            program = words[1]
        if program in (b"sh", b"bash", b"dash"):
            found.append(path)
    return found


def lock(settings):
    """Re-resolves requirements/constraints.txt in a container of the base image, after a pin changed."""
    sync_ca_certificates(settings)
    base = base_image(settings)
    build = settings.root / ".build"
    build.mkdir(exist_ok=True)
    script = ("update-ca-certificates >/dev/null && python3 -m venv /tmp/lock "
              "&& PIP_CERT=/etc/ssl/certs/ca-certificates.crt /tmp/lock/bin/pip install -q -r /requirements/test.txt "
              "&& /tmp/lock/bin/pip freeze")
    frozen = run(["docker", "run", "--rm", "--network", settings["BUILD_NETWORK"],
                  "-v", f"{settings.root / 'requirements'}:/requirements:ro",
                  "-v", f"{settings.root / 'images' / 'ca-certificates'}:/usr/local/share/ca-certificates/extra:ro",
                  base, "sh", "-c", script], settings, stdout=subprocess.PIPE, text=True).stdout
    constraints = settings.root / "requirements" / "constraints.txt"
    header = "".join(constraints.read_text().splitlines(keepends=True)[:3])
    if not frozen.strip():
        fail("lock: pip freeze printed nothing; requirements/constraints.txt is unchanged")
    new = constraints.with_suffix(".new")
    new.write_text(header + frozen)
    os.replace(new, constraints)
