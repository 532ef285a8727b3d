"""`make up MONITOR=1`: Prometheus (compose.monitor.yaml) on the stack's network, scraping the
tracking server and `make serve`'s model server, with recording rules; its samples survive
`make down` and `make up`; `make up` without MONITOR=1 stops it."""

import json
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import requests

TARGETS = {"tracking", "serve", "prometheus"}
COLUMNS = ["fixed acidity", "volatile acidity", "citric acid", "residual sugar", "chlorides", "free sulfur dioxide",
           "total sulfur dioxide", "density", "pH", "sulphates", "alcohol"]


def api(stack, path, **query):
    url = f"{stack.url('PROMETHEUS_PORT')}/api/v1/{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.load(answer)
    assert body["status"] == "success", body
    return body["data"]


def until(what, check, timeout=120):
    """check() until it returns something true (Prometheus scrapes and evaluates every 5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"{what}: not after {timeout} s"
            return value
        time.sleep(1)


@pytest.fixture(scope="module")
def monitored(stack, trained_run):
    up = stack.make("up", "MONITOR=1", timeout=1800)
    try:
        stack.make("serve", timeout=900)
        yield stack, up
    finally:
        stack.make("up", timeout=1800)  # without MONITOR=1: Prometheus goes, its volume stays


def number(stack, query):
    """The query's first value once it is a number (a ratio over a minute with no request is NaN)."""
    result = api(stack, "query", query=query)["result"]
    return result and result[0]["value"][1] != "NaN" and result


def targets_up(stack):
    active = api(stack, "targets")["activeTargets"]
    health = {t["labels"]["job"]: t["health"] for t in active}
    return health if set(health) == TARGETS and all(h == "up" for h in health.values()) else None


def test_up_prints_prometheus_url_and_it_runs_as_non_root_on_loopback(monitored):
    stack, up = monitored
    assert f"Prometheus   {stack.url('PROMETHEUS_PORT')}" in up.stdout
    container = stack.container_of("prometheus")
    user = subprocess.run(["docker", "exec", container, "id", "-u"], capture_output=True, text=True, check=True)
    assert user.stdout.strip() != "0"
    ports = subprocess.run(["docker", "port", container], capture_output=True, text=True, check=True).stdout
    assert ports.split() == ["9090/tcp", "->", f"127.0.0.1:{stack.ports['PROMETHEUS_PORT']}"], ports


def test_every_target_is_up_and_the_ui_lists_them(monitored):
    stack, _ = monitored
    until("every target up", lambda: targets_up(stack))
    # Debian's Prometheus serves the classic UI: / leads there, and its targets page lists the jobs.
    with urllib.request.urlopen(stack.url("PROMETHEUS_PORT") + "/", timeout=10) as page:
        assert page.url.endswith("/classic/graph")
    with urllib.request.urlopen(stack.url("PROMETHEUS_PORT") + "/classic/targets", timeout=10) as page:
        html = page.read().decode()
    assert all(f"{job} (1/1 up)" in html for job in TARGETS), html[:2000]


def test_the_recording_rules_have_values_after_traffic(monitored):
    stack, _ = monitored
    body = {"dataframe_split": {"columns": COLUMNS, "data": [[7.4, 0.7, 0.0, 1.9, 0.076, 11.0, 34.0, 0.9978, 3.51,
                                                              0.56, 9.4]]}}
    for _ in range(20):
        answer = requests.post(stack.url("SERVE_PORT") + "/invocations", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
    # And the tracking server's API (a scrape is not counted there): with no request in the last
    # minute a ratio is 0/0, NaN, as Prometheus has it.
    for _ in range(5):
        answer = requests.get(stack.url("TRACKING_PORT") + "/api/2.0/mlflow/experiments/search?max_results=1",
                              timeout=30)
        assert answer.status_code == 200, answer.text

    def rate():
        result = api(stack, "query", query='serve:requests:rate1m{route="/invocations",status="200"}')["result"]
        return result and float(result[0]["value"][1]) > 0 and result

    until("serve:requests:rate1m above 0", rate)
    p99 = until("serve:latency_seconds:p99_1m",
                lambda: api(stack, "query", query="serve:latency_seconds:p99_1m")["result"])
    assert 0 < float(p99[0]["value"][1]) < 60
    # No 5xx answer: the ratio is 0 (a series, not an empty result).
    errors = until("serve:error_ratio:rate1m", lambda: number(stack, "serve:error_ratio:rate1m"))
    assert float(errors[0]["value"][1]) == 0
    tracking_errors = until("tracking:error_ratio:rate1m after API requests",
                            lambda: number(stack, "tracking:error_ratio:rate1m"))
    assert float(tracking_errors[0]["value"][1]) == 0
    tracking = until("tracking:requests:rate1m",
                     lambda: api(stack, "query", query="sum(tracking:requests:rate1m)")["result"])
    assert float(tracking[0]["value"][1]) > 0


def test_samples_survive_down_and_up(monitored):
    stack, _ = monitored
    query = 'up{job="tracking"}[1h]'  # a range: every sample of the last hour, with its time
    first = until("samples", lambda: api(stack, "query", query=query)["result"])[0]["values"][0][0]
    stack.make("down", timeout=600)
    stack.make("up", "MONITOR=1", timeout=1800)
    # make down stopped the model server too: the tracking target is the one that comes back.
    until("tracking scraped after up", lambda: any(t["labels"]["job"] == "tracking" and t["health"] == "up"
                                                   for t in api(stack, "targets")["activeTargets"]))
    assert api(stack, "query", query=query)["result"][0]["values"][0][0] == first
    stack.make("serve", timeout=900)
