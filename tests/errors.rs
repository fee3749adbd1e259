//! Bad input gets a typed error, never a panic, and a refused call changes nothing.
//!
//! Every refusal below is followed by a look at everything the call could have touched: the
//! layer's gamma and beta, running stats and `num_batches_tracked`, and any output tensor the
//! caller passed in (filled with a sentinel beforehand, so a partial write shows). Display
//! messages are checked for the numbers a person needs to fix the call.
//!
//! Also here: the edge cases that are *not* errors (an empty batch, which PyTorch's module
//! counts in training, eps = 0, momentum 0 and 1, inference on one value per channel), checked
//! against closed forms.

mod common;

use std::panic::AssertUnwindSafe;

use common::{assert_close, context, poisoned};
use wgpu_batchnorm::functional::{self, ForwardArgs};
use wgpu_batchnorm::{
    AdapterOptions, BatchNorm, BatchNormConfig, BatchNormError, ChannelPair, GpuContext, Layout,
    Tensor,
};

const FIRST: Layout = Layout::ChannelsFirst;
const LAST: Layout = Layout::ChannelsLast;

/// A value no kernel writes: an output still holding it after a refusal was left alone.
const SENTINEL: f32 = 7.25;

/// Everything a [`BatchNorm`] call may change, as bits (so NaN compares and -0 != 0).
#[derive(Debug, PartialEq, Eq)]
struct LayerState {
    parameters: Option<(Vec<u32>, Vec<u32>)>,
    running: Option<(Vec<u32>, Vec<u32>)>,
    num_batches_tracked: u64,
    training: bool,
}

fn bits(pair: (Vec<f32>, Vec<f32>)) -> (Vec<u32>, Vec<u32>) {
    let to_bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect();
    (to_bits(pair.0), to_bits(pair.1))
}

fn state(layer: &BatchNorm) -> LayerState {
    LayerState {
        parameters: layer.parameters().ok().map(bits),
        running: layer.running_statistics().ok().map(bits),
        num_batches_tracked: layer.num_batches_tracked(),
        training: layer.is_training(),
    }
}

fn pair_bits(pair: &ChannelPair) -> (Vec<u32>, Vec<u32>) {
    bits(pair.read().expect("read a channel pair"))
}

/// Deterministic, distinct values: `len` of them, none repeated within a channel.
fn ramp(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 37) % 101) as f32 * 0.125 - 3.0)
        .collect()
}

fn tensor(shape: &[usize], layout: Layout) -> Tensor {
    let len = shape.iter().product();
    Tensor::from_slice(&context(), &ramp(len), shape, layout).expect("upload")
}

/// An output tensor filled with [`SENTINEL`].
fn sentinel(shape: &[usize], layout: Layout) -> Tensor {
    let t = Tensor::zeros(&context(), shape, layout).expect("allocate");
    t.fill(SENTINEL).expect("fill");
    t
}

fn assert_untouched(what: &str, t: &Tensor) {
    let values = t.to_vec().expect("download");
    assert!(
        values.iter().all(|v| v.to_bits() == SENTINEL.to_bits()),
        "{what}: a refused call wrote into it"
    );
}

/// A 3-channel layer whose every piece of state differs from its defaults: gamma, beta and the
/// running stats set by hand, then one training step (so `num_batches_tracked` = 1).
fn trained_layer(config: BatchNormConfig) -> BatchNorm {
    let ctx = context();
    let mut layer = BatchNorm::with_config(&ctx, 3, config).expect("layer");
    if config.affine {
        layer
            .set_parameters(&[1.5, -0.5, 2.0], &[0.125, 0.25, -0.375])
            .expect("gamma and beta");
    }
    if config.track_running_stats {
        layer
            .set_running_statistics(&[0.25, -1.0, 3.0], &[2.0, 0.5, 4.0])
            .expect("running stats");
    }
    layer.forward(&tensor(&[4, 3, 5], FIRST)).expect("one step");
    layer
}

/// Unwraps the error of a call that must be refused.
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, BatchNormError>) -> BatchNormError {
    match result {
        Ok(value) => panic!("{what}: accepted, returned {value:?}"),
        Err(error) => error,
    }
}

fn assert_mentions(error: &BatchNormError, needles: &[&str]) {
    let message = error.to_string();
    for needle in needles {
        assert!(
            message.contains(needle),
            "the message of {error:?} should mention {needle:?}: {message}"
        );
    }
}

#[test]
fn rank_below_two_is_refused() {
    let ctx = context();
    for layout in [FIRST, LAST] {
        let error = refused("rank 1", Tensor::from_slice(&ctx, &[1.0; 5], &[5], layout));
        assert!(
            matches!(&error, BatchNormError::RankTooLow { shape } if shape == &[5usize]),
            "{error:?}"
        );
        assert_mentions(&error, &["[5]", "rank 1", "[N, C"]);
        let error = refused("rank 0", Tensor::zeros(&ctx, &[], layout));
        assert!(matches!(&error, BatchNormError::RankTooLow { shape } if shape.is_empty()));
        let error = refused("rank 1 zeros", Tensor::zeros(&ctx, &[0], layout));
        assert!(matches!(error, BatchNormError::RankTooLow { .. }));
    }
}

