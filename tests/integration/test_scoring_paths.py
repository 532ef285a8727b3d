"""Each way the stack's scorer can answer, on models of each kind, against MLflow's own
`invocations()` (what `mlflow models serve` runs per request), in process: the same status and
predictions equal to 1e-9 for every request of the differential corpus."""

import json

import mlflow
import numpy as np
import pytest
import scoring_app
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.pyfunc import scoring_server
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import ElasticNet, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeRegressor
from wine_data import features_and_target, load_wine_data

from tests.integration.test_scoring_differential import CORPUS

X, Y = features_and_target(load_wine_data())


def integer_column(frame):
    return frame.assign(**{"free sulfur dioxide": frame["free sulfur dioxide"].round().astype("int64")})


MODELS = {
    # name: (estimator, training inputs, pyfunc predict_fn, the scorer's expected mode)
    "elasticnet": (ElasticNet(alpha=0.5, l1_ratio=0.5), X, "predict", "linear arithmetic"),
    "tree": (DecisionTreeRegressor(max_depth=4, random_state=0), X, "predict", "one matrix"),
    "pipeline": (make_pipeline(StandardScaler(), ElasticNet(alpha=0.1)), X, "predict", "DataFrame"),
    "by column name": (make_pipeline(ColumnTransformer([("scale", StandardScaler(), ["alcohol", "pH"])],
                                                       remainder="passthrough"), ElasticNet(alpha=0.1)),
                       X, "predict", "DataFrame"),
    "classifier, probabilities": (LogisticRegression(max_iter=500), X, "predict_proba", "one matrix"),
    "an integer column": (ElasticNet(alpha=0.5), integer_column(X), "predict", "DataFrame"),
}


def mode_of(scorer):
    if scorer.fast is None:
        return "MLflow's path"
    if scorer.fast.predict is not scorer.fast.model_predict:
        return "linear arithmetic"
    return "one matrix" if scorer.fast.array_mode else "DataFrame"


@pytest.fixture(scope="module", params=list(MODELS))
def model(request, tmp_path_factory):
    estimator, inputs, predict_fn, mode = MODELS[request.param]
    target = (Y > Y.median()).astype(int) if predict_fn == "predict_proba" else Y
    estimator.fit(inputs, target)
    path = tmp_path_factory.mktemp("models") / request.param.replace(" ", "-").replace(",", "")
    mlflow.sklearn.save_model(estimator, path, signature=infer_signature(inputs, estimator.predict(inputs)),
                              pyfunc_predict_fn=predict_fn, skops_trusted_types=["sklearn.tree._tree.Tree"],
                              pip_requirements=["scikit-learn"])  # no inference subprocess
    loaded = mlflow.pyfunc.load_model(str(path))
    return loaded, scoring_app.Scorer(loaded), mode


def stock_answer(model, body, content_type):
    """(status, JSON) as `mlflow models serve` answers: its invocations(), its exception handling."""
    try:
        result = scoring_server.invocations(body, content_type, model, model.metadata.get_input_schema())
        return result.status, result.response
    except MlflowException as e:
        return e.get_http_status_code(), e.serialize_as_json()


def test_each_model_gets_its_path(model):
    _, scorer, mode = model
    assert mode_of(scorer) == mode


@pytest.mark.parametrize("name,content_type,body", CORPUS, ids=[c[0] for c in CORPUS])
def test_same_answer_as_mlflow_on_every_path(model, name, content_type, body):
    loaded, scorer, _ = model
    response = scorer.respond(body, content_type)
    status, stock = stock_answer(loaded, body, content_type)
    assert response.status_code // 100 == status // 100, (response.body[:300], stock[:300])
    if status == 200:
        ours, theirs = json.loads(response.body)["predictions"], json.loads(stock)["predictions"]
        assert np.shape(ours) == np.shape(theirs)
        assert np.allclose(np.asarray(ours, float), np.asarray(theirs, float), rtol=1e-9, atol=1e-9, equal_nan=True)
