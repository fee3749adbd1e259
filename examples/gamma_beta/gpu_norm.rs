//! The batch norms on the GPU, with the crate: a [`BatchNorm`] module per hidden layer for
//! training (its running statistics updated on the GPU) and inference, and the functional form
//! with no running statistics for the probes, so a probe changes nothing of a layer's state.

use ndarray::{Array1, Array2};
use wgpu_batchnorm::functional::{batch_norm, batch_norm_backward};
use wgpu_batchnorm::{
    BatchNorm, BatchNormConfig, ChannelPair, ForwardArgs, GpuContext, Layout, SavedStats, Tensor,
};

use super::network::{Mode, Norm, NormGradients, WIDTHS};
use super::ExperimentResult;

/// PyTorch's default momentum and eps, as the protocol fixes them.
pub const MOMENTUM: f64 = 0.1;
/// Added to the variance.
pub const EPS: f64 = 1e-5;

/// One network's batch norms on the GPU.
pub struct GpuNorm {
    ctx: GpuContext,
    layers: Vec<BatchNorm>,
}

/// A forward's input, statistics and gamma and beta, kept on the GPU for the backward.
pub struct GpuSaved {
    x: Tensor,
    stats: SavedStats,
    affine: Option<ChannelPair>,
}

impl GpuNorm {
    /// Fresh batch norms (running mean 0, variance 1, no batch counted) for each hidden layer.
    pub fn new(ctx: &GpuContext, affine: bool) -> ExperimentResult<Self> {
        let config = BatchNormConfig {
            eps: EPS,
            momentum: Some(MOMENTUM),
            affine,
            track_running_stats: true,
        };
        let layers = WIDTHS[1..WIDTHS.len() - 1]
            .iter()
            .map(|&channels| BatchNorm::with_config(ctx, channels, config))
            .collect::<Result<_, _>>()?;
        Ok(GpuNorm {
            ctx: ctx.clone(),
            layers,
        })
    }

    /// The hidden layers' modules (the probe test reads their state).
    pub fn layers(&self) -> &[BatchNorm] {
        &self.layers
    }
}

fn upload(ctx: &GpuContext, x: &Array2<f32>) -> ExperimentResult<Tensor> {
    let standard = x.as_standard_layout();
    let data = standard.as_slice().expect("a standard-layout array");
    Ok(Tensor::from_slice(
        ctx,
        data,
        x.shape(),
        Layout::ChannelsFirst,
    )?)
}

fn download(tensor: &Tensor) -> ExperimentResult<Array2<f32>> {
    let shape = (tensor.shape()[0], tensor.shape()[1]);
    Ok(Array2::from_shape_vec(shape, tensor.to_vec()?).expect("the tensor's own shape"))
}

impl Norm<f32> for GpuNorm {
    type Saved = GpuSaved;

    fn forward(
        &mut self,
        layer: usize,
        x: &Array2<f32>,
        affine: Option<(&Array1<f32>, &Array1<f32>)>,
        mode: Mode,
    ) -> ExperimentResult<(Array2<f32>, GpuSaved)> {
        let x = upload(&self.ctx, x)?;
        let (y, stats, pair) = match mode {
            Mode::Train | Mode::Eval => {
                let module = &mut self.layers[layer];
                if let Some((gamma, beta)) = affine {
                    module.set_parameters(
                        gamma.as_slice().expect("standard"),
                        beta.as_slice().expect("standard"),
                    )?;
                }
                module.set_training(mode == Mode::Train);
                let out = module.forward(&x)?;
                (out.y, out.saved, module.affine().cloned())
            }
            Mode::Probe => {
                let pair = affine
                    .map(|(gamma, beta)| {
                        ChannelPair::new(
                            &self.ctx,
                            gamma.as_slice().expect("standard"),
                            beta.as_slice().expect("standard"),
                        )
                    })
                    .transpose()?;
                let args = ForwardArgs {
                    affine: pair.as_ref(),
                    running: None,
                    training: true,
                    momentum: MOMENTUM,
                    eps: EPS,
                    epilogue: wgpu_batchnorm::Epilogue::None,
                };
                let (y, stats) = batch_norm(&x, &args)?;
                (y, stats, pair)
            }
        };
        let saved = GpuSaved {
            x,
            stats,
            affine: pair,
        };
        Ok((download(&y)?, saved))
    }

    fn backward(
        &mut self,
        saved: &GpuSaved,
        dy: &Array2<f32>,
    ) -> ExperimentResult<NormGradients<f32>> {
        let dy = upload(&self.ctx, dy)?;
        let gradients = batch_norm_backward(
            &saved.x,
            &dy,
            &saved.stats,
            saved.affine.as_ref(),
            wgpu_batchnorm::EpilogueGrad::None,
        )?;
        let params = gradients
            .params
            .map(|pair| pair.read())
            .transpose()?
            .map(|(dgamma, dbeta)| (Array1::from(dgamma), Array1::from(dbeta)));
        Ok((download(&gradients.dx)?, params))
    }
}
