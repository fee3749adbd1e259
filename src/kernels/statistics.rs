//! Dispatches of `shaders/batch_statistics.wgsl`: per-channel mean and invstd from a batch,
//! with the running-stats update, and the single-dispatch training forward of fused plans.

use super::{Dispatch, Params, Program, Slot};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::plan::{
    workgroups_for_items, FinalizeKind, Plan, ReductionKind, Window, STATISTICS_PARTIAL_BYTES,
};

/// How a batch's statistics update the running stats.
pub(crate) struct RunningUpdate<'a> {
    /// `[running_mean | running_var]`.
    pub running: &'a wgpu::Buffer,
    pub momentum: f32,
}

/// The dispatches that write `[mean | invstd]` of the batch `x` into `stats` and, when asked,
/// update the running stats.
pub(crate) fn batch_statistics(
    ctx: &GpuContext,
    plan: &Plan,
    x: &wgpu::Buffer,
    stats: &wgpu::Buffer,
    update: Option<RunningUpdate<'_>>,
    eps: f32,
) -> Result<Vec<Dispatch>> {
    let limits = ctx.plan_limits();
    let channels = plan.view.channels as u64;
    let partials_bytes = plan.partials_bytes(STATISTICS_PARTIAL_BYTES);
    let partials = ctx.scratch("batch-statistics partials", partials_bytes)?;
    let entry = match plan.kind {
        ReductionKind::Contiguous => "partials_contiguous",
        ReductionKind::Strided => "partials_strided",
    };
    let mut dispatches = Vec::with_capacity(plan.windows.len() + 1);
    for window in &plan.windows {
        let params = Params::for_window(plan, window);
        dispatches.push(Dispatch::new(
            ctx,
            Program::BatchStatistics,
            entry,
            &[],
            params,
            &[
                Slot::window(1, x, window),
                Slot::prefix(2, &partials, partials_bytes),
            ],
            workgroups_for_items(params.items as usize, limits),
        )?);
    }
    let unused = ctx.scratch("unused binding", 16)?;
    let params = Params {
        channels: channels as u32,
        chunks_total: plan.chunks_total as u32,
        ..with_statistics_scalars(Params::default(), plan, update.as_ref(), eps)
    };
    dispatches.push(Dispatch::new(
        ctx,
        Program::BatchStatistics,
        match plan.finalize {
            FinalizeKind::PerThread => "finalize_statistics_per_thread",
            FinalizeKind::PerWorkgroup => "finalize_statistics",
        },
        &[("HAS_RUNNING", update.is_some())],
        params,
        &[
            Slot::prefix(2, &partials, partials_bytes),
            Slot::whole(3, update.as_ref().map_or(&unused, |u| u.running)),
            Slot::whole(4, stats),
        ],
        plan.finalize_workgroups(limits),
    )?);
    Ok(dispatches)
}

/// `params` with the scalars of the kernels that finish the statistics: eps, the running
/// stats' momentum, and M / (M - 1) for their unbiased variance.
fn with_statistics_scalars(
    params: Params,
    plan: &Plan,
    update: Option<&RunningUpdate<'_>>,
    eps: f32,
) -> Params {
    let values = plan.view.values_per_channel() as f64;
    Params {
        eps,
        momentum: update.map_or(0.0, |u| u.momentum),
        var_correction: (values / (values - 1.0)) as f32,
        ..params
    }
}

/// The buffers of a fused training forward.
pub(crate) struct FusedForward<'a> {
    pub x: &'a wgpu::Buffer,
    pub y: &'a wgpu::Buffer,
    /// `[mean | invstd]`, written.
    pub stats: &'a wgpu::Buffer,
    pub update: Option<RunningUpdate<'a>>,
    /// `[gamma | beta]`.
    pub affine: Option<&'a wgpu::Buffer>,
}

/// The one dispatch of a training forward under a fused plan (`Plan::fused_window`): statistics,
/// running-stats update and output.
pub(crate) fn fused_forward(
    ctx: &GpuContext,
    plan: &Plan,
    window: &Window,
    buffers: &FusedForward<'_>,
    eps: f32,
) -> Result<Dispatch> {
    // Two stand-ins: one dispatch may not bind a buffer both read-write and read-only.
    let unused = ctx.scratch("unused binding", 16)?;
    let unused_read_write = ctx.scratch("unused read-write binding", 16)?;
    let params = with_statistics_scalars(
        Params::for_window(plan, window),
        plan,
        buffers.update.as_ref(),
        eps,
    );
    let (entry, workgroups) = match plan.kind {
        ReductionKind::Contiguous => ("fused_forward_contiguous", window.c_count),
        ReductionKind::Strided => ("fused_forward_strided", params.items as usize),
    };
    Dispatch::new(
        ctx,
        Program::BatchStatistics,
        entry,
        &[
            ("HAS_RUNNING", buffers.update.is_some()),
            ("HAS_AFFINE", buffers.affine.is_some()),
        ],
        params,
        &[
            Slot::window(1, buffers.x, window),
            Slot::whole(
                3,
                buffers
                    .update
                    .as_ref()
                    .map_or(&unused_read_write, |u| u.running),
            ),
            Slot::whole(4, buffers.stats),
            Slot::window(5, buffers.y, window),
            Slot::whole(6, buffers.affine.unwrap_or(&unused)),
        ],
        workgroups_for_items(workgroups, ctx.plan_limits()),
    )
}
