"""The node's stand-in for kube-proxy (NodePort services only) and a volume provisioner.

The one-node cluster of `make k8s-up` runs no kube-proxy (it would rewrite the iptables of the
machine's Docker) and no cluster DNS, so Services do not route. This program, Python 3.11 stdlib
only, watches the API server and:

* NodePort proxy: for every Service of `type: NodePort`, for each TCP port of it with a nodePort,
  listens on <--listen-address>:<nodePort> and forwards each connection to a READY address of the
  Service's Endpoints (the subset port of the same name; a single unnamed port matches too), round
  robin, connecting with a 2 s timeout and trying the next ready address, each once, when a
  connect fails. Endpoints are looked up at each connection, from the newest Endpoints object the
  watch delivered: a pod leaves them when it starts terminating, so a rolling update costs no
  request here. A connection that finds no endpoint is closed (one log line).
* Provisioner for the StorageClass --class: a Pending PersistentVolumeClaim of that class with no
  volumeName gets a directory <--volumes>/<namespace>-<claim>-<uid[:8]> (mode 0777: pods run as
  users of any uid; the volumes folder itself is root's, 0700) and a PersistentVolume
  `pvc-<claim uid>` (hostPath, claimRef to the claim, reclaim policy Delete, annotation
  pv.kubernetes.io/provisioned-by: devstack.local/hostpath), which the controller manager then
  binds. Such a PV once Released (its claim deleted) loses its directory, then is deleted. A path
  not directly inside the volumes folder, or a symlink, is never removed (the PV stays).

Command line (the node's entry script runs the first form):

    cluster_helper.py --kubeconfig FILE --volumes DIR [--listen-address 0.0.0.0] [--class devstack-local]
    cluster_helper.py --api https://127.0.0.1:6443 --ca CA.crt --cert CLIENT.crt --key CLIENT.key --volumes DIR

  --kubeconfig FILE   a kubeconfig with one cluster (server, certificate-authority[-data]) and one
                      user (client-certificate[-data], client-key[-data]); read by a small reader
                      of that subset of YAML (or JSON). Relative file names are relative to FILE.
  --api URL, --ca FILE, --cert FILE, --key FILE
                      the API server's URL, the CA that signed its certificate, the client
                      certificate and key (PEM files): each replaces the kubeconfig's value, and
                      all four together make --kubeconfig unnecessary.
  --volumes DIR       the folder of the provisioned volumes (created, mode 0700).
  --listen-address A  where NodePorts listen (default 0.0.0.0).
  --class NAME        the StorageClass provisioned (default devstack-local).

API calls: LIST then WATCH (chunked JSON lines, resourceVersion from the list or the last event,
bookmarks asked for) of services, endpoints, persistentvolumeclaims and persistentvolumes of all
namespaces; POST and DELETE of persistentvolumes. A watch that ends is resumed from its last
resourceVersion; 410 Gone (as a status or as an ERROR event) re-lists. While the API server (or the
credentials files) cannot be reached, every call is retried each second; one line is logged per
outage, never a crash. SIGTERM/SIGINT close the listeners and exit 0.
"""

import argparse
import asyncio
import base64
import codecs
import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import ssl
import stat
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

log = logging.getLogger("cluster-helper")

PROVISIONER = "devstack.local/hostpath"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
CONNECT_TIMEOUT = 2.0  # to one endpoint address
REQUEST_TIMEOUT = 15.0  # one API call, connection to last byte
RETRY = 1.0  # API server unreachable: the next try
WORK_RETRY = 5.0  # a listener that could not bind, a volume call that failed: the next try
WATCH_SECONDS = (240, 360)  # the server ends each watch after a random time in this range


# ---------------------------------------------------------------------------------------------
# Credentials


class ConfigError(Exception):
    pass


KUBECONFIG_KEYS = {"server", "certificate-authority", "certificate-authority-data", "client-certificate",
                   "client-certificate-data", "client-key", "client-key-data"}


