// The per-thread reduction of channels-first windows whose runs split into vec4s
// (`inner % 4 == 0`, CPU adapters), in the vec4 programs: reduction.wgsl's `reduce_per_thread`
// and `run_accumulate`, one thread per chunk of one channel, reading the chunk four values at a
// time through the program's quad hooks (statistics_partial.wgsl,
// gradient_sums_accumulator.wgsl) instead of one. Why: llvmpipe turns each storage load into a
// per-lane sequence (mask test, bounds test, scalar load), and one vec4 load takes one such
// sequence for four values; the walk's carry into the next outer row is tested once per four
// values, too. Chunks start on a multiple of four values and runs are whole vec4s, so a vec4
// never straddles two runs. Each chunk is merged exactly as `run_accumulate` merges it (eights
// of consecutive values in blocks of RUN_BLOCK, the values left one at a time): the same
// partials, to the bit, as the scalar kernel.

// A walk of one window channel's vec4s: `q` indexes vec4s of the window, `i` the vec4 within
// its run.
struct QuadWalk {
    q: u32,
    i: u32,
}

// The walk from the channel's value m (a multiple of four).
fn walk_quads(c_rel: u32, m: u32) -> QuadWalk {
    let o = m / p.inner;
    let i = m - o * p.inner;
    return QuadWalk((o * p.channels * p.inner + c_rel * p.inner + i) / 4u, i / 4u);
}

fn walk_next_quad(walk: QuadWalk) -> QuadWalk {
    var next = QuadWalk(walk.q + 1u, walk.i + 1u);
    if (next.i * 4u == p.inner) {
        // Carry into the next outer row: skip the other channels' runs.
        next.i = 0u;
        next.q += (p.channels - 1u) * (p.inner / 4u);
    }
    return next;
}

// One thread's accumulator of the window channel c_rel's values [start, end), both multiples of
// four.
fn run_accumulate_quads(c_rel: u32, start: u32, end: u32, context: f32) -> Acc {
    var total = acc_empty();
    var walk = walk_quads(c_rel, start);
    var m = start;
    while (m + 8u <= end) {
        var block = acc_empty();
        let block_end = min(m + RUN_BLOCK, end);
        while (m + 8u <= block_end) {
            let lo = load_quad(walk.q);
            walk = walk_next_quad(walk);
            let hi = load_quad(walk.q);
            walk = walk_next_quad(walk);
            block = acc_merge(block, quads_acc(lo, hi, context));
            m += 8u;
        }
        total = acc_merge(total, block);
    }
    while (m < end) {
        let r = load_quad(walk.q);
        walk = walk_next_quad(walk);
        for (var k = 0u; k < 4u; k += 1u) {
            total = acc_merge(total, lane_acc(r, k, context));
        }
        m += 4u;
    }
    return total;
}

// One thread per chunk of one channel, chunk-major as `reduce_per_thread`: the statistics' or
// the gradient sums' partials, by the program's hooks.
@compute @workgroup_size(RUN_WORKGROUP)
fn partials_per_thread_runs(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let threads = nwg.x * RUN_WORKGROUP;
    let values = p.o_count * p.inner;
    for (var item = gid.x; item < p.items; item += threads) {
        let chunk = item / p.c_count;
        let c_rel = item - chunk * p.c_count;
        let start = chunk * p.chunk_len;
        let end = min(start + p.chunk_len, values);
        partials[partial_slot(c_rel, chunk)] =
            run_accumulate_quads(c_rel, start, end, run_context(c_rel));
    }
}
