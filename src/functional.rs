//! The functional form of batch norm, as PyTorch's `F.batch_norm`: the caller holds the
//! parameters and running stats. [`crate::BatchNorm`] is built on these calls.
//!
//! Each operation comes three ways: allocating (`batch_norm`), into an output the caller
//! allocated (`batch_norm_into`), and recorded into the caller's command encoder
//! (`record_batch_norm`), which submits nothing. Every check runs before any GPU work, so a
//! refused call changes nothing.

use crate::encode::{record, Buffers, PassTimestamps};
use crate::epilogue::kind::EpilogueKind;
use crate::epilogue::{Epilogue, EpilogueGrad};
use crate::error::{BatchNormError, Result};
use crate::layout::Layout;
use crate::plan::{plan, Operation, Plan};
use crate::steps::{steps, Call, Operands, Step, Update};
use crate::tensor::{ChannelPair, Tensor};

/// The arguments of a forward call besides the input.
#[derive(Clone, Copy, Debug)]
pub struct ForwardArgs<'a> {
    /// `[gamma | beta]`; `None` means gamma = 1, beta = 0 (`affine = False`).
    pub affine: Option<&'a ChannelPair>,
    /// `[running_mean | running_var]`. Updated in training; used instead of batch statistics
    /// when not training.
    pub running: Option<&'a ChannelPair>,
    /// Normalize with the batch's own statistics (and update `running` if given).
    pub training: bool,
    /// Weight of the new batch in the running stats, in [0, 1].
    pub momentum: f64,
    /// Added to the variance; finite and >= 0, and > 0 when normalizing with batch
    /// statistics (as PyTorch 2.15).
    pub eps: f64,
    /// What follows the normalization in the same kernels (`crate::epilogue`).
    pub epilogue: Epilogue<'a>,
}

/// Which statistics a forward pass normalized with, and so which backward applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsSource {
    /// The batch's own mean and biased variance: gradients flow through them.
    Batch,
    /// The running stats: constants for the backward pass.
    Running,
}

/// The per-channel mean and inverse standard deviation a forward pass used, kept on the GPU
/// for the backward pass.
#[derive(Clone, Debug)]
pub struct SavedStats {
    mean_invstd: ChannelPair,
    shape: Vec<usize>,
    layout: Layout,
    source: StatsSource,
    epilogue: EpilogueKind,
}

impl SavedStats {
    /// Downloads `(mean, invstd)`. For an empty batch both are zero.
    pub fn read(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        self.mean_invstd.read()
    }

    /// Whether these are batch or running statistics.
    pub fn source(&self) -> StatsSource {
        self.source
    }

    /// The input shape they were computed for.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Statistics of `source` for an input of `shape` and `layout`, in `mean_invstd`, from a
    /// forward with no epilogue (a synchronized call's: `crate::sync` takes none).
    pub(crate) fn new(
        mean_invstd: ChannelPair,
        shape: &[usize],
        layout: Layout,
        source: StatsSource,
    ) -> Self {
        SavedStats {
            mean_invstd,
            shape: shape.to_vec(),
            layout,
            source,
            epilogue: EpilogueKind::None,
        }
    }

    /// The epilogue of the forward that saved them (its backward must take the same one).
    pub fn epilogue(&self) -> EpilogueKind {
        self.epilogue
    }

    /// `[mean | invstd]` on the GPU.
    pub(crate) fn pair(&self) -> &ChannelPair {
        &self.mean_invstd
    }
}

/// Gradients of one backward call.
#[derive(Clone, Debug)]
pub struct Gradients {
    /// dL/dx, shaped like x.
    pub dx: Tensor,
    /// `[dgamma | dbeta]`, when the call had affine parameters.
    pub params: Option<ChannelPair>,
}

/// Forward pass; allocates and returns the output with the statistics it used.
pub fn batch_norm(x: &Tensor, args: &ForwardArgs<'_>) -> Result<(Tensor, SavedStats)> {
    let y = x.output_like()?;
    let saved = batch_norm_into(x, &y, args)?;
    Ok((y, saved))
}

/// Forward pass into `y` (same shape and layout as `x`); submits and waits.
pub fn batch_norm_into(x: &Tensor, y: &Tensor, args: &ForwardArgs<'_>) -> Result<SavedStats> {
    let ctx = x.context();
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    let saved = record_batch_norm(&mut encoder, x, y, args, None)?;
    ctx.submit_and_wait(encoder)?;
    Ok(saved)
}

