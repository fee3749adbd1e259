//! Dispatches of `shaders/normalize.wgsl` (or its vec4 form, where the plan allows it):
//! y = (x - mean) * (gamma * invstd) + beta.

use super::{Dispatch, Params, Program, Slot};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::plan::{workgroups_for_elements, Plan};

/// One dispatch per window, writing `y` from `x`, `stats` (`[mean | invstd]`) and, when given,
/// `affine` (`[gamma | beta]`).
pub(crate) fn normalize(
    ctx: &GpuContext,
    plan: &Plan,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    stats: &wgpu::Buffer,
    affine: Option<&wgpu::Buffer>,
) -> Result<Vec<Dispatch>> {
    let unused = ctx.scratch("unused binding", 16)?;
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
                &[("HAS_AFFINE", affine.is_some())],
                Params::for_window(plan, window),
                &[
                    Slot::window(1, x, window),
                    Slot::window(2, y, window),
                    Slot::whole(3, stats),
                    Slot::whole(4, affine.unwrap_or(&unused)),
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
