//! [`BatchNorm`]: the module, as PyTorch's `nn.BatchNorm1d/2d/3d`. It owns gamma and beta, the
//! running stats and `num_batches_tracked`, all on the GPU, and a training/inference mode.

use std::sync::{Mutex, MutexGuard};

use crate::dtype::Element;
use crate::encode::{prepare, record_prepared, Buffers, PassTimestamps};
use crate::epilogue::{Epilogue, EpilogueGrad};
use crate::error::{BatchNormError, Result};
use crate::functional::{
    backward_buffers, describe_backward, describe_forward, forward_buffers, ForwardArgs, Gradients,
    SavedStats, StatsSource, BACKWARD_LABEL, FORWARD_LABEL,
};
use crate::gpu::GpuContext;
use crate::steps::{count_batch_step, Update};
use crate::tensor::{ChannelPair, Tensor};
use crate::workspace::{Key, Kind, Workspace};

/// Locks the workspace, taking over from a thread that panicked holding it (its entries are
/// whole: each is inserted complete).
fn lock(workspace: &Mutex<Workspace>) -> MutexGuard<'_, Workspace> {
    workspace
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Options of a [`BatchNorm`], with PyTorch's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance (default 1e-5); finite and >= 0. Training refuses 0, as PyTorch
    /// 2.15 does; inference from running stats accepts it.
    pub eps: f64,
    /// Weight of each new batch in the running stats (default `Some(0.1)`); `None` keeps a
    /// cumulative average (momentum = 1 / num_batches_tracked).
    pub momentum: Option<f64>,
    /// Learnable gamma and beta (default true).
    pub affine: bool,
    /// Keep running stats and use them in inference (default true).
    pub track_running_stats: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
        }
    }
}

/// A batch-norm layer. New layers are in training mode, with gamma = 1, beta = 0,
/// running mean 0 and running variance 1.
///
/// A layer keeps, per input it has seen (the tensors' buffers and offsets), the prepared
/// dispatches and the statistics or gradients they write (`src/workspace.rs`): after the first
/// call on a given input, `record_forward` and `record_backward` create no buffers and no bind
/// groups. So the [`SavedStats`] of a forward and the `[dgamma | dbeta]` of a backward live in
/// the layer's buffers: the next call on the same tensors overwrites them, as it overwrites y
/// or dx.
pub struct BatchNorm {
    ctx: GpuContext,
    channels: usize,
    config: BatchNormConfig,
    affine: Option<ChannelPair>,
    running: Option<ChannelPair>,
    num_batches_tracked: u64,
    /// The batch count on the GPU (one u32), with momentum `None`: each training call advances
    /// it there, so that calls recorded before one submission each see their own.
    batches: Option<wgpu::Buffer>,
    training: bool,
    workspace: Mutex<Workspace>,
}

impl std::fmt::Debug for BatchNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchNorm")
            .field("channels", &self.channels)
            .field("config", &self.config)
            .field("num_batches_tracked", &self.num_batches_tracked)
            .field("training", &self.training)
            .finish()
    }
}

/// What a forward call returns: the output and the statistics the backward pass needs.
#[derive(Clone, Debug)]
pub struct ForwardOutput {
    /// The normalized output, shaped like the input.
    pub y: Tensor,
    /// Mean and invstd used (batch statistics in training, running ones in inference).
    pub saved: SavedStats,
}

impl BatchNorm {
    /// A layer over `channels` channels with PyTorch's default options.
    pub fn new(ctx: &GpuContext, channels: usize) -> Result<Self> {
        Self::with_config(ctx, channels, BatchNormConfig::default())
    }

