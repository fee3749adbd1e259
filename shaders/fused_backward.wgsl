// The fused backward (f32 only: its threads store single elements), for windows that hold every
// value of their channels in one chunk (the plan's fused window): each workgroup sums its channel (or band of channels), writes dgamma and
// dbeta, then writes dx from the values it has just read and so mostly finds in cache. One
// dispatch instead of three.

var<workgroup> band_sums: array<vec2<f32>, MAX_BAND>;

fn input_gradient_eight(at: Eight, f: LaneFactors) {
    let g_lo = vec4<f32>(upstream(at.lo.x), upstream(at.lo.y), upstream(at.lo.z), upstream(at.lo.w));
    let g_hi = vec4<f32>(upstream(at.hi.x), upstream(at.hi.y), upstream(at.hi.z), upstream(at.hi.w));
    var x_lo = vec4<f32>(0.0);
    var x_hi = vec4<f32>(0.0);
    if (BATCH_STATS) {
        x_lo = vec4<f32>(load_x(at.lo.x), load_x(at.lo.y), load_x(at.lo.z), load_x(at.lo.w));
        x_hi = vec4<f32>(load_x(at.hi.x), load_x(at.hi.y), load_x(at.hi.z), load_x(at.hi.w));
    }
    let lo = input_gradient_value4(x_lo, g_lo, f);
    let hi = input_gradient_value4(x_hi, g_hi, f);
    store_dx(at.lo.x, lo.x);
    store_dx(at.lo.y, lo.y);
    store_dx(at.lo.z, lo.z);
    store_dx(at.lo.w, lo.w);
    store_dx(at.hi.x, hi.x);
    store_dx(at.hi.y, hi.y);
    store_dx(at.hi.z, hi.z);
    store_dx(at.hi.w, hi.w);
    if (ADD) {
        store_dz(at.lo.x, g_lo.x);
        store_dz(at.lo.y, g_lo.y);
        store_dz(at.lo.z, g_lo.z);
        store_dz(at.lo.w, g_lo.w);
        store_dz(at.hi.x, g_hi.x);
        store_dz(at.hi.y, g_hi.y);
        store_dz(at.hi.z, g_hi.z);
        store_dz(at.hi.w, g_hi.w);
    }
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
        shared_acc[lid] = thread_sums_contiguous(c_rel, 0u, values, lid, stats_at(c));
        reduce_workgroup(lid);
        let sums = shared_acc[0];
        if (lid == 0u) {
            finalize_channel(c, sums);
        }
        let f = dx_factors(c, gradients(c, sums));
        let lanes = splat_factors(f);
        var walk = walk_values(c_rel, lid, WORKGROUP);
        var m = lid;
        while (m + 7u * WORKGROUP < values) {
            input_gradient_eight(walk_eight(&walk), lanes);
            m += 8u * WORKGROUP;
        }
        while (m < values) {
            apply(walk.index, f);
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
    let lane_c = lid % p.band;
    let lane_r = lid / p.band;
    for (var band = wid.x; band < p.items; band += nwg.x) {
        let c_rel = band * p.band + lane_c;
        let c = p.c0 + c_rel;
        var acc = acc_empty();
        if (c_rel < p.c_count) {
            acc = thread_sums_strided(c_rel, 0u, p.o_count, lane_r, stats_at(c));
        }
        shared_acc[lid] = acc;
        workgroupBarrier();
        if (lane_r == 0u && c_rel < p.c_count) {
            let sums = merge_row_lanes(lid);
            finalize_channel(c, sums);
            band_sums[lane_c] = sums;
        }
        workgroupBarrier();
        if (c_rel < p.c_count) {
            let f = dx_factors(c, gradients(c, band_sums[lane_c]));
            let lanes = splat_factors(f);
            let row_lanes = WORKGROUP / p.band;
            let row_step = row_lanes * p.channels;
            var row = lane_r;
            var index = row * p.channels + c_rel;
            while (row + 7u * row_lanes < p.o_count) {
                input_gradient_eight(stride_eight(index, row_step), lanes);
                row += 8u * row_lanes;
                index += 8u * row_step;
            }
            while (row < p.o_count) {
                apply(index, f);
                row += row_lanes;
                index += row_step;
            }
        }
        workgroupBarrier();
    }
}
