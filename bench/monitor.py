"""The cost of watching what is served: the stack's scoring server with its Prometheus metrics on
against off (SERVE_METRICS), in one run, as `make serve` runs it (all cores' workers, through the
published port). The two alternate, twice, so a drift of the machine's load hits both alike."""

import json

from tests.support.helpers import wrk

SECONDS = 10
ROUNDS = 2
CONNECTIONS = (4, 32)


def side_by_side(stack, inputs):
    url = stack.url("SERVE_PORT") + "/invocations"
    body = json.dumps({"dataframe_split": json.loads(inputs.head(1).to_json(orient="split", index=False))})
    runs = []
    for round_number in range(ROUNDS):
        for metrics in ("off", "on"):
            stack.make("serve", f"SERVE_METRICS={metrics}")
            for connections in CONNECTIONS:
                wrk(url, body, 2, connections, host="localhost")
                load = wrk(url, body, SECONDS, connections, host="localhost")
                runs.append({"metrics": metrics, "round": round_number, "connections": connections,
                             "requests_per_s": load["requests_per_s"], "p99_ms": load["p99_ms"],
                             "errors": load["errors"]})
                print(runs[-1], flush=True)
    stack.make("serve")  # back to the settings of .env
    return {"runs": runs, "ratios": ratios(runs)}


def ratios(runs):
    """Per connection count: req/s and p99 of metrics on over off, each summed over the rounds."""
    out = {}
    for connections in CONNECTIONS:
        mine = {m: [r for r in runs if r["metrics"] == m and r["connections"] == connections] for m in ("on", "off")}
        rate = {m: sum(r["requests_per_s"] for r in rs) for m, rs in mine.items()}
        p99 = {m: max(r["p99_ms"] for r in rs) for m, rs in mine.items()}
        out[f"{connections} connections"] = {"req/s on / off": round(rate["on"] / rate["off"], 3),
                                             "p99 on / off": round(p99["on"] / p99["off"], 2)}
    return out


def print_table(figures):
    print(f"\n{'metrics':<8} {'round':>5} {'conns':>5} {'req/s':>8} {'p99 ms':>7}")
    for r in figures["runs"]:
        print(f"{r['metrics']:<8} {r['round']:>5} {r['connections']:>5} {r['requests_per_s']:>8.0f} "
              f"{r['p99_ms']:>7.2f}")
    for name, value in figures["ratios"].items():
        print(f"SERVE_METRICS on vs off, 1 row, {name}: {value} (goal: req/s loss at most 5 %)")
