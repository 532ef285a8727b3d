"""The stack's scoring server at its limits, as a real process: Host check, request size, timeouts,
and a model outside the fast path (a pyfunc model from code), which MLflow's path must score."""

import json
import socket
import textwrap
import time

import mlflow
import pandas as pd
import pytest
import requests

from tests.support.helpers import scoring_server

SLOW_MODEL = textwrap.dedent("""
    import time
    import mlflow

    class Doubler(mlflow.pyfunc.PythonModel):
        # Doubles x; sleeps `sleep` seconds first, so tests can make a request slow.
        def predict(self, context, model_input, params=None):
            time.sleep(float(model_input["sleep"].max()))
            return (model_input["x"] * 2).to_numpy()

    mlflow.models.set_model(Doubler())
""")


@pytest.fixture(scope="module")
def pyfunc_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("pyfunc")
    (root / "doubler.py").write_text(SLOW_MODEL)
    example = pd.DataFrame({"x": [1.5, 2.0], "sleep": [0.0, 0.0]})
    mlflow.pyfunc.save_model(root / "model", python_model=str(root / "doubler.py"), input_example=example)
    return root / "model"


@pytest.fixture(scope="module")
def server(pyfunc_model, tmp_path_factory):
    settings = dict(SERVE_TIMEOUT="1", SERVE_MAX_REQUEST_MB="0.01", SERVE_ALLOWED_HOSTS="models.example:*")
    with scoring_server("devstack", pyfunc_model, tmp_path_factory.mktemp("limits"), **settings) as (base, _):
        yield base


def score(base, rows, **headers):
    return requests.post(f"{base}/invocations", json={"dataframe_records": rows}, headers=headers, timeout=30)


def test_a_pyfunc_model_is_scored_by_mlflows_path(server):
    response = score(server, [{"x": 1.5, "sleep": 0}, {"x": -4, "sleep": 0}])
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [3.0, -8.0]}


def test_a_foreign_host_is_refused_but_probes_still_answer(server):
    response = score(server, [{"x": 1.0, "sleep": 0}], Host="evil.example:5001")
    assert response.status_code == 403
    assert "SERVE_ALLOWED_HOSTS" in response.json()["message"]
    for probe in ("/ping", "/health", "/version"):
        assert requests.get(f"{server}{probe}", headers={"Host": "10.1.2.3:8080"}, timeout=10).status_code == 200


def test_allowed_hosts_admit_more_names(server):
    assert score(server, [{"x": 1.0, "sleep": 0}], Host="models.example:8080").status_code == 200
    assert score(server, [{"x": 1.0, "sleep": 0}], Host="localhost:5001").status_code == 200


def test_a_request_over_the_size_limit_is_413(server):
    rows = [{"x": float(i), "sleep": 0} for i in range(1000)]  # about 25 kB, over 0.01 MB
    response = score(server, rows)
    assert response.status_code == 413
    assert "SERVE_MAX_REQUEST_MB" in response.json()["message"]
    # sent in chunks, with no Content-Length to check first
    chunks = (json.dumps({"dataframe_records": rows[i:i + 100]}).encode() for i in range(0, 1000, 100))
    response = requests.post(f"{server}/invocations", data=chunks, timeout=30,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_scoring_longer_than_the_timeout_is_504(server):
    started = time.monotonic()
    response = score(server, [{"x": 1.0, "sleep": 5}])
    assert response.status_code == 504
    assert "SERVE_TIMEOUT" in response.json()["message"]
    assert time.monotonic() - started < 4
    assert requests.get(f"{server}/ping", timeout=10).status_code == 200


def test_a_body_that_never_arrives_is_408(server):
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"dataframe_records\": ")
        answer = b""
        while b"SERVE_TIMEOUT" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 408"), answer
    assert "SERVE_TIMEOUT" in answer
