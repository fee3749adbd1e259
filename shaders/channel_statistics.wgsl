// Where the normalize kernels (scalar and vec4) take each channel's mean and invstd: from the
// batch statistics a reduction wrote (`stats`), or, in inference (FROM_RUNNING), straight from
// the running stats, so that the inference forward is one dispatch instead of two; and the
// per-channel (mean, scale, shift) of y = (x - mean) * scale + shift.

fn channel_mean_invstd(c: u32) -> vec2<f32> {
    if (FROM_RUNNING) {
        return vec2<f32>(running_at(c), 1.0 / sqrt(running_at(p.channels + c) + p.eps));
    }
    return vec2<f32>(stats_at(c), stats_at(p.channels + c));
}

// Inference: the threads of the dispatch write [running_mean | invstd] into `stats` for the
// backward (no thread of this dispatch reads `stats` in that mode), four consecutive channels a
// thread: where `stats` is declared as vec4s (the prelude's `channel_binding`), a write of one
// component may touch its whole vec4, so each vec4 must be one thread's.
fn save_running_statistics(thread: u32, threads: u32) {
    if (FROM_RUNNING) {
        for (var first = 4u * thread; first < p.channels; first += 4u * threads) {
            for (var c = first; c < min(first + 4u, p.channels); c++) {
                let mean_invstd = channel_mean_invstd(c);
                set_stats(c, mean_invstd.x);
                set_stats(p.channels + c, mean_invstd.y);
            }
        }
    }
}

struct ChannelScale {
    mean: f32,
    scale: f32,
    shift: f32,
}

// Channel c's mean, scale = gamma * invstd and shift = beta.
fn channel_scale(c: u32) -> ChannelScale {
    let mean_invstd = channel_mean_invstd(c);
    let affine_c = scale_shift(c, mean_invstd);
    return ChannelScale(mean_invstd.x, affine_c.x, affine_c.y);
}
