//! The GPU against PyTorch's own answers (`tests/fixtures/`, PyTorch 2.11 and 2.15 in float64
//! on float32 inputs): every training step (output, saved mean and invstd, running stats),
//! inference (from the running stats, or from the batch statistics without them), the backward
//! of the last step and of inference, the module's count of an empty batch, and every call
//! PyTorch refuses. Each test asserts that it checked every case of its kind in the manifest.
//!
//! Two comparisons per result, each per channel and per step:
//! - against PyTorch directly, with the design's tolerance: outputs within
//!   |gamma_c| (1e-5 + 8 |mean_c| invstd_c u) (the float32 mean is off by about |mean| u, which
//!   moves x - mean by that much) plus an ulp of the output; dx the same relative to the
//!   magnitude of its terms; dgamma and dbeta within 1e-5 of their summed magnitudes plus the
//!   mean's error on each term;
//! - through the checks of `common::checks`: the GPU's saved statistics against PyTorch's, and
//!   every output against the f64 formula from the GPU's own statistics (a few roundings).

mod common;
#[path = "common/fixtures.rs"]
mod fixtures;

use common::checks::{
    check_inference_statistics, check_input_gradient, check_output, check_parameter_gradients,
    check_running_statistics, compare_batch_statistics, sum_depth, BackwardInputs, Channels,
    ForwardInputs, Saved, Through, UNIT_ROUNDOFF,
};
use common::scenario::{read_saved, require};
use common::{context, filled_on, plan_of};
use fixtures::{load_all, memory_shape, names, CaseKind, FixtureCase, FunctionalCase};
use ndarray::ArrayD;
use wgpu_batchnorm::functional::{self, ForwardArgs};
use wgpu_batchnorm::plan::Operation;
use wgpu_batchnorm::reference::BatchStatistics;
use wgpu_batchnorm::{
    BatchNorm, BatchNormConfig, BatchNormError, ChannelPair, ChannelView, Layout, SavedStats,
    Tensor,
};

const U: f64 = UNIT_ROUNDOFF;

/// dgamma and dbeta as downloaded, when the layer is affine.
type ParameterGradients = Option<(Vec<f32>, Vec<f32>)>;

fn upload(layout: Layout, array: &ArrayD<f32>) -> Tensor {
    Tensor::from_array(&context(), array.view(), layout).expect("upload")
}

fn functional_cases() -> Vec<(String, Vec<usize>, FunctionalCase)> {
    load_all()
        .into_iter()
        .filter_map(|case| match case.kind {
            CaseKind::Functional(data) => Some((case.name, case.shape, *data)),
            _ => None,
        })
        .collect()
}

fn is_functional(kind: &CaseKind) -> bool {
    matches!(kind, CaseKind::Functional(_))
}

/// Asserts that a test checked exactly the manifest's cases of a kind.
fn assert_checked_all(checked: &[String], kind: fn(&CaseKind) -> bool) {
    let want = names(&load_all(), kind);
    assert!(!want.is_empty());
    assert_eq!(checked, want, "cases checked against the manifest");
}

fn new_layer(case: &FunctionalCase) -> BatchNorm {
    let config = BatchNormConfig {
        eps: case.eps,
        momentum: case.momentum,
        affine: case.affine,
        track_running_stats: case.track_running_stats,
    };
    let mut layer = BatchNorm::with_config(&context(), case.gamma.len(), config).expect("layer");
    if case.affine {
        layer
            .set_parameters(&case.gamma, &case.beta)
            .expect("gamma and beta");
    }
    layer
}

fn gamma(case: &FunctionalCase, c: usize) -> f64 {
    if case.affine {
        f64::from(case.gamma[c])
    } else {
        1.0
    }
}

/// PyTorch's batch statistics as the checks take them (the variance from invstd).
fn statistics(mean: &[f64], invstd: &[f64], eps: f64) -> BatchStatistics {
    BatchStatistics {
        mean: mean.to_vec(),
        var: invstd.iter().map(|s| 1.0 / (s * s) - eps).collect(),
        invstd: invstd.to_vec(),
    }
}

