"""Team mode's pieces that need no Docker: its secrets, the Compose files as Compose reads them,
the garage-image decision, the refusals of `make user` and `make copy-to-team`, and where the
copy tool finds local artifacts."""

import configparser
import os
import re
import stat
import subprocess
import textwrap
from secrets import token_hex

import copy_to_team
import pytest

import devstack.images
import devstack.secrets
from devstack.settings import load
from tests.support.helpers import ROOT
from tests.support.stack import compose_config

TEAM_SECRETS = ("postgres_password", "garage_rpc_secret", "garage_admin_token", "s3_key_id", "s3_secret_key",
                "mlflow_admin_password", "mlflow_flask_secret", "mlflow_credentials")


def checkout(folder, *names):
    """folder with a copy of the repository's .env (and of the named files): a checkout to load."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (".env", *names):
        (folder / name).write_bytes((ROOT / name).read_bytes())
    return folder


def settings_of(folder, **values):
    """The settings of folder with values on top, and nothing from this shell (its TEAM, say)."""
    return load(folder, environ={}, overrides=values, compose=["docker", "compose"])


def make_secrets(folder, team):
    devstack.secrets.make_secrets(settings_of(checkout(folder), SSH_PORT="2222", **({"TEAM": "1"} if team else {})))
    return folder / ".secrets"


def devstack_cli(folder, *words, **env):
    """`python3 -m devstack -C folder words...` with this shell's environment, without TEAM, plus env.
    COMPOSE is set so that no Compose is looked for: the refusals come before any is run."""
    environment = {k: v for k, v in os.environ.items() if k != "TEAM"}
    environment.update(PYTHONPATH=str(ROOT), COMPOSE="false", **env)
    return subprocess.run(["python3", "-m", "devstack", "-C", str(folder), *words], capture_output=True, text=True,
                          env=environment, cwd=folder, timeout=120)


def test_team_secrets_are_made_only_for_team_mode_in_garages_formats(tmp_path):
    secrets = make_secrets(tmp_path, team=False)
    assert not any((secrets / name).exists() for name in TEAM_SECRETS)
    make_secrets(tmp_path, team=True)
    values = {name: (secrets / name).read_text() for name in TEAM_SECRETS}
    for name in TEAM_SECRETS:
        assert stat.S_IMODE((secrets / name).stat().st_mode) == 0o600, name
    assert re.fullmatch(r"GK[0-9a-f]{24}", values["s3_key_id"])
    assert re.fullmatch(r"[0-9a-f]{64}", values["s3_secret_key"])
    assert re.fullmatch(r"[0-9a-f]{64}", values["garage_rpc_secret"])
    assert len(set(values.values())) == len(values)
    credentials = configparser.ConfigParser()
    credentials.read_string(values["mlflow_credentials"])
    assert dict(credentials["mlflow"]) == {"mlflow_tracking_username": "admin",
                                           "mlflow_tracking_password": values["mlflow_admin_password"]}
    make_secrets(tmp_path, team=True)  # kept on the next make up
    assert {name: (secrets / name).read_text() for name in TEAM_SECRETS} == values


@pytest.fixture(scope="module")
def team_folder(tmp_path_factory):
    """The Compose files and .env, with a generated value in each file of .secrets/."""
    folder = tmp_path_factory.mktemp("config")
    for name in ("compose.yaml", "compose.team.yaml", ".env"):
        (folder / name).write_bytes((ROOT / name).read_bytes())
    (folder / ".secrets").mkdir()
    for name in ("jupyter_token", "ssh_host_ed25519_key", "authorized_keys", *TEAM_SECRETS):
        (folder / ".secrets" / name).write_text(token_hex(16))
    return folder


@pytest.fixture(scope="module")
def team_config(team_folder):
    """compose.yaml with compose.team.yaml, as Compose reads them: {service: its configuration}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE")}
    env["COMPOSE_FILE"] = "compose.yaml:compose.team.yaml"
    return compose_config(team_folder, env, "--profile", "serve")["services"]


def test_team_mode_publishes_only_the_proxy_and_the_dev_container_on_loopback(team_config):
    # The one-off jobs (profile "jobs": make sweep's workers, copy-to-team, ...) are not started by
    # make up; Compose v1's config lists them anyway. They publish nothing either (checked below).
    started = {name for name, service in team_config.items() if "jobs" not in (service.get("profiles") or [])}
    assert started == {"tracking", "tracking-a", "tracking-b", "tracking-migrate", "postgres", "storage", "dev",
                       "serve"}
    published = {name: service.get("ports", []) for name, service in team_config.items() if service.get("ports")}
    assert set(published) == {"tracking", "dev", "serve"}
    for ports in published.values():
        for port in ports:  # v1 prints "127.0.0.1:5000:5000/tcp", v2 a mapping
            host_ip = port.split(":")[0] if isinstance(port, str) else port["host_ip"]
            assert host_ip == "127.0.0.1", port
    assert team_config["tracking"]["image"].startswith("mlflow-devstack/proxy:")
    assert team_config["tracking-a"]["image"] == team_config["tracking-b"]["image"] \
        == team_config["tracking-migrate"]["image"]


