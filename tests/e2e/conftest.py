"""The real Compose stack, driven through the Makefile as users drive it (see tests/support/stack.py).

Compose logs are printed if any test failed, and containers, network and volume are removed
afterwards, whatever happened. Without Docker the layer is skipped, except under CI (CI=true),
where that is a failure.
"""

import os
import subprocess

import pytest

from tests.support.stack import Stack, docker_problem, running


@pytest.fixture(scope="session")
def docker():
    """Docker and Compose answer here: else the layer is skipped, or fails under CI."""
    problem = docker_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"end-to-end tests must run in CI, but {problem}")
        pytest.skip(f"end-to-end tests need Docker: {problem}")


@pytest.fixture(scope="session")
def stack(docker, tmp_path_factory, request):
    with running(Stack.copy_of_project(tmp_path_factory.mktemp("e2e")), request,
                 lambda stack: stack.make("up", timeout=3600)) as stack:
        yield stack


@pytest.fixture(scope="session")
def trained_run(stack):
    """(run id, model version) of `make train ALPHA=0.5 L1=0.5`."""
    return stack.train("ALPHA=0.5", "L1=0.5")


@pytest.fixture
def served(stack, trained_run):
    """The /invocations URL of `make serve`, serving the trained model; served again if a test left
    the serve container failed (as `make serve MODEL=<missing>` does)."""
    container = stack.container_of("serve")
    healthy = container and subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", container],
                                           capture_output=True, text=True).stdout.strip() == "healthy"
    if not healthy:
        stack.make("serve", timeout=900)
    return stack.url("SERVE_PORT") + "/invocations"
