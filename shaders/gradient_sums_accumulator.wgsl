// The gradient sums' accumulator, (sum dy, sum dy * (x - mean)), the sums of eight values and
// of one, and the hooks of the per-thread quad kernel (per_thread_quads.wgsl). No loads of its
// own but through the prelude's quad accessors, so the scalar and the vec4 programs share it
// and sum the same values to the same bits. dy is `upstream` (gradient_sums.wgsl).

alias Acc = vec2<f32>;

fn acc_empty() -> vec2<f32> {
    return vec2<f32>(0.0);
}

fn acc_merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return a + b;
}

// The sums of eight elements: dy in g_lo.xyzw, g_hi.xyzw, x likewise.
fn sums_of_eight(
    g_lo: vec4<f32>,
    g_hi: vec4<f32>,
    x_lo: vec4<f32>,
    x_hi: vec4<f32>,
    mean: f32,
) -> vec2<f32> {
    let ones = vec4<f32>(1.0);
    return vec2<f32>(
        dot(g_lo, ones) + dot(g_hi, ones),
        dot(g_lo, x_lo - mean) + dot(g_hi, x_hi - mean),
    );
}

fn sums_of_one(g: f32, x: f32, mean: f32) -> vec2<f32> {
    return vec2<f32>(g, g * (x - mean));
}

// The per-thread kernels' hooks: the channel's mean; what one quad load gives (x and dy); the
// sums of eight values and of one (per_thread_runs.wgsl), and running sums over rows
// (per_thread_quads.wgsl).
fn run_context(c_rel: u32) -> f32 {
    return stats[p.c0 + c_rel];
}

struct Quad {
    x: vec4<f32>,
    g: vec4<f32>,
}

fn load_quad(q: u32) -> Quad {
    return Quad(load_x_quad(q), upstream_quad(q));
}

fn quads_acc(lo: Quad, hi: Quad, mean: f32) -> vec2<f32> {
    return sums_of_eight(lo.g, hi.g, lo.x, hi.x, mean);
}

fn lane_acc(v: Quad, k: u32, mean: f32) -> vec2<f32> {
    return sums_of_one(v.g[k], v.x[k], mean);
}

// The quad kernel's running sums of channel k over a group of rows: the sums themselves.
alias Stream = vec2<f32>;

fn stream_first(v: Quad, k: u32, mean: f32) -> Stream {
    return lane_acc(v, k, mean);
}

fn stream_add(s: Stream, v: Quad, k: u32, mean: f32) -> Stream {
    return s + lane_acc(v, k, mean);
}

fn stream_acc(s: Stream, unused_count: f32) -> vec2<f32> {
    return s;
}
