"""The one owner of every setting: `.env` read by Compose's rules, then the shell's environment and
make's command line (which reaches us as environment variables) on top, then everything derived
from them (the UID rule, the project name, the Compose command and files, image tags).

Every command, test and benchmark imports `load()`; nothing else reads `.env` or derives these.
Standard library only, Python 3.9 and newer: this runs on a stock Mac's python3.
"""

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
# The port the tracking server listens on inside its container (compose.yaml publishes it): the
# laptop's ssh-config forwards to it by service name.
TRACKING_CONTAINER_PORT = 5000
COMPOSE_FILES = ("compose.yaml",)
TEAM_COMPOSE_FILE = "compose.team.yaml"
SPARK_COMPOSE_FILE = "compose.spark.yaml"
MONITOR_COMPOSE_FILE = "compose.monitor.yaml"

# What .env must set (the stack's own settings): a value is stated there once, with its comment.
REQUIRED = ("BIND_ADDRESS", "TRACKING_PORT", "JUPYTER_PORT", "SSH_PORT", "SERVE_PORT", "MODEL_URI",
            "SERVE_SERVER", "MLFLOW_DISABLE_TELEMETRY", "BASE_IMAGE", "LOCAL_BASE_IMAGE", "IMAGE_PREFIX",
            "STACK_VERSION", "GARAGE_IMAGE", "LOCAL_GARAGE_IMAGE", "BUILD_NETWORK", "PROMOTE_TOLERANCE",
            "SPARK_UI_PORT", "K8S_API_PORT", "K8S_SERVE_PORT", "K8S_TRACKING_PORT", "K8S_NAMESPACE", "PROMETHEUS_PORT")
PORTS = ("TRACKING_PORT", "JUPYTER_PORT", "SSH_PORT", "SERVE_PORT", "SPARK_UI_PORT", "K8S_API_PORT", "K8S_SERVE_PORT",
         "K8S_TRACKING_PORT", "PROMETHEUS_PORT")
# What may be set in .env but may be empty.
OPTIONAL = ("COMPOSE_PROJECT_NAME", "TRACKING_ALLOWED_HOSTS", "SERVE_WORKERS", "SERVE_MAX_REQUEST_MB",
            "SERVE_TIMEOUT", "SERVE_ALLOWED_HOSTS", "SERVE_METRICS", "APP_UID", "APP_GID", "EXTRA_CA_CERTS",
            "SPARK_MASTER", "SPARK_DRIVER_HOST", "K8S_CONTEXT", "K8S_REGISTRY")
# What make's command line (or the shell) passes to one command: make train ALPHA=0.1 ...
# name -> default.
ARGUMENTS = {
    "ALPHA": "0.5", "L1": "0.5", "MODEL": "", "ALIAS": "champion", "VERSION": "", "IMAGE": "", "URL": "",
    "PROJECT": "workspace", "PROJECT_VERSION": "", "NAME": "", "DIR": "", "ALPHAS": "", "L1_RATIOS": "",
    "PROMOTE": "", "PARALLEL": "", "SERVICE": "", "REMOTE": "", "CONFIRM": "", "PYTEST_ARGS": "",
    "BENCH_ARGS": "", "TEAM": "", "FORCE": "", "IN": "", "OUT": "", "ENGINE": "", "SPARK": "", "MONITOR": "",
    "VALUES": "", "K8S_TIMEOUT": "5m", "KUBECTL": "", "HELM": "",
}


class SettingsError(Exception):
    """A setting that cannot work: the message is one line that names the file or variable and the fix."""


# --- .env, as Compose reads it -------------------------------------------------------------------

LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*)$")
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def unquote_double(text):
    """The value of a double-quoted string starting at text[0], escapes applied."""
    value, index = [], 1
    while index < len(text) and text[index] != '"':
        if text[index] == "\\" and index + 1 < len(text):
            escaped = text[index + 1]
            value.append(ESCAPES.get(escaped, "\\" + escaped))
            index += 2
        else:
            value.append(text[index])
            index += 1
    return "".join(value)


def parse_value(raw):
    raw = raw.strip()
    if raw.startswith("'") and "'" in raw[1:]:
        return raw[1:raw.index("'", 1)]
    if raw.startswith('"') and '"' in raw[1:]:
        return unquote_double(raw)
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip()


def parse_dotenv(text, path=".env"):
    """{name: value} for each setting of a .env text, in order; later lines win. The dotenv rules
    Compose v1 and v2 both follow: `export ` prefixes, quoted values without their quotes, escapes in
    double quotes only, ` #` comments after unquoted values. A line that is none of these raises
    SettingsError naming the file, the line and the fix."""
    settings = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = LINE.match(line)
        if not match:
            raise SettingsError(f"{path}:{number}: '{stripped[:60]}' is not a NAME=value line: "
                                "fix or remove it (a comment starts with #)")
        settings[match.group(1)] = parse_value(match.group(2))
    return settings