def read_kubeconfig(path):
    """The KUBECONFIG_KEYS of a one-cluster, one-user kubeconfig (YAML of `key: value` lines, or JSON)."""
    text = Path(path).read_text()
    if text.lstrip().startswith("{"):
        return _kubeconfig_from_json(json.loads(text))
    found = {}
    for line in text.splitlines():
        match = re.match(r"^\s*(?:-\s+)*([A-Za-z][\w-]*)\s*:\s*(.*?)\s*$", line)
        if not match or match[1] not in KUBECONFIG_KEYS:
            continue
        key, value = match[1], match[2]
        if len(value) >= 2 and value[0] in "\"'" and value[-1] == value[0]:
            value = value[1:-1]
        else:
            value = re.sub(r"\s+#.*$", "", value)
        if not value or value[0] in "|>&*!":
            raise ConfigError(f"{path}: {key}: only plain one-line values are understood")
        if found.get(key, value) != value:
            raise ConfigError(f"{path}: more than one {key}: give a kubeconfig of one cluster and one user")
        found[key] = value
    return found


def _kubeconfig_from_json(doc):
    def named(section, name):
        entries = doc.get(section) or []
        for entry in entries:
            if entry.get("name") == name:
                return entry
        return entries[0] if entries else {}

    context = named("contexts", doc.get("current-context")).get("context") or {}
    cluster = named("clusters", context.get("cluster")).get("cluster") or {}
    user = named("users", context.get("user")).get("user") or {}
    return {key: value for key, value in {**cluster, **user}.items() if key in KUBECONFIG_KEYS}


def load_credentials(args):
    """(API server URL, ssl.SSLContext) from --kubeconfig and/or --api/--ca/--cert/--key."""
    config, base = {}, Path.cwd()
    if args.kubeconfig:
        config = read_kubeconfig(args.kubeconfig)
        base = Path(args.kubeconfig).resolve().parent

    def pem(flag, key):
        """PEM bytes of a flag's file, else the kubeconfig's base64 data or file; None if none."""
        if flag:
            return Path(flag).read_bytes()
        if config.get(f"{key}-data"):
            try:
                return base64.b64decode(config[f"{key}-data"], validate=True)
            except ValueError as error:
                raise ConfigError(f"{key}-data is not base64: {error}") from None
        if config.get(key):
            return (base / config[key]).read_bytes()
        return None

    server = args.api or config.get("server")
    ca, cert, key = pem(args.ca, "certificate-authority"), pem(args.cert, "client-certificate"), \
        pem(args.key, "client-key")
    missing = [name for name, value in (("server URL", server), ("CA certificate", ca),
                                        ("client certificate", cert), ("client key", key)) if not value]
    if missing:
        raise ConfigError(f"no {', '.join(missing)}: give --kubeconfig, or --api, --ca, --cert and --key")
    if urllib.parse.urlsplit(server).scheme != "https":
        raise ConfigError(f"the API server URL must be https://: {server}")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca.decode("ascii", "replace"))
    context.set_alpn_protocols(["http/1.1"])
    # load_cert_chain reads files only: the PEMs go through a private temporary folder.
    with tempfile.TemporaryDirectory() as folder:
        cert_file, key_file = Path(folder, "client.crt"), Path(folder, "client.key")
        cert_file.write_bytes(cert)
        key_file.touch(mode=0o600)
        key_file.write_bytes(key)
        context.load_cert_chain(cert_file, key_file)
    return server.rstrip("/"), context


# ---------------------------------------------------------------------------------------------
# The API server: one HTTPS connection per call (HTTP/1.1, Connection: close)


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Gone(Exception):
    """410: the resourceVersion is too old to watch from; list again."""


