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
// Each row is used as it is loaded: a channel keeps running sums over a group of up to eight
// rows (the program's `LaneSums`, a channel a lane), which become the quad's partials at the
// group's end (its `QuadAcc`, whose four channels share a count, so that a merge divides once
// for all four: docs/performance.md section 40); partials merge into a block of RUN_BLOCK
// rows, blocks into the chunk's total, so that no chain of additions runs the whole chunk.
// Loading eight rows of a quad before using any held 32 values a thread and ran at half the
// speed (docs/performance.md section 31).
//
// Loads go through the program's hooks (statistics_partial.wgsl,
// gradient_sums_accumulator.wgsl) over the prelude's `load_<role>_quad`: four scalar loads in
// the scalar programs, one vec4 load in the vec4 programs (where every tensor starts on a
// vec4); both sum in the same order, to the same bits.
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
    var block = quad_acc_empty();
    var total = quad_acc_empty();
    var row = start;
    var q = start * row_step + c_rel / 4u;
    while (row < end) {
        let group_end = min(row + 8u, end);
        let first = load_quad(q);
        q += row_step;
        // Each channel's group is shifted by its first row.
        var sums = sums_start(first, vec4<u32>(0u, 1u, 2u, 3u));
        sums = sums_add(sums, first, vec4<bool>(true), context);
        for (var r = row + 1u; r < group_end; r++) {
            sums = sums_add(sums, load_quad(q), vec4<bool>(true), context);
            q += row_step;
        }
        block = quad_acc_merge(block, sums_quad(sums, f32(group_end - row)));
        row = group_end;
        if ((row - start) % RUN_BLOCK == 0u || row == end) {
            total = quad_acc_merge(total, block);
            block = quad_acc_empty();
        }
    }
    for (var k = 0u; k < 4u; k++) {
        partials[partial_slot(c_rel + k, chunk)] = quad_acc_lane(total, k);
    }
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
