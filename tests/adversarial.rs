//! Data designed to break the numerics: large offsets, constant channels, tiny and huge
//! scales, NaN and infinity, forward and backward, both layouts, with shapes that need one and
//! several reduction chunks per channel. Every expected value comes from the f64 reference
//! (`wgpu_batchnorm::reference`) or a closed form; every output is filled with NaN before the
//! GPU writes it.
//!
//! Tolerances (u = 2^-24, float32's unit roundoff):
//! - Forward, as DESIGN.md and `common::Scenario`: outputs within |gamma| (1e-5 + 8 |mean|/std u)
//!   (the float32 mean itself is off by about |mean| u, which moves x - mean by that much);
//!   saved mean within 1e-6 std + 4 |mean| u; invstd within 1e-5 relative; running stats within
//!   1e-6 + 1e-5 relative (+ the mean's 4 |mean| u).
//! - Sums of M terms (mean, variance, dgamma, dbeta): any order of float32 additions in which
//!   each term passes through at most K additions errs by at most K u sum|terms| (Higham, Accuracy
//!   and Stability of Numerical Algorithms, §4.2). The kernels add each term at most
//!   chunk/threads times sequentially (16 contiguous, 32 strided), then through one tree of 8 and
//!   one of 3 levels in the workgroup, then chunks/256 times and 8 tree levels in the merge: under
//!   `SUM_DEPTH` = 64 for every shape in this file (M <= 16384).
//! - Backward: see [`dx_tolerance`], the first-order propagation of those errors through
//!   dx = gamma invstd (dy - mean(dy) - x_hat mean(dy x_hat)).

mod common;

use common::{context, normal_data, poisoned, upload, Scenario, F32_EPS};
use ndarray::ArrayD;
use wgpu_batchnorm::reference::{self, BatchStatistics};
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, ChannelView, Layout};

const FIRST: Layout = Layout::ChannelsFirst;
const LAST: Layout = Layout::ChannelsLast;

/// Longest chain of float32 additions any one term goes through in the GPU's reductions, for
/// the shapes in this file (see the module docs).
const SUM_DEPTH: f64 = 64.0;

fn view(shape: &[usize], layout: Layout) -> ChannelView {
    ChannelView::new(shape, layout).expect("rank >= 2")
}

/// Memory index of the `m`-th value (m < M) of channel `c`.
fn value_index(view: &ChannelView, c: usize, m: usize) -> usize {
    view.index(m / view.inner, c, m % view.inner)
}

/// Normal data with a per-channel offset and scale: `offset_c + scale_c * z`, in f64 and then
/// rounded once to f32.
fn data_by_channel(
    shape: &[usize],
    layout: Layout,
    seed: u64,
    offset_scale: impl Fn(usize) -> (f64, f64),
) -> Vec<f32> {
    let view = view(shape, layout);
    normal_data(view.len(), seed, 0.0, 1.0)
        .into_iter()
        .enumerate()
        .map(|(i, z)| {
            let (offset, scale) = offset_scale(view.channel_of(i));
            (offset + scale * f64::from(z)) as f32
        })
        .collect()
}

/// gamma and beta away from 1 and 0, of both signs.
fn affine(channels: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let gamma = normal_data(channels, seed, 0.0, 1.0)
        .into_iter()
        .enumerate()
        .map(|(c, g)| {
            if c % 2 == 0 {
                0.5 + g.abs()
            } else {
                -0.5 - g.abs()
            }
        })
        .collect();
    (gamma, normal_data(channels, seed + 1, 0.0, 1.0))
}

/// Shapes in memory order: one of several reduction chunks per channel and a small one, per
/// layout (channels-first with spatial extent, channels-last with its strided reduction).
fn offset_shapes() -> [(Vec<usize>, Layout); 4] {
    [
        (vec![4, 3, 64, 64], FIRST),
        (vec![4, 64, 64, 3], LAST),
        (vec![5, 3, 7], FIRST),
        (vec![6, 5, 3], LAST),
    ]
}

