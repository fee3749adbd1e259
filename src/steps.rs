//! What an operation dispatches, as data: a pure function from a plan and a call to the list
//! of steps (program, entry point, overrides, uniform values, which buffer plays which role,
//! workgroup count). No GPU here: the unit tests below check the dispatches of every kind of
//! plan, and each step's bindings against what its entry point uses (naga); `encode.rs`
//! records a list of steps into one compute pass.

use crate::dtype::DType;
use crate::epilogue::EpilogueKind;
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
    /// these prefixes; the unit tests below check every kind of plan).
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
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::dtype::DType;
    use crate::layout::{ChannelView, Layout};
    use crate::plan::{plan, Operation, PlanLimits};

    const CPU: wgpu::DeviceType = wgpu::DeviceType::Cpu;
    const GPU: wgpu::DeviceType = wgpu::DeviceType::DiscreteGpu;

    fn limits(max_binding_bytes: u64, device_type: wgpu::DeviceType) -> PlanLimits {
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: max_binding_bytes,
            ..wgpu::Limits::default()
        };
        PlanLimits::new(&limits, device_type, wgpu::Features::empty())
    }

    /// `limits` on a device with `@coherent` storage.
    fn coherent(limits: PlanLimits) -> PlanLimits {
        PlanLimits {
            coherent_storage: true,
            ..limits
        }
    }

    fn plan_for(shape: &[usize], layout: Layout, limits: PlanLimits, operation: Operation) -> Plan {
        plan_as(shape, layout, DType::F32, limits, operation)
    }

    fn plan_as(
        shape: &[usize],
        layout: Layout,
        dtype: DType,
        limits: PlanLimits,
        operation: Operation,
    ) -> Plan {
        plan(
            ChannelView::new(shape, layout).unwrap(),
            dtype,
            limits,
            operation,
        )
        .unwrap()
    }

    /// The CPU per-thread reductions read vec4s only where every tensor they read starts on one
    /// (x for the statistics; x, dy and, with a ReLU epilogue, the forward's output for the
    /// gradient sums) and the plan's rows split into them (`C * inner % 4 == 0`), for runs of
    /// eight values or more. Other kernels and plans never take the vec4 reduction programs; the
    /// per-thread kernels have the same entry points in the scalar programs.
    #[test]
    fn per_thread_reductions_take_vec4s_only_where_what_they_read_starts_on_one() {
        let cpu_plan = |shape: &[usize], layout| {
            plan_for(shape, layout, limits(128 << 20, CPU), Operation::Backward)
        };
        let quads = cpu_plan(&[8, 6, 6, 64], Layout::ChannelsLast);
        assert_eq!(quads.kind, ReductionKind::PerThreadQuads);
        // Channels of more than FUSED_RUN_MAX_VALUES values, so not fused.
        let runs = cpu_plan(&[8, 4, 48, 48], Layout::ChannelsFirst);
        assert_eq!(runs.kind, ReductionKind::PerThread);
        // Runs of 2401 values: vec4s hold the ends of two channels' runs.
        let odd_runs = cpu_plan(&[8, 4, 49, 49], Layout::ChannelsFirst);
        assert_eq!(odd_runs.kind, ReductionKind::PerThread);
        for plan in [&runs, &odd_runs] {
            assert!(plan.fused_window().is_none());
        }
        let partials = |plan: &Plan, call: Call, operands: Operands| -> Vec<(Program, &str)> {
            steps(plan, call, &operands)
                .iter()
                .filter(|step| {
                    matches!(
                        step.part(),
                        DispatchPart::StatisticsPartials | DispatchPart::GradientSumsPartials
                    )
                })
                .map(|step| (step.variant.program, step.entry))
                .collect()
        };
        let programs = |plan: &Plan, call: Call, operands: Operands| -> Vec<Program> {
            partials(plan, call, operands)
                .into_iter()
                .map(|(program, _)| program)
                .collect()
        };
        let aligned = Operands::default();
        let relu_backward = with_epilogue(BACKWARD, EpilogueKind::Relu);
        let at = |x, dy, result| Operands {
            x,
            dy,
            result,
            ..Operands::default()
        };
        // y, dx and an unused result do not matter; dy and a used result do.
        let elsewhere = Operands {
            y: 4,
            dx: 4,
            ..at(0, 0, 4)
        };
        for (call, operands, want) in [
            (TRAINING, aligned, Program::StatisticsVec4),
            (BACKWARD, aligned, Program::GradientSumsVec4),
            (relu_backward, aligned, Program::GradientSumsVec4),
            (TRAINING, at(4, 0, 0), Program::BatchStatistics),
            (TRAINING, elsewhere, Program::StatisticsVec4),
            (BACKWARD, elsewhere, Program::GradientSumsVec4),
            (relu_backward, elsewhere, Program::Backward),
            (BACKWARD, at(0, 4, 0), Program::Backward),
        ] {
            for plan in [&quads, &runs, &odd_runs] {
                assert_eq!(
                    programs(plan, call, operands),
                    [want],
                    "{:?} {call:?} {operands:?}",
                    plan.kind
                );
            }
        }
        // Each kernel's entry point, the same in the vec4 and the scalar programs.
        for (plan, entry) in [
            (&quads, "partials_per_thread_quads"),
            (&runs, "partials_per_thread_runs"),
            (&odd_runs, "partials_per_thread_runs"),
        ] {
            assert_eq!(
                partials(plan, TRAINING, aligned),
                [(Program::StatisticsVec4, entry)]
            );
            assert_eq!(
                partials(plan, BACKWARD, aligned),
                [(Program::GradientSumsVec4, entry)]
            );
            assert_eq!(
                partials(plan, BACKWARD, at(0, 4, 0)),
                [(Program::Backward, entry)]
            );
        }
        // Runs shorter than eight values (channels-last with six channels: runs of one value)
        // are read one value at a time, in the scalar programs however the tensors sit.
        let values = cpu_plan(&[8, 6, 6, 6], Layout::ChannelsLast);
        assert_eq!(values.kind, ReductionKind::PerThread);
        for (call, want) in [
            (TRAINING, Program::BatchStatistics),
            (BACKWARD, Program::Backward),
        ] {
            assert_eq!(
                partials(&values, call, aligned),
                [(want, "partials_per_thread_values")]
            );
        }
        // Rows that do not split into vec4s (3 x 49 x 49), and GPU plans, keep the scalar
        // programs.
        for plan in [
            cpu_plan(&[8, 3, 49, 49], Layout::ChannelsFirst),
            plan_for(
                &[64, 32, 32, 64],
                Layout::ChannelsLast,
                limits(128 << 20, GPU),
                Operation::Backward,
            ),
        ] {
            assert_eq!(
                programs(&plan, TRAINING, aligned),
                [Program::BatchStatistics]
            );
            assert_eq!(programs(&plan, BACKWARD, aligned), [Program::Backward]);
        }
    }

    const NO_EPILOGUE: EpilogueKind = EpilogueKind::None;
    const TRAINING: Call = Call::TrainingForward {
        update: Update::Momentum(0.1),
        eps: 1e-5,
        epilogue: NO_EPILOGUE,
    };
    const INFERENCE: Call = Call::InferenceForward {
        eps: 1e-5,
        epilogue: NO_EPILOGUE,
    };
    const BACKWARD: Call = Call::Backward {
        batch_stats: true,
        epilogue: NO_EPILOGUE,
    };

    /// `call` with `epilogue`.
    fn with_epilogue(call: Call, epilogue: EpilogueKind) -> Call {
        match call {
            Call::TrainingForward { update, eps, .. } => Call::TrainingForward {
                update,
                eps,
                epilogue,
            },
            Call::InferenceForward { eps, .. } => Call::InferenceForward { eps, epilogue },
            Call::Backward { batch_stats, .. } => Call::Backward {
                batch_stats,
                epilogue,
            },
        }
    }

    fn operation(call: Call) -> Operation {
        match call {
            Call::TrainingForward { .. } => Operation::TrainingForward,
            Call::InferenceForward { .. } => Operation::InferenceForward,
            Call::Backward { .. } => Operation::Backward,
        }
    }

    /// Tensors at the start of their own buffers.
    fn with_affine(affine: bool) -> Operands {
        Operands {
            affine,
            ..Operands::default()
        }
    }

    fn entries(steps: &[Step]) -> Vec<&'static str> {
        steps.iter().map(|s| s.entry).collect()
    }

    #[test]
    fn fused_plans_are_one_dispatch() {
        let limits = limits(128 << 20, GPU);
        for (shape, layout, forward, backward) in [
            (
                &[3usize, 5, 67, 61][..],
                Layout::ChannelsFirst,
                "fused_forward_contiguous",
                "fused_backward_contiguous",
            ),
            (
                &[4, 16, 16, 40],
                Layout::ChannelsLast,
                "fused_forward_strided",
                "fused_backward_strided",
            ),
        ] {
            for (call, entry) in [(TRAINING, forward), (BACKWARD, backward)] {
                let plan = plan_for(shape, layout, limits, operation(call));
                assert!(plan.fused_window().is_some());
                let steps = steps(&plan, call, &with_affine(true));
                assert_eq!(entries(&steps), [entry], "{shape:?}");
                // One workgroup per channel, or per band of 32 channels.
                let want = match layout {
                    Layout::ChannelsFirst => 5,
                    Layout::ChannelsLast => 2,
                };
                assert_eq!(steps[0].workgroups, want);
            }
        }
    }

    /// CPU plans of short channels-first runs are one dispatch too, a thread per channel group
    /// (one channel of runs of 12 or 16 values, four of runs of 9), in
    /// the vec4 program where everything the kernel reads and writes starts on a vec4
    /// (y and z forward; dx, dy, the forward's output and dz backward), else in the scalar one.
    #[test]
    fn fused_per_thread_plans_are_one_dispatch_at_the_width_their_tensors_allow() {
        let cpu = limits(128 << 20, CPU);
        let add_relu = |call| with_epilogue(call, EpilogueKind::AddRelu);
        let off = |operands: Operands| Operands {
            affine: true,
            ..operands
        };
        let aligned = off(Operands::default());
        for (shape, group) in [
            (&[2usize, 516, 3, 4][..], 1),
            (&[2, 512, 4, 4], 1),
            (&[2, 2048, 3, 3], 4),
        ] {
            for (call, operands, want) in [
                (TRAINING, aligned, Program::StatisticsVec4),
                (add_relu(TRAINING), aligned, Program::StatisticsVec4),
                (
                    TRAINING,
                    off(Operands {
                        y: 4,
                        ..Operands::default()
                    }),
                    Program::BatchStatistics,
                ),
                (
                    add_relu(TRAINING),
                    off(Operands {
                        z: 4,
                        ..Operands::default()
                    }),
                    Program::BatchStatistics,
                ),
                (BACKWARD, aligned, Program::GradientSumsVec4),
                (add_relu(BACKWARD), aligned, Program::GradientSumsVec4),
                (
                    BACKWARD,
                    off(Operands {
                        dx: 4,
                        ..Operands::default()
                    }),
                    Program::Backward,
                ),
                (
                    add_relu(BACKWARD),
                    off(Operands {
                        dz: 4,
                        ..Operands::default()
                    }),
                    Program::Backward,
                ),
            ] {
                let plan = plan_for(shape, Layout::ChannelsFirst, cpu, operation(call));
                assert!(plan.fused_window().is_some(), "{shape:?}");
                let steps = steps(&plan, call, &operands);
                let entry = if operation(call) == Operation::Backward {
                    "fused_backward_per_thread"
                } else {
                    "fused_forward_per_thread"
                };
                assert_eq!(
                    steps
                        .iter()
                        .map(|step| (step.variant.program, step.entry))
                        .collect::<Vec<_>>(),
                    [(want, entry)],
                    "{shape:?} {call:?} {operands:?}"
                );
                // A thread per channel group, in workgroups of RUN_WORKGROUP_SIZE.
                assert_eq!(plan.band, group, "{shape:?}");
                assert_eq!(
                    steps[0].workgroups as usize,
                    (shape[1] / group).div_ceil(crate::plan::RUN_WORKGROUP_SIZE)
                );
            }
        }
    }

    #[test]
    fn split_plans_reduce_finalize_then_write_per_window() {
        // 8 windows under 64 KiB bindings, of four per-thread chunks each (CPU adapter).
        let small = limits(64 << 10, CPU);
        let plan = plan_for(
            &[8, 3, 64, 64],
            Layout::ChannelsFirst,
            small,
            Operation::TrainingForward,
        );
        assert_eq!((plan.windows.len(), plan.chunks_total), (8, 32));
        let training = steps(&plan, TRAINING, &with_affine(true));
        // 4 chunks x 3 channels: 12 threads, one workgroup.
        assert_eq!(training[0].params.unwrap().items, 12);
        assert_eq!(training[0].workgroups, 1);
        // Runs of 4096 values: the per-thread kernel on vec4 loads.
        let mut want = vec!["partials_per_thread_runs"; 8];
        want.push("finalize_per_thread");
        want.extend(["normalize_vec4"; 8]);
        assert_eq!(entries(&training), want);
        // Each window's steps bind that window of x and write its partial slots.
        for (w, step) in training[..8].iter().enumerate() {
            assert_eq!(step.bindings[0], bind(Role::X, Range::Window(w)));
            assert_eq!(
                step.params.unwrap().chunk_base as usize,
                plan.windows[w].chunk_base
            );
        }
        assert_eq!(
            training[0].bindings[1],
            bind(Role::Partials, Range::Partials(3 * 32 * 16))
        );
        let backward = steps(&plan, BACKWARD, &with_affine(true));
        assert_eq!(backward.len(), 17);
        assert_eq!(backward[8].entry, "finalize_per_thread");
        assert_eq!(
            backward[8].bindings[0],
            bind(Role::Partials, Range::Partials(3 * 32 * 8))
        );
        assert_eq!(backward[16].entry, "input_gradient_vec4");
    }

    #[test]
    fn every_dispatch_names_its_part() {
        use DispatchPart as Part;
        let parts = |steps: &[Step]| -> Vec<Part> { steps.iter().map(Step::part).collect() };
        let gpu = limits(128 << 20, GPU);
        let fused = plan_for(
            &[4, 16, 16, 40],
            Layout::ChannelsLast,
            gpu,
            Operation::Backward,
        );
        assert_eq!(
            parts(&steps(&fused, TRAINING, &with_affine(true))),
            [Part::FusedForward]
        );
        assert_eq!(
            parts(&steps(&fused, BACKWARD, &with_affine(true))),
            [Part::FusedBackward]
        );
        // Two windows under 64 KiB bindings: partials per window, one finalize, then per window.
        let small = limits(64 << 10, CPU);
        let split = plan_for(
            &[2, 3, 64, 64],
            Layout::ChannelsFirst,
            small,
            Operation::Backward,
        );
        assert_eq!(split.windows.len(), 2);
        let training = parts(&steps(&split, TRAINING, &with_affine(true)));
        assert_eq!(
            training,
            [
                Part::StatisticsPartials,
                Part::StatisticsPartials,
                Part::StatisticsFinalize,
                Part::Normalize,
                Part::Normalize
            ]
        );
        let backward = parts(&steps(&split, BACKWARD, &with_affine(true)));
        assert_eq!(
            backward,
            [
                Part::GradientSumsPartials,
                Part::GradientSumsPartials,
                Part::GradientSumsFinalize,
                Part::InputGradient,
                Part::InputGradient
            ]
        );
        assert_eq!(count_batch_step().part(), Part::CountBatch);
    }

    #[test]
    fn many_partials_are_merged_by_a_workgroup_per_channel() {
        let plan = plan_for(
            &[36, 2, 128, 128],
            Layout::ChannelsFirst,
            limits(128 << 20, GPU),
            Operation::TrainingForward,
        );
        let steps = steps(&plan, TRAINING, &with_affine(false));
        assert_eq!(
            entries(&steps),
            ["partials_contiguous", "finalize", "normalize_vec4"]
        );
        // 288 chunks x 2 channels of work items; the finalize a workgroup per channel.
        assert_eq!(steps[0].workgroups, 576);
        assert_eq!(steps[1].workgroups, 2);
        assert_eq!(steps[0].params.unwrap().items, 576);
    }

    #[test]
    fn one_window_plans_on_coherent_devices_merge_in_the_partials_step() {
        for (shape, layout, per_thread, counters) in [
            (&[8usize, 3, 64, 64][..], Layout::ChannelsFirst, true, 3),
            (&[2, 64, 64, 1000], Layout::ChannelsLast, true, 32),
        ] {
            let limits = coherent(limits(128 << 20, GPU));
            for (call, program, output) in [
                (TRAINING, Program::LastWorkgroupStatistics, Role::Stats),
                (BACKWARD, Program::LastWorkgroupGradientSums, Role::Grads),
            ] {
                let plan = plan_for(shape, layout, limits, operation(call));
                assert_eq!(plan.merge, Merge::LastWorkgroup);
                let steps = steps(&plan, call, &with_affine(true));
                // The partials, then the elementwise pass: no finalize.
                assert_eq!(steps.len(), 2, "{:?}", entries(&steps));
                let merged = &steps[0];
                assert_eq!(merged.variant.program, program);
                assert!(merged.entry.contains("partials"), "{}", merged.entry);
                assert!(merged
                    .overrides
                    .contains(&(Override::PerThreadMerge, per_thread)));
                assert!(merged
                    .bindings
                    .contains(&bind(Role::Counters, Range::Counters(counters * 4))));
                assert!(merged.bindings.contains(&bind(output, Range::Whole)));
                // The same workgroups and uniform block as the split path's partials, but for
                // the finalize's scalars.
                let split = Plan {
                    merge: Merge::Dispatch,
                    ..plan.clone()
                };
                let split_steps = self::steps(&split, call, &with_affine(true));
                assert_eq!(split_steps.len(), 3);
                assert_eq!(merged.workgroups, split_steps[0].workgroups);
                let params = merged.params.unwrap();
                let finalize = split_steps[1].params.unwrap();
                assert_eq!(
                    (params.eps, params.momentum, params.var_correction),
                    (finalize.eps, finalize.momentum, finalize.var_correction)
                );
                assert_eq!(
                    Params {
                        eps: 0.0,
                        momentum: 0.0,
                        var_correction: 0.0,
                        ..params
                    },
                    split_steps[0].params.unwrap()
                );
            }
        }
    }

    #[test]
    fn inference_is_one_elementwise_dispatch_per_window_from_the_running_stats() {
        let plan = plan_for(
            &[5, 7, 3],
            Layout::ChannelsLast,
            limits(128 << 20, CPU),
            Operation::InferenceForward,
        );
        let steps = steps(&plan, INFERENCE, &with_affine(true));
        assert_eq!(entries(&steps), ["normalize"]);
        let step = &steps[0];
        assert!(step.overrides.contains(&(Override::FromRunning, true)));
        assert!(step.bindings.contains(&bind(Role::Running, Range::Whole)));
        assert_eq!(step.params.unwrap().eps, 1e-5);
    }

    /// The vec4 normalize and dx kernels find one channel's factors a thread where every vec4
    /// lies in one channel's run (channels-first runs of a multiple of four values), and each
    /// lane's elsewhere (runs of 49 values, channels-last); the other programs do not declare
    /// the override.
    #[test]
    fn vec4_elementwise_kernels_know_what_channels_their_lanes_hold() {
        // 4 KiB bindings: several windows, so the backward is split too.
        let gpu = limits(4 << 10, GPU);
        // (shape, layout, LANES_SHARE_CHANNEL of the vec4 kernels, their lanes four channels
        // read as quads of the per-channel vectors)
        for (shape, layout, share, quads) in [
            (
                &[8usize, 3, 16, 16][..],
                Layout::ChannelsFirst,
                Some(true),
                false,
            ),
            (
                &[8, 3, 12, 12][..],
                Layout::ChannelsFirst,
                Some(true),
                false,
            ),
            (&[8, 4, 7, 7][..], Layout::ChannelsFirst, Some(false), false),
            (
                &[8, 16, 16, 12][..],
                Layout::ChannelsLast,
                Some(false),
                true,
            ),
            // Rows that do not split into vec4s: the scalar kernels.
            (&[64, 3, 5, 5][..], Layout::ChannelsFirst, None, false),
            (&[64, 6, 5, 5][..], Layout::ChannelsLast, None, false),
        ] {
            for call in [INFERENCE, BACKWARD] {
                let plan = plan_for(shape, layout, gpu, operation(call));
                assert!(plan.windows.len() > 1, "{shape:?}");
                let steps = steps(&plan, call, &with_affine(true));
                let vec4_steps = steps
                    .iter()
                    .filter(|step| step.entry.ends_with("_vec4"))
                    .count();
                assert_eq!(vec4_steps > 0, share.is_some(), "{shape:?}");
                for step in steps {
                    let elementwise = ["normalize_vec4", "input_gradient_vec4"];
                    let declared = step.overrides.iter().find_map(|&(o, value)| {
                        (o == Override::LanesShareChannel).then_some(value)
                    });
                    if elementwise.contains(&step.entry) {
                        assert_eq!(declared, share, "{shape:?} {}", step.entry);
                        assert_eq!(
                            step.variant.channel_quads, quads,
                            "{shape:?} {}",
                            step.entry
                        );
                    } else {
                        assert_eq!(declared, None, "{shape:?} {}", step.entry);
                        assert!(!step.variant.channel_quads, "{shape:?} {}", step.entry);
                    }
                }
            }
        }
    }

    #[test]
    fn optional_parameters_and_running_stats_bind_stand_ins() {
        let plan = plan_for(
            &[3, 5, 67, 61],
            Layout::ChannelsFirst,
            limits(128 << 20, GPU),
            Operation::TrainingForward,
        );
        let call = Call::TrainingForward {
            update: Update::None,
            eps: 1e-5,
            epilogue: NO_EPILOGUE,
        };
        let step = &steps(&plan, call, &with_affine(false))[0];
        assert!(step.bindings.contains(&bind(Role::Running, Range::Unused)));
        assert!(step.bindings.contains(&bind(Role::Affine, Range::Unused)));
        assert!(step.overrides.contains(&(Override::HasRunning, false)));
        assert!(step.overrides.contains(&(Override::HasAffine, false)));
    }

    #[test]
    fn elementwise_dispatches_stride_whole_rows_where_they_can() {
        // 16x3x128x128 on a CPU adapter: 24 workgroups of vec4s wanted (16 steps each for x
        // and y), 48 taken: the fewest whose grid is a whole number of rows.
        let plan = plan_for(
            &[16, 3, 128, 128],
            Layout::ChannelsFirst,
            limits(128 << 20, CPU),
            Operation::InferenceForward,
        );
        let step = &steps(&plan, INFERENCE, &with_affine(true))[0];
        let row_vec4s = 3 * 128 * 128 / 4;
        assert_eq!(step.workgroups, 48);
        assert_eq!(step.workgroups as usize * 256 % row_vec4s, 0);
    }

    /// On a CPU adapter an elementwise thread takes fewer steps the more tensors it streams:
    /// 8192x4096's normalize (x, y) 16 steps, its dx (x, dy, dx) and its normalize with an
    /// added shortcut (x, z, y) 8, its dx under the add-ReLU epilogue (x, dy, the forward's
    /// output, dx, dz) 4, and its dx through running statistics (x is not read) 16, or 8 under
    /// add-ReLU.
    #[test]
    fn cpu_elementwise_steps_shrink_with_the_tensors_streamed() {
        let elementwise_groups = |operation, call| {
            let plan = plan_for(
                &[8192, 4096],
                Layout::ChannelsLast,
                limits(1 << 30, CPU),
                operation,
            );
            let steps = steps(&plan, call, &with_affine(true));
            let last = steps.last().unwrap();
            assert!(matches!(
                last.part(),
                DispatchPart::Normalize | DispatchPart::InputGradient
            ));
            last.workgroups
        };
        let one_step_workgroups = 8192 * 4096 / 4 / 256;
        let add_relu = |call| with_epilogue(call, EpilogueKind::AddRelu);
        let running = Call::Backward {
            batch_stats: false,
            epilogue: EpilogueKind::None,
        };
        for (operation, call, steps) in [
            (Operation::InferenceForward, INFERENCE, 16),
            (Operation::TrainingForward, TRAINING, 16),
            (Operation::Backward, running, 16),
            (Operation::Backward, BACKWARD, 8),
            (Operation::InferenceForward, add_relu(INFERENCE), 8),
            (Operation::TrainingForward, add_relu(TRAINING), 8),
            (Operation::Backward, add_relu(BACKWARD), 4),
            (Operation::Backward, add_relu(running), 8),
        ] {
            assert_eq!(
                elementwise_groups(operation, call),
                one_step_workgroups / steps,
                "{call:?}"
            );
        }
    }

    #[test]
    fn views_shift_each_tensor_and_pick_scalar_kernels_off_a_vec4() {
        let plan = plan_for(
            &[8, 3, 64, 64],
            Layout::ChannelsFirst,
            limits(64 << 10, CPU),
            Operation::Backward,
        );
        let operands = Operands {
            affine: true,
            x: 12,
            dy: 1024,
            dx: 4100,
            inputs_share_output_buffer: true,
            ..Operands::default()
        };
        let steps = steps(&plan, BACKWARD, &operands);
        // Window 1 starts 12288 elements in: x at byte 12 + 49152, a binding 256-aligned.
        let params = steps[1].params.unwrap();
        assert_eq!(params.x_shift, ((12 + 49152) % 256 / 4) as u32);
        assert_eq!(params.dy_shift, 0, "dy starts on an aligned byte");
        assert_eq!(params.dx_shift, ((4100 + 49152) % 256 / 4) as u32);
        // x and dx do not start on a vec4: the scalar dx kernel.
        assert_eq!(steps.last().unwrap().entry, "input_gradient");
        // Only the steps that write dx take the read-write variant.
        for step in &steps {
            let writes = step.bindings.iter().any(|b| b.role == Role::Dx);
            assert_eq!(step.variant.inputs_read_write, writes, "{}", step.entry);
        }
        let aligned = Operands {
            x: 16,
            dy: 1024,
            dx: 4112,
            ..operands
        };
        assert_eq!(
            self::steps(&plan, BACKWARD, &aligned).last().unwrap().entry,
            "input_gradient_vec4"
        );
    }

    /// The storage bindings an entry point uses, and whether it reads the uniform block, from
    /// naga.
    pub(super) fn used_bindings(variant: Variant, entry: &str) -> (BTreeSet<u32>, bool) {
        let source = variant.source();
        let module = naga::front::wgsl::parse_str(&source).expect("valid WGSL");
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            crate::shader::CAPABILITIES,
        )
        .validate(&module)
        .expect("valid WGSL");
        let index = module
            .entry_points
            .iter()
            .position(|e| e.name == entry)
            .unwrap_or_else(|| panic!("{variant:?} has no entry point {entry}"));
        let uses = info.get_entry_point(index);
        let used = |space: fn(&naga::AddressSpace) -> bool| {
            module
                .global_variables
                .iter()
                .filter(|(handle, var)| space(&var.space) && !uses[*handle].is_empty())
                .map(|(_, var)| var.binding.as_ref().expect("a resource binding").binding)
                .collect::<BTreeSet<u32>>()
        };
        (
            used(|space| matches!(space, naga::AddressSpace::Storage { .. })),
            !used(|space| *space == naga::AddressSpace::Uniform).is_empty(),
        )
    }

    /// Every step of every kind of plan binds exactly what its entry point uses, so no bind
    /// group can miss or add a binding on any adapter.
    #[test]
    fn every_step_binds_what_its_entry_point_uses() {
        let cases: [(&[usize], Layout, PlanLimits); 11] = [
            (
                &[3, 5, 67, 61],
                Layout::ChannelsFirst,
                limits(128 << 20, GPU),
            ),
            (
                &[4, 16, 16, 40],
                Layout::ChannelsLast,
                limits(128 << 20, GPU),
            ),
            (
                &[8, 3, 64, 64],
                Layout::ChannelsFirst,
                limits(64 << 10, GPU),
            ),
            (
                &[4, 16, 16, 40],
                Layout::ChannelsLast,
                limits(128 << 20, CPU),
            ),
            (
                &[8, 3, 64, 64],
                Layout::ChannelsFirst,
                limits(64 << 10, CPU),
            ),
            (
                &[10, 64, 63, 8],
                Layout::ChannelsLast,
                limits(128 << 20, GPU),
            ),
            (&[2, 3, 7, 7], Layout::ChannelsFirst, limits(1024, CPU)),
            // Merged in the last workgroup: contiguous and strided per thread (32 partials a
            // channel), and a half tensor of one chunk per channel.
            (
                &[8, 3, 64, 64],
                Layout::ChannelsFirst,
                coherent(limits(128 << 20, GPU)),
            ),
            (
                &[2, 64, 64, 1000],
                Layout::ChannelsLast,
                coherent(limits(128 << 20, GPU)),
            ),
            (
                &[3, 5, 7, 7],
                Layout::ChannelsFirst,
                coherent(limits(128 << 20, GPU)),
            ),
            // Fused a thread per channel group: the vec4 programs, and the scalar ones where x
            // starts off a vec4 (below).
            (
                &[2, 512, 4, 4],
                Layout::ChannelsFirst,
                limits(128 << 20, CPU),
            ),
        ];
        let calls = [
            TRAINING,
            Call::TrainingForward {
                update: Update::None,
                eps: 1e-5,
                epilogue: NO_EPILOGUE,
            },
            Call::TrainingForward {
                update: Update::Cumulative,
                eps: 1e-5,
                epilogue: NO_EPILOGUE,
            },
            INFERENCE,
            BACKWARD,
            Call::Backward {
                batch_stats: false,
                epilogue: NO_EPILOGUE,
            },
        ];
        let variations = [
            (true, EpilogueKind::None),
            (false, EpilogueKind::None),
            (false, EpilogueKind::Relu),
            (true, EpilogueKind::AddRelu),
        ];
        let mut seen = BTreeSet::new();
        let mut sources = std::collections::HashMap::new();
        for (shape, layout, limits) in cases {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                for call in calls {
                    let plan = plan_as(shape, layout, dtype, limits, operation(call));
                    for ((affine, epilogue), x) in variations.into_iter().zip([0, 0, 0, 4]) {
                        let call = with_epilogue(call, epilogue);
                        let operands = Operands {
                            x,
                            ..with_affine(affine)
                        };
                        for step in steps(&plan, call, &operands) {
                            let bound: BTreeSet<u32> =
                                step.bindings.iter().map(|b| b.role.binding()).collect();
                            assert_eq!(bound.len(), step.bindings.len(), "{step:?}");
                            let variant = step.variant;
                            let (used, reads_params) = sources
                                .entry((variant, step.entry))
                                .or_insert_with(|| used_bindings(variant, step.entry))
                                .clone();
                            assert_eq!(bound, used, "{variant:?} {}", step.entry);
                            assert_eq!(step.params.is_some(), reads_params, "{}", step.entry);
                            seen.insert((format!("{:?}", step.variant.program), step.entry));
                        }
                    }
                }
            }
        }
        // Every entry point of every program was reached.
        assert_eq!(seen.len(), 35, "{seen:?}");
    }
}
