//! The roofline every case is compared with: the crate's streaming kernel (`STREAM_WGSL`: read
//! one vec4, write one vec4, grid-stride) timed on the same adapter, in the same run and in the
//! same way as the cases, at a few launch shapes; the best one counts.

use serde::Serialize;
use wgpu_batchnorm::shader::STREAM_WGSL;
use wgpu_batchnorm::{GpuContext, Layout, Tensor};

use std::time::Duration;

use super::timing::{awaited_calls, warm_up, BenchResult, GpuTimer, TimeSummary};

/// Workgroup counts tried (each of 256 threads), capped by the device's limit.
const WORKGROUP_COUNTS: [u32; 4] = [1024, 4096, 16384, 65535];

/// One launch shape's result.
#[derive(Clone, Debug, Serialize)]
pub struct LaunchResult {
    /// Workgroups of 256 threads.
    pub workgroups: u32,
    /// Median time of one launch, microseconds.
    pub median_us: f64,
    /// Bytes read plus bytes written over the median time, GB/s.
    pub gbps: f64,
}

/// The streaming kernel's bandwidth on one adapter.
#[derive(Clone, Debug, Serialize)]
pub struct Roofline {
    /// Size of the source buffer, and of the destination, bytes.
    pub buffer_bytes: u64,
    /// The best launch shape's bandwidth, GB/s.
    pub gbps: f64,
    /// The best launch shape.
    pub workgroups: u32,
    /// Every launch shape tried.
    pub launches: Vec<LaunchResult>,
}

/// Measures the streaming kernel over two buffers of about `buffer_bytes` each (less where the
/// device cannot bind that much), warmed up as the cases are (`timing::warm_up`) and timed over
/// `runs` launches per shape, then checks every value it wrote.
pub fn measure(
    ctx: &GpuContext,
    timer: Option<&GpuTimer>,
    buffer_bytes: u64,
    warmup: usize,
    warmup_busy: Duration,
    runs: usize,
) -> BenchResult<Roofline> {
    let limits = ctx.limits();
    let bytes = buffer_bytes
        .min(limits.max_storage_buffer_binding_size)
        .min(limits.max_buffer_size)
        / 16
        * 16;
    let floats = (bytes / 4) as usize;
    let data: Vec<f32> = (0..floats).map(|i| (i % 1000) as f32 * 0.001).collect();
    let shape = [floats / 4, 4];
    let source = Tensor::from_slice(ctx, &data, &shape, Layout::ChannelsFirst)?;
    let destination = Tensor::zeros(ctx, &shape, Layout::ChannelsFirst)?;
    let (pipeline, bind_group) = stream_pipeline(ctx, &source, &destination)?;
    let record = |encoder: &mut wgpu::CommandEncoder,
                  workgroups: u32,
                  timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>| {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("bnbench stream"),
            timestamp_writes: timestamps,
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(workgroups, 1, 1);
    };
    let awaited = |workgroups: u32| -> BenchResult<()> {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        record(&mut encoder, workgroups, None);
        let index = ctx.queue().submit([encoder.finish()]);
        ctx.device().poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        })?;
        Ok(())
    };
    let mut launches = Vec::new();
    for workgroups in WORKGROUP_COUNTS
        .into_iter()
        .filter(|&count| count <= limits.max_compute_workgroups_per_dimension)
    {
        warm_up(
            ctx,
            warmup,
            warmup_busy,
            |_| awaited(workgroups),
            |encoder, _| {
                record(encoder, workgroups, None);
                Ok(())
            },
        )?;
        let seconds = match timer {
            Some(timer) => timer.time(ctx, runs, |encoder, _, timestamps| {
                let writes = wgpu::ComputePassTimestampWrites {
                    query_set: timestamps.query_set,
                    beginning_of_pass_write_index: timestamps.begin,
                    end_of_pass_write_index: timestamps.end,
                };
                record(encoder, workgroups, Some(writes));
                Ok(())
            })?,
            None => awaited_calls(runs, |_| awaited(workgroups))?,
        };
        let median = TimeSummary::of(&seconds)
            .ok_or("the roofline needs at least one timed run")?
            .median;
        launches.push(LaunchResult {
            workgroups,
            median_us: median * 1e6,
            gbps: 2.0 * bytes as f64 / median / 1e9,
        });
    }
    check_stream(&data, &destination.to_vec()?)?;
    let best = launches
        .iter()
        .max_by(|a, b| a.gbps.total_cmp(&b.gbps))
        .ok_or("the device allows fewer than 1024 workgroups per dimension")?;
    Ok(Roofline {
        buffer_bytes: bytes,
        gbps: best.gbps,
        workgroups: best.workgroups,
        launches: launches.clone(),
    })
}

/// The stream pipeline and its bind group (source at binding 0, destination at binding 1).
fn stream_pipeline(
    ctx: &GpuContext,
    source: &Tensor,
    destination: &Tensor,
) -> BenchResult<(wgpu::ComputePipeline, wgpu::BindGroup)> {
    let device = ctx.device();
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("bnbench stream"),
        source: wgpu::ShaderSource::Wgsl(STREAM_WGSL.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("bnbench stream"),
        layout: None,
        module: &module,
        entry_point: Some("stream"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("bnbench stream"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: source.buffer().as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: destination.buffer().as_entire_binding(),
            },
        ],
    });
    match pollster::block_on(scope.pop()) {
        Some(error) => Err(format!("the stream kernel was refused: {error}").into()),
        None => Ok((pipeline, bind_group)),
    }
}

/// Refuses a roofline whose kernel did not write `1.5 x + 0.25` everywhere.
fn check_stream(source: &[f32], written: &[f32]) -> BenchResult<()> {
    let wrong = source
        .iter()
        .zip(written)
        .filter(|(&x, &y)| {
            let want = x * 1.5 + 0.25;
            let difference = (y - want).abs();
            difference.is_nan() || difference > 1e-6 * want.abs().max(1.0)
        })
        .count();
    if wrong == 0 && source.len() == written.len() {
        Ok(())
    } else {
        Err(format!(
            "the stream kernel wrote {wrong} wrong values of {}: its bandwidth cannot serve \
             as the roofline",
            source.len()
        )
        .into())
    }
}
