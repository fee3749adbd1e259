"""Side-by-side table of bnbench and PyTorch on the same cases: our time over PyTorch's.

    python3 scripts/compare.py BNBENCH_JSON TORCH_JSON [--run INDEX] [--markdown PATH]
                               [--slow PATH]

BNBENCH_JSON is what `bnbench --json` wrote; TORCH_JSON what `scripts/torch_bench.py --json`
wrote. Cases are matched on (operation, layout, shape, storage type, epilogue; files without
the last two are f32 without an epilogue). Comparisons per case:

  GPU time   bnbench's median GPU time (timestamps around the operation's compute pass) against
             PyTorch's summed kernel time per call (profiler); ratio < 1 means we are faster;
  back to back  bnbench's GPU time per call of 100 identical calls in one submission against
             PyTorch's of the same 100 calls captured in one CUDA graph and replayed: kernel
             speed without per-call floors (each side's column is absent from older files: "-");
  host time  bnbench's calls submitted back to back (wall time per call) against PyTorch's
             eager call between CUDA events (median);
  compile    PyTorch's kernel time under torch.compile (Inductor), where torch_bench ran it
             (--compile: a fixed subset of half-precision cases with epilogues);
  roofline   the two-pass roofline of the project's targets (docs/design.md): 3 passes over
             the data for the training forward (read x twice, write y), 2 for inference, 5 for
             the backward (read x and dy twice, write dx); the shortcut adds a read forward and
             dz a write backward, the ReLU's mask two reads of y backward; each pass at the
             storage type's size (4 bytes f32, 2 half), over bnbench's stream kernel.

A case whose result failed bnbench's check (column "check") is listed but left out of the means,
the counts and --slow: its time is that of a wrong answer.

--slow PATH writes the cases where our GPU time is above PyTorch's kernel time, slowest first,
one a line as bnbench's arguments (`--op backward --shape 256,1024 --layout channels-first`,
and --dtype, --epilogue where not f32 and none), for scripts/compare_pytorch.sh's breakdown.

Plain Python 3 (json module only): runs wherever the JSON files are.
"""
import argparse
import json
import sys


def key(case):
    return (case["op"], case["layout"], tuple(case["shape"]), case.get("dtype", "f32"),
            case.get("epilogue", "none"))


def label(case):
    text = f"{case['op']} {'x'.join(str(d) for d in case['shape'])} {case['format']}"
    if case.get("dtype", "f32") != "f32":
        text += f" {case['dtype']}"
    if case.get("epilogue", "none") != "none":
        text += f" {case['epilogue']}"
    return text


def number(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(ours, theirs):
    if ours is None or theirs is None or theirs <= 0:
        return None
    return ours / theirs


def geometric_mean(values):
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return None
    product = 1.0
    for v in values:
        product *= v
    return product ** (1.0 / len(values))


PASSES = {"train-forward": 3, "eval-forward": 2, "backward": 5}
DTYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2}


def bnbench_arguments(case):
    """The bnbench options that select exactly this case."""
    words = ["--op", case["op"], "--shape", ",".join(str(d) for d in case["shape"]),
             "--layout", case["layout"]]
    if case.get("dtype", "f32") != "f32":
        words += ["--dtype", case["dtype"]]
    if case.get("epilogue", "none") != "none":
        words += ["--epilogue", case["epilogue"]]
    return " ".join(words)


def roofline_us(case, stream_gbps):
    epilogue = case.get("epilogue", "none")
    passes = PASSES[case["op"]]
    if epilogue == "add-relu":
        passes += 1
    if case["op"] == "backward" and epilogue != "none":
        passes += 2
    bytes_per_element = passes * DTYPE_BYTES[case.get("dtype", "f32")]
    return bytes_per_element * case["elements"] / stream_gbps / 1e3


def build_rows(run, torch_cases):
    """One row per case that either side ran, ours in our order, then PyTorch's leftovers."""
    theirs = {key(c): c for c in torch_cases}
    rows = []
    seen = set()
    for case in run["cases"]:
        k = key(case)
        seen.add(k)
        t = theirs.get(k)
        roof = roofline_us(case, run["stream"]["gbps"])
        rows.append({
            "case": label(case),
            "arguments": bnbench_arguments(case),
            "elements": case["elements"],
            "roofline_us": roof,
            "percent_of_roofline": 100.0 * roof / case["gpu_median_us"],
            "ours_us": case["gpu_median_us"],
            "torch_us": t and t["kernel_us"],
            "compile_us": t and t.get("compile_kernel_us"),
            "compile_ratio": ratio(case["gpu_median_us"], t and t.get("compile_kernel_us")),
            "gpu_ratio": ratio(case["gpu_median_us"], t and t["kernel_us"]),
            "ours_b2b_us": case.get("gpu_back_to_back_us"),
            "torch_graph_us": t and t.get("graph_back_to_back_us"),
            "b2b_ratio": ratio(case.get("gpu_back_to_back_us"), t and t.get("graph_back_to_back_us")),
            "ours_host_us": case["host_back_to_back_us"],
            "torch_eager_us": t and t["eager_us"],
            "host_ratio": ratio(case["host_back_to_back_us"], t and t["eager_us"]),
            "ours_gbps": case["gbps"],
            "torch_gbps": t and t["gbps"],
            "check": case.get("check", "passed"),
        })
    for t in torch_cases:
        if key(t) not in seen:
            rows.append({
                "case": label(t), "elements": t["elements"], "roofline_us": None,
                "percent_of_roofline": None, "ours_us": None, "torch_us": t["kernel_us"], "gpu_ratio": None,
                "compile_us": t.get("compile_kernel_us"), "compile_ratio": None,
                "ours_b2b_us": None, "torch_graph_us": t.get("graph_back_to_back_us"), "b2b_ratio": None,
                "ours_host_us": None, "torch_eager_us": t["eager_us"], "host_ratio": None,
                "ours_gbps": None, "torch_gbps": t["gbps"], "check": "-",
            })
    return rows


