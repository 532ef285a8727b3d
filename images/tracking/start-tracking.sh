#!/bin/sh
# Starts `mlflow server` on the mlruns volume. Host names it accepts: the service name (for the other
# containers), localhost and 127.0.0.1 on any port (for the host), plus TRACKING_ALLOWED_HOSTS.
set -eu
allowed_hosts="tracking,tracking:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*"
if [ -n "${TRACKING_ALLOWED_HOSTS:-}" ]; then
  allowed_hosts="$allowed_hosts,$TRACKING_ALLOWED_HOSTS"
fi
if [ ! -w "$MLRUNS" ]; then
  echo "tracking: $MLRUNS (./mlruns on the host) is not writable by uid $(id -u); see README, Troubleshooting" >&2
  exit 1
fi
mkdir -p "$MLRUNS/artifacts"
# No access log: the healthcheck asks for /health every 2 s, and `make logs` would show little else.
exec mlflow server \
  --host 0.0.0.0 --port 5000 --workers 1 --uvicorn-opts "--no-access-log" \
  --backend-store-uri "sqlite:///$MLRUNS/mlflow.db" \
  --serve-artifacts --artifacts-destination "$MLRUNS/artifacts" \
  --allowed-hosts "$allowed_hosts"
