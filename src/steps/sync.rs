//! The steps of a synchronized batch norm's halves (`crate::sync`). A synchronized training
//! step exchanges per-channel values between its GPU work, so each operation is recorded in
//! two halves around the exchange, and the single-dispatch (fused) paths do not apply:
//!
//! - forward: [`SyncHalf::Statistics`] (this rank's per-channel mean and M2), then, with
//!   every rank's merged on the host, [`SyncHalf::Normalize`] (y from the merged statistics);
//! - backward: [`SyncHalf::GradientSums`] (this rank's dgamma and dbeta), then, with every
//!   rank's added on the host, [`SyncHalf::InputGradient`] (dx from the means over all ranks).
//!
//! Synchronized calls take no epilogue, so the epilogue's bindings are stand-ins and its
//! overrides off. Steps come in the plan's storage type, with the single-device choice of
//! elementwise program for it (vec4s where they apply, else words for half types).

use super::{epilogue_overrides, Builder, Operands, Range, Step};
use crate::epilogue::kind::EpilogueKind;
use crate::plan::{Plan, GRADIENT_PARTIAL_BYTES, STATISTICS_PARTIAL_BYTES};
use crate::shader::Override;

/// A half of a synchronized operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncHalf {
    /// Partials per window, then a finalize that writes `[mean | M2]` into `Stats`.
    Statistics,
    /// y from the merged `[mean | invstd]` in `Stats`.
    Normalize,
    /// Partials of (sum dy, sum dy (x - mean)) per window, then a finalize that writes this
    /// rank's `[dgamma | dbeta]` into `Grads`.
    GradientSums,
    /// dx from the saved statistics in `Stats` and `[mean(dy x_hat) | mean(dy)]` over every
    /// rank in `Grads` (divided by 1: the means are final).
    InputGradient,
}

/// The steps of `half` on `plan` with `operands`.
pub fn sync_steps(plan: &Plan, half: SyncHalf, operands: &Operands) -> Vec<Step> {
    let builder = Builder { plan, operands };
    match half {
        SyncHalf::Statistics => builder.moments(),
        SyncHalf::Normalize => builder.normalize(None, EpilogueKind::None),
        SyncHalf::GradientSums => builder.gradient_sums(),
        SyncHalf::InputGradient => builder.input_gradient_from_means(),
    }
}