HEADER = ["case", "ours GPU us", "PyTorch kernel us", "ours/PyTorch", "ours GPU b2b us", "PyTorch graph us",
          "ours/PyTorch (b2b)", "compiled us", "ours/compiled", "roofline us", "ours % of roofline",
          "ours host b2b us", "PyTorch eager us", "ours/PyTorch (host)", "check"]


def cells(row):
    return [
        row["case"],
        number(row["ours_us"]),
        number(row["torch_us"]),
        number(row["gpu_ratio"], 2),
        number(row["ours_b2b_us"]),
        number(row["torch_graph_us"]),
        number(row["b2b_ratio"], 2),
        number(row["compile_us"]),
        number(row["compile_ratio"], 2),
        number(row["roofline_us"]),
        number(row["percent_of_roofline"], 0),
        number(row["ours_host_us"]),
        number(row["torch_eager_us"]),
        number(row["host_ratio"], 2),
        row["check"],
    ]


def text_table(rows):
    table = [HEADER] + [cells(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    lines = []
    for r in table:
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    return "\n".join(lines)


def markdown_table(rows):
    lines = ["| " + " | ".join(HEADER) + " |", "| --- |" + " ---: |" * (len(HEADER) - 1)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def heading(ours, run, torch_info):
    adapter = run["adapter"]
    return [
        f"ours: bnbench {ours.get('version', '?')} on {adapter['name']} ({adapter['backend']}, driver "
        f"{adapter['driver']}), {run['timing_method']}, stream kernel {run['stream']['gbps']:.1f} GB/s, "
        f"{ours['date_utc']}",
        f"PyTorch {torch_info['torch']} (CUDA {torch_info['cuda']}, cuDNN {torch_info['cudnn']}) on "
        f"{torch_info['device']}, 1 GiB copy {torch_info['copy_gbps']:.1f} GB/s, {torch_info['date_utc']}",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ours", help="bnbench --json output")
    parser.add_argument("torch", help="scripts/torch_bench.py --json output")
    parser.add_argument("--run", type=int, default=0, help="which adapter run of the bnbench JSON (default 0)")
    parser.add_argument("--markdown", help="also write the table as Markdown here")
    parser.add_argument("--slow", help="write the cases slower than PyTorch here, as bnbench arguments")
    args = parser.parse_args()
    with open(args.ours) as f:
        ours = json.load(f)
    with open(args.torch) as f:
        torch_info = json.load(f)
    runs = ours.get("runs", [])
    if not 0 <= args.run < len(runs):
        print(f"compare: {args.ours} has {len(runs)} adapter run(s); no run {args.run}", file=sys.stderr)
        return 1
    run = runs[args.run]
    rows = build_rows(run, torch_info["cases"])
    failed = [r for r in rows if r["check"] == "failed"]
    counted = [r for r in rows if r["check"] != "failed"]
    gpu_mean = geometric_mean([r["gpu_ratio"] for r in counted])
    b2b_mean = geometric_mean([r["b2b_ratio"] for r in counted])
    host_mean = geometric_mean([r["host_ratio"] for r in counted])
    big = [r for r in counted if r["elements"] > 10_000_000 and r["percent_of_roofline"] is not None]
    at_85 = sum(1 for r in big if r["percent_of_roofline"] >= 85.0)
    as_fast = sum(1 for r in counted if r["gpu_ratio"] is not None and r["gpu_ratio"] <= 1.0)
    compared = sum(1 for r in counted if r["gpu_ratio"] is not None)
    summary = (f"geometric mean of ours/PyTorch: GPU time {number(gpu_mean, 2)}, "
               f"back to back {number(b2b_mean, 2)}, "
               f"host time {number(host_mean, 2)} (below 1: ours is faster); "
               f"at least as fast as PyTorch in {as_fast} of {compared} cases; "
               f"at 85% of the roofline or more in {at_85} of {len(big)} cases over 10 M elements")
    if failed:
        summary += (f"; {len(failed)} case(s) FAILED bnbench's check, left out of these figures: "
                    + ", ".join(r["case"] for r in failed))
    lines = heading(ours, run, torch_info)
    print("\n".join(lines))
    print()
    print(text_table(rows))
    print(summary)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("# bnbench against PyTorch\n\n")
            f.write("".join(f"- {line}\n" for line in lines))
            f.write("\n" + markdown_table(rows) + "\n\n" + summary + "\n")
    if args.slow:
        slow = sorted((r for r in counted if r["gpu_ratio"] is not None and r["gpu_ratio"] > 1.0),
                      key=lambda r: -r["gpu_ratio"])
        with open(args.slow, "w") as f:
            f.write("".join(r["arguments"] + "\n" for r in slow))
    return 0


if __name__ == "__main__":
    sys.exit(main())
