"""A fake Kubernetes API server, for images/k8s/cluster_helper.py: HTTPS on 127.0.0.1 with a client
certificate required, the objects in memory, and just the calls the helper makes (v1 only):

  GET    /api/v1/{services,endpoints,persistentvolumeclaims,persistentvolumes}      a LIST
  GET    /api/v1/<resource>?watch=1&resourceVersion=RV                               a WATCH (chunked JSON lines)
  POST   /api/v1/persistentvolumes                                                   201, or 409 if it exists
  DELETE /api/v1/persistentvolumes/<name>                                            200, or 404

Every change gets the next resourceVersion and is kept in a history that watches replay from their
resourceVersion, as the real API server's watch cache does; one older than `expire_history()` left
is answered with an ERROR event of code 410, as kube-apiserver 1.20 does. The test changes objects
with apply()/remove(), and can end the open watches (close_watches()). Certificates: make_pki()."""

import copy
import json
import ssl
import subprocess
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RESOURCES = {  # name: (kind, namespaced)
    "services": ("Service", True),
    "endpoints": ("Endpoints", True),
    "persistentvolumeclaims": ("PersistentVolumeClaim", True),
    "persistentvolumes": ("PersistentVolume", False),
}


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_cert: Path  # a client certificate of another CA: must be refused
    other_key: Path