#[test]
fn large_offsets_match_the_reference() {
    for offset in [1e4f64, 1e6] {
        for (k, (shape, layout)) in offset_shapes().into_iter().enumerate() {
            let channels = view(&shape, layout).channels;
            let seed = 100 * k as u64 + offset.log10() as u64;
            // Channel c sits at offset * (1 + c/4) with unit spread: |mean|/std up to ~1.5e6.
            let batches = (0..2)
                .map(|step| {
                    data_by_channel(&shape, layout, seed + step, |c| {
                        (offset * (1.0 + c as f64 / 4.0), 1.0)
                    })
                })
                .collect();
            Scenario {
                shape,
                layout,
                config: BatchNormConfig::default(),
                affine: Some(affine(channels, seed)),
                batches,
            }
            .check();
        }
    }
}

/// Reference running stats, updated as PyTorch does.
struct RunningReference {
    mean: Vec<f64>,
    var: Vec<f64>,
}

impl RunningReference {
    fn new(channels: usize) -> Self {
        RunningReference {
            mean: vec![0.0; channels],
            var: vec![1.0; channels],
        }
    }
}

/// Checks the listed channels of one training step against the reference, with the forward
/// tolerances of the module docs.
#[allow(clippy::too_many_arguments)]
fn check_training_step(
    what: &str,
    layer: &BatchNorm,
    host: &ArrayD<f32>,
    layout: Layout,
    y: &[f32],
    saved: (&[f32], &[f32]),
    stats: &BatchStatistics,
    want_y: &[f64],
    running: &RunningReference,
    channels: &[usize],
) {
    let view = view(host.shape(), layout);
    let (gamma, _) = layer.parameters().expect("affine layer");
    for &c in channels {
        let std = 1.0 / stats.invstd[c];
        let ratio = stats.mean[c].abs() * stats.invstd[c];
        let y_tol = f64::from(gamma[c]).abs() * (1e-5 + 8.0 * ratio * F32_EPS);
        for m in 0..view.values_per_channel() {
            let i = value_index(&view, c, m);
            let err = (f64::from(y[i]) - want_y[i]).abs();
            assert!(
                err <= y_tol,
                "{what}: y[{i}] (channel {c}) = {}, want {} (error {err:e} > {y_tol:e})",
                y[i],
                want_y[i]
            );
        }
        let mean_tol = 1e-6 * std + 4.0 * stats.mean[c].abs() * F32_EPS;
        let err = (f64::from(saved.0[c]) - stats.mean[c]).abs();
        assert!(
            err <= mean_tol,
            "{what}: saved mean[{c}] = {}, want {} (error {err:e} > {mean_tol:e})",
            saved.0[c],
            stats.mean[c]
        );
        let err = (f64::from(saved.1[c]) - stats.invstd[c]).abs();
        assert!(
            err <= 1e-5 * stats.invstd[c],
            "{what}: saved invstd[{c}] = {}, want {}",
            saved.1[c],
            stats.invstd[c]
        );
    }
    let (got_mean, got_var) = layer.running_statistics().expect("tracked");
    for &c in channels {
        let tol = 1e-6 + 1e-5 * running.mean[c].abs() + 4.0 * stats.mean[c].abs() * F32_EPS;
        let err = (f64::from(got_mean[c]) - running.mean[c]).abs();
        assert!(
            err <= tol,
            "{what}: running_mean[{c}] = {}, want {} (error {err:e} > {tol:e})",
            got_mean[c],
            running.mean[c]
        );
        let tol = 1e-6 + 1e-5 * running.var[c].abs();
        let err = (f64::from(got_var[c]) - running.var[c]).abs();
        assert!(
            err <= tol,
            "{what}: running_var[{c}] = {}, want {} (error {err:e} > {tol:e})",
            got_var[c],
            running.var[c]
        );
    }
}

