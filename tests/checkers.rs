//! The checks of `common::checks` themselves, without a GPU: outputs emulated on the host in
//! float32 as the kernels compute them must pass, and the same outputs with a bug we fear
//! injected must be rejected (a folded normalize, a biased running variance, a flipped sign in
//! dx, one value dropped per chunk, momentum applied as 1 - m). A check that cannot fail would
//! show here.

mod common;

use common::checks::{
    check_batch_statistics, check_input_gradient, check_output, check_parameter_gradients,
    check_running_statistics, sum_depth, BackwardInputs, Channels, Checked, ForwardInputs, Saved,
    Through,
};
use common::normal_data;
use ndarray::ArrayD;
use wgpu_batchnorm::plan::{plan, Operation, PlanLimits};
use wgpu_batchnorm::reference::{self, BatchStatistics};
use wgpu_batchnorm::{ChannelView, DType, Layout};

const SHAPE: [usize; 4] = [4, 3, 8, 8];
const LAYOUT: Layout = Layout::ChannelsFirst;
const EPS: f64 = 1e-5;
/// Values per emulated reduction chunk (for the dropped-value bug).
const CHUNK: usize = 64;

fn view() -> ChannelView {
    ChannelView::new(&SHAPE, LAYOUT).unwrap()
}

/// Data of unit spread at `offset`, gamma and beta of both signs.
fn inputs(offset: f64) -> (ArrayD<f32>, Vec<f32>, Vec<f32>) {
    let view = view();
    let x =
        ArrayD::from_shape_vec(SHAPE.to_vec(), normal_data(view.len(), 3, offset, 1.0)).unwrap();
    (x, vec![1.5, -0.75, 0.5], vec![0.25, -1.0, 2.0])
}

fn forward_inputs<'a>(x: &'a ArrayD<f32>, gamma: &'a [f32], beta: &'a [f32]) -> ForwardInputs<'a> {
    ForwardInputs {
        x: x.view(),
        layout: LAYOUT,
        gamma: Some(gamma),
        beta: Some(beta),
        eps: EPS,
    }
}

/// The statistics as the GPU saves them: f64 rounded once to f32.
fn emulated_statistics(stats: &BatchStatistics) -> Saved {
    Saved {
        mean: stats.mean.iter().map(|&m| m as f32).collect(),
        invstd: stats.invstd.iter().map(|&s| s as f32).collect(),
    }
}

/// y in float32 as `normalize.wgsl` computes it, or with the mean folded into the shift.
fn emulated_output(
    x: &ArrayD<f32>,
    saved: &Saved,
    gamma: &[f32],
    beta: &[f32],
    folded: bool,
) -> Vec<f32> {
    let view = view();
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = view.channel_of(i);
            let scale = saved.invstd[c] * gamma[c];
            if folded {
                v * scale + (beta[c] - saved.mean[c] * scale)
            } else {
                (v - saved.mean[c]) * scale + beta[c]
            }
        })
        .collect()
}

fn rejected(what: &str, result: Checked) {
    match result {
        Err(findings) => eprintln!("{what}: rejected as it should be:\n{findings}"),
        Ok(()) => panic!("{what}: the check accepted a bug"),
    }
}

#[test]
fn a_folded_normalize_is_rejected_at_an_offset() {
    let (x, gamma, beta) = inputs(1e4);
    let inputs = forward_inputs(&x, &gamma, &beta);
    let saved = emulated_statistics(&reference::batch_statistics(x.view(), LAYOUT, EPS));
    check_batch_statistics("emulated", &inputs, &saved, Channels::All).unwrap();
    let y = emulated_output(&x, &saved, &gamma, &beta, false);
    check_output("emulated", &inputs, &saved, &y, Channels::All).unwrap();
    let folded = emulated_output(&x, &saved, &gamma, &beta, true);
    rejected(
        "folded normalize",
        check_output("folded", &inputs, &saved, &folded, Channels::All),
    );
}

#[test]
fn one_value_dropped_per_chunk_is_rejected() {
    let (x, gamma, beta) = inputs(0.5);
    let inputs = forward_inputs(&x, &gamma, &beta);
    let view = view();
    // Statistics of every value but the first of each chunk of a channel's values.
    let m = view.values_per_channel();
    let kept: Vec<Vec<f64>> = (0..view.channels)
        .map(|c| {
            (0..m)
                .filter(|k| k % CHUNK != 0)
                .map(|k| {
                    f64::from(x.as_slice().unwrap()[view.index(k / view.inner, c, k % view.inner)])
                })
                .collect()
        })
        .collect();
    let mean: Vec<f64> = kept
        .iter()
        .map(|v| v.iter().sum::<f64>() / v.len() as f64)
        .collect();
    let var: Vec<f64> = kept
        .iter()
        .zip(&mean)
        .map(|(v, m)| v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64)
        .collect();
    let dropped = Saved {
        mean: mean.iter().map(|&m| m as f32).collect(),
        invstd: var
            .iter()
            .map(|v| (1.0 / (v + EPS).sqrt()) as f32)
            .collect(),
    };
    rejected(
        "statistics without a value per chunk",
        check_batch_statistics("dropped", &inputs, &dropped, Channels::All),
    );
    // dbeta without those values, from otherwise exact statistics.
    let saved = emulated_statistics(&reference::batch_statistics(x.view(), LAYOUT, EPS));
    let dy = ArrayD::from_shape_vec(SHAPE.to_vec(), normal_data(view.len(), 4, 0.0, 1.0)).unwrap();
    let backward = backward_inputs(&inputs, &dy, &saved, Through::Batch);
    let (dgamma, mut dbeta) = emulated_parameter_gradients(&backward);
    check_parameter_gradients("emulated", &backward, &dgamma, &dbeta, Channels::All).unwrap();
    for (c, sum) in dbeta.iter_mut().enumerate() {
        for k in (0..m).step_by(CHUNK) {
            *sum -= dy.as_slice().unwrap()[view.index(k / view.inner, c, k % view.inner)];
        }
    }
    rejected(
        "dbeta without a value per chunk",
        check_parameter_gradients("dropped", &backward, &dgamma, &dbeta, Channels::All),
    );
}

