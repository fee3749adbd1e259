#!/usr/bin/env bash
# Everything issue 14 measures on a lent NVIDIA machine, in one device call of at most 10
# minutes, in three phases:
#   1. suite: the prebuilt bnbench (Vulkan) and scripts/torch_bench.py on the same cases, then
#      scripts/compare.py: one side-by-side table, our time over PyTorch's for each case;
#   2. breakdown: `bnbench --breakdown` (each dispatch's GPU time) of every case slower than
#      PyTorch in phase 1, slowest first; where phase 1 gave no comparison (PyTorch missing or
#      failed), of the cases the last committed H200 table found slower (SLOW_CASES below);
#   3. swing: the 64x1024x14x14 NCHW training forward alone, in each of SWING_RUNS processes
#      (this fused forward took 130.8 us in one run and 54.8 us in the next, while the other
#      cases kept their times: docs/performance.md section 8).
# A phase left without time (the whole call keeps within BUDGET_S seconds) is skipped and says
# so; a phase that fails does not stop the next.
#
# On the development machine, from the project root:
#   bash scripts/fetch_vulkan_loader.sh               # once: the Vulkan loader debs, into .gl/
#   cargo build --release --example bnbench
# Then the device call, carrying [".gl", "target/release/examples/bnbench"]:
#   bash scripts/compare_pytorch.sh [--quick] [--shape N,C,...]...
# The options go to both programs of phase 1. Results land in $OUT (or /tmp/bnbench-compare),
# at most 8 files, as a device call returns: summary.md (every phase's table),
# compare.md, bnbench.json, torch.json, breakdown.md, swing.md, and logs.tar.gz (the logs, the
# SVG chart and each breakdown and swing run's JSON). The machine builds nothing.
#
# `--smoke` (first argument) checks the script's flow on any adapter, such as the development
# machine's llvmpipe, in a few minutes: phases 2 and 3 at 2 timed runs of small shapes, 2 swing
# processes, Vulkan or whatever WGPU_BACKEND says. Its numbers mean nothing.
set -uo pipefail

smoke=false
if [ "${1:-}" = "--smoke" ]; then
    smoke=true
    shift
fi
out=${OUT:-/tmp/bnbench-compare}
budget=${BUDGET_S:-570}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
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
backend=${WGPU_BACKEND:-vulkan}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

# The cases the committed H200 table (docs/benchmarks/h200-vs-pytorch.md) found slower than
# PyTorch, slowest first: phase 2's list where phase 1 gives none.
SLOW_CASES='--op train-forward --shape 32,64,8,8 --layout channels-last
--op train-forward --shape 32,64,8,8 --layout channels-first
--op train-forward --shape 64,1024,14,14 --layout channels-first
--op backward --shape 32,64,8,8 --layout channels-last
--op eval-forward --shape 32,64,8,8 --layout channels-first
--op eval-forward --shape 32,64,8,8 --layout channels-last
--op backward --shape 32,64,8,8 --layout channels-first
--op train-forward --shape 64,2048,7,7 --layout channels-last
--op backward --shape 64,2048,7,7 --layout channels-last
--op backward --shape 64,1024,14,14 --layout channels-last
--op train-forward --shape 64,1024,14,14 --layout channels-last
--op backward --shape 256,1024 --layout channels-first
--op train-forward --shape 64,64,112,112 --layout channels-last
--op backward --shape 64,64,112,112 --layout channels-last
--op eval-forward --shape 64,2048,7,7 --layout channels-last'
SWING=(--shape 64,1024,14,14 --layout channels-first --op train-forward)
SWING_RUNS=8
# Per-case settings of phases 2 and 3: bnbench's defaults on a GPU.
phase_settings=()
if $smoke; then
    SLOW_CASES='--op train-forward --shape 4,8,6,6 --layout channels-last
--op backward --shape 300,40 --layout channels-first'
    SWING=(--shape 4,16,10,10 --layout channels-first --op train-forward)
    SWING_RUNS=2
    phase_settings=(--reps 2 --warmup 1 --warmup-ms 0 --rotate-mib 16 --no-back-to-back)
fi

left() { echo $((budget - SECONDS)); }
# Runs "$@" with at most $1 seconds, and never past the budget (less 10 s for the summary).
within() {
    local limit=$1
    shift
    local rest=$(($(left) - 10))
    [ "$rest" -lt "$limit" ] && limit=$rest
    if [ "$limit" -le 5 ]; then
        echo "compare_pytorch: no time left for: $*" >&2
        return 124
    fi
    timeout "$limit" "$@"
}

