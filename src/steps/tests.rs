//! Unit tests of the step builder (`steps.rs`): which dispatches each plan and call give, in
//! what order, with which kernels, bindings and workgroup counts.

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
                let declared = step
                    .overrides
                    .iter()
                    .find_map(|&(o, value)| (o == Override::LanesShareChannel).then_some(value));
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
