// The fused training forward (f32 only: its threads store single elements), for windows that
// hold every value of their channels in one chunk (the plan's `fused_window`): each workgroup
// reduces its channel (or band of channels) exactly as partials_* and the finalize would
// (statistics.wgsl), writes the statistics, then normalizes the same values, which it has just
// read and so mostly finds in cache. One dispatch instead of three.

var<workgroup> band_statistics: array<vec2<f32>, MAX_BAND>;

fn normalize_eight(at: Eight, mean: f32, scale_shift: vec2<f32>) {
    let v = load_eight(at);
    let mean4 = vec4<f32>(mean);
    let scale4 = vec4<f32>(scale_shift.x);
    let shift4 = vec4<f32>(scale_shift.y);
    var z_lo = vec4<f32>(0.0);
    var z_hi = vec4<f32>(0.0);
    if (ADD) {
        z_lo = vec4<f32>(load_z(at.lo.x), load_z(at.lo.y), load_z(at.lo.z), load_z(at.lo.w));
        z_hi = vec4<f32>(load_z(at.hi.x), load_z(at.hi.y), load_z(at.hi.z), load_z(at.hi.w));
    }
    let lo = epilogue4(normalized4(v.lo, mean4, scale4, shift4), z_lo);
    let hi = epilogue4(normalized4(v.hi, mean4, scale4, shift4), z_hi);
    store_y(at.lo.x, lo.x);
    store_y(at.lo.y, lo.y);
    store_y(at.lo.z, lo.z);
    store_y(at.lo.w, lo.w);
    store_y(at.hi.x, hi.x);
    store_y(at.hi.y, hi.y);
    store_y(at.hi.z, hi.z);
    store_y(at.hi.w, hi.w);
}

// y of one element.
fn normalize_one(index: u32, mean: f32, scale_shift: vec2<f32>) {
    let pre = normalized(load_x(index), mean, scale_shift.x, scale_shift.y);
    store_y(index, epilogue(pre, shortcut(index)));
}

@compute @workgroup_size(WORKGROUP)
fn fused_forward_contiguous(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let values = p.o_count * p.inner;
    for (var c_rel = wid.x; c_rel < p.c_count; c_rel += nwg.x) {
        shared_acc[lid] = thread_partial_contiguous(c_rel, 0u, values, lid);
        reduce_workgroup(lid);
        let total = shared_acc[0];
        let c = p.c0 + c_rel;
        if (lid == 0u) {
            finalize_channel(c, total);
        }
        let statistics = mean_invstd(total);
        let affine_c = scale_shift(c, statistics);
        var walk = walk_values(c_rel, lid, WORKGROUP);
        var m = lid;
        while (m + 7u * WORKGROUP < values) {
            normalize_eight(walk_eight(&walk), statistics.x, affine_c);
            m += 8u * WORKGROUP;
        }
        while (m < values) {
            normalize_one(walk.index, statistics.x, affine_c);
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
    let lane_c = lid % p.band;
    let lane_r = lid / p.band;
    for (var band = wid.x; band < p.items; band += nwg.x) {
        let c_rel = band * p.band + lane_c;
        let c = p.c0 + c_rel;
        var acc = acc_empty();
        if (c_rel < p.c_count) {
            acc = thread_partial_strided(c_rel, 0u, p.o_count, lane_r);
        }
        shared_acc[lid] = acc;
        workgroupBarrier();
        if (lane_r == 0u && c_rel < p.c_count) {
            let total = merge_row_lanes(lid);
            finalize_channel(c, total);
            band_statistics[lane_c] = mean_invstd(total);
        }
        workgroupBarrier();
        if (c_rel < p.c_count) {
            let statistics = band_statistics[lane_c];
            let affine_c = scale_shift(c, statistics);
            let row_lanes = WORKGROUP / p.band;
            let row_step = row_lanes * p.channels;
            var row = lane_r;
            var index = row * p.channels + c_rel;
            while (row + 7u * row_lanes < p.o_count) {
                normalize_eight(stride_eight(index, row_step), statistics.x, affine_c);
                row += 8u * row_lanes;
                index += 8u * row_step;
            }
            while (row < p.o_count) {
                normalize_one(index, statistics.x, affine_c);
                row += row_lanes;
                index += row_step;
            }
        }
        workgroupBarrier();
    }
}
