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

use super::{bind, epilogue_overrides, whole_or_unused, Builder, Operands, Range, Step};
use crate::epilogue::EpilogueKind;
use crate::plan::{workgroups_for_items, Plan, GRADIENT_PARTIAL_BYTES, STATISTICS_PARTIAL_BYTES};
use crate::shader::{Override, Params, Program, Role};

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

    /// One reduction step per window: `entry` on x (and dy), writing `partials`.
    fn reduction_steps(
        &self,
        program: Program,
        entry: &'static str,
        overrides: &[(Override, bool)],
        partials: Range,
    ) -> Vec<Step> {
        self.windows()
            .map(|(w, _)| {
                let params = self.window_params(w);
                let mut bindings = vec![bind(Role::X, Range::Window(w))];
                if program == Program::Backward {
                    bindings.extend([
                        bind(Role::Dy, Range::Window(w)),
                        // The ReLU epilogue's mask source, off here.
                        bind(Role::Result, Range::Unused),
                        bind(Role::Stats, Range::Whole),
                    ]);
                }
                bindings.push(bind(Role::Partials, partials));
                Step {
                    overrides: overrides.to_vec(),
                    params: Some(params),
                    bindings,
                    workgroups: workgroups_for_items(params.items as usize, self.plan.limits),
                    ..self.step(program, false, entry)
                }
            })
            .collect()
    }

    /// The uniform block of a finalize: channels and partials per channel.
    fn finalize_params(&self) -> Params {
        Params {
            channels: self.plan.view.channels as u32,
            chunks_total: self.plan.chunks_total as u32,
            ..Params::default()
        }
    }

    fn moments(&self) -> Vec<Step> {
        let partials = self.all_partials(STATISTICS_PARTIAL_BYTES);
        let entry = self.by_kind("partials_contiguous", "partials_strided");
        let mut steps = self.reduction_steps(Program::BatchStatistics, entry, &[], partials);
        steps.push(Step {
            overrides: vec![
                (Override::HasRunning, false),
                (Override::Cumulative, false),
                (Override::Moments, true),
            ],
            params: Some(self.finalize_params()),
            bindings: vec![
                bind(Role::Partials, partials),
                bind(Role::Stats, Range::Whole),
                bind(Role::Running, Range::Unused),
                bind(Role::Batches, Range::Unused),
            ],
            workgroups: self.plan.finalize_workgroups(),
            ..self.step(Program::BatchStatistics, false, self.finalize_entry())
        });
        steps
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
        let overrides = self.gradient_overrides();
        let entry = self.by_kind("grad_partials_contiguous", "grad_partials_strided");
        let mut steps = self.reduction_steps(Program::Backward, entry, &overrides, partials);
        steps.push(Step {
            overrides,
            params: Some(self.finalize_params()),
            bindings: vec![
                bind(Role::Partials, partials),
                bind(Role::Stats, Range::Whole),
                bind(Role::Grads, Range::Whole),
            ],
            workgroups: self.plan.finalize_workgroups(),
            ..self.step(Program::Backward, false, self.finalize_entry())
        });
        steps
    }

    /// dx per window: vec4s where the plan and the offsets allow, else whole words for half
    /// types and single elements for f32 (`Program::Backward` has no scalar dx for half
    /// types), as the single-device backward chooses.
    fn input_gradient_from_means(&self) -> Vec<Step> {
        let offsets = [self.operands.x, self.operands.dy, self.operands.dx];
        let (program, entry) = if self.plan.vec4_at(&offsets) {
            (Program::InputGradientVec4, "input_gradient_vec4")
        } else if self.plan.dtype.is_half() {
            (Program::InputGradientWords, "input_gradient_words")
        } else {
            (Program::Backward, "input_gradient")
        };
        self.windows()
            .map(|(w, window)| Step {
                overrides: self.gradient_overrides(),
                params: Some(Params {
                    values_per_channel: 1.0,
                    ..self.window_params(w)
                }),
                bindings: vec![
                    bind(Role::X, Range::Window(w)),
                    bind(Role::Dy, Range::Window(w)),
                    bind(Role::Dx, Range::Window(w)),
                    // The epilogue's mask source and dz, off here.
                    bind(Role::Result, Range::Unused),
                    bind(Role::ShortcutGrad, Range::Unused),
                    bind(Role::Stats, Range::Whole),
                    whole_or_unused(Role::Affine, self.operands.affine),
                    bind(Role::Grads, Range::Whole),
                ],
                workgroups: self.elementwise_workgroups(window, program.lanes()),
                ..self.step(program, self.operands.inputs_share_output_buffer, entry)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::dtype::DType;
    use crate::layout::{ChannelView, Layout};
    use crate::plan::{plan, Operation, PlanLimits};
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
            PlanLimits::new(&limits, device_type),
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
        let plan = plan_for(&[3, 5, 67, 61], Layout::ChannelsFirst, 128 << 20, false);
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
        let mut want = vec!["partials_contiguous"; 8];
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
            assert_eq!(dx[0].variant().dtype, dtype);
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
                for affine in [true, false] {
                    let operands = Operands {
                        affine,
                        ..Operands::default()
                    };
                    for step in sync_steps(plan, half, &operands) {
                        assert_eq!(step.dtype, plan.dtype, "{half:?} {}", step.entry);
                        let bound: BTreeSet<u32> =
                            step.bindings.iter().map(|b| b.role.binding()).collect();
                        let (used, reads_params) = used_bindings(step.variant(), step.entry);
                        assert_eq!(bound, used, "{half:?} {}", step.entry);
                        assert!(reads_params, "{}", step.entry);
                        seen.insert(step.entry);
                    }
                }
            }
        }
        // Both reductions, both finalizes, and the scalar, vec4 and word elementwise kernels.
        assert_eq!(seen.len(), 12, "{seen:?}");
    }
}