impl Builder<'_> {
    /// The partials of every chunk, fused plan or not (`Plan::partials_bytes` counts none
    /// for fused plans, whose single dispatch needs none).
    fn all_partials(&self, partial_bytes: u64) -> Range {
        let plan = self.plan;
        Range::Partials(plan.view.channels as u64 * plan.chunks_total as u64 * partial_bytes)
    }

    fn moments(&self) -> Vec<Step> {
        self.statistics_steps(
            self.all_partials(STATISTICS_PARTIAL_BYTES),
            vec![
                (Override::HasRunning, false),
                (Override::Cumulative, false),
                (Override::Moments, true),
            ],
            |params| params,
            (false, false),
        )
    }

    fn gradient_overrides(&self) -> Vec<(Override, bool)> {
        let mut overrides = vec![
            (Override::HasAffine, self.operands.affine),
            (Override::BatchStats, true),
        ];
        overrides.extend(epilogue_overrides(EpilogueKind::None));
        overrides
    }

    fn gradient_sums(&self) -> Vec<Step> {
        let partials = self.all_partials(GRADIENT_PARTIAL_BYTES);
        self.gradient_sum_steps(partials, &self.gradient_overrides(), false)
    }

    /// dx per window from the means over every rank (M = 1 in the uniform block), as the
    /// single-device backward chooses its kernels.
    fn input_gradient_from_means(&self) -> Vec<Step> {
        self.input_gradient_steps(&self.gradient_overrides(), EpilogueKind::None, Some(1.0))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::dtype::DType;
    use crate::layout::{ChannelView, Layout};
    use crate::plan::{plan, Operation, PlanLimits};
    use crate::shader::Role;
    use crate::steps::bind;
    use crate::steps::tests::used_bindings;

    fn plan_for(shape: &[usize], layout: Layout, max_binding_bytes: u64, gpu: bool) -> Plan {
        plan_as(shape, layout, DType::F32, max_binding_bytes, gpu)
    }

    fn plan_as(
        shape: &[usize],
        layout: Layout,
        dtype: DType,
        max_binding_bytes: u64,
        gpu: bool,
    ) -> Plan {
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: max_binding_bytes,
            ..wgpu::Limits::default()
        };
        let device_type = if gpu {
            wgpu::DeviceType::DiscreteGpu
        } else {
            wgpu::DeviceType::Cpu
        };
        let view = ChannelView::new(shape, layout).unwrap();
        plan(
            view,
            dtype,
            PlanLimits::new(&limits, device_type, wgpu::Features::empty()),
            Operation::TrainingForward,
        )
        .unwrap()
    }

    fn entries(steps: &[Step]) -> Vec<&'static str> {
        steps.iter().map(|s| s.entry).collect()
    }

    const HALVES: [SyncHalf; 4] = [
        SyncHalf::Statistics,
        SyncHalf::Normalize,
        SyncHalf::GradientSums,
        SyncHalf::InputGradient,
    ];

    #[test]
    fn fused_plans_are_split_around_the_exchange() {
        let plan = plan_for(&[3, 5, 67, 61], Layout::ChannelsFirst, 128 << 20, true);
        assert!(plan.fused_window().is_some());
        let operands = Operands {
            affine: true,
            ..Operands::default()
        };
        let statistics = sync_steps(&plan, SyncHalf::Statistics, &operands);
        assert_eq!(
            entries(&statistics),
            ["partials_contiguous", "finalize_per_thread"]
        );
        // Every chunk's partial has a slot, though the fused path needs none.
        assert_eq!(
            statistics[0].bindings[1],
            bind(Role::Partials, Range::Partials(5 * 16))
        );
        assert!(statistics[1].overrides.contains(&(Override::Moments, true)));
        let sums = sync_steps(&plan, SyncHalf::GradientSums, &operands);
        assert_eq!(
            entries(&sums),
            ["grad_partials_contiguous", "finalize_per_thread"]
        );
        let dx = sync_steps(&plan, SyncHalf::InputGradient, &operands);
        assert_eq!(entries(&dx), ["input_gradient"]);
        assert_eq!(dx[0].params.unwrap().values_per_channel, 1.0);
    }

    #[test]
    fn windows_each_get_their_reduction_and_elementwise_steps() {
        let plan = plan_for(&[8, 3, 64, 64], Layout::ChannelsFirst, 64 << 10, false);
        assert_eq!(plan.windows.len(), 8);
        let operands = Operands::default();
        let mut want = vec!["partials_per_thread_runs"; 8];
        want.push("finalize_per_thread");
        assert_eq!(
            entries(&sync_steps(&plan, SyncHalf::Statistics, &operands)),
            want
        );
        assert_eq!(
            entries(&sync_steps(&plan, SyncHalf::Normalize, &operands)),
            ["normalize_vec4"; 8]
        );
        assert_eq!(
            entries(&sync_steps(&plan, SyncHalf::InputGradient, &operands)),
            ["input_gradient_vec4"; 8]
        );
    }

    /// Half types take the word kernels where vec4s do not apply: `Program::Normalize` and
    /// the scalar `input_gradient` come in f32 alone.
    #[test]
    fn half_types_take_words_where_vec4s_do_not_apply() {
        let operands = Operands::default();
        for dtype in [DType::F16, DType::BF16] {
            let odd = plan_as(
                &[3, 5, 7, 9],
                Layout::ChannelsFirst,
                dtype,
                128 << 20,
                false,
            );
            assert_eq!(
                entries(&sync_steps(&odd, SyncHalf::Normalize, &operands)),
                ["normalize_words"]
            );
            assert_eq!(
                entries(&sync_steps(&odd, SyncHalf::InputGradient, &operands)),
                ["input_gradient_words"]
            );
            let whole = plan_as(
                &[4, 6, 6, 16],
                Layout::ChannelsLast,
                dtype,
                128 << 20,
                false,
            );
            let dx = sync_steps(&whole, SyncHalf::InputGradient, &operands);
            assert_eq!(entries(&dx), ["input_gradient_vec4"]);
            assert_eq!(dx[0].variant.dtype, dtype);
        }
    }

    /// Every step of every half binds exactly what its entry point uses.
    #[test]
    fn every_half_binds_what_its_entry_points_use() {
        let plans = [
            plan_for(&[3, 5, 67, 61], Layout::ChannelsFirst, 128 << 20, false),
            plan_for(&[4, 16, 16, 40], Layout::ChannelsLast, 128 << 20, false),
            plan_for(&[8, 3, 64, 64], Layout::ChannelsFirst, 64 << 10, false),
            plan_for(&[10, 64, 63, 8], Layout::ChannelsLast, 128 << 20, true),
            plan_as(
                &[3, 5, 7, 9],
                Layout::ChannelsFirst,
                DType::F16,
                128 << 20,
                false,
            ),
            plan_as(
                &[4, 6, 6, 16],
                Layout::ChannelsLast,
                DType::BF16,
                128 << 20,
                false,
            ),
        ];
        let mut seen = BTreeSet::new();
        for plan in &plans {
            for half in HALVES {
                for (affine, offset) in [(true, 0), (false, 0), (true, 4)] {
                    // Offset 4: no tensor starts on a vec4 (the scalar-load kernels).
                    let operands = Operands {
                        affine,
                        x: offset,
                        y: offset,
                        dy: offset,
                        dx: offset,
                        ..Operands::default()
                    };
                    for step in sync_steps(plan, half, &operands) {
                        assert_eq!(step.variant.dtype, plan.dtype, "{half:?} {}", step.entry);
                        let bound: BTreeSet<u32> =
                            step.bindings.iter().map(|b| b.role.binding()).collect();
                        let (used, reads_params) = used_bindings(step.variant, step.entry);
                        assert_eq!(bound, used, "{half:?} {}", step.entry);
                        assert!(reads_params, "{}", step.entry);
                        seen.insert(format!("{:?}::{}", step.variant.program, step.entry));
                    }
                }
            }
        }
        // Both reductions in their per-thread (scalar, channels-first runs on vec4 loads, and
        // quads on scalar and vec4 loads) and strided kernels, both finalizes, and the scalar,
        // vec4 and word elementwise kernels.
        assert_eq!(seen.len(), 20, "{seen:?}");
    }
}