/// Records the forward pass into `encoder` as one compute pass; nothing runs until the caller
/// submits. The running stats are updated by that submission.
pub fn record_batch_norm(
    encoder: &mut wgpu::CommandEncoder,
    x: &Tensor,
    y: &Tensor,
    args: &ForwardArgs<'_>,
    timestamps: Option<PassTimestamps<'_>>,
) -> Result<SavedStats> {
    let update = match args.running {
        Some(_) => Update::Momentum(args.momentum as f32),
        None => Update::None,
    };
    let forward = describe_forward(x, y, args, update)?;
    let ctx = x.context();
    let Some((plan, steps)) = &forward.dispatches else {
        // An empty batch's statistics are documented as zeros.
        return Ok(forward.saved(ChannelPair::zeros(ctx, x.channels())?));
    };
    let saved = ChannelPair::output(ctx, x.channels())?;
    let buffers = forward_buffers(x, y, args, &saved, None);
    record(
        ctx,
        encoder,
        FORWARD_LABEL,
        plan,
        steps,
        &buffers,
        timestamps,
    )?;
    Ok(forward.saved(saved))
}

/// The label of a forward's compute pass.
pub(crate) const FORWARD_LABEL: &str = "batch norm forward";
/// The label of a backward's compute pass.
pub(crate) const BACKWARD_LABEL: &str = "batch norm backward";

/// A checked forward call: which statistics it normalizes with, and its plan and steps
/// (`None` for an empty batch, which dispatches nothing).
pub(crate) struct ForwardCall {
    pub source: StatsSource,
    shape: Vec<usize>,
    layout: Layout,
    epilogue: EpilogueKind,
    pub dispatches: Option<(Plan, Vec<Step>)>,
}

impl ForwardCall {
    /// What the call saves, in `mean_invstd`.
    pub fn saved(&self, mean_invstd: ChannelPair) -> SavedStats {
        SavedStats {
            mean_invstd,
            shape: self.shape.clone(),
            layout: self.layout,
            source: self.source,
            epilogue: self.epilogue,
        }
    }
}

/// Checks a forward call (everything, before any GPU work) and plans its dispatches, the
/// running stats updated as `update` says.
pub(crate) fn describe_forward(
    x: &Tensor,
    y: &Tensor,
    args: &ForwardArgs<'_>,
    update: Update,
) -> Result<ForwardCall> {
    check_forward(x, y, args)?;
    let source = if args.training {
        StatsSource::Batch
    } else {
        StatsSource::Running
    };
    let epilogue = args.epilogue.kind();
    let mut call = ForwardCall {
        source,
        shape: x.shape().to_vec(),
        layout: x.layout(),
        epilogue,
        dispatches: None,
    };
    if x.is_empty() {
        return Ok(call);
    }
    let (operation, kind) = match source {
        StatsSource::Batch => (
            Operation::TrainingForward,
            Call::TrainingForward {
                update,
                eps: args.eps as f32,
                epilogue,
            },
        ),
        StatsSource::Running => (
            Operation::InferenceForward,
            Call::InferenceForward {
                eps: args.eps as f32,
                epilogue,
            },
        ),
    };
    let plan = plan(x.view(), x.dtype(), x.context().plan_limits(), operation)?;
    let z = args.epilogue.shortcut();
    let operands = Operands {
        affine: args.affine.is_some(),
        x: x.offset(),
        y: y.offset(),
        z: z.map_or(0, Tensor::offset),
        inputs_share_output_buffer: x.buffer() == y.buffer()
            || z.is_some_and(|z| z.buffer() == y.buffer()),
        ..Operands::default()
    };
    let steps = steps(&plan, kind, &operands);
    call.dispatches = Some((plan, steps));
    Ok(call)
}

/// The buffers of a forward call, the statistics saved into `saved`.
pub(crate) fn forward_buffers<'a>(
    x: &'a Tensor,
    y: &'a Tensor,
    args: &ForwardArgs<'a>,
    saved: &'a ChannelPair,
    batches: Option<&'a wgpu::Buffer>,
) -> Buffers<'a> {
    Buffers {
        x: Some((x.buffer(), x.offset())),
        y: Some((y.buffer(), y.offset())),
        z: args.epilogue.shortcut().map(|z| (z.buffer(), z.offset())),
        stats: Some(saved.buffer()),
        affine: args.affine.map(ChannelPair::buffer),
        running: args.running.map(ChannelPair::buffer),
        batches,
        ..Buffers::default()
    }
}

