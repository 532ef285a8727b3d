"""The images: extra CA certificates, the base (pulled, or built from Debian packages), Garage
(pulled, or built from crates.io once per machine), the stack's build and when it is needed."""

import fcntl
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .proc import Failure, fail, have, quiet, run, warn

CA_FOLDER = Path("images") / "ca-certificates"
BUILT_FROM = ("images", "requirements", ".dockerignore")
PULL_SECONDS = 300
# pip's words when a TLS-inspecting proxy's CA is not trusted in the build.
TLS_FAILURES = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "SSLCertVerificationError")
NOTED = []  # the note on EXTRA_CA_CERTS is said once per command


def sync_ca_certificates(settings):
    """images/ca-certificates/ holds exactly the *.crt files of EXTRA_CA_CERTS (a file or a folder;
    empty: none). Unchanged files are left alone, so the images are not rebuilt for nothing."""
    target = settings.root / CA_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    source = settings["EXTRA_CA_CERTS"]
    wanted = {}
    if source and os.path.isdir(source):
        wanted = {name: os.path.join(source, name) for name in sorted(os.listdir(source)) if name.endswith(".crt")}
    elif source:
        if not os.path.isfile(source):
            fail(f"EXTRA_CA_CERTS={source} is neither a file nor a folder")
        wanted = {"extra.crt": source}
    for name, path in wanted.items():
        destination = target / name
        if not destination.exists() or not filecmp.cmp(path, destination, shallow=False):
            shutil.copyfile(path, destination)
    for existing in target.glob("*.crt"):
        if existing.name not in wanted:
            existing.unlink()
    if "EXTRA_CA_CERTS" in settings.overridden and source and not NOTED:
        dotenv = settings.root / ".env"
        from .settings import read_dotenv
        if read_dotenv(dotenv).get("EXTRA_CA_CERTS", "") != source:
            warn(f"note: EXTRA_CA_CERTS={source} comes from your shell, not .env: a shell without it builds "
                 "other images. Put it in .env to keep them alike.")
            NOTED.append(source)


def image_present(name):
    return quiet(["docker", "image", "inspect", name])


def pull(name):
    try:
        return subprocess.run(["docker", "pull", name], stdout=sys.stderr, timeout=PULL_SECONDS).returncode == 0
    except subprocess.TimeoutExpired:
        warn(f"base-image: docker pull {name} gave no answer in {PULL_SECONDS} s")
        return False


