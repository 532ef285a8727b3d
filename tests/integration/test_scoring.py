"""`mlflow models serve` on the registered model: every accepted input form, and bad requests."""

import json

import predict
import pytest
import requests
import train
from wine_data import features_and_target, load_wine_data

from tests.support.helpers import run_python, tool_env


@pytest.fixture(scope="module")
def rows():
    inputs, _ = features_and_target(load_wine_data().head(8))
    return inputs


@pytest.fixture(scope="module")
def expected(rows):
    model, _, _ = train.train_model(load_wine_data(), 0.5, 0.5)
    return list(model.predict(rows))


def post_json(url, body):
    return requests.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=60)


def predictions_of(response):
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


@pytest.mark.parametrize("form", ["dataframe_split", "dataframe_records", "inputs", "instances"])
def test_every_json_form_gives_the_local_predictions(scoring_url, rows, expected, form):
    if form == "dataframe_split":
        body = {form: json.loads(rows.to_json(orient="split", index=False))}
    else:
        body = {form: json.loads(rows.to_json(orient="records"))}
    assert predictions_of(post_json(scoring_url, body)) == pytest.approx(expected)


def test_csv_gives_the_local_predictions(scoring_url, rows, expected):
    response = requests.post(scoring_url, data=rows.to_csv(index=False),
                             headers={"Content-Type": "text/csv"}, timeout=60)
    assert predictions_of(response) == pytest.approx(expected)


def test_columns_in_any_order_still_score(scoring_url, rows, expected):
    shuffled = rows[list(reversed(rows.columns))]
    body = {"dataframe_split": json.loads(shuffled.to_json(orient="split", index=False))}
    assert predictions_of(post_json(scoring_url, body)) == pytest.approx(expected)


def test_integer_values_are_accepted(scoring_url, rows):
    body = {"dataframe_records": [{name: int(value) for name, value in rows.iloc[0].items()}]}
    assert len(predictions_of(post_json(scoring_url, body))) == 1


def test_malformed_json_is_a_clear_400(scoring_url):
    response = requests.post(scoring_url, data="{not json", headers={"Content-Type": "application/json"},
                             timeout=60)
    assert response.status_code == 400
    assert "Invalid input. Ensure that input is a valid JSON" in response.json()["message"]


def test_missing_column_is_a_clear_400_naming_it(scoring_url, rows):
    body = {"dataframe_split": json.loads(rows.drop(columns=["pH"]).to_json(orient="split", index=False))}
    response = post_json(scoring_url, body)
    assert 400 <= response.status_code < 500
    assert "missing inputs ['pH']" in response.json()["message"]


def test_unknown_input_form_is_a_4xx(scoring_url):
    response = post_json(scoring_url, {"rows": [[1, 2, 3]]})
    assert 400 <= response.status_code < 500
    assert response.json()["message"]


def test_predict_client_prints_the_predictions(scoring_url, expected):
    result = run_python("predict.py", "--rows", "8", env=tool_env(SCORING_URL=scoring_url))
    assert result.returncode == 0, result.stderr
    printed = [float(line.split(":")[1]) for line in result.stdout.splitlines() if line.strip().startswith("row ")]
    assert printed == pytest.approx(expected, abs=1e-4)
    assert predict.DEFAULT_URL not in result.stdout
