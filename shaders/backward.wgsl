// Batch-norm gradients, in three steps:
// 1. `grad_partials_contiguous` / `grad_partials_strided`: each workgroup sums dy and
//    dy * (x - mean) over one chunk of one channel (or a band of 32 channels) into a partials
//    buffer, in a fixed tree order.
// 2. `finalize_gradients` (one workgroup per channel) or `finalize_gradients_per_thread` (one
//    thread per channel, for few partials) adds each channel's partials in a fixed order:
//    dbeta = sum(dy), dgamma = invstd * sum(dy * (x - mean)) = sum(dy * x_hat).
// 3. `input_gradient` (or `input_gradient_vec4.wgsl`): through batch statistics
//    dx = gamma * invstd * (dy - dbeta / M - x_hat * dgamma / M);
//    through running statistics (constants) dx = dy * gamma * invstd.

// (stats, affine, grads and the dx factors: `dx_factors.wgsl`, which comes first.)

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
// (sum dy, sum dy * (x - mean)) per chunk
@group(0) @binding(6) var<storage, read_write> partials: array<vec2<f32>>;

var<workgroup> shared_sums: array<vec2<f32>, WORKGROUP>;

// Adds shared_sums[0..WORKGROUP] into shared_sums[0] in a fixed order, eight at a time
// (256 -> 32 -> 4 -> 1): three barriers instead of a binary tree's eight.
fn reduce_workgroup(lid: u32) {
    workgroupBarrier();
    var width = WORKGROUP;
    loop {
        let next = max(width / 8u, 1u);
        if (lid < next) {
            var acc = shared_sums[lid];
            for (var k = lid + next; k < width; k += next) {
                acc += shared_sums[k];
            }
            shared_sums[lid] = acc;
        }
        workgroupBarrier();
        width = next;
        if (width == 1u) {
            break;
        }
    }
}

// (sum dy, sum dy * (x - mean)) over eight elements, all sixteen loads issued first.
fn eight_sums(at: Eight, mean: f32) -> vec2<f32> {
    let g_lo = vec4<f32>(dy[at.lo.x], dy[at.lo.y], dy[at.lo.z], dy[at.lo.w]);
    let g_hi = vec4<f32>(dy[at.hi.x], dy[at.hi.y], dy[at.hi.z], dy[at.hi.w]);
    let x_lo = vec4<f32>(x[at.lo.x], x[at.lo.y], x[at.lo.z], x[at.lo.w]);
    let x_hi = vec4<f32>(x[at.hi.x], x[at.hi.y], x[at.hi.z], x[at.hi.w]);
    let ones = vec4<f32>(1.0);
    return vec2<f32>(
        dot(g_lo, ones) + dot(g_hi, ones),
        dot(g_lo, x_lo - mean) + dot(g_hi, x_hi - mean),
    );
}

// One thread's sums over the window channel c_rel's values [start, end) (contiguous kernels).
fn thread_sums_contiguous(c_rel: u32, start: u32, end: u32, lid: u32, mean: f32) -> vec2<f32> {
    var acc = vec2<f32>(0.0);
    var walk = walk_values(c_rel, start + lid);
    var m = start + lid;
    while (m + 7u * WORKGROUP < end) {
        acc += eight_sums(walk_eight(&walk), mean);
        m += 8u * WORKGROUP;
    }
    while (m < end) {
        let g = dy[walk.index];
        acc += vec2<f32>(g, g * (x[walk.index] - mean));
        walk = walk_next(walk);
        m += WORKGROUP;
    }
    return acc;
}

// One row lane's sums of channel c_rel over rows [start, end) (strided kernels).
fn thread_sums_strided(c_rel: u32, start: u32, end: u32, lane_r: u32, mean: f32) -> vec2<f32> {
    var acc = vec2<f32>(0.0);
    let row_step = ROW_LANES * p.channels;
    var row = start + lane_r;
    var index = p.elem_shift + row * p.channels + c_rel;
    while (row + 7u * ROW_LANES < end) {
        acc += eight_sums(stride_eight(index, row_step), mean);
        row += 8u * ROW_LANES;
        index += 8u * row_step;
    }
    while (row < end) {
        let g = dy[index];
        acc += vec2<f32>(g, g * (x[index] - mean));
        row += ROW_LANES;
        index += row_step;
    }
    return acc;
}

