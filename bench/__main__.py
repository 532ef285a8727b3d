"""make bench: what users wait for and what the stack costs, measured on a throwaway copy of the
stack (own folder, project, ports and ./mlruns), each figure printed beside its target. Writes
bench/results/<time>.json. Figures only: nothing here passes or fails on a time.

    make bench                        # everything, a cold build of all images included (~15 min)
    make bench BENCH_ARGS=--no-cold-build
    make bench BENCH_ARGS=--serving-only  # the scoring servers side by side (~5 min)
    make bench BENCH_ARGS=--mlops-only    # the default sweep with PARALLEL 1 and 2; the packaged image
    make bench BENCH_ARGS=--host-layer-only  # make up/train/help against the bash host layer it replaced
    make bench BENCH_ARGS=--train-only       # make train against the import floor, and its parts
    make bench BENCH_ARGS=--batch-only       # make batch against stock mlflow models predict and Spark
    make bench BENCH_ARGS=--monitor-only     # the scoring server with its metrics on against off (~3 min)
"""

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import docker
import requests
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from wine_data import features_and_target, load_wine_data  # workspace/, on PYTHONPATH (make bench)

from bench import batch, host_layer, monitor
from devstack.images import base_image
from tests.support.helpers import ROOT, free_port, wait_for_http, wrk
from tests.support.stack import Stack, docker_problem

REQUESTS_PER_SIZE = 200
CORES = len(os.sched_getaffinity(0))
# The scoring servers side by side, as `make serve` runs them: (label, SERVE_SERVER, SERVE_WORKERS).
SCORING_SERVERS = [("stock, 1 worker", "mlflow", 1), (f"stock, {CORES} workers", "mlflow", CORES),
                   (f"devstack, {CORES} workers", "devstack", CORES)]
LOAD_SECONDS = 10
SEARCH_RUNS = 10_000
# What the stack-speed issue asks for; printed beside each figure.
TARGETS = {
    "make train / import floor": ("<=", 1.8),
    "make up, to healthy (s)": ("<=", 12),
    "cold build of all images from the base (s)": ("<=", 240),
    "serve image (MB)": ("<=", 600),
    "tracking + serve on disk / tracking alone": ("<=", 1.0),
    "idle memory, tracking + dev + serve (MiB)": ("<=", 1024),
    f"search_runs over {SEARCH_RUNS} runs, top 10 by rmse (s)": ("<=", 1.0),
    f"mlflow.search_runs of all {SEARCH_RUNS} runs (s)": ("<=", 1.0),
}


def timed(action):
    start = time.perf_counter()
    action()
    return round(time.perf_counter() - start, 2)


def median_of(count, action):
    return round(statistics.median(timed(action) for _ in range(count)), 2)


def scoring_latency(url, rows, count):
    """Milliseconds per request for `count` sequential requests of these rows."""
    body = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
    session = requests.Session()
    durations = []
    for _ in range(count):
        start = time.perf_counter()
        response = session.post(url, json=body, timeout=60)
        durations.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    durations.sort()
    return {"rows_per_request": len(rows), "requests": count,
            "p50_ms": round(statistics.median(durations), 1),
            "p95_ms": round(durations[int(0.95 * count) - 1], 1),
            "rows_per_s": round(len(rows) * count / (sum(durations) / 1000))}


def container_cpu_ns(container):
    """CPU time the container has used so far (cgroup v1 or v2), in ns."""
    return int(subprocess.run(
        ["docker", "exec", container, "sh", "-c",
         "if [ -r /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then cat /sys/fs/cgroup/cpuacct/cpuacct.usage; "
         "else echo $(( $(sed -n 's/^usage_usec //p' /sys/fs/cgroup/cpu.stat) * 1000 )); fi"],
        capture_output=True, text=True, check=True).stdout)


