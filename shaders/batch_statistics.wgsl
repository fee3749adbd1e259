// Per-channel mean and biased variance, in two steps:
// 1. `partials_contiguous` / `partials_strided`: each workgroup reduces one chunk of one channel
//    (or, strided, of a band of 32 channels) to a partial (count, shift, mean - shift, M2). Every
//    thread loads its values eight at a time (see `Eight` in common.wgsl), takes their mean and
//    M2 about the first of them (the shift) in registers and merges them into its partial with
//    Chan's formula; the workgroup merges its threads the same way in a fixed tree order.
// 2. `finalize_statistics` (one workgroup per channel) or `finalize_statistics_per_thread` (one
//    thread per channel, when channels have few partials) merges each channel's partials in a
//    fixed order, writes mean and invstd, and updates the running stats.
//
// Why the shift travels with each partial: at an offset of 1e4 a float32 mean carries an error
// of ~5e-4, and Chan's merge squares the difference of two means. Merging shifted means, with
// the difference of two shifts (exact for nearby values) added separately, keeps the variance
// accurate whatever the offset. Never E[x^2] - E[x]^2: it loses every digit when the mean is
// large.

struct Partial {
    n: f32,
    shift: f32,
    // Mean of the values minus `shift`.
    mean: f32,
    m2: f32,
}

override HAS_RUNNING: bool = false;

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<Partial>;
// [running_mean (C) | running_var (C)]
@group(0) @binding(3) var<storage, read_write> running: array<f32>;
// [mean (C) | invstd (C)]
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;

var<workgroup> shared_partials: array<Partial, WORKGROUP>;

// Chan's formula. The merged mean is kept relative to whichever of the two shifts it lies
// closer to: later merges then round a quantity of the size of the spread, whatever value a
// shift came from (a value far from the mean, such as an outlier that happens to come first,
// would otherwise have every later merge round at its distance from the mean).
fn merge(a: Partial, b: Partial) -> Partial {
    if (a.n == 0.0) {
        return b;
    }
    if (b.n == 0.0) {
        return a;
    }
    let n = a.n + b.n;
    let delta = (b.shift - a.shift) + (b.mean - a.mean);
    let weight_b = b.n / n;
    let about_a = a.mean + delta * weight_b;
    let about_b = b.mean - delta * (1.0 - weight_b);
    let closer_to_b = abs(about_b) < abs(about_a);
    return Partial(
        n,
        select(a.shift, b.shift, closer_to_b),
        select(about_a, about_b, closer_to_b),
        a.m2 + b.m2 + delta * delta * a.n * weight_b,
    );
}

