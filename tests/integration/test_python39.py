"""The host CLI under the oldest Python it supports, a stock Mac's python3 3.9: Debian bullseye's
python3 (3.9) with its pytest, in a container made from Debian packages (debootstrap, as the
registry-free base is made), running the CLI's own unit tests (tests/unit/host) from this checkout."""

import os
import subprocess

import pytest

from devstack.images import build_base, image_present
from devstack.proc import Failure, have
from tests.support.helpers import ROOT

IMAGE = "mlflow-devstack-python39:bullseye"


@pytest.fixture(scope="module")
def python39():
    """The image, built once per machine (about 2 minutes); skipped where it cannot be built, but
    under CI, where that is a failure."""
    if not have("docker") or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        problem = "no Docker daemon"
    elif image_present(IMAGE):
        return IMAGE
    elif os.getuid() != 0 or not have("debootstrap"):
        problem = "building the Python 3.9 image needs root and debootstrap"
    else:
        try:
            build_base(IMAGE, suite="bullseye", packages=("python3", "python3-pytest"))
            return IMAGE
        except Failure as failure:
            problem = f"could not build {IMAGE}: {failure}"
    if os.environ.get("CI"):
        pytest.fail(f"the Python 3.9 check must run in CI, but {problem}")
    pytest.skip(problem)


def test_the_host_clis_unit_tests_pass_under_python_39(python39):
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{ROOT}:/src:ro", "-w", "/src",
         "-e", "PYTHONDONTWRITEBYTECODE=1", python39,
         "sh", "-c", "python3 --version && python3 -m pytest -q -p no:cacheprovider -o addopts= tests/unit/host"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.startswith("Python 3.9."), result.stdout[:200]
    assert " passed" in result.stdout and " failed" not in result.stdout
