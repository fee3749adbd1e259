//! The GPU against PyTorch's own answers (`tests/fixtures/`, PyTorch 2.11 in float64 on float32
//! inputs): every training step (output, saved mean and invstd, running stats), inference from
//! the running stats, the backward pass, and the shape PyTorch refuses.
//!
//! Tolerances (DESIGN.md): outputs within 1e-5 x |gamma| of float64 for unit-spread data; with an
//! offset the float32 mean itself is off by about |mean| x 2^-24, which moves outputs by a few
//! |mean| / std x 2^-24 x |gamma|; we allow 8 of those. Statistics within 1e-5 relative.
//! Gradient sums of M terms of order 1 carry float32 rounding of up to M x 2^-24 each.

mod common;
#[path = "common/fixtures.rs"]
mod fixtures;

use common::{assert_close, context, poisoned};
use fixtures::{load_all, memory_shape, FixtureCase, FixtureData};
use ndarray::ArrayD;
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, BatchNormError, Tensor};

const F32_EPS: f64 = 1.0 / (1u64 << 24) as f64;

fn upload(case: &FixtureCase, array: &ArrayD<f32>) -> Tensor {
    Tensor::from_array(&context(), array.view(), case.layout).expect("upload")
}

fn as_f64(array: &ArrayD<f32>) -> Vec<f64> {
    array.iter().map(|&v| f64::from(v)).collect()
}

/// The output tolerance of a case: 1e-5 |gamma|, plus the offset allowance.
fn output_tolerance(case: &FixtureCase, data: &FixtureData) -> f64 {
    let gamma = data
        .gamma
        .iter()
        .fold(1.0f64, |m, &g| m.max(f64::from(g).abs()));
    let offset_ratio = data.steps[0]
        .mean
        .iter()
        .zip(&data.steps[0].invstd)
        .fold(0.0f64, |m, (mean, invstd)| m.max(mean.abs() * invstd));
    let gamma = if case.affine { gamma } else { 1.0 };
    gamma * (1e-5 + 8.0 * offset_ratio * F32_EPS)
}

fn new_layer(case: &FixtureCase, data: &FixtureData) -> BatchNorm {
    let config = BatchNormConfig {
        eps: case.eps,
        momentum: case.momentum,
        affine: case.affine,
        track_running_stats: true,
    };
    let channels = data.gamma.len();
    let mut layer = BatchNorm::with_config(&context(), channels, config).expect("layer");
    if case.affine {
        layer
            .set_parameters(&data.gamma, &data.beta)
            .expect("set gamma and beta");
    }
    layer
}

#[test]
fn training_steps_and_running_stats_match_pytorch() {
    for case in load_all() {
        let Some(data) = &case.data else { continue };
        let tol = output_tolerance(&case, data);
        let mut layer = new_layer(&case, data);
        for (k, step) in data.steps.iter().enumerate() {
            let what = |name: &str| format!("{} step {k}: {name}", case.name);
            let x = upload(&case, &step.x);
            let y = poisoned(&memory_shape(&case), case.layout);
            let saved = layer.forward_into(&x, &y).expect("forward");
            assert_close(&what("y"), &y.to_vec().unwrap(), &as_f64(&step.y), tol, 0.0);
            let (mean, invstd) = saved.read().unwrap();
            let mean_tol = step.mean.iter().fold(0.0f64, |m, v| m.max(v.abs())) * 4.0 * F32_EPS;
            assert_close(&what("mean"), &mean, &step.mean, 1e-6 + mean_tol, 1e-6);
            assert_close(&what("invstd"), &invstd, &step.invstd, 0.0, 1e-5);
            let (running_mean, running_var) = layer.running_statistics().unwrap();
            assert_close(
                &what("running_mean"),
                &running_mean,
                &step.running_mean,
                1e-6 + mean_tol,
                1e-5,
            );
            assert_close(
                &what("running_var"),
                &running_var,
                &step.running_var,
                1e-6,
                1e-5,
            );
            assert_eq!(layer.num_batches_tracked(), k as u64 + 1);
        }
    }
}