def container_rss_mib(container):
    """Resident memory of every process in the container, in MiB."""
    out = subprocess.run(["docker", "exec", container, "sh", "-c", "cat /proc/[0-9]*/status"],
                         capture_output=True, text=True).stdout
    return round(sum(int(line.split()[1]) for line in out.splitlines() if line.startswith("VmRSS:")) / 1024, 1)


def scoring_side_by_side(stack, inputs):
    """req/s, p50, p99, CPU per request and RSS of each scoring server, for 1 and 100 rows per
    request at 4 and 32 connections, through the published port (Docker's userland proxy) and, at 4
    connections, to the container's own address; wrk on this machine, LOAD_SECONDS each after a 2 s
    warm-up."""
    published = stack.url("SERVE_PORT") + "/invocations"
    results = []
    for label, server, workers in SCORING_SERVERS:
        stack.make("serve", f"SERVE_SERVER={server}", f"SERVE_WORKERS={workers}")
        container = stack.container_of("serve")
        networks = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
        address = subprocess.run(["docker", "inspect", "-f", networks,
                                  container], capture_output=True, text=True, check=True).stdout.split()[0]
        direct = f"http://{address}:8080/invocations"
        for rows in (1, 100):
            body = json.dumps({"dataframe_split": json.loads(inputs.head(rows).to_json(orient="split", index=False))})
            for path, url, connections in (("published port", published, 4), ("published port", published, 32),
                                           ("container address", direct, 4)):
                wrk(url, body, 2, connections, host="localhost")
                cpu_before = container_cpu_ns(container)
                load = wrk(url, body, LOAD_SECONDS, connections, host="localhost")
                cpu_ms = (container_cpu_ns(container) - cpu_before) / 1e6
                results.append({"server": label, "path": path, "rows": rows, "connections": connections,
                                "requests_per_s": load["requests_per_s"], "p50_ms": load["p50_ms"],
                                "p99_ms": load["p99_ms"], "errors": load["errors"],
                                "cpu_ms_per_request": round(cpu_ms / max(load["requests"], 1), 3),
                                "rss_mib": container_rss_mib(container)})
                print(results[-1], flush=True)
    stack.make("serve")  # back to the default server
    return results


def print_scoring_table(results):
    ours, stock = SCORING_SERVERS[-1][0], SCORING_SERVERS[-2][0]
    print(f"\n{'server':<20} {'path':<17} {'rows':>4} {'conns':>5} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'CPU ms/req':>10} {'RSS MiB':>7}  vs stock, same workers")
    by_key = {(r["server"], r["path"], r["rows"], r["connections"]): r for r in results}
    for r in results:
        ratio = ""
        if r["server"] == ours:
            baseline = by_key[(stock, r["path"], r["rows"], r["connections"])]
            ratio = (f"{r['requests_per_s'] / baseline['requests_per_s']:.1f}x req/s, "
                     f"{baseline['cpu_ms_per_request'] / r['cpu_ms_per_request']:.0f}x less CPU")
        print(f"{r['server']:<20} {r['path']:<17} {r['rows']:>4} {r['connections']:>5} {r['requests_per_s']:>7.0f} "
              f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['cpu_ms_per_request']:>10.3f} {r['rss_mib']:>7.0f}  {ratio}")


def mlops_loop(stack):
    """Wall time of the default 24-point sweep with 1 and 2 workers (each a fresh study: the
    experiment differs), and the packaged image's size and time from `docker run` to /ping."""
    figures = {}
    for parallel in (1, 2):
        # A grid of its own per run, so the second sweep does not resume the first.
        alphas = ",".join(str(a + parallel * 1e-6) for a in (0.0001, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0))
        figures[f"sweep of 24 points, PARALLEL={parallel} (s)"] = timed(
            lambda alphas=alphas, parallel=parallel: stack.make("sweep", f"ALPHAS={alphas}", "L1_RATIOS=0.1,0.5,0.9",
                                                                f"PARALLEL={parallel}"))
    figures["sweep speed-up, PARALLEL 2 vs 1"] = round(figures["sweep of 24 points, PARALLEL=1 (s)"]
                                                       / figures["sweep of 24 points, PARALLEL=2 (s)"], 2)
    image = "devstack-bench-model:1"
    figures["make package (s)"] = timed(lambda: stack.make("package", f"IMAGE={image}"))
    figures["packaged image (MB)"] = disk_mb(image)
    port = free_port()
    start = time.perf_counter()
    container = subprocess.run(["docker", "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8080", image],
                               capture_output=True, text=True, check=True).stdout.strip()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", 300)
        figures["packaged image, docker run to /ping (s)"] = round(time.perf_counter() - start, 2)
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        subprocess.run(["docker", "rmi", image], capture_output=True)
    print(figures, flush=True)
    return figures