/// A constant channel: x - mean is exactly 0, so y = 0 * scale + beta = beta bitwise; its
/// saved mean is the constant exactly (every shifted difference is 0); its biased variance is
/// 0, so the running variance follows r_var <- (1 - m) r_var, i.e. 0.9^k after k steps from 1,
/// and the running mean c (1 - 0.9^k). The other channels are checked against the reference.
#[test]
fn constant_channel_gives_beta_exactly() {
    let constant = 1234.567f32;
    let cases: [(&[usize], Layout); 4] = [
        (&[2, 4, 48, 48], FIRST),
        (&[2, 48, 48, 4], LAST),
        (&[3, 4, 5], FIRST),
        (&[7, 4], LAST),
    ];
    let steps = 3usize;
    let eps = 1e-5f64;
    for (k, (shape, layout)) in cases.into_iter().enumerate() {
        let view = view(shape, layout);
        let (gamma, beta) = affine(4, 7 + k as u64);
        let mut layer = BatchNorm::new(&context(), 4).unwrap();
        layer.set_parameters(&gamma, &beta).unwrap();
        let mut running = RunningReference::new(4);
        let mut first_batch = None;
        for step in 0..steps {
            let what = format!("{shape:?} {layout:?} step {step}");
            let mut data = data_by_channel(shape, layout, 50 + 10 * k as u64 + step as u64, |c| {
                (c as f64 * 3.0 - 2.0, 1.0 + c as f64)
            });
            for m in 0..view.values_per_channel() {
                data[value_index(&view, 1, m)] = constant;
            }
            let (x, host) = upload(&data, shape, layout);
            let y = poisoned(shape, layout);
            let saved = layer.forward_into(&x, &y).expect("training");
            let got = y.to_vec().unwrap();
            let (mean, invstd) = saved.read().unwrap();

            // Closed forms for the constant channel.
            for m in 0..view.values_per_channel() {
                let i = value_index(&view, 1, m);
                assert_eq!(
                    got[i].to_bits(),
                    beta[1].to_bits(),
                    "{what}: y[{i}] = {} on the constant channel, want beta = {}",
                    got[i],
                    beta[1]
                );
            }
            assert_eq!(mean[1].to_bits(), constant.to_bits(), "{what}: saved mean");
            // invstd = 1 / sqrt(0 + eps): float32 eps, sqrt and division, a few u.
            let want_invstd = 1.0 / eps.sqrt();
            let err = (f64::from(invstd[1]) - want_invstd).abs();
            assert!(
                err <= 4.0 * F32_EPS * want_invstd,
                "{what}: invstd[1] = {}, want {want_invstd}",
                invstd[1]
            );
            let (run_mean, run_var) = layer.running_statistics().unwrap();
            let decay = 0.9f64.powi(step as i32 + 1);
            let want_var = decay;
            let want_mean = f64::from(constant) * (1.0 - decay);
            // Each step rounds (1 - m) r, m mean and their sum: 3 u per step, compounding.
            let steps_tol = 4.0 * (step + 1) as f64 * F32_EPS;
            assert!(
                (f64::from(run_var[1]) - want_var).abs() <= steps_tol * want_var,
                "{what}: running_var[1] = {}, want {want_var}",
                run_var[1]
            );
            assert!(
                (f64::from(run_mean[1]) - want_mean).abs() <= steps_tol * f64::from(constant),
                "{what}: running_mean[1] = {}, want {want_mean}",
                run_mean[1]
            );

            // The other channels against the reference.
            let (want_y, stats) =
                reference::training_forward(host.view(), layout, Some(&gamma), Some(&beta), eps);
            assert_eq!(stats.var[1], 0.0);
            reference::update_running_statistics(
                &mut running.mean,
                &mut running.var,
                &stats,
                view.values_per_channel(),
                0.1,
            );
            check_training_step(
                &what,
                &layer,
                &host,
                layout,
                &got,
                (&mean, &invstd),
                &stats,
                want_y.as_slice().expect("standard layout"),
                &running,
                &[0, 2, 3],
            );
            first_batch.get_or_insert(host);
        }
        // Inference on the first batch: the constant channel gives
        // (c - r_mean) gamma / sqrt(r_var + eps) + beta from the reference running stats.
        let host = first_batch.unwrap();
        layer.set_training(false);
        let (x, _) = upload(host.as_slice().unwrap(), shape, layout);
        let y = poisoned(shape, layout);
        layer.forward_into(&x, &y).expect("inference");
        let want = reference::inference_forward(
            host.view(),
            layout,
            &running.mean,
            &running.var,
            Some(&gamma),
            Some(&beta),
            eps,
        );
        let got = y.to_vec().unwrap();
        for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
            let c = view.channel_of(i);
            let invstd = 1.0 / (running.var[c] + eps).sqrt();
            let ratio = running.mean[c].abs() * invstd;
            let tol = f64::from(gamma[c]).abs() * (1e-5 + 8.0 * ratio * F32_EPS);
            assert!(
                (f64::from(g) - w).abs() <= tol,
                "{shape:?} {layout:?} inference: y[{i}] = {g}, want {w}"
            );
        }
    }
}

