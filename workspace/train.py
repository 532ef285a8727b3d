"""Train the ElasticNet wine-quality model and log it to MLflow: the MLflow tutorial, for MLflow 3.

    python train.py 0.5 0.5                     # the tutorial's positional form
    python train.py --alpha 0.5 --l1-ratio 0.5  # the same run
    python train.py --experiment trials --registered-model ''   # log only, register nothing

Each run logs its training and evaluation data as MLflow datasets (contexts `training` and
`evaluation`), is evaluated on the held-out split with MLflow's own evaluation API (regressor metrics
and three plots: predicted against actual, residuals against predicted, the coefficients), records
CPU and memory as system metrics, and registers its model only once all that worked.

The tracking server comes from MLFLOW_TRACKING_URI (http://tracking:5000 in the dev container);
MLFLOW_UI_URL, where set (the dev container has it), is the MLflow UI as the host's browser reaches it,
for the links this prints.
"""

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from importlib.metadata import version

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from sklearn.linear_model import ElasticNet
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split
from wine_data import DATA_FILE, TARGET, DataError, features_and_target, load_wine_data

# Downloads (the models this loads) draw a progress bar on stderr: noise around the one line that matters.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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
DATASET_NAME = "winequality-red"
# System metrics (CPU, memory) every second, each sample logged at once: a run lasts seconds.
SYSTEM_METRICS_SECONDS = 1
PLOTS = ("predicted_vs_actual", "residuals_vs_predicted", "coefficients")
MODE = "workflowType=machine_learning"


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


def split(data):
    """The tutorial's split: (training rows, held-out rows), the same for every run on the same data."""
    return train_test_split(data, test_size=0.25, random_state=SPLIT_SEED)


def train_model(data, alpha, l1_ratio):
    """Fit ElasticNet on the tutorial's split; return the model, training inputs and test metrics."""
    train, test = split(data)
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


class EvaluationError(Exception):
    """The logged model could not be evaluated: the run failed and registered nothing."""


def datasets(data):
    """The training and held-out rows as MLflow datasets: the shipped file as their source, a digest
    of their content (equal data, equal digest), the quality column as their target."""
    # The integer columns' schema hint is about serving missing values, which this data has none of.
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
    train, test = split(data)
    source = str(DATA_FILE)
    return (mlflow.data.from_pandas(train, source=source, name=DATASET_NAME, targets=TARGET),
            mlflow.data.from_pandas(test, source=source, name=DATASET_NAME, targets=TARGET))


def plots(model, timings):
    """MLflow's custom_artifacts function: the three plots a data scientist looks at for a regressor."""
    def draw(eval_df, _builtin_metrics, _artifacts_dir):
        started = time.perf_counter()
        # Figures without pyplot: no backend to choose (a notebook keeps its inline one), PNG by Agg.
        from matplotlib.figure import Figure
        actual, predicted = eval_df["target"], eval_df["prediction"]
        figures = {}
        fig = Figure(figsize=(5.5, 5), layout="tight")
        ax = fig.subplots()
        ax.scatter(actual, predicted, s=10, alpha=0.4)
        low, high = min(actual.min(), predicted.min()), max(actual.max(), predicted.max())
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="predicted = actual")
        ax.set(xlabel="actual quality", ylabel="predicted quality", title="Predicted against actual (held-out)")
        ax.legend(loc="upper left")
        figures["predicted_vs_actual"] = fig
        fig = Figure(figsize=(5.5, 5), layout="tight")
        ax = fig.subplots()
        ax.scatter(predicted, actual - predicted, s=10, alpha=0.4)
        ax.axhline(0, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel="predicted quality", ylabel="residual (actual - predicted)",
               title="Residuals against predicted (held-out)")
        figures["residuals_vs_predicted"] = fig
        names = list(model.feature_names_in_)
        order = sorted(range(len(names)), key=lambda i: abs(model.coef_[i]))
        fig = Figure(figsize=(6.5, 5), layout="tight")
        ax = fig.subplots()
        ax.barh([names[i] for i in order], [model.coef_[i] for i in order],
                color=["tab:red" if model.coef_[i] < 0 else "tab:blue" for i in order])
        ax.axvline(0, color="grey", linewidth=1)
        ax.set(xlabel="coefficient", title=f"ElasticNet coefficients (intercept {model.intercept_:.3f})")
        figures["coefficients"] = fig
        timings["plots (drawn; MLflow saves them)"] = time.perf_counter() - started
        return figures
    return draw


