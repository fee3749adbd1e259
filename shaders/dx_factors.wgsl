// What the dx kernels (`backward.wgsl`, `input_gradient_vec4.wgsl`) share: the per-channel
// bindings and the factors of dx for one channel.

override HAS_AFFINE: bool = true;
override BATCH_STATS: bool = true;

// [mean (C) | invstd (C)]
@group(0) @binding(4) var<storage, read> stats: array<f32>;
// [gamma (C) | beta (C)]
@group(0) @binding(5) var<storage, read> affine: array<f32>;
// [dgamma (C) | dbeta (C)], the order of [gamma | beta]
@group(0) @binding(7) var<storage, read_write> grads: array<f32>;

// The per-channel factors of dx (the formulas are at the top of backward.wgsl).
struct DxFactors {
    mean: f32,
    invstd: f32,
    scale: f32,
    mean_dy: f32,
    mean_dy_xhat: f32,
}

// The factors of channel c, given its (dgamma, dbeta).
fn dx_factors(c: u32, dgamma_dbeta: vec2<f32>) -> DxFactors {
    let invstd = stats[p.channels + c];
    var scale = invstd;
    if (HAS_AFFINE) {
        scale *= affine[c];
    }
    var f = DxFactors(stats[c], invstd, scale, 0.0, 0.0);
    if (BATCH_STATS) {
        f.mean_dy_xhat = dgamma_dbeta.x / p.values_per_channel;
        f.mean_dy = dgamma_dbeta.y / p.values_per_channel;
    }
    return f;
}

// The factors of channel c, with the (dgamma, dbeta) a finalize wrote.
fn channel_factors(c: u32) -> DxFactors {
    return dx_factors(c, vec2<f32>(grads[c], grads[p.channels + c]));
}
