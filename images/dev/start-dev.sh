#!/bin/sh
# Starts sshd in the background, then becomes JupyterLab (Docker's init, PID 1, reaps and signals both).
set -eu
# SSH sessions do not inherit the container's environment: hand them the variables that matter.
/usr/sbin/sshd -D -e -f /etc/devstack/sshd_config \
  -o "SetEnv=PATH=$PATH MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI SCORING_URL=$SCORING_URL MLFLOW_DISABLE_TELEMETRY=$MLFLOW_DISABLE_TELEMETRY" &
exec jupyter lab
