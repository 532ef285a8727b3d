"""images/k8s/cluster_helper.py, the k8s node's NodePort proxy and volume provisioner, as a real
process against a fake API server (tests/support/fake_kube_api.py: HTTPS, client certificate
required) and real backends on 127.0.0.1: the "pod IPs" are 127.0.0.1, each pod its own port."""

import base64
import http.client
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.fake_kube_api import FakeKubeApi, make_pki
from tests.support.helpers import ROOT, free_port, stop_process_group

HELPER = ROOT / "images" / "k8s" / "cluster_helper.py"
CLASS = "devstack-local"


def wait_until(condition, timeout=10, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout}s")


# Backends: pods


class HttpBackend:
    """Answers each GET with its name, one request per connection."""

    def __init__(self, name):
        self.name, self.hits, self.lock = name, 0, threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with backend.lock:
                    backend.hits += 1
                body = backend.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server_class = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 128, "daemon_threads": True})
        self.server = server_class(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.stopped = False

    def stop(self):
        """From now on its port refuses connections."""
        if not self.stopped:
            self.stopped = True
            self.server.shutdown()
            self.server.server_close()


class EchoBackend:
    """Reads up to the client's end of sending (half-close), then answers it in capitals and closes."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    @staticmethod
    def answer(conn):
        with conn:
            data = b""
            while piece := conn.recv(65536):
                data += piece
            conn.sendall(data.upper())

    def stop(self):
        self.sock.close()


class Blackhole:
    """A port whose connects time out: a listen queue of one, kept full."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port), timeout=2)

    def stop(self):
        self.filler.close()
        self.sock.close()


def fetch(port, timeout=5):
    """The body of GET / through 127.0.0.1:port, on a connection of its own."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def answer(call, *args):
    """call(*args), or None if it fails."""
    try:
        return call(*args)
    except (OSError, AssertionError, http.client.HTTPException):
        return None


def wait_serving(port, *bodies, call=fetch):
    """Until a request through port is answered with one of bodies. (The helper watches Services and
    Endpoints apart, as kube-proxy does: a new Service's first connections may find no endpoint.)"""
    wait_until(lambda: answer(call, port) in bodies, what=f"an answer on {port}")


def echo(port, data=b"hello", timeout=5):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
        return answer


def refuses(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# Objects


def service(name, *ports, kind="NodePort", namespace="default"):
    """ports: (port name or "", nodePort)."""
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"type": kind, "selector": {"app": name},
                     "ports": [{**({"name": port_name} if port_name else {}), "protocol": "TCP", "port": 80 + i,
                                "targetPort": 8080 + i, "nodePort": node_port}
                               for i, (port_name, node_port) in enumerate(ports)]}}


def endpoints(name, ready=(), not_ready=(), port_name="http", namespace="default"):
    """ready, not_ready: pod ports (a pod is 127.0.0.1 and its port: a subset each), or
    {port name: port} of a pod with several."""
    def subset(pod, field):
        ports = pod if isinstance(pod, dict) else {port_name: pod}
        return {field: [{"ip": "127.0.0.1"}],
                "ports": [{**({"name": n} if n else {}), "port": p, "protocol": "TCP"} for n, p in ports.items()]}
    return {"metadata": {"name": name, "namespace": namespace},
            "subsets": [subset(pod, "addresses") for pod in ready]
                       + [subset(pod, "notReadyAddresses") for pod in not_ready]}


def claim(name, storage_class=CLASS, size="1Gi", namespace="default", **spec):
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"storageClassName": storage_class, "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": size}}, **spec},
            "status": {"phase": "Pending"}}


def released_volume(name, path):
    return {"metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": "devstack.local/hostpath"}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": CLASS,
                     "hostPath": {"path": str(path), "type": "Directory"},
                     "claimRef": {"namespace": "default", "name": "gone", "uid": "0"}},
            "status": {"phase": "Released"}}


# The helper


class Helper:
    def __init__(self, folder, *args):
        self.log_path, self.volumes = folder / "helper.log", folder / "volumes"
        command = [sys.executable, str(HELPER), *map(str, args), "--volumes", str(self.volumes),
                   "--listen-address", "127.0.0.1"]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self):
        return self.log_path.read_text()

    def lines(self, pattern):
        return re.findall(f"^.*{pattern}.*$", self.log(), re.M)

    def wait_log(self, pattern, count=1, timeout=10):
        def found():
            assert self.process.poll() is None, f"the helper exited ({self.process.returncode}):\n{self.log()}"
            return len(self.lines(pattern)) >= count
        try:
            wait_until(found, timeout, f"{count} log line(s) {pattern!r}")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.log()}") from None

    def wait_listening(self, port):
        self.wait_log(rf"listening on 127\.0\.0\.1:{port} for")

    def open_files(self):
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def assert_clean_log(self):
        """No traceback, no error of asyncio's (a task collected while pending, ...)."""
        text = self.log()
        for sign in ("Traceback", "Task was destroyed", "Exception in callback", "Unhandled exception", "Error on"):
            assert sign not in text, text


