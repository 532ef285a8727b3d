"""Differential tests: every request of a corpus goes to stock MLflow scoring and to the stack's,
on the same model. Same status class, predictions equal to 1e-9; the deliberate differences are
the ones docs/serving.md lists, each asserted here."""

import json

import pandas as pd
import pytest
import requests
from wine_data import features_and_target, load_wine_data

JSON = "application/json"


def features(rows):
    inputs, _ = features_and_target(load_wine_data().head(rows))
    return inputs


def split(frame):
    return {"columns": list(frame.columns), "data": frame.values.tolist()}


def records(frame):
    return frame.to_dict(orient="records")


def corpus():
    """(name, content type, body bytes) of every request both servers must agree on."""
    rows = features(8)
    names = list(rows.columns)
    shuffled = rows[list(reversed(names))]
    big = pd.concat([load_wine_data()] * 7, ignore_index=True).head(10_000)
    big_rows, _ = features_and_target(big)
    as_ints = rows.round().astype(int)
    with_text = split(rows)
    with_text["data"][0][3] = "1.9"
    with_words = split(rows)
    with_words["data"][1][0] = "seven"
    with_null = split(rows)
    with_null["data"][2][5] = None
    null_column = split(rows)
    for row in null_column["data"]:
        row[5] = None
    with_bool = split(rows)
    with_bool["data"][0][0] = True
    huge = split(rows)
    huge["data"][0][0] = 1e308
    big_int = split(rows)
    big_int["data"][0][6] = 2**60
    nested = split(rows)
    nested["data"][0][2] = [1.0]
    extra_number = rows.assign(colour=1.0)
    extra_text = rows.assign(colour="red")
    ragged_records = records(rows)
    ragged_records[0]["colour"] = "red"
    cases = {
        "dataframe_split": {"dataframe_split": split(rows)},
        "dataframe_records": {"dataframe_records": records(rows)},
        "inputs as records": {"inputs": records(rows)},
        "instances as records": {"instances": records(rows)},
        "inputs as columns": {"inputs": rows.to_dict(orient="list")},
        "instances as columns": {"instances": rows.to_dict(orient="list")},
        "split, shuffled columns": {"dataframe_split": split(shuffled)},
        "records, shuffled keys": {"dataframe_records": records(shuffled)},
        "split with index": {"dataframe_split": {**split(rows), "index": list(range(8))}},
        "split without columns": {"dataframe_split": {"data": rows.values.tolist()}},
        "missing column": {"dataframe_split": split(rows.drop(columns=["pH"]))},
        "missing key in one record": {"dataframe_records": [{k: v for k, v in r.items() if k != "pH"}
                                                            if i == 3 else r for i, r in enumerate(records(rows))]},
        "extra numeric column": {"dataframe_split": split(extra_number)},
        "extra text column": {"dataframe_split": split(extra_text)},
        "extra key in one record": {"dataframe_records": ragged_records},
        "extra key in one inputs record": {"inputs": ragged_records},
        "numeric strings": {"dataframe_split": with_text},
        "words for numbers": {"dataframe_split": with_words},
        "integers for floats": {"dataframe_split": split(as_ints)},
        "integer records": {"dataframe_records": records(as_ints)},
        "a null": {"dataframe_split": with_null},
        "a null column": {"dataframe_split": null_column},
        "a boolean": {"dataframe_split": with_bool},
        "1e308": {"dataframe_split": huge},
        "2**60": {"dataframe_split": big_int},
        "a list for a number": {"dataframe_split": nested},
        "empty split": {"dataframe_split": {"columns": names, "data": []}},
        "empty records": {"dataframe_records": []},
        "empty inputs": {"inputs": []},
        "10,000 rows split": {"dataframe_split": split(big_rows)},
        "10,000 records": {"dataframe_records": records(big_rows)},
        "params": {"dataframe_split": split(rows), "params": {"alpha": 1}},
        "two forms": {"dataframe_split": split(rows), "dataframe_records": records(rows)},
        "unknown form": {"rows": rows.values.tolist()},
        "empty object": {},
        "split as list": {"dataframe_split": rows.values.tolist()},
        "records as object": {"dataframe_records": {"a": 1}},
        "columns of unequal length": {"inputs": {**rows.to_dict(orient="list"), "pH": [3.0]}},
    }
    requests_ = [(name, JSON, json.dumps(body).encode()) for name, body in cases.items()]
    nan_body = json.dumps({"dataframe_split": split(rows)}).replace("3.51", "NaN", 1).encode()
    requests_ += [
        ("NaN literal", JSON, nan_body),
        ("malformed JSON", JSON, b'{"dataframe_split": {'),
        ("not UTF-8", JSON, b'{"dataframe_split": "\xff"}'),
        ("a JSON list", JSON, b"[1, 2, 3]"),
        ("a JSON number", JSON, b"42"),
        ("empty body", JSON, b""),
        ("charset utf-8", f"{JSON}; charset=utf-8", json.dumps({"dataframe_split": split(rows)}).encode()),
        ("charset latin-1", f"{JSON}; charset=latin-1", json.dumps({"dataframe_split": split(rows)}).encode()),
        ("unknown parameter", f"{JSON}; version=2", json.dumps({"dataframe_split": split(rows)}).encode()),
        ("upper-case type", "Application/JSON", json.dumps({"dataframe_split": split(rows)}).encode()),
        ("CSV", "text/csv", rows.to_csv(index=False).encode()),
        ("CSV, shuffled", "text/csv", shuffled.to_csv(index=False).encode()),
        ("CSV, missing column", "text/csv", rows.drop(columns=["pH"]).to_csv(index=False).encode()),
        ("CSV, words", "text/csv", b"fixed acidity,pH\nseven,eight\n"),
        ("wrong content type", "text/plain", json.dumps({"dataframe_split": split(rows)}).encode()),
        ("XML", "application/xml", b"<rows/>"),
    ]
    return requests_


