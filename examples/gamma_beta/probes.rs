//! Santurkar et al.'s instruments ("How Does Batch Normalization Help Optimization?",
//! NeurIPS 2018, section 3.1 and figure 4), measured at one step: along the current gradient g,
//! on the same minibatch, at eta = learning rate x k for eight k log-spaced in [0.5, 4], the
//! range of the loss L(theta - eta g) (loss landscape), the range of
//! ||grad L(theta - eta g) - g|| (gradient predictiveness), and the largest
//! ||grad L(theta - eta g) - g|| / ||eta g|| ("effective" beta-smoothness). The probes
//! normalize with batch statistics but never touch the running statistics or the batch count.

use ndarray::Array2;
use serde::Serialize;

use super::network::{Mode, Network, Norm, Parameters, Variant};
use super::real::Real;
use super::ExperimentResult;

/// Step multipliers k: 0.5 * 8^(i / 7), i = 0..8, from 0.5 to 4.
pub fn multipliers() -> [f64; 8] {
    std::array::from_fn(|i| 0.5 * 8f64.powf(i as f64 / 7.0))
}

/// The instruments at one step.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    /// Training steps taken before it.
    pub step: usize,
    /// Smallest and largest L(theta - eta g) over the eight steps.
    pub loss_min: f64,
    /// See `loss_min`.
    pub loss_max: f64,
    /// Smallest and largest ||grad L(theta - eta g) - g||.
    pub gradient_change_min: f64,
    /// See `gradient_change_min`.
    pub gradient_change_max: f64,
    /// Largest ||grad L(theta - eta g) - g|| / ||eta g||.
    pub beta_smoothness: f64,
}

/// Measures the instruments at `params` with gradient `gradient` on `(x, labels)`, in
/// [`Mode::Probe`].
#[allow(clippy::too_many_arguments)]
pub fn probe<T: Real, N: Norm<T>>(
    step: usize,
    params: &Parameters<T>,
    gradient: &Parameters<T>,
    variant: Variant,
    norm: &mut N,
    x: &Array2<T>,
    labels: &[usize],
    learning_rate: f64,
) -> ExperimentResult<Probe> {
    let gradient_norm = gradient.norm();
    let mut losses = Vec::new();
    let mut changes = Vec::new();
    let mut smoothness = Vec::new();
    for k in multipliers() {
        let eta = learning_rate * k;
        let moved = params.plus_scaled(-eta, gradient);
        let mut network = Network {
            params: &moved,
            variant,
            norm,
        };
        let (loss, moved_gradient) = network.loss_and_gradient(x, labels, Mode::Probe)?;
        let change = moved_gradient.distance(gradient);
        losses.push(loss);
        changes.push(change);
        smoothness.push(change / (eta * gradient_norm));
    }
    Ok(Probe {
        step,
        loss_min: smallest(&losses),
        loss_max: largest(&losses),
        gradient_change_min: smallest(&changes),
        gradient_change_max: largest(&changes),
        beta_smoothness: largest(&smoothness),
    })
}

/// The smallest value, NaN if any is NaN (a diverged probe must show).
fn smallest(values: &[f64]) -> f64 {
    values.iter().fold(f64::INFINITY, |a, &b| {
        if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            a.min(b)
        }
    })
}

/// The largest value, NaN if any is NaN.
fn largest(values: &[f64]) -> f64 {
    values.iter().fold(f64::NEG_INFINITY, |a, &b| {
        if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            a.max(b)
        }
    })
}