def read_dotenv(path):
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"{path} is missing: restore it with 'git checkout -- .env'") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"{path} cannot be read ({error}): fix its permissions or encoding (UTF-8)") from None
    return parse_dotenv(text, path)


# --- what is derived --------------------------------------------------------------------------------

def normalise_project_name(name):
    """A Compose project name from a folder name, as Compose v2 normalises it: lower case, only
    a-z 0-9 _ -, not starting with _ or -."""
    return re.sub(r"^[_-]+", "", re.sub(r"[^a-z0-9_-]", "", name.lower()))


def uid_rule(configured_uid, configured_gid, host_uid, host_gid):
    """(uid, gid) the containers run as: what .env says, else yours; 1000 where you are root, so
    that no container runs as root."""
    uid = configured_uid or str(1000 if host_uid == 0 else host_uid)
    gid = configured_gid or str(1000 if host_uid == 0 else host_gid)
    return uid, gid


def detect_compose(runner=subprocess.run):
    """`docker compose` (v2) if it answers, else `docker-compose` (v1) if installed, else None."""
    candidates = (["docker", "compose"], ["docker-compose"])
    for candidate in candidates:
        if shutil.which(candidate[0]) is None:
            continue
        try:
            if runner([*candidate, "version"], capture_output=True, timeout=60).returncode == 0:
                return candidate
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def processors():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 2


@dataclass(frozen=True)
class Settings:
    """Every setting of one invocation, resolved. `values` holds .env's settings with the shell's
    and the command line's on top; the properties derive the rest."""

    root: Path
    values: Mapping[str, str]
    host_uid: int
    host_gid: int
    compose_given: Optional[tuple[str, ...]] = None
    overridden: tuple[str, ...] = field(default=())

    def __getitem__(self, name):
        return self.values.get(name, "")

    # The stack's ports and addresses.
    def port(self, name) -> int:
        return int(self.values[name])

    @property
    def bind_address(self):
        return self["BIND_ADDRESS"]

    @property
    def host_address(self):
        """The address to reach published ports from this machine."""
        return "127.0.0.1" if self.bind_address == "0.0.0.0" else self.bind_address

    def url(self, port_name):
        return f"http://{self.host_address}:{self.port(port_name)}"

    # Who the containers run as.
    @property
    def app_uid(self):
        return uid_rule(self["APP_UID"], self["APP_GID"], self.host_uid, self.host_gid)[0]

    @property
    def app_gid(self):
        return uid_rule(self["APP_UID"], self["APP_GID"], self.host_uid, self.host_gid)[1]

    @property
    def is_root(self):
        return self.host_uid == 0

    # Compose.
    @property
    def compose(self):
        """The Compose command: COMPOSE if set, else `docker compose` (v2) if it answers, else
        `docker-compose` (v1). Asked once, and only by commands that use Compose."""
        if self.compose_given is None:
            found = shlex.split(self.values["COMPOSE"]) if self.values.get("COMPOSE") else detect_compose()
            object.__setattr__(self, "compose_given", tuple(found or ("docker", "compose")))
        return self.compose_given

    @property
    def team(self):
        return bool(self["TEAM"])

    @property
    def project_name(self):
        """COMPOSE_PROJECT_NAME, else this folder's name, normalised as Compose does."""
        return normalise_project_name(self["COMPOSE_PROJECT_NAME"] or self.root.name)

    @property
    def spark(self):
        return bool(self["SPARK"])

    @property
    def monitor(self):
        return bool(self["MONITOR"])

    @property
    def compose_files(self):
        """compose.yaml, with team mode's file (TEAM=1), the Spark cluster's (SPARK=1) and
        Prometheus's (MONITOR=1) on top."""
        return (COMPOSE_FILES + ((TEAM_COMPOSE_FILE,) if self.team else ())
                + ((SPARK_COMPOSE_FILE,) if self.spark else ()) + ((MONITOR_COMPOSE_FILE,) if self.monitor else ()))

    @property
    def network(self):
        return f"{self.project_name}_default"

    # Images.
    @property
    def image_tag(self):
        return f"{self['STACK_VERSION']}-uid{self.app_uid}-gid{self.app_gid}"

    def image(self, service):
        return f"{self['IMAGE_PREFIX']}/{service}:{self.image_tag}"

    @property
    def services_built(self):
        return (("tracking", "dev", "serve", "batch") + (("proxy", "postgres", "storage") if self.team else ())
                + (("prometheus",) if self.monitor else ()))

    @property
    def images(self):
        return [self.image(service) for service in self.services_built]

    @property
    def images_stamp(self):
        """Touched after a build: images are rebuilt when a file they are built from is newer."""
        return (self.root / ".build"
                / f"images-{self.image_tag}{'-team' if self.team else ''}{'-monitor' if self.monitor else ''}")

    @property
    def parallel(self):
        """Sweep workers: PARALLEL as given (workspace/sweep.py checks it), else one per core."""
        return self["PARALLEL"] or str(processors())

    @property
    def model(self):
        """What make serve / package serve: MODEL=, else MODEL_URI of .env."""
        return self["MODEL"] or self["MODEL_URI"]

    @property
    def secrets(self):
        return self.root / ".secrets"

    @property
    def ui_base(self):
        return self.url("TRACKING_PORT")

    def compose_env(self, base=None):
        """The environment every Compose and docker command gets: the resolved settings (so
        compose.yaml's ${X:?} find them), the UID rule's result, the project name and files."""
        env = dict(os.environ if base is None else base)
        env.update({name: value for name, value in self.values.items()
                    if name in REQUIRED or name in OPTIONAL})
        env.update(APP_UID=self.app_uid, APP_GID=self.app_gid, COMPOSE_PROJECT_NAME=self.project_name,
                   COMPOSE_FILE=os.pathsep.join(self.compose_files),
                   # The MLflow UI as this machine's browser reaches it, for the links printed in containers.
                   TRACKING_UI_URL=self.ui_base)
        for name, on in (("TEAM", self.team), ("SPARK", self.spark), ("MONITOR", self.monitor)):
            if on:
                env[name] = "1"
            else:
                env.pop(name, None)
        # make's own bookkeeping must not leak into tools that run make again (tests, bench).
        for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
            env.pop(name, None)
        return env


