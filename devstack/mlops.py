"""The MLOps loop from the host: train, serve, project, sweep, promote, package, predict. Each runs
in the stack's containers: `docker exec` into the running dev container where its speed matters
(train, promote, predict), the one-off Compose services of the "jobs" profile otherwise."""

import os
import re
import shutil
import subprocess
import tempfile
import threading

from . import stack
from .proc import Failure, check_ports, compose, container_of, fail, output, quiet, run, say, wait_healthy, warn

SERVE_SECONDS = 300
# Docker's reference grammar (lower-case path components, optional registry and tag).
COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REFERENCE = re.compile(rf"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{COMPONENT}(?:/{COMPONENT})*"
                       r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?")
PROJECT_BASE = "mlflow-devstack-project-base"


def in_dev(settings, *command, **kwargs):
    """Runs command in the dev container: `docker exec` on the container found by Compose's labels,
    much faster than `compose exec` (and some Compose v2 releases report a failed command's exit
    status as 0 there)."""
    return run(["docker", "exec", container_of(settings, "dev"), *command], settings, **kwargs)


def job(settings, service, *command, options=(), **kwargs):
    """A one-off container of a "jobs" service (compose.yaml), removed when it ends."""
    return compose(settings, "--profile", "jobs", "run", "--rm", "--no-deps", "-T", *options, service, *command,
                   **kwargs)


def train(settings):
    in_dev(settings, "python", "train.py", "--alpha", settings["ALPHA"], "--l1-ratio", settings["L1"])
    say(f"Compare the runs: {stack.ui_url(settings)}")


def promote(settings):
    version = ["--version", settings["VERSION"]] if settings["VERSION"] else []
    force = ["--force"] if settings["FORCE"] == "yes" else []
    in_dev(settings, "python", "promote.py", "--alias", settings["ALIAS"], "--tolerance",
           settings["PROMOTE_TOLERANCE"], *version, *force)


def predict(settings):
    if not settings["URL"]:
        in_dev(settings, "python", "predict.py")
        return
    # Any server this machine reaches (a packaged image, say): from a one-off container on the host's network.
    job(settings, "predict-url", options=("-e", f"SCORING_URL={settings['URL']}"))


def serve(settings):
    """Serves MODEL (else MODEL_URI). A model that cannot be loaded leaves a running server as it was:
    the new model is resolved, downloaded and loaded in a one-off container first."""
    container_of(settings, "tracking")
    check_ports(settings, [("serve", "SERVE_PORT")], "serve")
    model = settings.model
    running = container_of(settings, "serve", required=False)
    if running:
        checked = job(settings, "serve", "start", "--model-uri", model, "--check", check=False,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Its own last word, not only the exit status: Compose v2 (2.40) reports 0 for this failed run.
        if checked.returncode != 0 or "can be served" not in checked.stdout:
            lines = [line for line in checked.stderr.splitlines() if line.strip()]
            reason = next((line for line in lines if line.startswith("serve: cannot load")), lines[-1] if lines
                          else f"the check of {model} exited with {checked.returncode}")
            reason = reason[len("serve: "):] if reason.startswith("serve: ") else reason
            raise Failure(f"error: {reason} (the model server that was running is unchanged)", status=1)
    env = settings.compose_env()
    env["MODEL_URI"] = model
    run([*settings.compose, "--profile", "serve", "up", "-d", "--no-deps", "--force-recreate", "serve"], env=env,
        cwd=settings.root)
    wait_healthy(settings, SERVE_SECONDS, ["serve"])
    logs = subprocess.run(["docker", "logs", container_of(settings, "serve")], capture_output=True, text=True)
    served = [line for line in (logs.stdout + logs.stderr).splitlines() if line.startswith("serve: serving")]
    if served:
        say(served[0])
    say(f"Scoring at {settings.url('SERVE_PORT')}/invocations: try 'make predict'")


def project(settings):
    """The MLproject in its own container, as the tutorial runs it: the host's mlflow (the test venv's)
    builds the run's image on the stack's dev image, on the stack's network."""
    container_of(settings, "tracking")
    from .develop import ensure_venv
    venv = ensure_venv(settings)
    # The project's docker_env names this tag: MLflow builds the run's image on the stack's dev image.
    run(["docker", "tag", settings.image("dev"), PROJECT_BASE], settings)
    env = settings.compose_env()
    env["MLFLOW_TRACKING_URI"] = settings.ui_base
    # The run goes to wine-quality (--experiment-name): an experiment id or name in the shell would make
    # mlflow run refuse both ("Specify only one of 'experiment-name' or 'experiment-id'").
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    extra = []
    if settings.team:
        # The host's mlflow and the run's container log in as the admin (devstack/team-login.env holds
        # the names only: docker copies their values from this environment).
        env.update(MLFLOW_TRACKING_USERNAME="admin",
                   MLFLOW_TRACKING_PASSWORD=stack.secret(settings, "mlflow_admin_password"))
        extra = ["-A", f"env-file={settings.root / 'devstack' / 'team-login.env'}"]
    version = ["--version", settings["PROJECT_VERSION"]] if settings["PROJECT_VERSION"] else []
    run([str(venv / "bin" / "mlflow"), "run", settings["PROJECT"], *version, "--build-image",
         "--experiment-name", "wine-quality", "-P", f"alpha={settings['ALPHA']}", "-P", f"l1_ratio={settings['L1']}",
         "-A", f"network={settings.network}", *extra], env=env, cwd=settings.root)


def sweep(settings):
    """Grid search: the dev container checks the grid and plans (workspace/sweep.py plan); PARALLEL
    one-off worker containers (the sweep-worker service) run their share of the grid points; then the
    dev container prints the table by rmse (and promotes, with PROMOTE). Workers are removed whatever
    happens."""
    dev = container_of(settings, "dev")
    running = output(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={settings.project_name}",
                      "--filter", "label=com.docker.compose.service=sweep-worker"], settings)
    if running:
        fail("a sweep of this stack is already running (docker ps --filter "
             "label=com.docker.compose.service=sweep-worker)")
    grid = ["--parallel", settings.parallel]
    if settings["ALPHAS"]:
        grid += ["--alphas", settings["ALPHAS"]]
    if settings["L1_RATIOS"]:
        grid += ["--l1-ratios", settings["L1_RATIOS"]]
    plan = run(["docker", "exec", dev, "python", "sweep.py", "plan", *grid], settings, stdout=subprocess.PIPE,
               text=True).stdout
    study = next(line[len("study: "):] for line in plan.splitlines() if line.startswith("study: "))
    shares = [line[len("points: "):] for line in plan.splitlines() if line.startswith("points: ") and line[8:].strip()]
    say(f"sweep: study {study}, {len(shares)} worker containers")
    workers = []
    for points in shares:
        command = [*settings.compose, "--profile", "jobs", "run", "--rm", "--no-deps", "-T", "sweep-worker",
                   "python", "sweep.py", "work", "--study", study, "--points", points]
        workers.append(subprocess.Popen(command, cwd=settings.root, env=settings.compose_env(),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, errors="replace"))
    tails = [[] for _ in workers]

    def keep_tail(index, worker):
        for line in worker.stdout:
            tails[index] = (tails[index] + [line.rstrip("\n")])[-3:]

    readers = [threading.Thread(target=keep_tail, args=(index, worker), daemon=True)
               for index, worker in enumerate(workers)]
    for reader in readers:
        reader.start()
    try:
        for index, worker in enumerate(workers):
            status = worker.wait()
            readers[index].join()
            if status != 0:
                warn(f"sweep: worker {index + 1} exited with {status}; its last lines:")
                for line in tails[index]:
                    warn(f"  {line}")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            worker.wait()
    promote_flag = ["--promote"] if settings["PROMOTE"] else []
    run(["docker", "exec", "-e", f"PROMOTE_TOLERANCE={settings['PROMOTE_TOLERANCE']}", dev, "python", "sweep.py",
         "report", "--study", study, *promote_flag], settings)


def package(settings):
    """Fetches MODEL through the running stack's tracking server, then builds IMAGE (default
    <name>:<version>) from the serve image with the model baked in: no registry, no network, no tracking
    server needed to build or run it. Leaves nothing behind when it fails."""
    image = settings["IMAGE"]
    if image and not REFERENCE.fullmatch(image):
        fail(f"IMAGE={image} is not a name Docker accepts: use lower-case letters, digits and . _ -, and an "
             "optional :tag (e.g. IMAGE=wine-quality:3)")
    container_of(settings, "tracking")
    serve_image = settings.image("serve")
    if not quiet(["docker", "image", "inspect", serve_image]):
        fail(f"the serve image {serve_image} is missing: run 'make build'")
    work = tempfile.mkdtemp(prefix="package-model.")
    try:
        # The download runs as the containers' user: you, or APP_UID when you are root.
        if settings.is_root:
            os.chown(work, int(settings.app_uid), int(settings.app_gid))
        picked = job(settings, "model-download", "start", "--model-uri", settings.model, "--download-to", "/out/model",
                     options=("-v", f"{work}:/out"), stdout=subprocess.PIPE, text=True).stdout.strip()
        picked = picked.splitlines()[-1] if picked else ""
        if not picked:  # the download said why on stderr (Compose v2 may still report 0)
            raise Failure(status=1)
        resolved = picked.split(" ")[0]  # models:/NAME/VERSION (how it was picked)
        if not image:
            name_version = resolved[len("models:/"):] if resolved.startswith("models:/") else resolved
            name, _, version = name_version.rpartition("/")
            image = f"{re.sub(r'[^a-z0-9._-]', '-', name.lower())}:{version}"
            if not REFERENCE.fullmatch(image):
                image = f"model:{version}"
        run(["docker", "build", "-q", "-f", str(settings.root / "images" / "package" / "Dockerfile"),
             "--build-arg", f"SERVE_IMAGE={serve_image}", "--build-arg", f"MODEL_URI={resolved}", "-t", image, work],
            settings, stdout=subprocess.DEVNULL)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"Built {image}: {picked}, with the stack's scoring server baked in.")
    say(f"Run it (no tracking server needed): docker run --rm -p 127.0.0.1:5001:8080 {image}")
    return image, resolved

