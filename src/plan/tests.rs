//! Unit tests of the planner (`plan.rs`): windows, chunks, kernels and workgroup counts for
//! GPU and CPU adapters, each rule on the limits it depends on.

use super::*;
use crate::layout::Layout;

const TRAINING: Operation = Operation::TrainingForward;

const WEBGPU_DEFAULT: PlanLimits = PlanLimits {
    max_binding_bytes: 128 << 20,
    offset_alignment: 256,
    max_workgroups: 65535,
    elementwise_workgroups: 65535,
    elementwise_streams: 1,
    elementwise_workgroup_multiple: 1,
    max_reduction_items: u32::MAX,
    per_thread_reductions: false,
    min_reduction_items: MIN_GPU_REDUCTION_ITEMS,
    coherent_storage: false,
};

/// WebGPU's defaults with another binding limit, and no GPU chunk shrinking, so the window
/// and chunk rules show on their own.
fn binding_limits(max_binding_bytes: u64) -> PlanLimits {
    PlanLimits {
        max_binding_bytes,
        min_reduction_items: 0,
        ..WEBGPU_DEFAULT
    }
}

/// A CPU adapter's limits under wgpu's defaults.
fn cpu_defaults() -> PlanLimits {
    PlanLimits::new(
        &wgpu::Limits::default(),
        wgpu::DeviceType::Cpu,
        wgpu::Features::empty(),
    )
}

fn view(shape: &[usize], layout: Layout) -> ChannelView {
    ChannelView::new(shape, layout).unwrap()
}

/// The f32 plan of `operation` on `shape` under WebGPU's default limits.
fn webgpu_f32_plan(shape: &[usize], layout: Layout, operation: Operation) -> Plan {
    plan(view(shape, layout), DType::F32, WEBGPU_DEFAULT, operation).unwrap()
}

/// Every element of every channel is covered exactly once, inside its binding, for a
/// tensor at the start of its buffer and for tensors at other offsets (multiples of 4).
fn assert_covers(plan: &Plan, limits: PlanLimits) {
    let v = plan.view;
    for tensor_offset in [0u64, 4, 12, 100, 252] {
        let mut seen = vec![0u8; v.len()];
        for (k, w) in plan.windows.iter().enumerate() {
            let binding = plan.window_binding(k, tensor_offset);
            assert_eq!(binding.offset % limits.offset_alignment, 0);
            assert!(binding.size <= limits.max_binding_bytes);
            for o in w.o0..w.o0 + w.o_count {
                for c in w.c0..w.c0 + w.c_count {
                    for i in 0..v.inner {
                        let flat = v.index(o, c, i);
                        let in_binding = binding.shift
                            + (o - w.o0) * v.channels * v.inner
                            + (c - w.c0) * v.inner
                            + i;
                        assert_eq!(
                            binding.offset + in_binding as u64 * 4,
                            tensor_offset + flat as u64 * 4
                        );
                        assert!(((in_binding as u64) + 1) * 4 <= binding.size);
                        seen[flat] += 1;
                    }
                }
            }
        }
        assert!(seen.iter().all(|&s| s == 1));
    }
}

#[test]
fn small_tensor_is_one_window() {
    let p = webgpu_f32_plan(&[8, 3, 5, 5], Layout::ChannelsFirst, TRAINING);
    assert_eq!(p.windows.len(), 1);
    assert_eq!(p.kind, ReductionKind::Contiguous);
    assert_eq!(p.window_binding(0, 0).size, 8 * 3 * 25 * 4);
    assert_eq!(p.chunks_total, 1);
    assert_eq!(p.finalize, FinalizeKind::PerThread);
}

#[test]
fn fused_only_for_one_window_of_one_chunk_per_channel() {
    let fused = [
        (vec![8, 3, 5, 5], Layout::ChannelsFirst),
        (vec![64, 1024, 14, 14], Layout::ChannelsFirst),
        (vec![256, 1024], Layout::ChannelsFirst),
        (vec![4, 16, 16, 64], Layout::ChannelsLast),
    ];
    for (shape, layout) in fused {
        let p = webgpu_f32_plan(&shape, layout, TRAINING);
        assert!(p.fused_window().is_some(), "{shape:?}");
    }
    let split = [
        // More than one chunk per channel.
        (vec![64, 64, 112, 112], Layout::ChannelsFirst),
        (vec![8192, 4096], Layout::ChannelsFirst),
        (vec![64, 14, 14, 1024], Layout::ChannelsLast),
        // More than one window.
        (vec![1, 40, 1 << 20], Layout::ChannelsFirst),
    ];
    for (shape, layout) in split {
        let p = webgpu_f32_plan(&shape, layout, TRAINING);
        assert!(p.fused_window().is_none(), "{shape:?}");
    }
}