    /// A layer with the given options; refuses a non-finite or negative eps and a momentum
    /// outside [0, 1].
    pub fn with_config(ctx: &GpuContext, channels: usize, config: BatchNormConfig) -> Result<Self> {
        crate::functional::check_eps(config.eps)?;
        if let Some(momentum) = config.momentum {
            if !(0.0..=1.0).contains(&momentum) {
                return Err(BatchNormError::InvalidMomentum(momentum));
            }
        }
        // Allocate on the GPU first: it refuses an impossible channel count before the host
        // builds the initial values.
        let filled = |first: f32, second: f32| -> Result<ChannelPair> {
            let pair = ChannelPair::zeros(ctx, channels)?;
            pair.write(&vec![first; channels], &vec![second; channels])?;
            Ok(pair)
        };
        let affine = config.affine.then(|| filled(1.0, 0.0)).transpose()?;
        let running = config
            .track_running_stats
            .then(|| filled(0.0, 1.0))
            .transpose()?;
        let batches = (config.track_running_stats && config.momentum.is_none())
            .then(|| {
                ctx.checked(|device| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("wgpu-batchnorm batch count"),
                        size: 4,
                        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                })
            })
            .transpose()?;
        Ok(BatchNorm {
            ctx: ctx.clone(),
            channels,
            config,
            affine,
            running,
            num_batches_tracked: 0,
            batches,
            training: true,
            workspace: Mutex::default(),
        })
    }

    /// Switches between training (batch statistics, running stats updated) and inference.
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    /// True in training mode.
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The options the layer was built with.
    pub fn config(&self) -> BatchNormConfig {
        self.config
    }

    /// Training calls seen so far, empty batches included, as PyTorch's module counts them
    /// (only while tracking running stats).
    pub fn num_batches_tracked(&self) -> u64 {
        self.num_batches_tracked
    }

    /// Sets the count of training batches (what a checkpoint holds); with momentum `None` it
    /// weighs the next batch by 1 / (count + 1).
    pub fn set_num_batches_tracked(&mut self, count: u64) {
        self.num_batches_tracked = count;
        if let Some(batches) = &self.batches {
            // The GPU's count is a u32 that stops at its largest value: past 4e9 batches a
            // batch's weight, 1 / count, no longer moves the running stats in f32.
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            self.ctx
                .queue()
                .write_buffer(batches, 0, bytemuck::bytes_of(&count));
        }
    }

    /// How many calls' dispatches the layer keeps prepared (see the type's docs).
    #[doc(hidden)]
    pub fn prepared_calls(&self) -> usize {
        lock(&self.workspace).len()
    }

    /// Forward pass; allocates the output.
    pub fn forward(&mut self, x: &Tensor) -> Result<ForwardOutput> {
        let y = x.output_like()?;
        let saved = self.forward_into(x, &y)?;
        Ok(ForwardOutput { y, saved })
    }

    /// Forward pass into `y`; submits and waits.
    pub fn forward_into(&mut self, x: &Tensor, y: &Tensor) -> Result<SavedStats> {
        let mut encoder = self
            .ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        let batches_before = self.num_batches_tracked;
        let saved = self.record_forward(&mut encoder, x, y, None)?;
        if let Err(error) = self.ctx.submit_and_wait(encoder) {
            // The submission was refused, so nothing ran: the batch does not count.
            self.num_batches_tracked = batches_before;
            return Err(error);
        }
        Ok(saved)
    }

    /// Records the forward pass into the caller's encoder: [`BatchNorm::record_forward_with`]
    /// without an epilogue.
    pub fn record_forward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        y: &Tensor,
        timestamps: Option<PassTimestamps<'_>>,
    ) -> Result<SavedStats> {
        self.record_forward_with(encoder, x, y, Epilogue::None, timestamps)
    }

    /// Records the forward pass, followed by `epilogue` in the same kernels, into the caller's
    /// encoder. In training with running stats, `num_batches_tracked` counts the batch now and
    /// the running stats change when the caller submits. As in PyTorch's module, an empty
    /// training batch counts too (it changes the weights of later batches when momentum is
    /// `None`) but leaves the running stats alone.
    pub fn record_forward_with(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        y: &Tensor,
        epilogue: Epilogue<'_>,
        timestamps: Option<PassTimestamps<'_>>,
    ) -> Result<SavedStats> {
        self.check_channels(x)?;
        let counts = self.training && self.running.is_some();
        let update = match (&self.running, self.config.momentum) {
            (None, _) => Update::None,
            (Some(_), Some(momentum)) => Update::Momentum(momentum as f32),
            (Some(_), None) => Update::Cumulative,
        };
        let args = ForwardArgs {
            affine: self.affine.as_ref(),
            running: self.running.as_ref(),
            // As PyTorch: without running stats, inference uses the batch statistics too.
            training: self.training || self.running.is_none(),
            momentum: self.config.momentum.unwrap_or(0.0),
            eps: self.config.eps,
            epilogue,
        };
        let call = describe_forward(x, y, &args, update)?;
        let saved = match &call.dispatches {
            None => {
                if counts && update == Update::Cumulative {
                    let buffers = Buffers {
                        batches: self.batches.as_ref(),
                        ..Buffers::default()
                    };
                    let prepared = prepare(&self.ctx, None, &[count_batch_step()], &buffers)?;
                    record_prepared(&self.ctx, encoder, FORWARD_LABEL, &prepared, timestamps)?;
                }
                call.saved(ChannelPair::zeros(&self.ctx, self.channels)?)
            }
            Some((plan, steps)) => {
                let kind = match call.source {
                    StatsSource::Batch => Kind::TrainingForward,
                    StatsSource::Running => Kind::InferenceForward,
                };
                let tensors: Vec<&Tensor> = [x, y].into_iter().chain(epilogue.shortcut()).collect();
                let key = Key::new(kind, epilogue.kind(), &tensors, &[]);
                let mut workspace = lock(&self.workspace);
                let (prepared, stats) = workspace.entry(key, &tensors, || {
                    let stats = ChannelPair::output(&self.ctx, self.channels)?;
                    let buffers = forward_buffers(x, y, &args, &stats, self.batches.as_ref());
                    Ok((prepare(&self.ctx, Some(plan), steps, &buffers)?, stats))
                })?;
                record_prepared(&self.ctx, encoder, FORWARD_LABEL, prepared, timestamps)?;
                call.saved(stats.clone())
            }
        };
        self.num_batches_tracked = self.num_batches_tracked.saturating_add(u64::from(counts));
        Ok(saved)
    }

    /// Backward pass: dx, and dgamma and dbeta when the layer is affine. `saved` is what the
    /// forward returned for this `x`.
    pub fn backward(&self, x: &Tensor, dy: &Tensor, saved: &SavedStats) -> Result<Gradients> {
        let dx = x.output_like()?;
        let params = self.backward_into(x, dy, &dx, saved)?;
        Ok(Gradients { dx, params })
    }

    /// Backward pass into `dx`; submits and waits. Returns `[dgamma | dbeta]` when affine.
    pub fn backward_into(
        &self,
        x: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
        saved: &SavedStats,
    ) -> Result<Option<ChannelPair>> {
        let mut encoder = self
            .ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        let grads = self.record_backward(&mut encoder, x, dy, dx, saved, None)?;
        self.ctx.submit_and_wait(encoder)?;
        Ok(grads)
    }

    /// Records the backward pass into the caller's encoder: [`BatchNorm::record_backward_with`]
    /// for a forward without an epilogue.
    pub fn record_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
        saved: &SavedStats,
        timestamps: Option<PassTimestamps<'_>>,
    ) -> Result<Option<ChannelPair>> {
        self.record_backward_with(encoder, x, dy, dx, saved, EpilogueGrad::None, timestamps)
    }

    /// Records the backward pass of a forward that ran with an epilogue (`epilogue` names its
    /// output y, and dz for add-ReLU) into the caller's encoder. Returns `[dgamma | dbeta]`
    /// when affine, in the layer's buffer for these tensors (the next backward on them
    /// overwrites it).
    #[allow(clippy::too_many_arguments)]
    pub fn record_backward_with(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
        saved: &SavedStats,
        epilogue: EpilogueGrad<'_>,
        timestamps: Option<PassTimestamps<'_>>,
    ) -> Result<Option<ChannelPair>> {
        self.check_channels(x)?;
        let affine = self.affine.as_ref();
        let Some((plan, steps)) = describe_backward(x, dy, dx, saved, affine, &epilogue)? else {
            // Over an empty batch dgamma and dbeta are sums over nothing: zeros.
            return affine
                .map(|_| ChannelPair::zeros(&self.ctx, self.channels))
                .transpose();
        };
        let kind = Kind::Backward {
            batch_stats: saved.source() == StatsSource::Batch,
        };
        let tensors: Vec<&Tensor> = [x, dy, dx]
            .into_iter()
            .chain(epilogue.forward_output())
            .chain(epilogue.shortcut_grad())
            .collect();
        let key = Key::new(kind, epilogue.kind(), &tensors, &[saved.pair().buffer()]);
        let mut workspace = lock(&self.workspace);
        let (prepared, grads) = workspace.entry(key, &tensors, || {
            let grads = ChannelPair::output(&self.ctx, self.channels)?;
            let buffers = backward_buffers(x, dy, dx, saved, affine, &epilogue, &grads);
            Ok((prepare(&self.ctx, Some(&plan), &steps, &buffers)?, grads))
        })?;
        record_prepared(&self.ctx, encoder, BACKWARD_LABEL, prepared, timestamps)?;
        Ok(affine.map(|_| grads.clone()))
    }

    /// `[gamma | beta]` on the GPU, when affine.
    pub fn affine(&self) -> Option<&ChannelPair> {
        self.affine.as_ref()
    }

    /// `[running_mean | running_var]` on the GPU, when tracked.
    pub fn running_stats(&self) -> Option<&ChannelPair> {
        self.running.as_ref()
    }

    /// Downloads `(gamma, beta)`; an error when the layer is not affine.
    pub fn parameters(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        self.affine_pair()?.read()
    }

    /// Uploads gamma and beta (each of `channels` values, converted to f32: half-precision
    /// parameters are kept in f32, as PyTorch keeps them); nothing is written when refused.
    pub fn set_parameters<T: Element>(&mut self, gamma: &[T], beta: &[T]) -> Result<()> {
        let pair = self.affine_pair()?;
        check_len("gamma", gamma, self.channels)?;
        check_len("beta", beta, self.channels)?;
        pair.write(gamma, beta)
    }

    /// Downloads `(running_mean, running_var)`; an error when they are not tracked.
    pub fn running_statistics(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        self.running_pair()?.read()
    }

    /// Uploads the running mean and variance; nothing is written when refused.
    pub fn set_running_statistics<T: Element>(&mut self, mean: &[T], var: &[T]) -> Result<()> {
        let pair = self.running_pair()?;
        check_len("running_mean", mean, self.channels)?;
        check_len("running_var", var, self.channels)?;
        pair.write(mean, var)
    }

    fn affine_pair(&self) -> Result<&ChannelPair> {
        self.affine.as_ref().ok_or(BatchNormError::Unsupported(
            "this batch norm has no gamma and beta (affine = false)",
        ))
    }

    fn running_pair(&self) -> Result<&ChannelPair> {
        self.running.as_ref().ok_or(BatchNormError::Unsupported(
            "this batch norm keeps no running stats (track_running_stats = false)",
        ))
    }

    pub(crate) fn check_channels(&self, x: &Tensor) -> Result<()> {
        if x.channels() != self.channels {
            return Err(BatchNormError::ChannelMismatch {
                what: "the batch norm was built for",
                expected: self.channels,
                actual: x.channels(),
            });
        }
        if !x.context().same_as(&self.ctx) {
            return Err(BatchNormError::ContextMismatch);
        }
        Ok(())
    }
}

fn check_len<T>(what: &'static str, values: &[T], channels: usize) -> Result<()> {
    if values.len() == channels {
        Ok(())
    } else {
        Err(BatchNormError::ParameterLength {
            what,
            expected: channels,
            actual: values.len(),
        })
    }
}
