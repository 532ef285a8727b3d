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


def resolve(model_uri, client):
    """models:/NAME/latest becomes models:/NAME/<highest version>; other URIs pass through."""
    prefix = "models:/"
    if not model_uri.startswith(prefix):
        return model_uri
    name, _, version = model_uri[len(prefix):].partition("/")
    if version != "latest":
        return model_uri
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise LookupError(f"no registered model named '{name}' yet")
    return f"{prefix}{name}/{max(int(v.version) for v in versions)}"


SERVERS = ("devstack", "mlflow")


def settings_errors(environ):
    """One line per SERVE_* setting that cannot work, naming it and what it takes."""
    errors = []
    if (environ.get("SERVE_SERVER") or "devstack") not in SERVERS:
        errors.append(f"SERVE_SERVER={environ['SERVE_SERVER']}: use one of {', '.join(SERVERS)}")
    for name, kind in (("SERVE_WORKERS", int), ("SERVE_MAX_REQUEST_MB", float), ("SERVE_TIMEOUT", float)):
        value = environ.get(name) or ""
        try:
            ok = not value or kind(value) > 0
        except ValueError:
            ok = False
        if not ok:
            errors.append(f"{name}={value}: use a positive {'whole ' if kind is int else ''}number, "
                          "or leave it empty for the default")
    return errors


def server_command(model_path, host, port, environ):
    """argv and environment of the scoring server SERVE_SERVER names, on a local model folder."""
    workers = int(environ.get("SERVE_WORKERS") or len(os.sched_getaffinity(0)))
    # No access log: the healthcheck asks for /ping every 2 s, and the log would show little else.
    if environ.get("SERVE_SERVER") == "mlflow":
        command, env = get_cmd(model_uri=model_path, host=host, port=port, nworkers=workers,
                               timeout=environ.get("SERVE_TIMEOUT") or None)
        return [sys.executable, "-m", *shlex.split(command), "--no-access-log"], env
    env = dict(environ, SCORING_MODEL_PATH=model_path)
    return [sys.executable, "-m", "uvicorn", "--factory", "scoring_app:create_app",
            "--app-dir", str(Path(__file__).resolve().parent),
            "--host", host, "--port", str(port), "--workers", str(workers),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log"], env


def main(argv=None):
    parser = argparse.ArgumentParser(prog="serve_model.py", description=__doc__)
    parser.add_argument("--model-uri", default=os.environ.get("MODEL_URI", "models:/wine-quality/latest"))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", default="8080")
    args = parser.parse_args(argv)
    errors = settings_errors(os.environ)
    if errors:
        print("\n".join(f"serve: {e}" for e in errors), file=sys.stderr)
        return 2
    tracking_uri = mlflow.get_tracking_uri()
    try:
        model_uri = resolve(args.model_uri, MlflowClient())
        local_path = mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                         dst_path=tempfile.mkdtemp(prefix="model-"))
    except (LookupError, MlflowException) as error:
        reason = error.message if isinstance(error, MlflowException) else str(error)
        print(f"serve: cannot load {args.model_uri} from {tracking_uri}: {reason.splitlines()[0]}\n"
              "serve: train and register a model first ('make train'), or pick another: "
              "make serve MODEL=models:/<name>/<version>", file=sys.stderr)
        return 1
    server = os.environ.get("SERVE_SERVER") or "devstack"
    print(f"serve: serving {model_uri} (asked for {args.model_uri}) on port {args.port} "
          f"with the {server} scoring server", flush=True)
    command, env = server_command(local_path, args.host, args.port, os.environ)
    os.execve(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())
