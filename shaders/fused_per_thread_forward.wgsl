// The fused per-thread training forward (fused_per_thread.wgsl): the statistics of a channel,
// then y of its runs.

struct OutputFactors {
    mean: vec4<f32>,
    scale: vec4<f32>,
    shift: vec4<f32>,
}

fn output_quad(q: u32, keep: vec4<bool>, f: OutputFactors) {
    var z = vec4<f32>(0.0);
    if (ADD) {
        z = load_z_quad(q);
    }
    store_y_quad(q, epilogue4(normalized4(load_x_quad(q), f.mean, f.scale, f.shift), z), keep);
}

@compute @workgroup_size(RUN_WORKGROUP)
fn fused_forward_per_thread(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var c_rel = gid.x; c_rel < p.c_count; c_rel += nwg.x * RUN_WORKGROUP) {
        let c = p.c0 + c_rel;
        let total = run_chunk(c_rel, 0u, p.o_count * p.inner, run_context(c_rel));
        finalize_channel(c, total);
        let statistics = mean_invstd(total);
        let affine_c = scale_shift(c, statistics);
        output_runs(
            c_rel,
            OutputFactors(vec4<f32>(statistics.x), vec4<f32>(affine_c.x), vec4<f32>(affine_c.y)),
        );
    }
}
