// dx one element per step (f32 only: half types store whole words, input_gradient_words.wgsl),
// with the factors of dx_factors.wgsl; and dz = dy for the add-ReLU epilogue.

fn lane_factors(cursor: ElementCursor) -> DxFactors {
    return channel_factors(cursor.c);
}

fn apply(index: u32, f: DxFactors) {
    // x is read only where the formula uses it.
    var x = 0.0;
    if (BATCH_STATS) {
        x = load_x(index);
    }
    let g = upstream(index);
    store_dx(index, input_gradient_value(x, g, f));
    if (ADD) {
        store_dz(index, g);
    }
}

@compute @workgroup_size(WORKGROUP)
fn input_gradient(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    elementwise(gid.x, nwg.x * WORKGROUP);
}