def containers_by_service(stack):
    """{service: (container id, image)} for the stack's running containers."""
    found = {}
    for container in stack.container_ids():
        service, image = subprocess.run(
            ["docker", "inspect", "-f", '{{index .Config.Labels "com.docker.compose.service"}} {{.Config.Image}}',
             container], capture_output=True, text=True, check=True).stdout.split()
        found[service] = (container, image)
    return found


def memory_mib(container):
    """Memory in use by a container, in MiB, from docker stats."""
    usage = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", container],
                           capture_output=True, text=True, check=True).stdout.split("/")[0].strip()
    amount, unit = float(usage[:-3]), usage[-3:]
    return round(amount * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit], 1)


def disk_mb(*images):
    """What these images take on disk together, in MB (10^6, as `docker images` says): the layers
    they share are counted once."""
    layers = {}
    api = docker.from_env().api
    for image in images:
        for entry in api.history(image):
            layers[entry["Id"] if entry["Id"] != "<missing>" else (image, entry["Created"])] = entry["Size"]
    return round(sum(layers.values()) / 1e6)


def import_floor(container):
    """Seconds for `python -c "import mlflow, sklearn.linear_model"` in the dev container."""
    return median_of(3, lambda: subprocess.run(["docker", "exec", container, "python", "-c",
                                                "import mlflow, sklearn.linear_model"], check=True))


def train_phases(container, runs=3):
    """Median seconds of each part of a `make train` run (train.py's TRAIN_TIMINGS): logging the model,
    the evaluation with its plots, and drawing the plots alone."""
    samples = {}
    for _ in range(runs):
        out = subprocess.run(["docker", "exec", "-e", "TRAIN_TIMINGS=1", container, "python", "train.py"],
                             capture_output=True, text=True, check=True).stdout
        line = next(line for line in out.splitlines() if line.startswith("timings: "))
        for name, value in json.loads(line[len("timings: "):]).items():
            samples.setdefault(name, []).append(value)
    return {name: round(statistics.median(values), 2) for name, values in samples.items()}


def search_runs_seconds(tracking_url):
    """Creates SEARCH_RUNS runs (params and metrics logged in one batch each, many at a time), then
    times the notebook's mlflow.search_runs over all of them, and a top-10 by rmse."""
    client = MlflowClient(tracking_url)
    experiment = client.create_experiment(f"bench-search-{int(time.time())}")

    def create(number):
        run = client.create_run(experiment)
        client.log_batch(run.info.run_id, metrics=[Metric("rmse", 0.5 + number / SEARCH_RUNS, 0, 0)],
                         params=[Param("alpha", str(number))])
        client.set_terminated(run.info.run_id)

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not a "View run" line per run
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(SEARCH_RUNS)))
    import mlflow
    mlflow.set_tracking_uri(tracking_url)
    every = median_of(3, lambda: mlflow.search_runs(experiment_ids=[experiment]))
    top = median_of(3, lambda: client.search_runs([experiment], "metrics.rmse < 1", order_by=["metrics.rmse"],
                                                  max_results=10))
    return every, top


