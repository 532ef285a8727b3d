"""The host layer side by side: `make up` and `make train` (and `make help`, the layer alone) of this
checkout against the same targets of the bash host layer it replaced, in one run, alternating A B A B,
each figure a median and the ratio new / old. Both stacks run here at once, each with its own
folder, project and ports. Only the layer differs: the old checkout gets this checkout's workspace/
(the same train.py) and this checkout's images, tagged under its own IMAGE_PREFIX with its build
stamp, so that neither rebuilds the other's tags."""

import shutil
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
    source = extracted(baseline, parent / "bash-layer")
    shutil.rmtree(source / "workspace")
    shutil.copytree(ROOT / "workspace", source / "workspace", ignore=shutil.ignore_patterns("mlruns", "__pycache__"))
    old = Stack.copy_of_project(parent, source=source)
    new = Stack.copy_of_project(parent)
    new.make("build", timeout=3600)  # this checkout's images, then the same ones for the old layer
    settings = new.settings()
    old.env["IMAGE_PREFIX"] = prefix = "mlflow-devstack-bash-layer"
    for service in settings.services_built:
        subprocess.run(["docker", "tag", settings.image(service), f"{prefix}/{service}:{settings.image_tag}"],
                       check=True)
    stamp = old.root / ".build" / f"images-{settings.image_tag}"
    stamp.parent.mkdir(exist_ok=True)
    stamp.touch()
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
