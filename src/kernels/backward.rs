//! Dispatches of `shaders/backward.wgsl`: dgamma and dbeta by a per-channel reduction, then dx
//! (or both in one dispatch, for fused plans).

use super::{Dispatch, Params, Program, Slot};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::plan::{
    workgroups_for_elements, workgroups_for_items, FinalizeKind, Plan, ReductionKind,
    GRADIENT_PARTIAL_BYTES,
};

/// The buffers of one backward call.
pub(crate) struct BackwardBuffers<'a> {
    pub x: &'a wgpu::Buffer,
    pub dy: &'a wgpu::Buffer,
    pub dx: &'a wgpu::Buffer,
    /// `[mean | invstd]` the forward used.
    pub stats: &'a wgpu::Buffer,
    /// `[gamma | beta]`, when affine.
    pub affine: Option<&'a wgpu::Buffer>,
    /// Output `[dgamma | dbeta]`.
    pub grads: &'a wgpu::Buffer,
}

/// The dispatches of a backward pass: one under a fused plan (`Plan::fused_window`), else the
/// reduction, its finalize and dx. `batch_stats` chooses the dx formula: through batch
/// statistics (training) or through constant running statistics.
pub(crate) fn backward(
    ctx: &GpuContext,
    plan: &Plan,
    buffers: &BackwardBuffers<'_>,
    batch_stats: bool,
) -> Result<Vec<Dispatch>> {
    let limits = ctx.plan_limits();
    let unused = ctx.scratch("unused binding", 16)?;
    let affine = buffers.affine.unwrap_or(&unused);
    let overrides = [
        ("HAS_AFFINE", buffers.affine.is_some()),
        ("BATCH_STATS", batch_stats),
    ];
    // What the kernels that write dx bind, fused or not.
    let dx_slots = |window| {
        [
            Slot::window(1, buffers.x, window),
            Slot::window(2, buffers.dy, window),
            Slot::window(3, buffers.dx, window),
            Slot::whole(4, buffers.stats),
            Slot::whole(5, affine),
            Slot::whole(7, buffers.grads),
        ]
    };
    if let Some(window) = plan.fused_window() {
        let params = Params::for_window(plan, window);
        let (entry, workgroups) = match plan.kind {
            ReductionKind::Contiguous => ("fused_backward_contiguous", window.c_count),
            ReductionKind::Strided => ("fused_backward_strided", params.items as usize),
        };
        return Ok(vec![Dispatch::new(
            ctx,
            Program::Backward,
            entry,
            &overrides,
            params,
            &dx_slots(window),
            workgroups_for_items(workgroups, limits),
        )?]);
    }
    let channels = plan.view.channels;
    let partials_bytes = plan.partials_bytes(GRADIENT_PARTIAL_BYTES);
    let partials = ctx.scratch("backward partials", partials_bytes)?;
    let entry = match plan.kind {
        ReductionKind::Contiguous => "grad_partials_contiguous",
        ReductionKind::Strided => "grad_partials_strided",
    };
    let mut dispatches = Vec::with_capacity(2 * plan.windows.len() + 1);
    for window in &plan.windows {
        let params = Params::for_window(plan, window);
        dispatches.push(Dispatch::new(
            ctx,
            Program::Backward,
            entry,
            &overrides,
            params,
            &[
                Slot::window(1, buffers.x, window),
                Slot::window(2, buffers.dy, window),
                Slot::whole(4, buffers.stats),
                Slot::prefix(6, &partials, partials_bytes),
            ],
            workgroups_for_items(params.items as usize, limits),
        )?);
    }
    dispatches.push(Dispatch::new(
        ctx,
        Program::Backward,
        match plan.finalize {
            FinalizeKind::PerThread => "finalize_gradients_per_thread",
            FinalizeKind::PerWorkgroup => "finalize_gradients",
        },
        &overrides,
        Params {
            channels: channels as u32,
            chunks_total: plan.chunks_total as u32,
            ..Params::default()
        },
        &[
            Slot::whole(4, buffers.stats),
            Slot::prefix(6, &partials, partials_bytes),
            Slot::whole(7, buffers.grads),
        ],
        plan.finalize_workgroups(limits),
    )?);
    let (dx_program, dx_entry, lanes) = if plan.vec4 {
        (Program::InputGradientVec4, "input_gradient_vec4", 4)
    } else {
        (Program::Backward, "input_gradient", 1)
    };
    for window in &plan.windows {
        let elements = window.o_count * window.c_count * plan.view.inner;
        dispatches.push(Dispatch::new(
            ctx,
            dx_program,
            dx_entry,
            &overrides,
            Params::for_window(plan, window),
            &dx_slots(window),
            workgroups_for_elements(
                elements / lanes,
                window.c_count * plan.view.inner / lanes,
                limits,
            ),
        )?);
    }
    Ok(dispatches)
}
