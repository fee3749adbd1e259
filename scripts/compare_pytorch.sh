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
#      cases kept their times: docs/performance.md section 8; 54.0 to 54.8 us in all 16
#      processes of 2026-12-04, section 44).
# The call keeps within BUDGET_S seconds (570, for a device call of timeout_s 600; set it to the
# call's timeout_s minus 30 where the device has less time left): phase 1 may take up to 520 of
# them (bnbench 300, PyTorch 220; about 100 to 200 expected), phase 2 stops where phase 3 would
# lose its time, and whatever is left without time says so in the results. The results are
# rewritten after phase 1 and after each later bnbench process (and on SIGTERM or SIGINT), so a
# call cut short keeps what it had measured. A phase that fails does not stop the next. Needs
# bash 4.4 or later.
#
# On the development machine, from the project root:
#   bash scripts/fetch_vulkan_loader.sh               # once: the Vulkan loader debs, into .gl/
#   cargo build --release --example bnbench
#   bash scripts/compare_pytorch.sh --smoke           # the flow on llvmpipe, about a minute
# Then the device call (timeout_s 600), carrying [".gl", "target/release/examples/bnbench"]:
#   bash scripts/compare_pytorch.sh [--quick] [--shape N,C,...]...
# (SWING_RUNS=K in the environment sets phase 3 to K processes instead of 8; SWING_ARGS='--shape
# N,C,... --layout L --op OP' its case: a big backward, say, which ran 35% to 55% slow in one
# suite and not in the next, docs/performance.md section 46; add --rotate-mib 1024 for three
# input copies of a 51 M-element backward, whose medians the table gives each, to see whether
# the slowness follows a buffer, as on the development machine, section 50.)
# The options go to both programs of phase 1, so only those both know: --quick, --shape,
# --dtype, --epilogue. The script stops at once (exit 10) where the first Vulkan adapter is not
# NVIDIA's, before spending the device's time on another one.
# Results land in $OUT (or /tmp/bnbench-compare), at most 8 files, as a device call returns:
# summary.md (every phase's results), compare.md, bnbench.json, torch.json, breakdown.md,
# swing.md, and logs.tar.gz (the logs, phase 1's bnbench.md and .svg, and each breakdown and
# swing run's JSON). The machine builds nothing. Exit status, the first that applies: 10 no
# NVIDIA adapter; 1 a bnbench run failed (a failed check or case, or bad options); 11 a phase
# ran out of time; 12 no comparison with PyTorch (with --smoke: the join failed); 143 or 130
# stopped by SIGTERM or SIGINT (the results so far kept); 0 everything ran and passed.
#
# `--smoke` (first argument) checks the script's flow on any adapter, such as the development
# machine's llvmpipe (WGPU_BACKEND, if set, chooses the backend), in about a minute: phase 1
# on --quick's cases unless others are given, every phase at 2 timed runs, 2 swing processes
# of a small shape, the loader left alone. Without a CUDA PyTorch, torch.json is made up from
# bnbench's own times (the first two cases "slower"), so that the join (scripts/compare.py)
# and phase 2's list of slow cases run too; it exits 12 if the join fails. Its numbers mean
# nothing.
set -uo pipefail

smoke=false
if [ "${1:-}" = "--smoke" ]; then
    smoke=true
    shift
fi
out=${OUT:-/tmp/bnbench-compare}
budget=${BUDGET_S:-570}
mkdir -p "$out"
rm -f "$out"/{summary.md,compare.md,bnbench.json,torch.json,breakdown.md,swing.md,logs.tar.gz}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bnbench=target/release/examples/bnbench
if [ ! -x "$bnbench" ]; then
    echo "compare_pytorch: $bnbench is missing: build it (cargo build --release --example bnbench) and carry it" >&2
    exit 1
fi

