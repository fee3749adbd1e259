"""PyTorch's batch norm timed on the same cases as bnbench, for scripts/compare.py.

Follows the method of the reference numbers the project started from (torch_anchor.py):

  kernel  the summed durations of the GPU kernels of one call, from the profiler: GPU time
          alone, the figure to compare with bnbench's GPU timestamps around an operation;
  eager   CUDA events around one eager call, host launch cost included (median);
  graph   the same call 100 times captured in one CUDA graph, the graph replayed between CUDA
          events, over 100 (median of the replays): GPU time per call without launch gaps or
          per-call floors, beside bnbench's GPU back-to-back column (100 identical calls in one
          submission); null where capture failed (the reason is printed).

Inputs rotate among enough copies to hold at least twice the L2 cache and at least 128 MiB
(16 MiB with --quick, as bnbench), so no timing is of cached data. GB/s is counted at the
minimum bytes (8 per element forward, 12 backward) over the kernel time.

Cases, names and order are bnbench's: shapes, then layouts (channels-first, channels-last; a
2-D shape runs once, as channels-first), then storage types (--dtype f32|f16|bf16), epilogues
(--epilogue none|relu|add-relu: F.relu(F.batch_norm(x)) and F.relu(F.batch_norm(x) + z), run
eagerly as PyTorch runs them, two or three kernels), then operations (train-forward,
eval-forward, backward through the batch statistics and the epilogue). Half inputs keep
float32 weight, bias and running stats, as bnbench does.

--compile also times torch.compile (Inductor) on a fixed subset that fits one 10-minute run:
64x256x56x56 channels-last, f16 and bf16, relu and add-relu, every operation (one compile of
the training graph and one of the inference graph per type and epilogue): compile_kernel_us.

    python3 scripts/torch_bench.py [--quick] [--shape N,C,...] [--dtype T] [--epilogue E]
                                   [--compile] [--json PATH]

--chain resnet50 times instead bnbench's chain: ResNet-50's 53 batch norms at 224x224, each
layer's F.batch_norm in training, then one autograd call for every layer's backward, per step:

  cpu_thread  time.thread_time() of the calling thread over the step's launches, without
              synchronizing (the GPU is idle when a step starts: each step is awaited, untimed);
              the autograd engine runs CUDA backward nodes on its own device thread, which this
              does not count;
  cpu_process time.process_time() over the same span: every thread of the process;
  kernel      the step's kernel durations from the profiler, summed;
  gpu_span    CUDA events around the step: GPU time with launch gaps.

    python3 scripts/torch_bench.py --chain resnet50 [--batch 32] [--steps 20] [--json PATH]
"""
import argparse
import datetime
import json
import sys
import time

import torch
import torch.nn.functional as F

FULL_SHAPES = [
    (64, 64, 112, 112),
    (64, 256, 56, 56),
    (64, 1024, 14, 14),
    (64, 2048, 7, 7),
    (8192, 4096),
    (256, 1024),
    (32, 64, 8, 8),
    (1, 3, 100, 101),
]
QUICK_SHAPES = [(32, 64, 8, 8), (256, 1024), (8, 32, 28, 28)]
OPS = ("train-forward", "eval-forward", "backward")
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
EPILOGUES = ("none", "relu", "add-relu")
COMPILE_SHAPE = (64, 256, 56, 56)


# Random data comes from a CPU generator and is copied over: a CUDA graph capture that fails
# leaves the CUDA generator unusable ("Offset increment outside graph capture"), and with it
# every later case.
CPU_GENERATOR = torch.Generator().manual_seed(0)


def randn(shape, dtype=torch.float32):
    """Standard normal values of `shape` on the GPU, as `dtype`."""
    return torch.randn(shape, generator=CPU_GENERATOR).to(DEV, dtype)


def rand(shape):
    """Uniform values in [0, 1) of `shape` on the GPU."""
    return torch.rand(shape, generator=CPU_GENERATOR).to(DEV)


def tensors_moved(op, epilogue):
    """Tensors the operation reads or writes once at least (bnbench's count): x and y forward,
    x, dy and dx backward; the shortcut z forward and dz backward with add-relu; the forward's
    output (the ReLU's mask) backward with an epilogue."""
    if op == "backward":
        return 3 + (epilogue != "none") + (epilogue == "add-relu")
    return 2 + (epilogue == "add-relu")
