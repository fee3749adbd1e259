//! [`SyncBatchNorm`]: a [`BatchNorm`] whose training calls merge every rank's statistics, as
//! PyTorch's `torch.nn.SyncBatchNorm`. Each training call runs in two halves around an
//! exchange (see the module docs of `crate::sync` for the whole sequence):
//!
//! 1. this rank's half: its statistics (or gradient sums) recorded after the caller's work in
//!    the caller's encoder, which is submitted, and read back with the running stats;
//! 2. the exchange: a header from every rank, then every rank's per-channel values;
//! 3. the host's merge, in rank order in f64 (`merge.rs`), identical on every rank;
//! 4. the second half, recorded into a fresh encoder that replaces the caller's: y (or dx)
//!    from the merged values, which the call uploads with the queue.

use std::sync::{Mutex, MutexGuard};

use super::error::SyncError;
use super::exchange::Exchange;
use super::merge::{gradient_means, merge_moments};
use super::protocol::{
    agree, payload, read_payloads, Header, Operation, RankVectors, RunningUpdate, Status,
};
use crate::batch_norm::BatchNorm;
use crate::encode::{prepare, record_prepared, Buffers};
use crate::epilogue::kind::EpilogueKind;
use crate::epilogue::{Epilogue, EpilogueGrad};
use crate::error::BatchNormError;
use crate::functional::{
    check_forward_operands, describe_backward, ForwardArgs, Gradients, SavedStats, StatsSource,
};
use crate::gpu::GpuContext;
use crate::plan::{plan, Operation as PlanOperation, Plan};
use crate::steps::{sync_steps, Operands, SyncHalf};
use crate::tensor::{ChannelPair, Tensor};
use crate::workspace::{Key, Kind, Workspace};

/// The label of a synchronized call's compute passes.
const LABEL: &str = "synchronized batch norm";

/// What a synchronized layer's forward saved for its backward: the statistics, and whether
/// they were merged over the ranks (a training call) or are this rank's own (inference), which
/// decides whether the backward exchanges too, as in PyTorch.
#[derive(Clone, Debug)]
pub struct SyncSavedStats {
    stats: SavedStats,
    synchronized: bool,
}

impl SyncSavedStats {
    /// The statistics: in training, the mean and invstd merged over every rank, bitwise the
    /// same on every rank.
    pub fn stats(&self) -> &SavedStats {
        &self.stats
    }

    /// True when they were merged over the ranks.
    pub fn is_synchronized(&self) -> bool {
        self.synchronized
    }
}

/// What a synchronized forward returns: this rank's output and the saved statistics.
#[derive(Clone, Debug)]
pub struct SyncForwardOutput {
    /// This rank's shard of the output.
    pub y: Tensor,
    /// What the backward needs.
    pub saved: SyncSavedStats,
}

/// A batch-norm layer synchronized over the ranks of a group (`torch.nn.SyncBatchNorm`).
///
/// In training, the forward normalizes each rank's shard with the statistics of every rank's
/// values together, and updates the running stats with them (every rank the same), and the
/// backward sums (dgamma, dbeta) over the ranks before each rank computes its dx. dgamma and
/// dbeta themselves stay each rank's own, as PyTorch returns them: a data-parallel trainer sums
/// parameter gradients over the ranks anyway. Inference, and the backward of an inference
/// forward, are each rank's own (running statistics), as in PyTorch.
///
/// Tensors may be f32, f16 or bf16, the same type on every rank; the calls take no epilogue
/// (`crate::epilogue`), unlike [`BatchNorm::record_forward_with`].
///
/// Every rank calls the same methods in the same order with the same [`Exchange`] group; a
/// rank with an empty shard calls them too. A call that one rank refuses, every rank refuses,
/// and no layer changes its state.
pub struct SyncBatchNorm {
    layer: BatchNorm,
    workspace: Mutex<Workspace>,
    /// A host-readable buffer the first half's values come back through, reused.
    readback: Mutex<Option<wgpu::Buffer>>,
}

impl std::fmt::Debug for SyncBatchNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncBatchNorm")
            .field("layer", &self.layer)
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Entries are inserted whole; take over from a thread that panicked holding the lock.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How the header describes the layer's running-statistics update.
fn running_update(layer: &BatchNorm) -> RunningUpdate {
    match (layer.running_stats(), layer.config().momentum) {
        (None, _) => RunningUpdate::Untracked,
        (Some(_), None) => RunningUpdate::Cumulative,
        (Some(_), Some(momentum)) => RunningUpdate::Momentum(momentum),
    }
}

