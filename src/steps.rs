//! What an operation dispatches, as data: a pure function from a plan and a call to the list
//! of steps (program, entry point, overrides, uniform values, which buffer plays which role,
//! workgroup count). No GPU here: the unit tests (`steps/tests.rs`) check the dispatches of
//! every kind of plan, and each step's bindings against what its entry point uses (naga);
//! `encode.rs` records a list of steps into one compute pass.

use crate::dtype::DType;
use crate::epilogue::kind::EpilogueKind;
use crate::plan::{
    workgroups_for_elements, FinalizeKind, Merge, Plan, ReductionKind, Window,
    GRADIENT_PARTIAL_BYTES, STATISTICS_PARTIAL_BYTES,
};
use crate::shader::{Override, Params, Program, Role, Variant};

mod sync;
pub use sync::{sync_steps, SyncHalf};

/// Which part of its buffer a role binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// The whole buffer (per-channel vectors).
    Whole,
    /// The part a window of the plan covers (tensors), by the window's index.
    Window(usize),
    /// The first bytes of the context's scratch buffer for reduction partials.
    Partials(u64),
    /// The first bytes of the context's counters of merges in the last workgroup (zero
    /// between dispatches: never filled, and every dispatch leaves them as it found them).
    Counters(u64),
    /// A stand-in: the entry point declares the binding, the call has no such buffer (no affine
    /// parameters, no running stats), and an override keeps the kernel from touching it.
    Unused,
}

/// One binding of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// What the buffer is.
    pub role: Role,
    /// Which part of it.
    pub range: Range,
}

/// One dispatch.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The program variant it runs: read-write tensor inputs where an input shares a buffer
    /// with the output this step writes; vec4 per-channel vectors where its lanes are four
    /// channels.
    pub variant: Variant,
    /// Its entry point.
    pub entry: &'static str,
    /// Override constants set for the pipeline (the rest keep their defaults).
    pub overrides: Vec<(Override, bool)>,
    /// The uniform block; `None` for an entry point that reads none.
    pub params: Option<Params>,
    /// Every binding the entry point uses, besides the uniform block.
    pub bindings: Vec<Binding>,
    /// Workgroups to dispatch.
    pub workgroups: u32,
}

/// How a training forward updates the running stats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Update {
    /// There are none.
    None,
    /// With this weight for the batch.
    Momentum(f32),
    /// With weight 1 / the layer's batch count, which the call advances on the GPU first
    /// (momentum `None`; binds the layer's `Batches` buffer).
    Cumulative,
}

/// The override constants that select `epilogue` in the kernels.
fn epilogue_overrides(epilogue: EpilogueKind) -> [(Override, bool); 2] {
    [
        (Override::Relu, epilogue != EpilogueKind::None),
        (Override::Add, epilogue == EpilogueKind::AddRelu),
    ]
}

/// An operation and what it is called with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Call {
    /// Batch statistics, the running-stats update, then y.
    TrainingForward {
        /// How the running stats are updated.
        update: Update,
        /// Added to the variance.
        eps: f32,
        /// What follows the normalization.
        epilogue: EpilogueKind,
    },
    /// y from the running stats, saving `[running_mean | invstd]` for the backward.
    InferenceForward {
        /// Added to the running variance.
        eps: f32,
        /// What follows the normalization.
        epilogue: EpilogueKind,
    },
    /// dgamma, dbeta, then dx (and dz).
    Backward {
        /// Through the batch statistics (training) or through constant running statistics.
        batch_stats: bool,
        /// The forward's epilogue, whose gradient comes first.
        epilogue: EpilogueKind,
    },
}

/// What a call brings besides the plan: whether gamma and beta take part, where each tensor
/// starts in its buffer (bytes; 0 for tensors the call does not have), and whether a tensor
/// input shares a buffer with an output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Operands {
    /// gamma and beta take part.
    pub affine: bool,
    /// Byte offset of x in its buffer.
    pub x: u64,
    /// Byte offset of y.
    pub y: u64,
    /// Byte offset of dy.
    pub dy: u64,
    /// Byte offset of dx.
    pub dx: u64,
    /// Byte offset of the shortcut z.
    pub z: u64,
    /// Byte offset of dz.
    pub dz: u64,
    /// Byte offset of the forward's output that an epilogue's backward reads.
    pub result: u64,
    /// A tensor input lies in the buffer of an output (in ranges that do not overlap).
    pub inputs_share_output_buffer: bool,
}

