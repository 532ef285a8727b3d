"""The stack's scoring server: MLflow's scoring protocol, answered without MLflow's generic path
where that is provably the same answer.

Stock `mlflow models serve` spends most of each request turning JSON into a pandas DataFrame,
enforcing the signature on it and validating it again in scikit-learn. For the models this stack
trains (scikit-learn, a signature of named numeric columns) the fast path here reads the JSON with
orjson, checks every value against the signature itself and hands the model one NumPy array.
Anything it is not sure about (another flavor, tensor signatures, params, a string or null where a
number belongs, an error) goes to MLflow's own `invocations()` in the same process, so the answer
is stock's, never a guess. Run by uvicorn (`serve_model.py` starts it): `create_app` is the factory.
"""

import asyncio
import fnmatch
import gc
import logging
import os
import warnings

import mlflow
import numpy as np
import orjson
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server
from mlflow.types.schema import ColSpec, DataType
from mlflow.version import VERSION
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

logger = logging.getLogger("scoring")

JSON = "application/json"
FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
# Integers beyond 2**53 are not exact as doubles; such requests take MLflow's path.
EXACT_INT = 2**53
NUMERIC_TYPES = {DataType.double: np.float64, DataType.float: np.float32,
                 DataType.long: np.int64, DataType.integer: np.int32}
INT_RANGES = {DataType.long: (-2**63, 2**63 - 1), DataType.integer: (-2**31, 2**31 - 1)}
# Bodies up to this size are scored on the event loop: a thread hop would cost more than scoring.
INLINE_BODY_BYTES = 16 * 1024
# Probes (Docker, Kubernetes) address containers by IP: these answer whatever the Host header.
# So does /metrics: Prometheus scrapes targets by address too.
PROBE_PATHS = {"/ping", "/health", "/version", "/metrics"}
DEFAULT_ALLOWED_HOSTS = ["serve", "serve:*", "localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*",
                         "[::1]", "[[]::1]:*"]


SERVERS = ("devstack", "mlflow")
SWITCHES = ("on", "off")
# The numeric SERVE_* settings: (kind, default); empty means the default (workers: one per core).
NUMBERS = {"SERVE_WORKERS": (int, None), "SERVE_MAX_REQUEST_MB": (float, 32), "SERVE_TIMEOUT": (float, 60)}


def number(environ, name):
    kind, default = NUMBERS[name]
    value = environ.get(name)
    return kind(value) if value else default


def metrics_on(environ):
    """SERVE_METRICS: on (also when empty) or off; settings_errors refuses anything else."""
    return (environ.get("SERVE_METRICS") or "on") == "on"


def settings_errors(environ):
    """One line per SERVE_* setting that cannot work, naming it and what it takes: `serve_model.py`
    checks them before starting either server."""
    errors = []
    if (environ.get("SERVE_SERVER") or "devstack") not in SERVERS:
        errors.append(f"SERVE_SERVER={environ['SERVE_SERVER']}: use one of {', '.join(SERVERS)}")
    if (environ.get("SERVE_METRICS") or "on") not in SWITCHES:
        errors.append(f"SERVE_METRICS={environ['SERVE_METRICS']}: use on or off, or leave it empty for on")
    for name, (kind, _) in NUMBERS.items():
        try:
            ok = not environ.get(name) or number(environ, name) > 0
        except ValueError:
            ok = False
        if not ok:
            errors.append(f"{name}={environ[name]}: use a positive {'whole ' if kind is int else ''}number, "
                          "or leave it empty for the default")
    return errors


class Settings:
    """The server's settings, from the environment, checked by settings_errors."""

    def __init__(self, environ=os.environ):
        self.model_path = environ["SCORING_MODEL_PATH"]
        self.max_request_bytes = int(number(environ, "SERVE_MAX_REQUEST_MB") * 1024 * 1024)
        self.timeout = number(environ, "SERVE_TIMEOUT")
        extra = [h.strip() for h in (environ.get("SERVE_ALLOWED_HOSTS") or "").split(",") if h.strip()]
        self.allowed_hosts = DEFAULT_ALLOWED_HOSTS + extra
        self.metrics = metrics_on(environ)
        # The models:/ URI serve_model.py resolved (its name and version label the metrics).
        self.model_uri = environ.get("SCORING_MODEL_URI") or self.model_path


class NotFast(Exception):
    """The request is outside the fast path: MLflow's own path answers it."""