/// y against PyTorch's, channel by channel: |gamma_c| (1e-5 + 8 |mean_c| invstd_c u) plus an
/// ulp of the output, with `mean_c` and `invstd_c` those y was normalized with.
fn assert_output_matches(
    what: &str,
    case: &FunctionalCase,
    stats: (&[f64], &[f64]),
    got: &[f32],
    want: &ArrayD<f32>,
) {
    let view = ChannelView::new(want.shape(), case.layout).unwrap();
    for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
        let c = view.channel_of(i);
        let ratio = stats.0[c].abs() * stats.1[c];
        let w = f64::from(w);
        let tol = gamma(case, c).abs() * (1e-5 + 8.0 * ratio * U) + 2.0 * U * w.abs();
        assert!(
            (f64::from(g) - w).abs() <= tol,
            "{what}: y[{i}] (channel {c}) = {g}, PyTorch {w} (tolerance {tol:e})"
        );
    }
}

/// A backward's dx, dgamma and dbeta against PyTorch's, channel by channel (see the module
/// docs); `stats` are the (mean, invstd) it differentiated through, `batch` whether through
/// batch statistics.
fn assert_gradients_match(
    what: &str,
    case: &FunctionalCase,
    x: &ArrayD<f32>,
    stats: (&[f64], &[f64]),
    batch: bool,
    got: (&[f32], ParameterGradients),
    want: &fixtures::Backward,
) {
    let view = ChannelView::new(x.shape(), case.layout).unwrap();
    let channels = view.channels;
    let m = view.values_per_channel() as f64;
    let x_hat = |c: usize, x: f32| (f64::from(x) - stats.0[c]) * stats.1[c];
    let (mut sum_dy, mut sum_dy_xhat) = (vec![0.0; channels], vec![0.0; channels]);
    let (mut abs_dy, mut abs_dy_xhat) = (vec![0.0; channels], vec![0.0; channels]);
    for (i, (&x, &dy)) in x.iter().zip(case.dy.iter()).enumerate() {
        let c = view.channel_of(i);
        let dy = f64::from(dy);
        sum_dy[c] += dy;
        sum_dy_xhat[c] += dy * x_hat(c, x);
        abs_dy[c] += dy.abs();
        abs_dy_xhat[c] += (dy * x_hat(c, x)).abs();
    }
    let rel = |c: usize| 1e-5 + 8.0 * stats.0[c].abs() * stats.1[c] * U;
    for (i, ((&x, &dy), &w)) in x.iter().zip(case.dy.iter()).zip(want.dx.iter()).enumerate() {
        let c = view.channel_of(i);
        let terms = if batch {
            f64::from(dy).abs() + (sum_dy[c] / m).abs() + (x_hat(c, x) * sum_dy_xhat[c] / m).abs()
        } else {
            f64::from(dy).abs()
        };
        let w = f64::from(w);
        let tol = gamma(case, c).abs() * stats.1[c] * rel(c) * terms + 2.0 * U * w.abs();
        assert!(
            (f64::from(got.0[i]) - w).abs() <= tol,
            "{what}: dx[{i}] (channel {c}) = {}, PyTorch {w} (tolerance {tol:e})",
            got.0[i]
        );
    }
    match (&got.1, &want.parameters) {
        (Some((dgamma, dbeta)), Some((want_dgamma, want_dbeta))) => {
            for c in 0..channels {
                let tol = rel(c) * abs_dy_xhat[c] + rel(c) * abs_dy[c];
                assert!(
                    (f64::from(dgamma[c]) - want_dgamma[c]).abs() <= tol,
                    "{what}: dgamma[{c}] = {}, PyTorch {} (tolerance {tol:e})",
                    dgamma[c],
                    want_dgamma[c]
                );
                let tol = 1e-5 * abs_dy[c];
                assert!(
                    (f64::from(dbeta[c]) - want_dbeta[c]).abs() <= tol,
                    "{what}: dbeta[{c}] = {}, PyTorch {} (tolerance {tol:e})",
                    dbeta[c],
                    want_dbeta[c]
                );
            }
        }
        (None, None) => assert!(!case.affine),
        _ => panic!("{what}: affine gradients on one side only"),
    }
}

