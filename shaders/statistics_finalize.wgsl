// What a channel's merged statistics partial becomes (the finalize's hook, `finalize_channel`):
// its mean and invstd in `stats`, and the running stats' update. The finalize dispatches
// (reduction.wgsl), the last-workgroup merge and the fused kernels (fused_forward.wgsl,
// fused_per_thread_forward.wgsl) call it, so every path writes the same bits.

// (mean, invstd) of a channel's merged partial.
fn mean_invstd(total: Partial) -> vec2<f32> {
    // M2 is a sum of non-negative terms, so no clamp: max(NaN, 0) would hide a NaN.
    return vec2<f32>(total.shift + total.mean, 1.0 / sqrt(total.m2 / total.n + p.eps));
}

// The weight of this batch in the running stats: the uniform block's momentum, or with
// CUMULATIVE (momentum None) 1 / the layer's batch count, which `count_batch` advanced on the GPU
// at the start of this call: every call recorded before one submission sees its own count, and
// the uniform block stays the same from call to call.
fn running_momentum() -> f32 {
    if (CUMULATIVE) {
        return 1.0 / f32(batches[0]);
    }
    return p.momentum;
}

// Writes channel c's mean and invstd and updates its running stats (the finalize's hook).
// With MOMENTS (one rank of a synchronized batch norm), writes its mean and M2 instead, for the
// host to merge with the other ranks'; the running stats are then updated from the merge.
fn finalize_channel(c: u32, total: Partial) {
    if (MOMENTS) {
        set_stats(c, total.shift + total.mean);
        set_stats(p.channels + c, total.m2);
        return;
    }
    let mean = total.shift + total.mean;
    let variance = total.m2 / total.n;
    let statistics = mean_invstd(total);
    set_stats(c, statistics.x);
    set_stats(p.channels + c, statistics.y);
    if (HAS_RUNNING) {
        let momentum = running_momentum();
        let keep = 1.0 - momentum;
        set_running(c, keep * running_at(c) + momentum * mean);
        set_running(
            p.channels + c,
            keep * running_at(p.channels + c) + momentum * variance * p.var_correction,
        );
    }
}
