#!/bin/sh
# Starts sshd in the background, then becomes JupyterLab (tini, PID 1, reaps and signals both).
set -eu
# SSH sessions do not inherit the container's environment: hand them the variables that matter.
/usr/sbin/sshd -D -e -f /etc/ssh/devstack_sshd_config \
  -o "SetEnv=PATH=$PATH MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI SCORING_URL=$SCORING_URL" &
exec jupyter lab