#[test]
fn training_steps_and_running_stats_match_pytorch() {
    let mut checked = Vec::new();
    for (name, _, case) in functional_cases() {
        let mut layer = new_layer(&case);
        let (gamma, beta) = case
            .affine
            .then(|| (&case.gamma[..], &case.beta[..]))
            .unzip();
        for (k, step) in case.steps.iter().enumerate() {
            let what = format!("{name} step {k}");
            let x = upload(case.layout, &step.x);
            let y = filled_on(&context(), step.x.shape(), case.layout, f32::NAN);
            let saved = read_saved(&layer.forward_into(&x, &y).expect("forward"));
            let got_y = y.to_vec().unwrap();
            assert_output_matches(&what, &case, (&step.mean, &step.invstd), &got_y, &step.y);
            let stats = statistics(&step.mean, &step.invstd, case.eps);
            require(compare_batch_statistics(
                &what,
                &stats,
                &saved,
                Channels::All,
            ));
            let inputs = ForwardInputs {
                x: step.x.view(),
                layout: case.layout,
                gamma,
                beta,
                eps: case.eps,
            };
            require(check_output(&what, &inputs, &saved, &got_y, Channels::All));
            match &step.running {
                Some((want_mean, want_var)) => {
                    let (got_mean, got_var) = layer.running_statistics().unwrap();
                    require(check_running_statistics(
                        &what,
                        want_mean,
                        want_var,
                        &stats,
                        &got_mean,
                        &got_var,
                        Channels::All,
                    ));
                    assert_eq!(layer.num_batches_tracked(), k as u64 + 1, "{what}");
                }
                None => {
                    assert!(layer.running_statistics().is_err(), "{what}");
                    assert_eq!(layer.num_batches_tracked(), 0, "{what}");
                }
            }
        }
        checked.push(name);
    }
    assert_checked_all(&checked, is_functional);
}

/// Runs a case's training steps, then inference on the first step's x; returns the layer, the
/// inference's saved statistics and its y.
fn train_then_infer(case: &FunctionalCase) -> (BatchNorm, SavedStats, Vec<f32>) {
    let mut layer = new_layer(case);
    for step in &case.steps {
        layer
            .forward(&upload(case.layout, &step.x))
            .expect("training step");
    }
    layer.set_training(false);
    let x = upload(case.layout, &case.steps[0].x);
    let y = filled_on(&context(), case.steps[0].x.shape(), case.layout, f32::NAN);
    let saved = layer.forward_into(&x, &y).expect("inference");
    (layer, saved, y.to_vec().unwrap())
}

/// The (mean, invstd) inference normalizes with: PyTorch's running stats after the last step,
/// or, without them, the first step's batch statistics (PyTorch: `training=True`).
fn inference_statistics(case: &FunctionalCase) -> (Vec<f64>, Vec<f64>) {
    let last = case.steps.last().expect("a step");
    match &last.running {
        Some((mean, var)) => (
            mean.clone(),
            var.iter().map(|v| 1.0 / (v + case.eps).sqrt()).collect(),
        ),
        None => (case.steps[0].mean.clone(), case.steps[0].invstd.clone()),
    }
}

#[test]
fn inference_matches_pytorch() {
    let mut checked = Vec::new();
    for (name, _, case) in functional_cases() {
        let what = format!("{name}: inference");
        let (mut layer, saved, got_y) = train_then_infer(&case);
        let saved = read_saved(&saved);
        let (mean, invstd) = inference_statistics(&case);
        assert_output_matches(&what, &case, (&mean, &invstd), &got_y, &case.y_eval);
        let (gamma, beta) = case
            .affine
            .then(|| (&case.gamma[..], &case.beta[..]))
            .unzip();
        let inputs = ForwardInputs {
            x: case.steps[0].x.view(),
            layout: case.layout,
            gamma,
            beta,
            eps: case.eps,
        };
        require(check_output(&what, &inputs, &saved, &got_y, Channels::All));
        if case.track_running_stats {
            let (running_mean, running_var) = layer.running_statistics().unwrap();
            require(check_inference_statistics(
                &what,
                &running_mean,
                &running_var,
                case.eps,
                &saved,
            ));
            // Inference leaves the running stats and the batch count alone.
            layer
                .forward(&upload(case.layout, &case.steps[0].x))
                .expect("inference");
            assert_eq!(
                layer.running_statistics().unwrap(),
                (running_mean, running_var)
            );
            assert_eq!(layer.num_batches_tracked(), case.steps.len() as u64);
        } else {
            let stats = statistics(&mean, &invstd, case.eps);
            require(compare_batch_statistics(
                &what,
                &stats,
                &saved,
                Channels::All,
            ));
        }
        checked.push(name);
    }
    assert_checked_all(&checked, is_functional);
}

