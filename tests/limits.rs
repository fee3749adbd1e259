//! Device limits and concurrency: tensors larger than a storage binding, workgroup counts above
//! the per-dimension limit, bitwise determinism, use from several threads, and a caller-owned
//! device and command encoder.

mod common;

use common::checks::{
    check_batch_statistics, check_input_gradient, check_output, check_parameter_gradients,
    check_running_statistics, sum_depth, BackwardInputs, Channels, ForwardInputs, Through,
};
use common::scenario::{check_inference_round_trip, check_round_trip, read_saved, require};
use common::{
    assert_plan, caller_device, context, limited_context, normal_data, plan_of, planned, PlanClaim,
    Planned, SPLIT_CASES,
};
use wgpu_batchnorm::functional::{record_batch_norm, record_batch_norm_backward, ForwardArgs};
use wgpu_batchnorm::plan::{Operation, ReductionKind, NARROW_BAND, QUAD_LANES, RUN_WORKGROUP_SIZE};
use wgpu_batchnorm::{reference, BatchNorm, ChannelPair, GpuContext, Layout, Tensor};

const CPU: wgpu::DeviceType = wgpu::DeviceType::Cpu;

#[test]
fn tensors_larger_than_a_binding_are_processed_in_windows() {
    // 4 KiB bindings and at most 3 workgroups per dispatch: every shape below needs several
    // windows (whole rows, or channel ranges when one row is too large) and looping workgroups.
    let ctx = limited_context(4096, 3, CPU);
    assert_eq!(ctx.limits().max_storage_buffer_binding_size, 4096);
    let cases: [(&[usize], Layout); 6] = [
        (&[16, 2, 5, 7], Layout::ChannelsFirst),
        (&[8, 3, 20, 21], Layout::ChannelsFirst),
        (&[2, 5, 600], Layout::ChannelsFirst),
        (&[3, 20, 21, 5], Layout::ChannelsLast),
        (&[700, 7], Layout::ChannelsFirst),
        (&[2, 3, 3, 100], Layout::ChannelsLast),
    ];
    for (k, (shape, layout)) in cases.into_iter().enumerate() {
        let windows = plan_of(&ctx, shape, layout, Operation::TrainingForward)
            .windows
            .len();
        assert!(windows > 1, "{shape:?} should need several windows");
        check_round_trip(&ctx, shape, layout, 100 + k as u64);
    }
}

#[test]
fn fused_kernels_loop_over_more_channels_than_workgroups() {
    // 64 KiB bindings hold these tensors in one window, so a GPU's plans are fused: one
    // workgroup per channel, or per band of 32 channels, and only 3 workgroups to go round.
    let ctx = limited_context(1 << 16, 3, wgpu::DeviceType::DiscreteGpu);
    let cases: [(&[usize], Layout); 3] = [
        (&[4, 200], Layout::ChannelsFirst),
        (&[3, 3, 3, 100], Layout::ChannelsLast),
        (&[2, 9, 5, 5], Layout::ChannelsFirst),
    ];
    for (k, (shape, layout)) in cases.into_iter().enumerate() {
        assert_plan(&ctx, shape, layout, PlanClaim::FUSED);
        check_round_trip(&ctx, shape, layout, 200 + k as u64);
    }
}

