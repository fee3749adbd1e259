//! Dispatches of `shaders/normalize.wgsl` (or its vec4 form, where the plan allows it):
//! y = (x - mean) * (gamma * invstd) + beta.

use super::{Dispatch, Params, Program, Slot};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::plan::{workgroups_for_elements, Plan};

/// Where each channel's mean and invstd come from.
pub(crate) enum ChannelStatistics<'a> {
    /// `[mean | invstd]` that a batch reduction wrote earlier in the pass.
    Batch(&'a wgpu::Buffer),
    /// Inference: `[running_mean | running_var]`, read directly (one dispatch in all); the
    /// kernel writes `[running_mean | invstd]` into `saved` for a later backward.
    Running {
        running: &'a wgpu::Buffer,
        saved: &'a wgpu::Buffer,
        eps: f32,
    },
}

/// One dispatch per window, writing `y` from `x`, the channel statistics and, when given,
/// `affine` (`[gamma | beta]`).
pub(crate) fn normalize(
    ctx: &GpuContext,
    plan: &Plan,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    statistics: ChannelStatistics<'_>,
    affine: Option<&wgpu::Buffer>,
) -> Result<Vec<Dispatch>> {
    let unused = ctx.scratch("unused binding", 16)?;
    let (stats, running, eps) = match statistics {
        ChannelStatistics::Batch(stats) => (stats, None, 0.0),
        ChannelStatistics::Running {
            running,
            saved,
            eps,
        } => (saved, Some(running), eps),
    };
    plan.windows
        .iter()
        .map(|window| {
            let elements = window.o_count * window.c_count * plan.view.inner;
            let (program, entry, lanes) = if plan.vec4 {
                (Program::NormalizeVec4, "normalize_vec4", 4)
            } else {
                (Program::Normalize, "normalize", 1)
            };
            Dispatch::new(
                ctx,
                program,
                entry,
                &[
                    ("HAS_AFFINE", affine.is_some()),
                    ("FROM_RUNNING", running.is_some()),
                ],
                Params {
                    eps,
                    ..Params::for_window(plan, window)
                },
                &[
                    Slot::window(1, x, window),
                    Slot::window(2, y, window),
                    Slot::whole(3, stats),
                    Slot::whole(4, affine.unwrap_or(&unused)),
                    Slot::whole(5, running.unwrap_or(&unused)),
                ],
                workgroups_for_elements(
                    elements / lanes,
                    window.c_count * plan.view.inner / lanes,
                    ctx.plan_limits(),
                ),
            )
        })
        .collect()
}