/// Refuses an input and an output (or two outputs) that overlap in one buffer (wgpu would
/// reject the dispatch, and in-place normalization is not what a kernel that reads x twice
/// computes). Ranges are compared in whole words: a half tensor's odd last element shares its
/// word with what follows it.
fn check_no_overlap(
    inputs: &[(&'static str, &Tensor)],
    outputs: &[(&'static str, &Tensor)],
) -> Result<()> {
    let words = |t: &Tensor| {
        let range = t.byte_range();
        range.start..range.end.next_multiple_of(4)
    };
    for (k, &(output_name, output)) in outputs.iter().enumerate() {
        for &(input_name, input) in inputs.iter().chain(&outputs[k + 1..]) {
            let (a, b) = (words(input), words(output));
            if input.buffer() == output.buffer() && a.start < b.end && b.start < a.end {
                return Err(BatchNormError::OverlappingViews {
                    input: input_name,
                    input_start: a.start,
                    input_end: a.end,
                    output: output_name,
                    output_start: b.start,
                    output_end: b.end,
                });
            }
        }
    }
    Ok(())
}

fn check_forward(x: &Tensor, y: &Tensor, args: &ForwardArgs<'_>) -> Result<()> {
    check_forward_operands(x, y, args)?;
    let values = x.view().values_per_channel();
    if args.training && values == 1 {
        return Err(BatchNormError::TooFewValuesPerChannel {
            shape: x.shape().to_vec(),
            values,
        });
    }
    Ok(())
}

/// Every check of a forward call but the count of values per channel, which a synchronized
/// call (`crate::sync`) can only judge over every rank's shard.
pub(crate) fn check_forward_operands(x: &Tensor, y: &Tensor, args: &ForwardArgs<'_>) -> Result<()> {
    x.check_same_shape(y, "the output y")?;
    let mut inputs = vec![("the input x", x)];
    if let Some(z) = args.epilogue.shortcut() {
        x.check_same_shape(z, "the shortcut z")?;
        inputs.push(("the shortcut z", z));
    }
    check_no_overlap(&inputs, &[("the output y", y)])?;
    if args.training && args.eps.is_finite() && args.eps <= 0.0 {
        return Err(BatchNormError::EpsNotPositiveInTraining(args.eps));
    }
    check_eps(args.eps)?;
    if !(0.0..=1.0).contains(&args.momentum) {
        return Err(BatchNormError::InvalidMomentum(args.momentum));
    }
    check_pair(x, args.affine, "gamma and beta (ForwardArgs::affine) hold")?;
    check_pair(
        x,
        args.running,
        "the running stats (ForwardArgs::running) hold",
    )?;
    if !args.training && args.running.is_none() {
        return Err(BatchNormError::Unsupported(
            "inference with running statistics needs running stats: pass them, or use \
             training = true (what PyTorch does when track_running_stats is off)",
        ));
    }
    Ok(())
}

/// eps must be finite and non-negative (training also refuses 0, as PyTorch 2.15 does: a
/// constant channel would divide by 0).
pub(crate) fn check_eps(eps: f64) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(BatchNormError::InvalidEps(eps))
    }
}

/// `pair` (what `what` names) is on x's context and has x's channels.
fn check_pair(x: &Tensor, pair: Option<&ChannelPair>, what: &'static str) -> Result<()> {
    match pair {
        Some(pair) if !pair.context().same_as(x.context()) => Err(BatchNormError::ContextMismatch),
        Some(pair) if pair.channels() != x.channels() => Err(BatchNormError::ChannelMismatch {
            what,
            expected: pair.channels(),
            actual: x.channels(),
        }),
        _ => Ok(()),
    }
}

/// Backward pass; allocates dx and, when `affine` is given, `[dgamma | dbeta]`. `epilogue`
/// is the forward's (`EpilogueGrad::None` when it had none).
pub fn batch_norm_backward(
    x: &Tensor,
    dy: &Tensor,
    saved: &SavedStats,
    affine: Option<&ChannelPair>,
    epilogue: EpilogueGrad<'_>,
) -> Result<Gradients> {
    let dx = x.output_like()?;
    let params = batch_norm_backward_into(x, dy, &dx, saved, affine, epilogue)?;
    Ok(Gradients { dx, params })
}

/// Backward pass into `dx`; submits and waits. Returns `[dgamma | dbeta]` when affine.
pub fn batch_norm_backward_into(
    x: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    saved: &SavedStats,
    affine: Option<&ChannelPair>,
    epilogue: EpilogueGrad<'_>,
) -> Result<Option<ChannelPair>> {
    let ctx = x.context();
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    let params =
        record_batch_norm_backward(&mut encoder, x, dy, dx, saved, affine, epilogue, None)?;
    ctx.submit_and_wait(encoder)?;
    Ok(params)
}

/// Records the backward pass into `encoder` as one compute pass. `saved` is what the forward
/// returned for this `x`: batch statistics give the training gradient, running statistics the
/// inference one; `epilogue` must be the forward's (its output y, and dz for `AddRelu`).
#[allow(clippy::too_many_arguments)]
pub fn record_batch_norm_backward(
    encoder: &mut wgpu::CommandEncoder,
    x: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    saved: &SavedStats,
    affine: Option<&ChannelPair>,
    epilogue: EpilogueGrad<'_>,
    timestamps: Option<PassTimestamps<'_>>,
) -> Result<Option<ChannelPair>> {
    let dispatches = describe_backward(x, dy, dx, saved, affine, &epilogue)?;
    let ctx = x.context();
    // Over an empty batch dgamma and dbeta are sums over nothing: zeros.
    let Some((plan, steps)) = &dispatches else {
        return affine
            .map(|_| ChannelPair::zeros(ctx, x.channels()))
            .transpose();
    };
    let grads = ChannelPair::output(ctx, x.channels())?;
    let buffers = backward_buffers(x, dy, dx, saved, affine, &epilogue, &grads);
    record(
        ctx,
        encoder,
        BACKWARD_LABEL,
        plan,
        steps,
        &buffers,
        timestamps,
    )?;
    Ok(affine.map(|_| grads))
}

/// Checks a backward call (everything, before any GPU work) and plans its dispatches (`None`
/// for an empty batch).
pub(crate) fn describe_backward(
    x: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    saved: &SavedStats,
    affine: Option<&ChannelPair>,
    epilogue: &EpilogueGrad<'_>,
) -> Result<Option<(Plan, Vec<Step>)>> {
    x.check_same_shape(dy, "the gradient dy")?;
    x.check_same_shape(dx, "the gradient dx")?;
    if epilogue.kind() != saved.epilogue {
        return Err(BatchNormError::EpilogueMismatch {
            forward: saved.epilogue,
            backward: epilogue.kind(),
        });
    }
    let mut inputs = vec![("the input x", x), ("the gradient dy", dy)];
    if let Some(y) = epilogue.forward_output() {
        x.check_same_shape(y, "the forward's output y")?;
        inputs.push(("the forward's output y", y));
    }
    let mut outputs = vec![("the gradient dx", dx)];
    if let Some(dz) = epilogue.shortcut_grad() {
        x.check_same_shape(dz, "the gradient dz")?;
        outputs.push(("the gradient dz", dz));
    }
    check_no_overlap(&inputs, &outputs)?;
    if saved.shape != x.shape() || saved.layout != x.layout() {
        return Err(BatchNormError::ShapeMismatch {
            what: "the saved statistics",
            expected: x.shape().to_vec(),
            expected_layout: x.layout(),
            actual: saved.shape.clone(),
            actual_layout: saved.layout,
        });
    }
    if !saved.mean_invstd.context().same_as(x.context()) {
        return Err(BatchNormError::ContextMismatch);
    }
    check_pair(x, affine, "gamma and beta (the affine argument) hold")?;
    if x.is_empty() {
        return Ok(None);
    }
    let plan = plan(
        x.view(),
        x.dtype(),
        x.context().plan_limits(),
        Operation::Backward,
    )?;
    let call = Call::Backward {
        batch_stats: saved.source == StatsSource::Batch,
        epilogue: saved.epilogue,
    };
    let result = epilogue.forward_output();
    let dz = epilogue.shortcut_grad();
    let outputs: Vec<&wgpu::Buffer> = std::iter::once(dx).chain(dz).map(Tensor::buffer).collect();
    let operands = Operands {
        affine: affine.is_some(),
        x: x.offset(),
        dy: dy.offset(),
        dx: dx.offset(),
        dz: dz.map_or(0, Tensor::offset),
        result: result.map_or(0, Tensor::offset),
        inputs_share_output_buffer: [Some(x), Some(dy), result]
            .into_iter()
            .flatten()
            .any(|input| outputs.contains(&input.buffer())),
        ..Operands::default()
    };
    let steps = steps(&plan, call, &operands);
    Ok(Some((plan, steps)))
}

/// The buffers of a backward call, dgamma and dbeta written into `grads`.
pub(crate) fn backward_buffers<'a>(
    x: &'a Tensor,
    dy: &'a Tensor,
    dx: &'a Tensor,
    saved: &'a SavedStats,
    affine: Option<&'a ChannelPair>,
    epilogue: &EpilogueGrad<'a>,
    grads: &'a ChannelPair,
) -> Buffers<'a> {
    let at = |t: &'a Tensor| (t.buffer(), t.offset());
    Buffers {
        x: Some(at(x)),
        dy: Some(at(dy)),
        dx: Some(at(dx)),
        result: epilogue.forward_output().map(at),
        dz: epilogue.shortcut_grad().map(at),
        stats: Some(saved.mean_invstd.buffer()),
        affine: affine.map(ChannelPair::buffer),
        grads: Some(grads.buffer()),
        ..Buffers::default()
    }
}
