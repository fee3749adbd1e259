//! The one place that records steps (`steps.rs`) into a compute pass: it finds each role's
//! buffer among the call's operands (or the context's scratch), builds the uniform block and
//! the bind group, and dispatches.

use crate::error::{BatchNormError, Result};
use crate::gpu::GpuContext;
use crate::plan::Plan;
use crate::shader::{Params, Role, PARAMS_BINDING};
use crate::steps::{DispatchPart, Range, Step};

/// Where to write GPU timestamps around an operation's compute pass (the benchmark's timer).
/// Either may be left out: a chain of operations is timed whole by giving its first operation
/// only `begin` and its last only `end`.
#[derive(Clone, Copy, Debug)]
pub struct PassTimestamps<'a> {
    /// A timestamp query set.
    pub query_set: &'a wgpu::QuerySet,
    /// Query written when the pass begins.
    pub begin: Option<u32>,
    /// Query written when the pass ends.
    pub end: Option<u32>,
    /// Asked after each dispatch for a query to write there, inside the pass (the benchmark's
    /// per-dispatch breakdown). Needs [`wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES`]
    /// ([`GpuContext::has_timestamps_inside_passes`]); without it the call is refused.
    pub after_each_dispatch: Option<&'a dyn DispatchTimestamps>,
}

/// One dispatch of an operation's compute pass, as [`DispatchTimestamps`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchInfo {
    /// What it computes.
    pub part: DispatchPart,
    /// The kernel's entry point.
    pub entry: &'static str,
    /// Workgroups dispatched.
    pub workgroups: u32,
}

/// Chooses the timestamp query written after each dispatch of a pass
/// ([`PassTimestamps::after_each_dispatch`]).
pub trait DispatchTimestamps: std::fmt::Debug {
    /// The query of [`PassTimestamps::query_set`] to write once `dispatch` is recorded; `None`
    /// writes none.
    fn query_after(&self, dispatch: &DispatchInfo) -> Option<u32>;
}

/// A tensor's buffer and the byte offset where the tensor starts in it.
pub(crate) type TensorBuffer<'a> = (&'a wgpu::Buffer, u64);

/// The buffers of one call, by role (partials and merge counters come from the context's
/// scratch).
#[derive(Clone, Copy, Default)]
pub(crate) struct Buffers<'a> {
    pub x: Option<TensorBuffer<'a>>,
    pub y: Option<TensorBuffer<'a>>,
    pub dy: Option<TensorBuffer<'a>>,
    pub dx: Option<TensorBuffer<'a>>,
    pub z: Option<TensorBuffer<'a>>,
    pub dz: Option<TensorBuffer<'a>>,
    pub result: Option<TensorBuffer<'a>>,
    pub affine: Option<&'a wgpu::Buffer>,
    pub running: Option<&'a wgpu::Buffer>,
    pub stats: Option<&'a wgpu::Buffer>,
    pub grads: Option<&'a wgpu::Buffer>,
    pub batches: Option<&'a wgpu::Buffer>,
}

impl<'a> Buffers<'a> {
    /// The buffer of `role` and the tensor's offset in it (0 for per-channel vectors).
    fn get(&self, role: Role) -> Option<TensorBuffer<'a>> {
        let whole = |buffer: Option<&'a wgpu::Buffer>| buffer.map(|b| (b, 0));
        match role {
            Role::X => self.x,
            Role::Y => self.y,
            Role::Dy => self.dy,
            Role::Dx => self.dx,
            Role::Shortcut => self.z,
            Role::ShortcutGrad => self.dz,
            Role::Result => self.result,
            Role::Affine => whole(self.affine),
            Role::Running => whole(self.running),
            Role::Stats => whole(self.stats),
            Role::Grads => whole(self.grads),
            Role::Batches => whole(self.batches),
            Role::Partials | Role::Counters => None,
        }
    }
}

/// The scratch buffer that stands in for an unused binding of `role`: one per role, so that
/// two stand-ins never share a buffer in one dispatch (wgpu refuses a buffer bound both
/// read-only and read-write there).
fn stand_in_key(role: Role) -> &'static str {
    match role {
        Role::Affine => "unused affine binding",
        Role::Running => "unused running binding",
        Role::Batches => "unused batch count binding",
        Role::ShortcutGrad => "unused dz binding",
        _ => "unused binding",
    }
}

/// An operation ready to record: each step's pipeline, bind group and workgroup count, and
/// the one uniform buffer that holds every step's block. Recording it again records the same
/// dispatches with the same values, so it may be recorded any number of times, into any
/// encoders (`BatchNorm` keeps these per input it sees: no allocation in a training loop's
/// steady state).
pub(crate) struct Prepared {
    dispatches: Vec<(wgpu::ComputePipeline, wgpu::BindGroup, DispatchInfo)>,
    _uniforms: wgpu::Buffer,
}

