//! The CPU reference against PyTorch's own answers (`tests/fixtures/`): training steps with
//! running statistics, inference (from running stats, or from batch statistics without them),
//! the backward of training and of inference, and the module's running stats around an empty
//! batch, for every fixture case.
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
//! The cases that must be refused (one value per channel, eps rules) concern the GPU library's
//! checks (`tests/pytorch_fixtures.rs`); they are skipped here (the reference panics on one value
//! per channel by design: see `update_running_statistics`).

#[path = "common/fixtures.rs"]
mod fixtures;

use fixtures::{load_all, memory_shape, CaseKind, FunctionalCase};
use ndarray::ArrayD;
use wgpu_batchnorm::layout::{ChannelView, Layout};
use wgpu_batchnorm::reference::{
    backward_batch_statistics, backward_running_statistics, batch_statistics, inference_forward,
    normalize, training_forward, update_running_statistics, BatchStatistics,
};

/// Relative tolerance for float64 statistics and sums (see the module docs).
const F64_RELATIVE: f64 = 1e-10;
/// Absolute tolerance for float64 sums that cancel to near zero.
const F64_ABSOLUTE: f64 = 1e-12;
/// Half an ulp of float32, relative: the rounding of the fixtures' float32 outputs.
const F32_HALF_ULP: f64 = 1.0 / (1u64 << 24) as f64;
/// Absolute slack on float32-rounded outputs, for f64 differences and values near zero.
const F32_ROUNDED_ABSOLUTE: f64 = 1e-10;

/// The functional cases, by name.
fn cases_with_data() -> Vec<(String, FunctionalCase)> {
    let cases: Vec<_> = load_all()
        .into_iter()
        .filter_map(|case| match case.kind {
            CaseKind::Functional(data) => Some((case.name, *data)),
            _ => None,
        })
        .collect();
    assert_eq!(
        cases.len(),
        13,
        "the manifest lists thirteen functional cases"
    );
    cases
}

/// f64 against f64: within F64_ABSOLUTE, or F64_RELATIVE of the larger magnitude (`approx`).
fn assert_f64_close(actual: &[f64], expected: &[f64], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    for (c, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            approx::relative_eq!(a, e, epsilon = F64_ABSOLUTE, max_relative = F64_RELATIVE),
            "{what}[{c}]: reference {a} vs PyTorch {e} (difference {:e})",
            (a - e).abs()
        );
    }
}

/// An f64 tensor against PyTorch's float32-rounded one: within F32_ROUNDED_ABSOLUTE, or half
/// an ulp of float32 relative to the larger magnitude (`approx`), element by element.
fn assert_within_f32_rounding(actual: &ArrayD<f64>, expected: &ArrayD<f32>, what: &str) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shapes");
    assert!(!expected.is_empty(), "{what}: no data");
    for (index, (a, &e)) in actual.iter().zip(expected.iter()).enumerate() {
        let e = f64::from(e);
        assert!(
            approx::relative_eq!(
                *a,
                e,
                epsilon = F32_ROUNDED_ABSOLUTE,
                max_relative = F32_HALF_ULP
            ),
            "{what}[{index}]: reference {a} vs PyTorch {e} (difference {:e})",
            (a - e).abs()
        );
    }
}

/// gamma and beta as the library gets them: `None` when the case is not affine.
fn parameters(case: &FunctionalCase) -> (Option<&[f32]>, Option<&[f32]>) {
    if case.affine {
        (Some(&case.gamma[..]), Some(&case.beta[..]))
    } else {
        (None, None)
    }
}

