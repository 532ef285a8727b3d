"""Running things: one-line failures, processes, Docker and Compose, readiness. Shared by every
command, so that the failure format, the container lookup and the health wait exist once."""

import os
import socket
import subprocess
import sys
import time


class Failure(Exception):
    """What a command prints to stderr (each line as given) before it exits with status."""

    def __init__(self, *lines, status=1):
        super().__init__("\n".join(lines))
        self.lines = lines
        self.status = status


def fail(message, *more, status=1):
    """Stops the command with `error: message` (and each further line indented under it)."""
    raise Failure(f"error: {message}", *(f"       {line}" for line in more), status=status)


def say(*words, file=None):
    print(*words, file=file or sys.stdout, flush=True)


def warn(text):
    print(text, file=sys.stderr, flush=True)


def have(program):
    from shutil import which
    return which(program) is not None


def run(command, settings=None, check=True, env=None, **kwargs):
    """Runs command with the stack's environment; a non-zero exit stops the command with that
    status (the program has said why)."""
    if env is None and settings is not None:
        env = settings.compose_env()
    try:
        result = subprocess.run(command, env=env, cwd=kwargs.pop("cwd", settings.root if settings else None),
                                **kwargs)
    except FileNotFoundError:
        fail(f"{command[0]} is not installed (or not on PATH): see the README's requirements")
    if check and result.returncode != 0:
        raise Failure(status=result.returncode)
    return result


def output(command, settings=None, **kwargs):
    """A command's standard output, stripped; stops the command when it fails."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    return run(command, settings, text=True, **kwargs).stdout.strip()


def quiet(command, settings=None, **kwargs):
    """True when the command succeeds; what it prints is dropped."""
    try:
        return run(command, settings, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   **kwargs).returncode == 0
    except Failure:
        return False


def compose(settings, *args, **kwargs):
    return run([*settings.compose, *args], settings, **kwargs)


def execute(command, settings):
    """Becomes the command (as a shell's exec would): its output, its exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, settings.compose_env())
    except FileNotFoundError:
        fail(f"{command[0]} is not installed (or not on PATH): see the README's requirements")


# --- containers -------------------------------------------------------------------------------------

def project_filter(settings):
    return f"label=com.docker.compose.project={settings.project_name}"


def container_of(settings, service, required=True):
    """The ID of the service's running container, found by Compose's labels (docker ps answers in
    milliseconds; `compose ps` takes most of a second); else a one-line hint, or None."""
    found = subprocess.run(["docker", "ps", "-q", "--filter", project_filter(settings),
                            "--filter", f"label=com.docker.compose.service={service}"],
                           capture_output=True, text=True, env=settings.compose_env())
    ids = found.stdout.split()
    if ids:
        return ids[0]
    if required:
        fail(f"the {service} container is not running: start the stack with 'make up'")
    return None


def state(container):
    """status/health of a container, as `running/healthy`; `missing/` when it is gone."""
    result = subprocess.run(["docker", "inspect", "-f",
                             "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}", container],
                            capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "missing/"


def wait_healthy(settings, timeout, services, echo=True):
    """Waits until every service's container reports healthy (its healthcheck in compose.yaml),
    watching them together. If one stops or the time runs out, shows its last log lines and fails."""
    pending = {service: container_of(settings, service) for service in services}
    if echo:
        print(f"Waiting for {' '.join(services)} ", end="", flush=True)
    deadline = time.monotonic() + timeout
    while pending:
        for service, container in list(pending.items()):
            now = state(container)
            reason = None
            if now == "running/healthy":
                del pending[service]
                if echo:
                    print(f"{service} healthy ", end="", flush=True)
                continue
            if not now.startswith(("running/", "created/", "restarting/")):
                reason = f"it stopped ({now})"
            elif time.monotonic() >= deadline:
                reason = f"not healthy in time ({now})"
            if reason:
                if echo:
                    print()
                warn(f"error: {service} did not become healthy: {reason}. Its last log lines:")
                subprocess.run([*settings.compose, "logs", "--tail=30", service], env=settings.compose_env(),
                               cwd=settings.root, stdout=sys.stderr)
                raise Failure(status=1)
        if pending:
            time.sleep(0.5)
    if echo:
        print(flush=True)


def listening(address, port, timeout=2.0):
    """True when a program accepts connections on address:port."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def publishes(container, port):
    result = subprocess.run(["docker", "port", container], capture_output=True, text=True)
    return any(line.rsplit(":", 1)[-1].strip() == str(port) for line in result.stdout.splitlines())


def check_ports(settings, entries, goal):
    """Fails with a clear message when another program already listens on a port the stack is about
    to publish. entries: (service, port variable). A port the service's own container publishes passes."""
    for service, variable in entries:
        port = settings.port(variable)
        container = container_of(settings, service, required=False)
        if container and publishes(container, port):
            continue
        if listening(settings.host_address, port):
            fail(f"port {port} on {settings.host_address}, needed by {service}, is already in use by another program.",
                 f"Stop that program, or choose a free port: make {goal} {variable}=<port> (or set it in .env).")


def check_project(settings):
    """Fails with the fix when this checkout's Compose project name is already used by another
    checkout (another folder of the same name): Compose would take over its containers."""
    found = subprocess.run(["docker", "ps", "-a", "--filter", project_filter(settings), "--format",
                            '{{.Label "com.docker.compose.project.working_dir"}}'],
                           capture_output=True, text=True)
    if found.returncode != 0:
        fail("the Docker daemon does not answer: start Docker (Docker Desktop, or sudo systemctl start docker), "
             "then run 'make doctor'")
    here = os.path.realpath(settings.root)
    name = settings.project_name
    for folder in sorted(set(found.stdout.split("\n"))):
        if folder and os.path.realpath(folder) != here:
            fail(f"the Compose project '{name}' already belongs to the checkout in {folder}.",
                 f"Give this one its own name and ports in .env (COMPOSE_PROJECT_NAME={name}-2,",
                 f"TRACKING_PORT, JUPYTER_PORT, SSH_PORT, SERVE_PORT), or stop the other: make -C {folder} down")
