//! What a fold reads from a batch norm ([`BatchNormParameters`]), and the per-channel map
//! `x -> scale * x + shift` it amounts to, in f64.

use super::FoldError;
use crate::batch_norm::BatchNorm;

/// The running statistics of a batch norm.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningStatistics {
    /// Running mean, one value per channel.
    pub mean: Vec<f32>,
    /// Running (unbiased) variance, one value per channel.
    pub var: Vec<f32>,
}

/// A batch norm's parameters on the host, as PyTorch's `F.batch_norm` takes them.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormParameters {
    /// Number of channels.
    pub channels: usize,
    /// gamma; `None` means 1 (`affine = False`).
    pub gamma: Option<Vec<f32>>,
    /// beta; `None` means 0.
    pub beta: Option<Vec<f32>>,
    /// The running statistics, when tracked.
    pub running: Option<RunningStatistics>,
    /// Added to the variance.
    pub eps: f64,
}

impl BatchNormParameters {
    /// Downloads a [`BatchNorm`]'s gamma, beta and running statistics (those it has) and
    /// takes its eps.
    pub fn from_batch_norm(layer: &BatchNorm) -> Result<Self, FoldError> {
        let config = layer.config();
        let (gamma, beta) = if config.affine {
            let (gamma, beta) = layer.parameters()?;
            (Some(gamma), Some(beta))
        } else {
            (None, None)
        };
        let running = config
            .track_running_stats
            .then(|| layer.running_statistics())
            .transpose()?
            .map(|(mean, var)| RunningStatistics { mean, var });
        Ok(BatchNormParameters {
            channels: layer.channels(),
            gamma,
            beta,
            running,
            eps: config.eps,
        })
    }

    /// The map `x -> gamma * x + beta` (the affine part alone), over `channels` channels.
    pub(super) fn affine_map(&self, channels: usize) -> Result<ChannelMap, FoldError> {
        self.check()?;
        let scale = (0..self.channels)
            .map(|c| value(&self.gamma, c, 1.0))
            .collect();
        let shift = (0..self.channels)
            .map(|c| value(&self.beta, c, 0.0))
            .collect();
        Ok(ChannelMap { scale, shift }.broadcast(channels))
    }

    /// The map of the whole batch norm in inference, `x -> s x + (beta - running_mean s)` with
    /// `s = gamma / sqrt(running_var + eps)`, over `channels` channels.
    pub(super) fn inference_map(&self, channels: usize) -> Result<ChannelMap, FoldError> {
        self.check()?;
        let running = self
            .running
            .as_ref()
            .ok_or(FoldError::MissingRunningStatistics)?;
        let mut map = ChannelMap {
            scale: Vec::with_capacity(self.channels),
            shift: Vec::with_capacity(self.channels),
        };
        for c in 0..self.channels {
            let var_eps = f64::from(running.var[c]) + self.eps;
            if !(var_eps.is_finite() && var_eps > 0.0) {
                return Err(FoldError::NonPositiveVariance {
                    channel: c,
                    value: var_eps,
                });
            }
            let scale = value(&self.gamma, c, 1.0) / var_eps.sqrt();
            map.scale.push(scale);
            map.shift
                .push(value(&self.beta, c, 0.0) - f64::from(running.mean[c]) * scale);
        }
        Ok(map.broadcast(channels))
    }

    /// eps and every vector's length.
    fn check(&self) -> Result<(), FoldError> {
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(FoldError::InvalidEps(self.eps));
        }
        let running = self.running.as_ref();
        for (what, values) in [
            ("gamma", self.gamma.as_deref()),
            ("beta", self.beta.as_deref()),
            ("running_mean", running.map(|r| r.mean.as_slice())),
            ("running_var", running.map(|r| r.var.as_slice())),
        ] {
            if let Some(values) = values {
                if values.len() != self.channels {
                    return Err(FoldError::ParameterLength {
                        what,
                        expected: self.channels,
                        actual: values.len(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn value(values: &Option<Vec<f32>>, channel: usize, default: f64) -> f64 {
    values.as_ref().map_or(default, |v| f64::from(v[channel]))
}

/// `x -> scale[c] * x + shift[c]` per channel, in f64.
#[derive(Clone, Debug)]
pub(super) struct ChannelMap {
    pub(super) scale: Vec<f64>,
    pub(super) shift: Vec<f64>,
}

impl ChannelMap {
    /// One channel's map repeated over `channels` (a 1-channel batch norm over a linear
    /// layer's features); the caller has checked that the counts agree otherwise.
    fn broadcast(self, channels: usize) -> Self {
        match self.scale.len() {
            1 if channels != 1 => ChannelMap {
                scale: vec![self.scale[0]; channels],
                shift: vec![self.shift[0]; channels],
            },
            _ => self,
        }
    }
}