/// The steps of `call` on `plan` with `operands`, in order.
pub fn steps(plan: &Plan, call: Call, operands: &Operands) -> Vec<Step> {
    let builder = Builder { plan, operands };
    match call {
        Call::TrainingForward {
            update,
            eps,
            epilogue,
        } => builder.training_forward(update, eps, epilogue),
        Call::InferenceForward { eps, epilogue } => builder.normalize(Some(eps), epilogue),
        Call::Backward {
            batch_stats,
            epilogue,
        } => builder.backward(batch_stats, epilogue),
    }
}

/// The one step of a training call on an empty batch with momentum `None`: the batch still
/// counts (as PyTorch's module counts it), and nothing else runs.
pub fn count_batch_step() -> Step {
    Step {
        variant: Variant {
            program: Program::BatchStatistics,
            dtype: DType::F32,
            inputs_read_write: false,
            channel_quads: false,
        },
        entry: "count_batch",
        overrides: vec![],
        params: None,
        bindings: vec![bind(Role::Batches, Range::Whole)],
        workgroups: 1,
    }
}

struct Builder<'a> {
    plan: &'a Plan,
    operands: &'a Operands,
}

fn bind(role: Role, range: Range) -> Binding {
    Binding { role, range }
}

/// The binding of an optional per-channel vector.
fn whole_or_unused(role: Role, present: bool) -> Binding {
    bind(role, if present { Range::Whole } else { Range::Unused })
}