def cold_build_seconds(stack, base):
    """A build of every image with no cache, from the base, under throwaway tags."""
    tag = f"devstack-bench-cold:{int(time.time())}"
    start = time.perf_counter()
    subprocess.run(["docker", "build", "-q", "--no-cache", "-f", "images/Dockerfile", "--target", "dev",
                    "--build-arg", f"BASE_IMAGE={base}", "-t", tag, "."], cwd=stack.root, check=True,
                   capture_output=True, env=dict(os.environ, DOCKER_BUILDKIT="0"))
    seconds = round(time.perf_counter() - start, 1)
    subprocess.run(["docker", "rmi", tag], capture_output=True)
    return seconds


def print_table(figures):
    print(f"\n{'figure':<48} {'value':>10}   target")
    for name, value in figures["vs_targets"].items():
        sign, target = TARGETS[name]
        met = value <= target
        print(f"{name:<48} {value:>10}   {sign} {target:<6} {'met' if met else 'MISSED'}")
    print()
    for name, value in figures["seconds"].items():
        print(f"{name:<48} {value:>10.2f} s")
    for row in figures["scoring"]:
        print(f"scoring {row['rows_per_request']:>4} rows/request  p50 {row['p50_ms']:>7.1f} ms  "
              f"p95 {row['p95_ms']:>7.1f} ms  {row['rows_per_s']:>8} rows/s")
    print("memory (MiB):", figures["memory_mib"])
    print("images (MB):", figures["image_mb"])