/// Runs every training step of a case through the reference, checking each against PyTorch;
/// returns the running statistics after the last step (`None` when not tracked).
fn run_training_steps(name: &str, case: &FunctionalCase) -> Option<(Vec<f64>, Vec<f64>)> {
    let (gamma, beta) = parameters(case);
    let channels = case.gamma.len();
    let mut running = case
        .track_running_stats
        .then(|| (vec![0.0; channels], vec![1.0; channels]));
    for (k, step) in case.steps.iter().enumerate() {
        let what = |field: &str| format!("{name} step {k} {field}");
        let (y, stats) = training_forward(step.x.view(), case.layout, gamma, beta, case.eps);
        assert_f64_close(&stats.mean, &step.mean, &what("mean"));
        assert_f64_close(&stats.invstd, &step.invstd, &what("invstd"));
        assert_within_f32_rounding(&y, &step.y, &what("y"));
        match (&mut running, &step.running) {
            (Some((mean, var)), Some((want_mean, want_var))) => {
                // PyTorch's module passes momentum = 1 / num_batches_tracked when it is None.
                let momentum = case.momentum.unwrap_or(1.0 / (k + 1) as f64);
                let values_per_channel = ChannelView::new(step.x.shape(), case.layout)
                    .expect("fixture shapes have rank >= 2")
                    .values_per_channel();
                update_running_statistics(mean, var, &stats, values_per_channel, momentum);
                assert_f64_close(mean, want_mean, &what("running_mean"));
                assert_f64_close(var, want_var, &what("running_var"));
            }
            (None, None) => {}
            _ => panic!("{}: running stats on one side only", what("running")),
        }
    }
    running
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
            "public_ncdhw",
            "public_ndhwc",
            "public_nlc",
            "public_momentum_0",
            "public_momentum_1",
            "public_untracked",
            "public_empty_batch",
            "one_value_per_channel",
            "eps_0.0_training",
            "eps_-1e-05_training",
            "eps_-1e-05_inference",
        ]
    );
    let data = |index: usize| match &cases[index].kind {
        CaseKind::Functional(data) => data.as_ref(),
        other => panic!("{}: {other:?}", cases[index].name),
    };

    let nhwc = data(1);
    assert_eq!(nhwc.layout, Layout::ChannelsLast);
    assert_eq!(cases[1].shape, [3, 4, 5, 6]);
    assert_eq!(memory_shape(&cases[1].shape, nhwc.layout), [3, 5, 6, 4]);
    assert_eq!(nhwc.steps.len(), 2);
    for tensor in [
        &nhwc.dy,
        &nhwc.y_eval,
        &nhwc.backward.dx,
        &nhwc.steps[0].x,
        &nhwc.steps[1].y,
    ] {
        assert_eq!(tensor.shape(), [3, 5, 6, 4]);
        assert!(tensor.is_standard_layout());
    }
    let ndhwc = data(8);
    assert_eq!(memory_shape(&cases[8].shape, ndhwc.layout), [2, 3, 4, 5, 3]);
    assert_eq!(ndhwc.steps[0].x.shape(), [2, 3, 4, 5, 3]);
    let nlc = data(9);
    assert_eq!(nlc.steps[0].x.shape(), [4, 9, 6]);

    let cumulative = data(3);
    assert_eq!(cumulative.momentum, None);
    assert_eq!(cumulative.steps.len(), 3);

    let no_affine = data(4);
    assert!(!no_affine.affine);
    assert!(no_affine.backward.parameters.is_none());

    let untracked = data(12);
    assert!(!untracked.track_running_stats);
    assert!(untracked.steps.iter().all(|s| s.running.is_none()));
    assert!(untracked.eval_backward.is_none());
    assert!(data(10).eval_backward.is_some());

    let CaseKind::Module(module) = &cases[13].kind else {
        panic!("public_empty_batch is the module case");
    };
    assert_eq!(module.steps[1].x.shape(), [0, 1]);
    let counts: Vec<u64> = module.steps.iter().map(|s| s.num_batches_tracked).collect();
    assert_eq!(counts, [1, 2, 3]);

    for (index, training, eps) in [
        (14, true, 1e-5),
        (15, true, 0.0),
        (16, true, -1e-5),
        (17, false, -1e-5),
    ] {
        let CaseKind::Refused(refusal) = &cases[index].kind else {
            panic!("{} is a refusal", cases[index].name);
        };
        assert_eq!(
            (refusal.training, refusal.eps),
            (training, eps),
            "{}",
            cases[index].name
        );
    }
}

#[test]
fn public_nchw_constant_channel_gives_beta() {
    // PyTorch's own closed form: channel 0 of the first batch is the constant 5.
    let (_, case) = cases_with_data()
        .into_iter()
        .find(|(name, _)| name == "public_nchw")
        .expect("public_nchw is in the manifest");
    assert_eq!(case.layout, Layout::ChannelsFirst);
    let step = &case.steps[0];
    assert_eq!(step.mean[0], 5.0);
    for (&x, &y) in step
        .x
        .index_axis(ndarray::Axis(1), 0)
        .iter()
        .zip(step.y.index_axis(ndarray::Axis(1), 0))
    {
        assert_eq!(x, 5.0);
        assert_eq!(y, case.beta[0]);
    }
    let stats = batch_statistics(step.x.view(), case.layout, case.eps);
    assert_eq!(stats.mean[0], 5.0);
    assert_eq!(stats.var[0], 0.0);
}