#[test]
fn inference_from_running_stats_matches_pytorch() {
    for case in load_all() {
        let Some(data) = &case.data else { continue };
        let mut layer = new_layer(&case, data);
        for step in &data.steps {
            layer
                .forward(&upload(&case, &step.x))
                .expect("training step");
        }
        layer.set_training(false);
        let x = upload(&case, &data.steps[0].x);
        let y = poisoned(&memory_shape(&case), case.layout);
        layer.forward_into(&x, &y).expect("inference");
        let what = format!("{}: y_eval", case.name);
        let tol = output_tolerance(&case, data);
        assert_close(&what, &y.to_vec().unwrap(), &as_f64(&data.y_eval), tol, 0.0);
        // Inference leaves the running stats and the batch count alone.
        let before = layer.running_statistics().unwrap();
        layer.forward(&x).expect("inference");
        assert_eq!(layer.running_statistics().unwrap(), before);
        assert_eq!(layer.num_batches_tracked(), data.steps.len() as u64);
    }
}

#[test]
fn gradients_match_pytorch() {
    for case in load_all() {
        let Some(data) = &case.data else { continue };
        let mut layer = new_layer(&case, data);
        let last = data.steps.last().expect("at least one step");
        let x = upload(&case, &last.x);
        let saved = layer.forward(&x).expect("forward").saved;
        let dy = upload(&case, &data.dy);
        let dx = poisoned(&memory_shape(&case), case.layout);
        let params = layer.backward_into(&x, &dy, &dx, &saved).expect("backward");
        let invstd = last.invstd.iter().fold(0.0f64, |m, &v| m.max(v));
        let dx_tol = output_tolerance(&case, data) * invstd.max(1.0);
        let what = |name: &str| format!("{}: {name}", case.name);
        assert_close(
            &what("dx"),
            &dx.to_vec().unwrap(),
            &as_f64(&data.dx),
            dx_tol,
            0.0,
        );
        let values = last.x.len() / data.gamma.len();
        let sum_tol = 4.0 * values as f64 * F32_EPS * (1.0 + 8.0 * dx_tol / 1e-5);
        match (params, &data.dgamma, &data.dbeta) {
            (Some(params), Some(dgamma), Some(dbeta)) => {
                let (got_dgamma, got_dbeta) = params.read().unwrap();
                assert_close(&what("dgamma"), &got_dgamma, dgamma, sum_tol, 1e-5);
                assert_close(&what("dbeta"), &got_dbeta, dbeta, sum_tol, 1e-5);
            }
            (None, None, None) => assert!(!case.affine),
            _ => panic!("{}: affine gradients present on one side only", case.name),
        }
    }
}

#[test]
fn one_value_per_channel_is_refused_in_training_as_pytorch_does() {
    let case = load_all()
        .into_iter()
        .find(|c| c.expect_error.is_some())
        .expect("the manifest has a refused case");
    let pytorch_message = case.expect_error.as_deref().unwrap();
    let ctx = context();
    let x = Tensor::from_slice(&ctx, &[1.0, 2.0, 3.0, 4.0], &case.shape, case.layout).unwrap();
    let mut layer = BatchNorm::new(&ctx, 4).unwrap();
    let error = layer
        .forward(&x)
        .expect_err("training on one value per channel");
    assert!(matches!(
        error,
        BatchNormError::TooFewValuesPerChannel { values: 1, .. }
    ));
    let ours = error.to_string();
    let shared = "Expected more than 1 value per channel when training";
    assert!(
        pytorch_message.starts_with(shared) && ours.starts_with(shared),
        "{ours}"
    );
    // Refused: nothing changed.
    assert_eq!(layer.num_batches_tracked(), 0);
    assert_eq!(
        layer.running_statistics().unwrap(),
        (vec![0.0; 4], vec![1.0; 4])
    );
    // Inference on the same shape is allowed, as in PyTorch.
    layer.set_training(false);
    let y = layer
        .forward(&x)
        .expect("inference on one value per channel");
    let want: Vec<f64> = [1.0, 2.0, 3.0, 4.0]
        .iter()
        .map(|v| v / (1.0f64 + 1e-5).sqrt())
        .collect();
    assert_close("inference y", &y.y.to_vec().unwrap(), &want, 1e-6, 1e-6);
}
