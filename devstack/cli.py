"""mlflow-devstack's host command line: `make <command>` runs `python3 -m devstack <command>`.

The table below is the one list of commands and their help; `make help`, `python3 -m devstack
--help` and the Makefile's targets all follow it (a unit test keeps the Makefile in step).
"""

import importlib
import os
import sys

from .proc import Failure
from .settings import SettingsError, load, parse_overrides

# (section, [(command, "module:function", help)]) in the order help shows them.
COMMANDS = [
    ("The stack", [
        ("up", "stack:up", "Build if needed, start tracking and dev, wait until healthy, print the URLs "
                           "(TEAM=1: team mode; SPARK=1: a Spark cluster; MONITOR=1: Prometheus)"),
        ("down", "stack:down", "Stop and remove the containers (runs, models and artifacts stay in ./mlruns)"),
        ("build", "images:build", "Build the images (tracking, dev, serve), on a registry-free base if need be"),
        ("base-image", "images:make_base_image", "Build the base image from Debian packages, for machines with "
                                                 "no registry (root)"),
        ("garage-image", "images:make_garage_image", "Get Garage for team mode: pulled, else built from "
                                                     "crates.io (once per machine)"),
        ("spark-image", "images:make_spark_image", "Build the Spark image (PySpark, a JDK) for make batch ENGINE=spark "
                                                   "and make up SPARK=1"),
        ("ps", "stack:ps", "Show the containers and their health"),
        ("logs", "stack:logs", "Follow the logs (make logs SERVICE=tracking for one service)"),
        ("urls", "stack:urls", "Print the URLs and the ssh command"),
        ("doctor", "doctor:doctor", "Check what users trip on (Docker, base image, ports, file owners, CAs, "
                                    "health, host names)"),
    ]),
    ("Working in the dev container", [
        ("ssh", "stack:ssh", "Open a shell in the dev container over SSH"),
        ("ssh-config", "stack:ssh_config", "Print a ~/.ssh/config block (VS Code Remote-SSH); REMOTE=you@vm: for "
                                           "a laptop, via the VM"),
        ("tunnel", "stack:tunnel", "Print the ssh command that opens the UI and JupyterLab of a stack on "
                                   "REMOTE=you@vm here"),
        ("lab", "stack:lab", "Print the JupyterLab URL, with its token"),
        ("train", "mlops:train", "Train and register the model in the dev container: make train ALPHA=0.5 L1=0.5"),
        ("serve", "mlops:serve", "Serve a model (default: wine-quality's @champion, else its latest): make serve "
                                 "[MODEL=models:/wine-quality/2]"),
        ("project", "mlops:project", "Run the MLproject in its own container, as the tutorial does: make project "
                                     "ALPHA=1.0 L1=1.0 [PROJECT=<git URL> PROJECT_VERSION=<branch>]"),
        ("sweep", "mlops:sweep", "Grid search in parallel containers: make sweep [ALPHAS=0.01,0.1 "
                                 "L1_RATIOS=0.1,0.9 PARALLEL=2 PROMOTE=yes]"),
        ("promote", "mlops:promote", "Point @champion at the wine-quality version with the lowest rmse: make "
                                     "promote [VERSION=3] [ALIAS=champion]"),
        ("package", "mlops:package", "Build a self-contained model server image: make package "
                                     "[MODEL=models:/wine-quality/3] [IMAGE=name:tag]"),
        ("predict", "mlops:predict", "Score the first rows of the data set: make predict "
                                     "[URL=http://127.0.0.1:5001/invocations]"),
        ("batch", "batch:batch", "Score a CSV or Parquet file of any size: make batch IN=data.csv OUT=scored.parquet "
                                 "[MODEL=...] [ENGINE=spark] [SPARK_MASTER=spark://host:7077]"),
    ]),
    ("Kubernetes (docs/kubernetes.md)", [
        ("k8s-up", "k8s:k8s_up", "Start a one-node Kubernetes cluster here (built from Debian packages once) and "
                                 "make it kubectl's context"),
        ("k8s-deploy", "k8s:k8s_deploy", "Package the model and install the Helm chart (model, tracking) into "
                                         "kubectl's context: make k8s-deploy [MODEL=...] [VALUES=file.yaml]"),
        ("k8s-sweep", "k8s:k8s_sweep", "The grid search as a Kubernetes Job: make k8s-sweep [PARALLEL=2] "
                                       "[ALPHAS=...] [L1_RATIOS=...]"),
        ("k8s-down", "k8s:k8s_down", "Stop the local cluster (its state stays for k8s-up); on another cluster, "
                                     "uninstall the chart"),
        ("k8s-image", "k8s:make_k8s_image", "Build the local cluster's images (Kubernetes from Debian's source; "
                                            "once per machine)"),
    ]),
    ("Team mode (TEAM=1: PostgreSQL, Garage, two tracking replicas, login)", [
        ("user", "team:user", "Create a team login with a generated password: make user NAME=alice TEAM=1"),
        ("copy-to-team", "team:copy_to_team", "Copy the local stack's runs and models (./mlruns) into team mode: "
                                              "make copy-to-team TEAM=1"),
        ("backup", "team:backup", "Back up the database and the bucket into a new folder: make backup TEAM=1 "
                                  "[DIR=backups/<name>]"),
        ("restore", "team:restore", "Replace the database and the bucket with a backup's: make restore TEAM=1 "
                                    "DIR=backups/<name> (asks first)"),
    ]),
    ("Development", [
        ("test", "develop:test", "Run every test: unit, host integration, end-to-end (Docker)"),
        ("test-e2e", "develop:test_e2e", "Run the end-to-end tests only (make test-e2e COMPOSE=docker-compose)"),
        ("test-fast", "develop:test_fast", "Run the tests that need no Docker: unit and host integration"),
        ("lint", "develop:lint", "Check the code: ruff (Python), shellcheck (shell), make 3.81 and Python 3.9 "
                                 "compatibility of the host layer"),
        ("bench", "develop:bench", "Measure start-up, training, serving, memory and sizes (bench/results/)"),
        ("lock", "develop:lock", "Re-resolve requirements/constraints.txt after changing a pin"),
        ("clean", "stack:clean", "Remove the stack, its images and EVERY run, model and artifact in ./mlruns "
                                 "(TEAM=1: and team mode's volumes) (asks first)"),
    ]),
]
TABLE = {name: (target, text) for _, commands in COMMANDS for name, target, text in commands}