class FastPath:
    """Scores requests whose values all match the model's column signature, straight on the model.

    Built only for scikit-learn models whose signature is required, named, numeric columns and no
    params. `array` mode (every column a double, a plain estimator whose feature names, if any, are
    the signature's in order) passes one float64 matrix; otherwise a DataFrame with the dtypes
    MLflow's enforcement would give.
    """

    @classmethod
    def for_model(cls, model):
        metadata = model.metadata
        pyfunc_conf = metadata.flavors.get("python_function", {})
        schema = metadata.get_input_schema()
        if (pyfunc_conf.get("loader_module") != "mlflow.sklearn" or schema is None
                or metadata.get_params_schema() is not None or schema.is_tensor_spec()
                or not schema.has_input_names()):
            return None
        specs = schema.inputs
        if not all(isinstance(s, ColSpec) and s.type in NUMERIC_TYPES and s.required for s in specs):
            return None
        estimator = model.get_raw_model()
        predict = getattr(estimator, pyfunc_conf.get("predict_fn", "predict"), None)
        if predict is None:
            return None
        return cls(estimator, predict, specs)

    def __init__(self, estimator, predict, specs):
        self.predict = self.model_predict = predict
        self.names = [s.name for s in specs]
        self.types = [s.type for s in specs]
        fitted_names = getattr(estimator, "feature_names_in_", None)
        self.array_mode = (all(t == DataType.double for t in self.types) and _is_plain(estimator)
                           and (fitted_names is None or list(fitted_names) == self.names))
        if self.array_mode:
            # The matrix is in the signature's order, which is the fitted order (checked above).
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            self.predict = linear_arithmetic(estimator, predict, len(self.names)) or predict

    def rows(self, payload):
        """The request's rows, as lists of values in signature order; NotFast if unsure."""
        if type(payload) is not dict or len(payload) != 1:
            raise NotFast
        form, data = next(iter(payload.items()))
        names = self.names
        try:
            if form == "dataframe_split":
                if type(data) is not dict or not data.keys() <= {"columns", "data"}:
                    raise NotFast
                columns, rows = data.get("columns"), data["data"]
                if type(columns) is not list or len(set(columns)) != len(columns):
                    raise NotFast
                width = len(columns)
                if any(type(row) is not list or len(row) != width for row in rows):
                    raise NotFast
                positions = [columns.index(name) for name in names]
                return [[row[p] for p in positions] for row in rows]
            if form == "dataframe_records" or (form in ("inputs", "instances") and type(data) is list):
                if any(type(record) is not dict for record in data):
                    raise NotFast
                # MLflow turns `inputs`/`instances` records into columns: ragged ones fail there.
                if form != "dataframe_records" and len({frozenset(r) for r in data}) > 1:
                    raise NotFast
                return [[record[name] for name in names] for record in data]
            if form in ("inputs", "instances") and type(data) is dict:
                if any(type(c) is not list for c in data.values()) or len({len(c) for c in data.values()}) != 1:
                    raise NotFast
                return [list(row) for row in zip(*(data[name] for name in names))]
        except (KeyError, ValueError, TypeError, AttributeError):
            raise NotFast from None
        raise NotFast

    def features(self, rows):
        """Checks every value as MLflow's conversion would accept it unchanged, then converts."""
        if not rows:
            raise NotFast
        for t, column in zip(self.types, zip(*rows)):
            if t in INT_RANGES:
                low, high = INT_RANGES[t]
                if not all(type(v) is int and low <= v <= high for v in column):
                    raise NotFast
            elif not all(type(v) is float or (type(v) is int and -EXACT_INT <= v <= EXACT_INT)
                         for v in column):
                raise NotFast
        if self.array_mode:
            return np.array(rows, dtype=np.float64)
        import pandas as pd
        return pd.DataFrame({name: np.array([row[i] for row in rows], dtype=NUMERIC_TYPES[t])
                             for i, (name, t) in enumerate(zip(self.names, self.types))})

    def score(self, payload):
        """(JSON bytes of {"predictions": ...}, rows); NotFast if the answer must come from MLflow."""
        X = self.features(self.rows(payload))
        try:
            predictions = self.predict(X)
        except Exception:
            raise NotFast from None  # MLflow's path gives the stock error for it
        if (type(predictions) is not np.ndarray or predictions.dtype.kind not in "fiub"
                or (predictions.dtype.kind == "f" and not np.isfinite(predictions).all())):
            raise NotFast  # NaN, infinities, labels: serialized as MLflow does
        if predictions.dtype.kind == "f" and predictions.dtype != np.float64:
            predictions = predictions.astype(np.float64)  # stock widens float32 the same way
        return orjson.dumps({"predictions": np.ascontiguousarray(predictions)},
                            option=orjson.OPT_SERIALIZE_NUMPY), len(X)


