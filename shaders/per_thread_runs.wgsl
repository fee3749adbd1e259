// The per-thread reduction of channels-first windows whose runs hold eight values or more (CPU
// adapters; shorter runs: per_thread_values.wgsl), in every reducing program: one thread per
// chunk of one channel, chunk-major, so that the lanes of a SIMD vector take neighbouring
// channels. Why a thread alone: on CPU adapters (lavapipe, llvmpipe) a workgroup
// barrier turns every invocation into a coroutine whose registers live in memory; a thread that
// reduces its chunk alone needs no barrier and no workgroup memory.
//
// A thread reads its chunk one run (the channel's values of one outer row) at a time, in aligned
// quads of the window (`load_<role>_quad`: one vec4 load in the vec4 programs, four scalar loads
// in the others), and keeps of each quad the lanes that lie in the run (`lanes_between`). Why:
// llvmpipe turns each storage load into a per-lane sequence (mask test, bounds test, scalar
// load), and a vec4 load takes one such sequence for four values whatever the run's length: a
// 7x7 run (49 values) takes 13 vec4 loads per input instead of 49 scalar ones
// (docs/performance.md section 32). The lanes outside the run hold the neighbouring channels'
// values, which are read but never added (`select`, so that their NaNs stay out).
//
// Each group of a quad and the next, both of one run (at most eight values, which bounds the
// statistics' rounding: statistics_partial.wgsl), becomes a partial through the program's
// lane-wise sums (`LaneSums`, `sums_start`, `sums_add`, `sums_total`: statistics_partial.wgsl,
// gradient_sums_accumulator.wgsl); partials merge into a block of up to RUN_BLOCK values, blocks
// into the chunk's total, so that no chain of merges runs the whole chunk. The scalar and the
// vec4 programs take the same quads in the same order: the same partials, to the bit. Where each
// channel is one chunk, the fused kernels (fused_per_thread.wgsl) reduce a channel with
// `run_chunk` and then write its output.

// A work item of the channels-first per-thread kernels (this file's and per_thread_values.wgsl's):
// one chunk, the values [start, end) of window channel c_rel, chunk-major so that the lanes of a
// SIMD vector take neighbouring channels.
struct ChunkItem {
    c_rel: u32,
    chunk: u32,
    start: u32,
    end: u32,
}

fn chunk_item(item: u32) -> ChunkItem {
    let chunk = item / p.c_count;
    let start = chunk * p.chunk_len;
    return ChunkItem(
        item - chunk * p.c_count,
        chunk,
        start,
        min(start + p.chunk_len, p.o_count * p.inner),
    );
}

// Which lanes of window quad q lie in the elements [lo, hi).
fn lanes_between(q: u32, lo: u32, hi: u32) -> vec4<bool> {
    let element = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u);
    return (element >= vec4<u32>(lo)) & (element < vec4<u32>(hi));
}

fn lanes_kept(keep: vec4<bool>) -> u32 {
    let k = vec4<u32>(keep);
    return (k.x + k.y) + (k.z + k.w);
}

// One thread's accumulator of the window channel c_rel's values [start, end).
fn run_chunk(c_rel: u32, start: u32, end: u32, context: f32) -> Acc {
    let lane_context = vec4<f32>(context);
    var total = acc_empty();
    var block = acc_empty();
    var groups = 0u;
    var o = start / p.inner;
    var i = start - o * p.inner;
    var m = start;
    while (m < end) {
        // The run's elements [lo, hi) of the window.
        let lo = (o * p.channels + c_rel) * p.inner + i;
        let len = min(p.inner - i, end - m);
        let hi = lo + len;
        for (var q = lo / 4u; 4u * q < hi; q += 2u) {
            let first = load_quad(q);
            // The group's first value: its shift, where the program has one.
            var sums = sums_start(first, vec4<u32>(max(lo, 4u * q) - 4u * q));
            var keep = lanes_between(q, lo, hi);
            sums = sums_add(sums, first, keep, lane_context);
            var n = lanes_kept(keep);
            if (4u * q + 4u < hi) {
                let next = load_quad(q + 1u);
                keep = lanes_between(q + 1u, lo, hi);
                sums = sums_add(sums, next, keep, lane_context);
                n += lanes_kept(keep);
            }
            block = acc_merge(block, sums_total(sums, f32(n)));
            groups += 1u;
            if (groups == RUN_BLOCK / 8u) {
                total = acc_merge(total, block);
                block = acc_empty();
                groups = 0u;
            }
        }
        m += len;
        o += 1u;
        i = 0u;
    }
    return acc_merge(total, block);
}

// One thread per chunk of one channel: the statistics' or the gradient sums' partials, by the
// program's hooks.
@compute @workgroup_size(RUN_WORKGROUP)
fn partials_per_thread_runs(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var item = gid.x; item < p.items; item += nwg.x * RUN_WORKGROUP) {
        let at = chunk_item(item);
        partials[partial_slot(at.c_rel, at.chunk)] =
            run_chunk(at.c_rel, at.start, at.end, run_context(at.c_rel));
    }
}