#[test]
fn per_thread_reductions_loop_over_more_chunks_than_threads() {
    // A CPU adapter's per-thread reductions with 3 workgroups of RUN_WORKGROUP_SIZE threads.
    // The one-channel kernels: more work items (channels x chunks) than threads, in one chunk or
    // many per channel, split or fused. The quad kernel (QUAD_LANES threads, or as many as there
    // are quads, to a chunk of at least MIN_QUAD_CHUNK_ROWS rows, 256 for one quad a thread):
    // more chunks than
    // groups of threads, with more quads than a group's threads or fewer (narrow groups); and a
    // thread looping over the quads of a chunk (1600 and 1000 channels), with fewer work items
    // than threads and in two windows.
    let ctx = limited_context(1 << 20, 3, CPU);
    let threads = 3 * RUN_WORKGROUP_SIZE;
    let (scalar, quads) = (ReductionKind::PerThread, ReductionKind::PerThreadQuads);
    for (k, (shape, layout, kind, chunks, more_items_than_threads)) in [
        (&[4usize, 201][..], Layout::ChannelsFirst, scalar, 1, true),
        (&[2, 3, 3, 401][..], Layout::ChannelsLast, scalar, 1, true),
        // Runs of 1024 and 32 values: split (17408 values a channel, 17 chunks), and fused (a
        // thread per channel, 600 channels); runs of 9 values, fused four channels a thread.
        (
            &[17, 15, 32, 32][..],
            Layout::ChannelsFirst,
            scalar,
            17,
            true,
        ),
        (&[2, 600, 4, 8][..], Layout::ChannelsFirst, scalar, 1, true),
        (&[2, 2048, 3, 3][..], Layout::ChannelsFirst, scalar, 1, true),
        (&[8, 16, 16, 102][..], Layout::ChannelsLast, scalar, 2, true),
        (&[2, 40, 40, 64][..], Layout::ChannelsLast, quads, 25, true),
        (&[4, 56, 56, 16][..], Layout::ChannelsLast, quads, 49, true),
        // Five quads: groups of five threads, three of a vector's eight lanes in the next group.
        (&[4, 50, 50, 20][..], Layout::ChannelsLast, quads, 40, true),
        (&[2, 3, 3, 1600][..], Layout::ChannelsLast, quads, 2, false),
        // Two windows of 262 and 138 rows: chunks of 16 rows, 17 and 9.
        (
            &[4, 10, 10, 1000][..],
            Layout::ChannelsLast,
            quads,
            26,
            true,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        for operation in [Operation::TrainingForward, Operation::Backward] {
            let plan = plan_of(&ctx, shape, layout, operation);
            assert_eq!(plan.kind, kind, "{shape:?}");
            assert_eq!(plan.chunks_total, chunks, "{shape:?}");
            let fused = shape == [2, 600, 4, 8] || shape == [2, 2048, 3, 3];
            assert_eq!(plan.fused_window().is_some(), fused, "{shape:?}");
            assert_eq!(
                plan.reduction_items() > threads,
                more_items_than_threads,
                "{shape:?}"
            );
            if kind == quads && !more_items_than_threads {
                assert!(shape[3] / 4 > QUAD_LANES, "{shape:?}");
            }
        }
        check_round_trip(&ctx, shape, layout, 250 + k as u64);
    }
}

/// A tensor of 40 MiB on a device whose bindings hold 32 MiB: two windows of whole rows, bound
/// at offsets of 24 MiB and more.
#[test]
fn a_tensor_over_a_32_mib_binding_limit() {
    let ctx = limited_context(32 << 20, 65535, CPU);
    let shape = [5usize, 2, 1024, 1024];
    let plan = plan_of(
        &ctx,
        &shape,
        Layout::ChannelsFirst,
        Operation::TrainingForward,
    );
    assert_eq!(plan.windows.len(), 2, "{:?}", plan.windows);
    assert!(plan.window_binding(1, 0).offset >= 24 << 20);
    check_round_trip(&ctx, &shape, Layout::ChannelsFirst, 7);
}

#[test]
fn more_channels_than_workgroups_per_dimension() {
    let ctx = context();
    assert!(70_000 > ctx.limits().max_compute_workgroups_per_dimension);
    check_round_trip(&ctx, &[3, 70_000], Layout::ChannelsFirst, 11);
    check_round_trip(&ctx, &[2, 70_000, 2], Layout::ChannelsFirst, 12);
    check_round_trip(&ctx, &[2, 2, 70_000], Layout::ChannelsLast, 13);
}

/// Everything one training step produces, as bits.
fn one_step_bits(shape: &[usize], layout: Layout) -> Vec<Vec<u32>> {
    let ctx = context();
    let len: usize = shape.iter().product();
    let channels = wgpu_batchnorm::ChannelView::new(shape, layout)
        .unwrap()
        .channels;
    let x = Tensor::from_slice(&ctx, &normal_data(len, 5, 3.0, 2.0), shape, layout).unwrap();
    let dy = Tensor::from_slice(&ctx, &normal_data(len, 6, 0.0, 1.0), shape, layout).unwrap();
    let mut layer = BatchNorm::new(&ctx, channels).unwrap();
    let out = layer.forward(&x).unwrap();
    let grads = layer.backward(&x, &dy, &out.saved).unwrap();
    let (mean, invstd) = out.saved.read().unwrap();
    let (running_mean, running_var) = layer.running_statistics().unwrap();
    let (dgamma, dbeta) = grads.params.unwrap().read().unwrap();
    [
        out.y.to_vec().unwrap(),
        grads.dx.to_vec().unwrap(),
        mean,
        invstd,
        running_mean,
        running_var,
        dgamma,
        dbeta,
    ]
    .into_iter()
    .map(|v| v.into_iter().map(f32::to_bits).collect())
    .collect()
}

#[test]
fn results_are_bitwise_identical_from_run_to_run() {
    for (shape, layout) in [
        (vec![16usize, 8, 33, 33], Layout::ChannelsFirst),
        (vec![16, 33, 33, 8], Layout::ChannelsLast),
    ] {
        let first = one_step_bits(&shape, layout);
        for _ in 0..2 {
            assert!(
                one_step_bits(&shape, layout) == first,
                "{shape:?} {layout:?}"
            );
        }
    }
}

/// Four threads on one context at once, each on its own multi-chunk shape, so the context's
/// shared scratch buffers (reduction partials) serve operations of different sizes
/// concurrently.
#[test]
fn several_threads_share_one_context() {
    let ctx = planned(Planned::Cpu);
    let cases: Vec<_> = SPLIT_CASES
        .into_iter()
        .filter(|case| case.planned == Planned::Cpu)
        .take(4)
        .collect();
    assert_eq!(cases.len(), 4);
    let handles: Vec<_> = cases
        .into_iter()
        .enumerate()
        .map(|(t, case)| {
            let ctx = ctx.clone();
            assert!(!case.claim.fused && case.claim.chunks > 1, "{case:?}");
            assert_plan(&ctx, case.shape, case.layout, case.claim);
            std::thread::spawn(move || {
                for round in 0..2 {
                    check_round_trip(&ctx, case.shape, case.layout, 1000 * t as u64 + round);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("a worker thread failed");
    }
}

#[test]
fn a_caller_owned_device_buffers_and_encoder() {
    let (adapter, device, queue) = caller_device("the caller's device", |limits| {
        wgpu::Limits::default().using_resolution(limits)
    });
    let ctx = GpuContext::from_device(device.clone(), queue.clone(), adapter.get_info().into())
        .expect("WebGPU's default limits are enough");

    let shape = [6usize, 5, 7, 3];
    let layout = Layout::ChannelsLast;
    let len: usize = shape.iter().product();
    let x_data = normal_data(len, 21, -2.0, 0.5);
    let dy_data = normal_data(len, 22, 0.0, 1.0);
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let caller_buffer = |data: &[f32]| {
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("caller buffer"),
            size: (data.len() * 4) as u64,
            usage,
            mapped_at_creation: false,
        });
        queue.write_buffer(&buffer, 0, bytemuck::cast_slice(data));
        Tensor::from_buffer(&ctx, buffer, &shape, layout).unwrap()
    };
    let x = caller_buffer(&x_data);
    let dy = caller_buffer(&dy_data);
    let y = caller_buffer(&vec![f32::NAN; len]);
    let dx = caller_buffer(&vec![f32::NAN; len]);
    let gamma = [0.5f32, -1.0, 2.0];
    let beta = [0.1f32, 0.2, -0.3];
    let affine = ChannelPair::new(&ctx, &gamma, &beta).unwrap();
    let running = ChannelPair::new(&ctx, &[0.0; 3], &[1.0; 3]).unwrap();
    let args = ForwardArgs {
        affine: Some(&affine),
        running: Some(&running),
        training: true,
        momentum: 0.1,
        eps: 1e-5,
        epilogue: wgpu_batchnorm::Epilogue::None,
    };

    // One encoder, one submission: forward then backward.
    let mut encoder = device.create_command_encoder(&Default::default());
    let saved = record_batch_norm(&mut encoder, &x, &y, &args, None).unwrap();
    let params = record_batch_norm_backward(
        &mut encoder,
        &x,
        &dy,
        &dx,
        &saved,
        Some(&affine),
        wgpu_batchnorm::EpilogueGrad::None,
        None,
    )
    .unwrap()
    .unwrap();
    queue.submit([encoder.finish()]);

    let x_host = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), x_data).unwrap();
    let dy_host = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), dy_data).unwrap();
    let what = "caller-owned device";
    let saved = read_saved(&saved);
    let inputs = ForwardInputs {
        x: x_host.view(),
        layout,
        gamma: Some(&gamma),
        beta: Some(&beta),
        eps: 1e-5,
    };
    require(check_batch_statistics(what, &inputs, &saved, Channels::All));
    require(check_output(
        what,
        &inputs,
        &saved,
        &y.to_vec().unwrap(),
        Channels::All,
    ));
    let stats = reference::batch_statistics(x_host.view(), layout, 1e-5);
    let (mut want_mean, mut want_var) = (vec![0.0; 3], vec![1.0; 3]);
    reference::update_running_statistics(&mut want_mean, &mut want_var, &stats, len / 3, 0.1);
    let (running_mean, running_var) = running.read().unwrap();
    require(check_running_statistics(
        what,
        &want_mean,
        &want_var,
        &stats,
        &running_mean,
        &running_var,
        Channels::All,
    ));
    let backward = BackwardInputs {
        forward: inputs,
        dy: dy_host.view(),
        saved: &saved,
        through: Through::Batch,
        depth: sum_depth(&plan_of(&ctx, &shape, layout, Operation::Backward)),
    };
    require(check_input_gradient(
        what,
        &backward,
        &dx.to_vec().unwrap(),
        Channels::All,
    ));
    let (dgamma, dbeta) = params.read().unwrap();
    require(check_parameter_gradients(
        what,
        &backward,
        &dgamma,
        &dbeta,
        Channels::All,
    ));
}