struct Values8 {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn load_eight(at: Eight) -> Values8 {
    return Values8(
        vec4<f32>(x[at.lo.x], x[at.lo.y], x[at.lo.z], x[at.lo.w]),
        vec4<f32>(x[at.hi.x], x[at.hi.y], x[at.hi.z], x[at.hi.w]),
    );
}

// The partial of eight values, shifted by the first: their mean and M2 in registers.
fn eight_partial(v: Values8) -> Partial {
    let shift = v.lo.x;
    let lo = v.lo - shift;
    let hi = v.hi - shift;
    let mean = dot(lo + hi, vec4<f32>(0.125));
    let d_lo = lo - mean;
    let d_hi = hi - mean;
    return Partial(8.0, shift, mean, dot(d_lo, d_lo) + dot(d_hi, d_hi));
}

// Merges shared_partials[0..WORKGROUP] into shared_partials[0] in a fixed order, eight at a
// time (256 -> 32 -> 4 -> 1): three barriers instead of a binary tree's eight.
fn reduce_workgroup(lid: u32) {
    workgroupBarrier();
    var width = WORKGROUP;
    loop {
        let next = max(width / 8u, 1u);
        if (lid < next) {
            var acc = shared_partials[lid];
            for (var k = lid + next; k < width; k += next) {
                acc = merge(acc, shared_partials[k]);
            }
            shared_partials[lid] = acc;
        }
        workgroupBarrier();
        width = next;
        if (width == 1u) {
            break;
        }
    }
}

// One thread's partial of the window channel c_rel's values [start, end) (contiguous kernels).
fn thread_partial_contiguous(c_rel: u32, start: u32, end: u32, lid: u32) -> Partial {
    var acc = Partial(0.0, 0.0, 0.0, 0.0);
    var walk = walk_values(c_rel, start + lid);
    var m = start + lid;
    while (m + 7u * WORKGROUP < end) {
        acc = merge(acc, eight_partial(load_eight(walk_eight(&walk))));
        m += 8u * WORKGROUP;
    }
    while (m < end) {
        acc = merge(acc, Partial(1.0, x[walk.index], 0.0, 0.0));
        walk = walk_next(walk);
        m += WORKGROUP;
    }
    return acc;
}

// One row lane's partial of channel c_rel over rows [start, end) (strided kernels, c_rel in the
// window).
fn thread_partial_strided(c_rel: u32, start: u32, end: u32, lane_r: u32) -> Partial {
    var acc = Partial(0.0, 0.0, 0.0, 0.0);
    let row_step = ROW_LANES * p.channels;
    var row = start + lane_r;
    var index = p.elem_shift + row * p.channels + c_rel;
    while (row + 7u * ROW_LANES < end) {
        acc = merge(acc, eight_partial(load_eight(stride_eight(index, row_step))));
        row += 8u * ROW_LANES;
        index += 8u * row_step;
    }
    while (row < end) {
        acc = merge(acc, Partial(1.0, x[index], 0.0, 0.0));
        row += ROW_LANES;
        index += row_step;
    }
    return acc;
}

// Merges the row lanes of a strided workgroup's channel (called by row lane 0, after a barrier
// that follows every lane's write of shared_partials).
fn merge_row_lanes(lid: u32) -> Partial {
    var acc = shared_partials[lid];
    for (var lane = 1u; lane < ROW_LANES; lane += 1u) {
        acc = merge(acc, shared_partials[lid + lane * BAND]);
    }
    return acc;
}

@compute @workgroup_size(WORKGROUP)
fn partials_contiguous(
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
        shared_partials[lid] = thread_partial_contiguous(c_rel, start, end, lid);
        reduce_workgroup(lid);
        if (lid == 0u) {
            partials[(p.c0 + c_rel) * p.chunks_total + p.chunk_base + chunk] = shared_partials[0];
        }
        workgroupBarrier();
    }
}

// Channels-last (inner == 1, whole rows in the window): lanes of a warp read consecutive
// channels, so loads coalesce.
@compute @workgroup_size(WORKGROUP)
fn partials_strided(
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
        var acc = Partial(0.0, 0.0, 0.0, 0.0);
        if (c_rel < p.c_count) {
            acc = thread_partial_strided(c_rel, start, end, lane_r);
        }
        shared_partials[lid] = acc;
        workgroupBarrier();
        if (lane_r == 0u && c_rel < p.c_count) {
            partials[(p.c0 + c_rel) * p.chunks_total + p.chunk_base + chunk] = merge_row_lanes(lid);
        }
        workgroupBarrier();
    }
}

// (mean, invstd) of a channel's merged partial.
fn mean_invstd(total: Partial) -> vec2<f32> {
    // M2 is a sum of non-negative terms, so no clamp: max(NaN, 0) would hide a NaN.
    return vec2<f32>(total.shift + total.mean, 1.0 / sqrt(total.m2 / total.n + p.eps));
}

fn write_statistics(c: u32, total: Partial) {
    let mean = total.shift + total.mean;
    let variance = total.m2 / total.n;
    let statistics = mean_invstd(total);
    stats[c] = statistics.x;
    stats[p.channels + c] = statistics.y;
    if (HAS_RUNNING) {
        let keep = 1.0 - p.momentum;
        running[c] = keep * running[c] + p.momentum * mean;
        running[p.channels + c] = keep * running[p.channels + c]
            + p.momentum * variance * p.var_correction;
    }
}

// One workgroup per channel: for channels with many partials.
@compute @workgroup_size(WORKGROUP)
fn finalize_statistics(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var c = wid.x; c < p.channels; c += nwg.x) {
        var acc = Partial(0.0, 0.0, 0.0, 0.0);
        for (var k = lid; k < p.chunks_total; k += WORKGROUP) {
            acc = merge(acc, partials[c * p.chunks_total + k]);
        }
        shared_partials[lid] = acc;
        reduce_workgroup(lid);
        if (lid == 0u) {
            write_statistics(c, shared_partials[0]);
        }
        workgroupBarrier();
    }
}

