"""`make batch`: scores a CSV or Parquet file with a registered model, in a one-off container of
the stack (images/batch/batch_score.py), on one machine or on Apache Spark (ENGINE=spark).

The host owns the output: it makes a temporary file beside OUT, hands only that file to the
container (and IN, read-only), and renames it to OUT when the job has said it is done. A job that
fails, or is stopped with Ctrl-C, leaves neither OUT nor the temporary file; OUT is the user's.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from . import images
from .proc import Failure, container_of, fail, say
from .stack import HANDED_OVER

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
ENGINES = ("python", "spark")
MASTER = re.compile(r"local(\[(\*|[1-9][0-9]*)\])?|spark://[A-Za-z0-9._-]+:[0-9]{1,5}")
STACK_MASTER = "spark://spark-master:7077"
USAGE = "make batch IN=<file.csv|.parquet> OUT=<file.parquet|.csv> [MODEL=models:/wine-quality/3] [ENGINE=spark]"
IN_PATH, OUT_FOLDER = "/data/in", "/data/out"
CONNECT_SECONDS = 5


def file_format(given, what):
    extension = Path(given).suffix.lower()
    if extension not in FORMATS:
        fail(f"{what}={given}: unknown format '{extension or '(no extension)'}': use a .csv or .parquet file", status=2)
    return FORMATS[extension]


def checked_paths(settings):
    """(IN, OUT) as absolute paths, or one line saying what is wrong with them; nothing is written."""
    if not settings["IN"] or not settings["OUT"]:
        fail(f"IN and OUT are needed: {USAGE}", status=2)
    # Relative to the checkout, where make runs them (make -C too).
    source, out = (Path(os.path.abspath(settings.root / os.path.expanduser(settings[name]))) for name in ("IN", "OUT"))
    file_format(settings["IN"], "IN")
    file_format(settings["OUT"], "OUT")
    if not source.is_file():
        fail(f"IN={settings['IN']}: no such file" + (" (it is a folder)" if source.is_dir() else ""), status=2)
    if not os.access(source, os.R_OK):
        fail(f"IN={settings['IN']} cannot be read: no permission", status=2)
    if source.stat().st_size == 0:
        fail(f"IN={settings['IN']} is empty", status=2)
    if out.is_dir():
        fail(f"OUT={settings['OUT']} is a folder: name a file, e.g. OUT={settings['OUT'].rstrip('/')}/scored.parquet",
             status=2)
    if not out.parent.is_dir():
        fail(f"OUT={settings['OUT']} cannot be written: {out.parent} does not exist", status=2)
    if not os.access(out.parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        fail(f"OUT={settings['OUT']} cannot be written: no permission in {out.parent}", status=2)
    return source, out


def spark_master(settings):
    """SPARK_MASTER as given (local[*], local[N] or spark://host:port); empty: the stack's cluster when
    it runs (make up SPARK=1), else local[*] inside the job's container."""
    master = settings["SPARK_MASTER"]
    if master:
        if not MASTER.fullmatch(master):
            fail(f"SPARK_MASTER={master}: use local[*], local[N] or spark://host:port", status=2)
        if master.startswith("spark://") and master != STACK_MASTER:
            # The job reaches a cluster of the user's from this machine's network: so can we, at once.
            host, port = master[len("spark://"):].rsplit(":", 1)
            try:
                socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
            except OSError as error:
                reason = "no answer" if isinstance(error, socket.timeout) else (error.strerror or str(error))
                fail(f"cannot reach SPARK_MASTER {master} within {CONNECT_SECONDS} s: {reason}", status=1)
        return master
    return STACK_MASTER if container_of(settings, "spark-master", required=False) else "local[*]"


def sweep_leftovers(out):
    """Temporary files of earlier `make batch` runs on this OUT whose process is gone (killed with -9)."""
    for path in out.parent.glob(f".{out.name}.batch-*.tmp"):
        pid = path.name[len(f".{out.name}.batch-"):-len(".tmp")]
        if pid.isdigit() and not alive(int(pid)):
            path.unlink(missing_ok=True)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def owner_as_root(settings, out):
    """Who OUT belongs to when make runs as root: the containers' user inside workspace/ and mlruns/
    (which make up hands over to them, so JupyterLab can change it), root anywhere else."""
    if any(out.is_relative_to(settings.root / name) for name in HANDED_OVER):
        return int(settings.app_uid), int(settings.app_gid)
    return 0, 0


def batch(settings):
    source, out = checked_paths(settings)
    engine = settings["ENGINE"] or "python"
    if engine not in ENGINES:
        fail(f"ENGINE={engine}: use ENGINE=spark, or leave it out for one Python process", status=2)
    master = spark_master(settings) if engine == "spark" else None
    container_of(settings, "tracking")
    command = ["python", "/opt/scoring/batch_score.py", "--model-uri", settings.model, "--direct",
               "--in", f"{IN_PATH}/{source.name}", "--out", f"{OUT_FOLDER}/{out.name}",
               "--progress", "bar" if sys.stderr.isatty() else "lines", "--engine", engine]
    service = "batch"
    if master:
        command += ["--spark-master", master]
        # A cluster of the user's reaches the driver through this machine's network, not the stack's.
        service = "batch-spark" if master.startswith("local") or master == STACK_MASTER else "batch-spark-host"
        images.spark_image(settings)
    else:
        images.ensure_images(settings)
    sweep_leftovers(out)
    temporary = out.parent / f".{out.name}.batch-{os.getpid()}.tmp"
    name = f"{settings.project_name}-batch-{os.getpid()}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(descriptor)
    try:
        if settings.is_root:  # the job writes as the containers' user
            os.chown(temporary, int(settings.app_uid), int(settings.app_gid))
        mounts = ["-v", f"{source}:{IN_PATH}/{source.name}:ro", "-v", f"{temporary}:{OUT_FOLDER}/{out.name}"]
        summary = run_job(settings, service, name, mounts, command)
        if settings.is_root:
            os.chown(temporary, *owner_as_root(settings, out))
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
    say(summary)
    say(f"Wrote {out}")


def run_job(settings, service, name, mounts, command):
    """Runs the job in a one-off container; its progress (stderr) shows as it comes. Returns its
    summary line. Trusts the job's own last word, not only the exit status (Compose v2 has reported
    0 for a failed `run`). Ctrl-C or SIGTERM removes the container before the error goes up."""
    argv = [*settings.compose, "--profile", "jobs", "run", "--rm", "--no-deps", "-T", "--name", name, *mounts,
            service, *command]
    previous = signal.signal(signal.SIGTERM, interrupt)
    job = subprocess.Popen(argv, cwd=settings.root, env=settings.compose_env(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    errors = Chatterless(job.stderr)
    errors.start()
    summary = None
    try:
        for line in job.stdout:
            if line.startswith("batch: scored "):
                summary = line.rstrip("\n")
            else:
                sys.stdout.write(line)
        status = job.wait()
    except KeyboardInterrupt:
        subprocess.run(["docker", "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        job.wait()
        errors.finish(job.returncode)
        raise Failure("error: make batch was interrupted: nothing written", status=130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    errors.finish(status)
    if status != 0 or summary is None:
        raise Failure(status=status or 1)  # the job said why on stderr
    return summary


def interrupt(signum, frame):
    raise KeyboardInterrupt


class Chatterless(threading.Thread):
    """Passes the job's stderr (its progress, its one-line errors) through as it comes, without what
    Compose v1 adds to it: `Creating <name> ... done`, and the container's exit status on a line of
    its own at the end. Progress redrawn with \r shows at once."""

    CHATTER = re.compile(r"^(\x1b\[[0-9;]*[A-Za-z])*(Creating|Starting|Recreating) \S+ \.\.\.")

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.held = stream, []

    def run(self):
        pending = ""
        for character in iter(lambda: self.stream.read(1), ""):  # a few lines a second: one at a time is cheap
            pending += character
            if character in "\r\n":
                self.emit(pending)
                pending = ""
        if pending:
            self.emit(pending)

    def emit(self, text):
        body = text.strip("\r\n")
        if self.CHATTER.match(body) or (not body and text.endswith("\n")):  # Compose v2 adds an empty line
            return
        if body.isdigit():  # Compose v1's exit status, if nothing follows it
            self.held.append(text)
            return
        for held in self.held:
            sys.stderr.write(held)
        self.held = []
        sys.stderr.write(text)
        sys.stderr.flush()

    def finish(self, status):
        self.join(timeout=10)
        for held in self.held:
            if held.strip() != str(status):
                sys.stderr.write(held)
        sys.stderr.flush()
