"""The chart renders valid objects for every Kubernetes version it claims, locks every pod down, keeps
the model serving through updates, and refuses values that cannot work with a message saying which."""

import copy
import re

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions

from tests.support.k8s import CHART, render, run_helm, template

# kubernetes-validate 1.37.0 ships strict schemas for Kubernetes 1.25 through 1.37: the chart is
# validated against the oldest and the newest of them. (1.20 to 1.24 have no schemas there; their
# API versions are checked by name below.)
OLDEST_SCHEMA = "1.25.0"
NEWEST_SCHEMA = "1.37.0"
NAMESPACE = "ml"
# Release "wine": the chart's names are wine-mlflow-devstack-*.
FULLNAME = "wine-mlflow-devstack"
MODEL_SERVICE = f"{FULLNAME}-model"
TRACKING_SERVICE = f"{FULLNAME}-tracking"
INGRESS_HOST = "wine.example.com"

# Everything on: the Ingress, a sweep, the team layout with two tracking replicas, node ports.
EVERYTHING = {
    "model": {
        "autoscaling": {"enabled": True},
        "ingress": {"enabled": True, "host": INGRESS_HOST, "className": "nginx", "tlsSecretName": "wine-tls",
                    "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "32m"}},
        "serve": {"workers": 4, "maxRequestMb": "64", "timeout": 30, "allowedHosts": ["models.example.com:*"]},
        "service": {"type": "NodePort", "nodePort": 30080},
        "podAnnotations": {"team": "ml"},
    },
    "tracking": {
        "replicas": 2,
        "database": {"existingSecret": "tracking-db"},
        "artifacts": {"destination": "s3://mlflow-artifacts/", "s3EndpointUrl": "http://garage:3900",
                      "existingSecret": "tracking-s3"},
        "service": {"type": "NodePort", "nodePort": 30081},
        "allowedHosts": ["tracking.example.com"],
    },
    "sweep": {
        "enabled": True, "image": "mlflow-devstack/dev-workspace:1", "run": "run-7", "parallelism": 3,
        "alphas": "0.1,0.5", "l1Ratios": "0.2,0.8", "experiment": "grid", "nodeIpEnv": True,
        "trackingUri": "http://$(NODE_IP):30081",
    },
}
VALUE_SETS = {"default": {}, "everything": EVERYTHING}


@pytest.fixture(scope="module")
def rendered():
    """The objects of each value set, rendered once for the newest schemas' version."""
    return {name: render(values, NEWEST_SCHEMA) for name, values in VALUE_SETS.items()}


def find(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''} among {[(o['kind'], o['metadata']['name']) for o in objects]}"
    return found[0]


def pod_templates(objects):
    """(object, pod template) of everything that makes pods: Deployments and Jobs, hooks included."""
    return [(o, o["spec"]["template"]) for o in objects if o["kind"] in ("Deployment", "Job")]


def container(objects, kind, name):
    return find(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]


def env_of(container_):
    return {item["name"]: item for item in container_.get("env", [])}


UNITS = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(text):
    """A Kubernetes quantity ("250m", "1", "384Mi") as a number, to compare requests with limits."""
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text)).groups()
    return float(number) * UNITS.get(unit, 1)


# --- the chart as a whole ---------------------------------------------------------------------------

@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_strict_passes(values):
    result = run_helm("lint", "--strict", str(CHART), values=values)
    assert "0 chart(s) failed" in result.stdout, result.stdout + result.stderr


def test_the_schema_versions_are_the_installed_validators_oldest_and_newest():
    versions = all_versions()
    assert (versions[0], versions[-1]) == (OLDEST_SCHEMA, NEWEST_SCHEMA), (
        f"kubernetes-validate now covers {versions[0]} to {versions[-1]}: update OLDEST_SCHEMA and NEWEST_SCHEMA")


@pytest.mark.parametrize("kube_version", [OLDEST_SCHEMA, NEWEST_SCHEMA])
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_object_validates_strictly_against_kubernetes_schemas(values, kube_version):
    objects = render(values, kube_version)
    errors = []
    for obj in objects:
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{label}: {'.'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{label}: {error.message}")
    assert not errors, "\n".join(errors)


def test_strict_validation_catches_a_misspelt_field(rendered):
    """The check above is worth something: an unknown field fails it."""
    deployment = copy.deepcopy(find(rendered["default"], "Deployment", MODEL_SERVICE))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, NEWEST_SCHEMA, strict=True)


