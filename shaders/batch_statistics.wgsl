// Per-channel mean and biased variance, in two steps:
// 1. `partials_contiguous` / `partials_strided`: each workgroup reduces one chunk of one channel
//    (or, strided, of a band of 32 channels) to a partial (count, shift, mean - shift, M2). Every
//    thread runs Welford on values minus the chunk's first value (the shift), and the workgroup
//    merges its threads with Chan's formula in a fixed tree order.
// 2. `finalize_statistics` (one workgroup per channel) or `finalize_statistics_per_thread` (one
//    thread per channel, when channels have few partials) merges each channel's partials in a
//    fixed order, writes mean and invstd, and updates the running stats.
// `statistics_from_running` writes mean and invstd from the running stats (inference).
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

// Chan's formula; the result keeps a's shift.
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
    return Partial(
        n,
        a.shift,
        a.mean + delta * weight_b,
        a.m2 + b.m2 + delta * delta * a.n * weight_b,
    );
}

// Welford step with one more value x of a partial whose shift is already set.
fn welford(acc: Partial, x: f32) -> Partial {
    let d = x - acc.shift;
    let n = acc.n + 1.0;
    let delta = d - acc.mean;
    let mean = acc.mean + delta / n;
    return Partial(n, acc.shift, mean, acc.m2 + delta * (d - mean));
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
        var acc = Partial(0.0, x[walk_values(c_rel, start).index], 0.0, 0.0);
        var walk = walk_values(c_rel, start + lid);
        for (var m = start + lid; m < end; m += WORKGROUP) {
            acc = welford(acc, x[walk.index]);
            walk = walk_next(walk);
        }
        shared_partials[lid] = acc;
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
            acc.shift = x[p.elem_shift + start * p.channels + c_rel];
            for (var row = start + lane_r; row < end; row += ROW_LANES) {
                acc = welford(acc, x[p.elem_shift + row * p.channels + c_rel]);
            }
        }
        shared_partials[lid] = acc;
        workgroupBarrier();
        if (lane_r == 0u && c_rel < p.c_count) {
            for (var lane = 1u; lane < ROW_LANES; lane += 1u) {
                acc = merge(acc, shared_partials[lid + lane * BAND]);
            }
            partials[(p.c0 + c_rel) * p.chunks_total + p.chunk_base + chunk] = acc;
        }
        workgroupBarrier();
    }
}

fn write_statistics(c: u32, total: Partial) {
    let mean = total.shift + total.mean;
    // M2 is a sum of non-negative terms, so no clamp: max(NaN, 0) would hide a NaN.
    let variance = total.m2 / total.n;
    stats[c] = mean;
    stats[p.channels + c] = 1.0 / sqrt(variance + p.eps);
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

@compute @workgroup_size(WORKGROUP)
fn statistics_from_running(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var c = gid.x; c < p.channels; c += nwg.x * WORKGROUP) {
        stats[c] = running[c];
        stats[p.channels + c] = 1.0 / sqrt(running[p.channels + c] + p.eps);
    }
}