status=0
echo "== phase 1: suite ($*), $(left) s left"
within 300 "$bnbench" --backend "$backend" "$@" \
    --json "$out/bnbench.json" --markdown "$work/bnbench.md" --svg "$work/bnbench.svg" \
    >"$work/bnbench.log" 2>&1 || status=$?
tail -n 60 "$work/bnbench.log"
slow_list="$work/slow.txt"
if [ ! -s "$out/bnbench.json" ]; then
    echo "compare_pytorch: bnbench wrote no results (exit $status)" >&2
elif within 220 python3 scripts/torch_bench.py "$@" --json "$out/torch.json" >"$work/torch.log" 2>&1 \
    && python3 scripts/compare.py "$out/bnbench.json" "$out/torch.json" \
        --markdown "$out/compare.md" --slow "$slow_list"; then
    :
else
    [ -f "$work/torch.log" ] && tail -n 20 "$work/torch.log"
    echo "compare_pytorch: no comparison with PyTorch (see torch.log in logs.tar.gz)" >&2
fi
if [ ! -f "$slow_list" ]; then
    echo "$SLOW_CASES" >"$slow_list"
    echo "compare_pytorch: phase 2 takes the committed table's slow cases" >&2
fi

echo "== phase 2: breakdown of $(grep -c . "$slow_list") slow case(s), $(left) s left"
index=0
while read -r -a case_args; do
    [ "${#case_args[@]}" -eq 0 ] && continue
    index=$((index + 1))
    echo "### ${case_args[*]}" >>"$out/breakdown.md"
    within 40 "$bnbench" --backend "$backend" "${case_args[@]}" --breakdown "${phase_settings[@]}" \
        --json "$work/breakdown-$index.json" </dev/null >"$work/breakdown-$index.log" 2>&1
    case_status=$?
    # The case's table and its dispatches' table: what follows bnbench's adapter header.
    sed -n '/^case /,$p' "$work/breakdown-$index.log" >>"$out/breakdown.md"
    echo >>"$out/breakdown.md"
    if [ "$case_status" -eq 124 ]; then
        echo "compare_pytorch: breakdown stopped at case $index (time)" >&2
        break
    fi
    [ "$case_status" -ne 0 ] && status=$case_status
done <"$slow_list"

echo "== phase 3: ${SWING[*]} in $SWING_RUNS processes, $(left) s left"
for run in $(seq 1 "$SWING_RUNS"); do
    within 40 "$bnbench" --backend "$backend" "${SWING[@]}" "${phase_settings[@]}" \
        --json "$work/swing-$run.json" >"$work/swing-$run.log" 2>&1
    run_status=$?
    [ "$run_status" -eq 124 ] && break
    [ "$run_status" -ne 0 ] && status=$run_status
done
python3 - "$work" >"$out/swing.md" <<'EOF'
import glob, json, sys
print("| process | stream GB/s | GPU median us | GPU min us | GPU b2b us | check |")
print("| ---: | ---: | ---: | ---: | ---: | --- |")
for path in sorted(glob.glob(f"{sys.argv[1]}/swing-*.json"), key=lambda p: int(p.split("-")[-1][:-5])):
    run = json.load(open(path))["runs"][0]
    for case in run["cases"]:
        b2b = case.get("gpu_back_to_back_us")
        print(f"| {path.split('-')[-1][:-5]} | {run['stream']['gbps']:.0f} | {case['gpu_median_us']:.1f} "
              f"| {case['gpu_min_us']:.1f} | {'-' if b2b is None else f'{b2b:.1f}'} | {case['check']} |")
EOF

tar -czf "$out/logs.tar.gz" -C "$work" .
{
    echo "# compare_pytorch.sh $* ($(date -u +%FT%TZ), $SECONDS s)"
    echo
    echo "## Phase 1: against PyTorch"
    if [ -f "$out/compare.md" ]; then tail -n +2 "$out/compare.md"; else echo "no comparison"; fi
    echo
    echo "## Phase 2: breakdown of the slow cases"
    echo
    cat "$out/breakdown.md" 2>/dev/null
    echo "## Phase 3: the swing"
    echo
    cat "$out/swing.md"
} >"$out/summary.md"
# The breakdown first and the comparison and the swing last, where a device call's output tail
# keeps them.
cat "$out/breakdown.md" 2>/dev/null
echo "== against PyTorch"
if [ -f "$out/compare.md" ]; then tail -n +2 "$out/compare.md"; else echo "no comparison"; fi
echo "== the swing"
cat "$out/swing.md"
if [ "$status" -ne 0 ]; then
    echo "compare_pytorch: a bnbench run exited with $status (a failed check or case: see logs.tar.gz)" >&2
fi
exit "$status"