#[test]
fn data_length_must_match_the_shape() {
    let ctx = context();
    for (len, layout) in [(5, FIRST), (7, LAST), (0, FIRST)] {
        let error = refused(
            "wrong length",
            Tensor::from_slice(&ctx, &ramp(len), &[2, 3], layout),
        );
        assert!(
            matches!(&error, BatchNormError::LengthMismatch { shape, expected: 6, actual }
                if shape == &[2usize, 3] && *actual == len),
            "{error:?}"
        );
        assert_mentions(&error, &["[2, 3]", "6 elements", &format!("has {len}")]);
    }
    // A caller's buffer too small for the shape, or without the usages the kernels need.
    let small = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("too small"),
        size: 20,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let error = refused(
        "small buffer",
        Tensor::from_buffer(&ctx, small, &[2, 3], FIRST),
    );
    assert!(
        matches!(
            error,
            BatchNormError::ViewPastEnd {
                offset: 0,
                bytes: 24,
                buffer_bytes: 20
            }
        ),
        "{error:?}"
    );
    assert_mentions(
        &error,
        &["24 bytes", "4 bytes past the end", "20-byte buffer"],
    );
    let no_storage = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("no storage usage"),
        size: 24,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let error = refused(
        "buffer usage",
        Tensor::from_buffer(&ctx, no_storage, &[2, 3], FIRST),
    );
    assert!(
        matches!(&error, BatchNormError::MissingBufferUsage { missing, .. } if missing == "STORAGE"),
        "{error:?}"
    );
    assert_mentions(&error, &["STORAGE"]);
}

#[test]
fn element_count_overflow_is_refused() {
    let ctx = context();
    let cases: [(&[usize], Layout); 5] = [
        (&[usize::MAX, 2], FIRST),
        (&[usize::MAX, 2], LAST),
        (&[2, usize::MAX], LAST),
        (&[1 << 32, 1 << 16, 1 << 16], FIRST),
        (&[1 << 32, 1 << 16, 1 << 16], LAST),
    ];
    for (shape, layout) in cases {
        let error = refused(
            "overflow",
            Tensor::from_slice::<f32>(&ctx, &[], shape, layout),
        );
        assert!(
            matches!(&error, BatchNormError::TooManyElements { shape: s } if s == shape),
            "{shape:?} {layout:?}: {error:?}"
        );
        assert_mentions(&error, &[&format!("{shape:?}")]);
        let error = refused("overflow", Tensor::zeros(&ctx, shape, layout));
        assert!(
            matches!(error, BatchNormError::TooManyElements { .. }),
            "{error:?}"
        );
    }
    // The element count fits in usize but its byte count does not fit in u64.
    let error = refused("bytes overflow", Tensor::zeros(&ctx, &[1 << 62, 1], FIRST));
    assert!(
        matches!(error, BatchNormError::TooManyElements { .. }),
        "{error:?}"
    );
}

#[test]
fn tensor_over_max_buffer_size_is_refused_without_allocating() {
    let ctx = context();
    let max = ctx.limits().max_buffer_size;
    // One float over the limit: refused before any allocation (an allocation of `max` bytes
    // would show as a slow test or an out-of-memory error, not as TensorTooLarge).
    let elements = (max / 4 + 1) as usize;
    for (shape, layout) in [(vec![elements, 1], FIRST), (vec![1, elements], LAST)] {
        let error = refused("one over", Tensor::zeros(&ctx, &shape, layout));
        assert!(
            matches!(error, BatchNormError::TensorTooLarge { bytes, max: m }
                if bytes == 4 * elements as u64 && m == max),
            "{error:?}"
        );
        assert_mentions(
            &error,
            &[&(4 * elements as u64).to_string(), &max.to_string()],
        );
    }
    // Far over: 2^50 floats.
    let error = refused(
        "huge",
        Tensor::zeros(&ctx, &[1 << 20, 1 << 20, 1 << 10], FIRST),
    );
    assert!(
        matches!(error, BatchNormError::TensorTooLarge { bytes, .. } if bytes == 1 << 52),
        "{error:?}"
    );
    // Per-channel pairs are checked the same way.
    let error = refused("pair", ChannelPair::zeros(&ctx, 1 << 40));
    assert!(
        matches!(error, BatchNormError::TensorTooLarge { bytes, .. } if bytes == 8 << 40),
        "{error:?}"
    );
}

/// `ChannelPair::zeros` computes `2 * channels * 4` bytes without overflow checks, so a huge
/// channel count overflows (a panic in debug builds) instead of returning a typed error.
#[test]
fn channel_pair_with_overflowing_byte_count_is_refused() {
    let ctx = context();
    let result =
        std::panic::catch_unwind(AssertUnwindSafe(|| ChannelPair::zeros(&ctx, usize::MAX)));
    let result = result.expect("ChannelPair::zeros(usize::MAX) panicked instead of refusing");
    let error = refused("pair overflow", result);
    assert!(
        matches!(
            error,
            BatchNormError::TooManyElements { .. } | BatchNormError::TensorTooLarge { .. }
        ),
        "{error:?}"
    );
}

/// `BatchNorm::with_config` builds gamma, beta and the running stats as host vectors of
/// `channels` values before any size check, so an impossible channel count panics ("capacity
/// overflow"; a merely huge one, such as 2^40, aborts the process on the host allocation, which
/// is why it is not tried here) instead of returning a typed error.
#[test]
fn layer_with_impossible_channel_count_is_refused() {
    let ctx = context();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| BatchNorm::new(&ctx, usize::MAX)));
    let result = result.expect("BatchNorm::new(usize::MAX channels) panicked instead of refusing");
    let error = refused("huge layer", result);
    assert!(
        matches!(
            error,
            BatchNormError::TooManyElements { .. } | BatchNormError::TensorTooLarge { .. }
        ),
        "{error:?}"
    );
}

