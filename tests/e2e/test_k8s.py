"""Kubernetes, end to end, through the make targets: make k8s-up starts the local one-node cluster
(built from Debian's packages), make k8s-deploy packages the trained model and installs the chart,
make k8s-sweep runs the grid as a Job, make k8s-down stops the cluster. kubectl's config is a file
of the test's own (KUBECONFIG), never the user's."""

import http.client
import json
import shutil
import subprocess
import threading
import time

import pytest

from tests.support.helpers import ROOT

MODEL = "mlflow-devstack-model"
ROWS = {"dataframe_split": {
    "columns": ["fixed acidity", "volatile acidity", "citric acid", "residual sugar", "chlorides",
                "free sulfur dioxide", "total sulfur dioxide", "density", "pH", "sulphates", "alcohol"],
    "data": [[7.4, 0.7, 0.0, 1.9, 0.076, 11.0, 34.0, 0.9978, 3.51, 0.56, 9.4],
             [7.8, 0.88, 0.0, 2.6, 0.098, 25.0, 67.0, 0.9968, 3.2, 0.68, 9.8],
             [11.2, 0.28, 0.56, 1.9, 0.075, 17.0, 60.0, 0.998, 3.16, 0.58, 9.8]]}}


def post(port, body=ROWS, timeout=10):
    """(status, parsed body) of one POST /invocations on a connection of its own."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/invocations", json.dumps(body),
                           {"Content-Type": "application/json", "Connection": "close"})
        answer = connection.getresponse()
        data = answer.read()
        return answer.status, (json.loads(data) if answer.status == 200 else data)
    finally:
        connection.close()


def answers(port):
    try:
        return post(port, timeout=5)[0] == 200
    except OSError:
        return False


class Cluster:
    def __init__(self, stack, kubeconfig):
        self.stack = stack
        self.kubeconfig = kubeconfig
        self.settings = stack.settings()

    def kubectl(self, *args, check=True, timeout=60):
        result = subprocess.run([self.stack.env["KUBECTL"], "--kubeconfig", str(self.kubeconfig), "-n", "mlflow",
                                 *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
        return result.stdout

    def json(self, *args):
        return json.loads(self.kubectl(*args, "-o", "json"))

    def ready_model_pods(self):
        pods = self.json("get", "pods", "-l", "app.kubernetes.io/component=model")["items"]
        return sorted(p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")
                      and all(s.get("ready") for s in p["status"].get("containerStatuses", [{}])))

    def wait_for(self, condition, what, timeout=300):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {timeout} s; pods:\n{self.kubectl('get', 'pods', check=False)}")
            time.sleep(1)

    @property
    def serve_port(self):
        return self.stack.ports["K8S_SERVE_PORT"]

    @property
    def tracking_url(self):
        return self.stack.url("K8S_TRACKING_PORT")


@pytest.fixture(scope="module")
def cluster(stack, trained_run, tmp_path_factory):
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    for name in ("helm", "kubectl"):
        stack.env[name.upper()] = str(ROOT / ".build" / "tools" / name)
    stack.env["KUBECONFIG"] = str(kubeconfig)
    cluster = Cluster(stack, kubeconfig)
    try:
        up = stack.make("k8s-up", timeout=3600)
        assert "Kubernetes 1.20.2 is up" in up.stdout
        deployed = stack.make("k8s-deploy", timeout=1200)
        assert "Deployed models:/wine-quality/" in deployed.stdout
        yield cluster
    finally:
        down = stack.make("k8s-down", check=False, timeout=600)
        node = subprocess.run(["docker", "rm", "-f", f"{stack.project}-k8s"], capture_output=True, text=True)
        shutil.rmtree(f"/var/lib/mlflow-devstack/{stack.project}", ignore_errors=True)
        assert down.returncode == 0, down.stderr
        assert "No such container" in node.stderr, "make k8s-down left the node container"


def test_k8s_up_made_its_context_current(cluster):
    context = subprocess.run([cluster.stack.env["KUBECTL"], "--kubeconfig", str(cluster.kubeconfig), "config",
                              "current-context"], capture_output=True, text=True)
    assert context.stdout.strip() == "mlflow-devstack"
    node = cluster.json("get", "node", "devstack")
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.20.2"


def test_the_model_answers_as_make_serve_does(cluster, served):
    status, on_cluster = post(cluster.serve_port)
    assert status == 200, on_cluster
    status, on_stack = post(int(served.rsplit(":", 1)[1].split("/")[0]))
    assert status == 200
    assert len(on_cluster["predictions"]) == 3
    for ours, theirs in zip(on_cluster["predictions"], on_stack["predictions"]):
        assert abs(ours - theirs) < 1e-9
    assert len(cluster.ready_model_pods()) == 2


def test_pods_run_as_the_chart_says(cluster):
    pod = cluster.json("get", "pods", "-l", "app.kubernetes.io/component=model")["items"][0]
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["status"]["qosClass"] == "Burstable"
    # The container Docker runs is the pod's: not root, read-only.
    docker_id = pod["status"]["containerStatuses"][0]["containerID"].split("//")[1]
    inspected = json.loads(subprocess.run(["docker", "inspect", docker_id], capture_output=True, text=True,
                                          check=True).stdout)[0]
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert inspected["Config"]["User"] not in ("", "0", "root")


def test_a_deleted_pod_is_replaced(cluster):
    before = cluster.ready_model_pods()
    cluster.kubectl("delete", "pod", before[0], "--wait=false")
    cluster.wait_for(lambda: len(cluster.ready_model_pods()) == 2 and before[0] not in cluster.ready_model_pods(),
                     "the deleted pod was replaced by a ready one")
    assert post(cluster.serve_port)[0] == 200


def test_a_rollout_under_load_fails_no_request(cluster):
    _, version = cluster.stack.train("ALPHA=0.1", "L1=0.9")
    before = post(cluster.serve_port)[1]["predictions"]
    results, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                status, body = post(cluster.serve_port)
                results.append((status, body["predictions"] if status == 200 else body))
            except OSError as error:
                results.append((None, repr(error)))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        deployed = cluster.stack.make("k8s-deploy", f"MODEL=models:/wine-quality/{version}", timeout=1200)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    assert f"Deployed models:/wine-quality/{version}" in deployed.stdout
    failed = [result for result in results if result[0] != 200]
    assert len(results) > 50 and not failed, f"{len(failed)} of {len(results)} failed: {failed[:5]}"
    after = post(cluster.serve_port)[1]["predictions"]
    assert after != before  # the new version answers now
    assert any(r[1] == before for r in results) and any(r[1] == after for r in results)


def test_a_failed_rollout_is_rolled_back_with_its_reason(cluster, tmp_path):
    # Too little memory for the server to load: each new pod is killed at start, never ready.
    values = tmp_path / "too-little-memory.yaml"
    values.write_text("model:\n  resources:\n    requests: {cpu: 100m, memory: 24Mi}\n"
                      "    limits: {cpu: '1', memory: 32Mi}\n")
    revision = json.loads(subprocess.run(
        [cluster.stack.env["HELM"], "--kubeconfig", str(cluster.kubeconfig), "-n", "mlflow", "history",
         "mlflow-devstack", "-o", "json"], capture_output=True, text=True, check=True).stdout)[-1]["revision"]
    result = cluster.stack.make("k8s-deploy", f"VALUES={values}", "K8S_TIMEOUT=90s", check=False, timeout=900)
    assert result.returncode != 0
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    # The reason is the new pod's: killed for memory, or its probe never answered.
    assert len(error) == 1 and "rollout" in error[0] and "failed: pod mlflow-devstack-model-" in error[0], result.stderr
    assert any(word in error[0] for word in ("exited", "OOMKilled", "probe failed")), error[0]
    assert f"rolled back to revision {revision}" in error[0]
    cluster.wait_for(lambda: len(cluster.ready_model_pods()) == 2, "the old version serves on two pods")
    assert post(cluster.serve_port)[0] == 200


@pytest.mark.parametrize("arguments, words", [
    (["MODEL=models:/no-such-model/1"], "MODEL=models:/no-such-model/1 is not in the stack's tracking server"),
    (["IMAGE=Not A Name"], "IMAGE=Not A Name"),
    (["K8S_CONTEXT=nowhere"], "nowhere"),
])
def test_bad_input_is_one_line_and_installs_nothing(cluster, arguments, words):
    history = [cluster.stack.env["HELM"], "--kubeconfig", str(cluster.kubeconfig), "-n", "mlflow", "history",
               "mlflow-devstack", "-o", "json"]
    before = subprocess.run(history, capture_output=True, text=True, check=True).stdout
    result = cluster.stack.make("k8s-deploy", *arguments, check=False, timeout=600)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert subprocess.run(history, capture_output=True, text=True, check=True).stdout == before


def test_a_value_of_the_wrong_type_is_refused(cluster, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text("model:\n  replicas: two\n")
    result = cluster.stack.make("k8s-deploy", f"VALUES={values}", check=False, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "replicas" in errors[0], result.stderr
    assert "Built " not in result.stdout  # refused before packaging anything


def test_the_sweep_job_runs_pods_at_once_and_completes_the_grid(cluster):
    result = cluster.stack.make("k8s-sweep", "PARALLEL=2", "ALPHAS=0.1,0.5", "L1_RATIOS=0.2,0.8", timeout=1800)
    assert "completed" in result.stdout
    job = [j for j in cluster.json("get", "jobs")["items"] if j["metadata"]["name"].startswith("mlflow-devstack-sweep-")
           and "plan" not in j["metadata"]["name"]][-1]
    assert job["status"].get("succeeded", 0) >= 1 and not job["status"].get("failed")
    pods = cluster.json("get", "pods", "-l", f"job-name={job['metadata']['name']}")["items"]
    spans = []
    for pod in pods:
        state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        spans.append((state["startedAt"], state["finishedAt"]))
    assert len(spans) >= 2
    # RFC 3339 times of one zone sort as strings: two spans overlap when each starts before the other ends.
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:]), spans
    # The grid, in the tracking server on the cluster: 4 completed trials of 4 distinct points.
    request = json.dumps({"experiment_ids": [experiment_id(cluster)], "max_results": 100,
                          "filter": "attributes.status = 'FINISHED'"})
    connection = http.client.HTTPConnection("127.0.0.1", cluster.stack.ports["K8S_TRACKING_PORT"], timeout=30)
    connection.request("POST", "/api/2.0/mlflow/runs/search", request, {"Content-Type": "application/json"})
    runs = json.loads(connection.getresponse().read())["runs"]
    params = [{x["key"]: x["value"] for x in r["data"].get("params", [])} for r in runs]
    points = sorted((p["alpha"], p["l1_ratio"]) for p in params if "alpha" in p and "l1_ratio" in p)
    assert points == [("0.1", "0.2"), ("0.1", "0.8"), ("0.5", "0.2"), ("0.5", "0.8")]


def experiment_id(cluster):
    connection = http.client.HTTPConnection("127.0.0.1", cluster.stack.ports["K8S_TRACKING_PORT"], timeout=30)
    connection.request("GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=wine-quality")
    return json.loads(connection.getresponse().read())["experiment"]["experiment_id"]


def test_k8s_down_and_up_keep_what_ran(cluster):
    experiment = experiment_id(cluster)
    cluster.stack.make("k8s-down", timeout=600)
    leftovers = subprocess.run(["docker", "ps", "-aq", "--filter", f"name={cluster.stack.project}-k8s"],
                               capture_output=True, text=True).stdout.split()
    assert not leftovers
    up = cluster.stack.make("k8s-up", timeout=900)
    assert "waiting for what ran before: mlflow-devstack-model, mlflow-devstack-tracking" in up.stdout
    assert len(cluster.ready_model_pods()) == 2
    # The NodePort follows the new pods' Endpoints a moment after they are ready.
    cluster.wait_for(lambda: answers(cluster.serve_port), "the model answers through its NodePort", timeout=60)
    assert experiment_id(cluster) == experiment  # the tracking server's volume came back with its runs