# bnbench reads WGPU_BACKEND itself (wgpu's spellings); Vulkan otherwise.
backend=()
[ -z "${WGPU_BACKEND:-}" ] && backend=(--backend vulkan)
if ! $smoke; then
    # The machine has NVIDIA's Vulkan driver but no Vulkan loader: unpack the carried one.
    if compgen -G ".gl/*.deb" >/dev/null; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    # stdout only: the Vulkan loader's messages on stderr would pass for adapters.
    adapters=$(timeout 60 "$bnbench" --list "${backend[@]}" 2>>"$work/list.err")
    if ! grep -qi nvidia <<<"$adapters" && [ -f "$icd" ]; then
        export VK_DRIVER_FILES=$icd
        adapters=$(timeout 60 "$bnbench" --list "${backend[@]}" 2>>"$work/list.err")
    fi
    # The line after bnbench's "Adapters (best first ...)" heading.
    first_adapter=$(sed -n '/^Adapters/{n;p;q}' <<<"$adapters")
    if ! grep -qi nvidia <<<"$first_adapter"; then
        cat "$work/list.err" >&2
        echo "compare_pytorch: the first adapter is not NVIDIA's (${first_adapter:-none}): nothing measured" >&2
        exit 10
    fi
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi

# The cases the committed H200 table (docs/benchmarks/h200-vs-pytorch.md) found slower than
# PyTorch, slowest first: phase 2's list where phase 1 gives none.
SLOW_CASES='--op train-forward --shape 32,64,8,8 --layout channels-last
--op train-forward --shape 1,3,100,101 --layout channels-last
--op train-forward --shape 32,64,8,8 --layout channels-first
--op backward --shape 1,3,100,101 --layout channels-last
--op backward --shape 32,64,8,8 --layout channels-last
--op eval-forward --shape 32,64,8,8 --layout channels-first
--op train-forward --shape 1,3,100,101 --layout channels-first
--op train-forward --shape 256,1024 --layout channels-first
--op backward --shape 256,1024 --layout channels-first
--op backward --shape 1,3,100,101 --layout channels-first
--op eval-forward --shape 32,64,8,8 --layout channels-last
--op backward --shape 32,64,8,8 --layout channels-first
--op eval-forward --shape 1,3,100,101 --layout channels-last
--op eval-forward --shape 256,1024 --layout channels-first
--op train-forward --shape 64,2048,7,7 --layout channels-last
--op backward --shape 64,1024,14,14 --layout channels-last
--op backward --shape 64,2048,7,7 --layout channels-last
--op eval-forward --shape 1,3,100,101 --layout channels-first
--op train-forward --shape 64,1024,14,14 --layout channels-first
--op train-forward --shape 64,64,112,112 --layout channels-last
--op train-forward --shape 64,1024,14,14 --layout channels-last
--op backward --shape 64,64,112,112 --layout channels-last'
read -r -a SWING_CASE <<<"${SWING_ARGS:---shape 64,1024,14,14 --layout channels-first --op train-forward}"
SWING_RUNS=${SWING_RUNS:-8}
# Seconds a bnbench process of phases 2 and 3 may take (start, stream kernel, one case, check).
CASE_LIMIT=40
# Seconds phase 2 leaves for phase 3 and the summary.
SWING_RESERVE=$((SWING_RUNS * 12 + 10))
suite_args=("$@")
# Extra bnbench settings of every phase: bnbench's defaults on a GPU.
settings=()
if $smoke; then
    [ "$#" -eq 0 ] && suite_args=(--quick)
    SLOW_CASES='--op train-forward --shape 4,8,6,6 --layout channels-last
--op backward --shape 300,40 --layout channels-first'
    SWING_CASE=(--shape 4,16,10,10 --layout channels-first --op train-forward)
    SWING_RUNS=2
    SWING_RESERVE=30
    settings=(--reps 2 --warmup 1 --warmup-ms 0 --rotate-mib 16 --no-back-to-back)
fi

