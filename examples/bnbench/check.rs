//! The CPU reference of a case (`wgpu_batchnorm::reference`, f64 on the host): its time, and the
//! comparison of the GPU's result with it. Every timed result is checked before its time is
//! reported.
//!
//! The bound is a sanity check, not the accuracy contract (the tests hold the kernels to
//! 1e-5 x |gamma|, and half types to one unit in their last place): an output is accepted
//! within [`RELATIVE_BOUND`] of the largest reference value (at least 1), or for half types
//! within their own spacing at that size, which any correct kernel meets and any wrong one
//! misses. With an epilogue the reference is PyTorch's composition, relu(bn(x) + z), and the
//! backward's mask comes from the forward's output, as the kernels take it.

use std::time::Instant;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use serde::Serialize;
use wgpu_batchnorm::reference;

use super::case::{Case, Op};
use super::suite::{HostData, EPS};
use wgpu_batchnorm::DType;

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
    /// Largest |GPU - reference| over dz (add-ReLU backward only).
    pub shortcut_grad_max_abs_error: Option<f64>,
    /// The bound `params_max_abs_error` was held to (backward only).
    pub params_bound: Option<f64>,
    /// Whether every error is within its bound.
    pub passed: bool,
}

/// Computes the reference of `case` on `host` (timing it) and compares `output` (y or dx, in
/// memory order), for the backward `params` (`[dgamma], [dbeta]`), and for the add-ReLU
/// backward `shortcut_grad` (dz) with it.
pub fn check(
    case: &Case,
    host: &HostData,
    output: &[f32],
    params: Option<&(Vec<f32>, Vec<f32>)>,
    shortcut_grad: Option<&[f32]>,
) -> Check {
    let shape = IxDyn(&case.memory_shape());
    fn view<'v>(shape: &IxDyn, values: &'v [f32]) -> ArrayViewD<'v, f32> {
        ArrayViewD::from_shape(shape.clone(), values)
            .expect("generated with the case's element count")
    }
    let x = view(&shape, &host.x);
    let z = host.z.as_deref().map(|z| view(&shape, z));
    let layout = case.layout.layout();
    let epilogue = case.epilogue.kind();
    let gamma = Some(host.gamma.as_slice());
    let beta = Some(host.beta.as_slice());
    let (reference_ms, want, want_params, want_dz) = match case.op {
        Op::TrainForward => {
            let (ms, y) = timed(|| {
                let (bn, _) = reference::training_forward(x.view(), layout, gamma, beta, EPS);
                reference::epilogue(bn.view(), z, epilogue)
            });
            (ms, y, None, None)
        }
        Op::EvalForward => {
            let mean = to_f64(&host.running_mean);
            let var = to_f64(&host.running_var);
            let (ms, y) = timed(|| {
                let bn =
                    reference::inference_forward(x.view(), layout, &mean, &var, gamma, beta, EPS);
                reference::epilogue(bn.view(), z, epilogue)
            });
            (ms, y, None, None)
        }
        Op::Backward => {
            let dy = view(&shape, host.dy.as_deref().expect("a backward case has dy"));
            let stats = reference::batch_statistics(x.view(), layout, EPS);
            let (ms, (g, grads)) = timed(|| {
                // The gradient through the epilogue's ReLU, masked by the forward's output.
                let g = match &host.forward_y {
                    Some(y) => reference::epilogue_gradient(dy.view(), view(&shape, y), epilogue),
                    None => dy.mapv(f64::from),
                };
                let grads = reference::backward_batch_statistics(
                    x.view(),
                    g.view(),
                    layout,
                    &stats.mean,
                    &stats.invstd,
                    gamma,
                );
                (g, grads)
            });
            let want_dz = shortcut_grad.map(|_| g);
            (ms, grads.dx, Some((grads.dgamma, grads.dbeta)), want_dz)
        }
    };
    let dtype = case.dtype.dtype();
    let (max_abs_error, bound) = compare(output, &want, dtype);
    let params_errors = want_params.map(|(dgamma, dbeta)| {
        let got: Vec<f32> = params
            .map(|(g, b)| g.iter().chain(b).copied().collect())
            .unwrap_or_default();
        let want: Vec<f64> = dgamma.into_iter().chain(dbeta).collect();
        compare(
            &got,
            &ArrayD::from_shape_vec(IxDyn(&[want.len()]), want).expect("1-D"),
            DType::F32,
        )
    });
    let dz_errors = want_dz.map(|want| compare(shortcut_grad.unwrap_or_default(), &want, dtype));
    let within = |errors: Option<(f64, f64)>| errors.is_none_or(|(error, bound)| error <= bound);
    let passed = max_abs_error <= bound && within(params_errors) && within(dz_errors);
    Check {
        reference_ms,
        max_abs_error,
        bound,
        params_max_abs_error: params_errors.map(|(error, _)| error),
        shortcut_grad_max_abs_error: dz_errors.map(|(error, _)| error),
        params_bound: params_errors.map(|(_, bound)| bound),
        passed,
    }
}

/// `(largest |got - want|, its bound)` for values stored as `dtype`; the error is infinite
/// when a value is NaN or missing.
fn compare(got: &[f32], want: &ArrayD<f64>, dtype: DType) -> (f64, f64) {
    let largest = want.iter().fold(1.0_f64, |m, w| m.max(w.abs()));
    // The spacing of the storage type's values relative to their size: 2^-10 for f16, 2^-7
    // for bf16 (f32 results are held to RELATIVE_BOUND).
    let spacing = match dtype {
        DType::F32 => RELATIVE_BOUND,
        DType::F16 => 2f64.powi(-10),
        DType::BF16 => 2f64.powi(-7),
    };
    let bound = spacing.max(RELATIVE_BOUND) * largest;
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