#[test]
fn tiny_and_huge_scales_match_the_reference() {
    let cases: [(&[usize], Layout); 2] = [(&[4, 6, 9, 9], FIRST), (&[4, 9, 9, 6], LAST)];
    for (k, (shape, layout)) in cases.into_iter().enumerate() {
        let seed = 300 + 10 * k as u64;
        // Scenario's running-mean tolerance is absolute (1e-6) plus relative to the mean, so at
        // std 1e12 the channel keeps an offset of half a std (otherwise its mean, ~std/sqrt(M),
        // could land near 0 and leave only 1e-6 of slack for an error of ~1e-7 std).
        let uniform = [
            (0.0, 1e-6, 0.0),
            (0.0, 1e-6, 1e-5),
            (3e-6, 1e-6, 0.0),
            (0.5e12, 1e12, 1e-5),
            (0.5e12, 1e12, 0.0),
        ];
        for (j, (offset, scale, eps)) in uniform.into_iter().enumerate() {
            let batches = (0..2)
                .map(|s| {
                    normal_data(
                        shape.iter().product(),
                        seed + j as u64 * 3 + s,
                        offset,
                        scale,
                    )
                })
                .collect();
            Scenario {
                shape: shape.to_vec(),
                layout,
                config: BatchNormConfig {
                    eps,
                    ..BatchNormConfig::default()
                },
                affine: Some(affine(6, seed)),
                batches,
            }
            .check();
        }
        // Channels 18 orders of magnitude apart in one tensor, each with |mean| / std = 2.
        let scales = [1e-6, 1e-3, 1.0, 1e3, 1e6, 1e12];
        for eps in [0.0, 1e-5] {
            let batches = (0..2)
                .map(|s| {
                    data_by_channel(shape, layout, seed + 50 + s, |c| {
                        (2.0 * scales[c], scales[c])
                    })
                })
                .collect();
            Scenario {
                shape: shape.to_vec(),
                layout,
                config: BatchNormConfig {
                    eps,
                    ..BatchNormConfig::default()
                },
                affine: Some(affine(6, seed + 1)),
                batches,
            }
            .check();
        }
    }
}

/// Shapes for the NaN tests: 4 channels, several chunks per channel and a small one.
fn four_channel_shapes() -> [(Vec<usize>, Layout); 4] {
    [
        (vec![2, 4, 48, 48], FIRST),
        (vec![2, 48, 48, 4], LAST),
        (vec![3, 4, 5, 6], FIRST),
        (vec![3, 5, 6, 4], LAST),
    ]
}

/// Four channels of normal data; channel 1 gets a NaN in the middle of its values, channel 2 a
/// +Inf as its very first value (the value a chunk's shift is taken from).
fn data_with_nan_and_inf(shape: &[usize], layout: Layout, seed: u64) -> Vec<f32> {
    let view = view(shape, layout);
    let mut data = data_by_channel(shape, layout, seed, |c| (c as f64 - 1.5, 0.5 + c as f64));
    let m = view.values_per_channel();
    data[value_index(&view, 1, m / 2 + 1)] = f32::NAN;
    data[value_index(&view, 2, 0)] = f32::INFINITY;
    data
}

