"""The CLI as make runs it: help, one-line refusals, the base image decision and the build's TLS
hint, against fake commands on PATH (no Docker)."""

import os
import re

import pytest

from devstack import cli, images
from tests.unit.host.support import ROOT, checkout, fake_command
from tests.unit.host.support import cli as run_cli


def test_help_lists_every_command_by_section():
    status, out, _ = run_cli(ROOT, "help")
    assert status == 0
    listed = re.findall(r"^  make (\S+)", out, re.M)
    assert listed == [name for _, commands in cli.COMMANDS for name, _, _ in commands]
    assert "make train" in out and "The stack" in out


def test_help_without_make_says_how_to_use_it():
    status, out, _ = run_cli(ROOT, "--help")
    assert status == 0
    assert "python3 -m devstack up" in out and "works without make" in out


def test_every_command_has_a_function():
    import importlib
    for name, (target, _) in cli.TABLE.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(f"devstack.{module}"), function)), name


def test_an_unknown_command_is_one_line(tmp_path):
    status, out, err = run_cli(checkout(tmp_path / "c"), "upp")
    assert status == 2 and out == ""
    assert err == "error: unknown command or argument 'upp': see 'make help' (settings are NAME=value)\n"


def test_a_bad_env_line_is_one_line_naming_file_and_line(tmp_path):
    folder = checkout(tmp_path / "c")
    with open(folder / ".env", "a") as env:
        env.write("this is not a setting\n")
    lines = (folder / ".env").read_text().count("\n")
    status, _, err = run_cli(folder, "ps")
    assert status == 2
    assert err.startswith(f"error: {folder / '.env'}:{lines}: 'this is not a setting' is not a NAME=value line")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_bad_port_on_the_command_line_is_one_line(tmp_path):
    status, _, err = run_cli(checkout(tmp_path / "c"), "up", "TRACKING_PORT=http")
    assert status == 2 and err.count("\n") == 1
    assert "TRACKING_PORT=http is not a port" in err


def test_monitoring_team_mode_is_refused_in_one_line_before_anything_starts(tmp_path):
    status, out, err = run_cli(checkout(tmp_path / "c"), "up", "TEAM=1", "MONITOR=1")
    assert status == 2 and out == ""
    assert err == ("error: MONITOR=1 with TEAM=1 is not built yet: team mode's replicas keep /metrics behind the "
                   "login (docs/monitoring.md); use MONITOR=1 with the local stack\n")
    assert not (tmp_path / "c" / ".secrets").exists()


@pytest.fixture
def fake_docker(tmp_path):
    """A `docker` that has the images listed in $tmp/images and whose pulls fail (no registry)."""
    bin_dir = tmp_path / "bin"
    (tmp_path / "images").write_text("")
    fake_command(bin_dir, "docker", f"""\
case "$1" in
  image) grep -qx "$3" {tmp_path}/images ;;
  pull) echo "Error response from daemon: no such host" >&2; exit 1 ;;
  ps) exit 0 ;;
esac
""")
    return tmp_path


def settings_for(tmp_path, **values):
    from devstack.settings import load
    folder = checkout(tmp_path / "c")
    return load(folder, environ={}, overrides=values, compose=["false"], host_ids=(1000, 1000))


def test_base_image_uses_the_registry_image_when_present(fake_docker, monkeypatch, capsys):
    (fake_docker / "images").write_text("python:3.11-slim-bookworm\n")
    monkeypatch.setenv("PATH", f"{fake_docker / 'bin'}:/usr/bin:/bin")
    assert images.base_image(settings_for(fake_docker)) == "python:3.11-slim-bookworm"


def test_base_image_uses_the_local_base_once_built(fake_docker, monkeypatch, capsys):
    (fake_docker / "images").write_text("mlflow-devstack-base:bookworm\n")
    monkeypatch.setenv("PATH", f"{fake_docker / 'bin'}:/usr/bin:/bin")
    assert images.base_image(settings_for(fake_docker)) == "mlflow-devstack-base:bookworm"
    assert "building on mlflow-devstack-base:bookworm" in capsys.readouterr().err


def test_base_image_builds_from_debian_packages_as_root_when_nothing_can_be_pulled(fake_docker, monkeypatch):
    fake_command(fake_docker / "bin", "debootstrap", "exit 0\n")
    monkeypatch.setenv("PATH", f"{fake_docker / 'bin'}:/usr/bin:/bin")
    built = []
    monkeypatch.setattr(images, "build_base", built.append)
    settings = settings_for(fake_docker)
    root = type(settings)(**{**settings.__dict__, "host_uid": 0, "host_gid": 0})
    assert images.base_image(root) == "mlflow-devstack-base:bookworm"
    assert built == ["mlflow-devstack-base:bookworm"]