@pytest.mark.parametrize("kube_version,hpa,pdb", [
    ("1.20.2", "autoscaling/v2beta2", "policy/v1beta1"),
    ("1.25.0", "autoscaling/v2", "policy/v1"),
])
def test_api_versions_follow_the_cluster(kube_version, hpa, pdb):
    objects = render({}, kube_version)
    assert find(objects, "HorizontalPodAutoscaler")["apiVersion"] == hpa
    assert find(objects, "PodDisruptionBudget")["apiVersion"] == pdb


def test_a_cluster_older_than_1_20_is_refused():
    result = template({}, "1.19.16", check=False)
    assert result.returncode != 0 and ">=1.20.0-0" in result.stderr, result.stderr


# --- every pod -------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", VALUE_SETS.keys())
def test_every_pod_runs_locked_down(rendered, values):
    templates = pod_templates(rendered[values])
    kinds = {(o["kind"], o["metadata"]["name"]) for o, _ in templates}
    expected = 2 if values == "default" else 4  # the Deployments, then the sweep's two Jobs
    assert len(templates) == expected, kinds
    for obj, pod in templates:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False, where
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, where
        assert isinstance(security["runAsUser"], int) and security["runAsUser"] != 0, where
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"], where
        for box in spec["containers"]:
            where = f"{obj['kind']}/{obj['metadata']['name']} container {box['name']}"
            context = box["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert box["imagePullPolicy"] == "IfNotPresent", where
            assert {"mountPath": "/tmp", "name": "tmp"} in box["volumeMounts"], where
            env = env_of(box)
            assert env["HOME"]["value"] == "/tmp" and env["MPLCONFIGDIR"]["value"] == "/tmp", where
            assert env["MLFLOW_DISABLE_TELEMETRY"]["value"] == "true", where
            resources = box["resources"]
            for kind in ("requests", "limits"):
                assert set(resources[kind]) == {"cpu", "memory"}, f"{where}: {kind} {resources[kind]}"
            for name in ("cpu", "memory"):
                assert quantity(resources["requests"][name]) <= quantity(resources["limits"][name]), where
        # Guaranteed QoS: every container's requests equal its limits, for CPU and memory.
        assert not all(quantity(box["resources"]["requests"][name]) == quantity(box["resources"]["limits"][name])
                       for box in spec["containers"] for name in ("cpu", "memory")), f"{where} is Guaranteed"


def test_requests_equal_to_limits_are_refused():
    same = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    result = template({"model": {"resources": same}}, check=False)
    assert result.returncode != 0 and "model.resources: requests equal limits" in result.stderr, result.stderr


def test_selectors_use_name_instance_and_component_only(rendered):
    for obj in rendered["everything"]:
        if obj["kind"] == "Deployment":
            selector = obj["spec"]["selector"]["matchLabels"]
            assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance",
                                     "app.kubernetes.io/component"}, obj["metadata"]["name"]
        labels = obj["metadata"]["labels"]
        assert {"app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"} <= set(labels)


# --- the model server ------------------------------------------------------------------------------