USAGE = """usage: python3 -m devstack [-C DIR] COMMAND [NAME=value ...]

The Makefile runs this: `make up` is `python3 -m devstack up`, and `make train ALPHA=0.1` is
`python3 -m devstack train ALPHA=0.1`. It works without make too, from the checkout's folder (or
with -C DIR). Settings come from .env; a variable set in the shell or given as NAME=value wins."""


def help_text(style="make"):
    """The commands by section: as `make help` shows them, or as this CLI's --help does."""
    prefix = "make" if style == "make" else "python3 -m devstack"
    lines = ["mlflow-devstack: MLflow tracking, JupyterLab/SSH dev container and model serving."]
    if style != "make":
        lines += ["", USAGE]
    for section, commands in COMMANDS:
        lines += ["", section]
        lines += [f"  {prefix} {name:<12} {text}" for name, _, text in commands]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    root = None
    if len(argv) >= 2 and argv[0] == "-C":
        root, argv = argv[1], argv[2:]
    overrides, words = parse_overrides(argv)
    if not words or words[0] in ("-h", "--help"):
        print(help_text("cli"))
        return 0
    command, extra = words[0], words[1:]
    if command == "help":
        print(help_text("make"))
        return 0
    if command not in TABLE or extra:
        unknown = command if command not in TABLE else " ".join(extra)
        print(f"error: unknown command or argument '{unknown}': see 'make help' (settings are NAME=value)",
              file=sys.stderr)
        return 2
    module, function = TABLE[command][0].split(":")
    try:
        settings = load(root or os.environ.get("DEVSTACK_ROOT") or None, overrides=overrides)
        action = getattr(importlib.import_module(f"devstack.{module}"), function)
        action(settings)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Failure as failure:
        for line in failure.lines:
            print(line, file=sys.stderr)
        return failure.status
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except OSError as error:  # a file or folder the command needs: one line, not a trace
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    return 0
