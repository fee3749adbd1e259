// What the dx kernels (`input_gradient.wgsl`, `input_gradient_vec4.wgsl`,
// `input_gradient_words.wgsl`, `fused_backward.wgsl`) share: the factors of dx for one channel,
// and dx itself from them.

// The per-channel factors of dx (the formulas are at the top of gradient_sums.wgsl).
struct DxFactors {
    mean: f32,
    invstd: f32,
    scale: f32,
    mean_dy: f32,
    mean_dy_xhat: f32,
}

// The factors of channel c, given its (dgamma, dbeta).
fn dx_factors(c: u32, dgamma_dbeta: vec2<f32>) -> DxFactors {
    let invstd = stats_at(p.channels + c);
    var scale = invstd;
    if (HAS_AFFINE) {
        scale *= affine_at(c);
    }
    var f = DxFactors(stats_at(c), invstd, scale, 0.0, 0.0);
    if (BATCH_STATS) {
        f.mean_dy_xhat = dgamma_dbeta.x / p.values_per_channel;
        f.mean_dy = dgamma_dbeta.y / p.values_per_channel;
    }
    return f;
}

// The factors of channel c, with the (dgamma, dbeta) a finalize wrote.
fn channel_factors(c: u32) -> DxFactors {
    return dx_factors(c, vec2<f32>(grads_at(c), grads_at(p.channels + c)));
}

// dx of one element (or four lanes) from its x and dy: through batch statistics
// dx = scale * (dy - mean(dy) - x_hat * mean(dy x_hat)); through running statistics (constants)
// dx = dy * scale.
fn input_gradient_value(x: f32, dy: f32, f: DxFactors) -> f32 {
    if (BATCH_STATS) {
        let x_hat = (x - f.mean) * f.invstd;
        return f.scale * (dy - f.mean_dy - x_hat * f.mean_dy_xhat);
    }
    return dy * f.scale;
}

// The factors of four lanes.
struct LaneFactors {
    mean: vec4<f32>,
    invstd: vec4<f32>,
    scale: vec4<f32>,
    mean_dy: vec4<f32>,
    mean_dy_xhat: vec4<f32>,
}

// One channel's factors in every lane.
fn splat_factors(f: DxFactors) -> LaneFactors {
    return LaneFactors(
        vec4<f32>(f.mean),
        vec4<f32>(f.invstd),
        vec4<f32>(f.scale),
        vec4<f32>(f.mean_dy),
        vec4<f32>(f.mean_dy_xhat),
    );
}

// `input_gradient_value` on four lanes.
fn input_gradient_value4(x: vec4<f32>, dy: vec4<f32>, f: LaneFactors) -> vec4<f32> {
    if (BATCH_STATS) {
        let x_hat = (x - f.mean) * f.invstd;
        return f.scale * (dy - f.mean_dy - x_hat * f.mean_dy_xhat);
    }
    return dy * f.scale;
}
