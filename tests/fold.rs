//! Folding batch norm into neighbouring layers (`wgpu_batchnorm::fold`): the folded layer's
//! output against the unfolded pair's, with the batch norm run by the crate on the GPU and the
//! linear or convolution layer in f64 on the host (`fold_support/conv.rs`), on random layers
//! (proptest): linear, 1-D and 2-D convolutions, groups 1, 2 and one per channel, transposed
//! convolutions (grouped too), zero, reflect, replicate and circular padding, bias or none,
//! affine or not; the one grouped transposed convolution PyTorch's own fuser refuses, in
//! closed form; and why zero padding in the next layer must be refused. The refusals
//! themselves: `tests/fold_refusals.rs`.
//!
//! Bounds, with u = 2^-24. The GPU's batch-norm output y is within 4u (|x_hat g| + |beta|) of
//! the f64 formula from its own saved statistics (the suite's output bound, `common::checks`),
//! and its inference invstd within 4u of the exact one (checked here, as the suite does). The
//! folded weight and bias are each one rounding from their exact values. Both are carried to
//! the layer's outputs through the magnitudes of its terms (the layer applied to |W| and to the
//! errors); the f64 sums themselves add nothing measurable at these sizes, and second-order
//! terms (u^2) are left out.

#[path = "fold_support/case.rs"]
mod case;
mod common;
#[path = "fold_support/conv.rs"]
mod conv;
#[path = "fold_support/params.rs"]
mod params;

use case::{cases, Case, Kind};
use common::checks::{check_inference_statistics, Findings, UNIT_ROUNDOFF as U};
use common::scenario::{read_saved, require};
use common::{context, normal_data, proptest_cases, upload};
use conv::PadMode;
use ndarray::{Array1, ArrayD, Dimension, IxDyn};
use params::host_params;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use wgpu_batchnorm::fold::{
    fold_affine_into_next, fold_inference_into_next, fold_into_previous, BatchNormParameters,
    Layer, RunningStatistics,
};
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, Layout, SavedStats};

/// Absolute slack for results that underflow.
const FLOOR: f64 = f32::MIN_POSITIVE as f64;

/// A batch norm on the test context with random gamma and beta (when affine) and running
/// statistics.
fn batch_norm(channels: usize, affine: bool, training: bool, seed: u64) -> BatchNorm {
    let config = BatchNormConfig {
        affine,
        ..BatchNormConfig::default()
    };
    let mut layer = BatchNorm::with_config(&context(), channels, config).expect("layer");
    if affine {
        let gamma = normal_data(channels, seed ^ 1, 1.0, 0.5);
        let beta = normal_data(channels, seed ^ 2, 0.0, 1.0);
        layer.set_parameters(&gamma, &beta).expect("parameters");
    }
    let mean = normal_data(channels, seed ^ 3, 0.3, 1.0);
    let var: Vec<f32> = normal_data(channels, seed ^ 4, 0.0, 1.0)
        .iter()
        .map(|v| 0.2 + v.abs())
        .collect();
    layer.set_running_statistics(&mean, &var).expect("running");
    layer.set_training(training);
    layer
}

/// The batch norm's forward on the GPU: its output in f64, and its saved statistics.
fn run_batch_norm(layer: &mut BatchNorm, x: &[f32], shape: &[usize]) -> (ArrayD<f64>, SavedStats) {
    let (tensor, _) = upload(x, shape, Layout::ChannelsFirst);
    let out = layer.forward(&tensor).expect("forward");
    let y = out.y.to_vec().expect("download y");
    let y = ArrayD::from_shape_vec(IxDyn(shape), y).expect("shape");
    (y.mapv(f64::from), out.saved)
}

/// After an inference forward: asserts the saved statistics (mean = running mean,
/// invstd within 4u) and returns them.
fn checked_inference_stats(
    what: &str,
    params: &BatchNormParameters,
    saved: &SavedStats,
) -> common::checks::Saved {
    let saved = read_saved(saved);
    let running = params.running.as_ref().expect("running statistics");
    require(check_inference_statistics(
        what,
        &running.mean,
        &running.var,
        params.eps,
        &saved,
    ));
    saved
}

/// gamma (1 when not affine), beta (0), and the exact inference scale g / sqrt(v + eps) and
/// shift beta - m scale, per channel, in f64.
struct ChannelValues {
    gamma: Vec<f64>,
    beta: Vec<f64>,
    mean: Vec<f64>,
    scale: Vec<f64>,
}

