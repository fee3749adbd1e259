//! The CPU reference against PyTorch's own answers (`tests/fixtures/`): training steps with
//! running statistics, inference, and the backward pass, for every fixture case.
//!
//! Tolerances. PyTorch computed in float64 from the same float32 inputs, so:
//! - Statistics and gradients of gamma and beta are float64 on both sides and differ only by
//!   summation order: a few ulp of f64 relative to the summed magnitudes. We allow 1e-10
//!   relative (plus 1e-12 absolute for sums that cancel to near zero), thousands of times the
//!   f64 error and millions of times tighter than any semantic slip (biased vs unbiased variance
//!   alone is a relative change of 1 / (M - 1) > 1e-3).
//! - y, y_eval and dx were rounded to float32 after an f64 computation. Round-to-nearest moves a
//!   value by at most half an ulp, at most 2^-24 of its magnitude, so the f64 reference must lie
//!   within 2^-24 x |fixture| of it, plus 1e-10 absolute for the f64 differences (the offset case
//!   subtracts a mean of 1e4 from values of 1e4, which leaves ~1e-12 of f64 error) and values
//!   near zero. 1e-10 is far below one float32 ulp of any output above 1e-2.
//!
//! The case that must be refused (one value per channel) concerns the GPU library's checks; it is
//! skipped here (the reference panics on it by design: see `update_running_statistics`).

#[path = "common/fixtures.rs"]
mod fixtures;

use fixtures::{load_all, memory_shape, FixtureCase, FixtureData};
use ndarray::ArrayD;
use wgpu_batchnorm::layout::{ChannelView, Layout};
use wgpu_batchnorm::reference::{
    backward_batch_statistics, batch_statistics, inference_forward, training_forward,
    update_running_statistics, BatchStatistics,
};

/// Relative tolerance for float64 statistics and sums (see the module docs).
const F64_RELATIVE: f64 = 1e-10;
/// Absolute tolerance for float64 sums that cancel to near zero.
const F64_ABSOLUTE: f64 = 1e-12;
/// Half an ulp of float32, relative: the rounding of the fixtures' float32 outputs.
const F32_HALF_ULP: f64 = 1.0 / (1u64 << 24) as f64;
/// Absolute slack on float32-rounded outputs, for f64 differences and values near zero.
const F32_ROUNDED_ABSOLUTE: f64 = 1e-10;

/// The cases that carry data (all but the refused one), with their data.
fn cases_with_data() -> Vec<(FixtureCase, FixtureData)> {
    let cases: Vec<_> = load_all()
        .into_iter()
        .filter_map(|mut case| case.data.take().map(|data| (case, data)))
        .collect();
    assert_eq!(cases.len(), 7, "the manifest lists seven cases with data");
    cases
}

fn assert_f64_close(actual: &[f64], expected: &[f64], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    for (c, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let tolerance = F64_RELATIVE * e.abs() + F64_ABSOLUTE;
        assert!(
            (a - e).abs() <= tolerance,
            "{what}[{c}]: reference {a} vs PyTorch {e} (difference {:e}, tolerance {tolerance:e})",
            (a - e).abs()
        );
    }
}

/// Checks an f64 tensor against PyTorch's float32-rounded one, element by element.
fn assert_within_f32_rounding(actual: &ArrayD<f64>, expected: &ArrayD<f32>, what: &str) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shapes");
    assert!(!expected.is_empty(), "{what}: no data");
    for (index, (&a, &e)) in actual.iter().zip(expected.iter()).enumerate() {
        let e = f64::from(e);
        let tolerance = F32_HALF_ULP * e.abs() + F32_ROUNDED_ABSOLUTE;
        assert!(
            (a - e).abs() <= tolerance,
            "{what}[{index}]: reference {a} vs PyTorch {e} (difference {:e}, tolerance {tolerance:e})",
            (a - e).abs()
        );
    }
}

/// gamma and beta as the library gets them: `None` when the case is not affine.
fn parameters<'a>(
    case: &FixtureCase,
    data: &'a FixtureData,
) -> (Option<&'a [f32]>, Option<&'a [f32]>) {
    if case.affine {
        (Some(&data.gamma[..]), Some(&data.beta[..]))
    } else {
        (None, None)
    }
}

/// Runs every training step of a case through the reference, checking each against PyTorch;
/// returns the running statistics after the last step and the last step's batch statistics.
fn run_training_steps(
    case: &FixtureCase,
    data: &FixtureData,
) -> (Vec<f64>, Vec<f64>, BatchStatistics) {
    let (gamma, beta) = parameters(case, data);
    let channels = case.shape[1];
    let mut running_mean = vec![0.0; channels];
    let mut running_var = vec![1.0; channels];
    let mut last_stats = None;
    for (k, step) in data.steps.iter().enumerate() {
        let what = |name: &str| format!("{} step {k} {name}", case.name);
        let (y, stats) = training_forward(step.x.view(), case.layout, gamma, beta, case.eps);
        assert_f64_close(&stats.mean, &step.mean, &what("mean"));
        assert_f64_close(&stats.invstd, &step.invstd, &what("invstd"));
        assert_within_f32_rounding(&y, &step.y, &what("y"));

        // PyTorch's module passes momentum = 1 / num_batches_tracked when momentum is None.
        let momentum = case.momentum.unwrap_or(1.0 / (k + 1) as f64);
        let values_per_channel = ChannelView::new(step.x.shape(), case.layout)
            .expect("fixture shapes have rank >= 2")
            .values_per_channel();
        update_running_statistics(
            &mut running_mean,
            &mut running_var,
            &stats,
            values_per_channel,
            momentum,
        );
        assert_f64_close(&running_mean, &step.running_mean, &what("running_mean"));
        assert_f64_close(&running_var, &step.running_var, &what("running_var"));
        last_stats = Some(stats);
    }
    let last_stats = last_stats.expect("every case has at least one step");
    (running_mean, running_var, last_stats)
}