#[test]
fn gradients_match_pytorch() {
    let mut checked = Vec::new();
    for (name, shape, case) in functional_cases() {
        let memory = memory_shape(&shape, case.layout);
        // The backward of the last training step.
        let what = format!("{name}: backward");
        let mut layer = new_layer(&case);
        for step in &case.steps[..case.steps.len() - 1] {
            layer.forward(&upload(case.layout, &step.x)).unwrap();
        }
        let last = case.steps.last().expect("a step");
        let x = upload(case.layout, &last.x);
        let saved_stats = layer.forward(&x).expect("forward").saved;
        let dy = upload(case.layout, &case.dy);
        let dx = filled_on(&context(), &memory, case.layout, f32::NAN);
        let params = layer.backward_into(&x, &dy, &dx, &saved_stats).unwrap();
        let got_dx = dx.to_vec().unwrap();
        let got_params = params.map(|p| p.read().unwrap());
        assert_gradients_match(
            &what,
            &case,
            &last.x,
            (&last.mean, &last.invstd),
            true,
            (&got_dx, got_params.clone()),
            &case.backward,
        );
        let saved = read_saved(&saved_stats);
        check_through_own_statistics(
            &what,
            &case,
            &last.x,
            &saved,
            Through::Batch,
            &got_dx,
            got_params,
        );

        // The backward of inference, the running statistics being constants.
        if let Some(want) = &case.eval_backward {
            let what = format!("{name}: inference backward");
            let (layer, saved_stats, _) = train_then_infer(&case);
            let x = upload(case.layout, &case.steps[0].x);
            let dx = filled_on(&context(), &memory, case.layout, f32::NAN);
            let params = layer.backward_into(&x, &dy, &dx, &saved_stats).unwrap();
            let got_dx = dx.to_vec().unwrap();
            let got_params = params.map(|p| p.read().unwrap());
            let saved = read_saved(&saved_stats);
            let (mean, invstd) = inference_statistics(&case);
            assert_gradients_match(
                &what,
                &case,
                &case.steps[0].x,
                (&mean, &invstd),
                false,
                (&got_dx, got_params.clone()),
                want,
            );
            check_through_own_statistics(
                &what,
                &case,
                &case.steps[0].x,
                &saved,
                Through::Running,
                &got_dx,
                got_params,
            );
        }
        checked.push(name);
    }
    assert_checked_all(&checked, is_functional);
    // Every case added with PyTorch 2.15 that tracks running stats has the inference backward.
    let with_eval: Vec<String> = functional_cases()
        .into_iter()
        .filter(|(_, _, case)| case.eval_backward.is_some())
        .map(|(name, _, _)| name)
        .collect();
    assert_eq!(
        with_eval,
        [
            "public_ncdhw",
            "public_ndhwc",
            "public_nlc",
            "public_momentum_0",
            "public_momentum_1"
        ]
    );
}

/// dx, dgamma and dbeta against the f64 formula from the GPU's own saved statistics.
fn check_through_own_statistics(
    what: &str,
    case: &FunctionalCase,
    x: &ArrayD<f32>,
    saved: &Saved,
    through: Through,
    dx: &[f32],
    params: ParameterGradients,
) {
    let backward = BackwardInputs {
        forward: ForwardInputs {
            x: x.view(),
            layout: case.layout,
            gamma: case.affine.then_some(&case.gamma[..]),
            beta: None,
            eps: case.eps,
        },
        dy: case.dy.view(),
        saved,
        through,
        depth: sum_depth(&plan_of(
            &context(),
            x.shape(),
            case.layout,
            Operation::Backward,
        )),
    };
    require(check_input_gradient(what, &backward, dx, Channels::All));
    if let Some((dgamma, dbeta)) = params {
        require(check_parameter_gradients(
            what,
            &backward,
            &dgamma,
            &dbeta,
            Channels::All,
        ));
    }
}

