//! Means and 95% confidence intervals over seeds, from Student's t distribution (its quantile
//! found by bisection on its distribution function, integrated by Simpson's rule: no table).

use serde::Serialize;

/// A mean over seeds and its two-sided 95% confidence interval.
#[derive(Clone, Debug, Serialize)]
pub struct Interval {
    /// Mean of the finite values.
    pub mean: f64,
    /// mean - t s / sqrt(n).
    pub low: f64,
    /// mean + t s / sqrt(n).
    pub high: f64,
    /// Every seed's value, NaN or infinite where a run diverged.
    pub values: Vec<f64>,
    /// Seeds whose value is not finite; the interval is over the others.
    pub diverged: usize,
}

impl Interval {
    /// The interval of `values` (one per seed); NaN bounds when fewer than two are finite.
    pub fn of(values: &[f64]) -> Self {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let n = finite.len();
        let mean = finite.iter().sum::<f64>() / n as f64;
        let half = if n >= 2 {
            let var = finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            t_quantile_975(n - 1) * (var / n as f64).sqrt()
        } else {
            f64::NAN
        };
        Interval {
            mean,
            low: mean - half,
            high: mean + half,
            values: values.to_vec(),
            diverged: values.len() - n,
        }
    }

    /// Whether the two intervals share a point (then no difference is measured).
    pub fn overlaps(&self, other: &Interval) -> bool {
        self.low <= other.high && other.low <= self.high
    }
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (df >= 1).
pub fn t_quantile_975(df: usize) -> f64 {
    let (mut low, mut high) = (0.0, 1000.0);
    while high - low > 1e-12 * high {
        let mid = 0.5 * (low + high);
        if t_cdf_above_zero(mid, df) < 0.475 {
            low = mid;
        } else {
            high = mid;
        }
    }
    0.5 * (low + high)
}

/// P(0 <= T <= t) for t >= 0: the density integrated by Simpson's rule on 4000 intervals
/// after the substitution x = tan(theta), which keeps the heavy tails of small df smooth.
fn t_cdf_above_zero(t: f64, df: usize) -> f64 {
    let nu = df as f64;
    // Gamma((nu + 1) / 2) / Gamma(nu / 2), from its values at 1 and 2 and the step
    // r(nu + 2) = r(nu) (nu + 1) / nu.
    let mut ratio = if df % 2 == 1 {
        1.0 / std::f64::consts::PI.sqrt()
    } else {
        std::f64::consts::PI.sqrt() / 2.0
    };
    let mut k = if df % 2 == 1 { 1 } else { 2 };
    while k < df {
        ratio *= (k as f64 + 1.0) / k as f64;
        k += 2;
    }
    let constant = ratio / (nu * std::f64::consts::PI).sqrt();
    let density = |theta: f64| {
        let x = theta.tan();
        let jacobian = 1.0 + x * x;
        constant * (1.0 + x * x / nu).powf(-(nu + 1.0) / 2.0) * jacobian
    };
    let end = t.atan();
    let intervals = 4000;
    let h = end / intervals as f64;
    let inner: f64 = (1..intervals)
        .map(|i| density(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
        .sum();
    h / 3.0 * (density(0.0) + inner + density(end))
}