#[test]
fn reference_matches_pytorch_training_steps_and_running_stats() {
    for (name, case) in cases_with_data() {
        run_training_steps(&name, &case);
    }
}

/// Inference from the running stats, or from the batch statistics without them (as PyTorch);
/// returns the (mean, invstd) it normalized with.
fn reference_inference(name: &str, case: &FunctionalCase) -> (Vec<f64>, Vec<f64>) {
    let (gamma, beta) = parameters(case);
    let x = case.steps[0].x.view();
    let (y_eval, mean, invstd) = match run_training_steps(name, case) {
        Some((mean, var)) => {
            let y = inference_forward(x, case.layout, &mean, &var, gamma, beta, case.eps);
            let invstd = var.iter().map(|v| 1.0 / (v + case.eps).sqrt()).collect();
            (y, mean, invstd)
        }
        None => {
            let BatchStatistics { mean, invstd, .. } =
                batch_statistics(x.view(), case.layout, case.eps);
            let y = normalize(x, case.layout, &mean, &invstd, gamma, beta);
            (y, mean, invstd)
        }
    };
    assert_within_f32_rounding(&y_eval, &case.y_eval, &format!("{name} y_eval"));
    (mean, invstd)
}

#[test]
fn reference_matches_pytorch_inference() {
    for (name, case) in cases_with_data() {
        reference_inference(&name, &case);
    }
}

fn assert_gradients(
    name: &str,
    case: &FunctionalCase,
    grads: &wgpu_batchnorm::reference::Gradients,
    want: &fixtures::Backward,
) {
    assert_within_f32_rounding(&grads.dx, &want.dx, &format!("{name} dx"));
    match &want.parameters {
        Some((dgamma, dbeta)) => {
            assert!(case.affine);
            assert_f64_close(&grads.dgamma, dgamma, &format!("{name} dgamma"));
            assert_f64_close(&grads.dbeta, dbeta, &format!("{name} dbeta"));
        }
        None => assert!(!case.affine, "{name}: affine case without dgamma"),
    }
}

#[test]
fn reference_matches_pytorch_backward() {
    let mut eval_cases = 0;
    for (name, case) in cases_with_data() {
        let (gamma, _) = parameters(&case);
        let last = case.steps.last().expect("every case has a step");
        // The statistics the forward of the last step saved (checked against PyTorch above).
        let stats = batch_statistics(last.x.view(), case.layout, case.eps);
        let grads = backward_batch_statistics(
            last.x.view(),
            case.dy.view(),
            case.layout,
            &stats.mean,
            &stats.invstd,
            gamma,
        );
        assert_gradients(&name, &case, &grads, &case.backward);
        if let Some(want) = &case.eval_backward {
            let (mean, var) = run_training_steps(&name, &case).expect("tracked");
            let grads = backward_running_statistics(
                case.steps[0].x.view(),
                case.dy.view(),
                case.layout,
                &mean,
                &var,
                case.eps,
                gamma,
            );
            assert_gradients(&format!("{name} eval"), &case, &grads, want);
            eval_cases += 1;
        }
    }
    assert_eq!(eval_cases, 5);
}

#[test]
fn reference_matches_pytorch_module_empty_batch() {
    for case in load_all() {
        let CaseKind::Module(module) = &case.kind else {
            continue;
        };
        let channels = case.shape[1];
        let (mut mean, mut var) = (vec![0.0; channels], vec![1.0; channels]);
        for step in &module.steps {
            let stats = batch_statistics(step.x.view(), Layout::ChannelsFirst, module.eps);
            let momentum = module
                .momentum
                .unwrap_or(1.0 / step.num_batches_tracked as f64);
            let values = step.x.len() / channels;
            update_running_statistics(&mut mean, &mut var, &stats, values, momentum);
            assert_f64_close(
                &mean,
                &step.running_mean,
                &format!("{} running_mean", case.name),
            );
            assert_f64_close(
                &var,
                &step.running_var,
                &format!("{} running_var", case.name),
            );
        }
    }
}
