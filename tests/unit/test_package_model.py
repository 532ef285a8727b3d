"""tools/package-model (make package) refuses what cannot work before it fetches or builds anything:
a `docker` that records its calls stands in for Docker."""

import subprocess
import textwrap

import pytest

from helpers import ROOT

TOOL = ROOT / "tools" / "package-model"


@pytest.fixture
def docker_calls(tmp_path):
    """PATH with a fake docker that logs its arguments and finds no running container."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "$*" >>{tmp_path}/calls
        exit 0
        """))
    fake.chmod(0o755)
    return tmp_path


def package(docker_calls, image, model="models:/wine-quality/1"):
    env = {"PATH": f"{docker_calls / 'bin'}:/usr/bin:/bin", "PROJECT_NAME": "p", "TMPDIR": str(docker_calls)}
    return subprocess.run(["bash", str(TOOL), model, image, "mlflow-devstack/serve:test"],
                          capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.mark.parametrize("image", ["Wine:1", "wine quality", "wine:", "-wine", "wine:bad tag", "a//b", "wine@1"])
def test_a_name_docker_refuses_is_one_line_before_any_docker_call(docker_calls, image):
    result = package(docker_calls, image)
    assert result.returncode == 1
    assert result.stderr == (f"error: IMAGE={image} is not a name Docker accepts: use lower-case letters, "
                             "digits and . _ -, and an optional :tag (e.g. IMAGE=wine-quality:3)\n")
    assert not (docker_calls / "calls").exists()


@pytest.mark.parametrize("image", ["wine-quality:3", "team/wine_quality:v1.2", "registry.example.com:5000/wine",
                                   "serve_model"])
def test_names_docker_accepts_get_past_the_check(docker_calls, image):
    result = package(docker_calls, image)
    assert "is not a name Docker accepts" not in result.stderr
    assert (docker_calls / "calls").read_text().startswith("ps -q")  # on to looking for the stack


def test_with_the_stack_down_it_says_to_start_it_and_leaves_nothing(docker_calls):
    result = package(docker_calls, "wine-quality:3")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: the tracking container is not running: start the stack with 'make up'"
    assert not list(docker_calls.glob("package-model.*"))
