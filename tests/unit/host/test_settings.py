"""The settings object: .env by Compose's rules, the shell and the command line on top, and what is
derived from them (UID rule, project name, Compose command and files, image tags)."""

import textwrap

import pytest

from devstack import settings as S
from tests.unit.host.support import ROOT, checkout

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
    NEWLINE="a\\nb"
    """)
# What Compose makes of ENV_CASES (tests/unit/test_compose_reading.py checks these against Compose).
EXPECTED = {"PLAIN": "plain", "DOUBLE": "models:/wine-quality/1", "SINGLE": "single # not a comment",
            "COMMENTED": "value", "ESCAPED": 'with "escaped" quotes', "EXPORTED": "exported", "EMPTY": "",
            "SPACED": "spaced", "HASH_IN_QUOTES": "a#b", "HASH_IN_WORD": "a#b", "DOLLAR": "$literal",
            "NEWLINE": "a\nb"}


def test_dotenv_rules():
    assert S.parse_dotenv(ENV_CASES) == EXPECTED


def test_a_later_line_wins():
    assert S.parse_dotenv("A=1\nA=2\n") == {"A": "2"}


@pytest.mark.parametrize("line", ["NOT A SETTING", "=value", "1NAME=x", "export"])
def test_a_bad_line_names_the_file_the_line_and_the_fix(line):
    with pytest.raises(S.SettingsError) as error:
        S.parse_dotenv(f"# fine\nA=1\n{line}\n", "/x/.env")
    message = str(error.value)
    assert message.startswith("/x/.env:3: ")
    assert "NAME=value" in message and "\n" not in message


def load(tmp_path, dotenv_extra="", environ=None, overrides=None, ids=(1000, 1000), name="checkout"):
    folder = checkout(tmp_path / name)
    if dotenv_extra:
        with open(folder / ".env", "a") as env:
            env.write(dotenv_extra)
    return S.load(folder, environ=environ or {}, overrides=overrides, compose=["docker", "compose"], host_ids=ids)


def test_the_shell_wins_over_env_and_the_command_line_over_both(tmp_path):
    assert load(tmp_path).port("TRACKING_PORT") == 5000
    assert load(tmp_path, environ={"TRACKING_PORT": "5050"}).port("TRACKING_PORT") == 5050
    both = load(tmp_path, environ={"TRACKING_PORT": "5050"}, overrides={"TRACKING_PORT": "6060"})
    assert both.port("TRACKING_PORT") == 6060
    assert "TRACKING_PORT" in both.overridden


def test_variables_that_are_no_setting_are_not_taken_from_the_shell(tmp_path):
    settings = load(tmp_path, environ={"HOME": "/elsewhere", "UNRELATED": "x"})
    assert "UNRELATED" not in settings.values and "HOME" not in settings.values


@pytest.mark.parametrize("configured, ids, expected", [
    (("", ""), (501, 20), ("501", "20")),        # a Mac user: yours
    (("", ""), (0, 0), ("1000", "1000")),        # root: never root in the containers
    (("1234", "99"), (0, 0), ("1234", "99")),    # what .env says wins
    (("1234", ""), (501, 20), ("1234", "20")),
])
def test_the_uid_rule(configured, ids, expected):
    assert S.uid_rule(*configured, *ids) == expected


def test_the_uid_rule_reaches_compose_and_the_image_tag(tmp_path):
    settings = load(tmp_path, ids=(0, 0))
    env = settings.compose_env({})
    assert (env["APP_UID"], env["APP_GID"]) == ("1000", "1000")
    assert settings.image("dev") == "mlflow-devstack/dev:0.4.0-uid1000-gid1000"
    mine = load(tmp_path, ids=(501, 20))
    assert mine.image_tag.endswith("-uid501-gid20")


@pytest.mark.parametrize("folder, expected", [
    ("mlflow-devstack", "mlflow-devstack"), ("My Project.v2", "myprojectv2"), ("__x__", "x__"),
    ("-dash", "dash"), ("Ünïcode", "ncode"),
])
def test_project_name_normalisation(folder, expected):
    assert S.normalise_project_name(folder) == expected


def test_project_name_from_the_folder_else_compose_project_name(tmp_path):
    assert load(tmp_path, name="Some Folder").project_name == "somefolder"
    named = load(tmp_path, name="other", environ={"COMPOSE_PROJECT_NAME": "Team-2"})
    assert named.project_name == "team-2"
    assert named.network == "team-2_default"
    assert named.compose_env({})["COMPOSE_PROJECT_NAME"] == "team-2"


def test_team_mode_adds_its_compose_file_and_images(tmp_path):
    local = load(tmp_path)
    team = load(tmp_path, overrides={"TEAM": "1"})
    assert local.compose_env({})["COMPOSE_FILE"] == "compose.yaml"
    assert team.compose_env({})["COMPOSE_FILE"] == "compose.yaml:compose.team.yaml"
    assert team.compose_env({})["TEAM"] == "1" and "TEAM" not in local.compose_env({"TEAM": "1"})
    assert len(team.images) == 7 and len(local.images) == 4
    assert team.images_stamp.name.endswith("-team") and not local.images_stamp.name.endswith("-team")


def test_spark_adds_the_clusters_compose_file_on_top(tmp_path):
    spark = load(tmp_path, overrides={"SPARK": "1"})
    both = load(tmp_path, overrides={"SPARK": "1", "TEAM": "1"})
    assert spark.compose_env({})["COMPOSE_FILE"] == "compose.yaml:compose.spark.yaml"
    assert both.compose_env({})["COMPOSE_FILE"] == "compose.yaml:compose.team.yaml:compose.spark.yaml"
    assert spark.compose_env({})["SPARK"] == "1" and "SPARK" not in load(tmp_path).compose_env({"SPARK": "1"})


def test_monitor_adds_prometheus_compose_file_image_and_stamp(tmp_path):
    monitor = load(tmp_path, overrides={"MONITOR": "1"})
    assert monitor.compose_env({})["COMPOSE_FILE"] == "compose.yaml:compose.monitor.yaml"
    assert monitor.compose_env({})["MONITOR"] == "1" and "MONITOR" not in load(tmp_path).compose_env({"MONITOR": "1"})
    assert monitor.images[-1].split("/")[-1].startswith("prometheus:") and len(monitor.images) == 5
    assert monitor.images_stamp.name.endswith("-monitor")


def test_makes_bookkeeping_does_not_reach_compose(tmp_path):
    env = load(tmp_path).compose_env({"MAKEFLAGS": "x", "MAKELEVEL": "1", "PATH": "/bin"})
    assert "MAKEFLAGS" not in env and "MAKELEVEL" not in env and env["PATH"] == "/bin"


class Runner:
    """Answers `version` for the Compose commands in working."""

    def __init__(self, working):
        self.working = working

    def __call__(self, command, **_):
        class Result:
            returncode = 0 if command[:-1] in self.working else 1
        return Result()


def test_compose_v2_is_preferred_then_v1(monkeypatch):
    monkeypatch.setattr(S.shutil, "which", lambda name: "/usr/bin/" + name)
    assert S.detect_compose(Runner([["docker", "compose"], ["docker-compose"]])) == ["docker", "compose"]
    assert S.detect_compose(Runner([["docker-compose"]])) == ["docker-compose"]
    assert S.detect_compose(Runner([])) is None


def test_compose_from_the_setting_wins(tmp_path):
    folder = checkout(tmp_path / "c")
    settings = S.load(folder, environ={"COMPOSE": "/opt/v2/docker-compose --ansi never"}, host_ids=(1, 1))
    assert settings.compose == ("/opt/v2/docker-compose", "--ansi", "never")


@pytest.mark.parametrize("name, value, words", [
    ("TRACKING_PORT", "abc", "TRACKING_PORT=abc is not a port"),
    ("SSH_PORT", "70000", "SSH_PORT=70000 is not a port"),
    ("APP_UID", "0", "would run the containers as root"),
    ("APP_GID", "staff", "APP_GID=staff is not a number"),
    ("BASE_IMAGE", "", "BASE_IMAGE is not set"),
])
def test_settings_that_cannot_work_are_one_line(tmp_path, name, value, words):
    with pytest.raises(S.SettingsError) as error:
        load(tmp_path, overrides={name: value})
    assert words in str(error.value) and "\n" not in str(error.value)


def test_the_host_address_of_an_open_bind(tmp_path):
    assert load(tmp_path, overrides={"BIND_ADDRESS": "0.0.0.0"}).host_address == "127.0.0.1"
    assert load(tmp_path, overrides={"BIND_ADDRESS": "10.1.2.3"}).url("SERVE_PORT") == "http://10.1.2.3:5001"


def test_model_is_model_else_model_uri(tmp_path):
    assert load(tmp_path).model == "models:/wine-quality"
    assert load(tmp_path, overrides={"MODEL": "models:/x/2"}).model == "models:/x/2"


def test_parse_overrides():
    assert S.parse_overrides(["up", "TEAM=1", "ALPHA=0.5", "lower=x"]) == ({"TEAM": "1", "ALPHA": "0.5"},
                                                                         ["up", "lower=x"])


def test_the_repository_env_loads():
    settings = S.load(ROOT, environ={}, compose=["docker-compose"], host_ids=(1000, 1000))
    assert settings["STACK_VERSION"] and settings.port("SERVE_PORT")