#[test]
fn vec4_only_where_rows_split_into_whole_vec4s() {
    let yes = [
        (vec![2, 3, 4, 4], Layout::ChannelsFirst),
        (vec![2, 5, 5, 8], Layout::ChannelsLast),
        (vec![3, 8], Layout::ChannelsFirst),
        // Runs of 49, 9, 3 and 2 values: some vec4s hold the end of one channel's run and
        // the start of the next.
        (vec![2, 4, 7, 7], Layout::ChannelsFirst),
        (vec![2, 4, 3, 3], Layout::ChannelsFirst),
        (vec![2, 4, 3], Layout::ChannelsFirst),
        (vec![2, 6, 2], Layout::ChannelsFirst),
    ];
    for (shape, layout) in yes {
        assert!(webgpu_f32_plan(&shape, layout, TRAINING).vec4, "{shape:?}");
    }
    let no = [
        (vec![2, 3, 7, 7], Layout::ChannelsFirst),
        (vec![2, 4, 4, 3], Layout::ChannelsLast),
        (vec![3, 6], Layout::ChannelsFirst),
        (vec![2, 5, 3, 3], Layout::ChannelsFirst),
        (vec![2, 3, 2], Layout::ChannelsFirst),
    ];
    for (shape, layout) in no {
        assert!(!webgpu_f32_plan(&shape, layout, TRAINING).vec4, "{shape:?}");
    }
    // Windows of a channel range (16 channels of runs of 1001 values), each starting on a
    // vec4: vec4s straddle runs inside them.
    let windowed = plan(
        view(&[2, 32, 7, 143], Layout::ChannelsFirst),
        DType::F32,
        binding_limits(64 << 10),
        TRAINING,
    )
    .unwrap();
    assert!(windowed.vec4);
    assert_eq!(windowed.windows.len(), 4);
    assert!(windowed.windows.iter().all(|w| w.c_count == 16));
}

#[test]
fn channels_with_many_partials_are_merged_by_a_workgroup() {
    let p = webgpu_f32_plan(&[64, 8, 112, 112], Layout::ChannelsFirst, TRAINING);
    assert!(p.chunks_total > PER_THREAD_FINALIZE_MAX_PARTIALS);
    assert_eq!(p.finalize, FinalizeKind::PerWorkgroup);
}

#[test]
fn channels_last_and_rank_two_use_the_strided_kernel() {
    let nhwc = webgpu_f32_plan(&[2, 4, 4, 70], Layout::ChannelsLast, TRAINING);
    assert_eq!(nhwc.kind, ReductionKind::Strided);
    assert_eq!(nhwc.windows[0].reduction_items(nhwc.kind, nhwc.band), 3);
    let nc = webgpu_f32_plan(&[4200, 7], Layout::ChannelsFirst, TRAINING);
    assert_eq!(nc.kind, ReductionKind::Strided);
    // Too tall to fuse in a band of 16 channels, and far from MIN_GPU_REDUCTION_ITEMS:
    // chunks shrink to the floor.
    assert!(nc.fused_window().is_none());
    assert_eq!(nc.chunks_total, 4200usize.div_ceil(MIN_STRIDED_CHUNK_ROWS));
}

/// A channels-last tensor too tall for one workgroup per 32 channels is fused for the
/// training forward in `NARROW_BAND` where its workgroups hold as many values and there are
/// enough of them; backwards, taller ones, ones of too few channels, half types and
/// several windows are not.
#[test]
fn tall_channels_last_tensors_fuse_in_narrower_bands() {
    for (shape, band, rows) in [
        // 2048 rows: 16 channels a workgroup, 64 workgroups, the last of 8 channels.
        (&[32usize, 8, 8, 1016][..], NARROW_BAND, 2048),
        // 1024 rows: fused in 32 as before.
        (&[16, 8, 8, 40][..], STRIDED_BAND, 1024),
    ] {
        let p = webgpu_f32_plan(shape, Layout::ChannelsLast, TRAINING);
        assert_eq!(p.kind, ReductionKind::Strided, "{shape:?}");
        assert_eq!(p.band, band, "{shape:?}");
        let window = p.fused_window().expect("fused");
        assert_eq!(window.o_count, rows);
        assert_eq!(
            window.reduction_items(p.kind, p.band),
            shape[3].div_ceil(band),
            "{shape:?}"
        );
        assert!(band * rows <= STRIDED_BAND * STRIDED_CHUNK_ROWS);
        assert_eq!(p.partials_bytes(16), 0);
        // The backward is fused only where 32 channels a workgroup fit.
        let backward = webgpu_f32_plan(shape, Layout::ChannelsLast, Operation::Backward);
        assert_eq!(backward.band, STRIDED_BAND, "{shape:?}");
        assert_eq!(
            backward.fused_window().is_some(),
            band == STRIDED_BAND,
            "{shape:?}"
        );
    }
    // 3136 and 2049 rows: too tall for 16 channels; 64 channels: 4 workgroups, too few.
    for shape in [&[64, 7, 7, 2048][..], &[2049, 2048], &[32, 8, 8, 64]] {
        let not_fused = webgpu_f32_plan(shape, Layout::ChannelsLast, TRAINING);
        assert_eq!(
            (not_fused.band, not_fused.fused_window().is_none()),
            (STRIDED_BAND, true),
            "{shape:?}"
        );
    }
    // f16: never fused; two windows: never fused.
    let half = plan(
        view(&[32, 8, 8, 1024], Layout::ChannelsLast),
        DType::F16,
        WEBGPU_DEFAULT,
        TRAINING,
    )
    .unwrap();
    assert_eq!(
        (half.band, half.fused_window().is_none()),
        (STRIDED_BAND, true)
    );
    let split = plan(
        view(&[2048, 1024], Layout::ChannelsLast),
        DType::F32,
        binding_limits(512 << 10),
        TRAINING,
    )
    .unwrap();
    assert!(split.windows.len() > 1);
    assert_eq!(
        (split.band, split.fused_window().is_none()),
        (STRIDED_BAND, true)
    );
}