MIB = 1 << 20
DEV = "cuda"


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def time_eager(fns, reps):
    """Median wall time of one call between CUDA events, in microseconds."""
    for f in fns[:3]:
        f()
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fns[i % len(fns)]()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return median(times)


GRAPH_CALLS = 100


def time_graph(make_call, replays):
    """GPU time per call in microseconds of GRAPH_CALLS identical calls captured in one CUDA
    graph: the graph replayed between CUDA events, over GRAPH_CALLS (median of `replays`).
    `make_call()` returns the call; it runs on the capture stream, because a backward's kernels
    run on the stream of its forward, and those of a forward made on another stream would fall
    outside the capture. None, with the reason printed, where capture fails."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    # Capture needs its first calls (allocator, cuDNN and autograd state) made before it, on
    # the stream it captures.
    with torch.cuda.stream(stream):
        fn = make_call()
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(GRAPH_CALLS):
                fn()
    except RuntimeError as error:
        print(f"  CUDA graph capture failed: {error}", flush=True)
        return None
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / GRAPH_CALLS)
    del graph
    return median(times)


def time_kernels(fns, reps):
    """GPU time per call in microseconds: the CUDA kernel (and memset/memcpy) durations the
    profiler records, summed and divided by the number of calls. Launch gaps and host time are
    excluded."""
    from torch.profiler import ProfilerActivity, profile

    for f in fns[:3]:
        f()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(reps):
            fns[i % len(fns)]()
        torch.cuda.synchronize()
    total_us = 0.0
    for event in prof.key_averages():
        # PyTorch before 2.4 names it self_cuda_time_total.
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "self_cuda_time_total", 0.0)
        total_us += device_us or 0.0
    return total_us / reps


def layouts_of(shape):
    """bnbench's layouts for a shape, with the memory format PyTorch needs for each."""
    if len(shape) == 2:
        return [("channels-first", "NC", torch.contiguous_format)]
    names = {3: ("NCL", None), 4: ("NCHW", torch.channels_last), 5: ("NCDHW", torch.channels_last_3d)}
    first, last_format = names.get(len(shape), ("channels-first", None))
    layouts = [("channels-first", first, torch.contiguous_format)]
    if last_format is not None:
        layouts.append(("channels-last", "N" + first[2:] + "C", last_format))
    return layouts


def copy_gbps():
    """Device-to-device copy of 1 GiB (kernel time): PyTorch's side of the roofline."""
    src = torch.empty(256 << 20, device=DEV)
    dst = torch.empty_like(src)
    us = time_kernels([lambda: dst.copy_(src)], 20)
    if us <= 0.0:
        raise RuntimeError("the profiler recorded no GPU time for the 1 GiB copy")
    del src, dst
    torch.cuda.empty_cache()
    return 2 * (256 << 20) * 4 / us / 1e3


def composition(rm, rv, epilogue, training):
    """The function bnbench fuses: F.batch_norm, then F.relu, or F.relu of the sum with z."""
    def f(x, z, w, b):
        y = F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.1, eps=1e-5)
        if epilogue == "relu":
            y = F.relu(y)
        elif epilogue == "add-relu":
            y = F.relu(y + z)
        return y
    return f


def backward_call(f, x, z, w, b):
    """A backward by autograd of `f` at one copy: through the epilogue to x, gamma, beta, and z
    with add-relu. Its forward runs here, on the current stream."""
    inputs = tuple(t.detach().requires_grad_(True) for t in (x, w, b) + (() if z is None else (z,)))
    y = f(inputs[0], None if z is None else inputs[3], inputs[1], inputs[2])
    dy = torch.empty_like(y).copy_(randn(y.shape, y.dtype))
    return lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True)


def case_fns(f, op, xs, zs, w, b):
    """Calls of `f` for `op` on each copy: the forward, or the backward (backward_call)."""
    if op != "backward":
        return [lambda x=x, z=z: f(x, z, w, b) for x, z in zip(xs, zs)]
    return [backward_call(f, x, z, w, b) for x, z in zip(xs, zs)]


