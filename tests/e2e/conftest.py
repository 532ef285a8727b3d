"""The real Compose stack, driven through the Makefile as users drive it (see tests/stack.py).

Compose logs are printed if any test failed, and containers, network and volume are removed
afterwards, whatever happened. Without Docker the layer is skipped, except under CI (CI=true),
where that is a failure.
"""

import os

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
            print(f"--- compose logs of {stack.env['COMPOSE_PROJECT_NAME']} ---\n{stack.logs()}")
        stack.remove()
