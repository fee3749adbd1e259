//! Checks of what the GPU computed against float64 references, written as functions that say
//! what is wrong instead of panicking: the GPU tests unwrap them, and `tests/checkers.rs` feeds
//! them host-emulated buggy outputs to show that each one rejects the bugs it is there for.
//!
//! Outputs are checked against a reference built in f64 from the statistics the GPU itself
//! saved (its float32 mean and invstd), so the bound is a few roundings of the output's own
//! terms; the saved statistics are checked against the f64 statistics of the data separately.
//! That keeps the output bound tight where a bound relative to the f64 statistics could not be:
//! at an offset of 1e4, float32's mean is off by ~1e4 u, which would hide a normalize that folds
//! the mean into the shift (`x * scale + (beta - mean * scale)`, several digits lost).
//!
//! Tolerances, with u = 2^-24 (float32's unit roundoff):
//! - y = (x - m) s g + b from the saved m and s: 4 u (|x - m| |g| s + |b|) (the subtraction,
//!   the scale g s, the product and the sum, each within u).
//! - Saved statistics (the design's accuracy): mean within 1e-6 sqrt(var + eps) + 4 |mean| u,
//!   invstd within 1e-5 relative. Running stats: mean within 1e-6 std + 1e-5 |r_mean| + the
//!   batch mean's 4 |mean| u; variance within 1e-6 + 1e-5 |r_var|.
//! - Sums of M terms (dbeta, dgamma, the means in dx): a float32 sum in which each term passes
//!   through at most K additions errs by at most K u sum|terms| (Higham, Accuracy and Stability
//!   of Numerical Algorithms, 4.2); [`sum_depth`] reads K off the plan.
//! - dx: [`dx_bound`], the first-order propagation of those errors, doubled.
//! - Non-finite values: where the reference is NaN the GPU must give NaN; where it is +-Inf the
//!   GPU may give the same infinity or NaN (the shifted reductions turn Inf - Inf into NaN; the
//!   crate documents it). A finite reference never accepts a non-finite value.

use ndarray::ArrayViewD;
use wgpu_batchnorm::plan::{FinalizeKind, Plan, ReductionKind, RUN_BLOCK, WORKGROUP_SIZE};
use wgpu_batchnorm::reference::{self, BatchStatistics};
use wgpu_batchnorm::{ChannelView, Layout};

/// float32's unit roundoff, u = 2^-24.
pub const UNIT_ROUNDOFF: f64 = 1.0 / (1u64 << 24) as f64;
const U: f64 = UNIT_ROUNDOFF;
/// Absolute slack under every bound: float32's smallest normal value, for results that
/// underflow.
const FLOOR: f64 = f32::MIN_POSITIVE as f64;

/// `Ok`, or what was wrong.
pub type Checked = Result<(), String>;

/// Mismatches found by one check: the first few in full, and how many in all.
pub struct Findings {
    what: String,
    shown: Vec<String>,
    count: usize,
}

impl Findings {
    /// An empty list for the check named `what`.
    pub fn new(what: impl Into<String>) -> Self {
        Findings {
            what: what.into(),
            shown: Vec::new(),
            count: 0,
        }
    }

    /// Records a mismatch unless `ok`.
    pub fn expect(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.count += 1;
            if self.shown.len() < 8 {
                self.shown.push(message());
            }
        }
    }

    /// `Ok` when nothing was recorded.
    pub fn finish(self) -> Checked {
        if self.count == 0 {
            Ok(())
        } else {
            Err(format!(
                "{}: {} mismatch(es), first ones:\n  {}",
                self.what,
                self.count,
                self.shown.join("\n  ")
            ))
        }
    }
}

/// Whether `got` passes for `want` within `bound`, with the rules for non-finite values of the
/// module docs.
pub fn within(got: f32, want: f64, bound: f64) -> bool {
    let got = f64::from(got);
    if want.is_nan() {
        got.is_nan()
    } else if want.is_infinite() {
        got == want || got.is_nan()
    } else {
        (got - want).abs() <= bound
    }
}

/// Which channels a check looks at.
#[derive(Clone, Copy, Debug)]
pub enum Channels<'a> {
    /// Every channel.
    All,
    /// Only these.
    Only(&'a [usize]),
}

impl Channels<'_> {
    fn mask(self, channels: usize) -> Vec<bool> {
        match self {
            Channels::All => vec![true; channels],
            Channels::Only(list) => {
                let mut mask = vec![false; channels];
                for &c in list {
                    mask[c] = true;
                }
                mask
            }
        }
    }
}