def linear_arithmetic(estimator, predict, width):
    """scikit-learn's linear regressors predict `X @ coef_ + intercept_` once they have validated X,
    and for one row that validation costs 50 times the arithmetic. The fast path hands over a float64
    matrix of the fitted columns; non-finite answers go to MLflow's path, where scikit-learn's own
    checks reject non-finite input. Returns the arithmetic for such a model, if it gives the model's
    own predictions bit for bit on probe rows, else None."""
    from sklearn.base import is_regressor
    from sklearn.linear_model._base import LinearModel
    coef = getattr(estimator, "coef_", None)
    if (getattr(predict, "__name__", "") != "predict" or not isinstance(estimator, LinearModel)
            or not is_regressor(estimator) or type(coef) is not np.ndarray or coef.dtype != np.float64):
        return None
    weights, intercept = (coef if coef.ndim == 1 else coef.T), estimator.intercept_

    def arithmetic(X):
        return X @ weights + intercept

    probe = np.random.default_rng(0).normal(scale=100, size=(16, width))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same = (np.array_equal(arithmetic(probe), predict(probe))
                and np.array_equal(arithmetic(probe[:1]), predict(probe[:1])))
    return arithmetic if same else None


def _is_plain(estimator):
    """An estimator that only does arithmetic on its input columns: no nested estimators (pipelines,
    column transformers select columns by name), no user functions."""
    from sklearn.base import BaseEstimator
    from sklearn.preprocessing import FunctionTransformer
    if isinstance(estimator, FunctionTransformer):
        return False
    return not any(isinstance(v, (BaseEstimator, list, tuple, dict)) and v
                   for v in estimator.get_params(deep=False).values())


def legacy_payload(body, format_name):  # raises ValueError
    """MLflow 1.x bodies (`format=pandas-split` / `pandas-records` in the content type, data at the
    top level), as the tutorial's curl sends them, in today's protocol."""
    forms = {"pandas-split": ("dataframe_split", dict), "pandas-records": ("dataframe_records", list)}
    if format_name not in forms:
        raise ValueError(f"format={format_name} is unknown; MLflow 1.x had pandas-split and pandas-records")
    form, kind = forms[format_name]
    data = orjson.loads(body)
    if not isinstance(data, kind):
        raise ValueError(f"format={format_name} needs a JSON {'object' if kind is dict else 'list'}")
    return {form: data}


def error(status, code, message):
    return Response(orjson.dumps({"error_code": code, "message": message}), status, media_type=JSON)


class RequestTooLarge(Exception):
    pass


async def read_body(request, limit):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class Scorer:
    """Answers /invocations bodies for one model: the fast path where it applies, else MLflow's."""

    def __init__(self, model, scored=None):
        self.model = model
        self.input_schema = model.metadata.get_input_schema()
        self.fast = FastPath.for_model(model)
        # scored(path, rows) is told of every request answered 200: the metrics' fast/mlflow split.
        self.scored = scored or (lambda path, rows: None)

    def fast_response(self, body, content_type):
        """The answer of the fast path, or None where MLflow's path must answer."""
        if self.fast is None:
            return None
        legacy_format, content_type = read_content_type(content_type)
        if content_type != JSON:
            return None
        try:
            payload = legacy_payload(body, legacy_format) if legacy_format else orjson.loads(body)
            answer, rows = self.fast.score(payload)
        except (NotFast, ValueError):  # orjson.JSONDecodeError is a ValueError
            return None
        self.scored("fast", rows)
        return Response(answer, media_type=JSON)

    def stock_response(self, body, content_type):
        """MLflow's own scoring path, as `mlflow models serve` runs it, with its errors' JSON."""
        legacy_format, content_type = read_content_type(content_type)
        if legacy_format:
            try:
                body = legacy_payload(body, legacy_format)  # MLflow takes the parsed request too
            except ValueError as e:
                return error(400, "BAD_REQUEST", f"Invalid MLflow 1.x request ({e}). Send "
                             "{\"dataframe_split\": ...} as 'application/json' instead.")
        try:
            result = scoring_server.invocations(body, content_type, self.model, self.input_schema)
            if result.status == 200:
                self.scored("mlflow", prediction_count(result.response))
            return Response(result.response, result.status, media_type=result.mimetype)
        except MlflowException as e:
            # MLflow puts the server's stack trace in some answers: it goes to the log instead.
            answer = orjson.loads(e.serialize_as_json())
            if trace := answer.pop("stack_trace", None):
                logger.warning("scoring failed: %s\n%s", answer.get("message"), trace)
            return Response(orjson.dumps(answer), e.get_http_status_code(), media_type=JSON)
        except Exception:
            # MLflow's parsing failed on something it did not expect: the request's data.
            logger.exception("MLflow could not read a request")
            return error(400, "BAD_REQUEST", "This request does not follow MLflow's scoring protocol "
                         "(https://mlflow.org/docs/latest/deployment/deploy-model-locally/).")

    def respond(self, body, content_type):
        return self.fast_response(body, content_type) or self.stock_response(body, content_type)


