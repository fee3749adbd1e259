//! [`Real`]: the float type of a host network, f32 for the experiment and f64 for the
//! reference run that checks it.

use ndarray::{LinalgScalar, ScalarOperand};

/// What the host layers need of their float type.
pub trait Real:
    LinalgScalar + ScalarOperand + PartialOrd + std::fmt::Debug + Send + Sync + 'static
{
    /// Rounds (or widens) an f64.
    fn from_f64(value: f64) -> Self;
    /// Widens to f64.
    fn to_f64(self) -> f64;
    /// e^self.
    fn exp(self) -> Self;
    /// The natural logarithm.
    fn ln(self) -> Self;
}

impl Real for f32 {
    fn from_f64(value: f64) -> Self {
        value as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
}

impl Real for f64 {
    fn from_f64(value: f64) -> Self {
        value
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
}
