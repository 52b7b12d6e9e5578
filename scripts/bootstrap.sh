#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian 12 machine (run as root):
# Debian packages with apt-get, Python packages into .venv. Idempotent: re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(curl mosquitto mosquitto-clients postgresql chromium gcc make gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm nginx systemd clang libclang-rt-14-dev)
# FLEET_PROFILE=server: what the service itself runs on (deploy/Dockerfile); the rest is for
# tests, firmware builds and the demo. PostgreSQL and nginx are their own hosts/containers there.
SERVER_PACKAGES=(ca-certificates mosquitto)
[ "${FLEET_PROFILE:-dev}" = server ] && APT_PACKAGES=("${SERVER_PACKAGES[@]}")
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${FLEET_EXTRAS:-test}
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[${FLEET_EXTRAS:-test}]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "bootstrap: ready"
