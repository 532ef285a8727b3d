"""The README's quick start on a host that has only what the README requires: make, /bin/sh (dash
here), python3, Docker with Compose, the OpenSSH client and git. PATH holds links to those and
nothing else, so a bash, GNU tool, timeout, sed, awk or find anywhere in the host layer fails here."""

import os
import re
import shlex
import shutil
import subprocess

import pytest

from tests.support.stack import Stack, running

REQUIRED = ("make", "git", "docker", "ssh", "ssh-keygen")


def real_python3():
    """The python3 users have, not this venv's, resolved through any shim (pyenv's is a bash script)."""
    path = os.environ["PATH"].split(os.pathsep)
    outside_venv = os.pathsep.join(folder for folder in path if ".venv" not in folder)
    found = shutil.which("python3", path=outside_venv)
    return subprocess.run([found, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True,
                          check=True).stdout.strip()


def stock_path(folder, compose):
    """A folder of links to the required programs only, for PATH."""
    folder.mkdir()
    links = {name: shutil.which(name) for name in REQUIRED}
    links["sh"] = "/bin/dash" if os.path.exists("/bin/dash") else "/bin/sh"
    links["python3"] = real_python3()
    if compose[0].endswith("docker-compose"):
        links["docker-compose"] = shutil.which(compose[0])
    for name, target in links.items():
        assert target, f"{name} is not installed here"
        os.symlink(target, folder / name)
    return folder


@pytest.fixture(scope="module")
def stock_stack(docker, tmp_path_factory, request):
    parent = tmp_path_factory.mktemp("stock")
    stack = Stack.copy_of_project(parent)
    bin_dir = stock_path(parent / "bin", stack.compose)
    # Compose by its link: as a user has it, by name on PATH (v2 is the docker CLI's plugin).
    if stack.compose[0].endswith("docker-compose"):
        stack.env["COMPOSE"] = shlex.join(["docker-compose", *stack.compose[1:]])
    stack.env["PATH"] = str(bin_dir)
    with running(stack, request, lambda stack: stack.make("up", timeout=3600)) as stack:
        yield stack


def test_the_quick_start_runs_with_only_the_required_programs(stock_stack):
    assert sorted(os.listdir(stock_stack.env["PATH"])) == sorted(
        set(REQUIRED) | {"sh", "python3"} | ({"docker-compose"} if "docker-compose" in stock_stack.env.get(
            "COMPOSE", "") else set()))
    up = stock_stack.log[-1]
    assert "MLflow UI" in up and "JupyterLab" in up
    run_id, version = stock_stack.train("ALPHA=0.4", "L1=0.6")
    assert run_id and version
    served = stock_stack.make("serve", timeout=900)
    assert f"models:/wine-quality/{version}" in served.stdout
    predicted = stock_stack.make("predict", timeout=300)
    assert re.search(r"\d+\.\d+", predicted.stdout), predicted.stdout
    stock_stack.make("down", timeout=300)
    assert stock_stack.container_ids() == []
