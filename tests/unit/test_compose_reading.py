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
    for name in ("compose.yaml", "compose.team.yaml", "compose.spark.yaml", "compose.monitor.yaml"):
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


def test_the_spark_cluster_publishes_only_its_masters_ui_on_loopback(project):
    """make up SPARK=1: a master and two workers on the Spark image; only the master's web UI is
    published, on BIND_ADDRESS and SPARK_UI_PORT; the batch jobs are there with or without it."""
    settings = load(project, environ={"SPARK_UI_PORT": "8123"}, overrides={"SPARK": "1"})
    base = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE") and key != "SPARK"}
    services = compose_config(project, settings.compose_env(base), "--profile", "jobs")["services"]
    cluster = ["spark-master", "spark-worker-1", "spark-worker-2"]
    for name in [*cluster, "batch-spark", "batch-spark-host"]:
        assert services[name]["image"] == settings.image("spark"), name
    assert services["batch"]["image"] == settings.image("batch")
    published = {name: [address_and_port(p) for p in services[name].get("ports", [])] for name in cluster}
    assert published == {"spark-master": [("127.0.0.1", "8123", "8080")], "spark-worker-1": [], "spark-worker-2": []}
    assert all("user" not in services[name] for name in cluster)  # the image's user, never root
    local = load(project)
    jobs = compose_config(project, local.compose_env(base), "--profile", "jobs")["services"]
    assert "spark-master" not in jobs and "batch-spark" in jobs


def test_monitoring_adds_prometheus_on_loopback_with_a_volume_of_its_own(project):
    """make up MONITOR=1: Prometheus on its own image, its UI published on BIND_ADDRESS and
    PROMETHEUS_PORT only, its samples in a named volume; absent without MONITOR=1."""
    settings = load(project, environ={"PROMETHEUS_PORT": "9123"}, overrides={"MONITOR": "1"})
    base = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE") and key != "MONITOR"}
    config = compose_config(project, settings.compose_env(base))
    prometheus = config["services"]["prometheus"]
    assert prometheus["image"] == settings.image("prometheus")
    assert prometheus["build"]["target"] == "prometheus"
    assert [address_and_port(p) for p in prometheus["ports"]] == [("127.0.0.1", "9123", "9090")]
    assert "user" not in prometheus  # the image's user, never root
    [volume] = prometheus["volumes"]
    target = volume["target"] if isinstance(volume, dict) else volume.split(":")[1]
    assert target == "/prometheus" and "prometheus-data" in config["volumes"]
    assert settings.image("prometheus") in settings.images
    local = load(project)
    assert "prometheus" not in compose_config(project, local.compose_env(base))["services"]
    assert settings.image("prometheus") not in local.images


def address_and_port(published):
    """(host address, host port, container port) of a ports entry, as Compose v1 or v2 writes it."""
    if isinstance(published, dict):
        return published.get("host_ip"), str(published["published"]), str(published["target"])
    address, port, target = published.split("/")[0].split(":")
    return address, port, target