/// NaN and infinity stay in their channels: channels 0 and 3 match the reference as usual
/// (outputs, saved stats, running stats, then inference); channel 1 (a NaN) gives NaN outputs,
/// a NaN saved mean and invstd and NaN running stats, as PyTorch does (its var is NaN);
/// channel 2 (+Inf) gives non-finite outputs, saved mean and running stats (PyTorch: mean +Inf,
/// var NaN, so running_mean +Inf and running_var NaN).
#[test]
fn nan_and_inf_stay_in_their_channels_forward() {
    let eps = 1e-5;
    let mut problems = Vec::new();
    for (k, (shape, layout)) in four_channel_shapes().into_iter().enumerate() {
        let what = format!("{shape:?} {layout:?}");
        let view = view(&shape, layout);
        let (gamma, beta) = affine(4, 500 + k as u64);
        let mut layer = BatchNorm::new(&context(), 4).unwrap();
        layer.set_parameters(&gamma, &beta).unwrap();
        let data = data_with_nan_and_inf(&shape, layout, 510 + k as u64);
        let (x, host) = upload(&data, &shape, layout);
        let y = poisoned(&shape, layout);
        let saved = layer
            .forward_into(&x, &y)
            .expect("training on non-finite data");
        let got = y.to_vec().unwrap();
        let (mean, invstd) = saved.read().unwrap();
        let (want_y, stats) =
            reference::training_forward(host.view(), layout, Some(&gamma), Some(&beta), eps);
        let mut running = RunningReference::new(4);
        reference::update_running_statistics(
            &mut running.mean,
            &mut running.var,
            &stats,
            view.values_per_channel(),
            0.1,
        );
        check_training_step(
            &what,
            &layer,
            &host,
            layout,
            &got,
            (&mean, &invstd),
            &stats,
            want_y.as_slice().expect("standard layout"),
            &running,
            &[0, 3],
        );
        // Collected rather than asserted one by one, so a failure lists every non-finite value
        // that went missing.
        let (run_mean, run_var) = layer.running_statistics().unwrap();
        let mut expect = |ok: bool, name: &str, value: f32, want: &str| {
            if !ok {
                problems.push(format!("{what}: {name} = {value}, want {want}"));
            }
        };
        for m in 0..view.values_per_channel() {
            let (i1, i2) = (value_index(&view, 1, m), value_index(&view, 2, m));
            expect(
                got[i1].is_nan(),
                &format!("y[{i1}] (channel 1)"),
                got[i1],
                "NaN",
            );
            let y2 = got[i2];
            expect(
                !y2.is_finite(),
                &format!("y[{i2}] (channel 2)"),
                y2,
                "non-finite",
            );
        }
        // PyTorch's save_invstd and running_var are NaN for both (var = NaN).
        assert!(stats.invstd[1].is_nan() && stats.invstd[2].is_nan());
        assert!(running.var[1].is_nan() && running.var[2].is_nan());
        expect(mean[1].is_nan(), "saved mean[1]", mean[1], "NaN");
        expect(!mean[2].is_finite(), "saved mean[2]", mean[2], "non-finite");
        expect(invstd[1].is_nan(), "saved invstd[1]", invstd[1], "NaN");
        expect(
            !invstd[2].is_finite(),
            "saved invstd[2]",
            invstd[2],
            "non-finite",
        );
        expect(run_mean[1].is_nan(), "running_mean[1]", run_mean[1], "NaN");
        expect(run_var[1].is_nan(), "running_var[1]", run_var[1], "NaN");
        expect(
            !run_mean[2].is_finite(),
            "running_mean[2]",
            run_mean[2],
            "non-finite",
        );
        expect(
            !run_var[2].is_finite(),
            "running_var[2]",
            run_var[2],
            "non-finite",
        );

        // Inference on clean data from these running stats: channels 0 and 3 as the reference.
        layer.set_training(false);
        let clean = data_by_channel(&shape, layout, 520 + k as u64, |c| (c as f64, 1.0));
        let (x, host) = upload(&clean, &shape, layout);
        let y = poisoned(&shape, layout);
        layer.forward_into(&x, &y).expect("inference");
        let want = reference::inference_forward(
            host.view(),
            layout,
            &running.mean,
            &running.var,
            Some(&gamma),
            Some(&beta),
            eps,
        );
        let want = want.as_slice().expect("standard layout");
        let got = y.to_vec().unwrap();
        for c in [0, 3] {
            let invstd = 1.0 / (running.var[c] + eps).sqrt();
            let tol =
                f64::from(gamma[c]).abs() * (1e-5 + 8.0 * running.mean[c].abs() * invstd * F32_EPS);
            for m in 0..view.values_per_channel() {
                let i = value_index(&view, c, m);
                assert!(
                    (f64::from(got[i]) - want[i]).abs() <= tol,
                    "{what} inference: y[{i}] = {}, want {}",
                    got[i],
                    want[i]
                );
            }
        }
    }
    assert!(
        problems.is_empty(),
        "non-finite values lost:\n{}",
        problems.join("\n")
    );
}