def test_base_image_names_the_command_when_it_cannot_build(fake_docker, tmp_path):
    folder = checkout(tmp_path / "c")
    # debootstrap lives in /usr/sbin, which this PATH lacks.
    status, out, err = run_cli(folder, "garage-image", path=f"{fake_docker / 'bin'}:/usr/bin:/bin")
    assert status == 1 and out == ""
    assert "cannot pull python:3.11-slim-bookworm, and building a base from Debian packages needs root" in err
    assert "Run: sudo apt-get install debootstrap && sudo make base-image   then: make up" in err
    assert "Traceback" not in err


PIP_TLS_LOG = """\
#12 4.012 WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection \
broken by 'SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: \
self-signed certificate in certificate chain (_ssl.c:1006)'))': /simple/uv/
#12 9.113 ERROR: Could not find a version that satisfies the requirement uv==0.9.5 (from versions: none)
#12 9.114 ERROR: No matching distribution found for uv==0.9.5
"""


def test_a_build_log_with_pips_tls_failure_gives_the_extra_ca_certs_line():
    line = images.tls_failure(PIP_TLS_LOG)
    assert line.startswith("error: the image build could not verify TLS to the package index")
    assert "EXTRA_CA_CERTS in .env" in line and "\n" not in line


def test_other_build_failures_get_no_tls_line():
    assert images.tls_failure("ERROR: No matching distribution found for uvv==1\n") is None


def test_ca_certificates_follow_extra_ca_certs(tmp_path, capsys):
    from devstack.settings import load
    folder = checkout(tmp_path / "c")
    (folder / "images" / "ca-certificates").mkdir(parents=True)
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "proxy.crt").write_text("PEM")
    (certs / "notes.txt").write_text("not a certificate")
    settings = load(folder, environ={"EXTRA_CA_CERTS": str(certs)}, compose=["false"], host_ids=(1, 1))
    images.sync_ca_certificates(settings)
    assert sorted(os.listdir(folder / "images" / "ca-certificates")) == ["proxy.crt"]
    # Set in the shell only: said, so that the next shell does not build other images.
    assert "comes from your shell, not .env" in capsys.readouterr().err
    images.sync_ca_certificates(load(folder, environ={}, compose=["false"], host_ids=(1, 1)))
    assert os.listdir(folder / "images" / "ca-certificates") == []


@pytest.mark.parametrize("image", ["Wine:1", "wine quality", "wine:", "-wine", "wine:bad tag", "a//b", "wine@1"])
def test_a_name_docker_refuses_is_one_line_before_any_docker_call(tmp_path, image):
    calls = tmp_path / "calls"
    fake_command(tmp_path / "bin", "docker", f'echo "$*" >>{calls}\n')
    status, _, err = run_cli(checkout(tmp_path / "c"), "package", f"IMAGE={image}",
                             path=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert status == 1
    assert err == (f"error: IMAGE={image} is not a name Docker accepts: use lower-case letters, "
                   "digits and . _ -, and an optional :tag (e.g. IMAGE=wine-quality:3)\n")
    assert not calls.exists()


@pytest.mark.parametrize("image", ["wine-quality:3", "team/wine_quality:v1.2", "registry.example.com:5000/wine",
                                   "serve_model"])
def test_names_docker_accepts_get_past_the_check_and_a_stack_down_is_one_line(tmp_path, image):
    calls = tmp_path / "calls"
    fake_command(tmp_path / "bin", "docker", f'echo "$*" >>{calls}\n')
    status, _, err = run_cli(checkout(tmp_path / "c"), "package", f"IMAGE={image}", f"TMPDIR={tmp_path}",
                             path=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert status == 1
    assert err == "error: the tracking container is not running: start the stack with 'make up'\n"
    assert calls.read_text().startswith("ps -q")  # on to looking for the stack
    assert not list(tmp_path.glob("package-model.*"))


def test_the_test_venv_on_a_python_older_than_its_pins_is_one_line(tmp_path, monkeypatch):
    from devstack import develop
    from devstack.proc import Failure
    monkeypatch.setattr(develop, "VENV_PYTHON", (99, 0))
    with pytest.raises(Failure) as failure:
        develop.ensure_venv(settings_for(tmp_path))
    assert len(failure.value.lines) == 1
    assert "need Python 99.0 or newer for their venv" in failure.value.lines[0]
    assert "make test PYTHON3=python3.12" in failure.value.lines[0]
    assert not (tmp_path / "c" / ".venv").exists()


def test_a_file_the_command_cannot_read_is_one_line(tmp_path):
    folder = checkout(tmp_path / "c")
    secret = folder / ".secrets" / "jupyter_token"
    secret.parent.mkdir()
    secret.mkdir()  # a folder where the token file belongs
    status, _, err = run_cli(folder, "lab")
    assert status == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "jupyter_token" in err


def test_extra_ca_certs_from_the_shell_with_no_ca_folder_yet(tmp_path, fake_docker):
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "proxy.crt").write_text("PEM")
    env = dict(os.environ, EXTRA_CA_CERTS=str(certs))
    folder = checkout(tmp_path / "c")
    from devstack.settings import load
    images.sync_ca_certificates(load(folder, environ=env, compose=["false"], host_ids=(1, 1)))
    assert os.listdir(folder / "images" / "ca-certificates") == ["proxy.crt"]
