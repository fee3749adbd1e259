//! The CPU reference of a case (`wgpu_batchnorm::reference`, f64 on the host): its time, and the
//! comparison of the GPU's result with it. Every timed result is checked before its time is
//! reported.
//!
//! The bound is a sanity check, not the accuracy contract (the tests hold the kernels to
//! 1e-5 x |gamma|): an output is accepted within [`RELATIVE_BOUND`] of the largest reference
//! value (at least 1), which any correct float32 kernel meets and any wrong one misses.

use std::time::Instant;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use serde::Serialize;
use wgpu_batchnorm::reference;

use super::suite::{Case, HostData, Op, EPS};

/// Accepted error, relative to the largest magnitude of the reference output (at least 1).
pub const RELATIVE_BOUND: f64 = 1e-4;

/// The outcome of one comparison with the reference.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Time of the reference function alone, milliseconds.
    pub reference_ms: f64,
    /// Largest |GPU - reference| over y (forwards) or dx (backward); infinite if any is NaN.
    pub max_abs_error: f64,
    /// The bound `max_abs_error` was held to.
    pub bound: f64,
    /// Largest |GPU - reference| over dgamma and dbeta (backward only).
    pub params_max_abs_error: Option<f64>,
    /// The bound `params_max_abs_error` was held to (backward only).
    pub params_bound: Option<f64>,
    /// Whether every error is within its bound.
    pub passed: bool,
}

/// Computes the reference of `case` on `host` (timing it) and compares `output` (y or dx, in
/// memory order) and, for the backward, `params` (`[dgamma], [dbeta]`) with it.
pub fn check(
    case: &Case,
    host: &HostData,
    output: &[f32],
    params: Option<&(Vec<f32>, Vec<f32>)>,
) -> Check {
    let shape = IxDyn(&case.memory_shape());
    let x = ArrayViewD::from_shape(shape.clone(), &host.x)
        .expect("x was generated with the case's element count");
    let layout = case.layout.layout();
    let gamma = Some(host.gamma.as_slice());
    let beta = Some(host.beta.as_slice());
    let (reference_ms, want, want_params) = match case.op {
        Op::TrainForward => {
            let (ms, (y, _)) =
                timed(|| reference::training_forward(x.view(), layout, gamma, beta, EPS));
            (ms, y, None)
        }
        Op::EvalForward => {
            let mean = to_f64(&host.running_mean);
            let var = to_f64(&host.running_var);
            let (ms, y) = timed(|| {
                reference::inference_forward(x.view(), layout, &mean, &var, gamma, beta, EPS)
            });
            (ms, y, None)
        }
        Op::Backward => {
            let dy = host.dy.as_deref().expect("a backward case has dy");
            let dy = ArrayViewD::from_shape(shape, dy)
                .expect("dy was generated with the case's element count");
            let stats = reference::batch_statistics(x.view(), layout, EPS);
            let (ms, grads) = timed(|| {
                reference::backward_batch_statistics(
                    x.view(),
                    dy,
                    layout,
                    &stats.mean,
                    &stats.invstd,
                    gamma,
                )
            });
            (ms, grads.dx, Some((grads.dgamma, grads.dbeta)))
        }
    };
    let (max_abs_error, bound) = compare(output, &want);
    let params_errors = want_params.map(|(dgamma, dbeta)| {
        let got: Vec<f32> = params
            .map(|(g, b)| g.iter().chain(b).copied().collect())
            .unwrap_or_default();
        let want: Vec<f64> = dgamma.into_iter().chain(dbeta).collect();
        compare(
            &got,
            &ArrayD::from_shape_vec(IxDyn(&[want.len()]), want).expect("1-D"),
        )
    });
    let passed =
        max_abs_error <= bound && params_errors.is_none_or(|(error, bound)| error <= bound);
    Check {
        reference_ms,
        max_abs_error,
        bound,
        params_max_abs_error: params_errors.map(|(error, _)| error),
        params_bound: params_errors.map(|(_, bound)| bound),
        passed,
    }
}

/// `(largest |got - want|, its bound)`; the error is infinite when a value is NaN or missing.
fn compare(got: &[f32], want: &ArrayD<f64>) -> (f64, f64) {
    let largest = want.iter().fold(1.0_f64, |m, w| m.max(w.abs()));
    let bound = RELATIVE_BOUND * largest;
    if got.len() != want.len() {
        return (f64::INFINITY, bound);
    }
    let error = got.iter().zip(want.iter()).fold(0.0_f64, |m, (&g, &w)| {
        let difference = (f64::from(g) - w).abs();
        if difference.is_nan() {
            f64::INFINITY
        } else {
            m.max(difference)
        }
    });
    (error, bound)
}

fn to_f64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

/// Runs `work` once; returns its time in milliseconds and its value.
fn timed<T>(work: impl FnOnce() -> T) -> (f64, T) {
    let start = Instant::now();
    let value = work();
    (start.elapsed().as_secs_f64() * 1e3, value)
}