class Health:
    """One log line when the API server stops answering, one when it answers again."""

    def __init__(self, server):
        self.server, self.problem, self.ever_ok = server, None, False

    def ok(self):
        if self.problem is not None or not self.ever_ok:
            log.info("API server %s answers", self.server)
        self.problem, self.ever_ok = None, True

    def failed(self, error):
        text = describe(error)
        if text != self.problem:
            log.info("API server %s: %s; retrying every %gs", self.server, text, RETRY)
        self.problem = text


def describe(error):
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class Body:
    """The body of a response: chunked, of a Content-Length, or up to the end of the connection."""

    def __init__(self, reader, headers):
        self.reader, self.done = reader, False
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self.remaining = int(length) if length is not None and not self.chunked else None

    async def read(self):
        """The next piece of the body; b"" at its end."""
        if self.done:
            return b""
        reader = self.reader
        if self.chunked:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                raise ConnectionError("connection closed inside a chunked body")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readline()).strip():  # trailers
                    pass
                self.done = True
                return b""
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            return data
        if self.remaining is not None:
            if self.remaining == 0:
                self.done = True
                return b""
            data = await reader.read(min(self.remaining, 1 << 16))
            if not data:
                raise ConnectionError("connection closed inside a body")
            self.remaining -= len(data)
            return data
        data = await reader.read(1 << 16)
        self.done = not data
        return data