impl SyncBatchNorm {
    /// Synchronizes `layer` (its parameters, running stats, mode and options as they are),
    /// as PyTorch's `SyncBatchNorm.convert_sync_batchnorm`.
    pub fn new(layer: BatchNorm) -> Self {
        SyncBatchNorm {
            layer,
            workspace: Mutex::default(),
            readback: Mutex::new(None),
        }
    }

    /// The layer: parameters, running stats, options, checkpoints.
    pub fn layer(&self) -> &BatchNorm {
        &self.layer
    }

    /// The layer, to set parameters, running stats or the training mode.
    pub fn layer_mut(&mut self) -> &mut BatchNorm {
        &mut self.layer
    }

    /// The layer back, unsynchronized.
    pub fn into_inner(self) -> BatchNorm {
        self.layer
    }

    /// Forward pass; allocates this rank's output, submits and waits.
    pub fn forward(
        &mut self,
        x: &Tensor,
        exchange: &dyn Exchange,
    ) -> Result<SyncForwardOutput, SyncError> {
        let y = x.output_like()?;
        let saved = self.forward_into(x, &y, exchange)?;
        Ok(SyncForwardOutput { y, saved })
    }

    /// Forward pass into `y`; submits and waits.
    pub fn forward_into(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        exchange: &dyn Exchange,
    ) -> Result<SyncSavedStats, SyncError> {
        let ctx = x.context().clone();
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        let batches_before = self.layer.num_batches_tracked();
        let saved = self.record_forward(&mut encoder, x, y, exchange)?;
        if let Err(error) = ctx.submit_and_wait(encoder) {
            self.layer.set_num_batches_tracked(batches_before);
            return Err(error.into());
        }
        Ok(saved)
    }

