// What a channel's gradient sums become (the finalize's hook, `finalize_channel`): dgamma and
// dbeta in `grads`. The finalize dispatches (reduction.wgsl), the last-workgroup merge and the
// fused kernels (fused_backward.wgsl, fused_per_thread_backward.wgsl) call it.

// (dgamma, dbeta) of channel c from its (sum dy, sum dy * (x - mean)).
fn gradients(c: u32, sums: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(sums.y * stats_at(p.channels + c), sums.x);
}

// Writes channel c's dgamma and dbeta (the finalize's hook).
fn finalize_channel(c: u32, sums: vec2<f32>) {
    let dgamma_dbeta = gradients(c, sums);
    set_grads(c, dgamma_dbeta.x);
    set_grads(p.channels + c, dgamma_dbeta.y);
}