// Adds the row lanes of a strided workgroup's channel (called by row lane 0, after a barrier
// that follows every lane's write of shared_sums).
fn add_row_lanes(lid: u32) -> vec2<f32> {
    var acc = shared_sums[lid];
    for (var lane = 1u; lane < ROW_LANES; lane += 1u) {
        acc += shared_sums[lid + lane * BAND];
    }
    return acc;
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
        let mean = stats[p.c0 + c_rel];
        shared_sums[lid] = thread_sums_contiguous(c_rel, start, end, lid, mean);
        reduce_workgroup(lid);
        if (lid == 0u) {
            partials[(p.c0 + c_rel) * p.chunks_total + p.chunk_base + chunk] = shared_sums[0];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WORKGROUP)
fn grad_partials_strided(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lane_c = lid % BAND;
    let lane_r = lid / BAND;
    for (var item = wid.x; item < p.items; item += nwg.x) {
        let band = item / p.chunks;
        let chunk = item - band * p.chunks;
        let c_rel = band * BAND + lane_c;
        let start = chunk * p.chunk_len;
        let end = min(start + p.chunk_len, p.o_count);
        var acc = vec2<f32>(0.0);
        if (c_rel < p.c_count) {
            acc = thread_sums_strided(c_rel, start, end, lane_r, stats[p.c0 + c_rel]);
        }
        shared_sums[lid] = acc;
        workgroupBarrier();
        if (lane_r == 0u && c_rel < p.c_count) {
            partials[(p.c0 + c_rel) * p.chunks_total + p.chunk_base + chunk] = add_row_lanes(lid);
        }
        workgroupBarrier();
    }
}

// (dgamma, dbeta) of channel c from its (sum dy, sum dy * (x - mean)).
fn gradients(c: u32, sums: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(sums.y * stats[p.channels + c], sums.x);
}

fn write_gradients(c: u32, sums: vec2<f32>) {
    let dgamma_dbeta = gradients(c, sums);
    grads[c] = dgamma_dbeta.x;
    grads[p.channels + c] = dgamma_dbeta.y;
}

// One workgroup per channel: for channels with many partials.
@compute @workgroup_size(WORKGROUP)
fn finalize_gradients(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var c = wid.x; c < p.channels; c += nwg.x) {
        var acc = vec2<f32>(0.0);
        for (var k = lid; k < p.chunks_total; k += WORKGROUP) {
            acc += partials[c * p.chunks_total + k];
        }
        shared_sums[lid] = acc;
        reduce_workgroup(lid);
        if (lid == 0u) {
            write_gradients(c, shared_sums[0]);
        }
        workgroupBarrier();
    }
}

// One thread per channel: for channels with few partials.
@compute @workgroup_size(WORKGROUP)
fn finalize_gradients_per_thread(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var c = gid.x; c < p.channels; c += nwg.x * WORKGROUP) {
        var acc = vec2<f32>(0.0);
        for (var k = 0u; k < p.chunks_total; k += 1u) {
            acc += partials[c * p.chunks_total + k];
        }
        write_gradients(c, acc);
    }
}

fn input_gradient_one(index: u32, f: DxFactors) {
    if (BATCH_STATS) {
        let x_hat = (x[index] - f.mean) * f.invstd;
        dx[index] = f.scale * (dy[index] - f.mean_dy - x_hat * f.mean_dy_xhat);
    } else {
        dx[index] = dy[index] * f.scale;
    }
}

@compute @workgroup_size(WORKGROUP)
fn input_gradient(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let total = p.o_count * p.c_count * p.inner;
    let stride = nwg.x * WORKGROUP;
    if (stride_keeps_channel(stride)) {
        if (gid.x >= total) {
            return;
        }
        let first = cursor_at(gid.x);
        let f = channel_factors(first.c);
        for (var e = gid.x; e < total; e += stride) {
            input_gradient_one(first.index + (e - gid.x), f);
        }
    } else {
        for (var e = gid.x; e < total; e += stride) {
            let cursor = cursor_at(e);
            input_gradient_one(cursor.index, channel_factors(cursor.c));
        }
    }
}

