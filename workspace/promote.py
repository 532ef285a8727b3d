"""Point a registered model's alias at its best version (lowest rmse of the run that logged it), or at
the version you name, and say what moved. Aliases replace MLflow's deprecated stages.

    python promote.py                    # @champion -> the wine-quality version with the lowest rmse
    python promote.py --version 3        # @champion -> version 3
    python promote.py --alias challenger --model wine-quality
    python promote.py --version 3 --force    # past the gate

The gate: the candidate and the version the alias points at now are both loaded as they are served and
scored on the same held-out rows (the tutorial's split). The alias moves only if the candidate's rmse
is not worse than the current one's by more than the tolerance (PROMOTE_TOLERANCE, a fraction: 0.01
allows 1 % worse); with no current version, the candidate becomes it. Both figures and the decision
are printed and recorded as tags of the candidate version (devstack.gate.*); --force moves the alias
anyway, and says so.

The tracking server comes from MLFLOW_TRACKING_URI (http://tracking:5000 in the dev container).
"""

import math
import os
import sys
from dataclasses import dataclass

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sklearn.metrics import mean_squared_error
from train import DEFAULT_NAME, EXIT_FAILURE, OneLineParser, check_tracking_server, split, ui_link
from wine_data import features_and_target, load_wine_data

# Downloads (the models this loads) draw a progress bar on stderr: noise around the one line that matters.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
DEFAULT_ALIAS = "champion"
METRIC = "rmse"


def tolerance(error, raw):
    """PROMOTE_TOLERANCE as a fraction >= 0, or error(one line)."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        error(f"PROMOTE_TOLERANCE must be a number >= 0 (a fraction: 0.01 allows 1 % worse), got {raw!r}")
    return value


def parse_args(argv=None):
    parser = OneLineParser(prog="promote.py", description="Move a registered model's alias to a version.")
    parser.add_argument("--model", default=DEFAULT_NAME, help="registered model (default %(default)s)")
    parser.add_argument("--alias", default=DEFAULT_ALIAS, help="alias to move (default %(default)s)")
    parser.add_argument("--version", help=f"version to point it at (default: the lowest {METRIC})")
    parser.add_argument("--tolerance", default=os.environ.get("PROMOTE_TOLERANCE"),
                        help="how much worse than the current version the candidate may be, as a fraction "
                             "(default: $PROMOTE_TOLERANCE, which make sets from .env)")
    parser.add_argument("--force", action="store_true", help="move the alias even if the gate refuses")
    args = parser.parse_args(argv)
    if args.tolerance is None:
        parser.error("the gate's tolerance is not set: give --tolerance or PROMOTE_TOLERANCE (make promote "
                     "sets it from .env)")
    args.tolerance = tolerance(parser.error, args.tolerance)
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


class Refused(Exception):
    """The gate refused the promotion: the message is the one line to print, with both figures."""


@dataclass(frozen=True)
class Decision:
    move: bool
    reason: str  # what the figures say, for the printed line and the version's tags
    worse_by: float | None = None  # the candidate's rmse over the current one's, minus 1


def gate(candidate_rmse, current_rmse, tolerance):
    """Whether the alias may move to a candidate of candidate_rmse from a current version of
    current_rmse (None: no current version), when it may be worse by `tolerance` (a fraction)."""
    if current_rmse is None:
        return Decision(True, "no version had the alias")
    worse_by = candidate_rmse / current_rmse - 1
    if candidate_rmse < current_rmse:
        return Decision(True, f"better by {-worse_by:.1%}", worse_by)
    if candidate_rmse == current_rmse:
        return Decision(True, "as good", 0.0)
    if worse_by <= tolerance + 1e-12:  # 0.808 / 0.8 - 1 is 0.010000000000000009 in floats
        return Decision(True, f"worse by {worse_by:.1%}, within the tolerance of {tolerance:.1%}", worse_by)
    return Decision(False, f"worse by {worse_by:.1%}, beyond the tolerance of {tolerance:.1%}", worse_by)


def held_out_rmse(model, version, rows=None):
    """The version's rmse on the tutorial's held-out rows, as served (its pyfunc flavor)."""
    _, test = split(load_wine_data()) if rows is None else (None, rows)
    inputs, actual = features_and_target(test)
    predicted = mlflow.pyfunc.load_model(f"models:/{model}/{version}").predict(inputs)
    return math.sqrt(mean_squared_error(actual, predicted))


def record(client, model, version, **figures):
    for key, value in figures.items():
        client.set_model_version_tag(model, version, f"devstack.gate.{key}", str(value))


def promote(client, model, alias, version=None, tolerance=0.0, force=False):
    """Move @alias through the gate; return the line saying what moved. Raises LookupError for what
    does not exist, Refused when the gate keeps the alias where it is."""
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
    if before == version:
        score = f" ({METRIC} {scored[version]:.4f})" if scored[version] is not None else ""
        return f"@{alias} already on {model} version {version}{score}"
    rows = split(load_wine_data())[1]
    candidate = held_out_rmse(model, version, rows)
    current = held_out_rmse(model, before, rows) if before else None
    decision = gate(candidate, current, tolerance)
    was = f"version {before} ({METRIC} {current:.4f})" if before else "unset"
    outcome = "promoted" if decision.move else ("forced" if force else "refused")
    record(client, model, version, rmse=f"{candidate:.6f}", decision=outcome, reason=decision.reason,
           tolerance=tolerance, **({"current_version": before, "current_rmse": f"{current:.6f}"} if before else {}))
    if not decision.move and not force:
        raise Refused(f"version {version} ({METRIC} {candidate:.4f}) is {decision.reason}, against @{alias} "
                      f"version {before} ({METRIC} {current:.4f}) on the same held-out rows: @{alias} stays on "
                      f"version {before} (FORCE=yes moves it anyway)")
    client.set_registered_model_alias(model, alias, version)
    forced = ": moved anyway (FORCE=yes)" if not decision.move else ""
    line = f"@{alias}: {model} version {version} ({METRIC} {candidate:.4f}), was {was}: {decision.reason}{forced}"
    link = ui_link(f"models/{model}/versions/{version}")
    return f"{line}\nView the model version: {link}" if link else line


def main(argv=None):
    args = parse_args(argv)
    try:
        check_tracking_server(mlflow.get_tracking_uri())
        print(promote(MlflowClient(), args.model, args.alias, args.version, args.tolerance, args.force))
    except (ConnectionError, LookupError, Refused) as error:
        print(f"promote.py: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except (MlflowException, requests.RequestException) as error:
        print(f"promote.py: error: the tracking server failed: {str(error).splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