#[test]
fn gpu_plans_that_are_not_fused_shrink_chunks_to_fill_the_device() {
    // 14x14 channels-last: 13 chunks x 32 bands at 1024 rows; 49 x 32 at 256 rows, merged
    // by a workgroup a channel.
    let nhwc = webgpu_f32_plan(&[64, 14, 14, 1024], Layout::ChannelsLast, TRAINING);
    assert_eq!(nhwc.chunk_len, 256);
    assert_eq!(nhwc.reduction_items(), 49 * 32);
    assert_eq!(nhwc.finalize, FinalizeKind::PerWorkgroup);
    // 7x7 channels-last, 64 bands: halving gives 25 x 64 at 128 rows, merged by a thread a
    // channel, so the chunks lengthen to 196 rows (3136 / 16), 16 x 64 items.
    for operation in [TRAINING, Operation::Backward] {
        let even = webgpu_f32_plan(&[64, 7, 7, 2048], Layout::ChannelsLast, operation);
        assert_eq!(even.chunk_len, 196);
        assert_eq!(even.reduction_items(), 16 * 64);
        assert_eq!(even.finalize, FinalizeKind::PerThread);
    }
    // Rows that do not split evenly: rounding down still gives at least 1024 items (64
    // bands, 3137 rows: 17 chunks of 196 rows, where halving gave 25 of 128).
    let uneven = webgpu_f32_plan(&[3137, 2048], Layout::ChannelsLast, Operation::Backward);
    assert_eq!((uneven.chunk_len, uneven.chunks_total), (196, 17));
    assert!(uneven.reduction_items() >= MIN_GPU_REDUCTION_ITEMS as usize);
    // Where halving gave chunks no longer than the even split, they stay (62 bands, 4097
    // rows: 17 chunks of 256; the even split, 241 rows, would be shorter).
    let kept = webgpu_f32_plan(&[4097, 1960], Layout::ChannelsLast, TRAINING);
    assert_eq!((kept.chunk_len, kept.chunks_total), (256, 17));
    // Enough items at the full chunk: unchanged.
    let big = webgpu_f32_plan(&[64, 64, 112, 112], Layout::ChannelsFirst, TRAINING);
    assert_eq!(big.chunk_len, CONTIGUOUS_CHUNK);
    // Fused plans keep their one chunk per channel.
    let fused = webgpu_f32_plan(&[64, 1024, 14, 14], Layout::ChannelsFirst, TRAINING);
    assert!(fused.fused_window().is_some());
    // Never below eight values per thread.
    let tiny = webgpu_f32_plan(&[4200, 64], Layout::ChannelsLast, TRAINING);
    assert_eq!(tiny.chunk_len, MIN_STRIDED_CHUNK_ROWS);
    let nchw = webgpu_f32_plan(&[2, 2, 300, 300], Layout::ChannelsFirst, TRAINING);
    assert_eq!(nchw.chunk_len, MIN_CONTIGUOUS_CHUNK);
}

#[test]
fn windows_over_whole_rows_cover_every_element_once() {
    let limits = binding_limits(1024);
    for (shape, layout) in [
        (vec![7, 3, 5, 3], Layout::ChannelsFirst),
        (vec![9, 5, 7], Layout::ChannelsLast),
        (vec![100, 3], Layout::ChannelsFirst),
    ] {
        let p = plan(view(&shape, layout), DType::F32, limits, TRAINING).unwrap();
        assert!(p.windows.len() > 1, "{shape:?} should need several windows");
        assert_covers(&p, limits);
    }
}

#[test]
fn a_row_larger_than_a_binding_is_split_by_channel() {
    let limits = binding_limits(1024);
    let p = plan(
        view(&[3, 10, 50], Layout::ChannelsFirst),
        DType::F32,
        limits,
        TRAINING,
    )
    .unwrap();
    assert!(p.windows.iter().all(|w| w.o_count == 1 && w.c_count < 10));
    assert_covers(&p, limits);
    // Each outer row adds one chunk per channel.
    assert_eq!(p.chunks_total, 3);
}