def test_the_model_keeps_serving_through_updates_and_stops(rendered):
    deployment = find(rendered["default"], "Deployment", MODEL_SERVICE)
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = deployment["spec"]["template"]["spec"]
    box = pod["containers"][0]
    assert "command" not in box and "args" not in box  # the image's own CMD
    assert box["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert box["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
    assert pod["terminationGracePeriodSeconds"] == 30


def test_the_model_probes_ping(rendered):
    box = container(rendered["default"], "Deployment", MODEL_SERVICE)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert box[probe]["httpGet"] == {"path": "/ping", "port": "http"}, probe
    assert (box["startupProbe"]["periodSeconds"], box["startupProbe"]["failureThreshold"]) == (2, 150)
    assert (box["readinessProbe"]["periodSeconds"], box["readinessProbe"]["failureThreshold"]) == (2, 2)
    assert box["livenessProbe"]["periodSeconds"] == 10 and box["livenessProbe"]["timeoutSeconds"] == 5


def test_the_autoscaler_owns_the_replica_count():
    objects = render({})
    assert "replicas" not in find(objects, "Deployment", MODEL_SERVICE)["spec"]
    hpa = find(objects, "HorizontalPodAutoscaler", MODEL_SERVICE)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": MODEL_SERVICE}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"] == {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    fixed = render({"model": {"autoscaling": {"enabled": False}, "replicas": 3}})
    assert find(fixed, "Deployment", MODEL_SERVICE)["spec"]["replicas"] == 3
    assert not [o for o in fixed if o["kind"] == "HorizontalPodAutoscaler"]


def service_names(service):
    return [service, f"{service}.{NAMESPACE}", f"{service}.{NAMESPACE}.svc", f"{service}.{NAMESPACE}.svc.cluster.local"]


def test_the_model_server_accepts_its_service_names(rendered):
    hosts = env_of(container(rendered["default"], "Deployment", MODEL_SERVICE))["SERVE_ALLOWED_HOSTS"]["value"]
    hosts = hosts.split(",")
    for name in service_names(MODEL_SERVICE):
        assert name in hosts and f"{name}:*" in hosts, name
    assert INGRESS_HOST not in hosts


def test_the_model_server_accepts_the_ingress_host_and_the_given_ones(rendered):
    env = env_of(container(rendered["everything"], "Deployment", MODEL_SERVICE))
    hosts = env["SERVE_ALLOWED_HOSTS"]["value"].split(",")
    assert {INGRESS_HOST, f"{INGRESS_HOST}:*", "models.example.com:*", MODEL_SERVICE} <= set(hosts)
    # --set gives numbers: they arrive as the strings the server parses.
    assert [env[name]["value"] for name in ("SERVE_WORKERS", "SERVE_MAX_REQUEST_MB", "SERVE_TIMEOUT")] == [
        "4", "64", "30"]


def test_empty_serve_settings_are_left_to_the_server(rendered):
    env = env_of(container(rendered["default"], "Deployment", MODEL_SERVICE))
    assert env["SERVE_WORKERS"]["value"] == "1"
    assert "SERVE_MAX_REQUEST_MB" not in env and "SERVE_TIMEOUT" not in env


def test_the_ingress(rendered):
    ingress = find(rendered["everything"], "Ingress", MODEL_SERVICE)
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": [INGRESS_HOST], "secretName": "wine-tls"}]
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == INGRESS_HOST
    assert rule["http"]["paths"] == [{"path": "/", "pathType": "Prefix", "backend": {
        "service": {"name": MODEL_SERVICE, "port": {"name": "http"}}}}]
    assert not [o for o in rendered["default"] if o["kind"] == "Ingress"]


def test_node_ports_only_with_type_node_port(rendered):
    assert "nodePort" not in find(rendered["default"], "Service", MODEL_SERVICE)["spec"]["ports"][0]
    port = find(rendered["everything"], "Service", MODEL_SERVICE)["spec"]["ports"][0]
    assert port == {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "nodePort": 30080}
    picked = render({"model": {"service": {"type": "NodePort"}}})
    assert "nodePort" not in find(picked, "Service", MODEL_SERVICE)["spec"]["ports"][0]
    ignored = render({"model": {"service": {"nodePort": 30080}}})
    assert "nodePort" not in find(ignored, "Service", MODEL_SERVICE)["spec"]["ports"][0]


def test_the_disruption_budget(rendered):
    pdb = find(rendered["default"], "PodDisruptionBudget", MODEL_SERVICE)
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "model"
    percent = render({"model": {"pdb": {"minAvailable": "50%"}}})
    assert find(percent, "PodDisruptionBudget")["spec"]["minAvailable"] == "50%"


def test_the_servers_can_be_turned_off():
    objects = render({"model": {"enabled": False}, "tracking": {"enabled": False}})
    assert objects == []


# --- the tracking server ---------------------------------------------------------------------------

def test_the_tracking_server_on_sqlite(rendered):
    objects = rendered["default"]
    deployment = find(objects, "Deployment", TRACKING_SERVICE)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    box = pod["containers"][0]
    assert "command" not in box  # the image's start
    assert {"name": "mlruns", "mountPath": "/mlruns"} in box["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["mlruns"]["persistentVolumeClaim"] == {"claimName": TRACKING_SERVICE}
    claim = find(objects, "PersistentVolumeClaim", TRACKING_SERVICE)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert "storageClassName" not in claim["spec"]
    hosts = env_of(box)["TRACKING_ALLOWED_HOSTS"]["value"].split(",")
    for name in service_names(TRACKING_SERVICE):
        assert name in hosts and f"{name}:*" in hosts, name


def test_the_tracking_server_probes_health_as_localhost(rendered):
    box = container(rendered["default"], "Deployment", TRACKING_SERVICE)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert box[probe]["httpGet"] == {"path": "/health", "port": "http",
                                         "httpHeaders": [{"name": "Host", "value": "localhost"}]}, probe
    assert (box["startupProbe"]["periodSeconds"], box["startupProbe"]["failureThreshold"]) == (2, 150)


def test_an_existing_claim_replaces_the_chart_s_own():
    objects = render({"tracking": {"persistence": {"existingClaim": "kept-runs", "storageClassName": "fast"}}})
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    volumes = find(objects, "Deployment", TRACKING_SERVICE)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "mlruns", "persistentVolumeClaim": {"claimName": "kept-runs"}} in volumes
    storage_class = render({"tracking": {"persistence": {"storageClassName": "fast"}}})
    assert find(storage_class, "PersistentVolumeClaim")["spec"]["storageClassName"] == "fast"


def test_the_team_layout(rendered):
    objects = rendered["everything"]
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    deployment = find(objects, "Deployment", TRACKING_SERVICE)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    box = deployment["spec"]["template"]["spec"]["containers"][0]
    assert box["command"] == [
        "mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--workers", "1",
        "--backend-store-uri", "$(MLFLOW_BACKEND_STORE_URI)", "--serve-artifacts",
        "--artifacts-destination", "s3://mlflow-artifacts/",
        "--allowed-hosts", "$(TRACKING_ALLOWED_HOSTS),localhost,localhost:*,127.0.0.1,127.0.0.1:*"]
    env = env_of(box)
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"] == {"secretKeyRef": {"name": "tracking-db", "key": "uri"}}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://garage:3900"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "tracking-s3", "key": "access-key-id"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "tracking-s3", "key": "secret-access-key"}}
    assert "tracking.example.com" in env["TRACKING_ALLOWED_HOSTS"]["value"].split(",")
    # $(VAR) in the command expands only variables the container defines.
    assert "TRACKING_ALLOWED_HOSTS" in env
    assert {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]} == {"tmp"}


