//! The batch norms in f64 on the CPU (`wgpu_batchnorm::reference`), for the start-up check
//! that the GPU network computes the same losses as an f64 run of the same network.

use ndarray::{Array1, Array2, Ix2};
use wgpu_batchnorm::{reference, Layout};

use super::gpu_norm::{EPS, MOMENTUM};
use super::network::{Mode, Norm, NormGradients, WIDTHS};
use super::ExperimentResult;

/// One network's batch norms in f64: running mean and variance per hidden layer.
pub struct ReferenceNorm {
    running: Vec<(Vec<f64>, Vec<f64>)>,
}

/// A forward's input, statistics and gamma.
pub struct ReferenceSaved {
    x: Array2<f64>,
    mean: Vec<f64>,
    invstd: Vec<f64>,
    gamma: Option<Vec<f64>>,
}

impl Default for ReferenceNorm {
    /// Running mean 0 and variance 1 for each hidden layer.
    fn default() -> Self {
        let running = WIDTHS[1..WIDTHS.len() - 1]
            .iter()
            .map(|&c| (vec![0.0; c], vec![1.0; c]))
            .collect();
        ReferenceNorm { running }
    }
}

impl Norm<f64> for ReferenceNorm {
    type Saved = ReferenceSaved;

    fn forward(
        &mut self,
        layer: usize,
        x: &Array2<f64>,
        affine: Option<(&Array1<f64>, &Array1<f64>)>,
        mode: Mode,
    ) -> ExperimentResult<(Array2<f64>, ReferenceSaved)> {
        let gamma = affine.map(|(g, _)| g.to_vec());
        let beta = affine.map(|(_, b)| b.to_vec());
        let x_dyn = x.view().into_dyn();
        let (mean, invstd) = if mode == Mode::Eval {
            let (mean, var) = &self.running[layer];
            let invstd = var.iter().map(|v| 1.0 / (v + EPS).sqrt()).collect();
            (mean.clone(), invstd)
        } else {
            let stats = reference::batch_statistics(x_dyn.view(), Layout::ChannelsFirst, EPS);
            if mode == Mode::Train {
                let (mean, var) = &mut self.running[layer];
                reference::update_running_statistics(mean, var, &stats, x.nrows(), MOMENTUM);
            }
            (stats.mean, stats.invstd)
        };
        let y = reference::normalize(
            x_dyn,
            Layout::ChannelsFirst,
            &mean,
            &invstd,
            gamma.as_deref(),
            beta.as_deref(),
        );
        let y = y.into_dimensionality::<Ix2>().expect("a 2-D input");
        let saved = ReferenceSaved {
            x: x.clone(),
            mean,
            invstd,
            gamma,
        };
        Ok((y, saved))
    }

    fn backward(
        &mut self,
        saved: &ReferenceSaved,
        dy: &Array2<f64>,
    ) -> ExperimentResult<NormGradients<f64>> {
        let gradients = reference::backward_batch_statistics(
            saved.x.view().into_dyn(),
            dy.view().into_dyn(),
            Layout::ChannelsFirst,
            &saved.mean,
            &saved.invstd,
            saved.gamma.as_deref(),
        );
        let dx = gradients
            .dx
            .into_dimensionality::<Ix2>()
            .expect("a 2-D input");
        let params = saved.gamma.is_some().then(|| {
            (
                Array1::from(gradients.dgamma),
                Array1::from(gradients.dbeta),
            )
        });
        Ok((dx, params))
    }
}
