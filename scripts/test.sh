#!/usr/bin/env bash
# Runs the whole test suite on two real wgpu backends: Vulkan, then GL, then synchronized batch
# norm over MPI (`--features mpi`: the test launches itself under mpirun -np 2 and -np 3). On a
# machine with apt-get it first installs Mesa's software drivers (lavapipe, llvmpipe) and Open MPI
# (SKIP_DRIVER_INSTALL=1 skips it). GPU tests never skip: with no adapter they fail and say how to
# install one.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${SKIP_DRIVER_INSTALL:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
    bash .ci/install-gpu-drivers.sh
    bash .ci/install-mpi.sh
fi

echo "== tests on the Vulkan backend =="
WGPU_BACKEND=vulkan cargo test
echo "== tests on the GL backend =="
WGPU_BACKEND=gl cargo test --tests
echo "== synchronized batch norm over MPI (mpirun -np 2 and -np 3, Vulkan) =="
WGPU_BACKEND=vulkan cargo test --features mpi --test sync_mpi