def test_replicas_start_after_the_migration_and_the_proxy_after_both(team_config):
    for replica in ("tracking-a", "tracking-b"):
        assert team_config[replica]["depends_on"]["tracking-migrate"]["condition"] == "service_completed_successfully"
        assert team_config[replica]["depends_on"]["storage"]["condition"] == "service_healthy"
    assert {name: dep["condition"] for name, dep in team_config["tracking"]["depends_on"].items()} \
        == {"tracking-a": "service_healthy", "tracking-b": "service_healthy"}
    assert team_config["tracking-migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_no_password_is_in_the_team_configuration(team_config, team_folder):
    """Secrets reach containers as files: no secret's value is in the resolved configuration, and
    every credential-like variable names a file."""
    resolved = repr(team_config)
    assert not [path.name for path in (team_folder / ".secrets").iterdir() if path.read_text() in resolved]
    for name, service in team_config.items():
        for variable, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", variable):
                assert variable.endswith("_FILE") and str(value).startswith("/run/secrets/"), (name, variable)


@pytest.mark.parametrize("command, message", [
    (["user", "NAME=alice"], "users exist in team mode only"),
    (["copy-to-team"], "make copy-to-team TEAM=1"),
    (["backup"], "make backup TEAM=1"),
    (["restore", "DIR=backups/some"], "make restore TEAM=1"),
])
def test_team_commands_outside_team_mode_say_how_in_one_line(tmp_path, command, message):
    result = devstack_cli(checkout(tmp_path), *command)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("name", ["", "two words", "semi;colon", "quote'd", "x" * 65, "-leading-dash"])
def test_make_user_refuses_a_bad_name_in_one_line(tmp_path, name):
    result = devstack_cli(checkout(tmp_path), "user", f"NAME={name}", TEAM="1", TRACKING_PORT="9")
    assert result.returncode == 2
    assert "is not a user name" in result.stderr and result.stderr.count("\n") == 1


def test_garage_image_uses_the_registry_image_else_builds_from_crates_once(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "images").write_text("")
    (bin_dir / "docker").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$1" in
          image) grep -qx "$3" {tmp_path}/images ;;
          pull) echo "Error response from daemon: no such host" >&2; exit 1 ;;
          build) for last; do :; done; echo "$@" >{tmp_path}/build; echo local-garage:2.5.0 >>{tmp_path}/images ;;
        esac
        """))
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    settings = settings_of(checkout(tmp_path / "checkout"), GARAGE_IMAGE="dxflrs/garage:v2.5.0",
                           LOCAL_GARAGE_IMAGE="local-garage:2.5.0", BUILD_NETWORK="default")

    def garage_image():
        # Its own lock file: a real build elsewhere on this machine (CI starts one) must not block it.
        return devstack.images.garage_image(settings, "base:bookworm", lock_folder=tmp_path)

    assert garage_image() == "local-garage:2.5.0"
    build = (tmp_path / "build").read_text()
    assert "GARAGE_VERSION=2.5.0" in build and "BASE_IMAGE=base:bookworm" in build
    (tmp_path / "build").unlink()
    assert garage_image() == "local-garage:2.5.0"
    assert not (tmp_path / "build").exists()  # built once per machine
    (tmp_path / "images").write_text("dxflrs/garage:v2.5.0\n")
    assert garage_image() == "dxflrs/garage:v2.5.0"


def test_local_artifacts_are_found_under_mlruns_and_other_stores_refused():
    assert copy_to_team.local_artifacts("/mlruns", "mlflow-artifacts:/1/abc/artifacts") \
        == "/mlruns/artifacts/1/abc/artifacts"
    assert copy_to_team.local_artifacts("/mlruns", "mlflow-artifacts:///2/models/m-1/artifacts") \
        == "/mlruns/artifacts/2/models/m-1/artifacts"
    with pytest.raises(ValueError, match="not the local stack's"):
        copy_to_team.local_artifacts("/mlruns", "s3://bucket/1/abc/artifacts")


def test_restore_refuses_a_folder_that_is_not_a_backup_before_touching_anything(tmp_path):
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "mlflow.sql").write_text("")
    # COMPOSE=false: a Compose that does nothing.
    result = devstack_cli(checkout(tmp_path / "checkout"), "restore", f"DIR={backup}", TEAM="1")
    assert result.returncode == 1
    assert result.stderr == f"error: {backup} is not a backup of make backup: mlflow_auth.sql is missing\n"