// One thread per channel: for channels with few partials (no barriers, no idle threads).
@compute @workgroup_size(WORKGROUP)
fn finalize_statistics_per_thread(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var c = gid.x; c < p.channels; c += nwg.x * WORKGROUP) {
        var acc = Partial(0.0, 0.0, 0.0, 0.0);
        for (var k = 0u; k < p.chunks_total; k += 1u) {
            acc = merge(acc, partials[c * p.chunks_total + k]);
        }
        write_statistics(c, acc);
    }
}

// Single pass, for windows that hold every value of their channels in one chunk (the plan's
// `fused`): each workgroup reduces its channel (or band of channels) exactly as
// partials_* and the finalize would, writes the statistics, then normalizes the same values,
// which it has just read and so mostly finds in cache. One dispatch instead of three, and the
// second read of x comes from cache.

override HAS_AFFINE: bool = true;

@group(0) @binding(5) var<storage, read_write> y: array<f32>;
// [gamma (C) | beta (C)]
@group(0) @binding(6) var<storage, read> affine: array<f32>;

var<workgroup> band_statistics: array<vec2<f32>, BAND>;

// (scale, shift) of channel c: y = (x - mean) * scale + shift.
fn scale_shift(c: u32, statistics: vec2<f32>) -> vec2<f32> {
    if (HAS_AFFINE) {
        return vec2<f32>(statistics.y * affine[c], affine[p.channels + c]);
    }
    return vec2<f32>(statistics.y, 0.0);
}

fn normalize_eight(at: Eight, mean: f32, scale_shift: vec2<f32>) {
    let v = load_eight(at);
    let lo = (v.lo - mean) * scale_shift.x + scale_shift.y;
    let hi = (v.hi - mean) * scale_shift.x + scale_shift.y;
    y[at.lo.x] = lo.x;
    y[at.lo.y] = lo.y;
    y[at.lo.z] = lo.z;
    y[at.lo.w] = lo.w;
    y[at.hi.x] = hi.x;
    y[at.hi.y] = hi.y;
    y[at.hi.z] = hi.z;
    y[at.hi.w] = hi.w;
}

@compute @workgroup_size(WORKGROUP)
fn fused_forward_contiguous(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let values = p.o_count * p.inner;
    for (var c_rel = wid.x; c_rel < p.c_count; c_rel += nwg.x) {
        shared_partials[lid] = thread_partial_contiguous(c_rel, 0u, values, lid);
        reduce_workgroup(lid);
        let total = shared_partials[0];
        let c = p.c0 + c_rel;
        if (lid == 0u) {
            write_statistics(c, total);
        }
        let statistics = mean_invstd(total);
        let affine_c = scale_shift(c, statistics);
        var walk = walk_values(c_rel, lid);
        var m = lid;
        while (m + 7u * WORKGROUP < values) {
            normalize_eight(walk_eight(&walk), statistics.x, affine_c);
            m += 8u * WORKGROUP;
        }
        while (m < values) {
            y[walk.index] = (x[walk.index] - statistics.x) * affine_c.x + affine_c.y;
            walk = walk_next(walk);
            m += WORKGROUP;
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WORKGROUP)
fn fused_forward_strided(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lane_c = lid % BAND;
    let lane_r = lid / BAND;
    for (var band = wid.x; band < p.items; band += nwg.x) {
        let c_rel = band * BAND + lane_c;
        let c = p.c0 + c_rel;
        var acc = Partial(0.0, 0.0, 0.0, 0.0);
        if (c_rel < p.c_count) {
            acc = thread_partial_strided(c_rel, 0u, p.o_count, lane_r);
        }
        shared_partials[lid] = acc;
        workgroupBarrier();
        if (lane_r == 0u && c_rel < p.c_count) {
            let total = merge_row_lanes(lid);
            write_statistics(c, total);
            band_statistics[lane_c] = mean_invstd(total);
        }
        workgroupBarrier();
        if (c_rel < p.c_count) {
            let statistics = band_statistics[lane_c];
            let affine_c = scale_shift(c, statistics);
            let row_step = ROW_LANES * p.channels;
            var row = lane_r;
            var index = p.elem_shift + row * p.channels + c_rel;
            while (row + 7u * ROW_LANES < p.o_count) {
                normalize_eight(stride_eight(index, row_step), statistics.x, affine_c);
                row += 8u * ROW_LANES;
                index += 8u * row_step;
            }
            while (row < p.o_count) {
                y[index] = (x[index] - statistics.x) * affine_c.x + affine_c.y;
                row += ROW_LANES;
                index += row_step;
            }
        }
        workgroupBarrier();
    }
}