/// Per-element bound on |dx_gpu - dx| for channel `c`, to first order in u, from:
/// - the saved statistics (asserted first): |mean error| <= `mean_err`, invstd relative error
///   <= `rho`;
/// - x_hat = (x - mean) invstd: error mean_err invstd + (rho + 2u) |x_hat| (subtraction and
///   product roundings);
/// - mean(dy) and mean(dy x_hat) as sums of M terms: K u mean|dy| and (K + 2) u mean|dy x_hat|
///   (the product and the subtraction inside each term add 2u), plus the mean error's effect on
///   sum(dy (x - mean)), mean_err invstd |mean(dy)|, and invstd's rho |mean(dy x_hat)|;
/// - the final dx = gamma invstd (dy - m1 - x_hat m2): rho + 6u relative on its terms (invstd,
///   the products, two subtractions).
///
/// The sum of these, times 2 for the second-order terms the first-order sum leaves out.
struct DxBound {
    scale: f64,
    mean_err_invstd: f64,
    rho: f64,
    m1: f64,
    m2: f64,
    s1: f64,
    s2: f64,
}

impl DxBound {
    fn at(&self, dy: f64, x_hat: f64) -> f64 {
        let u = F32_EPS;
        let k = SUM_DEPTH;
        let terms = dy.abs() + self.m1.abs() + x_hat.abs() * self.m2.abs();
        let x_hat_err = self.mean_err_invstd + (self.rho + 2.0 * u) * x_hat.abs();
        let m1_err = k * u * self.s1;
        let m2_err = self.mean_err_invstd * self.m1.abs()
            + self.rho * self.m2.abs()
            + (k + 2.0) * u * self.s2;
        2.0 * self.scale
            * ((self.rho + 6.0 * u) * terms
                + m1_err
                + x_hat_err * self.m2.abs()
                + x_hat.abs() * m2_err)
    }
}

/// dx, dgamma and dbeta as the GPU computed them.
type GpuGradients = (Vec<f32>, Vec<f32>, Vec<f32>);