CORPUS = corpus()


def post(base, content_type, body):
    return requests.post(f"{base}/invocations", data=body, headers={"Content-Type": content_type}, timeout=120)


def assert_same_predictions(ours, stock):
    assert ours == pytest.approx(stock, rel=1e-9, abs=1e-9, nan_ok=True)


@pytest.mark.parametrize("name,content_type,body", CORPUS, ids=[c[0] for c in CORPUS])
def test_same_answer_as_stock(devstack_server, stock_server, name, content_type, body):
    ours = post(devstack_server, content_type, body)
    stock = post(stock_server, content_type, body)
    assert ours.status_code // 100 == stock.status_code // 100, (ours.text[:300], stock.text[:300])
    if stock.status_code == 200:
        assert_same_predictions(ours.json()["predictions"], stock.json()["predictions"])
    else:
        assert "Traceback" not in ours.text and "stack_trace" not in ours.text


def test_the_corpus_reaches_both_paths(devstack_server, stock_server):
    """A control: the corpus has requests both servers score and requests both refuse."""
    statuses = {name: post(devstack_server, ct, body).status_code for name, ct, body in CORPUS}
    assert statuses["dataframe_split"] == statuses["10,000 records"] == 200
    assert statuses["missing column"] == statuses["malformed JSON"] == 400
    assert statuses["wrong content type"] == 415


# Deliberate differences (docs/serving.md, "Scoring server"), each pinned down.

TUTORIAL_CURL_BODY = (b'{"columns":["alcohol", "chlorides", "citric acid", "density", "fixed acidity", '
                      b'"free sulfur dioxide", "pH", "residual sugar", "sulphates", "total sulfur dioxide", '
                      b'"volatile acidity"],"data":[[12.8, 0.029, 0.48, 0.98, 6.2, 29, 3.33, 1.2, 0.39, 75, 0.66]]}')


def test_mlflow_1_body_is_accepted_as_is(devstack_server, stock_server):
    legacy = post(devstack_server, "application/json; format=pandas-split", TUTORIAL_CURL_BODY)
    modern = post(stock_server, JSON, b'{"dataframe_split": ' + TUTORIAL_CURL_BODY + b"}")
    assert legacy.status_code == 200, legacy.text
    assert_same_predictions(legacy.json()["predictions"], modern.json()["predictions"])
    # stock refuses it
    assert post(stock_server, "application/json; format=pandas-split", TUTORIAL_CURL_BODY).status_code == 415


def test_mlflow_1_records_are_accepted(devstack_server, stock_server):
    rows = records(features(3))
    legacy = post(devstack_server, "application/json; format=pandas-records", json.dumps(rows).encode())
    modern = post(stock_server, JSON, json.dumps({"dataframe_records": rows}).encode())
    assert_same_predictions(legacy.json()["predictions"], modern.json()["predictions"])


def test_bad_mlflow_1_body_is_a_400_naming_the_fix(devstack_server):
    response = post(devstack_server, "application/json; format=pandas-split", b"[1, 2]")
    assert response.status_code == 400
    assert "dataframe_split" in response.json()["message"]


def test_errors_carry_no_stack_trace_where_stock_does(devstack_server, stock_server):
    body = next(body for name, _, body in CORPUS if name == "NaN literal")
    ours, stock = post(devstack_server, JSON, body), post(stock_server, JSON, body)
    assert ours.status_code == stock.status_code == 400
    assert ours.json()["message"] == stock.json()["message"]
    assert "Traceback" in stock.json()["stack_trace"]
    assert "stack_trace" not in ours.json()


def test_no_content_type_is_a_415_where_stock_fails_with_500(devstack_server, stock_server):
    body = json.dumps({"dataframe_split": split(features(1))}).encode()
    assert requests.post(f"{devstack_server}/invocations", data=body, timeout=30).status_code == 415
    assert requests.post(f"{stock_server}/invocations", data=body, timeout=30).status_code == 500