class Api:
    def __init__(self, server, context):
        url = urllib.parse.urlsplit(server)
        self.server, self.context = server, context
        self.host, self.port = url.hostname, url.port or 443
        self.prefix = url.path.rstrip("/")

    async def _open(self, method, path, body=None):
        """(reader, writer, status, headers) of a request sent."""
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.context,
                                                       server_hostname=self.host, limit=1 << 20)
        try:
            data = json.dumps(body).encode() if body is not None else b""
            host = f"[{self.host}]" if ":" in self.host else self.host
            head = (f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {host}:{self.port}\r\n"
                    "User-Agent: devstack-cluster-helper\r\nAccept: application/json\r\nConnection: close\r\n")
            if body is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            writer.write(head.encode() + b"\r\n" + data)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.decode("latin-1").split(None, 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise ConnectionError(f"not an HTTP answer: {status_line[:80]!r}")
            headers = {}
            while (line := await reader.readline()).strip():
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if not line:
                raise ConnectionError("connection closed inside the response headers")
            return reader, writer, int(parts[1]), headers
        except BaseException:
            close(writer)
            raise

    async def request(self, method, path, body=None):
        """(status, decoded JSON body or None) of one call, within REQUEST_TIMEOUT."""
        async def call():
            reader, writer, status, headers = await self._open(method, path, body)
            try:
                content, chunks = Body(reader, headers), []
                while piece := await content.read():
                    chunks.append(piece)
                data = b"".join(chunks)
            finally:
                close(writer)
            try:
                return status, json.loads(data) if data.strip() else None
            except ValueError:
                return status, {"message": data[:200].decode("utf-8", "replace")}
        return await asyncio.wait_for(call(), REQUEST_TIMEOUT)

    async def watch(self, path, resource_version, on_event, on_open):
        """Watch path from resource_version, calling on_open() once it is under way and
        on_event(type, object) for each change; the last resourceVersion seen when the server ends
        the watch. Raises Gone for 410."""
        seconds = random.randint(*WATCH_SECONDS)
        query = urllib.parse.urlencode({"watch": "1", "resourceVersion": resource_version,
                                        "allowWatchBookmarks": "true", "timeoutSeconds": seconds})
        reader, writer, status, headers = await asyncio.wait_for(self._open("GET", f"{path}?{query}"),
                                                                 REQUEST_TIMEOUT)
        try:
            content = Body(reader, headers)
            if status != 200:
                data = b""
                while len(data) < 1 << 16 and (piece := await asyncio.wait_for(content.read(), REQUEST_TIMEOUT)):
                    data += piece
                if status == 410:
                    raise Gone(data[:200].decode("utf-8", "replace"))
                raise ApiError(status, status_message(data))
            on_open()
            decoder, text = codecs.getincrementaldecoder("utf-8")(), ""
            json_decoder = json.JSONDecoder()
            while True:
                # The server ends the watch after `seconds`: silence much longer is a dead connection.
                piece = await asyncio.wait_for(content.read(), seconds + 60)
                if not piece:
                    return resource_version
                text += decoder.decode(piece)
                while text := text.lstrip():
                    try:
                        event, end = json_decoder.raw_decode(text)
                    except ValueError:
                        if not text.startswith("{") or len(text) > 64 << 20:
                            raise ConnectionError(f"not a watch event: {text[:80]!r}") from None
                        break  # the rest of the event is in the next piece
                    text = text[end:]
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(obj.get("message", ""))
                        raise ApiError(obj.get("code"), obj.get("message", ""))
                    resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        on_event(kind, obj)
        finally:
            close(writer)


def status_message(data):
    try:
        return json.loads(data).get("message") or data[:200].decode("utf-8", "replace")
    except (ValueError, AttributeError):
        return data[:200].decode("utf-8", "replace")


def close(writer):
    with contextlib.suppress(Exception):
        writer.close()


class Watcher:
    """LIST, then WATCH from the list's resourceVersion, for ever; on_sync(items) after each list,
    on_event(type, object) for each change."""

    def __init__(self, api, health, resource, on_sync, on_event):
        self.api, self.health, self.resource = api, health, resource
        self.path = f"/api/v1/{resource}"
        self.on_sync, self.on_event = on_sync, on_event

    async def run(self):
        version = None
        while True:
            try:
                if version is None:
                    status, body = await self.api.request("GET", self.path)
                    if status != 200:
                        raise ApiError(status, (body or {}).get("message", ""))
                    self.health.ok()
                    version = body["metadata"]["resourceVersion"]
                    self.on_sync(body.get("items") or [])
                started, self.events = time.monotonic(), 0
                version = await self.api.watch(self.path, version, self.event, self.health.ok)
                if not self.events and time.monotonic() - started < 1:
                    await asyncio.sleep(RETRY)  # a server that ends watches at once: not a busy loop
            except Gone:
                log.info("watch of %s: resourceVersion %s too old (410): listing again", self.resource, version)
                version = None
            except (OSError, EOFError, TimeoutError, ApiError, ValueError, KeyError, TypeError) as error:
                # ApiError of a watch (an ERROR event): list again, as for an error of the list.
                if isinstance(error, ApiError):
                    version = None
                self.health.failed(error)
                await asyncio.sleep(RETRY)

    def event(self, kind, obj):
        self.events += 1
        try:
            self.on_event(kind, obj)
        except Exception:  # an object of an unexpected form: the others still count
            log.exception("%s: cannot handle a %s event", self.resource, kind)


def key_of(obj):
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class Store(dict):
    """The objects of one resource by (namespace, name), kept by a Watcher."""

    def sync(self, items):
        self.clear()
        self.update((key_of(obj), obj) for obj in items)

    def event(self, kind, obj):
        if kind == "DELETED":
            self.pop(key_of(obj), None)
        else:
            self[key_of(obj)] = obj


class Worker:
    """Runs fn(key) (async; True when done) once per kick, one run per key at a time; a key kicked
    while it runs runs again; one that is not done is retried after WORK_RETRY or the next kick."""

    def __init__(self, fn):
        self.fn, self.kicks, self.tasks = fn, {}, {}

    def kick(self, key):
        if key in self.kicks:
            self.kicks[key].set()
            return
        kicked = self.kicks[key] = asyncio.Event()
        kicked.set()
        self.tasks[key] = asyncio.create_task(self._run(key, kicked))

    async def _run(self, key, kicked):
        try:
            while True:
                kicked.clear()
                try:
                    done = await self.fn(key)
                except Exception:
                    log.exception("unexpected error on %s", key)
                    done = False
                if done and not kicked.is_set():
                    return
                if not done:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(kicked.wait(), WORK_RETRY)
        finally:
            del self.kicks[key], self.tasks[key]


# ---------------------------------------------------------------------------------------------
# NodePort proxy


class Listener:
    def __init__(self, port, target):
        self.port, self.target, self.server, self.next = port, target, None, 0


def target_name(target):
    namespace, name, port_name = target
    return f"{namespace}/{name}" + (f":{port_name}" if port_name else "")


class NodePorts:
    def __init__(self, listen_address):
        self.address = listen_address
        self.services, self.endpoints = Store(), Store()
        self.listeners, self.failed = {}, {}
        self.endpoints_listed = False  # no listener before: it would turn away connections it can serve
        # The loop holds tasks weakly, and asyncio's streams let go of a connection's task once its
        # client socket is closed: one half-closed could be collected with its backend socket open.
        self.connections = set()
        self.worker = Worker(self.sync_listeners)

    def services_synced(self, items):
        self.services.sync(items)
        self.worker.kick("listeners")

    def service_event(self, kind, obj):
        self.services.event(kind, obj)
        self.worker.kick("listeners")

    def endpoints_synced(self, items):
        self.endpoints.sync(items)
        if not self.endpoints_listed:
            self.endpoints_listed = True
            self.worker.kick("listeners")

    def wanted(self):
        """{nodePort: (namespace, service, port name)} of the NodePort services."""
        wanted = {}
        for (namespace, name), service in sorted(self.services.items()):
            spec = service.get("spec") or {}
            if spec.get("type") != "NodePort":
                continue
            for port in spec.get("ports") or []:
                if (port.get("protocol") or "TCP") == "TCP" and port.get("nodePort"):
                    wanted.setdefault(int(port["nodePort"]), (namespace, name, port.get("name") or ""))
        return wanted

    async def sync_listeners(self, _key):
        if not self.endpoints_listed:
            return True  # kicked again then
        wanted = self.wanted()
        for port in [port for port in self.listeners if port not in wanted]:
            listener = self.listeners.pop(port)
            listener.server.close()  # connections already accepted go on
            log.info("stopped listening on %s:%d (was %s)", self.address, port, target_name(listener.target))
        for port in [port for port in self.failed if port not in wanted]:
            del self.failed[port]
        for port, target in wanted.items():
            listener = self.listeners.get(port)
            if listener is not None:
                if listener.target != target:
                    log.info("%s:%d now serves %s (was %s)", self.address, port, target_name(target),
                             target_name(listener.target))
                    listener.target = target
                continue
            listener = Listener(port, target)
            try:
                listener.server = await asyncio.start_server(
                    lambda reader, writer, listener=listener: self.connection(listener, reader, writer),
                    self.address, port, reuse_address=True, backlog=511)
            except OSError as error:
                if self.failed.get(port) != str(error):
                    log.info("cannot listen on %s:%d for %s: %s (retrying every %gs)", self.address, port,
                             target_name(target), error, WORK_RETRY)
                self.failed[port] = str(error)
                continue
            self.failed.pop(port, None)
            self.listeners[port] = listener
            log.info("listening on %s:%d for %s", self.address, port, target_name(target))
        return not self.failed

    def ready_addresses(self, target):
        """[(ip, port)] of the ready addresses of a service port, from the newest Endpoints."""
        namespace, name, port_name = target
        found = []
        for subset in (self.endpoints.get((namespace, name)) or {}).get("subsets") or []:
            ports = [port for port in subset.get("ports") or [] if (port.get("protocol") or "TCP") == "TCP"]
            port = next((port for port in ports if (port.get("name") or "") == port_name), None)
            if port is None and len(ports) == 1 and not ports[0].get("name"):
                port = ports[0]
            if port is None or not port.get("port"):
                continue
            found += [(address["ip"], int(port["port"])) for address in subset.get("addresses") or []
                      if address.get("ip")]
        return found

    async def connection(self, listener, client_reader, client_writer):
        task = asyncio.current_task()
        self.connections.add(task)
        try:
            target = listener.target
            candidates = self.ready_addresses(target)
            backend = None
            if candidates:
                start = listener.next % len(candidates)
                listener.next += 1
                for ip, port in candidates[start:] + candidates[:start]:
                    try:
                        backend = await asyncio.wait_for(asyncio.open_connection(ip, port), CONNECT_TIMEOUT)
                        break
                    except (OSError, TimeoutError):
                        continue
            if backend is None:
                why = f"none of {len(candidates)} ready endpoints answered" if candidates else "no ready endpoint"
                log.info("connection to %s:%d (%s): %s, closed", self.address, listener.port,
                         target_name(target), why)
                client_writer.close()
                return
            await splice(client_reader, client_writer, *backend)
        except Exception as error:  # a client gone before its connection was handled, and the like
            log.debug("connection on %d: %s", listener.port, describe(error))
            close(client_writer)
        finally:
            self.connections.discard(task)

    def close(self):
        for listener in self.listeners.values():
            listener.server.close()
        if self.listeners:
            log.info("closed the listeners on %s", ", ".join(map(str, sorted(self.listeners))))
        self.listeners.clear()


async def splice(client_reader, client_writer, backend_reader, backend_writer):
    """Copy both ways; an end of one direction is passed on (half-close); both closed at the end,
    at once if either side fails."""
    async def copy(reader, writer):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    tasks = [asyncio.create_task(copy(client_reader, backend_writer)),
             asyncio.create_task(copy(backend_reader, client_writer))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = any(not task.cancelled() and task.exception() is not None for task in done)
        if failed:  # a reset: the other direction would wait for ever
            for writer in (client_writer, backend_writer):
                writer.transport.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for task in tasks:
            task.cancel()
        close(client_writer)
        close(backend_writer)


# ---------------------------------------------------------------------------------------------
# Provisioner


def in_thread(fn, *args):
    """fn(*args) in a daemon thread (exiting never waits for a long rmtree: the next start redoes it)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def run():
        try:
            result, error = fn(*args), None
        except BaseException as failure:
            result, error = None, failure

        def settle():
            if not future.done():
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting
            loop.call_soon_threadsafe(settle)

    threading.Thread(target=run, daemon=True).start()
    return future


class Refused(Exception):
    pass


class Provisioner:
    def __init__(self, api, volumes, storage_class):
        self.api, self.volumes, self.storage_class = api, volumes, storage_class
        self.claims, self.pvs = Store(), Store()
        self.provision_worker, self.reclaim_worker = Worker(self.provision), Worker(self.reclaim)
        self.refused = set()

    # Claims

    def wants_volume(self, claim):
        spec, meta = claim.get("spec") or {}, claim.get("metadata") or {}
        storage_class = spec.get("storageClassName") or \
            (meta.get("annotations") or {}).get("volume.beta.kubernetes.io/storage-class")
        return ((claim.get("status") or {}).get("phase") or "Pending") == "Pending" \
            and storage_class == self.storage_class and not spec.get("volumeName") \
            and not meta.get("deletionTimestamp") and bool(meta.get("uid"))

    def claims_synced(self, items):
        self.claims.sync(items)
        for key, claim in self.claims.items():
            if self.wants_volume(claim):
                self.provision_worker.kick(key)

    def claim_event(self, kind, obj):
        self.claims.event(kind, obj)
        if kind != "DELETED" and self.wants_volume(obj):
            self.provision_worker.kick(key_of(obj))

    async def provision(self, key):
        claim = self.claims.get(key)
        if claim is None or not self.wants_volume(claim):
            return True
        namespace, name = key
        uid, spec = claim["metadata"]["uid"], claim.get("spec") or {}
        size = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
        if not size or (spec.get("volumeMode") or "Filesystem") != "Filesystem":
            if ("claim", key, uid) not in self.refused:
                self.refused.add(("claim", key, uid))
                log.info("claim %s/%s: not provisioned (%s)", namespace, name,
                         "no requested storage" if not size else "only volumeMode Filesystem is provisioned")
            return True
        folder = os.path.join(self.volumes, f"{namespace}-{name}-{uid[:8]}")
        try:
            await in_thread(make_volume_folder, self.volumes, os.path.basename(folder))
        except OSError as error:
            log.info("claim %s/%s: cannot create %s: %s", namespace, name, folder, error)
            return False
        volume = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"pvc-{uid}", "annotations": {PROVISIONED_BY: PROVISIONER}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": self.storage_class,
                "volumeMode": "Filesystem",
                "hostPath": {"path": folder, "type": "Directory"},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace,
                             "name": name, "uid": uid},
            },
        }
        try:
            status, body = await self.api.request("POST", "/api/v1/persistentvolumes", volume)
        except (OSError, ssl.SSLError, TimeoutError, EOFError) as error:
            log.info("claim %s/%s: cannot create PV pvc-%s: %s", namespace, name, uid, describe(error))
            return False
        if status in (200, 201):
            log.info("created PV pvc-%s (%s, %s) for claim %s/%s", uid, size, folder, namespace, name)
        elif status != 409:  # 409: made already
            log.info("claim %s/%s: cannot create PV pvc-%s: HTTP %d %s", namespace, name, uid, status,
                     (body or {}).get("message", ""))
            return False
        return True

    # Volumes

    def should_reclaim(self, volume):
        spec, meta = volume.get("spec") or {}, volume.get("metadata") or {}
        return spec.get("storageClassName") == self.storage_class \
            and (meta.get("annotations") or {}).get(PROVISIONED_BY) == PROVISIONER \
            and (volume.get("status") or {}).get("phase") == "Released" \
            and spec.get("persistentVolumeReclaimPolicy") == "Delete"

    def volumes_synced(self, items):
        self.pvs.sync(items)
        for key, volume in self.pvs.items():
            if self.should_reclaim(volume):
                self.reclaim_worker.kick(key)

    def volume_event(self, kind, obj):
        self.pvs.event(kind, obj)
        if kind != "DELETED" and self.should_reclaim(obj):
            self.reclaim_worker.kick(key_of(obj))

    async def reclaim(self, key):
        volume = self.pvs.get(key)
        if volume is None or not self.should_reclaim(volume):
            return True
        meta = volume["metadata"]
        name, uid = meta.get("name"), meta.get("uid")
        path = ((volume.get("spec") or {}).get("hostPath") or {}).get("path")
        try:
            removed = await in_thread(remove_volume_folder, self.volumes, path)
        except Refused as why:
            if (name, uid) not in self.refused:
                self.refused.add((name, uid))
                log.info("PV %s: not reclaimed, its path %r %s", name, path, why)
            return True
        except OSError as error:
            log.info("PV %s: cannot remove %s: %s", name, path, error)
            return False
        if removed:
            log.info("PV %s: removed %s", name, path)
        if meta.get("deletionTimestamp"):
            return True  # deleted already; waits for its finalizers
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}} if uid else None
        try:
            status, body = await self.api.request("DELETE", f"/api/v1/persistentvolumes/{name}", options)
        except (OSError, ssl.SSLError, TimeoutError, EOFError) as error:
            log.info("PV %s: cannot delete: %s", name, describe(error))
            return False
        if status in (200, 202):
            log.info("deleted PV %s (claim %s/%s released)", name,
                     *(((volume.get("spec") or {}).get("claimRef") or {}).get(field, "?")
                       for field in ("namespace", "name")))
        elif status not in (404, 409):  # gone already, or a new PV of that name (not ours to delete)
            log.info("PV %s: cannot delete: HTTP %d %s", name, status, (body or {}).get("message", ""))
            return False
        return True


def make_volume_folder(volumes, name):
    """volumes/name, a directory of mode 0777 (made if missing, never through a symlink)."""
    folder = os.open(volumes, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o777, dir_fd=folder)
        try:
            volume = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
        except OSError as error:
            raise OSError(f"{os.path.join(volumes, name)} exists and is not a directory: {error}") from None
        try:
            os.fchmod(volume, 0o777)
        finally:
            os.close(volume)
    finally:
        os.close(folder)


def remove_volume_folder(volumes, path):
    """Remove path if it is a directory directly inside volumes (True), or is missing (False); raise
    Refused for any other path, a symlink included (its target is never touched)."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise Refused("is not an absolute path")
    path = path.rstrip("/")
    parent, name = os.path.split(path)
    if os.path.normpath(path) != path or parent != volumes or name in ("", ".", ".."):
        raise Refused(f"is not a directory directly inside {volumes}")
    folder = os.open(volumes, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            mode = os.lstat(name, dir_fd=folder).st_mode
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(mode):
            raise Refused("is a symlink" if stat.S_ISLNK(mode) else "is not a directory")
        shutil.rmtree(name, dir_fd=folder)  # fd-based: never follows a symlink inside
        return True
    finally:
        os.close(folder)


# ---------------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", help="kubeconfig of one cluster and one user (client certificate)")
    parser.add_argument("--api", help="API server URL, e.g. https://127.0.0.1:6443 (replaces the kubeconfig's)")
    parser.add_argument("--ca", help="PEM file of the CA of the API server's certificate")
    parser.add_argument("--cert", help="PEM file of the client certificate")
    parser.add_argument("--key", help="PEM file of the client key")
    parser.add_argument("--volumes", required=True, help="folder of the provisioned volumes")
    parser.add_argument("--listen-address", default="0.0.0.0", help="address of the NodePorts (0.0.0.0)")
    parser.add_argument("--class", dest="storage_class", default="devstack-local",
                        help="StorageClass to provision (devstack-local)")
    args = parser.parse_args(argv)
    if not args.kubeconfig and not (args.api and args.ca and args.cert and args.key):
        parser.error("give --kubeconfig, or all of --api, --ca, --cert and --key")
    return args


async def main(args):
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def exception_handler(loop, context):
        # At exit asyncio.run cancels the connections' tasks, and 3.11's start_server then reports
        # each as an error: not one.
        if not isinstance(context.get("exception"), asyncio.CancelledError):
            loop.default_exception_handler(context)
    loop.set_exception_handler(exception_handler)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def stopped_within(seconds):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        return stop.is_set()

    volumes = os.path.normpath(os.path.abspath(args.volumes))
    os.makedirs(volumes, mode=0o700, exist_ok=True)
    os.chmod(volumes, 0o700)

    problem = None
    while True:  # the entry script may still be writing the credentials
        try:
            server, context = load_credentials(args)
            break
        except (OSError, ValueError, ConfigError, ssl.SSLError) as error:
            if describe(error) != problem:
                log.info("cannot read the credentials: %s; retrying every %gs", describe(error), RETRY)
            problem = describe(error)
        if await stopped_within(RETRY):
            return 0

    api, health = Api(server, context), Health(server)
    node_ports = NodePorts(args.listen_address)
    provisioner = Provisioner(api, volumes, args.storage_class)
    watchers = [
        Watcher(api, health, "services", node_ports.services_synced, node_ports.service_event),
        Watcher(api, health, "endpoints", node_ports.endpoints_synced, node_ports.endpoints.event),
        Watcher(api, health, "persistentvolumeclaims", provisioner.claims_synced, provisioner.claim_event),
        Watcher(api, health, "persistentvolumes", provisioner.volumes_synced, provisioner.volume_event),
    ]
    log.info("NodePorts on %s, volumes of class %s in %s, API server %s", args.listen_address,
             args.storage_class, volumes, server)
    tasks = [asyncio.create_task(watcher.run()) for watcher in watchers]
    await stop.wait()
    log.info("stopping")
    node_ports.close()
    for task in tasks:
        task.cancel()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s cluster-helper: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
    sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))
