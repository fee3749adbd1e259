// dx for half types, one 32-bit word (two elements) per step, for windows whose rows do not
// split into whole vec4s (the rule of `normalize_words.wgsl`: each thread owns whole words; the
// two elements may lie in different channels; an odd last element keeps its word's other half);
// and dz = dy for the add-ReLU epilogue.

fn word_factors(e: u32, total: u32) -> DxFactors {
    if (e < total) {
        return channel_factors(cursor_at(e).c);
    }
    return DxFactors(0.0, 0.0, 0.0, 0.0, 0.0);
}

@compute @workgroup_size(WORKGROUP)
fn input_gradient_words(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let threads = nwg.x * WORKGROUP;
    let total = p.o_count * p.c_count * p.inner;
    for (var q = gid.x; 2u * q < total; q += threads) {
        let first = cursor_at(2u * q);
        let word = first.index / 2u;
        let a = channel_factors(first.c);
        let b = word_factors(2u * q + 1u, total);
        // x is read only where the formula uses it.
        var x = vec2<f32>(0.0);
        if (BATCH_STATS) {
            x = load_x(word);
        }
        let g = upstream(word);
        let dx = vec2<f32>(input_gradient_value(x.x, g.x, a), input_gradient_value(x.y, g.y, b));
        if (2u * q + 1u < total) {
            store_dx(word, dx);
            if (ADD) {
                store_dz(word, g);
            }
        } else {
            store_dx_low(word, dx.x);
            if (ADD) {
                store_dz_low(word, g.x);
            }
        }
    }
}