#[test]
fn a_device_below_the_kernels_needs_is_refused() {
    let (adapter, device, queue) =
        caller_device("a downlevel device", |_| wgpu::Limits::downlevel_defaults());
    let error = GpuContext::from_device(device, queue, adapter.get_info().into())
        .expect_err("4 storage buffers per stage are too few");
    // 8: the add-ReLU backward's dx kernel binds x, dy, y, dx, dz, the saved statistics,
    // gamma and beta, and dgamma and dbeta (a naga unit test in src/shader counts them).
    assert!(matches!(
        error,
        wgpu_batchnorm::BatchNormError::InsufficientLimit {
            limit: "max_storage_buffers_per_shader_stage",
            required: 8,
            actual: 4
        }
    ));
    // Workgroup memory: the fused channels-last forward declares 4352 bytes (the naga unit test
    // in src/shader/mod.rs measures every entry point).
    let (adapter, device, queue) =
        caller_device("little workgroup memory", |limits| wgpu::Limits {
            max_compute_workgroup_storage_size: 4096,
            ..wgpu::Limits::default().using_resolution(limits)
        });
    let error = GpuContext::from_device(device, queue, adapter.get_info().into())
        .expect_err("4096 bytes of workgroup memory are too few");
    assert!(
        matches!(
            error,
            wgpu_batchnorm::BatchNormError::InsufficientLimit {
                limit: "max_compute_workgroup_storage_size",
                required: 4352,
                actual: 4096
            }
        ),
        "{error:?}"
    );
}