    /// Records the forward pass. In training this rank's statistics need x, so the call
    /// submits what `encoder` holds (the caller's work so far, then this rank's statistics),
    /// exchanges, and leaves in `encoder` a fresh encoder holding the normalization, for the
    /// caller to go on recording into and submit. The merged statistics and running stats it
    /// reads are uploaded with the queue, so submit encoders in the order of the calls.
    /// In inference it records into `encoder` as [`BatchNorm::record_forward`] does.
    pub fn record_forward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        y: &Tensor,
        exchange: &dyn Exchange,
    ) -> Result<SyncSavedStats, SyncError> {
        if !self.layer.is_training() {
            let stats = self.layer.record_forward(encoder, x, y, None)?;
            return Ok(SyncSavedStats {
                stats,
                synchronized: false,
            });
        }
        let checked = self.check_forward(x, y);
        let counts = self.exchange_headers(
            exchange,
            Operation::ForwardStatistics,
            x,
            checked.as_ref().err(),
        );
        let plan = checked?;
        let counts = counts?;
        if counts.iter().sum::<u64>() < 2 {
            return Err(SyncError::TooFewValues { counts });
        }
        let ctx = x.context();
        let running = self.layer.running_stats().cloned();
        // This rank's (mean, M2), then its running stats, as one readback.
        let local = self.statistics_half(encoder, x, plan.as_ref(), running.as_ref());
        let ((moments, running_before), shards) =
            exchange_payloads(exchange, self.layer.channels(), local, |(moments, _)| {
                moments
            })?;
        debug_assert_eq!(moments.len(), 2 * self.layer.channels());
        let merged = merge_moments(&counts, &shards);
        let (mean, invstd) = merged.mean_invstd(self.layer.config().eps);
        let saved = match &plan {
            Some(plan) => {
                let mut workspace = lock(&self.workspace);
                let (prepared, saved) = workspace.entry(
                    Key::new(Kind::SyncNormalize, EpilogueKind::None, &[x, y], &[]),
                    &[x, y],
                    || {
                        let saved = ChannelPair::output(ctx, self.layer.channels())?;
                        let operands = Operands {
                            affine: self.layer.affine().is_some(),
                            x: x.offset(),
                            y: y.offset(),
                            inputs_share_output_buffer: x.buffer() == y.buffer(),
                            ..Operands::default()
                        };
                        let steps = sync_steps(plan, SyncHalf::Normalize, &operands);
                        let buffers = Buffers {
                            x: Some((x.buffer(), x.offset())),
                            y: Some((y.buffer(), y.offset())),
                            stats: Some(saved.buffer()),
                            affine: self.layer.affine().map(ChannelPair::buffer),
                            ..Buffers::default()
                        };
                        Ok((prepare(ctx, Some(plan), &steps, &buffers)?, saved))
                    },
                )?;
                saved.write(&mean, &invstd)?;
                record_prepared(ctx, encoder, LABEL, prepared, None)?;
                saved.clone()
            }
            None => ChannelPair::new(ctx, &mean, &invstd)?,
        };
        if let Some(running) = &running {
            let batches = self.layer.num_batches_tracked().saturating_add(1);
            let momentum = self.layer.config().momentum.unwrap_or(1.0 / batches as f64);
            let channels = self.layer.channels();
            let (running_mean, running_var) = running_before.split_at(channels);
            let (new_mean, new_var) = merged.updated_running(running_mean, running_var, momentum);
            running.write(&new_mean, &new_var)?;
            self.layer.set_num_batches_tracked(batches);
        }
        Ok(SyncSavedStats {
            stats: SavedStats::new(saved, x.shape(), x.layout(), StatsSource::Batch),
            synchronized: true,
        })
    }

    /// Backward pass; allocates this rank's dx, submits and waits. Returns dx and this rank's
    /// own `[dgamma | dbeta]` when affine.
    pub fn backward(
        &self,
        x: &Tensor,
        dy: &Tensor,
        saved: &SyncSavedStats,
        exchange: &dyn Exchange,
    ) -> Result<Gradients, SyncError> {
        let dx = x.output_like()?;
        let params = self.backward_into(x, dy, &dx, saved, exchange)?;
        Ok(Gradients { dx, params })
    }

    /// Backward pass into `dx`; submits and waits.
    pub fn backward_into(
        &self,
        x: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
        saved: &SyncSavedStats,
        exchange: &dyn Exchange,
    ) -> Result<Option<ChannelPair>, SyncError> {
        let ctx = x.context();
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        let params = self.record_backward(&mut encoder, x, dy, dx, saved, exchange)?;
        ctx.submit_and_wait(encoder)?;
        Ok(params)
    }

    /// Records the backward pass. Through synchronized statistics it submits what `encoder`
    /// holds (the caller's work, then this rank's gradient sums), exchanges, and leaves in
    /// `encoder` a fresh encoder holding dx, as [`SyncBatchNorm::record_forward`] does. Through
    /// an inference forward's statistics it records into `encoder` alone. Returns this rank's
    /// own `[dgamma | dbeta]` when affine (their sum over the ranks is the whole batch's).
    pub fn record_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
        saved: &SyncSavedStats,
        exchange: &dyn Exchange,
    ) -> Result<Option<ChannelPair>, SyncError> {
        if !saved.synchronized {
            return Ok(self
                .layer
                .record_backward(encoder, x, dy, dx, &saved.stats, None)?);
        }
        let affine = self.layer.affine();
        let checked = self
            .layer
            .check_channels(x)
            .and_then(|()| describe_backward(x, dy, dx, &saved.stats, affine, &EpilogueGrad::None))
            .map(|described| described.map(|(plan, _)| plan));
        let counts =
            self.exchange_headers(exchange, Operation::BackwardSums, x, checked.as_ref().err());
        let plan = checked?;
        let counts = counts?;
        let ctx = x.context();
        let channels = self.layer.channels();
        let local = self.gradient_half(encoder, x, dy, &saved.stats, plan.as_ref());
        let ((_, grads), shards) = exchange_payloads(exchange, channels, local, |(sums, _)| sums)?;
        let (mean_dy_xhat, mean_dy) = gradient_means(&shards, counts.iter().sum());
        if let Some(plan) = &plan {
            let mut workspace = lock(&self.workspace);
            let key = Key::new(
                Kind::SyncInputGradient,
                EpilogueKind::None,
                &[x, dy, dx],
                &[saved.stats.pair().buffer()],
            );
            let (prepared, means) = workspace.entry(key, &[x, dy, dx], || {
                let means = ChannelPair::output(ctx, channels)?;
                let operands = Operands {
                    affine: affine.is_some(),
                    x: x.offset(),
                    dy: dy.offset(),
                    dx: dx.offset(),
                    inputs_share_output_buffer: x.buffer() == dx.buffer()
                        || dy.buffer() == dx.buffer(),
                    ..Operands::default()
                };
                let steps = sync_steps(plan, SyncHalf::InputGradient, &operands);
                let buffers = Buffers {
                    x: Some((x.buffer(), x.offset())),
                    dy: Some((dy.buffer(), dy.offset())),
                    dx: Some((dx.buffer(), dx.offset())),
                    stats: Some(saved.stats.pair().buffer()),
                    affine: affine.map(ChannelPair::buffer),
                    grads: Some(means.buffer()),
                    ..Buffers::default()
                };
                Ok((prepare(ctx, Some(plan), &steps, &buffers)?, means))
            })?;
            means.write(&mean_dy_xhat, &mean_dy)?;
            record_prepared(ctx, encoder, LABEL, prepared, None)?;
        }
        Ok(affine.map(|_| grads))
    }

    /// Checks a training forward (everything but the values per channel, which only the
    /// ranks together can judge) and plans its statistics (`None` for an empty shard).
    fn check_forward(&self, x: &Tensor, y: &Tensor) -> Result<Option<Plan>, BatchNormError> {
        self.layer.check_channels(x)?;
        let config = self.layer.config();
        let args = ForwardArgs {
            affine: self.layer.affine(),
            running: self.layer.running_stats(),
            training: true,
            momentum: config.momentum.unwrap_or(0.0),
            eps: config.eps,
            epilogue: Epilogue::None,
        };
        check_forward_operands(x, y, &args)?;
        if x.is_empty() {
            return Ok(None);
        }
        Ok(Some(plan(
            x.view(),
            x.dtype(),
            x.context().plan_limits(),
            PlanOperation::TrainingForward,
        )?))
    }

    /// Exchanges headers (this rank's carries x's values per channel and dtype, and whether it
    /// refused its arguments) and returns each rank's count once every rank agrees.
    fn exchange_headers(
        &self,
        exchange: &dyn Exchange,
        operation: Operation,
        x: &Tensor,
        refused: Option<&BatchNormError>,
    ) -> Result<Vec<u64>, SyncError> {
        let status = match refused {
            Some(_) => Status::RefusedArguments,
            None => Status::Ready,
        };
        let config = self.layer.config();
        let header = Header::new(
            operation,
            status,
            self.layer.channels(),
            x.dtype(),
            config.eps,
            running_update(&self.layer),
            x.view().values_per_channel() as u64,
        );
        let gathered = exchange.all_gather(&header.encode())?;
        agree(&gathered, exchange.ranks())
    }

    /// Records this rank's (mean, M2) after the caller's work, submits, and reads them back
    /// with the running stats.
    fn statistics_half(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        plan: Option<&Plan>,
        running: Option<&ChannelPair>,
    ) -> Result<(Vec<f32>, Vec<f32>), BatchNormError> {
        let ctx = x.context();
        let channels = self.layer.channels();
        let moments = match plan {
            Some(plan) => {
                let mut workspace = lock(&self.workspace);
                let (prepared, moments) = workspace.entry(
                    Key::new(Kind::SyncStatistics, EpilogueKind::None, &[x], &[]),
                    &[x],
                    || {
                        let moments = ChannelPair::output(ctx, channels)?;
                        let operands = Operands {
                            x: x.offset(),
                            ..Operands::default()
                        };
                        let steps = sync_steps(plan, SyncHalf::Statistics, &operands);
                        let buffers = Buffers {
                            x: Some((x.buffer(), x.offset())),
                            stats: Some(moments.buffer()),
                            ..Buffers::default()
                        };
                        Ok((prepare(ctx, Some(plan), &steps, &buffers)?, moments))
                    },
                )?;
                record_prepared(ctx, encoder, LABEL, prepared, None)?;
                Some(moments.clone())
            }
            None => None,
        };
        let values = self.submit_and_read(ctx, encoder, &[moments.as_ref(), running])?;
        let mut values = values.into_iter();
        let mut next = |pair: Option<&ChannelPair>| match pair {
            Some(_) => values.next().expect("one read per pair"),
            None => vec![0.0; 2 * channels],
        };
        let moments = next(moments.as_ref());
        Ok((moments, next(running)))
    }

    /// Records this rank's dgamma and dbeta after the caller's work, submits, and reads them
    /// back.
    fn gradient_half(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        dy: &Tensor,
        saved: &SavedStats,
        plan: Option<&Plan>,
    ) -> Result<(Vec<f32>, ChannelPair), BatchNormError> {
        let ctx = x.context();
        let channels = self.layer.channels();
        let affine = self.layer.affine();
        let grads = match plan {
            Some(plan) => {
                let mut workspace = lock(&self.workspace);
                let key = Key::new(
                    Kind::SyncGradientSums,
                    EpilogueKind::None,
                    &[x, dy],
                    &[saved.pair().buffer()],
                );
                let (prepared, grads) = workspace.entry(key, &[x, dy], || {
                    let grads = ChannelPair::output(ctx, channels)?;
                    let operands = Operands {
                        affine: affine.is_some(),
                        x: x.offset(),
                        dy: dy.offset(),
                        ..Operands::default()
                    };
                    let steps = sync_steps(plan, SyncHalf::GradientSums, &operands);
                    let buffers = Buffers {
                        x: Some((x.buffer(), x.offset())),
                        dy: Some((dy.buffer(), dy.offset())),
                        stats: Some(saved.pair().buffer()),
                        affine: affine.map(ChannelPair::buffer),
                        grads: Some(grads.buffer()),
                        ..Buffers::default()
                    };
                    Ok((prepare(ctx, Some(plan), &steps, &buffers)?, grads))
                })?;
                record_prepared(ctx, encoder, LABEL, prepared, None)?;
                grads.clone()
            }
            // Over an empty shard dgamma and dbeta are sums over nothing: zeros.
            None => ChannelPair::zeros(ctx, channels)?,
        };
        let read = self.submit_and_read(ctx, encoder, &[plan.map(|_| &grads)])?;
        let sums = read
            .into_iter()
            .next()
            .unwrap_or_else(|| vec![0.0; 2 * channels]);
        Ok((sums, grads))
    }

    /// Copies `pairs` after the work in `encoder`, submits it (leaving a fresh encoder in its
    /// place), waits, and returns each pair's `[first | second]`.
    fn submit_and_read(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        pairs: &[Option<&ChannelPair>],
    ) -> Result<Vec<Vec<f32>>, BatchNormError> {
        let pairs: Vec<&ChannelPair> = pairs.iter().flatten().copied().collect();
        let bytes: Vec<u64> = pairs.iter().map(|p| 8 * p.channels() as u64).collect();
        let total: u64 = bytes.iter().sum();
        let mut readback = lock(&self.readback);
        if readback.as_ref().is_none_or(|b| b.size() < total) {
            *readback = Some(ctx.checked(|device| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-batchnorm synchronized readback"),
                    size: total.max(8),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })?);
        }
        let staging = readback.as_ref().expect("just made");
        ctx.checked(|_| {
            let mut at = 0;
            for (pair, &size) in pairs.iter().zip(&bytes) {
                if size > 0 {
                    encoder.copy_buffer_to_buffer(pair.buffer(), 0, staging, at, size);
                }
                at += size;
            }
        })?;
        let fresh = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        ctx.submit_and_wait(std::mem::replace(encoder, fresh))?;
        if total == 0 {
            return Ok(pairs.iter().map(|_| Vec::new()).collect());
        }
        let words: Vec<f32> = bytemuck::pod_collect_to_vec(&ctx.read_mapped(
            staging,
            total,
            "a synchronized readback could not map its buffer",
        )?);
        let mut at = 0;
        Ok(bytes
            .iter()
            .map(|&size| {
                let floats = (size / 4) as usize;
                let part = words[at..at + floats].to_vec();
                at += floats;
                part
            })
            .collect())
    }
}

/// Sends this rank's two per-channel vectors of `channels` values (`vectors` of its first
/// half's result) or, when its first half failed, a status that says so with zeros in their
/// place, and returns its result with every rank's vectors. Every rank calls it whatever
/// happened, so no rank waits for one that failed, and sends as many words (an all-gather of
/// unequal counts is erroneous in MPI), so the others read the status and refuse.
fn exchange_payloads<T>(
    exchange: &dyn Exchange,
    channels: usize,
    local: Result<T, BatchNormError>,
    vectors: impl Fn(&T) -> &[f32],
) -> Result<(T, Vec<RankVectors>), SyncError> {
    let words = match &local {
        Ok(values) => {
            let (first, second) = vectors(values).split_at(vectors(values).len() / 2);
            payload(Status::Ready, first, second)
        }
        Err(_) => {
            let zeros = vec![0.0; channels];
            payload(Status::GpuFailed, &zeros, &zeros)
        }
    };
    let gathered = exchange.all_gather(&words);
    let local = local?;
    Ok((
        local,
        read_payloads(&gathered?, exchange.ranks(), channels)?,
    ))
}