@contextmanager
def machine_lock(name, folder=None):
    """Held by one make of this user at a time on this machine: a second waits until the first is done."""
    folder = folder or os.environ.get("TMPDIR") or "/tmp"
    with open(os.path.join(folder, f"mlflow-devstack-{name}-{os.getuid()}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_image(settings):
    """Makes sure a base image to build on is here and returns its name: BASE_IMAGE if it is here or
    can be pulled; else LOCAL_BASE_IMAGE, built from Debian packages when missing (needs root and
    debootstrap), so that `make up` works on machines with no registry. Messages go to stderr."""
    wanted, local = settings["BASE_IMAGE"], settings["LOCAL_BASE_IMAGE"]
    if image_present(wanted):
        return wanted
    if image_present(local):
        warn(f"base-image: {wanted} is not here; building on {local} (made from Debian packages)")
        return local
    # One pull or build at a time per machine (CI builds Garage and Spark in the background, and
    # both need the base): a second caller waits for the first, then finds its image.
    with machine_lock("base-image"):
        if image_present(local):
            return local
        if image_present(wanted) or pull(wanted):
            return wanted
        if settings.is_root and have("debootstrap"):
            warn(f"base-image: cannot pull {wanted} (no registry?): building {local} from Debian packages "
                 "with debootstrap instead (a minute or two, once)")
            build_base(local)
            return local
    fix = ("Run: sudo make base-image   then: make up" if have("debootstrap")
           else "Run: sudo apt-get install debootstrap && sudo make base-image   then: make up")
    fail(f"cannot pull {wanted}, and building a base from Debian packages needs root and debootstrap.", fix)


def build_base(image, suite="bookworm", packages=("python3", "python3-venv", "ca-certificates")):
    """Builds a stand-in for python:3.11-slim-<suite> from Debian packages alone (debootstrap, then
    `docker import`), for machines that cannot pull from a registry. The stack's Dockerfiles only
    rely on what both images share: Debian, python3 with venv, ca-certificates and apt."""
    mirror = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
    security = os.environ.get("DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
    if os.getuid() != 0:
        fail("base-image: debootstrap needs root; run 'sudo make base-image'")
    if not have("debootstrap"):
        fail("base-image: debootstrap is not installed (Debian/Ubuntu: apt-get install debootstrap)")
    rootfs = tempfile.mkdtemp()
    try:
        run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, rootfs, mirror],
            stdout=sys.stderr)
        # Same suites as the official image, so `apt-get install` in the Dockerfiles gets security fixes.
        security_suite = f"{suite}-security" if suite != "buster" else "buster/updates"
        Path(rootfs, "etc/apt/sources.list").write_text(
            f"deb {mirror} {suite} main\ndeb {mirror} {suite}-updates main\ndeb {security} {security_suite} main\n")
        run(["chroot", rootfs, "apt-get", "clean"])
        for leftover in ("var/lib/apt/lists", "var/cache/apt"):
            for path in Path(rootfs, leftover).glob("*"):
                if path.is_file() and (leftover.endswith("lists") or path.suffix == ".bin"):
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", rootfs, "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["docker", "import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
                                   "-", image], stdin=tar.stdout, stdout=sys.stderr)
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            fail(f"base-image: could not import {image} into Docker")
        warn(f"base-image: built {image}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def garage_image(settings, base, lock_folder=None):
    """Makes sure an image holding Garage's binary (at /garage) is here and returns its name, as
    base_image does for the base: GARAGE_IMAGE if it is here or can be pulled; else
    LOCAL_GARAGE_IMAGE, built from crates.io when missing, once per machine."""
    wanted, local = settings["GARAGE_IMAGE"], settings["LOCAL_GARAGE_IMAGE"]
    if image_present(wanted):
        return wanted
    if image_present(local):
        return local
    if pull(wanted):
        return wanted
    # One build per machine: a second caller waits for the first, then finds its image.
    with machine_lock("garage-image", lock_folder):
        if image_present(local):
            return local
        version = local.rsplit(":", 1)[-1]
        warn(f"garage-image: cannot pull {wanted} (no registry?): building Garage {version} from crates.io "
             f"as {local} instead (once per machine; about 15 min on 2 cores)")
        started = time.monotonic()
        run(["docker", "build", "-f", str(settings.root / "images" / "garage" / "Dockerfile"),
             "--network", settings["BUILD_NETWORK"], "--build-arg", f"BASE_IMAGE={base}",
             "--build-arg", f"GARAGE_VERSION={version}", "-t", local, str(settings.root)], settings, stdout=sys.stderr)
        warn(f"garage-image: built {local} in {time.monotonic() - started:.0f} s")
    return local


def tls_failure(log):
    """The one line to print when a build log shows pip failing TLS verification, else None."""
    if any(marker in log for marker in TLS_FAILURES):
        return ("error: the image build could not verify TLS to the package index (CERTIFICATE_VERIFY_FAILED): "
                "a proxy inspects TLS here. Set EXTRA_CA_CERTS in .env to its CA certificate or folder "
                "(e.g. EXTRA_CA_CERTS=/usr/local/share/ca-certificates), then run the command again.")
    return None


def streamed(command, settings, env, out=None):
    """Runs command with its output shown as it comes (on stdout, or out); returns (exit status, the output)."""
    process = subprocess.Popen(command, cwd=settings.root, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace")
    seen = []
    for line in process.stdout:
        (out or sys.stdout).write(line)
        seen.append(line)
    return process.wait(), "".join(seen)


def docker_build(settings, arguments):
    """docker build ARGUMENTS, its output on stderr; a failure stops the command (with the one line on
    TLS when pip could not verify it)."""
    status, log = streamed(["docker", "build", *arguments], settings, settings.compose_env(), out=sys.stderr)
    if status != 0:
        line = tls_failure(log)
        raise Failure(*([line] if line else []), status=status)


def build(settings):
    """Builds the stack's images (tracking, dev, serve; team mode's too) on a registry-free base if
    need be."""
    sync_ca_certificates(settings)
    from .secrets import make_secrets
    make_secrets(settings)
    env = settings.compose_env()
    env["BASE_IMAGE"] = base_image(settings)
    if settings.team:
        env["GARAGE_IMAGE"] = garage_image(settings, env["BASE_IMAGE"])
    # The jobs profile holds the batch image's service (the other jobs reuse the images above).
    status, log = streamed([*settings.compose, "--profile", "serve", "--profile", "jobs", "build"], settings, env)
    if status != 0:
        line = tls_failure(log)
        raise Failure(*([line] if line else []), status=status)
    settings.images_stamp.parent.mkdir(parents=True, exist_ok=True)
    settings.images_stamp.touch()


def newer_than(settings, stamp):
    """True when a file the images are built from changed after stamp."""
    limit = stamp.stat().st_mtime
    for name in BUILT_FROM:
        path = settings.root / name
        if path.is_file():
            if path.stat().st_mtime > limit:
                return True
            continue
        for folder, _, files in os.walk(path):
            if os.stat(folder).st_mtime > limit:
                return True
            for file in files:
                if os.stat(os.path.join(folder, file)).st_mtime > limit:
                    return True
    return False


def ensure_images(settings):
    """Builds only when an image is missing or a file it is built from changed since the last build."""
    sync_ca_certificates(settings)
    stamp = settings.images_stamp
    if not stamp.exists() or not quiet(["docker", "image", "inspect", *settings.images]) or newer_than(settings, stamp):
        build(settings)



def spark_image(settings):
    """Makes sure the Spark image (images/spark/Dockerfile: PySpark, a JDK and the batch job) is here and
    current; returns its name. It is built apart from the stack's other images (it is large, and CI
    builds it in the background while the others are used), once per machine and version, and again
    when a file it is built from changed. A second caller waits for the first."""
    image = settings.image("spark")
    stamp = settings.root / ".build" / f"spark-{settings.image_tag}"
    sync_ca_certificates(settings)
    with machine_lock("spark-image"):
        if image_present(image) and stamp.exists() and not newer_than(settings, stamp):
            return image
        base = base_image(settings)
        warn(f"spark-image: building {image} (PySpark and a JDK: a few minutes the first time)")
        started = time.monotonic()
        docker_build(settings, ["-f", str(settings.root / "images" / "spark" / "Dockerfile"),
                                "--network", settings["BUILD_NETWORK"], "--build-arg", f"BASE_IMAGE={base}",
                                "--build-arg", f"APP_UID={settings.app_uid}", "--build-arg",
                                f"APP_GID={settings.app_gid}", "-t", image, str(settings.root)])
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
        warn(f"spark-image: built {image} in {time.monotonic() - started:.0f} s")
    return image


def make_spark_image(settings):
    """`make spark-image`: only the Spark image (CI builds it in the background)."""
    spark_image(settings)


def make_base_image(settings):
    """`make base-image`: the registry-free base, built from Debian packages (root)."""
    build_base(settings["LOCAL_BASE_IMAGE"])


def make_garage_image(settings):
    """`make garage-image`: only the step that gets Garage (pulled, else built once per machine)."""
    sync_ca_certificates(settings)
    garage_image(settings, base_image(settings))