/// Runs training forward and backward on the GPU (dx pre-filled with NaN) and checks dx, dgamma
/// and dbeta of the listed channels against `reference::backward_batch_statistics` with the f64
/// batch statistics. The saved statistics are checked first, at the bounds the dx tolerance
/// assumes. Returns the GPU's (dx, dgamma, dbeta) and the reference gradients.
fn check_backward(
    what: &str,
    shape: &[usize],
    layout: Layout,
    x_data: &[f32],
    dy_data: &[f32],
    gamma: &[f32],
    channels: &[usize],
) -> (GpuGradients, reference::Gradients) {
    let view = view(shape, layout);
    let eps = 1e-5;
    let mut layer = BatchNorm::new(&context(), view.channels).unwrap();
    let beta = vec![0.25; view.channels];
    layer.set_parameters(gamma, &beta).unwrap();
    let (x, host_x) = upload(x_data, shape, layout);
    let (dy, host_dy) = upload(dy_data, shape, layout);
    let saved = layer.forward(&x).expect("forward").saved;
    let dx = poisoned(shape, layout);
    let params = layer
        .backward_into(&x, &dy, &dx, &saved)
        .expect("backward")
        .expect("affine layer");
    let got_dx = dx.to_vec().unwrap();
    let (got_dgamma, got_dbeta) = params.read().unwrap();
    let (mean, invstd) = saved.read().unwrap();

    let stats = reference::batch_statistics(host_x.view(), layout, eps);
    let want = reference::backward_batch_statistics(
        host_x.view(),
        host_dy.view(),
        layout,
        &stats.mean,
        &stats.invstd,
        Some(gamma),
    );
    let want_dx = want.dx.as_slice().expect("standard layout");
    let u = F32_EPS;
    let m = view.values_per_channel();
    let mf = m as f64;
    for &c in channels {
        let inv = stats.invstd[c];
        // The statistics the dx tolerance assumes (see the module docs).
        let mean_err = 1e-6 / inv + 4.0 * stats.mean[c].abs() * u;
        let rho = SUM_DEPTH * u;
        let err = (f64::from(mean[c]) - stats.mean[c]).abs();
        assert!(
            err <= mean_err,
            "{what}: saved mean[{c}] = {}, want {} (error {err:e} > {mean_err:e})",
            mean[c],
            stats.mean[c]
        );
        let err = (f64::from(invstd[c]) - inv).abs();
        assert!(
            err <= rho * inv,
            "{what}: saved invstd[{c}] = {}, want {inv} (relative error {:e} > {rho:e})",
            invstd[c],
            err / inv
        );
        let x_hat = |i: usize| (f64::from(x_data[i]) - stats.mean[c]) * inv;
        let indices: Vec<usize> = (0..m).map(|k| value_index(&view, c, k)).collect();
        let s1 = indices
            .iter()
            .map(|&i| f64::from(dy_data[i]).abs())
            .sum::<f64>()
            / mf;
        let s2 = indices
            .iter()
            .map(|&i| (f64::from(dy_data[i]) * x_hat(i)).abs())
            .sum::<f64>()
            / mf;
        let bound = DxBound {
            scale: f64::from(gamma[c]).abs() * inv,
            mean_err_invstd: mean_err * inv,
            rho,
            m1: want.dbeta[c] / mf,
            m2: want.dgamma[c] / mf,
            s1,
            s2,
        };
        for &i in &indices {
            let tol = bound.at(f64::from(dy_data[i]), x_hat(i));
            let err = (f64::from(got_dx[i]) - want_dx[i]).abs();
            assert!(
                err <= tol,
                "{what}: dx[{i}] (channel {c}) = {}, want {} (error {err:e} > {tol:e})",
                got_dx[i],
                want_dx[i]
            );
        }
        // dgamma = invstd sum(dy (x - mean)): M times mean(dy x_hat)'s error above, plus rho.
        let tol = 2.0
            * mf
            * (bound.mean_err_invstd * bound.m1.abs()
                + rho * bound.m2.abs()
                + (SUM_DEPTH + 2.0) * u * s2);
        let err = (f64::from(got_dgamma[c]) - want.dgamma[c]).abs();
        assert!(
            err <= tol,
            "{what}: dgamma[{c}] = {}, want {} (error {err:e} > {tol:e})",
            got_dgamma[c],
            want.dgamma[c]
        );
        // dbeta = sum(dy): a plain sum of M terms.
        let tol = 2.0 * SUM_DEPTH * u * mf * s1;
        let err = (f64::from(got_dbeta[c]) - want.dbeta[c]).abs();
        assert!(
            err <= tol,
            "{what}: dbeta[{c}] = {}, want {} (error {err:e} > {tol:e})",
            got_dbeta[c],
            want.dbeta[c]
        );
    }
    ((got_dx, got_dgamma, got_dbeta), want)
}

#[test]
fn backward_at_offset_1e4_matches_the_reference() {
    for (k, (shape, layout)) in offset_shapes().into_iter().enumerate() {
        let view = view(&shape, layout);
        let c = view.channels;
        let seed = 700 + 10 * k as u64;
        let x = data_by_channel(&shape, layout, seed, |c| {
            (1e4 * (1.0 + c as f64 / 4.0), 1.0)
        });
        let dy = normal_data(view.len(), seed + 1, 0.0, 1.0);
        let (gamma, _) = affine(c, seed + 2);
        let all: Vec<usize> = (0..c).collect();
        check_backward(
            &format!("offset 1e4 {shape:?} {layout:?}"),
            &shape,
            layout,
            &x,
            &dy,
            &gamma,
            &all,
        );
    }
}

/// A constant channel in the backward pass: x_hat = 0 exactly, so dgamma = sum(dy x_hat) = 0
/// exactly and dx = gamma invstd (dy - mean(dy)) with invstd = 1/sqrt(eps) (checked against the
/// reference, which computes the same, with the tolerance of `check_backward`).
#[test]
fn backward_with_a_constant_channel_matches_the_reference() {
    let cases: [(&[usize], Layout); 4] = [
        (&[2, 4, 48, 48], FIRST),
        (&[2, 48, 48, 4], LAST),
        (&[3, 4, 5], FIRST),
        (&[7, 4], LAST),
    ];
    for (k, (shape, layout)) in cases.into_iter().enumerate() {
        let view = view(shape, layout);
        let seed = 800 + 10 * k as u64;
        let mut x = data_by_channel(shape, layout, seed, |c| (c as f64, 1.0 + c as f64));
        for m in 0..view.values_per_channel() {
            x[value_index(&view, 1, m)] = -42.375;
        }
        let dy = normal_data(view.len(), seed + 1, 0.5, 1.0);
        let (gamma, _) = affine(4, seed + 2);
        let what = format!("constant channel {shape:?} {layout:?}");
        let ((_, dgamma, _), want) =
            check_backward(&what, shape, layout, &x, &dy, &gamma, &[0, 1, 2, 3]);
        assert_eq!(want.dgamma[1], 0.0);
        assert_eq!(dgamma[1], 0.0, "{what}: dgamma[1] must be exactly 0");
    }
}