/// A caller's device keeps its own device-lost callback (wgpu keeps one per device), and after
/// the device is destroyed every call of a context on it, and of a second context on the same
/// device, returns `DeviceLost` instead of a panic or a wrong answer. A device the crate made
/// reports the loss through the crate's own callback.
#[test]
fn a_lost_device_is_reported_and_the_callers_callback_still_fires() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use wgpu_batchnorm::BatchNormError;

    let (adapter, device, queue) = caller_device("a device that will be destroyed", |limits| {
        wgpu::Limits::default().using_resolution(limits)
    });
    let fired = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&fired);
    device.set_device_lost_callback(move |_reason, _message| flag.store(true, Ordering::SeqCst));
    let first =
        GpuContext::from_device(device.clone(), queue.clone(), adapter.get_info().into()).unwrap();
    let second = GpuContext::from_device(device.clone(), queue, adapter.get_info().into()).unwrap();
    let shape = [4usize, 3, 5];
    let data = normal_data(60, 50, 0.0, 1.0);
    let x = Tensor::from_slice(&first, &data, &shape, Layout::ChannelsFirst).unwrap();
    let x_second = Tensor::from_slice(&second, &data, &shape, Layout::ChannelsFirst).unwrap();
    let mut layer = BatchNorm::new(&first, 3).unwrap();
    let before = layer.forward(&x).expect("forward before the loss");

    device.destroy();
    device.poll(wgpu::PollType::Poll).unwrap();
    assert!(
        fired.load(Ordering::SeqCst),
        "the caller's callback did not fire"
    );

    let is_lost = |what: &str, result: Result<(), BatchNormError>| match result {
        Err(BatchNormError::DeviceLost(_)) => {}
        other => panic!("{what} after the loss: {other:?}"),
    };
    is_lost("forward", layer.forward(&x).map(|_| ()));
    is_lost("download", before.y.to_vec().map(|_| ()));
    is_lost(
        "upload",
        Tensor::from_slice(&first, &data, &shape, Layout::ChannelsFirst).map(|_| ()),
    );
    is_lost("second context's download", x_second.to_vec().map(|_| ()));

    let own = GpuContext::new().unwrap();
    let x = Tensor::from_slice(&own, &data, &shape, Layout::ChannelsFirst).unwrap();
    own.device().destroy();
    is_lost("the crate's own device", x.to_vec().map(|_| ()));
}