left() { echo $((budget - SECONDS)); }
out_of_time=false
# Runs "$@" for at most $1 seconds, and never into the last 10 s of the budget (the summary's).
# The process `within` waits for: a signal's handler stops it.
child=
within() {
    local limit=$1
    shift
    local rest=$(($(left) - 10))
    [ "$rest" -lt "$limit" ] && limit=$rest
    if [ "$limit" -le 5 ]; then
        echo "compare_pytorch: no time left for: $*" >&2
        out_of_time=true
        return 124
    fi
    # In the background and waited for: a trapped signal interrupts `wait`, where it would wait
    # for a foreground command to end, so its handler runs at once.
    timeout -k 5 "$limit" "$@" &
    child=$!
    wait "$child"
    local code=$?
    child=
    # 137: killed, where the end of its time did not stop it.
    if [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then
        out_of_time=true
        return 124
    fi
    return "$code"
}

bnbench_failed=false
# Notes a bnbench exit code: anything but success or the end of its time is a failure.
note_bnbench() {
    [ "$1" -ne 0 ] && [ "$1" -ne 124 ] && bnbench_failed=true
    return 0
}
# One bnbench process of phases 2 and 3: `bnbench_case NAME ARGS...` writes NAME.json and
# NAME.log under $work, and returns bnbench's exit code (124: out of time).
bnbench_case() {
    local name=$1
    shift
    within "$CASE_LIMIT" "$bnbench" "${backend[@]}" "$@" "${settings[@]}" \
        --json "$work/$name.json" </dev/null >"$work/$name.log" 2>&1
    local code=$?
    note_bnbench "$code"
    return "$code"
}

# Phase 3's table from the swing runs' JSON.
swing_table() {
    python3 - "$work" "$SWING_RUNS" <<'EOF'
import json, os, sys
work, runs = sys.argv[1], int(sys.argv[2])
if runs == 0:
    print("Not run (SWING_RUNS=0).")
    sys.exit(0)
print("| process | stream GB/s | GPU median us | GPU min us | GPU b2b us | each copy's median us | check |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for index in range(1, runs + 1):
    path = f"{work}/swing-{index}.json"
    if not os.path.exists(path):
        print(f"| {index} | - | - | - | - | - | not run, or stopped: no results (its log is in logs.tar.gz) |")
        continue
    try:
        run = json.load(open(path))["runs"][0]
    except (ValueError, KeyError, IndexError) as error:
        print(f"| {index} | - | - | - | - | - | unreadable results ({error}) |")
        continue
    for case in run["cases"]:
        b2b = case.get("gpu_back_to_back_us")
        # Absent with one input copy, or too few runs for each copy (bnbench's JSON).
        copies = case.get("gpu_copy_medians_us")
        each = "-" if copies is None else ", ".join(f"{us:.1f}" for us in copies)
        print(f"| {index} | {run['stream']['gbps']:.0f} | {case['gpu_median_us']:.1f} | "
              f"{case['gpu_min_us']:.1f} | {'-' if b2b is None else f'{b2b:.1f}'} | {each} | "
              f"{case['check']} |")
    for skipped in run["skipped"]:
        print(f"| {index} | {run['stream']['gbps']:.0f} | - | - | - | - | "
              f"{'FAILED' if skipped['failure'] else 'skipped'}: {skipped['reason']} |")
EOF
}

# The results so far into $out: the swing table (runs not yet made say so), the logs and
# summary.md. Called after every phase and bnbench process, and on SIGTERM or SIGINT, so a call
# cut short keeps what it had.
write_results() {
    swing_table >"$out/swing.md"
    tar -czf "$out/logs.tar.gz" -C "$work" .
    {
        echo "# compare_pytorch.sh $($smoke && echo "--smoke ")${suite_args[*]} ($(date -u +%FT%TZ), $SECONDS s)"
        echo
        if $compared; then
            echo "## Phase 1: against PyTorch"
            tail -n +2 "$out/compare.md"
        else
            echo "## Phase 1: bnbench alone (no comparison with PyTorch)"
            tail -n +2 "$work/bnbench.md" 2>/dev/null || echo "no results"
        fi
        echo
        echo "## Phase 2: breakdown of the slow cases"
        echo
        cat "$out/breakdown.md" 2>/dev/null
        echo "## Phase 3: the swing"
        echo
        cat "$out/swing.md"
    } >"$out/summary.md"
}
compared=false
# On SIGTERM (a device call's time limit) or SIGINT: stop the running process, keep what was
# measured.
on_signal() {
    [ -n "$child" ] && kill "$child" 2>/dev/null
    write_results
    exit "$1"
}
trap 'on_signal 143' TERM
trap 'on_signal 130' INT

# --smoke without a CUDA PyTorch: a torch.json made up from bnbench's JSON ($1) into $2, the
# first two cases "slower" than PyTorch, so that the join and phase 2's list run.
made_up_torch_times() {
    python3 - "$1" "$2" <<'EOF'
import datetime, json, sys
run = json.load(open(sys.argv[1]))["runs"][0]
cases = []
for index, case in enumerate(run["cases"]):
    factor = 0.5 if index < 2 else 2.0
    made_up = {key: case.get(key) for key in
               ("op", "layout", "format", "shape", "dtype", "epilogue", "elements", "copies")}
    made_up.update(kernel_us=factor * case["gpu_median_us"],
                   eager_us=factor * case["host_back_to_back_us"],
                   graph_back_to_back_us=None, compile_kernel_us=None,
                   gbps=case["gbps"] / factor)
    cases.append(made_up)
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
json.dump({"date_utc": now, "torch": "none (made up by --smoke)", "cuda": "-", "cudnn": "-",
           "device": "none", "copy_gbps": run["stream"]["gbps"], "cases": cases},
          open(sys.argv[2], "w"), indent=1)
EOF
}

echo "== phase 1: suite (${suite_args[*]}), $(left) s left"
within 300 "$bnbench" "${backend[@]}" "${suite_args[@]}" "${settings[@]}" \
    --json "$out/bnbench.json" --markdown "$work/bnbench.md" --svg "$work/bnbench.svg" \
    >"$work/bnbench.log" 2>&1
code=$?
note_bnbench "$code"
tail -n 60 "$work/bnbench.log"
slow_list="$work/slow.txt"
torch_done=false
if [ ! -s "$out/bnbench.json" ]; then
    echo "compare_pytorch: bnbench wrote no results (exit $code)" >&2
elif within 220 python3 scripts/torch_bench.py "${suite_args[@]}" --json "$out/torch.json" \
    >"$work/torch.log" 2>&1; then
    torch_done=true
else
    tail -n 20 "$work/torch.log" 2>/dev/null
    echo "compare_pytorch: scripts/torch_bench.py failed: no comparison with PyTorch" >&2
    if $smoke && made_up_torch_times "$out/bnbench.json" "$out/torch.json"; then
        echo "compare_pytorch: --smoke: torch.json made up from bnbench's times, to run the join" >&2
        torch_done=true
    fi
fi
if $torch_done; then
    if python3 scripts/compare.py "$out/bnbench.json" "$out/torch.json" \
        --markdown "$out/compare.md" --slow "$slow_list"; then
        compared=true
    else
        echo "compare_pytorch: scripts/compare.py failed: no comparison with PyTorch" >&2
    fi
fi
if ! $compared; then
    echo "$SLOW_CASES" >"$slow_list"
    echo "compare_pytorch: phase 2 takes the committed table's slow cases" >&2
fi
write_results

echo "== phase 2: breakdown of $(grep -c . "$slow_list") slow case(s), $(left) s left"
index=0
[ -s "$slow_list" ] || echo "No case was slower than PyTorch." >>"$out/breakdown.md"
while read -r -a case_args; do
    [ "${#case_args[@]}" -eq 0 ] && continue
    # A case may run CASE_LIMIT seconds, and 5 more before it is killed.
    if [ "$(left)" -le $((SWING_RESERVE + CASE_LIMIT + 5)) ]; then
        echo "Not run: ${case_args[*]} and the cases after it (no time left)." >>"$out/breakdown.md"
        out_of_time=true
        break
    fi
    index=$((index + 1))
    bnbench_case "breakdown-$index" "${case_args[@]}" --breakdown
    case_code=$?
    {
        echo "### ${case_args[*]}"
        echo
        [ "$case_code" -ne 0 ] && echo "bnbench exited with $case_code (124: out of time); its log is in logs.tar.gz." && echo
        echo '```text'
        # The case's table and its dispatches': what follows bnbench's adapter header.
        sed -n '/^case /,$p' "$work/breakdown-$index.log"
        echo '```'
        echo
    } >>"$out/breakdown.md"
    write_results
done <"$slow_list"

echo "== phase 3: ${SWING_CASE[*]} in $SWING_RUNS processes, $(left) s left"
for run in $(seq 1 "$SWING_RUNS"); do
    bnbench_case "swing-$run" "${SWING_CASE[@]}"
    write_results
done
# Also where there was no swing run (SWING_RUNS=0).
write_results
# The breakdown first and the comparison and the swing last, where a device call's output tail
# keeps them.
cat "$out/breakdown.md" 2>/dev/null
echo "== phase 1"
if $compared; then tail -n +2 "$out/compare.md"; else echo "no comparison with PyTorch"; fi
echo "== phase 3: the swing"
cat "$out/swing.md"
status=0
if $bnbench_failed; then
    echo "compare_pytorch: a bnbench run failed (a failed check or case, or bad options: see logs.tar.gz)" >&2
    status=1
elif $out_of_time; then
    echo "compare_pytorch: a phase ran out of time (see above)" >&2
    status=11
elif ! $compared; then
    status=12
fi
exit "$status"
