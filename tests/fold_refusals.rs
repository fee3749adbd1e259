//! Every refusal of `wgpu_batchnorm::fold`, each a typed error whose message says what to fix:
//! a batch norm without running statistics, zero padding or a transposed convolution in the
//! next layer, channel and group mismatches between the layers, inconsistent layers and
//! inconsistent batch-norm parameters. The folds themselves are checked in `tests/fold.rs`.

mod common;
#[path = "fold_support/params.rs"]
mod params;

use common::context;
use ndarray::{Array1, ArrayD, IxDyn};
use params::host_params;
use wgpu_batchnorm::fold::{
    fold_affine_into_next, fold_inference_into_next, fold_into_previous, BatchNormParameters,
    FoldError, Layer, Padding,
};
use wgpu_batchnorm::{BatchNorm, BatchNormConfig};

/// A convolution of constant weights and no bias.
fn conv_layer(shape: &[usize], groups: usize, padding: Padding) -> Layer {
    let weight = ArrayD::from_elem(IxDyn(shape), 0.5f32);
    Layer::convolution(weight, None, groups, padding)
}

/// Asserts the message names what the caller must fix.
fn assert_says(error: &FoldError, words: &[&str]) {
    let message = error.to_string();
    for word in words {
        assert!(message.contains(word), "'{message}' does not say '{word}'");
    }
}

#[test]
fn a_batch_norm_without_running_statistics_is_refused() {
    let config = BatchNormConfig {
        track_running_stats: false,
        ..BatchNormConfig::default()
    };
    let bn = BatchNorm::with_config(&context(), 4, config).unwrap();
    let params = BatchNormParameters::from_batch_norm(&bn).expect("download");
    let layer = conv_layer(&[4, 4, 3], 1, Padding::None);
    for result in [
        fold_into_previous(&layer, &params),
        fold_inference_into_next(&params, &layer),
    ] {
        let error = result.expect_err("no running statistics");
        assert!(
            matches!(error, FoldError::MissingRunningStatistics),
            "{error:?}"
        );
        assert_says(
            &error,
            &["running statistics", "training", "fold_affine_into_next"],
        );
    }
    // Its gamma and beta still fold.
    fold_affine_into_next(&params, &layer).expect("gamma and beta fold without running stats");
}

#[test]
fn zero_padding_in_the_next_layer_is_refused() {
    let params = host_params(2);
    for kernel in [1, 3] {
        let layer = conv_layer(&[3, 2, kernel, kernel], 1, Padding::Zeros);
        for result in [
            fold_inference_into_next(&params, &layer),
            fold_affine_into_next(&params, &layer),
        ] {
            let error = result.expect_err("zero padding");
            assert!(matches!(error, FoldError::ZeroPadding), "{error:?}");
            assert_says(&error, &["zeros", "reflect"]);
        }
        // The batch norm before it is not concerned: folding into the previous layer reads
        // no padding.
        let previous = conv_layer(&[2, 3, kernel, kernel], 1, Padding::Zeros);
        fold_into_previous(&previous, &params).expect("zero padding before a batch norm");
    }
}

#[test]
fn a_transposed_next_layer_is_refused() {
    let params = host_params(4);
    let layer = Layer::transposed_convolution(ArrayD::from_elem(IxDyn(&[4, 3, 3]), 1.0), None, 1);
    for result in [
        fold_inference_into_next(&params, &layer),
        fold_affine_into_next(&params, &layer),
    ] {
        let error = result.expect_err("transposed");
        assert!(matches!(error, FoldError::TransposedNext), "{error:?}");
        assert_says(&error, &["transposed", "taps"]);
    }
}

