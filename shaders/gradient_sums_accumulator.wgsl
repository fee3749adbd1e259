// The gradient sums' accumulator, (sum dy, sum dy * (x - mean)), and the hooks of the
// per-thread kernels (per_thread_runs.wgsl, per_thread_quads.wgsl). No loads of its own but
// through the prelude's quad accessors, so the scalar and the vec4 programs share it
// and sum the same values to the same bits. dy is `upstream` (gradient_sums.wgsl).

alias Acc = vec2<f32>;

fn acc_empty() -> vec2<f32> {
    return vec2<f32>(0.0);
}

fn acc_merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return a + b;
}

// The per-thread kernels' hooks (per_thread_runs.wgsl, per_thread_quads.wgsl): the channel's
// mean; what one quad load gives (x and dy); and lane-wise running sums of a channel.
fn run_context(c_rel: u32) -> f32 {
    return stats_at(p.c0 + c_rel);
}

struct Quad {
    x: vec4<f32>,
    g: vec4<f32>,
}

fn load_quad(q: u32) -> Quad {
    return Quad(load_x_quad(q), upstream_quad(q));
}

struct LaneSums {
    dy: vec4<f32>,
    dy_centered: vec4<f32>,
}

fn sums_start(unused_quad: Quad, unused_lanes: vec4<u32>) -> LaneSums {
    return LaneSums(vec4<f32>(0.0), vec4<f32>(0.0));
}

// The sums with v's lanes where `keep` (the others may be another channel's, even NaN), lane k
// centred on mean[k].
fn sums_add(s: LaneSums, v: Quad, keep: vec4<bool>, mean: vec4<f32>) -> LaneSums {
    let g = select(vec4<f32>(0.0), v.g, keep);
    let centered = select(vec4<f32>(0.0), v.g * (v.x - mean), keep);
    return LaneSums(s.dy + g, s.dy_centered + centered);
}

// Four channels' sums over the same rows (a channels-last quad: one channel a lane); lane by
// lane the additions of `acc_merge` (the same bits).
alias QuadAcc = LaneSums;

fn quad_acc_empty() -> LaneSums {
    return LaneSums(vec4<f32>(0.0), vec4<f32>(0.0));
}

fn quad_acc_merge(a: LaneSums, b: LaneSums) -> LaneSums {
    return LaneSums(a.dy + b.dy, a.dy_centered + b.dy_centered);
}

fn sums_quad(s: LaneSums, unused_count: f32) -> LaneSums {
    return s;
}

// Lane k's channel's sums.
fn quad_acc_lane(a: LaneSums, k: u32) -> vec2<f32> {
    return vec2<f32>(a.dy[k], a.dy_centered[k]);
}

// The sums of one channel spread over the lanes (a channels-first run).
fn sums_total(s: LaneSums, unused_count: f32) -> vec2<f32> {
    return vec2<f32>(
        (s.dy.x + s.dy.y) + (s.dy.z + s.dy.w),
        (s.dy_centered.x + s.dy_centered.y) + (s.dy_centered.z + s.dy_centered.w),
    );
}
