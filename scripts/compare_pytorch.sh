#!/usr/bin/env bash
# bnbench against PyTorch on a lent NVIDIA machine, in one device call: runs the prebuilt
# bnbench (Vulkan) and scripts/torch_bench.py on the same cases, then prints one side-by-side
# table (scripts/compare.py) with our time over PyTorch's for each case.
#
# On the development machine, from the project root:
#   bash scripts/fetch_vulkan_loader.sh               # once: the Vulkan loader debs, into .gl/
#   cargo build --release --example bnbench
# Then the device call, carrying [".gl", "target/release/examples/bnbench"]:
#   bash scripts/compare_pytorch.sh [--quick] [--shape N,C,...]...
# The options go to both programs. Results land in $OUT (or /tmp/bnbench-compare): bnbench.json,
# .md, .svg, torch.json, compare.md, and the logs. The machine builds nothing.
set -euo pipefail

out=${OUT:-/tmp/bnbench-compare}
mkdir -p "$out"
bnbench=target/release/examples/bnbench
if [ ! -x "$bnbench" ]; then
    echo "compare_pytorch: $bnbench is missing: build it (cargo build --release --example bnbench) and carry it" >&2
    exit 1
fi

# The machine has NVIDIA's Vulkan driver but no Vulkan loader: unpack the carried one.
if compgen -G ".gl/*.deb" >/dev/null; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if ! "$bnbench" --list --backend vulkan | grep -qi nvidia && [ -f "$icd" ]; then
    export VK_DRIVER_FILES=$icd
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

status=0
echo "== bnbench $*"
timeout 300 "$bnbench" --backend vulkan "$@" \
    --json "$out/bnbench.json" --markdown "$out/bnbench.md" --svg "$out/bnbench.svg" \
    >"$out/bnbench.log" 2>&1 || status=$?
tail -n 60 "$out/bnbench.log"
if [ ! -s "$out/bnbench.json" ]; then
    echo "compare_pytorch: bnbench wrote no results (exit $status)" >&2
    exit 1
fi

echo "== PyTorch $*"
timeout 250 python3 scripts/torch_bench.py "$@" --json "$out/torch.json" 2>&1 | tee "$out/torch.log"

echo "== side by side"
python3 scripts/compare.py "$out/bnbench.json" "$out/torch.json" --markdown "$out/compare.md"
if [ "$status" -ne 0 ]; then
    echo "compare_pytorch: bnbench exited with $status (a failed check or case: see $out/bnbench.log)" >&2
fi
exit "$status"
