"""make bench: what users wait for and what the stack costs, measured on a throwaway copy of the
stack (own project name, ports, ./mlruns). Prints a table and writes bench/results/<time>.json.
Figures only: nothing here passes or fails on a time."""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

for folder in ("tests", "workspace"):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / folder))
from helpers import ROOT  # noqa: E402
from stack import Stack, docker_problem  # noqa: E402
from wine_data import features_and_target, load_wine_data  # noqa: E402

REQUESTS_PER_SIZE = 200


def timed(action):
    start = time.perf_counter()
    action()
    return round(time.perf_counter() - start, 2)


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


def image_mib(image):
    size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", image],
                          capture_output=True, text=True, check=True).stdout
    return round(int(size) / 2**20)


def main():
    problem = docker_problem()
    if problem:
        sys.exit(f"bench: {problem}")
    figures = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "seconds": {}}
    seconds = figures["seconds"]
    with tempfile.TemporaryDirectory() as parent:
        stack = Stack.copy_of_project(parent)
        try:
            seconds["build, all layers cached"] = timed(lambda: stack.make("build"))
            seconds["make up, to healthy"] = timed(lambda: stack.make("up"))
            seconds["make train"] = timed(lambda: stack.make("train"))
            seconds["make serve, to healthy"] = timed(lambda: stack.make("serve"))
            seconds["make predict"] = timed(lambda: stack.make("predict"))
            inputs, _ = features_and_target(load_wine_data())
            url = stack.url("SERVE_PORT") + "/invocations"
            figures["scoring"] = [scoring_latency(url, inputs.head(size), REQUESTS_PER_SIZE) for size in (1, 100, 1000)]
            containers = containers_by_service(stack)
            figures["memory_mib"] = {service: memory_mib(c) for service, (c, _) in containers.items()}
            figures["image_mib"] = {service: image_mib(image) for service, (_, image) in containers.items()}
            seconds["make down"] = timed(lambda: stack.make("down"))
            seconds["make up again, to healthy"] = timed(lambda: stack.make("up"))
        finally:
            stack.remove()

    out = ROOT / "bench" / "results" / f"{figures['when'][:19].replace(':', '')}.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    for name, value in seconds.items():
        print(f"{name:<32} {value:>8.2f} s")
    for row in figures["scoring"]:
        print(f"scoring {row['rows_per_request']:>4} rows/request        p50 {row['p50_ms']:>7.1f} ms  "
              f"p95 {row['p95_ms']:>7.1f} ms  {row['rows_per_s']:>8} rows/s")
    print("memory (MiB):", figures["memory_mib"])
    print("images (MiB):", figures["image_mib"])
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