/// Builds the pipelines, the uniform buffer and the bind groups of `steps` of `plan` on
/// `buffers`, inside the context's error scopes.
pub(crate) fn prepare(
    ctx: &GpuContext,
    plan: Option<&Plan>,
    steps: &[Step],
    buffers: &Buffers<'_>,
) -> Result<Prepared> {
    ctx.checked(|device| -> Result<Prepared> {
        let partials_bytes = steps
            .iter()
            .flat_map(|step| &step.bindings)
            .filter_map(|binding| match binding.range {
                Range::Partials(bytes) => Some(bytes),
                _ => None,
            })
            .max();
        let partials = partials_bytes
            .map(|bytes| ctx.scratch("reduction partials", bytes))
            .transpose()?;
        // One slot per step, at the device's uniform offset alignment.
        let block = std::mem::size_of::<Params>() as u64;
        let alignment = u64::from(ctx.limits().min_uniform_buffer_offset_alignment);
        let stride = block.div_ceil(alignment) * alignment;
        // Not `create_buffer_init`: it panics when the device has been lost.
        let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-batchnorm params"),
            size: stride * steps.len().max(1) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut slots = vec![0u8; (stride * steps.len() as u64) as usize];
        for (k, step) in steps.iter().enumerate() {
            if let Some(params) = &step.params {
                let at = k * stride as usize;
                slots[at..at + block as usize].copy_from_slice(bytemuck::bytes_of(params));
            }
        }
        ctx.queue().write_buffer(&uniforms, 0, &slots);
        let mut dispatches = Vec::with_capacity(steps.len());
        for (k, step) in steps.iter().enumerate() {
            let pipeline = ctx.pipeline(step)?;
            let mut resources = Vec::with_capacity(step.bindings.len());
            for binding in &step.bindings {
                resources.push(match binding.range {
                    Range::Whole => (buffer(buffers, binding.role)?.0.clone(), 0, None),
                    Range::Window(w) => {
                        let plan = plan.ok_or_else(|| internal("a window without a plan"))?;
                        let (buffer, tensor_offset) = buffer(buffers, binding.role)?;
                        let window = plan.window_binding(w, tensor_offset);
                        (buffer.clone(), window.offset, Some(window.size))
                    }
                    Range::Partials(bytes) => {
                        let scratch = partials.as_ref().ok_or_else(|| internal("partials"))?;
                        (scratch.clone(), 0, Some(bytes))
                    }
                    Range::Counters(bytes) => (ctx.merge_counters(bytes)?, 0, Some(bytes)),
                    Range::Unused => (ctx.scratch(stand_in_key(binding.role), 16)?, 0, None),
                });
            }
            let mut entries: Vec<wgpu::BindGroupEntry> = step
                .params
                .map(|_| wgpu::BindGroupEntry {
                    binding: PARAMS_BINDING,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &uniforms,
                        offset: k as u64 * stride,
                        size: wgpu::BufferSize::new(block),
                    }),
                })
                .into_iter()
                .collect();
            entries.extend(step.bindings.iter().zip(&resources).map(
                |(binding, (buffer, offset, size))| wgpu::BindGroupEntry {
                    binding: binding.role.binding(),
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: *offset,
                        size: size.and_then(wgpu::BufferSize::new),
                    }),
                },
            ));
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(step.entry),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            let info = DispatchInfo {
                part: step.part(),
                entry: step.entry,
                workgroups: step.workgroups,
            };
            dispatches.push((pipeline, bind_group, info));
        }
        Ok(Prepared {
            dispatches,
            _uniforms: uniforms,
        })
    })?
}

/// Records a prepared operation into one compute pass of `encoder` (wgpu orders dispatches
/// that share a buffer, so each step sees the previous one's writes).
pub(crate) fn record_prepared(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    label: &str,
    prepared: &Prepared,
    timestamps: Option<PassTimestamps<'_>>,
) -> Result<()> {
    let inner = timestamps.and_then(|t| t.after_each_dispatch);
    if inner.is_some() && !ctx.has_timestamps_inside_passes() {
        return Err(BatchNormError::Unsupported(
            "timestamps between dispatches need the device feature TIMESTAMP_QUERY_INSIDE_PASSES",
        ));
    }
    ctx.checked(|_| {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: timestamps.map(|t| wgpu::ComputePassTimestampWrites {
                query_set: t.query_set,
                beginning_of_pass_write_index: t.begin,
                end_of_pass_write_index: t.end,
            }),
        });
        for (pipeline, bind_group, info) in &prepared.dispatches {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(info.workgroups, 1, 1);
            if let (Some(t), Some(hook)) = (timestamps, inner) {
                if let Some(query) = hook.query_after(info) {
                    pass.write_timestamp(t.query_set, query);
                }
            }
        }
    })
}

/// Prepares `steps` and records them once.
pub(crate) fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    label: &str,
    plan: &Plan,
    steps: &[Step],
    buffers: &Buffers<'_>,
    timestamps: Option<PassTimestamps<'_>>,
) -> Result<()> {
    let prepared = prepare(ctx, Some(plan), steps, buffers)?;
    record_prepared(ctx, encoder, label, &prepared, timestamps)
}

/// A step that names what the call did not provide: a bug of the step builder, reported
/// rather than panicked on.
fn internal(what: &str) -> BatchNormError {
    BatchNormError::Validation(format!(
        "internal: a step binds {what}, which the call does not provide"
    ))
}

/// The call's buffer for `role`.
fn buffer<'a>(buffers: &Buffers<'a>, role: Role) -> Result<TensorBuffer<'a>> {
    buffers.get(role).ok_or_else(|| internal(role.name()))
}