def prediction_count(answer):
    """The rows MLflow's answer holds: {"predictions": [...]} or {"predictions": {column: [...]}}."""
    try:
        predictions = orjson.loads(answer).get("predictions")
    except (ValueError, AttributeError):
        return 0
    if isinstance(predictions, dict):
        predictions = next(iter(predictions.values()), [])
    return len(predictions) if isinstance(predictions, list) else 0


def read_content_type(content_type):
    """(MLflow 1.x format or None, the content type MLflow's path should see). Read as MLflow reads
    it, so whatever stock refuses (other types, parameters, charsets) still reaches stock."""
    mime, *parameters = [part.strip() for part in content_type.split(";")]
    options = {key: value for key, _, value in (p.partition("=") for p in parameters)}
    legacy_format = options.pop("format", None) if mime == JSON else None
    if mime == JSON and set(options) <= {"charset"} and options.get("charset", "utf-8").lower() == "utf-8":
        return legacy_format, JSON
    return None, content_type


def create_app(settings=None):
    settings = settings or Settings()
    os.environ["_MLFLOW_IS_IN_SERVING_ENVIRONMENT"] = "true"  # as stock sets it
    metrics = None
    if settings.metrics:
        from serve_metrics import Metrics
        metrics = Metrics(settings.model_uri)
    scorer = Scorer(mlflow.pyfunc.load_model(settings.model_path), metrics and metrics.scored_rows)
    mode = ("fast path, one matrix" if scorer.fast and scorer.fast.array_mode
            else "fast path, DataFrame" if scorer.fast else "MLflow's path (pyfunc)")
    if scorer.fast and scorer.fast.predict is not scorer.fast.model_predict:
        mode += ", linear arithmetic"
    logger.warning("scoring: model at %s, %s", settings.model_path, mode)
    # MLflow, pandas and scikit-learn leave ~250,000 objects behind; a full collection walks them all
    # (270 ms here), stalling every request in flight. They live as long as the worker: freeze them.
    gc.freeze()

    async def ping(request):
        return Response("\n", media_type=JSON)

    async def version(request):
        return Response(VERSION, media_type=JSON)

    async def invocations(request: Request):
        content_type = request.headers.get("content-type")
        if not content_type:
            return error(415, "BAD_REQUEST", "Set a Content-Type: application/json or text/csv.")
        try:
            async with asyncio.timeout(settings.timeout):
                body = await read_body(request, settings.max_request_bytes)
        except RequestTooLarge:
            return error(413, "REQUEST_TOO_LARGE", f"The request body is over "
                         f"{settings.max_request_bytes / 1024 / 1024:g} MB (SERVE_MAX_REQUEST_MB).")
        except TimeoutError:
            return error(408, "REQUEST_TIMEOUT", f"The request body took over {settings.timeout:g} s "
                         "to arrive (SERVE_TIMEOUT).")
        # Small requests on the fast path are scored right here; everything else (big requests,
        # MLflow's path, which runs any pyfunc model) in a thread, under the timeout.
        if len(body) <= INLINE_BODY_BYTES:
            response = scorer.fast_response(body, content_type)
            if response is not None:
                return response
            work = scorer.stock_response
        else:
            work = scorer.respond
        try:
            async with asyncio.timeout(settings.timeout):
                return await asyncio.to_thread(work, body, content_type)
        except TimeoutError:
            return error(504, "DEADLINE_EXCEEDED", f"Scoring took over {settings.timeout:g} s "
                         "(SERVE_TIMEOUT).")

    async def exposition(request):
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    routes = [Route("/ping", ping), Route("/health", ping), Route("/version", version),
              Route("/invocations", invocations, methods=["POST"])]
    if metrics:
        routes.append(Route("/metrics", exposition))
    app = HostCheck(Starlette(routes=routes), settings.allowed_hosts)
    return metrics.app(app) if metrics else app


class HostCheck:
    """Answers 403 to a Host header that is not allowed, as `mlflow server --allowed-hosts` does:
    a web page in a browser on this machine cannot reach the model through DNS rebinding."""

    def __init__(self, app, allowed_hosts):
        self.app = app
        self.exact = {h for h in allowed_hosts if "*" not in h}
        self.patterns = [h for h in allowed_hosts if "*" in h]
        self.seen = {}

    def allowed(self, host):
        verdict = self.seen.get(host)
        if verdict is None:
            verdict = host in self.exact or any(fnmatch.fnmatchcase(host, p) for p in self.patterns)
            if len(self.seen) < 1024:
                self.seen[host] = verdict
        return verdict

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in PROBE_PATHS:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if not self.allowed(host):
                response = error(403, "PERMISSION_DENIED", f"Host '{host}' is not allowed: add it to "
                                 "SERVE_ALLOWED_HOSTS.")
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)