def make_pki(folder):
    """A throw-away CA, a server certificate for 127.0.0.1 and client certificates, by openssl."""
    folder = Path(folder)

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    def ca(name):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", folder / f"{name}.key", "-out", folder / f"{name}.crt", "-days", "2",
                "-subj", f"/CN={name}")

    def signed(name, subject, extensions, ca_name="ca"):
        (folder / f"{name}.ext").write_text(extensions)
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", folder / f"{name}.key", "-out", folder / f"{name}.csr", "-subj", subject)
        openssl("x509", "-req", "-in", folder / f"{name}.csr", "-CA", folder / f"{ca_name}.crt",
                "-CAkey", folder / f"{ca_name}.key", "-CAcreateserial", "-out", folder / f"{name}.crt",
                "-days", "2", "-extfile", folder / f"{name}.ext")

    ca("ca")
    ca("other-ca")
    signed("server", "/CN=kube-apiserver",
           "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    signed("admin", "/O=system:masters/CN=admin", "extendedKeyUsage=clientAuth\n")
    signed("other", "/CN=intruder", "extendedKeyUsage=clientAuth\n", ca_name="other-ca")
    return Pki(folder / "ca.crt", folder / "server.crt", folder / "server.key", folder / "admin.crt",
               folder / "admin.key", folder / "other.crt", folder / "other.key")


class FakeKubeApi:
    def __init__(self, pki, port=0):
        self.pki, self.port = pki, port
        self.lock = threading.Condition()
        self.objects = {resource: {} for resource in RESOURCES}  # resource: {(namespace, name): object}
        self.version = 100
        self.history = []  # (resourceVersion, resource, type, object)
        self.oldest = 0  # the oldest resourceVersion a watch may start from
        self.generation = 0  # close_watches() ends the watches of older generations
        self.gone_generations = set()  # ... with an ERROR 410 event for these
        self.requests = []  # (method, path with query) of each call
        self.stopping = False
        self.server = None

    # For the test

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def start(self):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.pki.ca))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        handler = type("Handler", (Handler,), {"api": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def stop(self):
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def apply(self, resource, obj):
        """Create or replace an object (namespace "default" if a namespaced one has none)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if RESOURCES[resource][1]:
            meta.setdefault("namespace", "default")
        key = (meta.get("namespace"), meta["name"])
        with self.lock:
            old = self.objects[resource].get(key)
            meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", "2024-01-01T00:00:00Z")
            self._record(resource, "MODIFIED" if old else "ADDED", obj)
            return copy.deepcopy(obj)

    def remove(self, resource, name, namespace="default"):
        with self.lock:
            key = (namespace if RESOURCES[resource][1] else None, name)
            obj = self.objects[resource].get(key)
            if obj is not None:
                self._record(resource, "DELETED", obj)
            return obj

    def get(self, resource, name, namespace="default"):
        with self.lock:
            obj = self.objects[resource].get((namespace if RESOURCES[resource][1] else None, name))
            return copy.deepcopy(obj)

    def items(self, resource):
        with self.lock:
            return copy.deepcopy(list(self.objects[resource].values()))

    def count(self, method, path_prefix, watch=None):
        """How many calls of method on paths starting with path_prefix (watches or not, if told)."""
        with self.lock:
            return sum(1 for m, path in self.requests if m == method and path.startswith(path_prefix)
                       and (watch is None or ("watch=" in path) == watch))

    def close_watches(self, gone=False, then=None):
        """End the open watches; with gone, with an ERROR 410 event, as if the watch cache had lost
        their resourceVersion (watches from before now are refused from then on). then(): changes
        made at the same moment, which the ended watches do not send."""
        with self.lock:
            if gone:
                self.gone_generations.add(self.generation)
            self.generation += 1
            if then is not None:
                then()
            if gone:
                self.oldest = self.version
            self.lock.notify_all()

    # The server's side

    def _record(self, resource, kind, obj):
        """Under the lock."""
        self.version += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.version)
        key = (meta.get("namespace"), meta["name"])
        if kind == "DELETED":
            self.objects[resource].pop(key, None)
        else:
            self.objects[resource][key] = obj
        self.history.append((self.version, resource, kind, copy.deepcopy(obj)))
        self.lock.notify_all()


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: FakeKubeApi

    def setup(self):
        self.request.settimeout(10)
        try:
            self.request.do_handshake()
        except (OSError, ssl.SSLError):
            self.handshake_failed = True
        else:
            self.handshake_failed = False
        super().setup()

    def handle(self):
        if not self.handshake_failed:
            super().handle()

    def log_message(self, *args):
        pass

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route(self, method):
        url = urllib.parse.urlsplit(self.path)
        query = {key: values[-1] for key, values in urllib.parse.parse_qs(url.query).items()}
        with self.api.lock:
            self.api.requests.append((method, self.path))
        parts = url.path.strip("/").split("/")
        if parts[:2] != ["api", "v1"] or len(parts) not in (3, 4) or parts[2] not in RESOURCES:
            return self.send_json(404, status(404, "NotFound", f"no such path {url.path}"))
        resource, name = parts[2], parts[3] if len(parts) == 4 else None
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        if method == "GET" and name is None and query.get("watch") in ("1", "true"):
            return self.watch(resource, query.get("resourceVersion"))
        if method == "GET" and name is None:
            with self.api.lock:
                items = copy.deepcopy(list(self.api.objects[resource].values()))
                version = self.api.version
            return self.send_json(200, {"kind": RESOURCES[resource][0] + "List", "apiVersion": "v1",
                                        "metadata": {"resourceVersion": str(version)}, "items": items})
        if resource != "persistentvolumes":
            return self.send_json(405, status(405, "MethodNotAllowed", "this fake only writes PVs"))
        if method == "POST" and name is None:
            return self.create(resource, body)
        if method == "DELETE" and name is not None:
            return self.delete(resource, name, body)
        return self.send_json(405, status(405, "MethodNotAllowed", f"{method} {url.path}"))

    def create(self, resource, obj):
        name = ((obj or {}).get("metadata") or {}).get("name")
        if not name or obj.get("kind") != RESOURCES[resource][0]:
            return self.send_json(422, status(422, "Invalid", "a named PersistentVolume is needed"))
        with self.api.lock:
            if (None, name) in self.api.objects[resource]:
                return self.send_json(409, status(409, "AlreadyExists", f'persistentvolumes "{name}" already exists'))
            obj = copy.deepcopy(obj)
            obj["metadata"]["uid"] = str(uuid.uuid4())
            obj["status"] = {"phase": "Pending"}
            self.api._record(resource, "ADDED", obj)
        return self.send_json(201, obj)

    def delete(self, resource, name, options):
        with self.api.lock:
            obj = self.api.objects[resource].get((None, name))
            if obj is None:
                return self.send_json(404, status(404, "NotFound", f'persistentvolumes "{name}" not found'))
            uid = ((options or {}).get("preconditions") or {}).get("uid")
            if uid and uid != obj["metadata"]["uid"]:
                return self.send_json(409, status(409, "Conflict", "precondition failed: uid"))
            self.api._record(resource, "DELETED", obj)
        return self.send_json(200, obj)

    def watch(self, resource, since):
        api = self.api
        with api.lock:
            generation = api.generation
            if since is None:  # no resourceVersion: the current objects first, as ADDED
                pending = [("ADDED", obj) for obj in api.objects[resource].values()]
                position = len(api.history)
            elif int(since) < api.oldest:
                pending = [("ERROR", status(410, "Expired", f"too old resource version: {since} ({api.oldest})"))]
                position = None
            else:
                position = next((i for i, entry in enumerate(api.history) if entry[0] > int(since)),
                                len(api.history))
                pending = []
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        try:
            while True:
                for kind, obj in pending:
                    line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                if position is None:
                    break
                with api.lock:
                    api.lock.wait_for(lambda position=position: api.stopping or api.generation != generation
                                      or len(api.history) > position, timeout=30)
                    if api.stopping:
                        return
                    if api.generation != generation:
                        position = None
                        pending = [("ERROR", status(410, "Expired", "too old resource version"))] \
                            if generation in api.gone_generations else []
                        continue
                    pending = [(kind, copy.deepcopy(obj)) for _, name, kind, obj in api.history[position:]
                               if name == resource]
                    position = len(api.history)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")