def evaluate(model_uri, model, evaluation, timings):
    """The logged model, as served (its pyfunc flavor, its signature), on the held-out dataset with
    MLflow's evaluation API: regressor metrics and the plots, logged to the active run."""
    try:
        return mlflow.models.evaluate(
            model_uri, evaluation, model_type="regressor", evaluators=["default"],
            custom_artifacts=[plots(model, timings)],
            # SHAP's explanations need a package the stack does not ship.
            evaluator_config={"default": {"log_model_explainability": False}},
        )
    except Exception as error:  # whatever MLflow or the model raises: the run must fail, in one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EvaluationError(f"evaluating {model_uri} failed: {first}") from None


def ui_link(path):
    """A link the host's browser opens (MLFLOW_UI_URL), or None where the UI's address is unknown."""
    base = os.environ.get("MLFLOW_UI_URL", "").rstrip("/")
    return f"{base}/#/{path}" if base else None


def ready_for_system_metrics():
    """Imports, before the run starts, what the run would import during it.

    MLflow's system-metrics thread creates an MlflowClient every sample, which tries to import pyspark
    through MLflow's import hooks, under their lock. If the main thread is then importing a module that
    registers such a hook (mlflow.models.evaluate does, and imports matplotlib while it holds the lock),
    the two threads deadlock: seen here as train.py hanging for ever, in three runs of four. Imported
    before the monitor starts, those modules register their hooks while no other thread imports."""
    import matplotlib.figure  # noqa: F401
    import mlflow.data.pandas_dataset  # noqa: F401
    import mlflow.models.evaluation.default_evaluator  # noqa: F401
    import mlflow.models.evaluation.evaluator_registry  # noqa: F401
    import mlflow.sklearn  # noqa: F401
    import mlflow.system_metrics.system_metrics_monitor  # noqa: F401


def log_training(model, train_x, metrics, params, experiment, registered_model, run_id=None, data=None,
                 timings=None):
    """Log one run (a new one, or run_id) with its params, metrics and model; with data (the data set
    the model was trained on), also its datasets, its evaluation, plots and system metrics, and the
    model is registered only once its evaluation succeeded. Returns (run id, model URI)."""
    # Under `mlflow run` the run (and its experiment) already exist and come in through the environment.
    if "MLFLOW_RUN_ID" not in os.environ and run_id is None:
        mlflow.set_experiment(experiment)
    timings = {} if timings is None else timings
    if data is not None:
        ready_for_system_metrics()
    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_SECONDS)
    mlflow.set_system_metrics_samples_before_logging(1)
    with mlflow.start_run(run_id=run_id, log_system_metrics=data is not None) as run:
        started = time.perf_counter()
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        if data is not None:
            training, evaluation = datasets(data)
            mlflow.log_input(training, context="training")
            mlflow.log_input(evaluation, context="evaluation")
        requirements = [f"{package}=={version(package)}" for package in MODEL_REQUIREMENTS]
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            # A named-column signature lets clients send the columns in any order.
            signature=infer_signature(train_x, model.predict(train_x)),
            input_example=train_x.head(5),
            # Given as an environment, so MLflow does not look for a pip that the images do not carry.
            conda_env={"name": "mlflow-env", "channels": ["conda-forge"],
                       "dependencies": [f"python={platform.python_version()}", "pip", {"pip": requirements}]},
            registered_model_name=None if data is not None else (registered_model or None),
        )
        timings["log model"] = time.perf_counter() - started
        if data is not None:
            started = time.perf_counter()
            evaluate(info.model_uri, model, evaluation, timings)
            timings["evaluation and plots"] = time.perf_counter() - started
    experiment_tags = mlflow.get_experiment(run.info.experiment_id).tags
    if SHARED_VIEW_TAG not in experiment_tags:
        mlflow.MlflowClient().set_experiment_tag(run.info.experiment_id, SHARED_VIEW_TAG, json.dumps(SHARED_VIEW))
    link = ui_link(f"experiments/{run.info.experiment_id}/runs/{run.info.run_id}?{MODE}")
    if link:
        print(f"View the run: {link}")
    if not registered_model:
        return run.info.run_id, info.model_uri
    if data is not None:
        version_number = mlflow.register_model(info.model_uri, registered_model).version
    else:
        version_number = info.registered_model_version
    return run.info.run_id, f"models:/{registered_model}/{version_number}"


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
    timings = {}
    try:
        run_id, model_uri = log_training(model, train_x, metrics, params, args.experiment, args.registered_model,
                                         data=data, timings=timings)
    except EvaluationError as error:
        return fail(f"{error}; the run is marked failed and no model version was registered")
    except (MlflowException, requests.RequestException) as error:
        return fail(f"logging to {mlflow.get_tracking_uri()} failed: {error}")
    print(f"run_id: {run_id}")
    print(f"model_uri: {model_uri}")
    if os.environ.get("TRAIN_TIMINGS"):  # make bench: what each part of a run costs
        print("timings: " + json.dumps({name: round(seconds, 3) for name, seconds in timings.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
