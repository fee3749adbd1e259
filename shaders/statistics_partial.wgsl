// The statistics' accumulator: a partial (count, shift, mean - shift, M2) of some values, its
// merge (Chan's formula), the partial of eight values in registers, and the hooks of the
// per-thread quad kernel (per_thread_quads.wgsl). No loads of its own but through the
// prelude's `load_x_quad`, so the scalar and the vec4 programs share it and reduce the same
// values to the same bits. Why the shift: statistics.wgsl.

struct Partial {
    n: f32,
    shift: f32,
    // Mean of the values minus `shift`.
    mean: f32,
    m2: f32,
}

alias Acc = Partial;

fn acc_empty() -> Partial {
    return Partial(0.0, 0.0, 0.0, 0.0);
}

fn acc_merge(a: Partial, b: Partial) -> Partial {
    return merge(a, b);
}

// Chan's formula. The merged mean is kept relative to whichever of the two shifts it lies
// closer to: later merges then round a quantity of the size of the spread, whatever value a
// shift came from (a value far from the mean, such as an outlier that happens to come first,
// would otherwise have every later merge round at its distance from the mean).
fn merge(a: Partial, b: Partial) -> Partial {
    if (a.n == 0.0) {
        return b;
    }
    if (b.n == 0.0) {
        return a;
    }
    let n = a.n + b.n;
    let delta = (b.shift - a.shift) + (b.mean - a.mean);
    let weight_b = b.n / n;
    let about_a = a.mean + delta * weight_b;
    let about_b = b.mean - delta * (1.0 - weight_b);
    let closer_to_b = abs(about_b) < abs(about_a);
    return Partial(
        n,
        select(a.shift, b.shift, closer_to_b),
        select(about_a, about_b, closer_to_b),
        a.m2 + b.m2 + delta * delta * a.n * weight_b,
    );
}

// Eight values, in order lo.xyzw, hi.xyzw.
struct Values8 {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// The partial of eight values, shifted by the first: their mean and M2 in registers.
fn eight_partial(v: Values8) -> Partial {
    let shift = v.lo.x;
    let lo = v.lo - shift;
    let hi = v.hi - shift;
    let mean = dot(lo + hi, vec4<f32>(0.125));
    let d_lo = lo - mean;
    let d_hi = hi - mean;
    return Partial(8.0, shift, mean, dot(d_lo, d_lo) + dot(d_hi, d_hi));
}

// The per-thread kernels' hooks: the channel's context (the statistics need none); what one
// quad load gives (x); the partials of eight values and of one (per_thread_runs.wgsl), and
// running sums over rows (per_thread_quads.wgsl).
fn run_context(c_rel: u32) -> f32 {
    return 0.0;
}

alias Quad = vec4<f32>;

fn load_quad(q: u32) -> Quad {
    return load_x_quad(q);
}

fn quads_acc(lo: Quad, hi: Quad, unused: f32) -> Partial {
    return eight_partial(Values8(lo, hi));
}

// The quad kernel's running sums of channel k over a group of at most eight rows: (the group's
// first value, the sum of the values minus it, the sum of their squares). Shifted by one of
// the group's own values, the sum of squares is M2 + n (mean - shift)^2 <= (n + 1) M2, so the
// difference that gives M2 loses at most about n (n + 1) = 72 ulps of M2 to the sums'
// rounding, not its digits (a shift far from the values, such as zero, could lose them all).
alias Stream = vec3<f32>;

fn stream_first(v: Quad, k: u32, unused: f32) -> Stream {
    return vec3<f32>(v[k], 0.0, 0.0);
}

fn stream_add(s: Stream, v: Quad, k: u32, unused: f32) -> Stream {
    let d = v[k] - s.x;
    return vec3<f32>(s.x, s.y + d, s.z + d * d);
}

fn stream_acc(s: Stream, n: f32) -> Partial {
    let mean = s.y / n;
    return Partial(n, s.x, mean, max(s.z - s.y * mean, 0.0));
}

fn lane_acc(v: Quad, k: u32, unused: f32) -> Partial {
    return Partial(1.0, v[k], 0.0, 0.0);
}
