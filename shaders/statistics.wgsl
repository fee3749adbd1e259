// Per-channel mean and biased variance, in two steps:
// 1. `partials_contiguous` / `partials_strided`: each workgroup reduces one chunk of one channel
//    (or, strided, of a band of `p.band` channels) to a partial (count, shift, mean - shift,
//    M2). Every thread loads its values eight at a time (see `Eight` in common.wgsl), takes their mean and
//    M2 about the first of them (the shift) in registers and merges them into its partial with
//    Chan's formula; the workgroup merges its threads the same way in a fixed tree order
//    (reduction.wgsl). On CPU adapters, `partials_per_thread_runs` (per_thread_runs.wgsl) or,
//    for runs shorter than eight values, `partials_per_thread_values`
//    (per_thread_values.wgsl): one thread per chunk, which it reads in order, with no
//    workgroup memory and no barrier; or, for channels-last with a multiple of four channels,
//    `partials_per_thread_quads` (per_thread_quads.wgsl): threads of four channels sharing a
//    chunk of rows. The accumulator and its merge are in statistics_partial.wgsl.
// 2. `finalize` (one workgroup per channel) or `finalize_per_thread` (one thread per channel,
//    when channels have few partials, and on CPU adapters), from reduction.wgsl, merges each channel's partials in a
//    fixed order; `finalize_channel` writes mean and invstd and updates the running stats.
// `finalize_channel` and `mean_invstd` are in statistics_finalize.wgsl. Where each channel is
// one chunk, `fused_forward_*` (fused_forward.wgsl, f32) does both steps and the output in one
// dispatch; on CPU adapters `fused_forward_per_thread` (fused_per_thread_forward.wgsl), a thread
// per channel.
//
// Why the shift travels with each partial: at an offset of 1e4 a float32 mean carries an error
// of ~5e-4, and Chan's merge squares the difference of two means. Merging shifted means, with
// the difference of two shifts (exact for nearby values) added separately, keeps the variance
// accurate whatever the offset. Never E[x^2] - E[x]^2: it loses every digit when the mean is
// large.

// Eight values, in order lo.xyzw, hi.xyzw.
struct Values8 {
    lo: vec4<f32>,
    hi: vec4<f32>,
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

fn load_eight(at: Eight) -> Values8 {
    return Values8(
        vec4<f32>(load_x(at.lo.x), load_x(at.lo.y), load_x(at.lo.z), load_x(at.lo.w)),
        vec4<f32>(load_x(at.hi.x), load_x(at.hi.y), load_x(at.hi.z), load_x(at.hi.w)),
    );
}

// One thread's partial of the window channel c_rel's values [start, end) (contiguous kernels).
fn thread_partial_contiguous(c_rel: u32, start: u32, end: u32, lid: u32) -> Partial {
    var acc = acc_empty();
    var walk = walk_values(c_rel, start + lid, WORKGROUP);
    var m = start + lid;
    while (m + 7u * WORKGROUP < end) {
        acc = merge(acc, eight_partial(load_eight(walk_eight(&walk))));
        m += 8u * WORKGROUP;
    }
    while (m < end) {
        acc = merge(acc, Partial(1.0, load_x(walk.index), 0.0, 0.0));
        walk = walk_next(walk);
        m += WORKGROUP;
    }
    return acc;
}

// One row lane's partial of channel c_rel over rows [start, end) (strided kernels, c_rel in the
// window).
fn thread_partial_strided(c_rel: u32, start: u32, end: u32, lane_r: u32) -> Partial {
    var acc = acc_empty();
    let row_lanes = WORKGROUP / p.band;
    let row_step = row_lanes * p.channels;
    var row = start + lane_r;
    var index = row * p.channels + c_rel;
    while (row + 7u * row_lanes < end) {
        acc = merge(acc, eight_partial(load_eight(stride_eight(index, row_step))));
        row += 8u * row_lanes;
        index += 8u * row_step;
    }
    while (row < end) {
        acc = merge(acc, Partial(1.0, load_x(index), 0.0, 0.0));
        row += row_lanes;
        index += row_step;
    }
    return acc;
}

// The hooks of the per-thread kernel of short runs (per_thread_values.wgsl): the partial of
// eight values, and of one.
fn acc_eight(at: Eight, unused: f32) -> Partial {
    return eight_partial(load_eight(at));
}

fn acc_one(index: u32, unused: f32) -> Partial {
    return Partial(1.0, load_x(index), 0.0, 0.0);
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
        shared_acc[lid] = thread_partial_contiguous(c_rel, start, end, lid);
        reduce_workgroup(lid);
        if (lid == 0u) {
            partials[partial_slot(c_rel, chunk)] = shared_acc[0];
        }
        workgroupBarrier();
        channel_partial_written(c_rel, lid);
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
            acc = thread_partial_strided(c_rel, start, end, lane_r);
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

// Advances the layer's batch count (momentum None), first in every training call. It stops at
// the largest u32 rather than wrap to 0, which `running_momentum` would divide by (at over 4e9
// batches a batch's weight, 2.3e-10, no longer moves the running stats in f32).
@compute @workgroup_size(1)
fn count_batch() {
    if (batches[0] < 0xffffffffu) {
        batches[0] += 1u;
    }
}