#[test]
fn channel_count_must_match_the_layer() {
    let config = BatchNormConfig::default();
    let mut layer = trained_layer(config);
    let before = state(&layer);
    // Channels-first [N, C, ...] with C = 4; channels-last [N, ..., C] with C = 4 (and one whose
    // spatial extent happens to be 3, so only the layout-aware channel count can tell).
    let cases: [(&[usize], Layout); 4] = [
        (&[2, 4, 5], FIRST),
        (&[2, 5, 4], LAST),
        (&[2, 3, 4], LAST),
        (&[6, 4], FIRST),
    ];
    for (shape, layout) in cases {
        let x = tensor(shape, layout);
        let y = sentinel(shape, layout);
        for training in [true, false] {
            layer.set_training(training);
            let error = refused("forward", layer.forward_into(&x, &y));
            assert!(
                matches!(
                    error,
                    BatchNormError::ChannelMismatch {
                        expected: 3,
                        actual: 4,
                        ..
                    }
                ),
                "{shape:?} {layout:?}: {error:?}"
            );
            assert_mentions(&error, &["4 channels", "3"]);
            assert_untouched("y", &y);
        }
        layer.set_training(true);
        assert_eq!(state(&layer), before);

        // Backward with an x of the wrong channel count (and its own saved stats).
        let mut other = BatchNorm::new(&context(), 4).unwrap();
        let saved = other.forward(&x).expect("a 4-channel layer").saved;
        let dx = sentinel(shape, layout);
        let error = refused("backward", layer.backward_into(&x, &x, &dx, &saved));
        assert!(matches!(
            error,
            BatchNormError::ChannelMismatch {
                expected: 3,
                actual: 4,
                ..
            }
        ));
        assert_untouched("dx", &dx);
    }
    assert_eq!(state(&layer), before);

    // Functional: the parameters or running stats have another channel count than x.
    let ctx = context();
    let x = tensor(&[2, 3, 5], FIRST);
    let y = sentinel(&[2, 3, 5], FIRST);
    let four = ChannelPair::new(&ctx, &[1.0; 4], &[0.5; 4]).unwrap();
    let three = ChannelPair::new(&ctx, &[0.0; 3], &[1.0; 3]).unwrap();
    let four_bits = pair_bits(&four);
    let three_bits = pair_bits(&three);
    for (affine, running, names) in [
        (Some(&four), Some(&three), "ForwardArgs::affine"),
        (None, Some(&four), "ForwardArgs::running"),
    ] {
        let args = ForwardArgs {
            affine,
            running,
            training: true,
            momentum: 0.1,
            eps: 1e-5,
            epilogue: wgpu_batchnorm::Epilogue::None,
        };
        let error = refused("functional", functional::batch_norm_into(&x, &y, &args));
        assert!(
            matches!(
                error,
                BatchNormError::ChannelMismatch {
                    expected: 4,
                    actual: 3,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_mentions(&error, &["3 channels", names, "4"]);
        assert_untouched("y", &y);
    }
    assert_eq!(pair_bits(&four), four_bits);
    assert_eq!(pair_bits(&three), three_bits);
    // Backward with parameters of another channel count.
    let saved = functional::batch_norm(
        &x,
        &ForwardArgs {
            affine: None,
            running: None,
            training: true,
            momentum: 0.1,
            eps: 1e-5,
            epilogue: wgpu_batchnorm::Epilogue::None,
        },
    )
    .unwrap()
    .1;
    let dx = sentinel(&[2, 3, 5], FIRST);
    let error = refused(
        "functional backward",
        functional::batch_norm_backward_into(
            &x,
            &x,
            &dx,
            &saved,
            Some(&four),
            wgpu_batchnorm::EpilogueGrad::None,
        ),
    );
    assert!(matches!(error, BatchNormError::ChannelMismatch { .. }));
    assert_untouched("dx", &dx);
}

/// PyTorch 2.15's rules (tests/fixtures: `eps_*` cases): eps must be finite and non-negative,
/// and positive when normalizing with batch statistics ("batch_norm eps must be positive
/// during training"; eps < 0 in inference: "must be non-negative").
#[test]
fn eps_must_be_finite_non_negative_and_positive_in_training() {
    let ctx = context();
    let x = tensor(&[4, 3, 5], FIRST);
    let y = sentinel(&[4, 3, 5], FIRST);
    let running = ChannelPair::new(&ctx, &[0.5, 1.0, 1.5], &[2.0, 3.0, 4.0]).unwrap();
    let running_bits = pair_bits(&running);
    for eps in [f64::NAN, -1.0, f64::INFINITY, f64::NEG_INFINITY, -1e-30] {
        let config = BatchNormConfig {
            eps,
            ..BatchNormConfig::default()
        };
        let error = refused("with_config", BatchNorm::with_config(&ctx, 3, config));
        assert!(
            matches!(error, BatchNormError::InvalidEps(e) if e.to_bits() == eps.to_bits()),
            "{eps}: {error:?}"
        );
        assert_mentions(
            &error,
            &["batch_norm eps must be", "non-negative", &format!("{eps}")],
        );
        for training in [true, false] {
            let args = ForwardArgs {
                affine: None,
                running: Some(&running),
                training,
                momentum: 0.1,
                eps,
                epilogue: wgpu_batchnorm::Epilogue::None,
            };
            let error = refused("functional", functional::batch_norm_into(&x, &y, &args));
            if training && eps.is_finite() {
                assert!(
                    matches!(error, BatchNormError::EpsNotPositiveInTraining(_)),
                    "{error:?}"
                );
                assert_mentions(&error, &["eps must be positive during training"]);
            } else {
                assert!(matches!(error, BatchNormError::InvalidEps(_)), "{error:?}");
                assert_mentions(&error, &["non-negative"]);
            }
        }
        assert_untouched("y", &y);
        assert_eq!(pair_bits(&running), running_bits);
    }
}

/// eps = 0: refused in training (PyTorch 2.15), with nothing changed, and accepted in inference
/// from running stats. Closed form for inference: channel 0 holds 1, 3 and channel 1 holds 10,
/// 14; with running means 2, 12, running variances 1, 4 and eps = 0, x_hat = [[-1, -1], [1, 1]]
/// exactly, so y = x_hat * gamma + beta = [[-1.5, -4], [2.5, 2]] for gamma = [2, 3],
/// beta = [0.5, -1]. Each step of the float32 computation is exact or within an ulp or two.
#[test]
fn eps_zero_is_refused_in_training_and_accepted_in_inference() {
    let ctx = context();
    let config = BatchNormConfig {
        eps: 0.0,
        ..BatchNormConfig::default()
    };
    let mut layer = BatchNorm::with_config(&ctx, 2, config).expect("a layer may hold eps = 0");
    layer.set_parameters(&[2.0, 3.0], &[0.5, -1.0]).unwrap();
    layer
        .set_running_statistics(&[2.0, 12.0], &[1.0, 4.0])
        .unwrap();
    let x = Tensor::from_slice(&ctx, &[1.0, 10.0, 3.0, 14.0], &[2, 2], FIRST).unwrap();
    let y = sentinel(&[2, 2], FIRST);
    let before = state(&layer);
    let error = refused("training with eps = 0", layer.forward_into(&x, &y));
    assert!(
        matches!(error, BatchNormError::EpsNotPositiveInTraining(e) if e == 0.0),
        "{error:?}"
    );
    assert_mentions(
        &error,
        &["eps must be positive during training", "inference"],
    );
    assert_untouched("y", &y);
    assert_eq!(state(&layer), before);

    layer.set_training(false);
    let y = poisoned(&[2, 2], FIRST);
    layer.forward_into(&x, &y).expect("inference with eps = 0");
    let want = [-1.5, -4.0, 2.5, 2.0];
    // |y| <= 4 after a handful of float32 roundings: 16 u relative to the largest |y|, 4.
    let u = 2f64.powi(-24);
    let tol = 4.0 * 4.0 * u * 4.0;
    assert_close("y_eval", &y.to_vec().unwrap(), &want, tol, 0.0);
    // The functional form, the same.
    let affine = ChannelPair::new(&ctx, &[2.0, 3.0], &[0.5, -1.0]).unwrap();
    let running = ChannelPair::new(&ctx, &[2.0, 12.0], &[1.0, 4.0]).unwrap();
    let args = ForwardArgs {
        affine: Some(&affine),
        running: Some(&running),
        training: false,
        momentum: 0.1,
        eps: 0.0,
        epilogue: wgpu_batchnorm::Epilogue::None,
    };
    let y = poisoned(&[2, 2], FIRST);
    functional::batch_norm_into(&x, &y, &args).expect("inference with eps = 0");
    assert_close("functional y_eval", &y.to_vec().unwrap(), &want, tol, 0.0);
}

#[test]
fn momentum_must_lie_in_the_unit_interval() {
    let ctx = context();
    let x = tensor(&[4, 3, 5], FIRST);
    let y = sentinel(&[4, 3, 5], FIRST);
    let running = ChannelPair::new(&ctx, &[0.5, 1.0, 1.5], &[2.0, 3.0, 4.0]).unwrap();
    let running_bits = pair_bits(&running);
    for momentum in [1.5, -0.1, f64::NAN, f64::INFINITY] {
        let config = BatchNormConfig {
            momentum: Some(momentum),
            ..BatchNormConfig::default()
        };
        let error = refused("with_config", BatchNorm::with_config(&ctx, 3, config));
        assert!(
            matches!(error, BatchNormError::InvalidMomentum(m) if m.to_bits() == momentum.to_bits()),
            "{momentum}: {error:?}"
        );
        assert_mentions(&error, &["momentum", "[0, 1]", &format!("{momentum}")]);
        let args = ForwardArgs {
            affine: None,
            running: Some(&running),
            training: true,
            momentum,
            eps: 1e-5,
            epilogue: wgpu_batchnorm::Epilogue::None,
        };
        let error = refused("functional", functional::batch_norm_into(&x, &y, &args));
        assert!(
            matches!(error, BatchNormError::InvalidMomentum(_)),
            "{error:?}"
        );
        assert_untouched("y", &y);
        assert_eq!(pair_bits(&running), running_bits);
    }
    // The ends of the interval are allowed: momentum 0 keeps the running stats (0.5, 3), 1
    // replaces them by the batch's (mean 0 and unbiased variance 2 for the values -1, 1).
    let x = Tensor::from_slice(&ctx, &[-1.0, 1.0], &[2, 1], FIRST).unwrap();
    for (momentum, want_mean, want_var) in [(0.0, 0.5, 3.0), (1.0, 0.0, 2.0)] {
        let running = ChannelPair::new(&ctx, &[0.5], &[3.0]).unwrap();
        let args = ForwardArgs {
            affine: None,
            running: Some(&running),
            training: true,
            momentum,
            eps: 1e-5,
            epilogue: wgpu_batchnorm::Epilogue::None,
        };
        functional::batch_norm(&x, &args).expect("momentum at an end of [0, 1]");
        let (mean, var) = running.read().unwrap();
        assert_eq!(
            (mean[0], var[0]),
            (want_mean, want_var),
            "momentum {momentum}"
        );
    }
}

#[test]
fn training_needs_more_than_one_value_per_channel() {
    let ctx = context();
    let cases: [(&[usize], Layout, usize); 4] = [
        (&[1, 4, 1, 1], FIRST, 4),
        (&[1, 3], FIRST, 3),
        (&[1, 1, 1, 3], LAST, 3),
        (&[1, 3], LAST, 3),
    ];
    for (shape, layout, channels) in cases {
        let x = tensor(shape, layout);
        let y = sentinel(shape, layout);
        for momentum in [Some(0.1), None] {
            let config = BatchNormConfig {
                momentum,
                ..BatchNormConfig::default()
            };
            let mut layer = BatchNorm::with_config(&ctx, channels, config).unwrap();
            layer.forward(&tensor(&[2, channels], FIRST)).unwrap();
            let before = state(&layer);
            let error = refused("one value", layer.forward_into(&x, &y));
            assert!(
                matches!(&error, BatchNormError::TooFewValuesPerChannel { shape: s, values: 1 }
                    if s == shape),
                "{shape:?} {layout:?}: {error:?}"
            );
            assert_mentions(
                &error,
                &[
                    "Expected more than 1 value per channel when training",
                    &format!("{shape:?}"),
                ],
            );
            assert_untouched("y", &y);
            assert_eq!(state(&layer), before);
            // Inference on one value per channel is fine (PyTorch allows it), and normalizes
            // with the running stats.
            layer.set_training(false);
            let y_eval = layer
                .forward(&x)
                .expect("inference on one value per channel")
                .y
                .to_vec()
                .unwrap();
            let (mean, var) = layer.running_statistics().unwrap();
            let (gamma, beta) = layer.parameters().unwrap();
            let x_host =
                ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), ramp(x.len())).unwrap();
            let wide = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
            let want = wgpu_batchnorm::reference::inference_forward(
                x_host.view(),
                layout,
                &wide(mean),
                &wide(var),
                Some(&gamma),
                Some(&beta),
                1e-5,
            );
            assert_close(
                "inference on one value per channel",
                &y_eval,
                want.as_slice().unwrap(),
                1e-5,
                1e-5,
            );
            layer.set_training(true);
        }
        // Without running stats, inference normalizes with the batch statistics: refused too
        // (PyTorch: F.batch_norm(training=True) on one value per channel).
        let config = BatchNormConfig {
            track_running_stats: false,
            ..BatchNormConfig::default()
        };
        let mut layer = BatchNorm::with_config(&ctx, channels, config).unwrap();
        layer.set_training(false);
        let error = refused("untracked inference", layer.forward_into(&x, &y));
        assert!(matches!(
            error,
            BatchNormError::TooFewValuesPerChannel { values: 1, .. }
        ));
        assert_eq!(layer.num_batches_tracked(), 0);
        // Functional, with running stats that must stay as they are.
        let running = ChannelPair::new(&ctx, &vec![0.5; channels], &vec![2.0; channels]).unwrap();
        let running_bits = pair_bits(&running);
        let args = ForwardArgs {
            affine: None,
            running: Some(&running),
            training: true,
            momentum: 0.1,
            eps: 1e-5,
            epilogue: wgpu_batchnorm::Epilogue::None,
        };
        let error = refused("functional", functional::batch_norm_into(&x, &y, &args));
        assert!(matches!(
            error,
            BatchNormError::TooFewValuesPerChannel { values: 1, .. }
        ));
        assert_eq!(pair_bits(&running), running_bits);
        assert_untouched("y", &y);
    }
}

#[test]
fn outputs_and_gradients_of_another_shape_or_layout_are_refused() {
    let mut layer = trained_layer(BatchNormConfig::default());
    let shape = [2, 3, 4, 3];
    let x = tensor(&shape, FIRST);
    let saved = layer.forward(&x).expect("forward").saved;
    let before = state(&layer);
    // [2, 3, 4, 3] channels-last also has 3 channels: only the layout differs.
    let wrong: [(&[usize], Layout); 4] = [
        (&[2, 3, 4, 4], FIRST),
        (&[2, 3, 12], FIRST),
        (&[2, 3, 4, 3], LAST),
        (&[3, 3, 4, 3], FIRST),
    ];
    for (other, layout) in wrong {
        let bad = sentinel(other, layout);
        let check = |error: BatchNormError, what: &str| {
            assert!(
                matches!(&error, BatchNormError::ShapeMismatch { what: w, expected, expected_layout, actual, actual_layout }
                    if w.contains(what) && expected == &shape && *expected_layout == FIRST
                        && actual == other && *actual_layout == layout),
                "{what} {other:?} {layout:?}: {error:?}"
            );
            assert_mentions(
                &error,
                &[what, &format!("{shape:?}"), &format!("{other:?}")],
            );
        };
        for training in [true, false] {
            layer.set_training(training);
            check(refused("y", layer.forward_into(&x, &bad)), "y");
        }
        layer.set_training(true);
        assert_untouched("y", &bad);
        assert_eq!(state(&layer), before);

        let dx = sentinel(&shape, FIRST);
        check(
            refused("dy", layer.backward_into(&x, &bad, &dx, &saved)),
            "dy",
        );
        assert_untouched("dx", &dx);
        let dy = tensor(&shape, FIRST);
        check(
            refused("dx", layer.backward_into(&x, &dy, &bad, &saved)),
            "dx",
        );
        assert_untouched("dx", &bad);
    }
    assert_eq!(state(&layer), before);
}

#[test]
fn saved_statistics_of_another_shape_are_refused_in_backward() {
    let mut layer = trained_layer(BatchNormConfig::default());
    let (shape, other_shape) = ([2, 3, 4, 4], [2, 3, 5, 5]);
    let x = tensor(&shape, FIRST);
    let dy = tensor(&shape, FIRST);
    let other = tensor(&other_shape, FIRST);
    let saved_other = layer.forward(&other).unwrap().saved;
    // Same element count and channels, other layout: [2, 4, 4, 3] channels-last.
    let last = tensor(&[2, 4, 4, 3], LAST);
    let saved_last = layer.forward(&last).unwrap().saved;
    let before = state(&layer);
    for (saved, saved_shape, saved_layout) in [
        (&saved_other, &other_shape[..], FIRST),
        (&saved_last, &[2, 4, 4, 3][..], LAST),
    ] {
        let dx = sentinel(&shape, FIRST);
        let error = refused("saved", layer.backward_into(&x, &dy, &dx, saved));
        assert!(
            matches!(&error, BatchNormError::ShapeMismatch { what, actual, actual_layout, .. }
                if what.contains("saved") && actual == saved_shape && *actual_layout == saved_layout),
            "{error:?}"
        );
        assert_mentions(&error, &["saved", &format!("{saved_shape:?}")]);
        assert_untouched("dx", &dx);
        let error = refused(
            "functional saved",
            functional::batch_norm_backward_into(
                &x,
                &dy,
                &dx,
                saved,
                layer.affine(),
                wgpu_batchnorm::EpilogueGrad::None,
            ),
        );
        assert!(matches!(error, BatchNormError::ShapeMismatch { .. }));
        assert_untouched("dx", &dx);
    }
    assert_eq!(state(&layer), before);
}

#[test]
fn per_channel_vectors_of_the_wrong_length_are_refused_and_nothing_is_written() {
    let mut layer = trained_layer(BatchNormConfig::default());
    let before = state(&layer);
    let ok = [1.0, 2.0, 3.0];
    for (gamma, beta, bad, len) in [
        (&[1.0, 2.0][..], &ok[..], "gamma", 2),
        (&ok[..], &[1.0, 2.0, 3.0, 4.0][..], "beta", 4),
        (&[][..], &[][..], "gamma", 0),
    ] {
        let error = refused("set_parameters", layer.set_parameters(gamma, beta));
        assert!(
            matches!(error, BatchNormError::ParameterLength { what, expected: 3, actual }
                if what == bad && actual == len),
            "{error:?}"
        );
        assert_mentions(&error, &[bad, &format!("{len} values"), "3 channels"]);
        assert_eq!(state(&layer), before);
    }
    for (mean, var, bad, len) in [
        (&[1.0][..], &ok[..], "running_mean", 1),
        (&ok[..], &[1.0, 2.0][..], "running_var", 2),
    ] {
        let error = refused(
            "set_running_statistics",
            layer.set_running_statistics(mean, var),
        );
        assert!(
            matches!(error, BatchNormError::ParameterLength { what, expected: 3, actual }
                if what == bad && actual == len),
            "{error:?}"
        );
        assert_mentions(&error, &[bad, &format!("{len} values"), "3 channels"]);
        assert_eq!(state(&layer), before);
    }
    // ChannelPair itself: two vectors of different lengths.
    let ctx = context();
    let error = refused("pair", ChannelPair::new(&ctx, &[1.0, 2.0], &[1.0]));
    assert!(matches!(
        error,
        BatchNormError::ParameterLength {
            expected: 2,
            actual: 1,
            ..
        }
    ));
}

/// `ChannelPair::write` documents "refused (and nothing written) unless each has `channels`
/// values", but it writes the first half before it checks the second.
#[test]
fn channel_pair_write_of_the_wrong_length_writes_nothing() {
    let ctx = context();
    let pair = ChannelPair::new(&ctx, &[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).unwrap();
    let before = pair_bits(&pair);
    let error = refused("second too short", pair.write(&[7.0, 8.0, 9.0], &[1.0]));
    assert!(matches!(
        error,
        BatchNormError::ParameterLength {
            expected: 3,
            actual: 1,
            ..
        }
    ));
    assert_eq!(
        pair_bits(&pair),
        before,
        "ChannelPair::write wrote the first vector although it refused the second"
    );
    let error = refused("first too long", pair.write(&[7.0; 4], &[1.0; 3]));
    assert!(matches!(error, BatchNormError::ParameterLength { .. }));
    assert_eq!(pair_bits(&pair), before);
}

#[test]
fn what_a_layer_does_not_have_is_unsupported() {
    let ctx = context();
    let plain = trained_layer(BatchNormConfig {
        affine: false,
        ..BatchNormConfig::default()
    });
    let error = refused("parameters", plain.parameters());
    assert!(matches!(error, BatchNormError::Unsupported(_)));
    assert_mentions(&error, &["affine"]);
    let mut plain = plain;
    let before = state(&plain);
    let error = refused("set_parameters", plain.set_parameters(&[1.0; 3], &[0.0; 3]));
    assert!(matches!(error, BatchNormError::Unsupported(_)));
    assert!(plain.affine().is_none());
    assert_eq!(state(&plain), before);

    let mut untracked = trained_layer(BatchNormConfig {
        track_running_stats: false,
        ..BatchNormConfig::default()
    });
    let error = refused("running_statistics", untracked.running_statistics());
    assert!(matches!(error, BatchNormError::Unsupported(_)));
    assert_mentions(&error, &["running"]);
    let before = state(&untracked);
    let error = refused(
        "set_running_statistics",
        untracked.set_running_statistics(&[0.0; 3], &[1.0; 3]),
    );
    assert!(matches!(error, BatchNormError::Unsupported(_)));
    assert!(untracked.running_stats().is_none());
    assert_eq!(state(&untracked), before);

    // Functional inference needs running stats to normalize with.
    let x = tensor(&[4, 3, 5], FIRST);
    let y = sentinel(&[4, 3, 5], FIRST);
    let affine = ChannelPair::new(&ctx, &[1.0; 3], &[0.0; 3]).unwrap();
    for affine in [None, Some(&affine)] {
        let args = ForwardArgs {
            affine,
            running: None,
            training: false,
            momentum: 0.1,
            eps: 1e-5,
            epilogue: wgpu_batchnorm::Epilogue::None,
        };
        let error = refused("inference", functional::batch_norm_into(&x, &y, &args));
        assert!(matches!(error, BatchNormError::Unsupported(_)), "{error:?}");
        assert_mentions(&error, &["running stats"]);
        assert_untouched("y", &y);
    }
}

#[test]
fn no_matching_adapter_is_a_typed_error_that_says_how_to_install_drivers() {
    let options = AdapterOptions {
        backends: wgpu::Backends::all(),
        name_contains: Some("no-such-adapter-xyz".into()),
    };
    let error = refused("no adapter", GpuContext::with_options(&options));
    assert!(
        matches!(&error, BatchNormError::NoAdapter { filter } if filter.contains("no-such-adapter-xyz")),
        "{error:?}"
    );
    assert_mentions(
        &error,
        &[
            "no-such-adapter-xyz",
            "Install",
            "Mesa",
            "mesa-vulkan-drivers",
            "WGPU_BACKEND",
            "WGPU_ADAPTER_NAME",
        ],
    );
}

#[test]
fn tensors_of_two_contexts_cannot_be_mixed() {
    let ctx = context();
    let other_ctx = GpuContext::new().expect("a second context on the same adapter");
    assert!(!ctx.same_as(&other_ctx));
    let shape = [2, 3, 5];
    let len = 30;
    let mine = tensor(&shape, FIRST);
    let theirs = Tensor::from_slice(&other_ctx, &ramp(len), &shape, FIRST).unwrap();
    let theirs_out = Tensor::zeros(&other_ctx, &shape, FIRST).unwrap();
    theirs_out.fill(SENTINEL).unwrap();

    let mut layer = trained_layer(BatchNormConfig::default());
    let saved = layer.forward(&mine).unwrap().saved;
    let before = state(&layer);
    let is_mismatch = |error: BatchNormError| {
        assert!(
            matches!(error, BatchNormError::ContextMismatch),
            "{error:?}"
        );
        assert_mentions(&error, &["same GpuContext"]);
    };
    // The layer on one context, the input on the other.
    is_mismatch(refused("x", layer.forward(&theirs)));
    // The output on the other context.
    let y = sentinel(&shape, FIRST);
    is_mismatch(refused("y", layer.forward_into(&mine, &theirs_out)));
    assert_untouched("y", &theirs_out);
    // Backward: dy or dx on the other context, or the saved stats of the other context.
    let dx = sentinel(&shape, FIRST);
    is_mismatch(refused(
        "dy",
        layer.backward_into(&mine, &theirs, &dx, &saved),
    ));
    assert_untouched("dx", &dx);
    is_mismatch(refused(
        "dx",
        layer.backward_into(&mine, &mine, &theirs_out, &saved),
    ));
    assert_untouched("dx", &theirs_out);
    let mut their_layer = BatchNorm::new(&other_ctx, 3).unwrap();
    let their_saved = their_layer.forward(&theirs).unwrap().saved;
    is_mismatch(refused(
        "saved",
        layer.backward_into(&mine, &mine, &dx, &their_saved),
    ));
    assert_untouched("dx", &dx);
    assert_eq!(state(&layer), before);

    // Functional: parameters or running stats on the other context.
    let their_pair = ChannelPair::new(&other_ctx, &[1.0; 3], &[0.0; 3]).unwrap();
    let my_running = ChannelPair::new(&ctx, &[0.5; 3], &[2.0; 3]).unwrap();
    let running_bits = pair_bits(&my_running);
    for (affine, running) in [
        (Some(&their_pair), Some(&my_running)),
        (None, Some(&their_pair)),
    ] {
        let args = ForwardArgs {
            affine,
            running,
            training: true,
            momentum: 0.1,
            eps: 1e-5,
            epilogue: wgpu_batchnorm::Epilogue::None,
        };
        is_mismatch(refused(
            "functional",
            functional::batch_norm_into(&mine, &y, &args),
        ));
        assert_untouched("y", &y);
    }
    assert_eq!(pair_bits(&my_running), running_bits);
    is_mismatch(refused(
        "functional backward",
        functional::batch_norm_backward_into(
            &mine,
            &mine,
            &dx,
            &saved,
            Some(&their_pair),
            wgpu_batchnorm::EpilogueGrad::None,
        ),
    ));
    assert_untouched("dx", &dx);
}

/// N = 0 (and other empty extents): an empty output and an empty dx; the parameter gradients
/// are sums over nothing, so 0. The running stats and parameters stay as they are; in
/// training the batch still counts in `num_batches_tracked`, as PyTorch's module counts every
/// training call (inference does not count).
#[test]
fn empty_batch_gives_empty_outputs_and_counts_only_in_training() {
    let cases: [(&[usize], Layout); 5] = [
        (&[0, 3, 4, 4], FIRST),
        (&[0, 4, 4, 3], LAST),
        (&[0, 3], FIRST),
        (&[2, 3, 0, 4], FIRST),
        (&[2, 0, 4, 3], LAST),
    ];
    for (shape, layout) in cases {
        for momentum in [Some(0.1), None] {
            let mut layer = trained_layer(BatchNormConfig {
                momentum,
                ..BatchNormConfig::default()
            });
            let x =
                Tensor::from_slice::<f32>(&context(), &[], shape, layout).expect("empty upload");
            assert!(x.is_empty());
            for training in [true, false] {
                layer.set_training(training);
                let before = state(&layer);
                let out = layer.forward(&x).expect("empty forward");
                assert_eq!(out.y.shape(), shape);
                assert_eq!(out.y.layout(), layout);
                assert!(out.y.to_vec().unwrap().is_empty());
                assert_eq!(out.saved.shape(), shape);
                let dy = Tensor::zeros(&context(), shape, layout).unwrap();
                let grads = layer.backward(&x, &dy, &out.saved).expect("empty backward");
                assert_eq!(grads.dx.shape(), shape);
                assert!(grads.dx.to_vec().unwrap().is_empty());
                let (dgamma, dbeta) = grads.params.expect("affine").read().unwrap();
                assert_eq!((dgamma, dbeta), (vec![0.0; 3], vec![0.0; 3]));
                let want = LayerState {
                    num_batches_tracked: before.num_batches_tracked + u64::from(training),
                    ..before
                };
                assert_eq!(
                    state(&layer),
                    want,
                    "{shape:?} {layout:?} {momentum:?} training {training}"
                );
            }
        }
    }
    // Without running stats nothing counts.
    let mut untracked = trained_layer(BatchNormConfig {
        track_running_stats: false,
        ..BatchNormConfig::default()
    });
    let empty = Tensor::from_slice::<f32>(&context(), &[], &[0, 3], FIRST).unwrap();
    untracked.forward(&empty).expect("empty forward");
    assert_eq!(untracked.num_batches_tracked(), 0);
    // Functional, with running stats that must stay as they are.
    let ctx = context();
    let running = ChannelPair::new(&ctx, &[0.5; 3], &[2.0; 3]).unwrap();
    let running_bits = pair_bits(&running);
    let x = Tensor::zeros(&ctx, &[0, 3, 4, 4], FIRST).unwrap();
    for training in [true, false] {
        let args = ForwardArgs {
            affine: None,
            running: Some(&running),
            training,
            momentum: 0.5,
            eps: 1e-5,
            epilogue: wgpu_batchnorm::Epilogue::None,
        };
        let (y, _) = functional::batch_norm(&x, &args).expect("empty functional");
        assert!(y.is_empty());
    }
    assert_eq!(pair_bits(&running), running_bits);
    // A layer with no channels at all, on [2, 0, 5].
    let mut none = BatchNorm::new(&ctx, 0).expect("zero channels");
    let x = Tensor::zeros(&ctx, &[2, 0, 5], FIRST).unwrap();
    let out = none.forward(&x).expect("zero channels forward");
    assert!(out.y.is_empty());
    assert_eq!(none.running_statistics().unwrap(), (vec![], vec![]));
}

/// PyTorch's module with momentum None after [[1], [3]], an empty [0, 1] and [[5], [7]]: the
/// empty batch counts, so the third batch weighs 1/3, not 1/2: running mean
/// 2/3 * 2 + 1/3 * 6 = 10/3 (not 4), running variance 2 (each batch's unbiased variance is 2).
#[test]
fn an_empty_training_batch_weighs_later_batches_as_pytorch_does() {
    let ctx = context();
    let config = BatchNormConfig {
        momentum: None,
        affine: false,
        ..BatchNormConfig::default()
    };
    let mut layer = BatchNorm::with_config(&ctx, 1, config).unwrap();
    for batch in [&[1.0f32, 3.0][..], &[], &[5.0, 7.0]] {
        let x = Tensor::from_slice(&ctx, batch, &[batch.len(), 1], FIRST).unwrap();
        layer.forward(&x).expect("training step");
    }
    assert_eq!(layer.num_batches_tracked(), 3);
    let (mean, var) = layer.running_statistics().unwrap();
    // A handful of float32 roundings of values below 4.
    let u = 2f64.powi(-24);
    assert_close("running_mean", &mean, &[10.0 / 3.0], 16.0 * u, 0.0);
    assert_close("running_var", &var, &[2.0], 16.0 * u, 0.0);
    // A refused call after it (a mapped buffer in the submission) does not count.
    let mapped = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("a caller's buffer, still mapped"),
        size: 8,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: true,
    });
    let x = Tensor::from_buffer(&ctx, mapped, &[2, 1], FIRST).unwrap();
    refused("mapped input", layer.forward(&x));
    assert_eq!(layer.num_batches_tracked(), 3);
}