#[test]
fn a_run_larger_than_a_binding_is_refused() {
    let limits = binding_limits(1024);
    let err = plan(
        view(&[1, 2, 1000], Layout::ChannelsFirst),
        DType::F32,
        limits,
        TRAINING,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            BatchNormError::RunTooLarge {
                bytes: 4000,
                max: 768
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("3232 bytes more"), "{err}");
}

#[test]
fn chunk_slots_are_distinct_and_in_range() {
    let limits = binding_limits(64 << 10);
    let p = plan(
        view(&[40, 3, 30, 30], Layout::ChannelsFirst),
        DType::F32,
        limits,
        TRAINING,
    )
    .unwrap();
    let mut next = 0;
    for w in &p.windows {
        assert_eq!(w.chunk_base, next);
        next += w.chunks;
    }
    assert_eq!(next, p.chunks_total);
}

#[test]
fn chunks_grow_until_the_partials_fit_in_a_binding() {
    let limits = binding_limits(96 << 10);
    // 342 windows of 1536 rows: two chunks each overflow the binding, one fits.
    let p = plan(
        view(&[1 << 19, 16], Layout::ChannelsLast),
        DType::F32,
        limits,
        TRAINING,
    )
    .unwrap();
    assert!(p.chunk_len > STRIDED_CHUNK_ROWS);
    assert!(16 * p.chunks_total as u64 * STATISTICS_PARTIAL_BYTES <= limits.max_binding_bytes);
    assert_covers(&p, limits);
}

#[test]
fn partials_are_sized_per_operation() {
    // 54 windows of 138 rows, one chunk each: 118 x 54 partials.
    let limits = binding_limits(64 << 10);
    let nlc = view(&[1241, 6, 118], Layout::ChannelsLast);
    let err = plan(nlc, DType::F32, limits, TRAINING).unwrap_err();
    assert!(
        matches!(
            err,
            BatchNormError::PartialsTooLarge {
                operation: "training forward",
                channels: 118,
                chunks: 54,
                partial_bytes: 16,
                bytes: 101_952,
                max: 65_536,
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("101952") && message.contains("36416"),
        "{message}"
    );
    // Eight-byte partials fit; inference has none.
    let backward = plan(nlc, DType::F32, limits, Operation::Backward).unwrap();
    assert_eq!(backward.partials_bytes(GRADIENT_PARTIAL_BYTES), 50_976);
    plan(nlc, DType::F32, limits, Operation::InferenceForward).unwrap();
}

#[test]
fn fused_plans_need_no_partials() {
    // x is 67 MB, a per-channel pair 67 MB; 16-byte partials would be 134 MB.
    let limits = binding_limits(128 << 20);
    let wide = view(&[2, 8_389_632], Layout::ChannelsFirst);
    for operation in [TRAINING, Operation::InferenceForward, Operation::Backward] {
        let p = plan(wide, DType::F32, limits, operation).unwrap();
        assert!(p.fused_window().is_some(), "{operation:?}");
        assert_eq!(p.partials_bytes(STATISTICS_PARTIAL_BYTES), 0);
    }
}

#[test]
fn per_channel_vectors_over_a_binding_are_refused() {
    let limits = binding_limits(1024);
    let err = plan(
        view(&[2, 129], Layout::ChannelsFirst),
        DType::F32,
        limits,
        Operation::InferenceForward,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            BatchNormError::ChannelVectorsTooLarge {
                channels: 129,
                bytes: 1032,
                max: 1024
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("8 bytes over"), "{err}");
}

#[test]
fn windows_stay_within_u32_indexing_whatever_the_binding_limit() {
    let limits = PlanLimits {
        max_binding_bytes: 1 << 40,
        ..WEBGPU_DEFAULT
    };
    let p = plan(
        view(&[6, 4, 1 << 28], Layout::ChannelsFirst),
        DType::F32,
        limits,
        TRAINING,
    )
    .unwrap();
    assert!(p.windows.len() > 1);
    for w in 0..p.windows.len() {
        assert!(p.window_binding(w, 0).size / 4 <= MAX_WINDOW_VALUES);
    }
}

#[test]
fn workgroup_counts_are_capped_by_the_device() {
    assert_eq!(workgroups_for_items(70_000, WEBGPU_DEFAULT), 65535);
    assert_eq!(workgroups_for_items(0, WEBGPU_DEFAULT), 1);
    assert_eq!(workgroups_for_threads(257, WEBGPU_DEFAULT), 2);
}

#[test]
fn cpu_adapters_give_each_elementwise_thread_several_steps() {
    let limits = wgpu::Limits::default();
    let cpu = PlanLimits::new(&limits, wgpu::DeviceType::Cpu, wgpu::Features::empty());
    let gpu = PlanLimits::new(
        &limits,
        wgpu::DeviceType::DiscreteGpu,
        wgpu::Features::empty(),
    );
    // 2^24 steps of a normalize (x and y): a GPU takes its budget of workgroups, a CPU
    // adapter one workgroup per 16 steps of each of its threads; a dx through batch
    // statistics (x, dy, dx) 8 steps, with the add-ReLU epilogue (also the forward's
    // output and dz) 4; a GPU the same budget whatever the tensors.
    for (tensors, steps) in [(2, 16), (3, 8), (4, 8), (5, 4)] {
        assert_eq!(cpu.elementwise_steps(tensors), steps);
        assert_eq!(
            workgroups_for_elements(1 << 24, 64, tensors, cpu) as usize,
            (1 << 24) / (WORKGROUP_SIZE * steps as usize)
        );
        assert_eq!(
            workgroups_for_elements(1 << 24, 64, tensors, gpu),
            GPU_ELEMENTWISE_WORKGROUPS
        );
    }
    // The second window of a 64x256x56x56 channels-last dx (4456512 vec4s in rows of 64,
    // 2176.03 workgroups of 8 steps wanted): a multiple of 8 workgroups on a CPU adapter,
    // not 2177; a GPU keeps a count off a multiple of 8 (one step a thread).
    assert_eq!(workgroups_for_elements(4_456_512, 64, 3, cpu), 2176);
    assert_eq!(workgroups_for_elements(2177 * 256, 64, 3, gpu), 2177);
    // Rounding down would cost more than 1/16 of the count: the count wanted (7 or 13
    // workgroups, not 0 or 8).
    assert_eq!(workgroups_for_elements(7 * 4096, 64, 2, cpu), 7);
    assert_eq!(workgroups_for_elements(13 * 4096, 64, 2, cpu), 13);
    // Rows of 12 (a whole-row stride needs a multiple of 3 workgroups: 768 threads, 64
    // rows): 1024 wanted take the common multiple of 3 and 8 below, 1008; 20 wanted take
    // 18, a multiple of 3, since 16 would cost more than 1/16.
    assert_eq!(workgroups_for_elements(1 << 22, 12, 2, cpu), 1008);
    assert_eq!(workgroups_for_elements(20 * 4096, 12, 2, cpu), 18);
    // A channels-first 48x64x56x56 (rows of 50176 vec4s, a unit of 196 workgroups, 588
    // wanted): 588, not the 392 that a multiple of 8 would take.
    assert_eq!(workgroups_for_elements(48 * 50176, 50176, 2, cpu), 588);
    // More tensors than the budget: still one step.
    assert_eq!(cpu.elementwise_steps(CPU_ELEMENTWISE_STREAMS + 1), 1);
    // A small tensor: one workgroup, whose threads take fewer steps.
    assert_eq!(workgroups_for_elements(4096, 64, 2, cpu), 1);
    // Still a whole number of rows per grid step.
    assert_eq!(workgroups_for_elements(1 << 24, 12, 2, cpu) * 256 % 12, 0);
    // A row unit above the count wanted, whose threads all have elements: one unit (784
    // workgroups of vec4s for 8 rows of 64x12544 channels-first, where 196 are wanted),
    // not 196 that would find each element's channel by division.
    assert_eq!(
        workgroups_for_elements(64 * 64 * 12544 / 4 / 8, 64 * 12544 / 4, 2, cpu),
        784
    );
    // Reductions run per thread on the CPU adapter, with at most CPU_REDUCTION_THREADS
    // threads; the GPU's chunks shrink until there are MIN_GPU_REDUCTION_ITEMS workgroups.
    let nchw = view(&[32, 64, 56, 56], Layout::ChannelsFirst);
    let on_cpu = plan(nchw, DType::F32, cpu, TRAINING).unwrap();
    let on_gpu = plan(nchw, DType::F32, gpu, TRAINING).unwrap();
    assert_eq!(on_gpu.kind, ReductionKind::Contiguous);
    assert!(on_gpu.chunk_len < CONTIGUOUS_CHUNK);
    assert!(on_gpu.reduction_items() >= MIN_GPU_REDUCTION_ITEMS as usize);
    assert_eq!(on_cpu.kind, ReductionKind::PerThread);
    assert!(on_cpu.reduction_items() <= CPU_REDUCTION_THREADS as usize);
    assert!(on_cpu.reduction_items() > CPU_REDUCTION_THREADS as usize / 2);
    assert_eq!(
        on_cpu.reduction_workgroups(on_cpu.reduction_items()) as usize,
        on_cpu.reduction_items().div_ceil(RUN_WORKGROUP_SIZE)
    );
}

/// Where a CPU adapter's per-thread partials would not fit in a binding, the plan falls back
/// to the GPU kernels' (here fused: no partials); where those do not fit either, the refusal
/// is theirs.
#[test]
fn cpu_plans_fall_back_where_per_thread_partials_do_not_fit() {
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: 1 << 20,
        ..wgpu::Limits::default()
    };
    let cpu = PlanLimits::new(&limits, wgpu::DeviceType::Cpu, wgpu::Features::empty());
    let wide = view(&[2, 100_000], Layout::ChannelsFirst);
    // 1.6 MB of 16-byte statistics partials: the fused GPU plan instead.
    let p = plan(wide, DType::F32, cpu, TRAINING).unwrap();
    assert!(p.fused_window().is_some());
    assert!(!p.limits.per_thread_reductions);
    // 800 kB of 8-byte gradient partials fit (a 2-D tensor: four channels a thread);
    // inference has none.
    for operation in [Operation::Backward, Operation::InferenceForward] {
        let p = plan(wide, DType::F32, cpu, operation).unwrap();
        assert_eq!(p.kind, ReductionKind::PerThreadQuads);
    }
    let err = plan(
        view(&[1241, 6, 118], Layout::ChannelsLast),
        DType::F32,
        PlanLimits::new(
            &wgpu::Limits {
                max_storage_buffer_binding_size: 64 << 10,
                ..wgpu::Limits::default()
            },
            wgpu::DeviceType::Cpu,
            wgpu::Features::empty(),
        ),
        TRAINING,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        BatchNormError::PartialsTooLarge { bytes: 101_952, .. }
    ));
}

/// Per-thread plans keep the finalize dispatch, even where the device has `@coherent`
/// storage: the last workgroup's handshake needs barriers.
#[test]
fn per_thread_plans_merge_in_a_dispatch() {
    let coherent_cpu = PlanLimits::new(
        &wgpu::Limits::default(),
        wgpu::DeviceType::Cpu,
        wgpu::Features::MEMORY_DECORATION_COHERENT,
    );
    let p = plan(
        view(&[8, 3, 64, 64], Layout::ChannelsFirst),
        DType::F32,
        coherent_cpu,
        TRAINING,
    )
    .unwrap();
    assert_eq!(p.kind, ReductionKind::PerThread);
    assert_eq!(p.merge, Merge::Dispatch);
    assert_eq!(p.merge_counters(), 0);
}

/// On CPU adapters every layout reduces per thread (four channels a thread where channels
/// are innermost and a multiple of four, QUAD_LANES threads to a chunk of rows), in chunks
/// of at least MIN_RUN_CHUNK values (MIN_QUAD_CHUNK_ROWS rows) that are whole blocks of
/// eight, every channel merged by one thread; fused (a thread per channel group) only where
/// channels-first runs of eight values or more split into groups (of 1, 2 or 4 channels,
/// by `inner % 4`) that hold at most FUSED_RUN_MAX_VALUES values, with
/// FUSED_RUN_MIN_THREADS groups or more, in f32.
#[test]
fn cpu_adapters_reduce_per_thread_and_fuse_only_short_channels_first_runs() {
    let cpu = cpu_defaults();
    let quads = ReductionKind::PerThreadQuads;
    let runs = ReductionKind::PerThread;
    // (shape, layout, kind, the fused plan's channel group in f32)
    for (shape, layout, kind, fused) in [
        (
            &[64usize, 1024, 14, 14][..],
            Layout::ChannelsFirst,
            runs,
            Some(1),
        ),
        // Runs of 49 values: four channels a thread fill whole quads.
        (&[64, 2048, 7, 7][..], Layout::ChannelsFirst, runs, Some(4)),
        // Runs of 14 values: two channels a thread.
        (&[1, 1024, 2, 7][..], Layout::ChannelsFirst, runs, Some(2)),
        // Groups of four, but 2046 channels do not split into them.
        (&[2, 2046, 3, 3][..], Layout::ChannelsFirst, runs, None),
        // Fewer than 512 threads.
        (&[64, 1024, 7, 7][..], Layout::ChannelsFirst, runs, None),
        (&[32, 64, 8, 8][..], Layout::ChannelsFirst, runs, None),
        (&[1, 3, 100, 101][..], Layout::ChannelsFirst, runs, None),
        (&[4, 511, 64, 64][..], Layout::ChannelsFirst, runs, None),
        // 16384 values a thread, and one more; 4 x 64 x 81 = 20736 values a group.
        (&[4, 512, 64, 64][..], Layout::ChannelsFirst, runs, Some(1)),
        (&[4, 512, 4097][..], Layout::ChannelsFirst, runs, None),
        (&[64, 2048, 9, 9][..], Layout::ChannelsFirst, runs, None),
        (&[64, 256, 56, 56][..], Layout::ChannelsFirst, runs, None),
        // Over 1024 channels: chunks grow to one a channel, whatever its size; fused only
        // within the limits.
        (&[5, 1100, 64, 64][..], Layout::ChannelsFirst, runs, None),
        (&[400, 1100, 7, 7][..], Layout::ChannelsFirst, runs, None),
        (&[2, 1100, 64, 64][..], Layout::ChannelsFirst, runs, Some(1)),
        // Runs shorter than eight values.
        (&[64, 256, 2, 2][..], Layout::ChannelsFirst, runs, None),
        (&[32, 8, 8, 64][..], Layout::ChannelsLast, quads, None),
        (&[256, 1024][..], Layout::ChannelsFirst, quads, None),
        (&[64, 7, 7, 2048][..], Layout::ChannelsLast, quads, None),
        (&[8, 10, 10, 6][..], Layout::ChannelsLast, runs, None),
        (&[256, 1022][..], Layout::ChannelsFirst, runs, None),
    ] {
        let v = view(shape, layout);
        for operation in [TRAINING, Operation::Backward] {
            for dtype in [DType::F32, DType::F16] {
                let p = plan(v, dtype, cpu, operation).unwrap();
                assert_eq!(p.kind, kind, "{shape:?}");
                assert!(p.kind.is_per_thread());
                assert_eq!(p.finalize, FinalizeKind::PerThread);
                if let (Some(group), DType::F32) = (fused, dtype) {
                    assert!(p.fused_window().is_some(), "{shape:?}");
                    assert_eq!(p.chunks_total, 1, "{shape:?}");
                    assert_eq!(p.band, group, "{shape:?}");
                    assert_eq!(p.reduction_items(), v.channels / group, "{shape:?}");
                    assert_eq!(p.partials_bytes(STATISTICS_PARTIAL_BYTES), 0);
                    continue;
                }
                let (items, min_chunk) = if kind == quads {
                    (
                        p.chunks_total * QUAD_LANES.min(v.channels / 4),
                        MIN_QUAD_CHUNK_ROWS,
                    )
                } else {
                    (p.chunks_total * v.channels, MIN_RUN_CHUNK)
                };
                assert_eq!(p.reduction_items(), items, "{shape:?}");
                assert!(
                    p.reduction_items() <= CPU_REDUCTION_THREADS as usize,
                    "{shape:?}"
                );
                assert!(p.fused_window().is_none(), "{shape:?} {dtype:?}");
                assert!(p.chunk_len >= min_chunk && p.chunk_len.is_multiple_of(8));
            }
        }
    }
}

/// A quad chunk starts at MIN_QUAD_CHUNK_ROWS rows, longer where a thread has few quads (so
/// that it reads MIN_RUN_CHUNK values), and doubles while the reduction has more than
/// CPU_REDUCTION_THREADS work items.
#[test]
fn quad_chunks_start_short_unless_a_thread_has_few_quads() {
    let cpu = cpu_defaults();
    // (shape, channels-last; the first chunk's rows; the plan's chunk rows and chunks)
    for (shape, first, chunk_rows, chunks) in [
        // 512 quads, 64 a thread: 16 rows, 196 chunks of 3136 rows, 1568 threads.
        (&[64usize, 7, 7, 2048][..], 16, 16, 196),
        // 256 quads: 16 rows would be 6272 threads; 64 rows are 1568.
        (&[64, 14, 14, 1024][..], 16, 64, 196),
        // 16 quads, two a thread: 128 rows.
        (&[32, 8, 8, 64][..], 128, 128, 16),
        // One quad: 256 rows.
        (&[2, 48, 48, 4][..], 256, 256, 18),
        // 12 quads: a thread takes one or two, 128 rows.
        (&[3, 17, 23, 48][..], 128, 128, 10),
    ] {
        let v = view(shape, Layout::ChannelsLast);
        assert_eq!(first_quad_chunk_rows(v.channels), first, "{shape:?}");
        let p = plan(v, DType::F32, cpu, TRAINING).unwrap();
        assert_eq!(p.kind, ReductionKind::PerThreadQuads);
        assert_eq!(
            (p.chunk_len, p.chunks_total),
            (chunk_rows, chunks),
            "{shape:?}"
        );
    }
}

#[test]
fn elementwise_strides_are_whole_rows_where_possible() {
    for (elements, row) in [(64 * 200_704, 200_704), (3 * 1000, 3), (1 << 20, 64)] {
        let groups = workgroups_for_elements(elements, row, 2, WEBGPU_DEFAULT) as usize;
        assert_eq!(groups * WORKGROUP_SIZE % row, 0, "{elements} {row}");
        assert!(groups <= 65535);
    }
    // A row whose unit exceeds the count wanted falls back to the plain count, on every
    // device type: for 1x3x100x101's vec4s, 30 workgroups on a GPU (a thread each) and two
    // on a CPU adapter (16 steps a thread), not 7575.
    let cpu = cpu_defaults();
    for (limits, wanted) in [(cpu, 2), (WEBGPU_DEFAULT, 30)] {
        assert_eq!(workgroups_for_elements(30_300 / 4, 7575, 2, limits), wanted);
        assert_eq!(workgroups_for_elements(10, 7, 2, limits), 1);
    }
    // A row whose unit exceeds the cap falls back to the plain count.
    let prime_row = 1_000_003;
    let groups = workgroups_for_elements(2 * prime_row, prime_row, 2, WEBGPU_DEFAULT);
    assert_eq!(
        groups as usize,
        (2 * prime_row).div_ceil(WORKGROUP_SIZE).min(65535)
    );
}

/// Half tensors: every window starts on a whole word (an even element), rows with an odd
/// element count are taken in pairs, nothing is fused, and a tensor whose windows cannot
/// start on words is refused.
#[test]
fn half_windows_start_on_whole_words() {
    let limits = binding_limits(1024);
    for (shape, layout) in [
        (&[9usize, 3, 7, 7][..], Layout::ChannelsFirst),
        (&[40, 5, 5, 3][..], Layout::ChannelsLast),
        (&[2, 100, 5][..], Layout::ChannelsFirst),
        (&[3, 64, 7][..], Layout::ChannelsFirst),
    ] {
        for dtype in [DType::F16, DType::BF16] {
            let v = view(shape, layout);
            // Inference: no partials to fit in these small bindings.
            let p = plan(v, dtype, limits, Operation::InferenceForward).unwrap();
            assert!(p.windows.len() > 1, "{shape:?}: windows");
            for (k, w) in p.windows.iter().enumerate() {
                assert!(w.first.is_multiple_of(2), "{shape:?}: {w:?}");
                let binding = p.window_binding(k, 0);
                assert!(binding.size.is_multiple_of(4) && binding.size <= 1024);
            }
            assert!(p.fused_window().is_none());
            let covered: usize = p.windows.iter().map(|w| w.end - w.first).sum();
            assert_eq!(covered, v.len(), "{shape:?}");
        }
    }
    // One odd row per binding: no pair of rows fits, and one row would start the next
    // window on an odd element.
    let err = plan(
        view(&[4, 3, 25, 25], Layout::ChannelsFirst),
        DType::F16,
        binding_limits(4096),
        TRAINING,
    )
    .unwrap_err();
    assert!(matches!(err, BatchNormError::Unsupported(m) if m.contains("whole 32-bit words")));
    // The same tensor in f32 is planned (a window per row).
    plan(
        view(&[4, 3, 25, 25], Layout::ChannelsFirst),
        DType::F32,
        binding_limits(8192),
        TRAINING,
    )
    .unwrap();
    // Small half tensors are one window and not fused.
    let p = plan(
        view(&[3, 5, 7, 7], Layout::ChannelsFirst),
        DType::F16,
        WEBGPU_DEFAULT,
        TRAINING,
    )
    .unwrap();
    assert_eq!(p.windows.len(), 1);
    assert!(p.fused_window().is_none());
    assert!(
        p.vec4_at(&[4, 8]) == p.vec4,
        "half vec4s need word offsets only"
    );
}

/// WebGPU's defaults on a device with `@coherent` storage.
const COHERENT: PlanLimits = PlanLimits {
    coherent_storage: true,
    ..WEBGPU_DEFAULT
};

#[test]
fn one_window_reductions_merge_in_the_last_workgroup_where_storage_is_coherent() {
    for (shape, layout, counters) in [
        // Contiguous: a counter per channel, merged by a workgroup (over 32 partials).
        (vec![64, 8, 112, 112], Layout::ChannelsFirst, 8),
        // Strided, at most 32 partials a channel: a counter per band of 32 channels, and
        // a last band of 8 channels still has its counter (1000 = 31 * 32 + 8).
        (vec![2, 64, 64, 1000], Layout::ChannelsLast, 32),
    ] {
        for operation in [TRAINING, Operation::Backward] {
            let p = plan(view(&shape, layout), DType::F32, COHERENT, operation).unwrap();
            assert_eq!(p.merge, Merge::LastWorkgroup, "{shape:?} {operation:?}");
            assert_eq!(p.merge_counters(), counters, "{shape:?}");
            // The same plan otherwise: the finalize kind and the chunks do not change.
            let split = webgpu_f32_plan(&shape, layout, operation);
            assert_eq!(split.merge, Merge::Dispatch);
            assert_eq!(split.merge_counters(), 0);
            assert_eq!(
                Plan {
                    merge: Merge::Dispatch,
                    limits: WEBGPU_DEFAULT,
                    ..p
                },
                split
            );
        }
    }
    // Strided plans with over 32 partials a channel keep the dispatch: their band's last
    // workgroup would merge its channels one after another.
    for shape in [
        vec![64, 14, 14, 1024],
        vec![64, 14, 14, 40],
        vec![1, 100, 101, 3],
    ] {
        for operation in [TRAINING, Operation::Backward] {
            let p = plan(
                view(&shape, Layout::ChannelsLast),
                DType::F32,
                COHERENT,
                operation,
            );
            let p = p.unwrap();
            assert_eq!(p.kind, ReductionKind::Strided, "{shape:?}");
            assert_eq!(p.finalize, FinalizeKind::PerWorkgroup, "{shape:?}");
            assert_eq!(p.merge, Merge::Dispatch, "{shape:?} {operation:?}");
        }
    }
    // Half tensors are never fused: one chunk per channel is merged where it is written.
    let half = plan(
        view(&[3, 5, 7, 7], Layout::ChannelsFirst),
        DType::F16,
        COHERENT,
        TRAINING,
    )
    .unwrap();
    assert_eq!((half.chunks_total, half.merge), (1, Merge::LastWorkgroup));
}

#[test]
fn the_finalize_dispatch_stays_for_fused_plans_several_windows_and_inference() {
    let small_coherent = PlanLimits {
        max_binding_bytes: 64 << 10,
        min_reduction_items: 0,
        ..COHERENT
    };
    for (shape, layout, limits, operation) in [
        // Fused: no partials at all.
        (
            vec![64, 1024, 14, 14],
            Layout::ChannelsFirst,
            COHERENT,
            TRAINING,
        ),
        (
            vec![4, 16, 16, 64],
            Layout::ChannelsLast,
            COHERENT,
            Operation::Backward,
        ),
        // Several windows: a channel's partials come from several dispatches.
        (
            vec![8, 3, 64, 64],
            Layout::ChannelsFirst,
            small_coherent,
            TRAINING,
        ),
        (
            vec![10, 64, 63, 8],
            Layout::ChannelsLast,
            small_coherent,
            TRAINING,
        ),
        // No reduction.
        (
            vec![64, 64, 112, 112],
            Layout::ChannelsFirst,
            COHERENT,
            Operation::InferenceForward,
        ),
    ] {
        let p = plan(view(&shape, layout), DType::F32, limits, operation).unwrap();
        assert_eq!(p.merge, Merge::Dispatch, "{shape:?} {operation:?}");
        assert_eq!(p.merge_counters(), 0);
    }
}

#[test]
fn coherent_storage_is_read_from_the_device_features() {
    let limits = wgpu::Limits::default();
    let gpu = wgpu::DeviceType::DiscreteGpu;
    let with = PlanLimits::new(&limits, gpu, wgpu::Features::MEMORY_DECORATION_COHERENT);
    let without = PlanLimits::new(&limits, gpu, wgpu::Features::MEMORY_DECORATION_VOLATILE);
    assert!(with.coherent_storage && !without.coherent_storage);
}