/// The module's bookkeeping: an empty training batch counts in num_batches_tracked and leaves
/// the running stats alone, so later batches weigh less with momentum None.
#[test]
fn the_module_counts_an_empty_batch_as_pytorch_does() {
    let mut checked = Vec::new();
    for case in load_all() {
        let CaseKind::Module(module) = &case.kind else {
            continue;
        };
        let config = BatchNormConfig {
            eps: module.eps,
            momentum: module.momentum,
            affine: module.affine,
            track_running_stats: true,
        };
        let mut layer = BatchNorm::with_config(&context(), case.shape[1], config).unwrap();
        for (k, step) in module.steps.iter().enumerate() {
            let what = format!("{} step {k}", case.name);
            layer
                .forward(&upload(Layout::ChannelsFirst, &step.x))
                .expect("training call");
            assert_eq!(
                layer.num_batches_tracked(),
                step.num_batches_tracked,
                "{what}"
            );
            let (mean, var) = layer.running_statistics().unwrap();
            // Two values per channel: a few float32 roundings of values below 10.
            common::assert_close(
                &format!("{what} running_mean"),
                &mean,
                &step.running_mean,
                0.0,
                8.0 * U,
            );
            common::assert_close(
                &format!("{what} running_var"),
                &var,
                &step.running_var,
                0.0,
                8.0 * U,
            );
        }
        checked.push(case.name.clone());
    }
    assert_checked_all(&checked, |kind| matches!(kind, CaseKind::Module(_)));
}

/// Every call PyTorch refuses is refused here too, with a message that starts as PyTorch's,
/// and changes nothing.
#[test]
fn what_pytorch_refuses_is_refused() {
    let mut checked = Vec::new();
    let ctx = context();
    for case in load_all() {
        let CaseKind::Refused(refusal) = &case.kind else {
            continue;
        };
        let FixtureCase { name, shape, .. } = &case;
        let channels = shape[1];
        let len: usize = shape.iter().product();
        let data: Vec<f32> = (0..len).map(|i| i as f32).collect();
        let x = Tensor::from_slice(&ctx, &data, shape, Layout::ChannelsFirst).unwrap();
        let y = filled_on(&ctx, shape, Layout::ChannelsFirst, 7.25);
        let running = ChannelPair::new(&ctx, &vec![0.5; channels], &vec![2.0; channels]).unwrap();
        let args = ForwardArgs {
            affine: None,
            running: Some(&running),
            training: refusal.training,
            momentum: 0.1,
            eps: refusal.eps,
            epilogue: wgpu_batchnorm::Epilogue::None,
        };
        let error = functional::batch_norm_into(&x, &y, &args)
            .expect_err(&format!("{name}: PyTorch refuses it"));
        match error {
            BatchNormError::TooFewValuesPerChannel { .. }
            | BatchNormError::InvalidEps(_)
            | BatchNormError::EpsNotPositiveInTraining(_) => {}
            other => panic!("{name}: {other:?}"),
        }
        // PyTorch's message up to the value it quotes.
        let prefix = refusal
            .message
            .split(", but got")
            .next()
            .unwrap()
            .split(", got")
            .next()
            .unwrap();
        let ours = error.to_string();
        assert!(
            ours.starts_with(prefix),
            "{name}: ours {ours:?}, PyTorch {:?}",
            refusal.message
        );
        assert!(
            y.to_vec().unwrap().iter().all(|&v| v == 7.25),
            "{name}: y written"
        );
        assert_eq!(
            running.read().unwrap(),
            (vec![0.5; channels], vec![2.0; channels]),
            "{name}: running stats changed"
        );
        checked.push(name.clone());
    }
    assert_checked_all(&checked, |kind| matches!(kind, CaseKind::Refused(_)));
    // eps = 0 is accepted in inference (PyTorch 2.15).
    let x = Tensor::from_slice(
        &ctx,
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        &[2, 3],
        Layout::ChannelsFirst,
    )
    .unwrap();
    let running = ChannelPair::new(&ctx, &[0.0; 3], &[1.0; 3]).unwrap();
    let args = ForwardArgs {
        affine: None,
        running: Some(&running),
        training: false,
        momentum: 0.1,
        eps: 0.0,
        epilogue: wgpu_batchnorm::Epilogue::None,
    };
    let (y, _) = functional::batch_norm(&x, &args).expect("eps = 0 in inference");
    assert_eq!(y.to_vec().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}
