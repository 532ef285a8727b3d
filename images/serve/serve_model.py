#!/usr/bin/env python3
"""Fetch MODEL_URI through the tracking server, then become MLflow's scoring server on it.

Resolving first turns "the model does not exist yet" into one clear line instead of a trace, pins
`latest` to the version actually served (it is printed), and downloads the model once. The server
is the one `mlflow models serve` starts (uvicorn running MLflow's scoring app, with its settings),
exec'd directly: one process instead of the CLI waiting beside it, about 150 MB less.
"""

import argparse
import os
import shlex
import sys
import tempfile

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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="serve_model.py", description=__doc__)
    parser.add_argument("--model-uri", default=os.environ.get("MODEL_URI", "models:/wine-quality/latest"))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", default="8080")
    args = parser.parse_args(argv)
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
    print(f"serve: serving {model_uri} (asked for {args.model_uri}) on port {args.port}", flush=True)
    command, env = get_cmd(model_uri=local_path, host=args.host, port=args.port)
    # No access log: the healthcheck asks for /ping every 2 s, and the log would show little else.
    os.execvpe(sys.executable, [sys.executable, "-m", *shlex.split(command), "--no-access-log"], env)


if __name__ == "__main__":
    sys.exit(main())
