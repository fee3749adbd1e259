#!/usr/bin/env bash
# Runs the whole test suite on two real wgpu backends: Vulkan, then GL. On a machine without a
# GPU it first installs Mesa's software drivers (lavapipe, llvmpipe). GPU tests never skip: with
# no adapter they fail and say how to install one.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${SKIP_DRIVER_INSTALL:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
    bash .ci/install-gpu-drivers.sh
fi

echo "== tests on the Vulkan backend =="
WGPU_BACKEND=vulkan cargo test
echo "== tests on the GL backend =="
WGPU_BACKEND=gl cargo test --tests
