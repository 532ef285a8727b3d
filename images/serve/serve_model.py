#!/usr/bin/env python3
"""Fetch MODEL_URI through the tracking server, then become the scoring server on it.

Resolving first turns "the model does not exist yet" into one clear line instead of a trace, pins
`latest` to the version actually served (it is printed), and downloads the model once. The server
is exec'd directly (one process tree, no CLI waiting beside it): SERVE_SERVER=devstack, the default,
is the stack's scoring_app.py; SERVE_SERVER=mlflow is the one `mlflow models serve` starts
(uvicorn running MLflow's scoring app). Both run SERVE_WORKERS processes under uvicorn's
supervisor, which restarts a worker that dies.
"""

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.scoring_server import get_cmd
from mlflow.tracking import MlflowClient
from scoring_app import metrics_on, number, settings_errors

CHAMPION = "champion"


def resolve(model_uri, client):
    """The registered version a models:/ URI means now, as (models:/NAME/<version>, how it was
    picked): models:/NAME is @champion if that alias is set, else the highest version;
    models:/NAME/latest the highest version; models:/NAME@ALIAS that alias. Other URIs pass through."""
    prefix = "models:/"
    if not model_uri.startswith(prefix):
        return model_uri, "as given"
    name, slash, version = model_uri[len(prefix):].partition("/")
    name, at, alias = name.partition("@")
    if at:
        found = client.get_model_version_by_alias(name, alias)  # MlflowException if unset
        return f"{prefix}{name}/{found.version}", f"@{alias}"
    if slash and version != "latest":
        return model_uri, "as given"
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise LookupError(f"no registered model named '{name}' yet")
    if not slash:
        try:
            return f"{prefix}{name}/{client.get_model_version_by_alias(name, CHAMPION).version}", f"@{CHAMPION}"
        except MlflowException:
            pass  # not promoted yet
    return f"{prefix}{name}/{max(int(v.version) for v in versions)}", "the latest version"


def server_command(model_path, host, port, environ, model_uri=None):
    """argv and environment of the scoring server SERVE_SERVER names, on a local model folder
    (model_uri: the models:/ URI it came from, which names it in the metrics)."""
    workers = number(environ, "SERVE_WORKERS") or len(os.sched_getaffinity(0))
    # No access log: the healthcheck asks for /ping every 2 s, and the log would show little else.
    if environ.get("SERVE_SERVER") == "mlflow":
        command, env = get_cmd(model_uri=model_path, host=host, port=port, nworkers=workers,
                               timeout=environ.get("SERVE_TIMEOUT") or None)
        return [sys.executable, "-m", *shlex.split(command), "--no-access-log"], env
    env = dict(environ, SCORING_MODEL_PATH=model_path)
    if model_uri:
        env["SCORING_MODEL_URI"] = model_uri
    if metrics_on(environ):
        # The workers' metric files (serve_metrics.py): a new, empty folder on every start, so no
        # count of a server that ran before is summed in.
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="serve-metrics-")
    return [sys.executable, "-m", "uvicorn", "--factory", "scoring_app:create_app",
            "--app-dir", str(Path(__file__).resolve().parent),
            "--host", host, "--port", str(port), "--workers", str(workers),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log"], env


def fetch(model_uri, destination, who="serve"):
    """Resolve and download model_uri through the tracking server; returns (local path, what was
    picked), or exits with one line saying why not (`who` names the job in it: serve, batch)."""
    tracking_uri = mlflow.get_tracking_uri()
    try:
        resolved, picked = resolve(model_uri, MlflowClient())
        local_path = mlflow.artifacts.download_artifacts(artifact_uri=resolved, dst_path=destination)
    except (LookupError, MlflowException) as error:
        reason = error.message if isinstance(error, MlflowException) else str(error)
        sys.exit(f"{who}: cannot load {model_uri} from {tracking_uri}: {reason.splitlines()[0]}\n"
                 f"{who}: train and register a model first ('make train'), or pick another: "
                 "MODEL=models:/<name>/<version>")
    return local_path, f"{resolved} ({picked})"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="serve_model.py", description=__doc__)
    # compose.yaml sets MODEL_URI from .env (${MODEL_URI:?}): no second default here.
    parser.add_argument("--model-uri", default=os.environ.get("MODEL_URI"))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", default="8080")
    parser.add_argument("--download-to", metavar="DIR",
                        help="only download the model into DIR and print what was picked (make package)")
    parser.add_argument("--check", action="store_true",
                        help="only resolve, download and load the model, then exit: 0 if it can be served "
                             "(make serve, before it replaces a running server)")
    args = parser.parse_args(argv)
    errors = settings_errors(os.environ)
    if errors:
        print("\n".join(f"serve: {e}" for e in errors), file=sys.stderr)
        return 2
    if not args.model_uri and not os.environ.get("MODEL_PATH"):
        print("serve: MODEL_URI is not set: run the server with make serve (it sets it from .env), "
              "or give --model-uri", file=sys.stderr)
        return 2
    if args.download_to:
        _, picked = fetch(args.model_uri, args.download_to)
        print(picked)
        return 0
    if args.check:
        local_path, picked = fetch(args.model_uri, tempfile.mkdtemp(prefix="model-"))
        try:
            mlflow.pyfunc.load_model(local_path)
        except Exception as error:  # any reason the server could not load it
            sys.exit(f"serve: cannot load {args.model_uri}: {str(error).splitlines()[0] if str(error) else error!r}")
        print(f"serve: {picked} can be served")
        return 0
    if os.environ.get("MODEL_PATH"):  # a packaged image: the model is baked in, no tracking server
        local_path, picked = os.environ["MODEL_PATH"], os.environ.get("PACKAGED_MODEL_URI", "baked in")
    else:
        local_path, picked = fetch(args.model_uri, tempfile.mkdtemp(prefix="model-"))
    served = picked.split(" (")[0]  # models:/NAME/VERSION (how it was picked)
    server = os.environ.get("SERVE_SERVER") or "devstack"
    print(f"serve: serving {picked} on port {args.port} with the {server} scoring server", flush=True)
    command, env = server_command(local_path, args.host, args.port, os.environ, served)
    os.execve(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())