def main():
    parser = argparse.ArgumentParser(prog="bench.py")
    parser.add_argument("--no-cold-build", action="store_true", help="skip the no-cache build (~8 min here)")
    parser.add_argument("--serving-only", action="store_true", help="only the scoring servers side by side")
    parser.add_argument("--mlops-only", action="store_true", help="only the sweep and the packaged image")
    parser.add_argument("--train-only", action="store_true",
                        help="only make train against the import floor, and what its parts cost (~3 min)")
    parser.add_argument("--host-layer-only", action="store_true",
                        help="only make up/train/help against the bash host layer it replaced (~10 min)")
    parser.add_argument("--batch-only", action="store_true",
                        help="only make batch against stock mlflow models predict and ENGINE=spark (~15 min)")
    parser.add_argument("--monitor-only", action="store_true",
                        help="only the scoring server with its /metrics on against off (~3 min)")
    args = parser.parse_args()
    problem = docker_problem()
    if problem:
        sys.exit(f"bench: {problem}")
    figures = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "seconds": {}, "vs_targets": {}}
    seconds, targets = figures["seconds"], figures["vs_targets"]
    if args.host_layer_only:
        with tempfile.TemporaryDirectory() as parent:
            figures["host_layer"] = host_layer.side_by_side(Path(parent))
        return finish(figures, full=False)
    with tempfile.TemporaryDirectory() as parent:
        stack = Stack.copy_of_project(parent)
        try:
            if args.train_only:
                stack.make("up")
                stack.make("train")
                seconds["make train (median of 3)"] = median_of(3, lambda: stack.make("train"))
                seconds["import floor in dev (median of 3)"] = import_floor(stack.container_of("dev"))
                figures["make train, its parts (median of 3, s)"] = train_phases(stack.container_of("dev"))
                targets["make train / import floor"] = round(seconds["make train (median of 3)"]
                                                             / seconds["import floor in dev (median of 3)"], 2)
                print(json.dumps({**seconds, **targets, **figures["make train, its parts (median of 3, s)"]}, indent=1))
                return finish(figures, full=False)
            if args.mlops_only:
                stack.make("up")
                stack.make("train")
                figures["mlops"] = mlops_loop(stack)
                return finish(figures, full=False)
            if args.batch_only:
                stack.make("up")
                stack.make("train")
                figures["batch"] = batch.side_by_side(stack, Path(parent) / "batch")
                return finish(figures, full=False)
            if args.monitor_only:
                stack.make("up")
                stack.make("train")
                figures["monitor"] = monitor.side_by_side(stack, features_and_target(load_wine_data())[0])
                return finish(figures, full=False)
            if args.serving_only:
                stack.make("up")
                stack.make("train")
                figures["scoring_side_by_side"] = scoring_side_by_side(stack, features_and_target(load_wine_data())[0])
                return finish(figures, full=False)
            seconds["build, images up to date"] = timed(lambda: stack.make("build"))
            seconds["make up, to healthy"] = timed(lambda: stack.make("up"))
            seconds["make train (median of 3)"] = median_of(3, lambda: stack.make("train"))
            seconds["import floor in dev (median of 3)"] = import_floor(stack.container_of("dev"))
            figures["make train, its parts (median of 3, s)"] = train_phases(stack.container_of("dev"))
            seconds["make serve, to healthy"] = timed(lambda: stack.make("serve"))
            seconds["make predict"] = timed(lambda: stack.make("predict"))
            inputs, _ = features_and_target(load_wine_data())
            url = stack.url("SERVE_PORT") + "/invocations"
            figures["scoring"] = [scoring_latency(url, inputs.head(size), REQUESTS_PER_SIZE) for size in (1, 100, 1000)]
            figures["scoring_side_by_side"] = scoring_side_by_side(stack, inputs)
            figures["monitor"] = monitor.side_by_side(stack, inputs)
            figures["mlops"] = mlops_loop(stack)
            figures["batch"] = batch.side_by_side(stack, Path(parent) / "batch")
            containers = containers_by_service(stack)
            figures["memory_mib"] = {service: memory_mib(c) for service, (c, _) in containers.items()}
            images = {service: image for service, (_, image) in containers.items()}
            figures["image_mb"] = {service: disk_mb(image) for service, image in images.items()}
            figures["image_mb"]["all three on disk"] = disk_mb(*images.values())
            every, top = search_runs_seconds(stack.url("TRACKING_PORT"))
            seconds[f"mlflow.search_runs, all {SEARCH_RUNS} runs"] = every
            seconds["search_runs, top 10 by rmse"] = top
            seconds["make down"] = timed(lambda: stack.make("down"))
            seconds["make up again, to healthy"] = timed(lambda: stack.make("up"))
            figures["host_layer"] = host_layer.side_by_side(Path(parent) / "host-layer")
            if not args.no_cold_build:
                base = base_image(stack.settings())
                seconds["cold build of all images from the base"] = cold_build_seconds(stack, base)
        finally:
            stack.remove()

    targets["make train / import floor"] = round(seconds["make train (median of 3)"]
                                                 / seconds["import floor in dev (median of 3)"], 2)
    targets["make up, to healthy (s)"] = seconds["make up again, to healthy"]
    if "cold build of all images from the base" in seconds:
        targets["cold build of all images from the base (s)"] = seconds["cold build of all images from the base"]
    targets["serve image (MB)"] = figures["image_mb"]["serve"]
    targets["tracking + serve on disk / tracking alone"] = round(
        disk_mb(images["tracking"], images["serve"]) / figures["image_mb"]["tracking"], 2)
    targets["idle memory, tracking + dev + serve (MiB)"] = round(sum(figures["memory_mib"].values()))
    top_ten = f"search_runs over {SEARCH_RUNS} runs, top 10 by rmse (s)"
    targets[top_ten] = seconds["search_runs, top 10 by rmse"]
    every = f"mlflow.search_runs of all {SEARCH_RUNS} runs (s)"
    targets[every] = seconds[f"mlflow.search_runs, all {SEARCH_RUNS} runs"]

    finish(figures)


def finish(figures, full=True):
    out = ROOT / "bench" / "results" / f"{figures['when'][:19].replace(':', '')}.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    if full:
        print_table(figures)
    if "scoring_side_by_side" in figures:
        print_scoring_table(figures["scoring_side_by_side"])
    if "host_layer" in figures:
        host_layer.print_table(figures["host_layer"])
    for name, value in figures.get("mlops", {}).items():
        print(f"{name:<48} {value:>10}")
    if "batch" in figures:
        batch.print_table(figures["batch"])
    if "monitor" in figures:
        monitor.print_table(figures["monitor"])
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
