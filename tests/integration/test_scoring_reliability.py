"""The stack's scoring server under generated input, sustained load and a killed worker. Bounded in
time, loopback only."""

import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wine_data import features_and_target, load_wine_data

from tests.support.helpers import scoring_server, worker_pids, wrk

INPUTS, _ = features_and_target(load_wine_data().head(3))
NAMES = list(INPUTS.columns)
ONE_ROW = json.dumps({"dataframe_split": {"columns": NAMES, "data": INPUTS.head(1).values.tolist()}})

numbers = st.one_of(st.floats(-20, 300), st.integers(-50, 400), st.floats(allow_nan=False, allow_infinity=False))
values = st.one_of(numbers, st.floats(), st.integers(-2**70, 2**70), st.booleans(), st.none(),
                   st.text(max_size=4), st.lists(st.floats(-1, 1), max_size=2),
                   st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
columns = st.one_of(st.permutations(NAMES), st.permutations([*NAMES, "colour"]),
                    st.lists(st.sampled_from([*NAMES, "colour", ""]), max_size=13))


@st.composite
def payloads(draw):
    """Mostly well-formed requests in every form, half of them with one value of any kind."""
    names = draw(columns)
    rows = [[draw(numbers) for _ in names] for _ in range(draw(st.integers(0, 3)))]
    if rows and names and draw(st.booleans()):
        rows[draw(st.integers(0, len(rows) - 1))][draw(st.integers(0, len(names) - 1))] = draw(values)
    records = [dict(zip(names, row)) for row in rows]
    return draw(st.sampled_from([
        {"dataframe_split": {"columns": names, "data": rows}},
        {"dataframe_records": records},
        {"inputs": records},
        {"instances": {name: [row[i] for row in rows] for i, name in enumerate(names)}},
        {"dataframe_split": {"columns": names, "data": rows}, "params": {"k": 1}},
        {draw(st.text(max_size=8)): rows},
    ]))


requests_ = st.one_of(
    st.tuples(st.sampled_from(["application/json", "application/json; charset=utf-8"]),
              payloads().map(lambda p: json.dumps(p).encode())),
    st.tuples(st.sampled_from(["application/json", "text/csv", "text/plain", "application/json; format=x"]),
              st.binary(max_size=64)),
    st.tuples(st.just("text/csv"), st.lists(st.lists(numbers.map(str), min_size=11, max_size=11), max_size=3)
              .map(lambda rows: "\n".join([",".join(NAMES)] + [",".join(r) for r in rows]).encode())),
)


STATUSES = Counter()  # of the fuzzing's answers, checked after it


def post(base, content_type, body):
    return requests.post(f"{base}/invocations", data=body, headers={"Content-Type": content_type}, timeout=60)


@settings(max_examples=1000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(case=requests_)
def test_generated_requests_get_stocks_answer_and_never_a_5xx(devstack_server, stock_server, case):
    content_type, body = case
    ours = post(devstack_server, content_type, body)
    STATUSES[ours.status_code] += 1
    assert ours.status_code < 500, ours.text
    assert "Traceback" not in ours.text and "stack_trace" not in ours.text
    stock = post(stock_server, content_type, body)
    if stock.status_code < 500:  # where stock fails with a 5xx, a 4xx is the better answer
        assert ours.status_code // 100 == stock.status_code // 100, (ours.text[:300], stock.text[:300])
    if ours.status_code == stock.status_code == 200:
        assert ours.json()["predictions"] == pytest.approx(stock.json()["predictions"], rel=1e-9, abs=1e-9,
                                                           nan_ok=True)


def test_still_answers_after_the_fuzzing(devstack_server):
    if STATUSES:  # the fuzzing ran first (file order): it scored some requests and refused others
        assert STATUSES[200] >= 200 and sum(n for s, n in STATUSES.items() if s >= 400) >= 100, STATUSES
    assert requests.get(f"{devstack_server}/ping", timeout=10).status_code == 200
    assert post(devstack_server, "application/json", ONE_ROW).status_code == 200


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """A server of its own (two workers), for load and for killing a worker."""
    with scoring_server("devstack", model_dir, tmp_path_factory.mktemp("reliability")) as (base, process):
        yield base, process


def rss_kib(pids):
    return sum(int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
               for pid in pids)


def test_60_s_at_50_connections_without_an_error_or_growing_memory(server):
    base, supervisor = server
    wrk(f"{base}/invocations", ONE_ROW, 10, 50)  # warm-up
    after_warm_up = rss_kib(worker_pids(supervisor.pid))
    load = wrk(f"{base}/invocations", ONE_ROW, 60, 50)
    after_load = rss_kib(worker_pids(supervisor.pid))
    assert load["requests"] > 1000 and load["errors"] == 0, load["report"]
    assert after_load <= after_warm_up * 1.2, (after_warm_up, after_load)


def test_a_killed_worker_is_replaced_and_requests_keep_being_answered(server):
    base, supervisor = server
    before = worker_pids(supervisor.pid)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    answered, deadline = 0, time.monotonic() + 60
    while time.monotonic() < deadline:
        assert post(base, "application/json", ONE_ROW).status_code == 200
        answered += 1
        now = worker_pids(supervisor.pid)
        if len(now) == 2 and before[0] not in now:
            break
    else:
        pytest.fail(f"no new worker within 60 s: {worker_pids(supervisor.pid)}")
    assert answered > 0
    assert post(base, "application/json", ONE_ROW).status_code == 200
