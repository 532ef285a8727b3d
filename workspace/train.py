"""Train the ElasticNet wine-quality model and log it to MLflow: the MLflow tutorial, for MLflow 3.

    python train.py 0.5 0.5                     # the tutorial's positional form
    python train.py --alpha 0.5 --l1-ratio 0.5  # the same run
    python train.py --experiment trials --registered-model ''   # log only, register nothing

The tracking server comes from MLFLOW_TRACKING_URI (http://tracking:5000 in the dev container).
"""

import argparse
import json
import math
import os
import sys
from importlib.metadata import version

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from sklearn.linear_model import ElasticNet
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split
from wine_data import DataError, features_and_target, load_wine_data

DEFAULT_ALPHA = 0.5
DEFAULT_L1_RATIO = 0.5
DEFAULT_NAME = "wine-quality"
# The tutorial seeds numpy with 40 before a default 75/25 split, and the model with 42.
SPLIT_SEED = 40
MODEL_SEED = 42
EXIT_USAGE = 2
EXIT_FAILURE = 1
# What loading the model needs, pinned to the versions installed here (the project's pins). Given
# explicitly, because inferring them starts a subprocess that reloads the model: half of a run's time.
MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy", "cloudpickle")
# A shared view of the experiment's runs table with the metrics and params as columns (the UI shows
# none by default): the UI opens it at #/experiments/<id>/runs?viewStateShareKey=metrics.
SHARED_VIEW_TAG = "mlflow.sharedViewState.metrics"
SHARED_VIEW = {"selectedColumns": ["metrics.`rmse`", "metrics.`mae`", "metrics.`r2`",
                                   "params.`alpha`", "params.`l1_ratio`"]}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line, not usage plus message."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parse_number(parser, name, raw, low, high=None):
    """Parse a finite float within [low, high], or exit with a one-line usage error."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    in_range = math.isfinite(value) and value >= low and (high is None or value <= high)
    if not in_range:
        bounds = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        parser.error(f"{name} must be a number {bounds}, got {raw!r}")
    return value


def parse_args(argv=None):
    parser = OneLineParser(prog="train.py", description="Train and log the wine-quality model.")
    parser.add_argument("alpha_pos", nargs="?", metavar="ALPHA", help="same as --alpha")
    parser.add_argument("l1_ratio_pos", nargs="?", metavar="L1_RATIO", help="same as --l1-ratio")
    parser.add_argument("--alpha", help=f"regularisation strength, >= 0 (default {DEFAULT_ALPHA})")
    parser.add_argument("--l1-ratio", help=f"L1 share of the penalty, 0 to 1 (default {DEFAULT_L1_RATIO})")
    parser.add_argument("--experiment", default=os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_NAME),
                        help="experiment name (default: $MLFLOW_EXPERIMENT_NAME or %(default)s)")
    parser.add_argument("--registered-model", default=DEFAULT_NAME,
                        help="registered model name; '' logs without registering (default %(default)s)")
    args = parser.parse_args(argv)
    for name, positional, option in (("alpha", args.alpha_pos, args.alpha),
                                     ("l1_ratio", args.l1_ratio_pos, args.l1_ratio)):
        if positional is not None and option is not None:
            parser.error(f"{name} given twice, as a positional argument and as an option")
    alpha = args.alpha if args.alpha is not None else args.alpha_pos
    l1_ratio = args.l1_ratio if args.l1_ratio is not None else args.l1_ratio_pos
    args.alpha = parse_number(parser, "alpha", alpha if alpha is not None else DEFAULT_ALPHA, 0)
    args.l1_ratio = parse_number(parser, "l1_ratio", l1_ratio if l1_ratio is not None else DEFAULT_L1_RATIO, 0, 1)
    return args


def train_model(data, alpha, l1_ratio):
    """Fit ElasticNet on the tutorial's split; return the model, training inputs and test metrics."""
    train, test = train_test_split(data, test_size=0.25, random_state=SPLIT_SEED)
    train_x, train_y = features_and_target(train)
    test_x, test_y = features_and_target(test)
    model = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, random_state=MODEL_SEED)
    model.fit(train_x, train_y)
    predicted = model.predict(test_x)
    metrics = {
        "rmse": math.sqrt(mean_squared_error(test_y, predicted)),
        "mae": mean_absolute_error(test_y, predicted),
        "r2": r2_score(test_y, predicted),
    }
    return model, train_x, metrics


def check_tracking_server(uri):
    """Fail fast with a clear message when an HTTP tracking server is not there to talk to.

    Without this, the MLflow client retries with back-off for minutes before showing a trace.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=10)
    except requests.RequestException as error:
        raise ConnectionError(f"cannot reach the MLflow tracking server at {uri} "
                              f"({type(error).__name__}); is the stack up? ('make up')") from None
    if response.status_code == 403:
        raise ConnectionError(f"the tracking server at {uri} refused this host name (403): "
                              "add it to the server's --allowed-hosts")
    if response.status_code != 200:
        raise ConnectionError(f"the tracking server at {uri} is not healthy "
                              f"(HTTP {response.status_code} from /health)")


def log_training(model, train_x, metrics, params, experiment, registered_model, run_id=None):
    """Log one run (a new one, or run_id) with its params, metrics and model; return (run id, model URI)."""
    # Under `mlflow run` the run (and its experiment) already exist and come in through the environment.
    if "MLFLOW_RUN_ID" not in os.environ and run_id is None:
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_id=run_id) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            # A named-column signature lets clients send the columns in any order.
            signature=infer_signature(train_x, model.predict(train_x)),
            input_example=train_x.head(5),
            pip_requirements=[f"{package}=={version(package)}" for package in MODEL_REQUIREMENTS],
            registered_model_name=registered_model or None,
        )
    experiment_tags = mlflow.get_experiment(run.info.experiment_id).tags
    if SHARED_VIEW_TAG not in experiment_tags:
        mlflow.MlflowClient().set_experiment_tag(run.info.experiment_id, SHARED_VIEW_TAG, json.dumps(SHARED_VIEW))
    if registered_model:
        return run.info.run_id, f"models:/{registered_model}/{info.registered_model_version}"
    return run.info.run_id, info.model_uri


def fail(message):
    print(f"train.py: error: {message}", file=sys.stderr)
    return EXIT_FAILURE


def main(argv=None):
    args = parse_args(argv)
    try:
        data = load_wine_data()
        check_tracking_server(mlflow.get_tracking_uri())
    except (DataError, ConnectionError) as error:
        return fail(str(error))
    model, train_x, metrics = train_model(data, args.alpha, args.l1_ratio)
    print(f"ElasticNet(alpha={args.alpha:g}, l1_ratio={args.l1_ratio:g}): "
          + ", ".join(f"{name}={value:.4f}" for name, value in metrics.items()))
    params = {"alpha": args.alpha, "l1_ratio": args.l1_ratio}
    try:
        run_id, model_uri = log_training(model, train_x, metrics, params,
                                         args.experiment, args.registered_model)
    except (MlflowException, requests.RequestException) as error:
        return fail(f"logging to {mlflow.get_tracking_uri()} failed: {error}")
    print(f"run_id: {run_id}")
    print(f"model_uri: {model_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
