#!/usr/bin/env bash
# Builds a stand-in for python:3.11-slim-bookworm from Debian packages alone (debootstrap, then
# `docker import`), for machines that cannot pull from a registry. The stack's Dockerfiles only rely
# on what both images share: Debian bookworm, python3 (3.11) with venv, ca-certificates and apt.
set -euo pipefail

image=${1:?usage: build.sh IMAGE_NAME}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

if [ "$(id -u)" -ne 0 ]; then
  echo "base-image: debootstrap needs root; run 'sudo make base-image'" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null; then
  echo "base-image: debootstrap is not installed (Debian/Ubuntu: apt-get install debootstrap)" >&2
  exit 1
fi

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$rootfs" "$mirror"

# Same suites as the official image, so `apt-get install` in the Dockerfiles gets security fixes.
cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security_mirror bookworm-security main
SOURCES
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin

tar -C "$rootfs" --numeric-owner -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$image"
echo "base-image: built $image"
