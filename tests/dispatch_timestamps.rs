//! `PassTimestamps::after_each_dispatch`: the hook sees every dispatch of a pass by name, the
//! timestamps it asks for are written inside the pass, and a device without
//! `TIMESTAMP_QUERY_INSIDE_PASSES` refuses the hook with a typed error instead of failing
//! validation.

mod common;

use std::cell::RefCell;

use wgpu_batchnorm::functional::{record_batch_norm, ForwardArgs};
use wgpu_batchnorm::{
    BatchNormError, DispatchInfo, DispatchPart, DispatchTimestamps, Epilogue, GpuContext, Layout,
    PassTimestamps, Tensor,
};

/// Hands out queries 2, 3, ... after the dispatches and remembers them.
#[derive(Debug, Default)]
struct Recorder {
    seen: RefCell<Vec<DispatchInfo>>,
}

impl DispatchTimestamps for Recorder {
    fn query_after(&self, dispatch: &DispatchInfo) -> Option<u32> {
        let mut seen = self.seen.borrow_mut();
        seen.push(*dispatch);
        Some(1 + seen.len() as u32)
    }
}

const QUERIES: u32 = 64;

fn query_set(ctx: &GpuContext) -> wgpu::QuerySet {
    ctx.device().create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("dispatch timestamps test"),
        ty: wgpu::QueryType::Timestamp,
        count: QUERIES,
    })
}

/// Records a training forward of a small channels-last tensor on `ctx` into `encoder`, with
/// the pass's timestamps at queries 0 and 1 of `queries` and `recorder` between dispatches.
fn record_forward(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    queries: &wgpu::QuerySet,
    recorder: &Recorder,
) -> wgpu_batchnorm::Result<()> {
    let shape = [4usize, 9, 9, 6];
    let data: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|i| (i % 17) as f32 * 0.25 - 2.0)
        .collect();
    let x = Tensor::from_slice(ctx, &data, &shape, Layout::ChannelsLast)?;
    let y = Tensor::zeros(ctx, &shape, Layout::ChannelsLast)?;
    let args = ForwardArgs {
        affine: None,
        running: None,
        training: true,
        momentum: 0.1,
        eps: 1e-5,
        epilogue: Epilogue::None,
    };
    let timestamps = PassTimestamps {
        query_set: queries,
        begin: Some(0),
        end: Some(1),
        after_each_dispatch: Some(recorder),
    };
    record_batch_norm(encoder, &x, &y, &args, Some(timestamps)).map(|_| ())
}

/// A buffer of `bytes` for `usage`.
fn buffer(ctx: &GpuContext, bytes: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage,
        mapped_at_creation: false,
    })
}

#[test]
fn each_dispatch_is_named_and_gets_its_timestamp() {
    let ctx = common::context();
    let recorder = Recorder::default();
    let queries = query_set(&ctx);
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let result = record_forward(&ctx, &mut encoder, &queries, &recorder);
    // The context takes the feature wherever the adapter offers it, so the refusal below is
    // the adapter's, not a context that stopped asking.
    let (adapter, _, _) = common::caller_device("probe", |limits| limits);
    let offered = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
    assert_eq!(
        ctx.has_timestamps_inside_passes(),
        adapter.features().contains(offered),
        "timestamps inside passes on the context against the adapter"
    );
    if !ctx.has_timestamps_inside_passes() {
        assert!(
            matches!(result, Err(BatchNormError::Unsupported(_))),
            "{result:?}"
        );
        assert!(recorder.seen.borrow().is_empty());
        return;
    }
    result.expect("a recorded forward");
    let seen = recorder.seen.borrow().clone();
    assert!(!seen.is_empty() && seen.len() as u32 + 2 <= QUERIES);
    let parts: Vec<DispatchPart> = seen.iter().map(|d| d.part).collect();
    let fused = parts == [DispatchPart::FusedForward];
    let split = parts.first() == Some(&DispatchPart::StatisticsPartials)
        && parts.contains(&DispatchPart::StatisticsFinalize)
        && parts.last() == Some(&DispatchPart::Normalize);
    assert!(fused || split, "{parts:?}");
    assert!(seen.iter().all(|d| d.workgroups > 0 && !d.entry.is_empty()));

    // The timestamps were written inside the pass: each dispatch ends no earlier than the one
    // before it, and the pass ends after the last.
    let written = 2 + seen.len() as u32;
    let bytes = 8 * u64::from(written);
    let resolve = buffer(
        &ctx,
        bytes,
        wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
    );
    let readback = buffer(
        &ctx,
        bytes,
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    );
    encoder.resolve_query_set(&queries, 0..written, &resolve, 0);
    encoder.copy_buffer_to_buffer(&resolve, 0, &readback, 0, bytes);
    ctx.queue().submit([encoder.finish()]);
    let slice = readback.slice(..);
    slice.map_async(wgpu::MapMode::Read, |result| result.expect("mapped"));
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("the GPU finished");
    let ticks: Vec<u64> = bytemuck::cast_slice(&slice.get_mapped_range().unwrap()).to_vec();
    let (begin, end) = (ticks[0], ticks[1]);
    let mut previous = begin;
    for &after in &ticks[2..] {
        assert!(after >= previous, "{ticks:?}");
        previous = after;
    }
    assert!(end >= previous && end > begin, "{ticks:?}");
}

#[test]
fn a_device_without_the_feature_refuses_the_hook() {
    let (adapter, _, _) = common::caller_device("probe", |limits| limits);
    assert!(
        adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY),
        "{:?} has no timestamp queries, so this test cannot make a device with them and without \
         those inside passes: run it on Mesa's lavapipe or llvmpipe (bash \
         .ci/install-gpu-drivers.sh)",
        adapter.get_info().name
    );
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("timestamps, none inside passes"),
        required_features: wgpu::Features::TIMESTAMP_QUERY,
        required_limits: adapter.limits(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .expect("a device with timestamp queries");
    let ctx = GpuContext::from_device(device, queue, adapter.get_info().into()).unwrap();
    assert!(ctx.has_timestamps() && !ctx.has_timestamps_inside_passes());
    let recorder = Recorder::default();
    let queries = query_set(&ctx);
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let error = record_forward(&ctx, &mut encoder, &queries, &recorder).expect_err("refused");
    assert!(
        matches!(&error, BatchNormError::Unsupported(text) if text.contains("TIMESTAMP_QUERY_INSIDE_PASSES")),
        "{error}"
    );
    assert!(
        recorder.seen.borrow().is_empty(),
        "no dispatch was recorded"
    );
}
