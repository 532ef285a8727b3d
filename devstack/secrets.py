"""What the stack must never ship, generated into .secrets/ (git-ignored): the JupyterLab token, an
SSH key pair for you and the dev container's host key; with TEAM set, team mode's passwords and
keys too. Existing files are kept, so the token and keys stay the same across `make up`."""

import os
import secrets as random

from .proc import fail, have, run

# Garage's formats: a 32-byte RPC secret, key IDs "GK" + 12 bytes, secrets 32 bytes, in hex.
TEAM_SECRETS = {
    "postgres_password": lambda: random.token_hex(24),
    "garage_rpc_secret": lambda: random.token_hex(32),
    "garage_admin_token": lambda: random.token_hex(32),
    "s3_key_id": lambda: "GK" + random.token_hex(12),
    "s3_secret_key": lambda: random.token_hex(32),
    "mlflow_admin_password": lambda: random.token_hex(16),
    "mlflow_flask_secret": lambda: random.token_hex(32),
}
# What the containers' user reads: handed to it when make runs as root.
READ_BY_CONTAINERS = ("jupyter_token", "ssh_host_ed25519_key", "authorized_keys")


def write_new(path, text):
    """Creates path, mode 600, with text; never overwrites."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def keypair(path, comment):
    if not path.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def make_secrets(settings):
    folder = settings.secrets
    old_umask = os.umask(0o077)
    try:
        folder.mkdir(exist_ok=True)
        if not have("ssh-keygen"):
            fail("make-secrets: ssh-keygen not found: install the OpenSSH client")
        token = folder / "jupyter_token"
        if not token.exists() or token.stat().st_size == 0:
            write_new(token, random.token_hex(24))
        keypair(folder / "id_ed25519", "mlflow-devstack")
        keypair(folder / "ssh_host_ed25519_key", "mlflow-devstack dev container")
        # Append your own public keys to authorized_keys to log in with them too.
        authorized = folder / "authorized_keys"
        if not authorized.exists():
            write_new(authorized, (folder / "id_ed25519.pub").read_text())
        # The host key is known in advance, so ssh can verify it without a first-connection prompt.
        host_key = " ".join((folder / "ssh_host_ed25519_key.pub").read_text().split()[:2])
        port = settings["SSH_PORT"]
        write_new(folder / "known_hosts", f"[127.0.0.1]:{port} {host_key}\n[localhost]:{port} {host_key}\n")
        readable = list(READ_BY_CONTAINERS)
        if settings.team:
            for name, make in TEAM_SECRETS.items():
                path = folder / name
                if not path.exists() or path.stat().st_size == 0:
                    write_new(path, make())
            # The dev and serve containers log in as the admin with this (MLflow's ~/.mlflow/credentials).
            password = (folder / "mlflow_admin_password").read_text()
            write_new(folder / "mlflow_credentials", "[mlflow]\nmlflow_tracking_username = admin\n"
                      f"mlflow_tracking_password = {password}\n")
            readable += [*TEAM_SECRETS, "mlflow_credentials"]
        if settings.is_root:
            for name in readable:
                os.chown(folder / name, int(settings.app_uid), int(settings.app_gid))
    finally:
        os.umask(old_umask)