def check(values, path):
    """SettingsError for the first setting that cannot work."""
    for name in REQUIRED:
        if not values.get(name):
            raise SettingsError(f"{name} is not set: set it in {path} (git checkout -- .env restores the defaults)")
    for name in PORTS:
        value = values[name]
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise SettingsError(f"{name}={value} is not a port: set {name} to a number from 1 to 65535 in {path} "
                                f"or on the command line (make up {name}=5050)")
    try:
        tolerance = float(values["PROMOTE_TOLERANCE"])
    except ValueError:
        tolerance = -1.0
    if not tolerance >= 0 or tolerance == float("inf"):
        raise SettingsError(f"PROMOTE_TOLERANCE={values['PROMOTE_TOLERANCE']} is not a fraction >= 0: set it in {path} "
                            "(0.01 allows 1 % worse, 0 never worse)")
    if values.get("FORCE", "") not in ("", "yes"):
        raise SettingsError(f"FORCE={values['FORCE']}: use FORCE=yes to promote past the gate, or leave it out")
    for name in ("APP_UID", "APP_GID"):
        value = values.get(name, "")
        if value and not value.isdigit():
            raise SettingsError(f"{name}={value} is not a number: set it to a numeric id in {path}, or leave it "
                                "empty for yours")
    if values.get("APP_UID") == "0":
        raise SettingsError(f"APP_UID=0 would run the containers as root: leave it empty in {path} (1000 is "
                            "used when you are root)")


def load(root=None, environ=None, overrides=None, compose=None, host_ids=None):
    """The settings of the checkout at root (default: this one): its .env, with environ (default:
    os.environ) and then overrides (NAME=value of a command line) on top. compose: the Compose
    command to use (default: $COMPOSE, else the one detected when first needed). host_ids: (uid,
    gid) of the user, for tests."""
    root = Path(os.path.abspath(root or ROOT))  # `-C .` too: Compose names the project after the folder
    environ = os.environ if environ is None else environ
    dotenv_path = root / ".env"
    values = dict(read_dotenv(dotenv_path))
    known = set(values) | set(REQUIRED) | set(OPTIONAL) | set(ARGUMENTS) | {"COMPOSE"}
    overridden = []
    for name in sorted(known):
        if name in environ:
            values[name] = environ[name]
            overridden.append(name)
    for name, value in (overrides or {}).items():
        values[name] = value
        overridden.append(name)
    for name, default in ARGUMENTS.items():
        values.setdefault(name, default)
    check(values, ".env")
    uid, gid = host_ids if host_ids else (os.getuid(), os.getgid())
    return Settings(root=root, values=values, host_uid=uid, host_gid=gid,
                    compose_given=tuple(compose) if compose else None, overridden=tuple(overridden))


def parse_overrides(words) -> tuple[dict[str, str], list[str]]:
    """NAME=value words of a command line, and the other words."""
    overrides, rest = {}, []
    for word in words:
        match = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", word, re.S)
        if match:
            overrides[match.group(1)] = match.group(2)
        else:
            rest.append(word)
    return overrides, rest

