"""The real Compose stack, driven through the Makefile as users drive it (see tests/stack.py).

Compose logs are printed if any test failed, and containers, network and volume are removed
afterwards, whatever happened. Without Docker the layer is skipped, except under CI (CI=true),
where that is a failure.
"""

import os
import re
import subprocess

import pytest

from stack import Stack, docker_problem


@pytest.fixture(scope="session")
def stack(tmp_path_factory, request):
    problem = docker_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"end-to-end tests must run in CI, but {problem}")
        pytest.skip(f"end-to-end tests need Docker: {problem}")

    stack = Stack.copy_of_project(tmp_path_factory.mktemp("e2e"))
    up_failed = True
    try:
        stack.make("up", timeout=3600)
        up_failed = False
        yield stack
    finally:
        if up_failed or request.session.testsfailed:
            print("\n".join(stack.log))
            print(f"--- compose logs of {stack.project} ---\n{stack.logs()}")
        stack.remove()


@pytest.fixture(scope="session")
def trained_run(stack):
    """(run id, model version) of `make train ALPHA=0.5 L1=0.5`."""
    result = stack.make("train", "ALPHA=0.5", "L1=0.5", timeout=600)
    run_id = re.search(r"^run_id: (\w+)$", result.stdout, re.M).group(1)
    version = re.search(r"^model_uri: models:/wine-quality/(\d+)$", result.stdout, re.M).group(1)
    return run_id, version


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
