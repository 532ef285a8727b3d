"""The Makefile and its tools, without Docker: help, .env parsing as Compose parses it, the
registry-free base image decision, and the SSH blocks."""

import os
import re
import stat
import subprocess
import textwrap

import pytest

from helpers import ROOT
from stack import compose_config

TOOLS = ROOT / "tools"


def test_make_help_lists_every_documented_target():
    documented = re.findall(r"^([A-Za-z0-9_-]+):.*## ", (ROOT / "Makefile").read_text(), re.M)
    assert "test-e2e" in documented and "doctor" in documented
    output = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    listed = re.findall(r"^  make (\S+)", output, re.M)
    assert listed == documented


ENV_CASES = textwrap.dedent("""\
    # a comment
    PLAIN=plain
    DOUBLE="models:/wine-quality/1"
    SINGLE='single # not a comment'
    COMMENTED=value # a comment
    ESCAPED="with \\"escaped\\" quotes"
    export EXPORTED=exported
    EMPTY=
    SPACED=  spaced
    HASH_IN_QUOTES="a#b"
    HASH_IN_WORD=a#b
    DOLLAR='$literal'
    """)


@pytest.fixture(scope="module")
def compose_reading(tmp_path_factory):
    """How Compose itself reads ENV_CASES: `compose config` needs no Docker daemon."""
    folder = tmp_path_factory.mktemp("dotenv")
    (folder / ".env").write_text(ENV_CASES)
    names = re.findall(r"^(?:export )?([A-Z_]+)=", ENV_CASES, re.M)
    environment = "".join(f"      {name}: \"${{{name}}}\"\n" for name in names if name != "DOLLAR")
    (folder / "compose.yaml").write_text(f"services:\n  probe:\n    image: probe\n    environment:\n{environment}")
    config = compose_config(folder, {key: value for key, value in os.environ.items() if key not in names})
    return {name: str(value) for name, value in config["services"]["probe"]["environment"].items()}


def make_reading(tmp_path, name):
    """The value make ends up with for a variable of ENV_CASES, read through tools/env-to-make."""
    (tmp_path / ".env").write_text(ENV_CASES)
    mk = subprocess.run([str(TOOLS / "env-to-make"), ".env"], cwd=tmp_path, capture_output=True, text=True,
                        check=True).stdout
    (tmp_path / "Makefile").write_text(mk + f"\nshow:\n\t@printf '%s' '$({name})'\n")
    env = {key: value for key, value in os.environ.items() if key != name}
    return subprocess.run(["make", "--no-print-directory", "show"], cwd=tmp_path, capture_output=True,
                          text=True, check=True, env=env).stdout


@pytest.mark.parametrize("name", ["PLAIN", "DOUBLE", "SINGLE", "COMMENTED", "ESCAPED", "EXPORTED", "EMPTY",
                                  "SPACED", "HASH_IN_QUOTES", "HASH_IN_WORD"])
def test_make_reads_env_as_compose_does(compose_reading, tmp_path, name):
    assert make_reading(tmp_path, name) == compose_reading[name]


def test_make_keeps_a_dollar_literal(tmp_path):
    assert make_reading(tmp_path, "DOLLAR") == "$literal"


def test_the_shell_wins_over_env(tmp_path):
    (tmp_path / ".env").write_text("PORT=5000\n")
    mk = subprocess.run([str(TOOLS / "env-to-make"), ".env"], cwd=tmp_path, capture_output=True, text=True,
                        check=True).stdout
    (tmp_path / "Makefile").write_text(mk + "\nshow:\n\t@printf '%s' '$(PORT)'\n")
    shown = subprocess.run(["make", "--no-print-directory", "show"], cwd=tmp_path, capture_output=True, text=True,
                           check=True, env=dict(os.environ, PORT="5050")).stdout
    assert shown == "5050"


def fake_command(folder, name, script):
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_docker(tmp_path):
    """A `docker` that has the images listed in $tmp/images, and whose pulls fail (no registry),
    and a `debootstrap` beside it; plus a stand-in for images/base/build.sh that records its call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "images").write_text("")
    fake_command(bin_dir, "docker", textwrap.dedent(f"""\
        case "$1" in
          image) grep -qx "$3" {tmp_path}/images ;;
          pull) echo "Error response from daemon: no such host" >&2; exit 1 ;;
        esac
        """))
    fake_command(bin_dir, "debootstrap", "exit 0\n")
    project = tmp_path / "project"
    (project / "tools").mkdir(parents=True)
    (project / "images" / "base").mkdir(parents=True)
    (project / "tools" / "base-image").write_bytes((TOOLS / "base-image").read_bytes())
    (project / "tools" / "base-image").chmod(0o755)
    fake_command(project / "images" / "base", "build.sh", f'echo "$1" >>{tmp_path}/images; echo built "$1"\n')
    return tmp_path


def base_image(fake, path_dirs):
    env = dict(os.environ, PATH=os.pathsep.join(path_dirs), BASE_IMAGE="python:3.11-slim-bookworm",
               LOCAL_BASE_IMAGE="devstack-base:bookworm")
    return subprocess.run(["bash", str(fake / "project" / "tools" / "base-image")], capture_output=True,
                          text=True, env=env)


def test_base_image_uses_the_registry_image_when_present(fake_docker):
    (fake_docker / "images").write_text("python:3.11-slim-bookworm\n")
    result = base_image(fake_docker, [str(fake_docker / "bin"), "/usr/bin", "/bin"])
    assert result.stdout.strip() == "python:3.11-slim-bookworm"


@pytest.mark.skipif(os.getuid() != 0, reason="the registry-free build runs as root only")
def test_base_image_builds_from_debian_packages_when_nothing_can_be_pulled(fake_docker):
    result = base_image(fake_docker, [str(fake_docker / "bin"), "/usr/bin", "/bin"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "devstack-base:bookworm"
    assert "cannot pull python:3.11-slim-bookworm" in result.stderr
    assert (fake_docker / "images").read_text().split() == ["devstack-base:bookworm"]
    # Once built, it is used without another try at the registry.
    again = base_image(fake_docker, [str(fake_docker / "bin"), "/usr/bin", "/bin"])
    assert again.stdout.strip() == "devstack-base:bookworm"
    assert "building on devstack-base:bookworm" in again.stderr


def test_base_image_names_the_command_when_it_cannot_build(fake_docker, tmp_path):
    (fake_docker / "bin" / "debootstrap").unlink()
    result = base_image(fake_docker, [str(fake_docker / "bin"), "/usr/bin", "/bin"])
    assert result.returncode == 1
    assert result.stdout == ""
    # debootstrap lives in /usr/sbin, which this PATH lacks.
    assert "Run: sudo apt-get install debootstrap && sudo make base-image   then: make up" in result.stderr
    assert "Traceback" not in result.stderr