impl ChannelValues {
    fn of(params: &BatchNormParameters) -> Self {
        let c = params.channels;
        let widen = |v: &Option<Vec<f32>>, default: f64| -> Vec<f64> {
            v.as_ref().map_or(vec![default; c], |v| {
                v.iter().map(|&x| f64::from(x)).collect()
            })
        };
        let gamma = widen(&params.gamma, 1.0);
        let running = params.running.as_ref().expect("running statistics");
        let mean: Vec<f64> = running.mean.iter().map(|&m| f64::from(m)).collect();
        let scale = (0..c)
            .map(|k| gamma[k] / (f64::from(running.var[k]) + params.eps).sqrt())
            .collect();
        ChannelValues {
            gamma,
            beta: widen(&params.beta, 0.0),
            mean,
            scale,
        }
    }
}

impl ChannelValues {
    /// A 1-channel batch norm's values repeated over `features` (its broadcast over a linear
    /// layer's features).
    fn broadcast(self, features: usize) -> Self {
        let repeat = |v: Vec<f64>| vec![v[0]; features];
        ChannelValues {
            gamma: repeat(self.gamma),
            beta: repeat(self.beta),
            mean: repeat(self.mean),
            scale: repeat(self.scale),
        }
    }
}

/// `values` with element `(n, c, ...)` mapped by `f(c, value)`.
fn per_channel(values: &ArrayD<f64>, f: impl Fn(usize, f64) -> f64) -> ArrayD<f64> {
    let mut out = values.clone();
    for (index, v) in out.indexed_iter_mut() {
        *v = f(index[1], *v);
    }
    out
}

/// Asserts `|got - want| <= bound` element by element.
fn assert_within(what: &str, got: &ArrayD<f64>, want: &ArrayD<f64>, bound: &ArrayD<f64>) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes");
    let mut findings = Findings::new(what);
    for (i, ((g, w), b)) in got.iter().zip(want).zip(bound).enumerate() {
        findings.expect((g - w).abs() <= *b, || {
            format!(
                "[{i}]: {g} against {w}, error {:e} > bound {b:e}",
                (g - w).abs()
            )
        });
    }
    require(findings.finish());
}

fn random_input(case: &Case, seed: u64) -> (Vec<f32>, ArrayD<f64>) {
    let shape = case.input_shape();
    let data = normal_data(shape.iter().product(), seed, 0.5, 1.5);
    let host = ArrayD::from_shape_vec(IxDyn(&shape), data.clone()).expect("shape");
    (data, host.mapv(f64::from))
}

/// How the batch norm sees a layer's channels: one each, or (`broadcast`, beside a linear
/// layer) one channel over all its features, as `BatchNorm1d(1)` on `[N, 1, features]`.
#[derive(Clone, Copy, Debug)]
struct Sharing {
    broadcast: bool,
}

impl Sharing {
    fn channels(self, features: usize) -> usize {
        if self.broadcast {
            1
        } else {
            features
        }
    }

    /// The shape the batch norm runs on, for data of `shape`.
    fn shape(self, shape: &[usize]) -> Vec<usize> {
        if self.broadcast {
            vec![shape[0], 1, shape[1]]
        } else {
            shape.to_vec()
        }
    }

    /// The batch norm's channel values and its GPU invstd, one per layer channel.
    fn values(
        self,
        params: &BatchNormParameters,
        saved: &common::checks::Saved,
        features: usize,
    ) -> (ChannelValues, Vec<f64>) {
        let values = ChannelValues::of(params);
        let invstd: Vec<f64> = saved.invstd.iter().map(|&s| f64::from(s)).collect();
        if self.broadcast {
            (values.broadcast(features), vec![invstd[0]; features])
        } else {
            (values, invstd)
        }
    }
}

