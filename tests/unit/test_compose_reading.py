"""The settings against Compose itself: .env's rules as Compose reads them, and the derived project
name, files and UID rule as `compose config` resolves them (needs Compose, no Docker daemon)."""

import os
import re

import pytest

from devstack.settings import load
from tests.support.stack import compose_config
from tests.unit.host.support import checkout
from tests.unit.host.test_settings import ENV_CASES, EXPECTED


@pytest.fixture(scope="module")
def compose_reading(tmp_path_factory):
    """How Compose itself reads ENV_CASES."""
    folder = tmp_path_factory.mktemp("dotenv")
    (folder / ".env").write_text(ENV_CASES)
    names = re.findall(r"^(?:export )?([A-Z_]+)=", ENV_CASES, re.M)
    environment = "".join(f"      {name}: \"${{{name}}}\"\n" for name in names if name != "DOLLAR")
    (folder / "compose.yaml").write_text(f"services:\n  probe:\n    image: probe\n    environment:\n{environment}")
    config = compose_config(folder, {key: value for key, value in os.environ.items() if key not in names})
    return {name: str(value) for name, value in config["services"]["probe"]["environment"].items()}


@pytest.mark.parametrize("name", [name for name in EXPECTED if name != "DOLLAR"])
def test_settings_read_env_as_compose_does(compose_reading, name):
    assert EXPECTED[name] == compose_reading[name]


@pytest.fixture
def project(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    folder = checkout(tmp_path / "Some Checkout")
    for name in ("compose.yaml", "compose.team.yaml"):
        (folder / name).write_bytes(open(os.path.join(root, name), "rb").read())
    secrets = folder / ".secrets"
    secrets.mkdir()
    for name in ("jupyter_token", "ssh_host_ed25519_key", "authorized_keys", "postgres_password", "garage_rpc_secret",
                 "garage_admin_token", "s3_key_id", "s3_secret_key", "mlflow_admin_password", "mlflow_flask_secret",
                 "mlflow_credentials"):
        (secrets / name).write_text("x")
    return folder


@pytest.mark.parametrize("team", [False, True], ids=["local", "team"])
@pytest.mark.parametrize("ids", [(0, 0), (501, 20)], ids=["root", "user"])
def test_compose_resolves_what_the_settings_derive(project, team, ids):
    environ = {"TRACKING_PORT": "5123"}
    if team:
        environ["TEAM"] = "1"
    settings = load(project, environ=environ, host_ids=ids)
    base = {key: value for key, value in os.environ.items()
            if not key.startswith("COMPOSE") and key not in ("TEAM", "APP_UID", "APP_GID")}
    config = compose_config(project, settings.compose_env(base), "--profile", "serve")
    services = config["services"]
    assert config.get("name", settings.project_name) == settings.project_name == "somecheckout"
    assert services["dev"]["image"] == settings.image("dev")
    assert services["tracking"]["image"] == settings.image("proxy" if team else "tracking")
    assert ("postgres" in services) == team
    build_args = services["dev"]["build"]["args"]
    assert (str(build_args["APP_UID"]), str(build_args["APP_GID"])) == (settings.app_uid, settings.app_gid)
    published = services["tracking"]["ports"][0]
    port = published.split(":")[1] if isinstance(published, str) else str(published["published"])
    assert port == "5123"
