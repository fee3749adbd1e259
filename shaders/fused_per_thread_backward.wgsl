// The fused per-thread backward (fused_per_thread.wgsl): the gradient sums of a channel, then
// dx (and with the add-ReLU epilogue dz = dy) of its runs.

alias OutputFactors = LaneFactors;

fn output_quad(q: u32, keep: vec4<bool>, f: LaneFactors) {
    // x is read only where the formula uses it.
    var x = vec4<f32>(0.0);
    if (BATCH_STATS) {
        x = load_x_quad(q);
    }
    let g = upstream_quad(q);
    store_dx_quad(q, input_gradient_value4(x, g, f), keep);
    if (ADD) {
        store_dz_quad(q, g, keep);
    }
}

@compute @workgroup_size(RUN_WORKGROUP)
fn fused_backward_per_thread(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var c_rel = gid.x; c_rel < p.c_count; c_rel += nwg.x * RUN_WORKGROUP) {
        let c = p.c0 + c_rel;
        let sums = run_chunk(c_rel, 0u, p.o_count * p.inner, run_context(c_rel));
        finalize_channel(c, sums);
        output_runs(c_rel, splat_factors(dx_factors(c, gradients(c, sums))));
    }
}