/// bn(layer(x)), the batch norm in inference on the GPU, against the folded layer in f64.
fn check_previous_fold(case: &Case, affine: bool, sharing: Sharing) {
    let (weight, bias) = case.weights();
    let layer = case.layer(weight, bias);
    let (_, x) = random_input(case, case.seed ^ 0x33);
    let z = case.run(&layer, &x);
    // The layer's output reaches the batch norm rounded to f32, as a real network's would.
    let z32: Vec<f32> = z.iter().map(|&v| v as f32).collect();
    let features = case.out_channels();
    let mut bn = batch_norm(sharing.channels(features), affine, false, case.seed);
    let params = BatchNormParameters::from_batch_norm(&bn).expect("download");
    let (y, saved) = run_batch_norm(&mut bn, &z32, &sharing.shape(z.shape()));
    let y = y.into_shape_with_order(z.raw_dim()).expect("same elements");
    let what = format!("{case:?}, affine {affine}, {sharing:?}: previous fold");
    let saved = checked_inference_stats(&what, &params, &saved);
    let (values, invstd) = sharing.values(&params, &saved, features);

    let folded = fold_into_previous(&layer, &params).expect("a fold");
    let got = case.run(&folded, &x);
    let magnitudes = case.run_magnitudes(&layer, &x);
    let folded_bias = folded.bias.as_ref().expect("a folded bias");
    let mut bound = z.clone();
    for (index, b) in bound.indexed_iter_mut() {
        let c = index[1];
        let z_exact = z[&index];
        // The GPU's output bound from its own invstd, on the rounded input.
        let centered = f64::from(z_exact as f32) - values.mean[c];
        let output = 4.0 * ((centered * invstd[c] * values.gamma[c]).abs() + values.beta[c].abs());
        // The input's rounding, the invstd's 4u, and the folded weight's rounding.
        let input = values.scale[c].abs()
            * (z_exact.abs() + 4.0 * (z_exact - values.mean[c]).abs() + magnitudes[&index]);
        *b = U * (output + input + f64::from(folded_bias[c]).abs()) + FLOOR;
    }
    assert_within(&what, &got, &y, &bound);
}

/// layer(bn(x)) against the folded layer on x, the batch norm in inference on the GPU.
fn check_inference_next_fold(case: &Case, affine: bool, sharing: Sharing) {
    let (weight, bias) = case.weights();
    let layer = case.layer(weight, bias);
    let (data, x) = random_input(case, case.seed ^ 0x44);
    let features = case.in_channels();
    let mut bn = batch_norm(sharing.channels(features), affine, false, case.seed);
    let params = BatchNormParameters::from_batch_norm(&bn).expect("download");
    let (y, saved) = run_batch_norm(&mut bn, &data, &sharing.shape(x.shape()));
    let y = y.into_shape_with_order(x.raw_dim()).expect("same elements");
    let what =
        format!("{case:?}, affine {affine}, {sharing:?}: inference fold into the next layer");
    let saved = checked_inference_stats(&what, &params, &saved);
    let (values, invstd) = sharing.values(&params, &saved, features);
    let want = case.run(&layer, &y);

    let folded = fold_inference_into_next(&params, &layer).expect("a fold");
    let got = case.run(&folded, &x);
    // Each batch-norm output's error: the GPU's output bound and its invstd's 4u, plus the
    // folded weight's rounding of scale * x.
    let errors = per_channel(&x, |c, x| {
        let centered = x - values.mean[c];
        4.0 * ((centered * invstd[c] * values.gamma[c]).abs() + values.beta[c].abs())
            + 4.0 * (centered * values.scale[c]).abs()
            + (x * values.scale[c]).abs()
    });
    let bound = bound_through(case, &layer, &folded, &errors);
    assert_within(&what, &got, &want, &bound);
}

/// `u (|W| applied to errors + |folded bias|) + FLOOR`, per output.
fn bound_through(case: &Case, layer: &Layer, folded: &Layer, errors: &ArrayD<f64>) -> ArrayD<f64> {
    let carried = case.run_magnitudes(layer, errors);
    let folded_bias = folded.bias.as_ref().expect("a folded bias");
    per_channel(&carried, |c, carried| {
        U * (carried + f64::from(folded_bias[c]).abs()) + FLOOR
    })
}

