"""Point a registered model's alias at its best version (lowest rmse of the run that logged it), or at
the version you name, and say what moved. Aliases replace MLflow's deprecated stages.

    python promote.py                    # @champion -> the wine-quality version with the lowest rmse
    python promote.py --version 3        # @champion -> version 3
    python promote.py --alias challenger --model wine-quality

The tracking server comes from MLFLOW_TRACKING_URI (http://tracking:5000 in the dev container).
"""

import math
import sys

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from train import DEFAULT_NAME, EXIT_FAILURE, OneLineParser, check_tracking_server

DEFAULT_ALIAS = "champion"
METRIC = "rmse"


def parse_args(argv=None):
    parser = OneLineParser(prog="promote.py", description="Move a registered model's alias to a version.")
    parser.add_argument("--model", default=DEFAULT_NAME, help="registered model (default %(default)s)")
    parser.add_argument("--alias", default=DEFAULT_ALIAS, help="alias to move (default %(default)s)")
    parser.add_argument("--version", help=f"version to point it at (default: the lowest {METRIC})")
    args = parser.parse_args(argv)
    if not args.alias or not args.alias.replace("_", "").replace("-", "").isalnum() or args.alias.isdigit():
        parser.error(f"alias must be letters, digits, - or _ and not a number, got {args.alias!r}")
    if args.version is not None and not (args.version.isdigit() and int(args.version) > 0):
        parser.error(f"version must be a positive whole number, got {args.version!r}")
    if not args.model or "'" in args.model:
        parser.error(f"model must be a registered model's name, got {args.model!r}")
    return args


def best_version(scored):
    """The version with the lowest score among {version: score}; ties go to the newer version.
    Versions without a score (None or NaN) are never chosen."""
    candidates = [(score, -int(version), version) for version, score in scored.items()
                  if score is not None and not math.isnan(score)]
    if not candidates:
        raise LookupError(f"no version has an '{METRIC}' metric to compare")
    return min(candidates)[2]


def scores(client, versions):
    """{version: rmse of the run that logged it, or None}."""
    found = {}
    for version in versions:
        metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
        found[version.version] = metrics.get(METRIC)
    return found


def current_version(client, model, alias):
    try:
        return client.get_model_version_by_alias(model, alias).version
    except MlflowException:
        return None


def promote(client, model, alias, version=None):
    """Move @alias; return the line saying what moved. Raises LookupError for what does not exist."""
    versions = client.search_model_versions(f"name = '{model}'")
    if not versions:
        raise LookupError(f"there is no registered model named '{model}': train one first ('make train')")
    scored = scores(client, versions)
    if version is None:
        version = best_version(scored)
    elif version not in scored:
        known = ", ".join(sorted(scored, key=int))
        raise LookupError(f"'{model}' has no version {version} (it has {known})")
    before = current_version(client, model, alias)
    score = f" ({METRIC} {scored[version]:.4f})" if scored[version] is not None else ""
    if before == version:
        return f"@{alias} already on {model} version {version}{score}"
    client.set_registered_model_alias(model, alias, version)
    was = f"version {before}" if before else "unset"
    return f"@{alias}: {model} version {version}{score}, was {was}"


def main(argv=None):
    args = parse_args(argv)
    try:
        check_tracking_server(mlflow.get_tracking_uri())
        print(promote(MlflowClient(), args.model, args.alias, args.version))
    except (ConnectionError, LookupError) as error:
        print(f"promote.py: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except (MlflowException, requests.RequestException) as error:
        print(f"promote.py: error: the tracking server failed: {str(error).splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
