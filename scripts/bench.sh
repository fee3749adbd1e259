#!/usr/bin/env bash
# Runs the benchmark program (bnbench) with the given options, e.g. `--quick`, `--all`,
# `--backend gl`, `--json results.json`. On a machine with apt-get it first installs Mesa's
# software drivers, so that wgpu finds an adapter without a GPU (SKIP_DRIVER_INSTALL=1 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${SKIP_DRIVER_INSTALL:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
    bash .ci/install-gpu-drivers.sh
fi
cargo run --release --example bnbench -- "$@"
