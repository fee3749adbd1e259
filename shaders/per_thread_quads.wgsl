// The per-thread reduction of channels-last windows (`inner == 1`) whose channel count is a
// multiple of four (CPU adapters). A thread reads rows of four consecutive channels (a quad),
// 16 contiguous bytes a row. QUAD_LANES threads share a chunk of rows, thread k taking quads
// k, k + QUAD_LANES, ...: on a CPU adapter, whose SIMD vector runs 8 consecutive threads, a
// vector reads 128 contiguous bytes of each row of its chunk, then the next 128 bytes of the
// same rows, and so on across the rows. The chunk is short (`MIN_QUAD_CHUNK_ROWS` rows and up,
// as many as keep the threads within the plan's budget), so its pages and cache lines are
// still at hand when the vector comes back for the next 128 bytes: sweeping all rows for each
// 128 bytes of a wide row (16 KiB at 4096 channels) touched a new page at every load and ran
// at a third of the speed.
//
// Loads go through the program's hooks (statistics_partial.wgsl,
// gradient_sums_accumulator.wgsl) over the prelude's `load_<role>_quad`: four scalar loads in
// the scalar programs, one vec4 load in the vec4 programs (where every tensor starts on a
// vec4). Each channel is merged exactly as reduction.wgsl's `run_accumulate` merges it,
// whichever the load width: eights of consecutive rows in blocks of RUN_BLOCK rows, then the
// rows left one at a time.
fn reduce_quads_per_thread(thread: u32, threads: u32) {
    let quads = p.c_count / 4u;
    // Fewer quads than QUAD_LANES (narrow tensors): a vector takes several chunks.
    let lanes = min(QUAD_LANES, quads);
    let groups = threads / lanes;
    if (thread >= groups * lanes) {
        return;
    }
    for (var chunk = thread / lanes; chunk < p.chunks; chunk += groups) {
        let start = chunk * p.chunk_len;
        let end = min(start + p.chunk_len, p.o_count);
        for (var quad = thread % lanes; quad < quads; quad += lanes) {
            reduce_quad(4u * quad, chunk, start, end);
        }
    }
}

// Window channels c_rel to c_rel + 3 over rows [start, end), into their partials of `chunk`.
fn reduce_quad(c_rel: u32, chunk: u32, start: u32, end: u32) {
    let row_step = p.channels / 4u;
    let context = vec4<f32>(
        run_context(c_rel),
        run_context(c_rel + 1u),
        run_context(c_rel + 2u),
        run_context(c_rel + 3u),
    );
    var total0 = acc_empty();
    var total1 = acc_empty();
    var total2 = acc_empty();
    var total3 = acc_empty();
    var row = start;
    var q = start * row_step + c_rel / 4u;
    while (row + 8u <= end) {
        var block0 = acc_empty();
        var block1 = acc_empty();
        var block2 = acc_empty();
        var block3 = acc_empty();
        let block_end = min(row + RUN_BLOCK, end);
        while (row + 8u <= block_end) {
            let r0 = load_quad(q);
            let r1 = load_quad(q + row_step);
            let r2 = load_quad(q + 2u * row_step);
            let r3 = load_quad(q + 3u * row_step);
            let r4 = load_quad(q + 4u * row_step);
            let r5 = load_quad(q + 5u * row_step);
            let r6 = load_quad(q + 6u * row_step);
            let r7 = load_quad(q + 7u * row_step);
            let lo0 = quad_lane(r0, r1, r2, r3, 0u);
            block0 = acc_merge(block0, quads_acc(lo0, quad_lane(r4, r5, r6, r7, 0u), context.x));
            let lo1 = quad_lane(r0, r1, r2, r3, 1u);
            block1 = acc_merge(block1, quads_acc(lo1, quad_lane(r4, r5, r6, r7, 1u), context.y));
            let lo2 = quad_lane(r0, r1, r2, r3, 2u);
            block2 = acc_merge(block2, quads_acc(lo2, quad_lane(r4, r5, r6, r7, 2u), context.z));
            let lo3 = quad_lane(r0, r1, r2, r3, 3u);
            block3 = acc_merge(block3, quads_acc(lo3, quad_lane(r4, r5, r6, r7, 3u), context.w));
            row += 8u;
            q += 8u * row_step;
        }
        total0 = acc_merge(total0, block0);
        total1 = acc_merge(total1, block1);
        total2 = acc_merge(total2, block2);
        total3 = acc_merge(total3, block3);
    }
    while (row < end) {
        let r = load_quad(q);
        total0 = acc_merge(total0, lane_acc(r, 0u, context.x));
        total1 = acc_merge(total1, lane_acc(r, 1u, context.y));
        total2 = acc_merge(total2, lane_acc(r, 2u, context.z));
        total3 = acc_merge(total3, lane_acc(r, 3u, context.w));
        row += 1u;
        q += row_step;
    }
    partials[partial_slot(c_rel, chunk)] = total0;
    partials[partial_slot(c_rel + 1u, chunk)] = total1;
    partials[partial_slot(c_rel + 2u, chunk)] = total2;
    partials[partial_slot(c_rel + 3u, chunk)] = total3;
}

// One thread per quad of a chunk of rows: the statistics' or the gradient sums' partials, by
// the program's hooks.
@compute @workgroup_size(RUN_WORKGROUP)
fn partials_per_thread_quads(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    reduce_quads_per_thread(gid.x, nwg.x * RUN_WORKGROUP);
}