/// A backward's inputs with the depth of the plan a CPU adapter makes.
fn backward_inputs<'a>(
    forward: &ForwardInputs<'a>,
    dy: &'a ArrayD<f32>,
    saved: &'a Saved,
    through: Through,
) -> BackwardInputs<'a> {
    let limits = PlanLimits::new(
        &wgpu::Limits::default(),
        wgpu::DeviceType::Cpu,
        wgpu::Features::empty(),
    );
    let plan = plan(view(), DType::F32, limits, Operation::Backward).unwrap();
    BackwardInputs {
        forward: forward.clone(),
        dy: dy.view(),
        saved,
        through,
        depth: sum_depth(&plan),
    }
}

/// dgamma and dbeta: f64 sums from the saved statistics, rounded once.
fn emulated_parameter_gradients(inputs: &BackwardInputs<'_>) -> (Vec<f32>, Vec<f32>) {
    let view = view();
    let mut dgamma = vec![0.0f64; view.channels];
    let mut dbeta = vec![0.0f64; view.channels];
    for (i, (&x, &dy)) in inputs.forward.x.iter().zip(inputs.dy.iter()).enumerate() {
        let c = view.channel_of(i);
        let x_hat =
            (f64::from(x) - f64::from(inputs.saved.mean[c])) * f64::from(inputs.saved.invstd[c]);
        dgamma[c] += f64::from(dy) * x_hat;
        dbeta[c] += f64::from(dy);
    }
    let round = |v: Vec<f64>| v.into_iter().map(|s| s as f32).collect();
    (round(dgamma), round(dbeta))
}

/// dx in float32 as the kernels compute it, with the sign of the dgamma term flipped when
/// `flipped`.
fn emulated_input_gradient(inputs: &BackwardInputs<'_>, flipped: bool) -> Vec<f32> {
    let view = view();
    let m = view.values_per_channel() as f32;
    let (dgamma, dbeta) = emulated_parameter_gradients(inputs);
    let gamma = inputs.forward.gamma.unwrap();
    inputs
        .forward
        .x
        .iter()
        .zip(inputs.dy.iter())
        .enumerate()
        .map(|(i, (&x, &dy))| {
            let c = view.channel_of(i);
            let (mean, invstd) = (inputs.saved.mean[c], inputs.saved.invstd[c]);
            let x_hat = (x - mean) * invstd;
            let term = x_hat * (dgamma[c] / m);
            let term = if flipped { -term } else { term };
            gamma[c] * invstd * (dy - dbeta[c] / m - term)
        })
        .collect()
}

#[test]
fn a_flipped_sign_in_dx_is_rejected() {
    let (x, gamma, beta) = inputs(0.5);
    let inputs = forward_inputs(&x, &gamma, &beta);
    let saved = emulated_statistics(&reference::batch_statistics(x.view(), LAYOUT, EPS));
    let dy =
        ArrayD::from_shape_vec(SHAPE.to_vec(), normal_data(view().len(), 5, 0.0, 1.0)).unwrap();
    let backward = backward_inputs(&inputs, &dy, &saved, Through::Batch);
    let dx = emulated_input_gradient(&backward, false);
    check_input_gradient("emulated", &backward, &dx, Channels::All).unwrap();
    let flipped = emulated_input_gradient(&backward, true);
    rejected(
        "flipped dgamma term in dx",
        check_input_gradient("flipped", &backward, &flipped, Channels::All),
    );
}

/// Running stats updated in float32 from `stats` with `momentum`, the variance unbiased unless
/// `biased`, the weights swapped when `swapped` (momentum applied as 1 - m).
fn emulated_running(
    stats: &BatchStatistics,
    momentum: f32,
    biased: bool,
    swapped: bool,
) -> (Vec<f32>, Vec<f32>) {
    let m = view().values_per_channel() as f32;
    let (keep, take) = if swapped {
        (momentum, 1.0 - momentum)
    } else {
        (1.0 - momentum, momentum)
    };
    let correction = if biased { 1.0 } else { m / (m - 1.0) };
    let mean = stats
        .mean
        .iter()
        .map(|&b| keep * 0.0 + take * b as f32)
        .collect();
    let var = stats
        .var
        .iter()
        .map(|&v| keep * 1.0 + take * v as f32 * correction)
        .collect();
    (mean, var)
}

#[test]
fn wrong_running_statistics_are_rejected() {
    let (x, _, _) = inputs(0.5);
    let stats = reference::batch_statistics(x.view(), LAYOUT, EPS);
    let (mut want_mean, mut want_var) = (vec![0.0; 3], vec![1.0; 3]);
    reference::update_running_statistics(
        &mut want_mean,
        &mut want_var,
        &stats,
        view().values_per_channel(),
        0.1,
    );
    let check = |what: &str, (mean, var): (Vec<f32>, Vec<f32>)| {
        check_running_statistics(
            what,
            &want_mean,
            &want_var,
            &stats,
            &mean,
            &var,
            Channels::All,
        )
    };
    check("emulated", emulated_running(&stats, 0.1, false, false)).unwrap();
    rejected(
        "biased running variance",
        check("biased", emulated_running(&stats, 0.1, true, false)),
    );
    rejected(
        "momentum applied as 1 - m",
        check("swapped", emulated_running(&stats, 0.1, false, true)),
    );
}