/// The inputs of a forward call, in memory order.
#[derive(Clone)]
pub struct ForwardInputs<'a> {
    /// The batch.
    pub x: ArrayViewD<'a, f32>,
    /// Its layout.
    pub layout: Layout,
    /// gamma, when affine.
    pub gamma: Option<&'a [f32]>,
    /// beta, when affine.
    pub beta: Option<&'a [f32]>,
    /// eps.
    pub eps: f64,
}

impl ForwardInputs<'_> {
    fn view(&self) -> ChannelView {
        ChannelView::new(self.x.shape(), self.layout).expect("rank >= 2")
    }

    fn gamma(&self, c: usize) -> f64 {
        self.gamma.map_or(1.0, |g| f64::from(g[c]))
    }

    fn beta(&self, c: usize) -> f64 {
        self.beta.map_or(0.0, |b| f64::from(b[c]))
    }
}

/// The per-channel mean and invstd a forward saved, as the GPU wrote them.
#[derive(Clone, Debug)]
pub struct Saved {
    /// Mean (batch or running).
    pub mean: Vec<f32>,
    /// 1 / sqrt(var + eps).
    pub invstd: Vec<f32>,
}

impl Saved {
    fn mean(&self, c: usize) -> f64 {
        f64::from(self.mean[c])
    }

    fn invstd(&self, c: usize) -> f64 {
        f64::from(self.invstd[c])
    }
}

/// y against `(x - m) s g + b` in f64 from the saved statistics.
pub fn check_output(
    what: &str,
    inputs: &ForwardInputs<'_>,
    saved: &Saved,
    y: &[f32],
    channels: Channels<'_>,
) -> Checked {
    let view = inputs.view();
    let mask = channels.mask(view.channels);
    let mut findings = Findings::new(format!("{what}: y"));
    for (i, &x) in inputs.x.iter().enumerate() {
        let c = view.channel_of(i);
        if !mask[c] {
            continue;
        }
        let centered = f64::from(x) - saved.mean(c);
        let scale = saved.invstd(c) * inputs.gamma(c);
        let want = centered * scale + inputs.beta(c);
        let bound = 4.0 * U * ((centered * scale).abs() + inputs.beta(c).abs()) + FLOOR;
        findings.expect(within(y[i], want, bound), || {
            format!(
                "y[{i}] (channel {c}) = {}, want {want} (error {:e} > {bound:e})",
                y[i],
                (f64::from(y[i]) - want).abs()
            )
        });
    }
    findings.finish()
}

/// Saved batch statistics against the f64 statistics of x.
pub fn check_batch_statistics(
    what: &str,
    inputs: &ForwardInputs<'_>,
    saved: &Saved,
    channels: Channels<'_>,
) -> Checked {
    let stats = reference::batch_statistics(inputs.x.view(), inputs.layout, inputs.eps);
    compare_batch_statistics(what, &stats, saved, channels)
}

/// Saved batch statistics against given f64 statistics.
pub fn compare_batch_statistics(
    what: &str,
    stats: &BatchStatistics,
    saved: &Saved,
    channels: Channels<'_>,
) -> Checked {
    let mask = channels.mask(stats.mean.len());
    let mut findings = Findings::new(format!("{what}: saved statistics"));
    for c in (0..stats.mean.len()).filter(|&c| mask[c]) {
        let mean_tol = 1e-6 / stats.invstd[c] + 4.0 * stats.mean[c].abs() * U;
        findings.expect(within(saved.mean[c], stats.mean[c], mean_tol), || {
            format!(
                "mean[{c}] = {}, want {} (tolerance {mean_tol:e})",
                saved.mean[c], stats.mean[c]
            )
        });
        let invstd_tol = 1e-5 * stats.invstd[c];
        findings.expect(within(saved.invstd[c], stats.invstd[c], invstd_tol), || {
            format!(
                "invstd[{c}] = {}, want {} (tolerance {invstd_tol:e})",
                saved.invstd[c], stats.invstd[c]
            )
        });
    }
    findings.finish()
}

/// What an inference forward saves: the running mean itself and 1 / sqrt(running_var + eps),
/// from the running stats the GPU held.
pub fn check_inference_statistics(
    what: &str,
    running_mean: &[f32],
    running_var: &[f32],
    eps: f64,
    saved: &Saved,
) -> Checked {
    let mut findings = Findings::new(format!("{what}: saved statistics of inference"));
    for c in 0..running_mean.len() {
        findings.expect(saved.mean[c].to_bits() == running_mean[c].to_bits(), || {
            format!(
                "mean[{c}] = {}, want the running mean {}",
                saved.mean[c], running_mean[c]
            )
        });
        let want = 1.0 / (f64::from(running_var[c]) + eps).sqrt();
        findings.expect(within(saved.invstd[c], want, 4.0 * U * want), || {
            format!("invstd[{c}] = {}, want {want}", saved.invstd[c])
        });
    }
    findings.finish()
}

