// The statistics' accumulator: a partial (count, shift, mean - shift, M2) of some values, its
// merge (Chan's formula), and the hooks of the per-thread kernels (per_thread_runs.wgsl,
// per_thread_quads.wgsl). No loads of its own but through the prelude's `load_x_quad`, so the
// scalar and the vec4 programs share it and reduce the same values to the same bits. Why the
// shift: statistics.wgsl.

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

// The per-thread kernels' hooks (per_thread_runs.wgsl, per_thread_quads.wgsl): the channel's
// context (the statistics need none); what one quad load gives (x); and lane-wise running sums
// over a group of at most eight values of a channel: (a value of the group, the shift; the sum
// of the values minus it; the sum of their squares). Shifted by one of the group's own values,
// the sum of squares is M2 + n (mean - shift)^2 <= (n + 1) M2, so the difference that gives M2
// loses at most about n (n + 1) = 72 ulps of M2 to the sums' rounding, not its digits (a shift
// far from the values, such as zero, could lose them all).
fn run_context(c_rel: u32) -> f32 {
    return 0.0;
}

alias Quad = vec4<f32>;

fn load_quad(q: u32) -> Quad {
    return load_x_quad(q);
}

struct LaneSums {
    shift: vec4<f32>,
    sum: vec4<f32>,
    squares: vec4<f32>,
}

// Empty sums whose lane k is shifted by v's lane `shift_lanes[k]`.
fn sums_start(v: Quad, shift_lanes: vec4<u32>) -> LaneSums {
    let shift = vec4<f32>(v[shift_lanes.x], v[shift_lanes.y], v[shift_lanes.z], v[shift_lanes.w]);
    return LaneSums(shift, vec4<f32>(0.0), vec4<f32>(0.0));
}

// The sums with v's lanes where `keep` (the others may be another channel's, even NaN).
fn sums_add(s: LaneSums, v: Quad, keep: vec4<bool>, unused: vec4<f32>) -> LaneSums {
    let d = select(vec4<f32>(0.0), v - s.shift, keep);
    return LaneSums(s.shift, s.sum + d, s.squares + d * d);
}

fn sums_partial(n: f32, shift: f32, sum: f32, squares: f32) -> Partial {
    let mean = sum / n;
    // Rounding may leave the difference a little below zero. A NaN (from a NaN or an infinity
    // among the values) must stay: max(NaN, 0) may give 0 (WGSL leaves it to the platform), and
    // GL's compiler may fold a float compare and select into that max, so the sign is tested on
    // the bits (negative: sign set, from -0's successor up to -Inf; NaNs lie above).
    let m2 = squares - sum * mean;
    let bits = bitcast<u32>(m2);
    let below_zero = (bits > 0x80000000u) & (bits <= 0xff800000u);
    return Partial(n, shift, mean, select(m2, 0.0, below_zero));
}

// Four channels' partials over the same rows (a channels-last quad: one channel a lane). The
// count is shared, so a merge tests and divides once for all four; lane by lane these are the
// operations of `sums_partial` and `merge`, in the same order (the same bits): WGSL has no
// generics to share them.
struct QuadPartial {
    n: f32,
    shift: vec4<f32>,
    mean: vec4<f32>,
    m2: vec4<f32>,
}

alias QuadAcc = QuadPartial;

fn quad_acc_empty() -> QuadPartial {
    return QuadPartial(0.0, vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
}

fn quad_acc_merge(a: QuadPartial, b: QuadPartial) -> QuadPartial {
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
    return QuadPartial(
        n,
        select(a.shift, b.shift, closer_to_b),
        select(about_a, about_b, closer_to_b),
        a.m2 + b.m2 + delta * delta * a.n * weight_b,
    );
}

// The partials of n values of each lane's channel.
fn sums_quad(s: LaneSums, n: f32) -> QuadPartial {
    let mean = s.sum / n;
    let m2 = s.squares - s.sum * mean;
    let bits = bitcast<vec4<u32>>(m2);
    let below_zero = (bits > vec4<u32>(0x80000000u)) & (bits <= vec4<u32>(0xff800000u));
    return QuadPartial(n, s.shift, mean, select(m2, vec4<f32>(0.0), below_zero));
}

// Lane k's channel's partial.
fn quad_acc_lane(a: QuadPartial, k: u32) -> Partial {
    return Partial(a.n, a.shift[k], a.mean[k], a.m2[k]);
}

// The partial of n values of one channel spread over the lanes, all shifted alike (a
// channels-first run).
fn sums_total(s: LaneSums, n: f32) -> Partial {
    return sums_partial(
        n,
        s.shift.x,
        (s.sum.x + s.sum.y) + (s.sum.z + s.sum.w),
        (s.squares.x + s.squares.y) + (s.squares.z + s.squares.w),
    );
}