impl Builder<'_> {
    /// The geometry of window `w`; scalars left at zero.
    fn window_params(&self, w: usize) -> Params {
        let (plan, window) = (self.plan, &self.plan.windows[w]);
        let shift = |offset: u64| plan.window_binding(w, offset).shift as u32;
        Params {
            x_shift: shift(self.operands.x),
            y_shift: shift(self.operands.y),
            dy_shift: shift(self.operands.dy),
            dx_shift: shift(self.operands.dx),
            z_shift: shift(self.operands.z),
            dz_shift: shift(self.operands.dz),
            result_shift: shift(self.operands.result),
            o_count: window.o_count as u32,
            c0: window.c0 as u32,
            c_count: window.c_count as u32,
            channels: plan.view.channels as u32,
            inner: plan.view.inner as u32,
            chunk_len: plan.chunk_len as u32,
            chunks: window.chunks as u32,
            chunk_base: window.chunk_base as u32,
            chunks_total: plan.chunks_total as u32,
            items: window.reduction_items(plan.kind, plan.band) as u32,
            band: plan.band as u32,
            values_per_channel: plan.view.values_per_channel() as f32,
            ..Params::default()
        }
    }

    /// The scalars of the kernels that finish the statistics: eps, the running stats'
    /// momentum, and M / (M - 1) for their unbiased variance.
    fn with_statistics_scalars(&self, params: Params, update: Update, eps: f32) -> Params {
        let values = self.plan.view.values_per_channel() as f64;
        Params {
            eps,
            momentum: match update {
                Update::Momentum(momentum) => momentum,
                Update::None | Update::Cumulative => 0.0,
            },
            var_correction: (values / (values - 1.0)) as f32,
            ..params
        }
    }

    fn windows(&self) -> impl Iterator<Item = (usize, &Window)> + '_ {
        self.plan.windows.iter().enumerate()
    }

    /// The workgroups of a fused dispatch on `window`: one per channel, or per band; per-thread
    /// plans, a thread per channel group.
    fn fused_workgroups(&self, window: &Window) -> u32 {
        self.plan
            .reduction_workgroups(window.reduction_items(self.plan.kind, self.plan.band))
    }

    /// The program and entry point of a fused dispatch: the workgroup kernels' `scalar` program
    /// and its `entries` (contiguous, strided); or per-thread (`per_thread`), in `vec4` where
    /// it reads and writes vec4s of tensors at these offsets, else in `scalar`.
    fn fused_kernel(
        &self,
        (scalar, entries): (Program, [&'static str; 2]),
        (vec4, per_thread): (Program, &'static str),
        tensor_offsets: &[u64],
    ) -> (Program, &'static str) {
        let [contiguous, strided] = entries;
        match self.plan.kind {
            ReductionKind::Contiguous => (scalar, contiguous),
            ReductionKind::Strided => (scalar, strided),
            ReductionKind::PerThread | ReductionKind::PerThreadQuads => {
                if self.plan.reduction_vec4_at(tensor_offsets) {
                    (vec4, per_thread)
                } else {
                    (scalar, per_thread)
                }
            }
        }
    }

    /// The program and entry point of a reduction's partials. The per-thread kernels (CPU
    /// adapters) have the same entry points in every program that has them: `vec4` where they
    /// read vec4s of these tensors (`Plan::reduction_vec4_at`), else `scalar`. The workgroup
    /// kernels are `scalar`'s `entries` (contiguous, strided).
    fn partials_kernel(
        &self,
        (scalar, entries): (Program, [&'static str; 2]),
        vec4: Program,
        tensor_offsets: &[u64],
    ) -> (Program, &'static str) {
        let [contiguous, strided] = entries;
        let entry = match self.plan.kind {
            ReductionKind::Contiguous => contiguous,
            ReductionKind::Strided => strided,
            ReductionKind::PerThread if self.plan.runs_in_quads() => "partials_per_thread_runs",
            ReductionKind::PerThread => "partials_per_thread_values",
            ReductionKind::PerThreadQuads => "partials_per_thread_quads",
        };
        if self.plan.reduction_vec4_at(tensor_offsets) {
            (vec4, entry)
        } else {
            (scalar, entry)
        }
    }

    fn finalize_entry(&self) -> &'static str {
        match self.plan.finalize {
            FinalizeKind::PerThread => "finalize_per_thread",
            FinalizeKind::PerWorkgroup => "finalize",
        }
    }

    /// A step of `program` in the call's storage type.
    fn step(&self, program: Program, inputs_read_write: bool, entry: &'static str) -> Step {
        Step {
            variant: Variant {
                program,
                dtype: self.plan.dtype,
                inputs_read_write,
                // Channels-last, where a vec4's lanes are four channels. C is then a multiple
                // of four (the vec4 rule), so a `[first | second]` pair holds whole vec4s;
                // checked here as well, since the declaration's bindings depend on it.
                channel_quads: program.reads_channel_quads()
                    && self.plan.view.inner == 1
                    && self.plan.view.channels.is_multiple_of(4),
            },
            entry,
            overrides: vec![],
            params: None,
            bindings: vec![],
            workgroups: 1,
        }
    }

    /// The binding of an epilogue's tensor: window `w` where the epilogue has it.
    fn tensor_or_unused(role: Role, present: bool, w: usize) -> Binding {
        bind(
            role,
            if present {
                Range::Window(w)
            } else {
                Range::Unused
            },
        )
    }

    fn training_forward(&self, update: Update, eps: f32, epilogue: EpilogueKind) -> Vec<Step> {
        let has_running = update != Update::None;
        let cumulative = update == Update::Cumulative;
        let mut steps = Vec::new();
        if cumulative {
            steps.push(count_batch_step());
        }
        if let Some(window) = self.plan.fused_window() {
            let (program, entry) = self.fused_kernel(
                (
                    Program::BatchStatistics,
                    ["fused_forward_contiguous", "fused_forward_strided"],
                ),
                (Program::StatisticsVec4, "fused_forward_per_thread"),
                &self.forward_offsets(epilogue),
            );
            let mut overrides = vec![
                (Override::HasRunning, has_running),
                (Override::HasAffine, self.operands.affine),
                (Override::Cumulative, cumulative),
            ];
            overrides.extend(epilogue_overrides(epilogue));
            steps.push(Step {
                overrides,
                params: Some(self.with_statistics_scalars(self.window_params(0), update, eps)),
                bindings: vec![
                    bind(Role::X, Range::Window(0)),
                    bind(Role::Y, Range::Window(0)),
                    Self::tensor_or_unused(Role::Shortcut, epilogue == EpilogueKind::AddRelu, 0),
                    bind(Role::Stats, Range::Whole),
                    whole_or_unused(Role::Running, has_running),
                    whole_or_unused(Role::Affine, self.operands.affine),
                    whole_or_unused(Role::Batches, cumulative),
                ],
                workgroups: self.fused_workgroups(window),
                ..self.step(program, self.operands.inputs_share_output_buffer, entry)
            });
            return steps;
        }
        let partials = Range::Partials(self.plan.partials_bytes(STATISTICS_PARTIAL_BYTES));
        steps.extend(self.statistics_steps(
            partials,
            vec![
                (Override::HasRunning, has_running),
                (Override::Cumulative, cumulative),
            ],
            |params| self.with_statistics_scalars(params, update, eps),
            (has_running, cumulative),
        ));
        steps.extend(self.normalize(None, epilogue));
        steps
    }

    /// One elementwise dispatch per window that writes y: from the batch statistics a
    /// reduction wrote (`from_running_eps` is `None`), or from the running stats with that eps.
    /// vec4s where the plan and every tensor's offset allow; else one element per step (f32)
    /// or one word (half types).
    fn normalize(&self, from_running_eps: Option<f32>, epilogue: EpilogueKind) -> Vec<Step> {
        let add = epilogue == EpilogueKind::AddRelu;
        // Also the tensors the dispatch streams, one offset each.
        let offsets = self.forward_offsets(epilogue);
        let (program, entry) = if self.plan.vec4_at(&offsets) {
            (Program::NormalizeVec4, "normalize_vec4")
        } else if self.plan.dtype.is_half() {
            (Program::NormalizeWords, "normalize_words")
        } else {
            (Program::Normalize, "normalize")
        };
        let mut overrides = vec![
            (Override::HasAffine, self.operands.affine),
            (Override::FromRunning, from_running_eps.is_some()),
        ];
        overrides.extend(epilogue_overrides(epilogue));
        self.add_lanes_share_channel(program, &mut overrides);
        self.windows()
            .map(|(w, window)| Step {
                overrides: overrides.clone(),
                params: Some(Params {
                    eps: from_running_eps.unwrap_or(0.0),
                    ..self.window_params(w)
                }),
                bindings: vec![
                    bind(Role::X, Range::Window(w)),
                    bind(Role::Y, Range::Window(w)),
                    Self::tensor_or_unused(Role::Shortcut, add, w),
                    bind(Role::Stats, Range::Whole),
                    whole_or_unused(Role::Running, from_running_eps.is_some()),
                    whole_or_unused(Role::Affine, self.operands.affine),
                ],
                workgroups: self.elementwise_workgroups(window, program.lanes(), offsets.len()),
                ..self.step(program, self.operands.inputs_share_output_buffer, entry)
            })
            .collect()
    }

    /// The offsets of the tensors a forward's output reads and writes: x, y, and z where the
    /// epilogue adds it.
    fn forward_offsets(&self, epilogue: EpilogueKind) -> Vec<u64> {
        let mut offsets = vec![self.operands.x, self.operands.y];
        if epilogue == EpilogueKind::AddRelu {
            offsets.push(self.operands.z);
        }
        offsets
    }

    /// Workgroups of an elementwise dispatch on `window`, `lanes` elements per step, that reads
    /// and writes `tensors` tensors. Word steps (2 lanes) find each element's channel, so their
    /// grid need not keep to rows.
    fn elementwise_workgroups(&self, window: &Window, lanes: u32, tensors: usize) -> u32 {
        let (lanes, tensors) = (lanes as usize, tensors as u32);
        let row = window.c_count * self.plan.view.inner;
        let limits = self.plan.limits;
        if lanes == 2 {
            return workgroups_for_elements((window.o_count * row).div_ceil(2), 1, tensors, limits);
        }
        workgroups_for_elements(window.o_count * row / lanes, row / lanes, tensors, limits)
    }

    fn backward(&self, batch_stats: bool, epilogue: EpilogueKind) -> Vec<Step> {
        let mut overrides = vec![
            (Override::HasAffine, self.operands.affine),
            (Override::BatchStats, batch_stats),
        ];
        overrides.extend(epilogue_overrides(epilogue));
        if let Some(window) = self.plan.fused_window() {
            let (program, entry) = self.fused_kernel(
                (
                    Program::Backward,
                    ["fused_backward_contiguous", "fused_backward_strided"],
                ),
                (Program::GradientSumsVec4, "fused_backward_per_thread"),
                &self.backward_offsets(epilogue),
            );
            return vec![Step {
                overrides,
                params: Some(self.window_params(0)),
                bindings: self.dx_bindings(0, epilogue),
                workgroups: self.fused_workgroups(window),
                ..self.step(program, self.operands.inputs_share_output_buffer, entry)
            }];
        }
        let partials = Range::Partials(self.plan.partials_bytes(GRADIENT_PARTIAL_BYTES));
        let relu = epilogue != EpilogueKind::None;
        let mut steps = self.gradient_sum_steps(partials, &overrides, relu);
        steps.extend(self.input_gradient_steps(&overrides, epilogue, None));
        steps
    }

    /// One reduction step per window of `program`'s `entry`, writing `partials`: over x for the
    /// statistics; over x, dy (masked by the forward's output where `relu`) and the saved
    /// statistics for the gradient sums.
    fn reduction_steps(
        &self,
        program: Program,
        entry: &'static str,
        overrides: &[(Override, bool)],
        partials: Range,
        relu: bool,
    ) -> Vec<Step> {
        self.windows()
            .map(|(w, _)| {
                let params = self.window_params(w);
                let mut bindings = vec![bind(Role::X, Range::Window(w))];
                if program.roles().contains(&Role::Dy) {
                    bindings.extend([
                        bind(Role::Dy, Range::Window(w)),
                        Self::tensor_or_unused(Role::Result, relu, w),
                        bind(Role::Stats, Range::Whole),
                    ]);
                }
                bindings.push(bind(Role::Partials, partials));
                Step {
                    overrides: overrides.to_vec(),
                    params: Some(params),
                    bindings,
                    workgroups: self.plan.reduction_workgroups(params.items as usize),
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

    /// The batch statistics, split: partials per window, then a finalize with
    /// `finalize_overrides` and the uniform block `scalars` completes, that writes `Stats`, and
    /// the running stats and batch count where `(running, batches)` say the call has them. Under
    /// `Merge::LastWorkgroup` the partials' one step merges and writes them itself.
    fn statistics_steps(
        &self,
        partials: Range,
        finalize_overrides: Vec<(Override, bool)>,
        scalars: impl Fn(Params) -> Params,
        (running, batches): (bool, bool),
    ) -> Vec<Step> {
        let (program, entry) = self.partials_kernel(
            (
                Program::BatchStatistics,
                ["partials_contiguous", "partials_strided"],
            ),
            Program::StatisticsVec4,
            &[self.operands.x],
        );
        let reduction = self.reduction_steps(program, entry, &[], partials, false);
        let outputs = [
            bind(Role::Stats, Range::Whole),
            whole_or_unused(Role::Running, running),
            whole_or_unused(Role::Batches, batches),
        ];
        if self.plan.merge == Merge::LastWorkgroup {
            return self.merged_in_last_workgroup(
                reduction,
                Program::LastWorkgroupStatistics,
                finalize_overrides,
                scalars,
                &outputs,
            );
        }
        let mut steps = reduction;
        let mut bindings = vec![bind(Role::Partials, partials)];
        bindings.extend(outputs);
        steps.push(Step {
            overrides: finalize_overrides,
            params: Some(scalars(self.finalize_params())),
            bindings,
            workgroups: self.plan.finalize_workgroups(),
            ..self.step(Program::BatchStatistics, false, self.finalize_entry())
        });
        steps
    }

    /// The gradient sums, split: partials per window, then a finalize that writes
    /// `[dgamma | dbeta]` into `Grads`; under `Merge::LastWorkgroup` the partials' one step
    /// writes them itself.
    fn gradient_sum_steps(
        &self,
        partials: Range,
        overrides: &[(Override, bool)],
        relu: bool,
    ) -> Vec<Step> {
        let mut offsets = vec![self.operands.x, self.operands.dy];
        if relu {
            offsets.push(self.operands.result);
        }
        let (program, entry) = self.partials_kernel(
            (
                Program::Backward,
                ["grad_partials_contiguous", "grad_partials_strided"],
            ),
            Program::GradientSumsVec4,
            &offsets,
        );
        let reduction = self.reduction_steps(program, entry, overrides, partials, relu);
        if self.plan.merge == Merge::LastWorkgroup {
            return self.merged_in_last_workgroup(
                reduction,
                Program::LastWorkgroupGradientSums,
                overrides.to_vec(),
                |params| params,
                &[bind(Role::Grads, Range::Whole)],
            );
        }
        let mut steps = reduction;
        steps.push(Step {
            overrides: overrides.to_vec(),
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

    /// The reduction steps (one: the plan is one window) turned into `program`, which also
    /// merges each channel's or band's partials in its last workgroup and writes `outputs`:
    /// with the finalize's `overrides` and the finalize kind, and the uniform block
    /// `scalars` completes.
    fn merged_in_last_workgroup(
        &self,
        reduction: Vec<Step>,
        program: Program,
        mut overrides: Vec<(Override, bool)>,
        scalars: impl Fn(Params) -> Params,
        outputs: &[Binding],
    ) -> Vec<Step> {
        let per_thread = self.plan.finalize == FinalizeKind::PerThread;
        // The strided kernels' last workgroup merges a thread per channel only
        // (`shaders/last_workgroup.wgsl`); the planner keeps the dispatch for the others.
        debug_assert!(per_thread || self.plan.kind != ReductionKind::Strided);
        overrides.push((Override::PerThreadMerge, per_thread));
        let counters = Range::Counters(self.plan.merge_counters() as u64 * 4);
        reduction
            .into_iter()
            .map(|step| {
                let mut bindings = step.bindings;
                bindings.extend_from_slice(outputs);
                bindings.push(bind(Role::Counters, counters));
                Step {
                    variant: Variant {
                        program,
                        ..step.variant
                    },
                    overrides: overrides.clone(),
                    params: step.params.map(&scalars),
                    bindings,
                    ..step
                }
            })
            .collect()
    }

    /// The offsets of the tensors dx reads and writes: x, dy, dx, and the forward's output and
    /// dz where the epilogue has them.
    fn backward_offsets(&self, epilogue: EpilogueKind) -> Vec<u64> {
        let mut offsets = vec![self.operands.x, self.operands.dy, self.operands.dx];
        if epilogue != EpilogueKind::None {
            offsets.push(self.operands.result);
        }
        if epilogue == EpilogueKind::AddRelu {
            offsets.push(self.operands.dz);
        }
        offsets
    }

    /// What the kernels that write dx bind, fused or not: the epilogue's mask source (the
    /// forward's output) and dz where `epilogue` has them.
    fn dx_bindings(&self, w: usize, epilogue: EpilogueKind) -> Vec<Binding> {
        vec![
            bind(Role::X, Range::Window(w)),
            bind(Role::Dy, Range::Window(w)),
            bind(Role::Dx, Range::Window(w)),
            Self::tensor_or_unused(Role::Result, epilogue != EpilogueKind::None, w),
            Self::tensor_or_unused(Role::ShortcutGrad, epilogue == EpilogueKind::AddRelu, w),
            bind(Role::Stats, Range::Whole),
            whole_or_unused(Role::Affine, self.operands.affine),
            bind(Role::Grads, Range::Whole),
        ]
    }

    /// `LanesShareChannel`, where `program` declares it (the vec4 elementwise kernels): true
    /// where every vec4 of a window lies in one channel's run (channels-first runs of a
    /// multiple of four values; windows and their rows start on vec4s wherever the vec4 kernels
    /// run).
    fn add_lanes_share_channel(&self, program: Program, overrides: &mut Vec<(Override, bool)>) {
        if program.overrides().contains(&Override::LanesShareChannel) {
            overrides.push((
                Override::LanesShareChannel,
                self.plan.view.inner.is_multiple_of(4),
            ));
        }
    }

    /// dx (and dz) per window: vec4s where the plan and every tensor's offset allow; else whole
    /// words for half types and single elements for f32. `values_per_channel` replaces the
    /// plan's M in the uniform block where given (a synchronized backward's means are final:
    /// 1).
    fn input_gradient_steps(
        &self,
        overrides: &[(Override, bool)],
        epilogue: EpilogueKind,
        values_per_channel: Option<f32>,
    ) -> Vec<Step> {
        let offsets = self.backward_offsets(epilogue);
        let (program, entry) = if self.plan.vec4_at(&offsets) {
            (Program::InputGradientVec4, "input_gradient_vec4")
        } else if self.plan.dtype.is_half() {
            (Program::InputGradientWords, "input_gradient_words")
        } else {
            (Program::Backward, "input_gradient")
        };
        let mut overrides = overrides.to_vec();
        self.add_lanes_share_channel(program, &mut overrides);
        // The tensors the dispatch streams: x is bound, but read only through batch statistics.
        let streamed =
            offsets.len() - usize::from(!overrides.contains(&(Override::BatchStats, true)));
        self.windows()
            .map(|(w, window)| {
                let params = self.window_params(w);
                Step {
                    overrides: overrides.clone(),
                    params: Some(Params {
                        values_per_channel: values_per_channel.unwrap_or(params.values_per_channel),
                        ..params
                    }),
                    bindings: self.dx_bindings(w, epilogue),
                    workgroups: self.elementwise_workgroups(window, program.lanes(), streamed),
                    ..self.step(program, self.operands.inputs_share_output_buffer, entry)
                }
            })
            .collect()
    }
}

/// What a dispatch computes, for reports (`bnbench --breakdown` names each dispatch by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DispatchPart {
    /// Per-window partial sums of the batch statistics.
    StatisticsPartials,
    /// The merge of the statistics partials into mean and variance (and the running stats).
    StatisticsFinalize,
    /// Statistics partials, merged by the last workgroup to finish each channel or band.
    StatisticsPartialsMerged,
    /// Statistics and normalize in one dispatch.
    FusedForward,
    /// y from x and the statistics.
    Normalize,
    /// Per-window partial sums of dgamma and dbeta.
    GradientSumsPartials,
    /// The merge of the gradient partials into dgamma and dbeta.
    GradientSumsFinalize,
    /// Gradient partials, merged by the last workgroup to finish each channel or band.
    GradientSumsPartialsMerged,
    /// Gradient sums and dx in one dispatch.
    FusedBackward,
    /// dx from the gradient sums.
    InputGradient,
    /// The batch count of a training call on an empty batch.
    CountBatch,
}

impl DispatchPart {
    /// The name reports print.
    pub fn name(self) -> &'static str {
        match self {
            DispatchPart::StatisticsPartials => "statistics partials",
            DispatchPart::StatisticsFinalize => "statistics finalize",
            DispatchPart::StatisticsPartialsMerged => {
                "statistics partials, merged in the last workgroup"
            }
            DispatchPart::FusedForward => "fused statistics and normalize",
            DispatchPart::Normalize => "normalize",
            DispatchPart::GradientSumsPartials => "gradient sums partials",
            DispatchPart::GradientSumsFinalize => "gradient sums finalize",
            DispatchPart::GradientSumsPartialsMerged => {
                "gradient sums partials, merged in the last workgroup"
            }
            DispatchPart::FusedBackward => "fused gradient sums and dx",
            DispatchPart::InputGradient => "dx",
            DispatchPart::CountBatch => "count batch",
        }
    }
}

impl Step {
    /// What it computes, from its program and entry point (each program's entry points share
    /// these prefixes; the unit tests in `steps/tests.rs` check every kind of plan).
    pub fn part(&self) -> DispatchPart {
        use DispatchPart as Part;
        let entry = self.entry;
        match self.variant.program {
            Program::BatchStatistics if entry == "count_batch" => Part::CountBatch,
            Program::BatchStatistics | Program::StatisticsVec4 if entry.starts_with("fused") => {
                Part::FusedForward
            }
            Program::BatchStatistics if entry.starts_with("finalize") => Part::StatisticsFinalize,
            Program::BatchStatistics | Program::StatisticsVec4 => Part::StatisticsPartials,
            Program::LastWorkgroupStatistics => Part::StatisticsPartialsMerged,
            Program::LastWorkgroupGradientSums => Part::GradientSumsPartialsMerged,
            Program::Normalize | Program::NormalizeVec4 | Program::NormalizeWords => {
                Part::Normalize
            }
            Program::Backward | Program::GradientSumsVec4 if entry.starts_with("fused") => {
                Part::FusedBackward
            }
            Program::Backward if entry.starts_with("finalize") => Part::GradientSumsFinalize,
            Program::Backward if entry.contains("partials") => Part::GradientSumsPartials,
            Program::GradientSumsVec4 => Part::GradientSumsPartials,
            Program::Backward | Program::InputGradientVec4 | Program::InputGradientWords => {
                Part::InputGradient
            }
        }
    }
}

#[cfg(test)]
mod tests;