def write_kubeconfig(path, server, pki):
    def data(file):
        return base64.b64encode(file.read_bytes()).decode()
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {data(pki.ca)}
    server: {server}
  name: devstack
contexts:
- context:
    cluster: devstack
    user: admin
  name: admin@devstack
current-context: admin@devstack
preferences: {{}}
users:
- name: admin
  user:
    client-certificate-data: {data(pki.client_cert)}
    client-key-data: {data(pki.client_key)}
""")
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def stoppers():
    """Things to stop at the end of a test (backends, servers, processes)."""
    things = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, subprocess.Popen):
            stop_process_group(thing)
        else:
            thing.stop()


@pytest.fixture
def cluster(pki, tmp_path, stoppers):
    """(fake API server, helper started with --kubeconfig and synced with it)."""
    api = FakeKubeApi(pki).start()
    stoppers.append(api)
    helper = Helper(tmp_path, "--kubeconfig", write_kubeconfig(tmp_path / "admin.kubeconfig", api.url, pki))
    stoppers.append(helper.process)
    helper.wait_log(r"API server \S+ answers")
    yield api, helper
    helper.assert_clean_log()


def backends(stoppers, *names):
    found = [HttpBackend(name) for name in names]
    stoppers.extend(found)
    return found


def test_fake_api_requires_a_client_certificate_of_its_ca(pki):
    api = FakeKubeApi(pki).start()
    try:
        for cert in (None, (pki.other_cert, pki.other_key)):
            context = ssl.create_default_context(cafile=str(pki.ca))
            if cert:
                context.load_cert_chain(*cert)
            conn = http.client.HTTPSConnection("127.0.0.1", api.port, context=context, timeout=5)
            with pytest.raises((ssl.SSLError, ConnectionError)):
                conn.request("GET", "/api/v1/services")
                conn.getresponse()
            conn.close()
    finally:
        api.stop()


def test_requests_reach_every_ready_endpoint_and_never_a_not_ready_one(cluster, stoppers):
    api, helper = cluster
    a, b, not_ready, metrics, plain = backends(stoppers, "a", "b", "not-ready", "metrics", "plain")
    web_port, metrics_port, plain_port = free_port(), free_port(), free_port()
    api.apply("endpoints", endpoints("web", ready=[{"http": a.port, "metrics": metrics.port},
                                                   {"http": b.port, "metrics": metrics.port}],
                                     not_ready=[not_ready.port]))
    api.apply("services", service("web", ("http", web_port), ("metrics", metrics_port)))
    # One port, unnamed, in another namespace.
    api.apply("endpoints", endpoints("plain", ready=[plain.port], port_name="", namespace="tools"))
    api.apply("services", service("plain", ("", plain_port), namespace="tools"))
    for port, body in ((web_port, "a"), (web_port, "b"), (metrics_port, "metrics"), (plain_port, "plain")):
        helper.wait_listening(port)
        wait_serving(port, body)
    turned_away = len(helper.lines("closed$"))

    assert Counter(fetch(web_port) for _ in range(40)) == {"a": 20, "b": 20}  # round robin
    assert not_ready.hits == 0
    assert {fetch(metrics_port) for _ in range(4)} == {"metrics"}
    assert fetch(plain_port) == "plain"
    assert len(helper.lines("closed$")) == turned_away  # no connection without an endpoint


def test_endpoint_updates_and_connect_retries(cluster, stoppers):
    api, helper = cluster
    a, b, c = backends(stoppers, "a", "b", "c")
    port = free_port()
    api.apply("services", service("web", ("http", port)))
    api.apply("endpoints", endpoints("web", ready=[a.port, b.port]))
    helper.wait_listening(port)
    wait_serving(port, "a", "b")
    turned_away = len(helper.lines("closed$"))
    assert {fetch(port) for _ in range(4)} == {"a", "b"}

    # a leaves the endpoints: new connections go to b only.
    api.apply("endpoints", endpoints("web", ready=[b.port]))
    recent = []
    wait_until(lambda: recent.append(fetch(port)) or recent[-3:] == ["b"] * 3, what="b alone")
    hits_of_a = a.hits
    assert {fetch(port) for _ in range(20)} == {"b"}
    assert a.hits == hits_of_a

    # b refuses connections while still listed, c is ready too: each request retries on c.
    api.apply("endpoints", endpoints("web", ready=[b.port, c.port]))
    wait_until(lambda: fetch(port) == "c", what="c in the endpoints")
    b.stop()
    assert [fetch(port) for _ in range(20)] == ["c"] * 20

    # An address whose connect times out (2 s) is passed over as well.
    blackhole = Blackhole()
    stoppers.append(blackhole)
    api.apply("endpoints", endpoints("web", ready=[blackhole.port, c.port]))
    slow = []
    for _ in range(6):
        started = time.monotonic()
        assert fetch(port, timeout=10) == "c"
        slow.append(time.monotonic() - started)
        if slow[-1] > 1.5:  # this one tried the blackhole first
            break
    assert 1.5 < slow[-1] < 4, slow
    assert len(helper.lines("closed$")) == turned_away


def test_listeners_follow_the_service(cluster, stoppers):
    api, helper = cluster
    backend = EchoBackend()
    stoppers.append(backend)
    old_port, new_port = free_port(), free_port()
    api.apply("endpoints", endpoints("echo", ready=[backend.port]))
    api.apply("services", service("echo", ("http", old_port)))
    helper.wait_listening(old_port)
    wait_serving(old_port, b"HELLO", call=echo)
    assert echo(old_port, b"x" * 300_000) == b"X" * 300_000  # half-close both ways, more than one buffer

    # A connection made before the nodePort changes goes on after it.
    held = socket.create_connection(("127.0.0.1", old_port), timeout=5)
    held.sendall(b"before ")
    api.apply("services", service("echo", ("http", new_port)))
    helper.wait_listening(new_port)
    helper.wait_log(rf"stopped listening on 127\.0\.0\.1:{old_port} \(was default/echo:http\)")
    assert echo(new_port) == b"HELLO"
    assert refuses(old_port)
    held.sendall(b"after")
    held.shutdown(socket.SHUT_WR)
    assert held.makefile("rb").read() == b"BEFORE AFTER"
    held.close()

    # No longer a NodePort: no listener; a NodePort again, then deleted: none again.
    api.apply("services", service("echo", ("http", new_port), kind="ClusterIP"))
    helper.wait_log(rf"stopped listening on 127\.0\.0\.1:{new_port}")
    assert refuses(new_port)
    api.apply("services", service("echo", ("http", new_port)))
    helper.wait_log(rf"listening on 127\.0\.0\.1:{new_port} for", count=2)
    assert echo(new_port) == b"HELLO"
    api.remove("services", "echo")
    helper.wait_log(rf"stopped listening on 127\.0\.0\.1:{new_port}", count=2)
    assert refuses(new_port)
    # One line per change.
    assert len(helper.lines(r"listening on 127\.0\.0\.1:\d+ for")) == 3
    assert len(helper.lines("stopped listening")) == 3


def test_rolling_update_loses_no_request(cluster, stoppers):
    api, helper = cluster
    port = free_port()
    (old,) = backends(stoppers, "v0")
    api.apply("services", service("web", ("http", port)))
    api.apply("endpoints", endpoints("web", ready=[old.port]))
    helper.wait_listening(port)
    wait_serving(port, "v0")
    open_files = helper.open_files()

    done, failures, answers, lock = threading.Event(), [], Counter(), threading.Lock()

    def client():
        while not done.is_set():
            try:
                body = fetch(port)
            except Exception as error:  # every failure counts
                body = None
                with lock:
                    failures.append(repr(error))
            if body is not None:
                with lock:
                    answers[body] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for version in (1, 2):
            (new,) = backends(stoppers, f"v{version}")
            api.apply("endpoints", endpoints("web", ready=[old.port, new.port]))  # the new pod is ready
            wait_until(lambda new=new: new.hits >= 10, what=f"traffic on v{version}")
            api.apply("endpoints", endpoints("web", ready=[new.port]))  # the old one terminates
            time.sleep(0.5)  # its grace: requests under way finish
            old.stop()
            served = new.hits
            wait_until(lambda new=new, served=served: new.hits >= served + 50, what=f"v{version} alone")
            old = new
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=10)
    assert failures == []
    assert sum(answers.values()) > 200 and answers["v2"] >= 50, answers
    # Every connection closed on both sides: no socket left behind.
    wait_until(lambda: helper.open_files() <= open_files, what=f"{open_files} open files at most")


def test_no_ready_endpoint_closes_the_connection_and_logs_one_line(cluster, stoppers):
    api, helper = cluster
    (waiting,) = backends(stoppers, "not-ready")
    port, dead_port = free_port(), free_port()
    api.apply("services", service("web", ("http", port)))
    api.apply("endpoints", endpoints("web", not_ready=[waiting.port]))
    # Two ready addresses that refuse.
    api.apply("services", service("dead", ("http", dead_port)))
    api.apply("endpoints", endpoints("dead", ready=[free_port(), free_port()]))
    # Endpoints come in order: once a later one serves, these two have been seen.
    (probe,) = backends(stoppers, "probe")
    probe_port = free_port()
    api.apply("endpoints", endpoints("probe", ready=[probe.port]))
    api.apply("services", service("probe", ("http", probe_port)))
    for listening in (port, dead_port, probe_port):
        helper.wait_listening(listening)
    wait_serving(probe_port, "probe")

    for target, why in ((port, "no ready endpoint"), (dead_port, "none of 2 ready endpoints answered")):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", target), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                assert sock.recv(1024) == b""
            except ConnectionResetError:
                pass
        assert time.monotonic() - started < 1
        helper.wait_log(rf"connection to 127\.0\.0\.1:{target} \(\S+\): {why}, closed")
    assert waiting.hits == 0
    assert len(helper.lines(rf"127\.0\.0\.1:({port}|{dead_port}) .*closed$")) == 2


def test_provisioner(cluster, stoppers, tmp_path):
    api, helper = cluster
    volumes = helper.volumes
    assert stat.S_IMODE(volumes.stat().st_mode) == 0o700
    api.apply("persistentvolumeclaims", claim("other", storage_class="standard"))
    api.apply("persistentvolumeclaims", claim("bound", volumeName="pv-of-someone"))
    created = api.apply("persistentvolumeclaims", claim("data", size="2Gi", namespace="team"))
    uid = created["metadata"]["uid"]
    volume = wait_until(lambda: api.get("persistentvolumes", f"pvc-{uid}"), what="the PV")
    folder = volumes / f"team-data-{uid[:8]}"
    assert volume["spec"] == {
        "capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Delete", "storageClassName": CLASS, "volumeMode": "Filesystem",
        "hostPath": {"path": str(folder), "type": "Directory"},
        "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "team", "name": "data",
                     "uid": uid}}
    assert volume["metadata"]["annotations"] == {"pv.kubernetes.io/provisioned-by": "devstack.local/hostpath"}
    assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o777
    # The claims are handled in order: the two before were passed over.
    assert [pv["metadata"]["name"] for pv in api.items("persistentvolumes")] == [f"pvc-{uid}"]
    helper.wait_log(f"created PV pvc-{uid} ")

    # Never outside the volumes folder: elsewhere, by .., through a symlink, a file.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    os.symlink(outside, volumes / "link")
    (volumes / "file").write_text("not a folder")
    for name, path in (("elsewhere", outside), ("dotdot", f"{volumes}/../outside"), ("link", volumes / "link"),
                       ("file", volumes / "file"), ("root", "/")):
        api.apply("persistentvolumes", released_volume(name, path))
    for name in ("elsewhere", "dotdot", "link", "file", "root"):
        helper.wait_log(f"PV {name}: not reclaimed")

    # Its claim deleted, the PV is Released: its folder goes, then the PV.
    (folder / "sub").mkdir()
    (folder / "sub" / "model.pkl").write_text("weights")
    os.symlink(outside / "keep", folder / "sub" / "keep-link")
    api.remove("persistentvolumeclaims", "data", namespace="team")
    api.apply("persistentvolumes", {**volume, "status": {"phase": "Released"}})
    wait_until(lambda: api.get("persistentvolumes", f"pvc-{uid}") is None, what="the PV deleted")
    assert not folder.exists()
    helper.wait_log(f"deleted PV pvc-{uid} ")
    assert (outside / "keep").read_text() == "precious" and (volumes / "link").is_symlink()
    assert (volumes / "file").exists()
    assert sorted(pv["metadata"]["name"] for pv in api.items("persistentvolumes")) == \
        ["dotdot", "elsewhere", "file", "link", "root"]
    assert api.count("DELETE", "/api/v1/persistentvolumes/") == 1
    assert len(helper.lines("created PV")) == 1
    assert not helper.lines("cannot")


def test_provisioner_leaves_alone_what_is_not_its_own(cluster, tmp_path):
    api, helper = cluster
    volumes = helper.volumes
    # A claim whose PV exists already (the helper restarted between the two): 409, no error.
    uid = "0badc0de-0000-4000-8000-000000000001"
    existing = api.apply("persistentvolumes", {**released_volume(f"pvc-{uid}", volumes / "kept"),
                                               "status": {"phase": "Bound"}})
    api.apply("persistentvolumeclaims", {**claim("again"), "metadata": {"name": "again", "uid": uid}})
    wait_until(lambda: api.count("POST", "/api/v1/persistentvolumes") == 1, what="the PV asked for")
    # Released, but to be retained; or released by another provisioner; or of another class.
    (volumes / "retained").mkdir()
    retained = released_volume("retained", volumes / "retained")
    retained["spec"]["persistentVolumeReclaimPolicy"] = "Retain"
    foreign = released_volume("foreign", volumes / "retained")
    foreign["metadata"]["annotations"] = {"pv.kubernetes.io/provisioned-by": "kubernetes.io/host-path"}
    classless = released_volume("classless", volumes / "retained")
    classless["spec"]["storageClassName"] = "standard"
    for volume in (retained, foreign, classless):
        api.apply("persistentvolumes", volume)
    # PVs come in order: once a later Released one of its own is gone, those were passed over.
    (volumes / "last").mkdir()
    api.apply("persistentvolumes", released_volume("last", volumes / "last"))
    wait_until(lambda: api.get("persistentvolumes", "last") is None, what="the last PV deleted")
    assert (volumes / "retained").is_dir()
    assert sorted(pv["metadata"]["name"] for pv in api.items("persistentvolumes")) == \
        sorted(["classless", "foreign", "retained", f"pvc-{uid}"])
    assert api.get("persistentvolumes", f"pvc-{uid}")["metadata"]["uid"] == existing["metadata"]["uid"]
    assert not helper.lines("cannot") and not helper.lines("created PV")


def test_late_api_server_restarted_watches_and_sigterm(pki, tmp_path, stoppers):
    api_port = free_port()
    helper = Helper(tmp_path, "--api", f"https://127.0.0.1:{api_port}", "--ca", pki.ca, "--cert", pki.client_cert,
                    "--key", pki.client_key)
    stoppers.append(helper.process)
    helper.wait_log("ConnectionRefusedError")
    time.sleep(2)  # the API server comes up 2 s later
    api = FakeKubeApi(pki, port=api_port)
    (backend,) = backends(stoppers, "web")
    ports = [free_port() for _ in range(3)]
    api.apply("endpoints", endpoints("web", ready=[backend.port]))
    api.apply("services", service("web", ("http", ports[0])))
    api.start()
    stoppers.append(api)
    helper.wait_listening(ports[0])
    assert fetch(ports[0]) == "web"
    assert len(helper.lines("ConnectionRefusedError")) == 1  # one line for the outage, not one a second
    lists = api.count("GET", "/api/v1/services", watch=False)

    # The server ends the watches; a change made meanwhile comes with the next watch.
    api.close_watches(then=lambda: api.apply("services", service("web", ("http", ports[0]), ("extra", ports[1]))))
    helper.wait_listening(ports[1])
    assert api.count("GET", "/api/v1/services", watch=False) == lists  # resumed from its resourceVersion
    # ... with 410 Gone: the helper lists again.
    api.close_watches(gone=True, then=lambda: api.apply("services", service("web", ("http", ports[2]))))
    helper.wait_listening(ports[2])
    helper.wait_log(r"watch of services: resourceVersion \d+ too old \(410\): listing again")
    assert api.count("GET", "/api/v1/services", watch=False) == lists + 1
    wait_until(lambda: refuses(ports[0]) and refuses(ports[1]), what="the old ports closed")
    assert fetch(ports[2]) == "web"

    # SIGTERM, with a connection open through the proxy: exit 0 at once.
    echo_backend = EchoBackend()
    stoppers.append(echo_backend)
    api.apply("endpoints", endpoints("web", ready=[echo_backend.port]))
    wait_until(lambda: echo(ports[2]) == b"HELLO", what="the echo backend")
    held = socket.create_connection(("127.0.0.1", ports[2]), timeout=5)
    held.sendall(b"unfinished")
    wait_until(lambda: echo_backend.connections == 2, what="the held connection at the backend")
    started = time.monotonic()
    helper.process.send_signal(signal.SIGTERM)
    assert helper.process.wait(timeout=5) == 0
    assert time.monotonic() - started < 5
    assert refuses(ports[2])
    held.close()
    helper.assert_clean_log()