/// dy with a NaN in one element of channel 1: channels 0, 2 and 3 match the reference; all of
/// channel 1's dx and its dgamma and dbeta are NaN (PyTorch: NaN enters both sums, and every
/// dx of the channel reads them).
#[test]
fn nan_in_dy_stays_in_its_channel_backward() {
    for (k, (shape, layout)) in four_channel_shapes().into_iter().enumerate() {
        let view = view(&shape, layout);
        let seed = 900 + 10 * k as u64;
        let x = data_by_channel(&shape, layout, seed, |c| (c as f64, 1.0));
        let mut dy = normal_data(view.len(), seed + 1, 0.0, 1.0);
        dy[value_index(&view, 1, view.values_per_channel() / 3)] = f32::NAN;
        let (gamma, _) = affine(4, seed + 2);
        let what = format!("NaN dy {shape:?} {layout:?}");
        let ((dx, dgamma, dbeta), _) =
            check_backward(&what, &shape, layout, &x, &dy, &gamma, &[0, 2, 3]);
        for m in 0..view.values_per_channel() {
            let i = value_index(&view, 1, m);
            assert!(
                dx[i].is_nan(),
                "{what}: dx[{i}] = {} in the NaN channel",
                dx[i]
            );
        }
        assert!(dgamma[1].is_nan(), "{what}: dgamma[1] = {}", dgamma[1]);
        assert!(dbeta[1].is_nan(), "{what}: dbeta[1] = {}", dbeta[1]);
    }
}

/// The backward of the forward with NaN (channel 1) and +Inf (channel 2) in x, finite dy:
/// channels 0 and 3 match the reference; channels 1 and 2 give non-finite dx everywhere
/// (channel 1 NaN) and non-finite dgamma; dbeta = sum(dy) involves no x, so it is finite and
/// matches the reference on every channel.
#[test]
fn non_finite_input_stays_in_its_channels_backward() {
    for (k, (shape, layout)) in four_channel_shapes().into_iter().enumerate() {
        let view = view(&shape, layout);
        let seed = 1000 + 10 * k as u64;
        let x = data_with_nan_and_inf(&shape, layout, seed);
        let dy = normal_data(view.len(), seed + 1, 0.0, 1.0);
        let (gamma, _) = affine(4, seed + 2);
        let what = format!("non-finite x {shape:?} {layout:?}");
        let ((dx, dgamma, dbeta), want) =
            check_backward(&what, &shape, layout, &x, &dy, &gamma, &[0, 3]);
        for m in 0..view.values_per_channel() {
            let (i1, i2) = (value_index(&view, 1, m), value_index(&view, 2, m));
            assert!(dx[i1].is_nan(), "{what}: dx[{i1}] = {}", dx[i1]);
            assert!(!dx[i2].is_finite(), "{what}: dx[{i2}] = {}", dx[i2]);
        }
        assert!(dgamma[1].is_nan(), "{what}: dgamma[1] = {}", dgamma[1]);
        assert!(!dgamma[2].is_finite(), "{what}: dgamma[2] = {}", dgamma[2]);
        let mf = view.values_per_channel() as f64;
        for c in 0..4 {
            let s1 = (0..view.values_per_channel())
                .map(|m| f64::from(dy[value_index(&view, c, m)]).abs())
                .sum::<f64>();
            let tol = 2.0 * SUM_DEPTH * F32_EPS * s1;
            assert!(
                (f64::from(dbeta[c]) - want.dbeta[c]).abs() <= tol,
                "{what}: dbeta[{c}] = {}, want {} ({mf} values)",
                dbeta[c],
                want.dbeta[c]
            );
        }
    }
}
