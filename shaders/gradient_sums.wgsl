// Batch-norm gradients, in three steps (dy here is `upstream`: with a ReLU epilogue, dy masked
// where the forward's output is <= 0):
// 1. `grad_partials_contiguous` / `grad_partials_strided`: each workgroup sums dy and
//    dy * (x - mean) over one chunk of one channel (or a band of `p.band` channels) into a
//    partials buffer, in a fixed tree order (reduction.wgsl); on CPU adapters
//    `partials_per_thread_runs` (per_thread_runs.wgsl) or, for runs shorter than eight
//    values, `partials_per_thread_values` (per_thread_values.wgsl), one thread per chunk, or
//    `partials_per_thread_quads` (per_thread_quads.wgsl), threads of four
//    channels sharing a chunk of rows (channels-last, a multiple of four channels). The sums
//    and their hooks are in gradient_sums_accumulator.wgsl.
// 2. `finalize` (one workgroup per channel) or `finalize_per_thread` (one thread per channel,
//    for few partials, and on CPU adapters), from reduction.wgsl, adds each channel's partials
//    in a fixed order; `finalize_channel` writes dbeta = sum(dy), dgamma = invstd * sum(dy * (x - mean)) =
//    sum(dy * x_hat).
// 3. dx (`input_gradient.wgsl`, `input_gradient_vec4.wgsl`, `input_gradient_words.wgsl`):
//    through batch statistics dx = gamma * invstd * (dy - dbeta / M - x_hat * dgamma / M);
//    through running statistics (constants) dx = dy * gamma * invstd; and with the add-ReLU
//    epilogue dz = dy.
// `finalize_channel` and `gradients` are in gradient_sums_finalize.wgsl. Where each channel is
// one chunk, `fused_backward_*` (f32) does all three in one dispatch; on CPU adapters
// `fused_backward_per_thread` (fused_per_thread_backward.wgsl), a thread per channel.

// The sums of eight elements: dy in g_lo.xyzw, g_hi.xyzw, x likewise.
fn sums_of_eight(
    g_lo: vec4<f32>,
    g_hi: vec4<f32>,
    x_lo: vec4<f32>,
    x_hi: vec4<f32>,
    mean: f32,
) -> vec2<f32> {
    let ones = vec4<f32>(1.0);
    return vec2<f32>(
        dot(g_lo, ones) + dot(g_hi, ones),
        dot(g_lo, x_lo - mean) + dot(g_hi, x_hi - mean),
    );
}

fn sums_of_one(g: f32, x: f32, mean: f32) -> vec2<f32> {
    return vec2<f32>(g, g * (x - mean));
}

// (sum dy, sum dy * (x - mean)) over eight elements, all sixteen loads issued first.
fn eight_sums(at: Eight, mean: f32) -> vec2<f32> {
    let g_lo = vec4<f32>(upstream(at.lo.x), upstream(at.lo.y), upstream(at.lo.z), upstream(at.lo.w));
    let g_hi = vec4<f32>(upstream(at.hi.x), upstream(at.hi.y), upstream(at.hi.z), upstream(at.hi.w));
    let x_lo = vec4<f32>(load_x(at.lo.x), load_x(at.lo.y), load_x(at.lo.z), load_x(at.lo.w));
    let x_hi = vec4<f32>(load_x(at.hi.x), load_x(at.hi.y), load_x(at.hi.z), load_x(at.hi.w));
    return sums_of_eight(g_lo, g_hi, x_lo, x_hi, mean);
}

// One thread's sums over the window channel c_rel's values [start, end) (contiguous kernels).
fn thread_sums_contiguous(c_rel: u32, start: u32, end: u32, lid: u32, mean: f32) -> vec2<f32> {
    var acc = acc_empty();
    var walk = walk_values(c_rel, start + lid, WORKGROUP);
    var m = start + lid;
    while (m + 7u * WORKGROUP < end) {
        acc += eight_sums(walk_eight(&walk), mean);
        m += 8u * WORKGROUP;
    }
    while (m < end) {
        acc += sums_of_one(upstream(walk.index), load_x(walk.index), mean);
        walk = walk_next(walk);
        m += WORKGROUP;
    }
    return acc;
}

// One row lane's sums of channel c_rel over rows [start, end) (strided kernels).
fn thread_sums_strided(c_rel: u32, start: u32, end: u32, lane_r: u32, mean: f32) -> vec2<f32> {
    var acc = acc_empty();
    let row_lanes = WORKGROUP / p.band;
    let row_step = row_lanes * p.channels;
    var row = start + lane_r;
    var index = row * p.channels + c_rel;
    while (row + 7u * row_lanes < end) {
        acc += eight_sums(stride_eight(index, row_step), mean);
        row += 8u * row_lanes;
        index += 8u * row_step;
    }
    while (row < end) {
        acc += sums_of_one(upstream(index), load_x(index), mean);
        row += row_lanes;
        index += row_step;
    }
    return acc;
}

// The hooks of the per-thread kernel of short runs (per_thread_values.wgsl): the sums of eight
// values, and of one.
fn acc_eight(at: Eight, mean: f32) -> vec2<f32> {
    return eight_sums(at, mean);
}

fn acc_one(index: u32, mean: f32) -> vec2<f32> {
    return sums_of_one(upstream(index), load_x(index), mean);
}

@compute @workgroup_size(WORKGROUP)
fn grad_partials_contiguous(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let values = p.o_count * p.inner;
    for (var item = wid.x; item < p.items; item += nwg.x) {
        let c_rel = item / p.chunks;
        let chunk = item - c_rel * p.chunks;
        let start = chunk * p.chunk_len;
        let end = min(start + p.chunk_len, values);
        let mean = stats_at(p.c0 + c_rel);
        shared_acc[lid] = thread_sums_contiguous(c_rel, start, end, lid, mean);
        reduce_workgroup(lid);
        if (lid == 0u) {
            partials[partial_slot(c_rel, chunk)] = shared_acc[0];
        }
        workgroupBarrier();
        channel_partial_written(c_rel, lid);
    }
}

@compute @workgroup_size(WORKGROUP)
fn grad_partials_strided(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lane_c = lid % p.band;
    let lane_r = lid / p.band;
    for (var item = wid.x; item < p.items; item += nwg.x) {
        let band = item / p.chunks;
        let chunk = item - band * p.chunks;
        let c_rel = band * p.band + lane_c;
        let start = chunk * p.chunk_len;
        let end = min(start + p.chunk_len, p.o_count);
        var acc = acc_empty();
        if (c_rel < p.c_count) {
            acc = thread_sums_strided(c_rel, start, end, lane_r, stats_at(p.c0 + c_rel));
        }
        shared_acc[lid] = acc;
        workgroupBarrier();
        if (lane_r == 0u && c_rel < p.c_count) {
            partials[partial_slot(c_rel, chunk)] = merge_row_lanes(lid);
        }
        workgroupBarrier();
        band_partial_written(band, lid);
    }
}