#[test]
fn manifest_has_every_case_in_its_memory_layout() {
    let cases = load_all();
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "public_nchw",
            "public_nhwc",
            "public_nc",
            "public_cumulative",
            "public_no_affine",
            "public_eps_momentum",
            "public_offset",
            "one_value_per_channel",
        ]
    );

    let nhwc = &cases[1];
    assert_eq!(nhwc.layout, Layout::ChannelsLast);
    assert_eq!(nhwc.shape, [3, 4, 5, 6]);
    assert_eq!(memory_shape(nhwc), [3, 5, 6, 4]);
    let data = nhwc.data.as_ref().expect("public_nhwc has data");
    assert_eq!(data.steps.len(), 2);
    for tensor in [
        &data.dy,
        &data.y_eval,
        &data.dx,
        &data.steps[0].x,
        &data.steps[1].y,
    ] {
        assert_eq!(tensor.shape(), [3, 5, 6, 4]);
        assert!(tensor.is_standard_layout());
    }

    let cumulative = &cases[3];
    assert_eq!(cumulative.momentum, None);
    assert_eq!(cumulative.steps, 3);
    assert_eq!(memory_shape(cumulative), cumulative.shape);

    let no_affine = &cases[4];
    assert!(!no_affine.affine);
    let data = no_affine.data.as_ref().expect("public_no_affine has data");
    assert!(data.dgamma.is_none() && data.dbeta.is_none());

    let refused = &cases[7];
    assert!(refused.data.is_none());
    assert_eq!(refused.shape, [1, 4, 1, 1]);
    let message = refused.expect_error.as_deref().expect("an error message");
    assert!(message.starts_with("Expected more than 1 value per channel when training"));
}

#[test]
fn public_nchw_constant_channel_gives_beta() {
    // PyTorch's own closed form: channel 0 of the first batch is the constant 5.
    let (case, data) = cases_with_data()
        .into_iter()
        .find(|(case, _)| case.name == "public_nchw")
        .expect("public_nchw is in the manifest");
    assert_eq!(case.layout, Layout::ChannelsFirst);
    let step = &data.steps[0];
    assert_eq!(step.mean[0], 5.0);
    for (&x, &y) in step
        .x
        .index_axis(ndarray::Axis(1), 0)
        .iter()
        .zip(step.y.index_axis(ndarray::Axis(1), 0))
    {
        assert_eq!(x, 5.0);
        assert_eq!(y, data.beta[0]);
    }
    let stats = batch_statistics(step.x.view(), case.layout, case.eps);
    assert_eq!(stats.mean[0], 5.0);
    assert_eq!(stats.var[0], 0.0);
}

#[test]
fn reference_matches_pytorch_training_steps_and_running_stats() {
    for (case, data) in cases_with_data() {
        run_training_steps(&case, &data);
    }
}

#[test]
fn reference_matches_pytorch_inference() {
    for (case, data) in cases_with_data() {
        let (gamma, beta) = parameters(&case, &data);
        let (running_mean, running_var, _) = run_training_steps(&case, &data);
        let y_eval = inference_forward(
            data.steps[0].x.view(),
            case.layout,
            &running_mean,
            &running_var,
            gamma,
            beta,
            case.eps,
        );
        assert_within_f32_rounding(&y_eval, &data.y_eval, &format!("{} y_eval", case.name));
    }
}

#[test]
fn reference_matches_pytorch_backward() {
    for (case, data) in cases_with_data() {
        let (gamma, _) = parameters(&case, &data);
        let last = data.steps.last().expect("every case has a step");
        // The statistics the forward of the last step saved (checked against PyTorch above).
        let stats = batch_statistics(last.x.view(), case.layout, case.eps);
        let grads = backward_batch_statistics(
            last.x.view(),
            data.dy.view(),
            case.layout,
            &stats.mean,
            &stats.invstd,
            gamma,
        );
        assert_within_f32_rounding(&grads.dx, &data.dx, &format!("{} dx", case.name));
        match (&data.dgamma, &data.dbeta) {
            (Some(dgamma), Some(dbeta)) => {
                assert!(case.affine);
                assert_f64_close(&grads.dgamma, dgamma, &format!("{} dgamma", case.name));
                assert_f64_close(&grads.dbeta, dbeta, &format!("{} dbeta", case.name));
            }
            (None, None) => assert!(!case.affine, "{}: affine case without dgamma", case.name),
            _ => panic!("{}: dgamma and dbeta must come together", case.name),
        }
    }
}
