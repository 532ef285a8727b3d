"""The scoring server's Prometheus metrics, at /metrics, summed over all of uvicorn's workers.

Each worker writes its samples to memory-mapped files in PROMETHEUS_MULTIPROC_DIR, a new empty
folder serve_model.py makes on every start (prometheus_client's multiprocess mode), and whichever
worker answers /metrics reads them all. prometheus_client decides at import whether it runs in that
mode, so the folder is set in the environment before uvicorn starts, never here.

    serve_requests_total{route,status}              requests answered, by route and status
    serve_request_duration_seconds{route}           their latency (a histogram)
    serve_requests_in_flight                        requests being answered now
    serve_scored_requests_total{path}               /invocations answered 200 by the fast or MLflow's path
    serve_scored_rows_total{path}                   the rows those requests scored
    serve_model_info{name,version,uri,server}       1, naming the model served
"""

import asyncio
import bisect
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"
# Routes are labels as they are; any other path is "other", so a scanner cannot grow the series.
ROUTES = ("/invocations", "/ping", "/health", "/version", "/metrics")
# A request only adds to this worker's tallies; they reach the shared files at most this long after
# (and at once for the worker answering /metrics). One write per changed series per flush, instead of
# seven per request: the difference is most of what counting costs.
FLUSH_SECONDS = 0.25
# Latency buckets: the fast path answers in well under a millisecond, SERVE_TIMEOUT is 60 s.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def model_labels(uri):
    """(name, version) of a models:/NAME/VERSION URI; else ("", "")."""
    name, _, version = uri[len("models:/"):].partition("/") if uri.startswith("models:/") else ("", "", "")
    return name, version if version.isdigit() else ""


class Metrics:
    """The metrics of one worker process; `app` wraps the ASGI app to count every request."""

    def __init__(self, model_uri, server="devstack"):
        self.multiprocess = bool(os.environ.get(DIRECTORY))
        if self.multiprocess:
            forget_dead_workers(Path(os.environ[DIRECTORY]))
        self.requests = Counter("serve_requests", "Requests answered, by route and status", ["route", "status"])
        self.latency = Histogram("serve_request_duration_seconds", "Time to answer a request, by route",
                                 ["route"], buckets=BUCKETS)
        self.in_flight = Gauge("serve_requests_in_flight", "Requests being answered now",
                               multiprocess_mode="livesum")
        self.scored = Counter("serve_scored_requests", "Scoring requests answered 200, by the path that "
                              "scored them (fast, or mlflow: MLflow's own)", ["path"])
        self.rows = Counter("serve_scored_rows", "Rows scored, by path", ["path"])
        info = Gauge("serve_model_info", "The model served (always 1)", ["name", "version", "uri", "server"],
                     multiprocess_mode="max")
        info.labels(*model_labels(model_uri), model_uri, server).set(1)
        # Label lookups cost more than the increments: each child is looked up once. The usual
        # answers exist from the start, at 0: Prometheus sees a series' first value as its start,
        # not as an increase, so a count that appears only with its first requests would hide them.
        self._answered = {(route, status): self.requests.labels(route, str(status))
                          for route in ROUTES for status in (200,)}
        for status in (400, 403, 404, 413, 500, 504):
            self._answered[("/invocations", status)] = self.requests.labels("/invocations", str(status))
        self._timers = {route: self.latency.labels(route) for route in (*ROUTES, "other")}
        self._scored = {path: (self.scored.labels(path), self.rows.labels(path)) for path in ("fast", "mlflow")}
        # Tallies since the last flush: amounts by counter value (a series, or a histogram's bucket or
        # sum), and the requests in flight. Scoring threads add to them too: under the lock.
        self._lock = threading.Lock()
        self._pending = defaultdict(float)
        self._in_flight = 0
        self._flush_due = False

    def scored_rows(self, path, rows):
        requests, scored = self._scored[path]
        with self._lock:
            self._pending[requests._value] += 1
            self._pending[scored._value] += rows

    def flush(self):
        """Writes the tallies into the shared files (the event loop's thread)."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(float)
            in_flight, self._flush_due = self._in_flight, False
        for value, amount in pending.items():
            value.inc(amount)
        self.in_flight.set(in_flight)

    def app(self, app):
        async def instrumented(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            route = scope["path"] if scope["path"] in ROUTES else "other"
            status = 500  # unless the app starts an answer: it raised

            async def send_status(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            started = time.perf_counter()
            with self._lock:
                self._in_flight += 1
            try:
                await app(scope, receive, send_status)
            finally:
                took = time.perf_counter() - started
                key = (route, status)
                child = self._answered.get(key)
                if child is None:
                    child = self._answered[key] = self.requests.labels(route, str(status))
                timer = self._timers[route]
                # The histogram's own observe(), tallied: its sum, and the one bucket the time falls
                # in (prometheus_client stores buckets uncumulated, and sums them when it reads).
                bucket = timer._buckets[bisect.bisect_left(BUCKETS, took)]
                with self._lock:
                    self._in_flight -= 1
                    pending = self._pending
                    pending[child._value] += 1
                    pending[timer._sum] += took
                    pending[bucket] += 1
                    due, self._flush_due = self._flush_due, True
                if not due:
                    asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
        return instrumented

    def exposition(self):
        """(body, content type) of /metrics: every worker's samples, summed (this worker's tallies
        written first; the others' are at most FLUSH_SECONDS old)."""
        self.flush()
        if not self.multiprocess:
            return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def forget_dead_workers(directory):
    """A worker that died (uvicorn restarts it) leaves its live gauges behind: drop those of
    processes that no longer exist, so in-flight counts only live workers."""
    for path in directory.glob("gauge_live*_*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and not alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(directory))


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