/// The plans a discrete GPU gets (chunks sized for at least 1024 reduction workgroups, fused
/// single dispatches, the device's whole workgroup range), on a context that reports itself as
/// a discrete GPU: the software adapter otherwise gets the CPU plans (bigger chunks, fewer
/// workgroups), and the kernels must be right under both.
#[test]
fn gpu_style_plans_on_this_adapter() {
    let ctx = planned(Planned::DiscreteGpu);
    let cases: [(&[usize], Layout, PlanClaim); 4] = [
        (
            &[3, 128, 80, 80],
            Layout::ChannelsFirst,
            PlanClaim::split(10, wgpu_batchnorm::plan::FinalizeKind::PerThread),
        ),
        (
            &[9000, 3],
            Layout::ChannelsFirst,
            PlanClaim::split_in_dispatch(141, wgpu_batchnorm::plan::FinalizeKind::PerWorkgroup),
        ),
        (&[6, 5, 7, 7], Layout::ChannelsFirst, PlanClaim::FUSED),
        (&[4, 7, 7, 96], Layout::ChannelsLast, PlanClaim::FUSED),
    ];
    for (k, (shape, layout, claim)) in cases.into_iter().enumerate() {
        assert_plan(&ctx, shape, layout, claim);
        check_round_trip(&ctx, shape, layout, 300 + k as u64);
    }
    // A channels-last tensor too tall for 32 channels a workgroup, whose training forward is
    // fused in a narrower band (`plan::NARROW_BAND`, 64 workgroups), with a last band of one
    // channel; its backward stays split.
    let shape = &[5, 15, 15, 1009];
    let forward = plan_of(
        &ctx,
        shape,
        Layout::ChannelsLast,
        Operation::TrainingForward,
    );
    assert_eq!(forward.band, NARROW_BAND);
    assert!(forward.fused_window().is_some());
    let backward = plan_of(&ctx, shape, Layout::ChannelsLast, Operation::Backward);
    assert!(backward.fused_window().is_none());
    check_round_trip(&ctx, shape, Layout::ChannelsLast, 320);
    for (k, case) in SPLIT_CASES.into_iter().enumerate() {
        if case.planned == Planned::DiscreteGpu {
            check_round_trip(&case.context(), case.shape, case.layout, 350 + k as u64);
        }
    }
}