/// Running stats after a training step against the f64 ones (updated by the caller with
/// `reference::update_running_statistics` from the f64 batch statistics `stats`).
pub fn check_running_statistics(
    what: &str,
    want_mean: &[f64],
    want_var: &[f64],
    stats: &BatchStatistics,
    got_mean: &[f32],
    got_var: &[f32],
    channels: Channels<'_>,
) -> Checked {
    let mask = channels.mask(want_mean.len());
    let mut findings = Findings::new(format!("{what}: running statistics"));
    for c in (0..want_mean.len()).filter(|&c| mask[c]) {
        let mean_tol =
            1e-6 / stats.invstd[c] + 1e-5 * want_mean[c].abs() + 4.0 * stats.mean[c].abs() * U;
        findings.expect(within(got_mean[c], want_mean[c], mean_tol), || {
            format!(
                "running_mean[{c}] = {}, want {} (tolerance {mean_tol:e})",
                got_mean[c], want_mean[c]
            )
        });
        let var_tol = 1e-6 + 1e-5 * want_var[c].abs();
        findings.expect(within(got_var[c], want_var[c], var_tol), || {
            format!(
                "running_var[{c}] = {}, want {} (tolerance {var_tol:e})",
                got_var[c], want_var[c]
            )
        });
    }
    findings.finish()
}

/// The longest chain of float32 additions a term goes through in the plan's reductions: a
/// thread's sequential run (its share of a chunk, or of the whole channel when fused; a
/// per-thread kernel's block of eight-value steps, then its blocks), the eight-value dot
/// products, the workgroup's merge (three levels of eight contiguous, seven row lanes strided,
/// none per-thread), then the finalize's merge of the chunks.
pub fn sum_depth(plan: &Plan) -> f64 {
    let fused = plan.fused_window().is_some();
    let values = plan.view.values_per_channel();
    let (per_thread, workgroup) = match plan.kind {
        ReductionKind::Contiguous => {
            let run = if fused { values } else { plan.chunk_len };
            (run.div_ceil(WORKGROUP_SIZE), 21)
        }
        ReductionKind::Strided => {
            let rows = if fused {
                plan.view.outer
            } else {
                plan.chunk_len
            };
            let row_lanes = WORKGROUP_SIZE / plan.band;
            (rows.div_ceil(row_lanes), row_lanes - 1)
        }
        ReductionKind::PerThread | ReductionKind::PerThreadQuads => {
            (RUN_BLOCK / 8 + plan.chunk_len.div_ceil(RUN_BLOCK), 0)
        }
    };
    let finalize = match (fused, plan.finalize) {
        (true, _) => 0,
        (false, FinalizeKind::PerThread) => plan.chunks_total,
        (false, FinalizeKind::PerWorkgroup) => plan.chunks_total.div_ceil(WORKGROUP_SIZE) + 21,
    };
    (per_thread + 3 + workgroup + finalize) as f64
}

/// Which statistics the backward differentiates through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Through {
    /// Batch statistics: dx = g s (dy - mean(dy) - x_hat mean(dy x_hat)).
    Batch,
    /// Running statistics, constants: dx = dy g s.
    Running,
}

/// A backward call's inputs and what its forward saved.
#[derive(Clone)]
pub struct BackwardInputs<'a> {
    /// x, its layout and gamma (beta and eps are not used).
    pub forward: ForwardInputs<'a>,
    /// The upstream gradient.
    pub dy: ArrayViewD<'a, f32>,
    /// The statistics the forward saved.
    pub saved: &'a Saved,
    /// Which formula applies.
    pub through: Through,
    /// [`sum_depth`] of the backward's plan.
    pub depth: f64,
}

/// Per-channel sums the dx and gradient bounds need: sum dy, sum dy x_hat, sum |dy|,
/// sum |dy x_hat| and sum |dy (x - m)|, with x_hat from the saved statistics.
struct ChannelSums {
    dy: Vec<f64>,
    dy_xhat: Vec<f64>,
    abs_dy: Vec<f64>,
    abs_dy_xhat: Vec<f64>,
    abs_dy_centered: Vec<f64>,
}

impl BackwardInputs<'_> {
    fn x_hat(&self, c: usize, x: f32) -> f64 {
        (f64::from(x) - self.saved.mean(c)) * self.saved.invstd(c)
    }

    fn sums(&self, view: &ChannelView) -> ChannelSums {
        let zeros = || vec![0.0; view.channels];
        let mut sums = ChannelSums {
            dy: zeros(),
            dy_xhat: zeros(),
            abs_dy: zeros(),
            abs_dy_xhat: zeros(),
            abs_dy_centered: zeros(),
        };
        for (i, (&x, &dy)) in self.forward.x.iter().zip(self.dy.iter()).enumerate() {
            let c = view.channel_of(i);
            let dy = f64::from(dy);
            let x_hat = self.x_hat(c, x);
            sums.dy[c] += dy;
            sums.dy_xhat[c] += dy * x_hat;
            sums.abs_dy[c] += dy.abs();
            sums.abs_dy_xhat[c] += (dy * x_hat).abs();
            sums.abs_dy_centered[c] += (dy * (f64::from(x) - self.saved.mean(c))).abs();
        }
        sums
    }
}