/// layer(bn(x)) with an affine batch norm against folded(bn'(x)) with the same batch norm
/// without gamma and beta, both on the GPU, in training (batch statistics) or inference.
fn check_affine_next_fold(case: &Case, training: bool) {
    let (weight, bias) = case.weights();
    let layer = case.layer(weight, bias);
    let (data, x) = random_input(case, case.seed ^ 0x55);
    let channels = case.in_channels();
    let mut with_affine = batch_norm(channels, true, training, case.seed);
    let mut without = batch_norm(channels, false, training, case.seed);
    let params = BatchNormParameters::from_batch_norm(&with_affine).expect("download");
    assert_eq!(
        BatchNormParameters::from_batch_norm(&without)
            .expect("download")
            .running,
        params.running,
        "both batch norms start from the same running statistics"
    );
    let (y_affine, saved_affine) = run_batch_norm(&mut with_affine, &data, x.shape());
    let (y_plain, saved_plain) = run_batch_norm(&mut without, &data, x.shape());
    let want = case.run(&layer, &y_affine);

    let folded = fold_affine_into_next(&params, &layer).expect("a fold");
    let got = case.run(&folded, &y_plain);
    let values = ChannelValues::of(&params);
    let (affine_stats, plain_stats) = (read_saved(&saved_affine), read_saved(&saved_plain));
    let x_hat = |stats: &common::checks::Saved, c: usize, x: f64| {
        (x - f64::from(stats.mean[c])) * f64::from(stats.invstd[c])
    };
    // Each batch-norm output's error in the pair (the affine output's bound) and in the folded
    // layer (the plain output's bound times |gamma|, the folded weight's rounding of
    // gamma x_hat, and any difference between the two runs' statistics), over one u.
    let errors = per_channel(&x, |c, x| {
        let (hat_affine, hat_plain) = (x_hat(&affine_stats, c, x), x_hat(&plain_stats, c, x));
        let g = values.gamma[c].abs();
        4.0 * ((hat_affine * values.gamma[c]).abs() + values.beta[c].abs())
            + g * (5.0 * hat_plain.abs() + (hat_affine - hat_plain).abs() / U)
    });
    let bound = bound_through(case, &layer, &folded, &errors);
    let mode = if training { "training" } else { "inference" };
    assert_within(
        &format!("{case:?}: gamma and beta folded into the next layer, {mode}"),
        &got,
        &want,
        &bound,
    );
}

const PREVIOUS_KINDS: [Kind; 5] = [
    Kind::Linear,
    Kind::Convolution { dims: 1 },
    Kind::Convolution { dims: 2 },
    Kind::Transposed { dims: 1 },
    Kind::Transposed { dims: 2 },
];
const NEXT_KINDS: [Kind; 3] = [
    Kind::Linear,
    Kind::Convolution { dims: 1 },
    Kind::Convolution { dims: 2 },
];
/// Paddings a fold into the next layer keeps exact; zeros here means no padding.
const EXACT_PADDINGS: [PadMode; 4] = [
    PadMode::Zeros,
    PadMode::Reflect,
    PadMode::Replicate,
    PadMode::Circular,
];