/// A wgpu validation error (here: a caller's buffer left mapped, which no submission may use)
/// comes back as a typed error instead of wgpu's default panic.
#[test]
fn wgpu_validation_errors_become_typed_errors() {
    let ctx = context();
    let mapped = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("a caller's buffer, still mapped"),
        size: 4 * 2 * 3,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: true,
    });
    let x = Tensor::from_buffer(&ctx, mapped, &[2, 3], Layout::ChannelsFirst).unwrap();
    let mut layer = BatchNorm::new(&ctx, 3).unwrap();
    let error = layer
        .forward(&x)
        .expect_err("a mapped buffer in a submission");
    assert!(
        matches!(error, wgpu_batchnorm::BatchNormError::Validation(_)),
        "{error:?}"
    );
    assert_eq!(layer.num_batches_tracked(), 0);
    assert_eq!(
        layer.running_statistics().unwrap(),
        (vec![0.0; 3], vec![1.0; 3])
    );
}

/// Only operations that allocate reduction partials are refused for them, with a message that
/// says what does not fit and by how much.
#[test]
fn partials_are_checked_only_where_an_operation_needs_them() {
    // 64 KiB bindings: [1241, 6, 118] channels-last is 54 windows of 138 rows, one chunk each,
    // so each of the 118 channels has 54 partials: 101,952 bytes of 16-byte statistics
    // partials (refused), 50,976 bytes of 8-byte gradient partials (they fit), none in
    // inference.
    let ctx = limited_context(64 << 10, 65535, CPU);
    let shape = [1241usize, 6, 118];
    let x = Tensor::from_slice(
        &ctx,
        &normal_data(shape.iter().product(), 40, 0.0, 1.0),
        &shape,
        Layout::ChannelsLast,
    )
    .unwrap();
    let mut layer = BatchNorm::new(&ctx, 118).unwrap();
    let error = layer
        .forward(&x)
        .expect_err("training partials over the binding");
    assert!(
        matches!(
            error,
            wgpu_batchnorm::BatchNormError::PartialsTooLarge {
                operation: "training forward",
                bytes: 101_952,
                max: 65_536,
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    for needle in ["training forward", "101952", "36416 bytes over"] {
        assert!(message.contains(needle), "{needle:?} in {message}");
    }
    assert_eq!(layer.num_batches_tracked(), 0);
    // Inference, and the backward through its running statistics (a reduction of 8-byte
    // partials for dgamma and dbeta).
    check_inference_round_trip(&ctx, &shape, Layout::ChannelsLast, 41);

    // 1 MiB bindings: [2, 100_000] is 800 kB, its per-channel pairs 800 kB each, and its
    // training plan fused (one chunk per channel): no partials at all, where 16-byte ones would
    // take 1.6 MB (the CPU adapter's per-thread plan falls back to it).
    // (The same as [2, 8_389_632] under 128 MiB bindings, 84 times cheaper to check.)
    let ctx = limited_context(1 << 20, 65535, CPU);
    check_round_trip(&ctx, &[2, 100_000], Layout::ChannelsFirst, 42);
}