def test_the_team_layout_without_object_store_credentials():
    objects = render({"tracking": {"database": {"existingSecret": "db"}, "artifacts": {"destination": "s3://b/"}}})
    env = env_of(container(objects, "Deployment", TRACKING_SERVICE))
    assert "AWS_ACCESS_KEY_ID" not in env and "MLFLOW_S3_ENDPOINT_URL" not in env


# --- the sweep -------------------------------------------------------------------------------------

def sweep_jobs(objects):
    jobs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Job"}
    return jobs[f"{FULLNAME}-sweep-plan"], jobs[f"{FULLNAME}-sweep-run-7"]


def test_the_sweep_plans_in_a_hook_then_works_a_queue(rendered):
    plan, work = sweep_jobs(rendered["everything"])
    assert plan["metadata"]["annotations"] == {
        "helm.sh/hook": "pre-install,pre-upgrade", "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}
    assert plan["spec"]["backoffLimit"] == 1
    grid = ["--alphas", "0.1,0.5", "--l1-ratios", "0.2,0.8", "--experiment", "grid"]
    assert container([plan], "Job", plan["metadata"]["name"])["command"] == [
        "python", "sweep.py", "plan", "--parallel", "3", *grid]
    assert "helm.sh/hook" not in work["metadata"].get("annotations", {})
    spec = work["spec"]
    assert "completions" not in spec  # a work queue: each pod runs until no point is left
    assert (spec["parallelism"], spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (3, 2, 3600)
    pod = spec["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "sweep"
    assert pod["spec"]["restartPolicy"] == "Never"
    box = pod["spec"]["containers"][0]
    assert box["command"] == ["python", "sweep.py", "queue", "--run", "run-7", *grid]
    assert box["workingDir"] == "/home/mlflow/workspace"
    assert box["image"] == "mlflow-devstack/dev-workspace:1"


def test_node_ip_comes_before_the_tracking_uri_that_uses_it(rendered):
    for job in sweep_jobs(rendered["everything"]):
        env = job["spec"]["template"]["spec"]["containers"][0]["env"]
        names = [item["name"] for item in env]
        assert names.index("NODE_IP") < names.index("MLFLOW_TRACKING_URI"), names
        by_name = env_of({"env": env})
        assert by_name["NODE_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
        assert by_name["MLFLOW_TRACKING_URI"]["value"] == "http://$(NODE_IP):30081"
        assert by_name["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"]["value"] == "true"


def test_the_sweep_defaults_to_this_release_s_tracking_server():
    objects = render({"sweep": {"enabled": True, "image": "dev:1", "run": "a"}})
    for job in (o for o in objects if o["kind"] == "Job"):
        box = job["spec"]["template"]["spec"]["containers"][0]
        env = env_of(box)
        assert "NODE_IP" not in env
        assert env["MLFLOW_TRACKING_URI"]["value"] == f"http://{TRACKING_SERVICE}:5000"
        assert box["command"][-2:] == ["--experiment", "wine-quality"] and "--alphas" not in box["command"]


def test_a_sweep_release_of_its_own_uses_the_tracking_server_of_the_release_it_names():
    """As the host CLI installs a sweep: a second release, sharing the first one's fullname."""
    objects = render({"fullnameOverride": "mlflow-devstack", "model": {"enabled": False},
                      "tracking": {"enabled": False}, "sweep": {"enabled": True, "image": "dev:1", "run": "b"}})
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == {
        ("Job", "mlflow-devstack-sweep-plan"), ("Job", "mlflow-devstack-sweep-b")}
    for job in objects:
        env = env_of(job["spec"]["template"]["spec"]["containers"][0])
        assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow-devstack-tracking:5000"


def test_a_numeric_run_name_from_set_names_the_job():
    objects = render({}, None, "--set", "sweep.enabled=true,sweep.image=dev:1,sweep.run=42,sweep.alphas=0.5")
    job = find(objects, "Job", f"{FULLNAME}-sweep-42")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][3:7] == ["--run", "42", "--alphas", "0.5"]


# --- values that cannot work -----------------------------------------------------------------------

@pytest.mark.parametrize("options,path", [
    (["--set", "model.replicas=two"], "/model/replicas"),
    (["--set-string", "model.autoscaling.enabled=yes"], "/model/autoscaling/enabled"),
    (["--set", "model.resources=5"], "/model/resources"),
    (["--set", "modle.replicas=2"], "modle"),
    (["--set", "sweep.run=Run_1"], "/sweep/run"),
    (["--set", "model.pullPolicy=Sometimes"], "/model/pullPolicy"),
    (["--set", "securityContext.runAsUser=0"], "/securityContext/runAsUser"),
])
def test_a_value_of_the_wrong_type_fails_with_helm_s_schema_message(options, path):
    for command in ("template", "lint"):
        args = ["template", "wine", str(CHART)] if command == "template" else ["lint", "--strict", str(CHART)]
        result = run_helm(*args, *options, check=False)
        output = result.stderr + result.stdout
        assert result.returncode != 0, f"helm {command} {options} passed:\n{output}"
        assert "schema" in output and path in output, output


@pytest.mark.parametrize("values,message", [
    ({"sweep": {"enabled": True, "image": "dev:1"}}, "sweep.run is required when sweep.enabled is true"),
    ({"sweep": {"enabled": True, "run": "a"}}, "sweep.image is required when sweep.enabled is true"),
    ({"sweep": {"enabled": True, "image": "dev:1", "run": "a" * 60}}, "more than Kubernetes' 63"),
    ({"sweep": {"enabled": True, "image": "dev:1", "run": "plan"}}, 'sweep.run cannot be "plan"'),
    ({"tracking": {"replicas": 2}}, "tracking.replicas is 2, but without tracking.database.existingSecret"),
    ({"tracking": {"database": {"existingSecret": "db"}}}, "tracking.artifacts.destination is required"),
    ({"model": {"preStopSeconds": 30}}, "must exceed model.preStopSeconds (30)"),
    ({"model": {"preStopSeconds": 40, "terminationGracePeriodSeconds": 30}}, "must exceed model.preStopSeconds"),
    ({"model": {"ingress": {"enabled": True}}}, "model.ingress.host is required"),
    ({"model": {"autoscaling": {"minReplicas": 7}}}, "minReplicas (7) must not exceed maxReplicas (6)"),
])
def test_values_that_cannot_work_fail_the_render_with_a_message(values, message):
    result = template(values, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr

