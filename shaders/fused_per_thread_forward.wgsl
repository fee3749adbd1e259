// The fused per-thread training forward (fused_per_thread.wgsl): the statistics of a group's
// channels, then y of their runs.

struct OutputFactors {
    mean: vec4<f32>,
    scale: vec4<f32>,
    shift: vec4<f32>,
}

fn output_factors(c: u32, total: Acc) -> OutputFactors {
    let statistics = mean_invstd(total);
    let affine_c = scale_shift(c, statistics);
    return OutputFactors(vec4<f32>(statistics.x), vec4<f32>(affine_c.x), vec4<f32>(affine_c.y));
}

// Lane by lane, `b`'s factors where `take_b`, else `a`'s.
fn select_factors(a: OutputFactors, b: OutputFactors, take_b: vec4<bool>) -> OutputFactors {
    return OutputFactors(
        select(a.mean, b.mean, take_b),
        select(a.scale, b.scale, take_b),
        select(a.shift, b.shift, take_b),
    );
}

fn output_quad(q: u32, f: OutputFactors) {
    var z = vec4<f32>(0.0);
    if (ADD) {
        z = load_z_quad(q);
    }
    store_y_quad(q, epilogue4(normalized4(load_x_quad(q), f.mean, f.scale, f.shift), z));
}

@compute @workgroup_size(RUN_WORKGROUP)
fn fused_forward_per_thread(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    fused_groups(gid.x, nwg.x * RUN_WORKGROUP);
}
