#!/usr/bin/env bash
# Installs what synchronized batch norm over MPI needs (the `mpi` feature): Open MPI's runtime
# and headers, and libclang for the bindings rsmpi generates at build time. Debian packages.
set -euo pipefail

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if command -v mpirun >/dev/null 2>&1 && dpkg-query -W libopenmpi-dev libclang-dev >/dev/null 2>&1; then
    echo "Open MPI and libclang already installed: $(mpirun --version | head -1)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
sudo_if_needed apt-get update -qq
sudo_if_needed apt-get install -y -qq openmpi-bin libopenmpi-dev libclang-dev
