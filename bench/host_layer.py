"""The host layer side by side: `make up` and `make train` (and `make help`, the layer alone) of this
checkout against the same targets of the bash host layer it replaced, in one run, alternating A B A B,
each figure a median and the ratio new / old. Both stacks run here at once, each with its own
folder, project, ports and images (the old one's under another IMAGE_PREFIX, so neither rebuilds the
other's tags)."""

import statistics
import subprocess
import time

from tests.support.helpers import ROOT
from tests.support.stack import Stack

# The last commit whose host layer was bash (Makefile recipes plus tools/*).
BASH_LAYER = "f178a61"
ROUNDS = 3


def extracted(ref, folder):
    """The tree of ref, as a fresh clone would have it, in folder."""
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def seconds(action):
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def side_by_side(parent, baseline=BASH_LAYER, rounds=ROUNDS):
    """{target: {"bash": s, "python": s, "python / bash": ratio}} of medians over rounds."""
    parent.mkdir(parents=True, exist_ok=True)
    old = Stack.copy_of_project(parent, source=extracted(baseline, parent / "bash-layer"))
    old.env["IMAGE_PREFIX"] = "mlflow-devstack-bash-layer"
    new = Stack.copy_of_project(parent)
    stacks = {"bash": old, "python": new}
    times = {target: {name: [] for name in stacks} for target in ("make up", "make train", "make help")}
    try:
        for stack in stacks.values():  # builds what is missing: not timed
            stack.make("up", timeout=3600)
            stack.make("train")
        for _ in range(rounds):
            for name, stack in stacks.items():
                stack.make("down")
                for target in times:
                    times[target][name].append(seconds(lambda stack=stack, target=target:
                                                       stack.make(target.split()[1])))
    finally:
        for stack in stacks.values():
            stack.remove()
    figures = {}
    for target, by_layer in times.items():
        medians = {name: round(statistics.median(values), 3) for name, values in by_layer.items()}
        medians["python / bash"] = round(medians["python"] / medians["bash"], 2)
        figures[target] = medians
    return figures


def print_table(figures):
    print(f"\n{'host layer, medians (s)':<28} {'bash':>8} {'python':>8} {'python / bash':>14}")
    for target, row in figures.items():
        print(f"{target:<28} {row['bash']:>8} {row['python']:>8} {row['python / bash']:>14}")
