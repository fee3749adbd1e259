// Where the normalize kernels (scalar and vec4) take each channel's mean and invstd: from the
// batch statistics a reduction wrote, or, in inference (FROM_RUNNING), straight from the running
// stats, so that the inference forward is one dispatch instead of two.

override FROM_RUNNING: bool = false;

// [mean (C) | invstd (C)]: read (batch statistics), or written for a later backward (inference).
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
// [running_mean (C) | running_var (C)], read in inference only.
@group(0) @binding(5) var<storage, read> running: array<f32>;

fn channel_mean_invstd(c: u32) -> vec2<f32> {
    if (FROM_RUNNING) {
        return vec2<f32>(running[c], 1.0 / sqrt(running[p.channels + c] + p.eps));
    }
    return vec2<f32>(stats[c], stats[p.channels + c]);
}

// Inference: the threads of the dispatch write [running_mean | invstd] into `stats` for the
// backward (no thread of this dispatch reads `stats` in that mode).
fn save_running_statistics(thread: u32, threads: u32) {
    if (FROM_RUNNING) {
        for (var c = thread; c < p.channels; c += threads) {
            let mean_invstd = channel_mean_invstd(c);
            stats[c] = mean_invstd.x;
            stats[p.channels + c] = mean_invstd.y;
        }
    }
}