/// The per-element bound on dx through batch statistics, to first order in u, doubled for the
/// second-order terms: x_hat carries 2u |x_hat| (a subtraction and a product); mean(dy) and
/// mean(dy x_hat) carry their sums' K u mean|dy| and (K + 2) u mean|dy x_hat| (the product
/// and the scaling by invstd add 2u), plus u each for the division by M; the final
/// g s (dy - m1 - x_hat m2) adds about 6u on its terms.
#[allow(clippy::too_many_arguments)]
pub fn dx_bound(
    scale: f64,
    dy: f64,
    x_hat: f64,
    m1: f64,
    m2: f64,
    mean_abs_dy: f64,
    mean_abs_dy_xhat: f64,
    depth: f64,
) -> f64 {
    let terms = dy.abs() + m1.abs() + (x_hat * m2).abs();
    2.0 * scale.abs()
        * (6.0 * U * terms
            + (depth + 1.0) * U * mean_abs_dy
            + x_hat.abs() * (depth + 3.0) * U * mean_abs_dy_xhat)
        + FLOOR
}

/// dx against the f64 formula from the saved statistics.
pub fn check_input_gradient(
    what: &str,
    inputs: &BackwardInputs<'_>,
    dx: &[f32],
    channels: Channels<'_>,
) -> Checked {
    let view = inputs.forward.view();
    let mask = channels.mask(view.channels);
    let sums = inputs.sums(&view);
    let m = view.values_per_channel() as f64;
    let mut findings = Findings::new(format!("{what}: dx"));
    for (i, (&x, &dy)) in inputs.forward.x.iter().zip(inputs.dy.iter()).enumerate() {
        let c = view.channel_of(i);
        if !mask[c] {
            continue;
        }
        let scale = inputs.forward.gamma(c) * inputs.saved.invstd(c);
        let dy = f64::from(dy);
        let (want, bound) = match inputs.through {
            Through::Running => (dy * scale, 3.0 * U * (dy * scale).abs() + FLOOR),
            Through::Batch => {
                let x_hat = inputs.x_hat(c, x);
                let (m1, m2) = (sums.dy[c] / m, sums.dy_xhat[c] / m);
                let bound = dx_bound(
                    scale,
                    dy,
                    x_hat,
                    m1,
                    m2,
                    sums.abs_dy[c] / m,
                    sums.abs_dy_xhat[c] / m,
                    inputs.depth,
                );
                (scale * (dy - m1 - x_hat * m2), bound)
            }
        };
        findings.expect(within(dx[i], want, bound), || {
            format!(
                "dx[{i}] (channel {c}) = {}, want {want} (error {:e} > {bound:e})",
                dx[i],
                (f64::from(dx[i]) - want).abs()
            )
        });
    }
    findings.finish()
}

/// dgamma = s sum(dy (x - m)) and dbeta = sum(dy) against f64 sums from the saved statistics:
/// within (K + 3) u s sum|dy (x - m)| and K u sum|dy|.
pub fn check_parameter_gradients(
    what: &str,
    inputs: &BackwardInputs<'_>,
    dgamma: &[f32],
    dbeta: &[f32],
    channels: Channels<'_>,
) -> Checked {
    let view = inputs.forward.view();
    let mask = channels.mask(view.channels);
    let sums = inputs.sums(&view);
    let k = inputs.depth;
    let mut findings = Findings::new(format!("{what}: dgamma and dbeta"));
    for c in (0..view.channels).filter(|&c| mask[c]) {
        let s = inputs.saved.invstd(c);
        let bound = (k + 3.0) * U * s * sums.abs_dy_centered[c] + FLOOR;
        findings.expect(within(dgamma[c], sums.dy_xhat[c], bound), || {
            format!(
                "dgamma[{c}] = {}, want {} (tolerance {bound:e})",
                dgamma[c], sums.dy_xhat[c]
            )
        });
        let bound = k * U * sums.abs_dy[c] + FLOOR;
        findings.expect(within(dbeta[c], sums.dy[c], bound), || {
            format!(
                "dbeta[{c}] = {}, want {} (tolerance {bound:e})",
                dbeta[c], sums.dy[c]
            )
        });
    }
    findings.finish()
}
