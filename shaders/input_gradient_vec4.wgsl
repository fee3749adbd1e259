// The `input_gradient` kernel of `input_gradient.wgsl` on four elements at a time, for windows whose
// rows split into whole vec4s (the rule and the lanes' channels of `normalize_vec4.wgsl`).
// With the add-ReLU epilogue, dz = dy too.

// One channel's factors where the lanes share it (LANES_SHARE_CHANNEL, normalize_vec4.wgsl).
fn lane_factors(cursor: ElementCursor) -> LaneFactors {
    if (LANES_SHARE_CHANNEL) {
        return splat_factors(channel_factors(cursor.c));
    }
    // Channels-last: one load each of the four channels' factors (normalize_vec4.wgsl).
    if (CHANNEL_QUADS) {
        return quad_factors(cursor.c);
    }
    let lanes = channel_lanes(cursor);
    let f0 = channel_factors(lanes.x);
    let f1 = channel_factors(lanes.y);
    let f2 = channel_factors(lanes.z);
    let f3 = channel_factors(lanes.w);
    return LaneFactors(
        vec4<f32>(f0.mean, f1.mean, f2.mean, f3.mean),
        vec4<f32>(f0.invstd, f1.invstd, f2.invstd, f3.invstd),
        vec4<f32>(f0.scale, f1.scale, f2.scale, f3.scale),
        vec4<f32>(f0.mean_dy, f1.mean_dy, f2.mean_dy, f3.mean_dy),
        vec4<f32>(f0.mean_dy_xhat, f1.mean_dy_xhat, f2.mean_dy_xhat, f3.mean_dy_xhat),
    );
}

// Channels c to c + 3 (c a multiple of four): `channel_factors` of each, lane by lane, from
// the per-channel vectors' quads.
fn quad_factors(c: u32) -> LaneFactors {
    let first = c / 4u;
    let second = (p.channels + c) / 4u;
    let invstd = stats_quad(second);
    var scale = invstd;
    if (HAS_AFFINE) {
        scale *= affine_quad(first);
    }
    var f = LaneFactors(stats_quad(first), invstd, scale, vec4<f32>(0.0), vec4<f32>(0.0));
    if (BATCH_STATS) {
        f.mean_dy_xhat = grads_quad(first) / p.values_per_channel;
        f.mean_dy = grads_quad(second) / p.values_per_channel;
    }
    return f;
}

fn apply(q: u32, f: LaneFactors) {
    // x is read only where the formula uses it.
    var x = vec4<f32>(0.0);
    if (BATCH_STATS) {
        x = load_x(q);
    }
    let g = upstream(q);
    store_dx(q, input_gradient_value4(x, g, f));
    if (ADD) {
        store_dz(q, g);
    }
}

@compute @workgroup_size(WORKGROUP)
fn input_gradient_vec4(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    elementwise(gid.x, nwg.x * WORKGROUP);
}