#[test]
fn channel_mismatches_between_the_layers_are_refused() {
    let mismatch = |result: Result<Layer, FoldError>, layer: usize, batch_norm: usize| {
        let error = result.expect_err("a channel mismatch");
        assert!(
            matches!(error, FoldError::ChannelMismatch { layer: l, batch_norm: b, .. }
                if l == layer && b == batch_norm),
            "{error:?}"
        );
        assert_says(&error, &[&layer.to_string(), &batch_norm.to_string()]);
    };
    // Conv1d(4, 6, 3, groups=2): 6 outputs, 4 inputs (2 per group on axis 1).
    let grouped = conv_layer(&[6, 2, 3], 2, Padding::None);
    mismatch(fold_into_previous(&grouped, &host_params(5)), 6, 5);
    // The output count is not the input count of a grouped convolution.
    mismatch(fold_inference_into_next(&host_params(6), &grouped), 4, 6);
    mismatch(fold_affine_into_next(&host_params(6), &grouped), 4, 6);
    // ConvTranspose1d(4, 6, 3, groups=2): 6 outputs on axis 1 times the groups.
    let transposed =
        Layer::transposed_convolution(ArrayD::from_elem(IxDyn(&[4, 3, 3]), 1.0), None, 2);
    mismatch(fold_into_previous(&transposed, &host_params(4)), 6, 4);
    // A 1-channel batch norm broadcasts over a linear layer only.
    mismatch(fold_into_previous(&grouped, &host_params(1)), 6, 1);
    let linear = Layer::linear(ArrayD::from_elem(IxDyn(&[3, 5]), 1.0), None);
    mismatch(fold_into_previous(&linear, &host_params(2)), 3, 2);
    mismatch(fold_inference_into_next(&host_params(3), &linear), 5, 3);
}

#[test]
fn inconsistent_layers_are_refused() {
    let params = host_params(6);
    let previous = |layer: Layer| fold_into_previous(&layer, &params).expect_err("refused");
    let linear3 = Layer::linear(ArrayD::from_elem(IxDyn(&[6, 2, 3]), 1.0), None);
    assert!(matches!(
        previous(linear3),
        FoldError::WeightRank { kind: "linear", .. }
    ));
    let conv2 = conv_layer(&[6, 4], 1, Padding::None);
    assert!(matches!(
        previous(conv2),
        FoldError::WeightRank {
            kind: "convolution",
            ..
        }
    ));
    assert!(matches!(
        previous(conv_layer(&[6, 4, 3], 0, Padding::None)),
        FoldError::ZeroGroups
    ));
    let error = previous(conv_layer(&[6, 1, 3], 4, Padding::None));
    assert!(
        matches!(
            error,
            FoldError::GroupsDoNotDivide {
                what: "output",
                channels: 6,
                groups: 4,
                ..
            }
        ),
        "{error:?}"
    );
    // No values, so it can be made; its grouped axis times the groups overflows a usize.
    let error = previous(conv_layer(&[0, 1 << 62, 1], 8, Padding::None));
    assert!(
        matches!(error, FoldError::TooManyChannels { groups: 8, .. }),
        "{error:?}"
    );
    let transposed =
        Layer::transposed_convolution(ArrayD::from_elem(IxDyn(&[4, 2, 3]), 1.0), None, 3);
    assert!(matches!(
        previous(transposed),
        FoldError::GroupsDoNotDivide {
            what: "input",
            channels: 4,
            groups: 3,
            ..
        }
    ));
    let mut short_bias = conv_layer(&[6, 4, 3], 1, Padding::None);
    short_bias.bias = Some(Array1::zeros(5));
    assert!(matches!(
        previous(short_bias),
        FoldError::BiasLength {
            expected: 6,
            actual: 5
        }
    ));
}

#[test]
fn inconsistent_batch_norm_parameters_are_refused() {
    let layer = conv_layer(&[3, 3, 1], 1, Padding::None);
    let refused =
        |params: BatchNormParameters| fold_into_previous(&layer, &params).expect_err("refused");
    let mut short_gamma = host_params(3);
    short_gamma.gamma = Some(vec![1.0; 2]);
    assert!(matches!(
        refused(short_gamma),
        FoldError::ParameterLength {
            what: "gamma",
            expected: 3,
            actual: 2
        }
    ));
    let mut short_var = host_params(3);
    short_var.running.as_mut().unwrap().var.push(1.0);
    assert!(matches!(
        refused(short_var),
        FoldError::ParameterLength {
            what: "running_var",
            expected: 3,
            actual: 4
        }
    ));
    for eps in [-1e-5, f64::NAN, f64::INFINITY] {
        let mut params = host_params(3);
        params.eps = eps;
        assert!(matches!(refused(params), FoldError::InvalidEps(_)));
    }
    let mut negative = host_params(3);
    negative.running.as_mut().unwrap().var[1] = -0.5;
    negative.eps = 0.25;
    let error = refused(negative);
    assert!(
        matches!(error, FoldError::NonPositiveVariance { channel: 1, value } if value == -0.25),
        "{error:?}"
    );
}