def bench_shape(shape, rotate_bytes, l2_bytes, eager_reps, kernel_reps, dtypes, epilogues, compile_subset):
    n = 1
    for s in shape:
        n *= s
    c = shape[1]
    results = []
    for layout, fmt, memory_format in layouts_of(shape):
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]

            def make():
                return randn(shape, dtype).contiguous(memory_format=memory_format)

            for epilogue in epilogues:
                compiled = {}
                for op in OPS:
                    element_bytes = torch.finfo(dtype).bits // 8
                    per_copy = n * element_bytes * (1 + (op == "backward") + (epilogue == "add-relu"))
                    copies = max(1, -(-max(2 * l2_bytes, rotate_bytes) // per_copy))
                    xs = [make() for _ in range(copies)]
                    zs = [make() if epilogue == "add-relu" else None for _ in range(copies)]
                    w = rand(c) + 0.5
                    b = randn(c)
                    rm = torch.zeros(c, device=DEV)
                    rv = torch.ones(c, device=DEV)
                    f = composition(rm, rv, epilogue, training=op != "eval-forward")
                    fns = case_fns(f, op, xs, zs, w, b)
                    eager_us = time_eager(fns, eager_reps)
                    kernel_us = time_kernels(fns, kernel_reps)
                    if kernel_us <= 0.0:
                        raise RuntimeError(f"the profiler recorded no GPU time for {op} {shape}")
                    if op == "backward":
                        graph_us = time_graph(lambda: backward_call(f, xs[0], zs[0], w, b), replays=5)
                    else:
                        graph_us = time_graph(lambda: fns[0], replays=5)
                    compile_us = None
                    if compile_subset and tuple(shape) == COMPILE_SHAPE and layout == "channels-last" \
                            and dtype_name != "f32" and epilogue != "none":
                        graph = "inference" if op == "eval-forward" else "training"
                        if graph not in compiled:
                            compiled[graph] = torch.compile(f, dynamic=False)
                        compile_us = time_kernels(case_fns(compiled[graph], op, xs, zs, w, b), kernel_reps)
                    gbps = tensors_moved(op, epilogue) * element_bytes * n / kernel_us / 1e3
                    label = f"{op} {'x'.join(map(str, shape))} {fmt}"
                    if dtype_name != "f32":
                        label += f" {dtype_name}"
                    if epilogue != "none":
                        label += f" {epilogue}"
                    compiled_text = "" if compile_us is None else f"  compiled {compile_us:9.1f} us"
                    graph_text = "-" if graph_us is None else f"{graph_us:9.1f}"
                    print(f"{label:48} kernels {kernel_us:9.1f} us  eager {eager_us:9.1f} us  "
                          f"graph {graph_text} us  {gbps:8.1f} GB/s{compiled_text}", flush=True)
                    results.append({
                        "op": op,
                        "layout": layout,
                        "format": fmt,
                        "shape": list(shape),
                        "dtype": dtype_name,
                        "epilogue": epilogue,
                        "elements": n,
                        "copies": copies,
                        "kernel_us": kernel_us,
                        "eager_us": eager_us,
                        "graph_back_to_back_us": graph_us,
                        "compile_kernel_us": compile_us,
                        "gbps": gbps,
                    })
                    del xs, zs, fns
                    torch.cuda.empty_cache()
    return results


def resnet50_layers():
    """(name, channels, side) of ResNet-50's batch norms at 224x224, in forward order, as
    bnbench's chain lists them (examples/bnbench/chain.rs)."""
    layers = [("bn1", 64, 112)]
    stages = [(64, 3, 56, 56), (128, 4, 56, 28), (256, 6, 28, 14), (512, 3, 14, 7)]
    for stage, (width, blocks, input_side, output_side) in enumerate(stages):
        for block in range(blocks):
            prefix = f"layer{stage + 1}.{block}"
            first_side = input_side if block == 0 else output_side
            layers += [
                (f"{prefix}.bn1", width, first_side),
                (f"{prefix}.bn2", width, output_side),
                (f"{prefix}.bn3", 4 * width, output_side),
            ]
            if block == 0:
                layers.append((f"{prefix}.downsample.1", 4 * width, output_side))
    return layers


def bench_chain(batch, steps):
    """The chain in both layouts: host CPU time, kernel time and GPU span per step."""
    layers = resnet50_layers()
    results = []
    for layout, fmt, memory_format in [
        ("channels-first", "NCHW", torch.contiguous_format),
        ("channels-last", "NHWC", torch.channels_last),
    ]:
        xs, dys, params = [], [], []
        for _, c, side in layers:
            shape = (batch, c, side, side)
            xs.append(randn(shape).contiguous(memory_format=memory_format).requires_grad_(True))
            dys.append(randn(shape).contiguous(memory_format=memory_format))
            w = (rand(c) + 0.5).requires_grad_(True)
            b = randn(c).requires_grad_(True)
            params.append((w, b, torch.zeros(c, device=DEV), torch.ones(c, device=DEV)))
        inputs = xs + [p for w, b, _, _ in params for p in (w, b)]

        def step():
            ys = [F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
                  for x, (w, b, rm, rv) in zip(xs, params)]
            torch.autograd.grad(ys, inputs, dys)

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        thread_us, process_us, span_us = [], [], []
        for _ in range(steps):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            t0, p0 = time.thread_time(), time.process_time()
            step()
            thread_us.append((time.thread_time() - t0) * 1e6)
            process_us.append((time.process_time() - p0) * 1e6)
            end.record()
            torch.cuda.synchronize()
            span_us.append(start.elapsed_time(end) * 1e3)
        kernel_us = time_kernels([step], steps)
        row = {
            "chain": "resnet50",
            "layout": layout,
            "format": fmt,
            "batch": batch,
            "layers": len(layers),
            "steps": steps,
            "cpu_thread_us": median(thread_us),
            "cpu_process_us": median(process_us),
            "kernel_us": kernel_us,
            "gpu_span_us": median(span_us),
        }
        print(f"resnet50 {layout} batch {batch}: CPU thread {row['cpu_thread_us']:.0f} us, process "
              f"{row['cpu_process_us']:.0f} us; kernels {kernel_us:.0f} us, GPU span "
              f"{row['gpu_span_us']:.0f} us per step", flush=True)
        results.append(row)
        del xs, dys, params, inputs
        torch.cuda.empty_cache()
    return results


def parse_shape(text):
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of sizes")
    if len(dims) < 2 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': need N,C[,spatial...], each at least 1")
    return dims


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="bnbench --quick's shapes, 16 MiB rotation")
    parser.add_argument("--shape", type=parse_shape, action="append", help="a shape instead of the suite's; repeatable")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--dtype", choices=list(DTYPES), action="append", help="storage type; repeatable (default f32)")
    parser.add_argument("--epilogue", choices=list(EPILOGUES), action="append", help="epilogue; repeatable (default none)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on the fixed subset (see above)")
    parser.add_argument("--chain", choices=["resnet50"], help="time a network's batch norms as one training step instead")
    parser.add_argument("--batch", type=int, default=32, help="the chain's batch size (default 32)")
    parser.add_argument("--steps", type=int, default=20, help="the chain's timed steps (default 20)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("torch_bench: no CUDA device", file=sys.stderr)
        return 1
    shapes = args.shape or (QUICK_SHAPES if args.quick else FULL_SHAPES)
    rotate_bytes = (16 if args.quick else 128) * MIB
    props = torch.cuda.get_device_properties(0)
    l2_bytes = getattr(props, "L2_cache_size", 0) or 60 * MIB
    info = {
        "tool": "torch_bench",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(),
        "l2_bytes": l2_bytes,
        "rotate_bytes": max(2 * l2_bytes, rotate_bytes),
        "method": "kernel: profiler kernel durations per call; eager: CUDA events around one call (median); "
                  f"graph_back_to_back: {GRAPH_CALLS} identical calls in one CUDA graph, replayed between CUDA "
                  f"events, over {GRAPH_CALLS} (median of 5 replays); "
                  "compile_kernel: profiler kernel durations per call of the torch.compile'd function",
    }
    print(f"torch {info['torch']} CUDA {info['cuda']} cuDNN {info['cudnn']} on {info['device']}, L2 {l2_bytes / MIB:.0f} MiB", flush=True)
    if args.chain:
        info["method"] = "chain: CPU time of a step's launches (thread, process), profiler kernel time and CUDA-event span per step"
        info["chains"] = bench_chain(args.batch, args.steps)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(info, f, indent=2)
        return 0
    info["copy_gbps"] = copy_gbps()
    print(f"copy 1 GiB (kernel time): {info['copy_gbps']:.1f} GB/s (read + write)", flush=True)
    cases = []
    for shape in shapes:
        cases += bench_shape(shape, rotate_bytes, l2_bytes, eager_reps=10 if args.quick else 40,
                             kernel_reps=10 if args.quick else 20, dtypes=args.dtype or ["f32"],
                             epilogues=args.epilogue or ["none"], compile_subset=args.compile)
    info["cases"] = cases
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