/// The next-layer cases: zero padding only of 0 (more is refused, see below).
fn next_cases() -> impl Strategy<Value = Case> {
    cases(NEXT_KINDS.to_vec(), EXACT_PADDINGS.to_vec()).prop_map(|mut case| {
        if case.mode == PadMode::Zeros {
            case.padding.fill(0);
        }
        case
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: proptest_cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn previous_fold_matches_the_pair(
        case in cases(PREVIOUS_KINDS.to_vec(), vec![PadMode::Zeros]),
        affine in any::<bool>(),
    ) {
        check_previous_fold(&case, affine, Sharing { broadcast: false });
    }

    #[test]
    fn inference_fold_into_next_matches_the_pair(case in next_cases(), affine in any::<bool>()) {
        check_inference_next_fold(&case, affine, Sharing { broadcast: false });
    }

    #[test]
    fn affine_fold_into_next_matches_the_pair(case in next_cases(), training in any::<bool>()) {
        check_affine_next_fold(&case, training);
    }
}

/// A linear case, for the 1-channel batch norm and the refusals.
fn linear_case(inputs: usize, outputs: usize, seed: u64) -> Case {
    Case {
        kind: Kind::Linear,
        groups: 1,
        in_per_group: inputs,
        out_per_group: outputs,
        batch: 4,
        input: vec![],
        kernel: vec![],
        stride: vec![],
        padding: vec![],
        mode: PadMode::Zeros,
        bias: true,
        seed,
    }
}

#[test]
fn one_channel_batch_norm_broadcasts_over_a_linear_layer() {
    let broadcast = Sharing { broadcast: true };
    for (k, affine) in [true, false].into_iter().enumerate() {
        let case = linear_case(5, 7, 90 + k as u64);
        check_previous_fold(&case, affine, broadcast);
        check_inference_next_fold(&case, affine, broadcast);
    }
}

/// PyTorch's own `fuse_conv_bn_eval(..., transpose=True)` raises on this layer
/// (`ConvTranspose2d(4, 6, 3, groups=2)`): the weight is `[4, 3, 3, 3]` and output channel
/// `(i / 2) * 3 + j` is on input row `i`, column `j`. Powers of two make every fold exact, so
/// the closed form is compared bit for bit; the GPU comparison of such layers is in
/// `previous_fold_matches_the_pair`.
#[test]
fn grouped_transposed_convolution_folds_per_group() {
    let weight = ArrayD::from_shape_fn(IxDyn(&[4, 3, 3, 3]), |i| {
        1.0 + (i[0] * 27 + i[1] * 9 + i[2] * 3 + i[3]) as f32
    });
    let bias = Array1::from(vec![0.5, -1.0, 2.0, 0.25, 3.0, -4.0]);
    let layer = Layer::transposed_convolution(weight.clone(), Some(bias.clone()), 2);
    let gamma: Vec<f32> = (0..6).map(|c| (1 << c) as f32).collect();
    let params = BatchNormParameters {
        channels: 6,
        gamma: Some(gamma.clone()),
        beta: Some(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        running: Some(RunningStatistics {
            mean: vec![-1.0, 0.0, 1.0, 2.0, 3.0, 4.0],
            var: vec![4.0; 6],
        }),
        eps: 0.0,
    };
    let folded = fold_into_previous(&layer, &params).expect("a fold");
    // s = gamma / sqrt(4) = 2^(c - 1).
    let scale = |c: usize| gamma[c] / 2.0;
    for (index, &w) in folded.weight.indexed_iter() {
        let out = (index[0] / 2) * 3 + index[1];
        assert_eq!(w, weight[&index] * scale(out), "weight {:?}", index.slice());
    }
    let running = params.running.as_ref().unwrap();
    let beta = params.beta.as_ref().unwrap();
    let want: Vec<f32> = (0..6)
        .map(|c| (bias[c] - running.mean[c]) * scale(c) + beta[c])
        .collect();
    assert_eq!(folded.bias.unwrap().to_vec(), want);
}

#[test]
fn parameters_download_from_a_batch_norm() {
    let bn = batch_norm(3, true, true, 7);
    let params = BatchNormParameters::from_batch_norm(&bn).expect("download");
    let (gamma, beta) = bn.parameters().unwrap();
    let (mean, var) = bn.running_statistics().unwrap();
    assert_eq!(params.channels, 3);
    assert_eq!((params.gamma, params.beta), (Some(gamma), Some(beta)));
    assert_eq!(params.running, Some(RunningStatistics { mean, var }));
    assert_eq!(params.eps, 1e-5);

    let config = BatchNormConfig {
        affine: false,
        track_running_stats: false,
        eps: 1e-3,
        ..BatchNormConfig::default()
    };
    let bare = BatchNorm::with_config(&context(), 3, config).unwrap();
    let params = BatchNormParameters::from_batch_norm(&bare).expect("download");
    assert_eq!(
        (params.gamma, params.beta, params.running),
        (None, None, None)
    );
    assert_eq!(params.eps, 1e-3);
}

/// Why zero padding is refused even with a 1-wide kernel: the outputs over the padding read
/// only zeros, so after a batch norm they are `b`, but a folded layer gives them `b + W t`
/// (t = beta - running_mean s); the outputs inside agree.
#[test]
fn zero_padding_would_change_the_border_outputs() {
    let case = Case {
        kind: Kind::Convolution { dims: 1 },
        groups: 1,
        in_per_group: 2,
        out_per_group: 1,
        batch: 1,
        input: vec![4],
        kernel: vec![1],
        stride: vec![1],
        padding: vec![1],
        mode: PadMode::Zeros,
        bias: false,
        seed: 3,
    };
    let weight = ArrayD::from_shape_vec(IxDyn(&[1, 2, 1]), vec![0.5f32, -2.0]).unwrap();
    let params = host_params(2);
    let padded = case.layer(weight.clone(), None);
    let unpadded = Case {
        padding: vec![0],
        ..case.clone()
    };
    let folded =
        fold_inference_into_next(&params, &unpadded.layer(weight, None)).expect("no padding folds");
    let (_, x) = random_input(&case, 5);
    let values = ChannelValues::of(&params);
    let shift = |c: usize| values.beta[c] - values.mean[c] * values.scale[c];
    let normalized = per_channel(&x, |c, x| x * values.scale[c] + shift(c));
    let pair = case.run(&padded, &normalized);
    let folded_out = case.run(&folded, &x);
    let w_t = 0.5 * shift(0) - 2.0 * shift(1);
    for position in 0..6 {
        let at = [0, 0, position];
        let moved = folded_out[&at[..]] - pair[&at[..]];
        let want = if position == 0 || position == 5 {
            w_t
        } else {
            0.0
        };
        assert!(
            (moved - want).abs() < 1e-6,
            "position {position}: moved by {moved}, not {want}"
        );
    }
}
