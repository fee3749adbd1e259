// The fused per-thread backward (fused_per_thread.wgsl): the gradient sums of a group's
// channels, then dx (and with the add-ReLU epilogue dz = dy) of their runs.

alias OutputFactors = LaneFactors;

fn output_factors(c: u32, sums: Acc) -> LaneFactors {
    return splat_factors(dx_factors(c, gradients(c, sums)));
}

// Lane by lane, `b`'s factors where `take_b`, else `a`'s.
fn select_factors(a: LaneFactors, b: LaneFactors, take_b: vec4<bool>) -> LaneFactors {
    return LaneFactors(
        select(a.mean, b.mean, take_b),
        select(a.invstd, b.invstd, take_b),
        select(a.scale, b.scale, take_b),
        select(a.mean_dy, b.mean_dy, take_b),
        select(a.mean_dy_xhat, b.mean_dy_xhat, take_b),
    );
}

fn output_quad(q: u32, f: LaneFactors) {
    // x is read only where the formula uses it.
    var x = vec4<f32>(0.0);
    if (BATCH_STATS) {
        x = load_x_quad(q);
    }
    let g = upstream_quad(q);
    store_dx_quad(q, input_gradient_value4(x, g, f));
    if (ADD) {
        store_dz_quad(q, g);
    }
}

@compute @workgroup_size(RUN_WORKGROUP)
fn fused_backward_per_thread(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    fused_groups(gid.x, nwg.x * RUN_WORKGROUP);
}