// Single pass, for windows that hold every value of their channels in one chunk (the plan's
// fused window): each workgroup sums its channel (or band of channels), writes dgamma and
// dbeta, then writes dx from the values it has just read and so mostly finds in cache. One
// dispatch instead of three.

var<workgroup> band_sums: array<vec2<f32>, BAND>;

fn input_gradient_eight(at: Eight, f: DxFactors) {
    let g_lo = vec4<f32>(dy[at.lo.x], dy[at.lo.y], dy[at.lo.z], dy[at.lo.w]);
    let g_hi = vec4<f32>(dy[at.hi.x], dy[at.hi.y], dy[at.hi.z], dy[at.hi.w]);
    var lo = g_lo * f.scale;
    var hi = g_hi * f.scale;
    if (BATCH_STATS) {
        let x_lo = vec4<f32>(x[at.lo.x], x[at.lo.y], x[at.lo.z], x[at.lo.w]);
        let x_hi = vec4<f32>(x[at.hi.x], x[at.hi.y], x[at.hi.z], x[at.hi.w]);
        let x_hat_lo = (x_lo - f.mean) * f.invstd;
        let x_hat_hi = (x_hi - f.mean) * f.invstd;
        lo = f.scale * (g_lo - f.mean_dy - x_hat_lo * f.mean_dy_xhat);
        hi = f.scale * (g_hi - f.mean_dy - x_hat_hi * f.mean_dy_xhat);
    }
    dx[at.lo.x] = lo.x;
    dx[at.lo.y] = lo.y;
    dx[at.lo.z] = lo.z;
    dx[at.lo.w] = lo.w;
    dx[at.hi.x] = hi.x;
    dx[at.hi.y] = hi.y;
    dx[at.hi.z] = hi.z;
    dx[at.hi.w] = hi.w;
}

@compute @workgroup_size(WORKGROUP)
fn fused_backward_contiguous(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let values = p.o_count * p.inner;
    for (var c_rel = wid.x; c_rel < p.c_count; c_rel += nwg.x) {
        let c = p.c0 + c_rel;
        shared_sums[lid] = thread_sums_contiguous(c_rel, 0u, values, lid, stats[c]);
        reduce_workgroup(lid);
        let sums = shared_sums[0];
        if (lid == 0u) {
            write_gradients(c, sums);
        }
        let f = dx_factors(c, gradients(c, sums));
        var walk = walk_values(c_rel, lid);
        var m = lid;
        while (m + 7u * WORKGROUP < values) {
            input_gradient_eight(walk_eight(&walk), f);
            m += 8u * WORKGROUP;
        }
        while (m < values) {
            input_gradient_one(walk.index, f);
            walk = walk_next(walk);
            m += WORKGROUP;
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WORKGROUP)
fn fused_backward_strided(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lane_c = lid % BAND;
    let lane_r = lid / BAND;
    for (var band = wid.x; band < p.items; band += nwg.x) {
        let c_rel = band * BAND + lane_c;
        let c = p.c0 + c_rel;
        var acc = vec2<f32>(0.0);
        if (c_rel < p.c_count) {
            acc = thread_sums_strided(c_rel, 0u, p.o_count, lane_r, stats[c]);
        }
        shared_sums[lid] = acc;
        workgroupBarrier();
        if (lane_r == 0u && c_rel < p.c_count) {
            let sums = add_row_lanes(lid);
            write_gradients(c, sums);
            band_sums[lane_c] = sums;
        }
        workgroupBarrier();
        if (c_rel < p.c_count) {
            let f = dx_factors(c, gradients(c, band_sums[lane_c]));
            let row_step = ROW_LANES * p.channels;
            var row = lane_r;
            var index = p.elem_shift + row * p.channels + c_rel;
            while (row + 7u * ROW_LANES < p.o_count) {
                input_gradient_eight(stride_eight(index, row_step), f);
                row += 8u * ROW_LANES;
                index += 8u * row_step;
            }
            while (row < p.o_count) {
                input_gradient_one(index, f);
                row += ROW_LANES;
                index += row_step;
            }
        }
        workgroupBarrier();
    }
}
