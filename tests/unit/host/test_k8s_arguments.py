"""make k8s-deploy's and k8s-sweep's refusals on the host: one line, before anything is built or
installed. kubectl is a fake (a context that answers or not); helm is the real one, rendering the
real chart, so a bad value is refused by the chart's own schema."""

import shutil

import pytest

from tests.support.k8s import CHART, helm_binary
from tests.unit.host.support import checkout, cli, fake_command


@pytest.fixture
def folder(tmp_path):
    folder = checkout(tmp_path / "checkout")
    shutil.copytree(CHART, folder / "charts" / CHART.name)
    return folder


def kubectl(tmp_path, context="prod", answers=True):
    """A kubectl whose current context is `context`, and whose cluster answers or times out."""
    version = ('echo \'{"gitVersion": "v1.30.0"}\'' if answers
               else 'echo "Unable to connect to the server: dial tcp 10.0.0.1:443: i/o timeout" >&2; exit 1')
    return fake_command(tmp_path / "bin", "kubectl", f"""
case "$*" in
  *current-context*) [ -n "{context}" ] && echo "{context}" && exit 0; exit 1 ;;
  *"get --raw /version"*) {version} ;;
  *) echo "fake kubectl: unexpected $*" >&2; exit 9 ;;
esac
""")


def deploy(folder, tmp_path, *args, **fake):
    helm = helm_binary()
    assert helm, "helm is needed (the host CLI fetches it into .build/tools/)"
    return cli(folder, "k8s-deploy", f"KUBECTL={kubectl(tmp_path, **fake)}", f"HELM={helm}", *args)


def one_line(err, start):
    assert err.startswith(start), err
    assert len(err.strip().splitlines()) == 1, err


def test_no_context_is_one_line(folder, tmp_path):
    status, _, err = deploy(folder, tmp_path, context="")
    assert status != 0
    one_line(err, "error: no Kubernetes cluster: kubectl has no current context. Start the local one with "
                  "'make k8s-up'")


def test_a_cluster_that_does_not_answer_is_named(folder, tmp_path):
    status, _, err = deploy(folder, tmp_path, answers=False)
    assert status != 0
    one_line(err, "error: the Kubernetes cluster of context 'prod' does not answer (Unable to connect to the "
                  "server: dial tcp 10.0.0.1:443: i/o timeout): check it with 'kubectl cluster-info'")


def test_the_local_context_points_at_k8s_up(folder, tmp_path):
    status, _, err = deploy(folder, tmp_path, context="mlflow-devstack", answers=False)
    assert status != 0 and "start it with 'make k8s-up'" in err


@pytest.mark.parametrize("values, words", [
    ("model:\n  replicas: two\n", "/model/replicas"),
    ("model:\n  autoscaling:\n    enabled: 'yes'\n", "/model/autoscaling/enabled"),
    ("modle:\n  replicas: 2\n", "modle"),
])
def test_a_value_of_the_wrong_type_is_refused_by_the_schema(folder, tmp_path, values, words):
    (folder / "values.yaml").write_text(values)
    status, _, err = deploy(folder, tmp_path, f"VALUES={folder / 'values.yaml'}")
    assert status == 2
    one_line(err, "error: the chart's values are not valid: ")
    assert words in err


def test_a_missing_values_file_is_named(folder, tmp_path):
    status, _, err = deploy(folder, tmp_path, "VALUES=nope.yaml")
    assert status != 0
    one_line(err, "error: VALUES=nope.yaml: no such file")


def test_a_remote_cluster_needs_a_registry(folder, tmp_path):
    status, _, err = deploy(folder, tmp_path)
    assert status != 0
    one_line(err, "error: this cluster cannot see this machine's images: set K8S_REGISTRY")


def test_a_registry_docker_refuses(folder, tmp_path):
    status, _, err = deploy(folder, tmp_path, "K8S_REGISTRY=Registry Example/Team")
    assert status == 2
    one_line(err, "error: K8S_REGISTRY=Registry Example/Team does not make image names Docker accepts")


@pytest.mark.parametrize("parallel", ["0", "65", "two", "-1"])
def test_sweep_parallel_is_checked(folder, tmp_path, parallel):
    status, _, err = cli(folder, "k8s-sweep", f"KUBECTL={kubectl(tmp_path)}", f"HELM={helm_binary()}",
                         f"PARALLEL={parallel}")
    assert status == 2
    one_line(err, f"error: PARALLEL={parallel}: give a whole number of pods from 1 to 64")
