// The per-thread reduction of windows whose runs are shorter than eight values
// (`inner < 8`: channels-last and 2-D tensors whose channel count is not a multiple of four,
// spatial sizes such as 2x2; CPU adapters), in the scalar programs: one thread per chunk of one
// channel, chunk-major as `partials_per_thread_runs` (per_thread_runs.wgsl), but reading the
// chunk's values one at a time, eight before using any, along the walk across runs. Why not
// masked quads: each short run would take its own loads, partial and merge (docs/performance.md
// section 32: 8192x1002 2.7x slower, 4096x256x2x2 1.3x). Each eight becomes a partial
// through the program's `acc_eight(at, context)`, the values left through `acc_one(index,
// context)`; partials merge into blocks of RUN_BLOCK values, blocks into the chunk's total, so
// that no chain of merges runs the whole chunk.
fn run_accumulate(c_rel: u32, start: u32, end: u32, context: f32) -> Acc {
    var total = acc_empty();
    var walk = walk_values(c_rel, start, 1u);
    var m = start;
    while (m + 8u <= end) {
        var block = acc_empty();
        let block_end = min(m + RUN_BLOCK, end);
        while (m + 8u <= block_end) {
            block = acc_merge(block, acc_eight(walk_eight(&walk), context));
            m += 8u;
        }
        total = acc_merge(total, block);
    }
    while (m < end) {
        total = acc_merge(total, acc_one(walk.index, context));
        walk = walk_next(walk);
        m += 1u;
    }
    return total;
}

// One thread per chunk of one channel (per_thread_runs.wgsl's `chunk_item`): the statistics' or
// the gradient sums' partials, by the program's hooks.
@compute @workgroup_size(RUN_WORKGROUP)
fn partials_per_thread_values(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var item = gid.x; item < p.items; item += nwg.x * RUN_WORKGROUP) {
        let at = chunk_item(item);
        partials[partial_slot(at.c_rel, at.chunk)] =
            run_accumulate(at.c_rel, at.start, at.end, run_context(at.c_rel));
    }
}
