"""The scoring server's /metrics (images/serve/serve_metrics.py) as a real server of 2 uvicorn
workers: counts summed over both, the latency histogram, the fast/MLflow split, the model's name,
a foreign Host, and SERVE_METRICS=off."""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from wine_data import features_and_target, load_wine_data

from tests.support.helpers import scoring_server

REQUESTS = 60
ROWS = 3


def samples(base, host=None):
    """{(sample name, sorted labels): value} of /metrics."""
    response = requests.get(f"{base}/metrics", headers={"Host": host} if host else {}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def settled(base, name, labels, expected, host=None):
    """/metrics once the series reads `expected`: each worker writes its tallies at most
    serve_metrics.FLUSH_SECONDS (0.25 s) after a request; 10 s is the bound here."""
    key = (name, tuple(sorted(labels.items())))
    deadline = time.monotonic() + 10
    while True:
        now = samples(base, host)
        if now.get(key, 0) == expected or time.monotonic() > deadline:
            assert now.get(key, 0) == expected, (key, now.get(key), expected)
            return now


def body(rows=ROWS):
    frame, _ = features_and_target(load_wine_data().head(rows))
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


def metrics_dir(process):
    return Path(process_environment(process.pid)["PROMETHEUS_MULTIPROC_DIR"])


def process_environment(pid):
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if b"=" in item)


@pytest.fixture(scope="module")
def server(model_dir, trained, tmp_path_factory):
    with scoring_server("devstack", model_dir, tmp_path_factory.mktemp("metrics"), workers=2,
                        model_uri=trained.model_uri) as (base, process):
        yield base, process


def test_counts_are_exact_and_summed_over_both_workers(server, trained):
    base, process = server
    before = samples(base)
    payload = body()

    def post(_):
        # A new connection each: the two workers take turns accepting them.
        return requests.post(f"{base}/invocations", json=payload, timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(post, range(REQUESTS))) == [200] * REQUESTS
    key = ("serve_requests_total", (("route", "/invocations"), ("status", "200")))
    after = settled(base, *key[:1], dict(key[1]), before.get(key, 0) + REQUESTS)

    def rise(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert rise("serve_requests_total", route="/invocations", status="200") == REQUESTS
    assert rise("serve_request_duration_seconds_count", route="/invocations") == REQUESTS
    assert rise("serve_request_duration_seconds_bucket", route="/invocations", le="+Inf") == REQUESTS
    assert 0 < rise("serve_request_duration_seconds_sum", route="/invocations") < REQUESTS * 60
    assert rise("serve_scored_requests_total", path="fast") == REQUESTS
    assert rise("serve_scored_rows_total", path="fast") == REQUESTS * ROWS
    # Only this scrape is in flight while it is answered (once the other worker wrote its last count:
    # a scrape it answered a moment ago counted itself).
    settled(base, "serve_requests_in_flight", {}, 1)
    name, version = trained.model_uri.split("/")[1:]
    assert after[("serve_model_info", (("name", name), ("server", "devstack"), ("uri", trained.model_uri),
                                        ("version", version)))] == 1
    # Both workers wrote samples: the sums above are over two processes.
    pids = {path.stem.rpartition("_")[2] for path in metrics_dir(process).glob("counter_*.db")}
    assert len(pids) == 2, pids


def test_requests_off_the_fast_path_are_counted_as_mlflows(server):
    base, _ = server
    before = samples(base)
    split = body(2)["dataframe_split"]
    # An index: valid for MLflow, outside what the fast path reads.
    response = requests.post(f"{base}/invocations", json={"dataframe_split": {**split, "index": [7, 8]}}, timeout=60)
    assert response.status_code == 200
    key = ("serve_scored_rows_total", (("path", "mlflow"),))
    after = settled(base, "serve_scored_rows_total", {"path": "mlflow"}, before.get(key, 0) + 2)
    assert after[key] - before.get(key, 0) == 2
    assert after[("serve_scored_requests_total", (("path", "fast"),))] == before[
        ("serve_scored_requests_total", (("path", "fast"),))]


def test_metrics_answer_a_foreign_host_and_count_what_it_was_refused(server):
    base, _ = server
    before = samples(base)
    refused = requests.post(f"{base}/invocations", json=body(), headers={"Host": "evil.example"}, timeout=60)
    assert refused.status_code == 403
    key = ("serve_requests_total", (("route", "/invocations"), ("status", "403")))
    after = settled(base, "serve_requests_total", {"route": "/invocations", "status": "403"},
                    before.get(key, 0) + 1, host="evil.example")
    assert after[key] - before.get(key, 0) == 1
    # A path that is no route is one "other" series, whatever the path.
    for path in ("/nope", "/nope/again"):
        assert requests.get(f"{base}{path}", timeout=30).status_code == 404
    settled(base, "serve_requests_total", {"route": "other", "status": "404"},
            before.get(("serve_requests_total", (("route", "other"), ("status", "404"))), 0) + 2)


def test_a_restarted_server_starts_from_zero_in_a_new_folder(model_dir, trained, tmp_path):
    folders = []
    for _ in range(2):
        with scoring_server("devstack", model_dir, tmp_path, workers=1, model_uri=trained.model_uri) as (base, process):
            folders.append(metrics_dir(process))
            # The series exist before the first request, at 0 (so Prometheus counts that request).
            fresh = samples(base)
            assert fresh[("serve_requests_total", (("route", "/invocations"), ("status", "200")))] == 0
            assert fresh[("serve_scored_rows_total", (("path", "fast"),))] == 0
            assert requests.post(f"{base}/invocations", json=body(), timeout=60).status_code == 200
            settled(base, "serve_requests_total", {"route": "/invocations", "status": "200"}, 1)
    assert folders[0] != folders[1]


def test_serve_metrics_off_has_no_endpoint(model_dir, tmp_path):
    with scoring_server("devstack", model_dir, tmp_path, workers=1, SERVE_METRICS="off") as (base, process):
        assert "PROMETHEUS_MULTIPROC_DIR" not in process_environment(process.pid)
        assert requests.post(f"{base}/invocations", json=body(), timeout=60).status_code == 200
        assert requests.get(f"{base}/metrics", timeout=30).status_code == 404
