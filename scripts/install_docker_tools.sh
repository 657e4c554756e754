#!/usr/bin/env bash
# Install Debian's docker.io, docker-compose (1.29) and debootstrap when any of their commands
# is missing. Needs root and apt-get, and runs non-interactively (DEBIAN_FRONTEND=noninteractive).
# On a machine with systemd, installing docker.io also starts the system's own dockerd;
# scripts/docker_e2e.sh does not use it and runs a private daemon instead.
set -euo pipefail

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install_docker_tools.sh: dockerd, docker-compose and debootstrap are installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install_docker_tools.sh: ${missing[*]} missing, and installing them needs root; run as root or install them with apt-get" >&2
  exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_docker_tools.sh: ${missing[*]} missing and apt-get not found; install Docker, docker-compose 1.29 and debootstrap yourself" >&2
  exit 2
fi

echo "install_docker_tools.sh: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp /tmp/install-docker-tools.XXXXXX.log)
if ! { apt-get update -q && apt-get install -y -q "${missing[@]}"; } >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "install_docker_tools.sh: apt-get failed to install ${missing[*]} (output above, full log $log)" >&2
  exit 1
fi
rm -f "$log"
echo "install_docker_tools.sh: installed $(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /'), $(dockerd --version)"
