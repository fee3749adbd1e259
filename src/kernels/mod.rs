//! The WGSL programs and what they share: the uniform block every kernel reads, the pipeline
//! cache (one compiled pipeline per entry point and override set, per device) and the recording
//! of an operation's dispatches into one compute pass.

pub(crate) mod backward;
pub(crate) mod normalize;
pub(crate) mod statistics;

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::plan::{Plan, Window, STATISTICS_PARTIAL_BYTES, STRIDED_BAND, WORKGROUP_SIZE};

/// The shader every program starts with (the uniform block and index helpers).
pub const COMMON_WGSL: &str = include_str!("../../shaders/common.wgsl");

/// Where the normalize kernels take each channel's mean and invstd
/// (`shaders/channel_statistics.wgsl`).
const CHANNEL_STATISTICS_WGSL: &str = include_str!("../../shaders/channel_statistics.wgsl");

/// What the dx kernels share (`shaders/dx_factors.wgsl`).
const DX_FACTORS_WGSL: &str = include_str!("../../shaders/dx_factors.wgsl");

/// The benchmark's roofline kernel: read one vec4, write one vec4 (`shaders/stream.wgsl`).
pub const STREAM_WGSL: &str = include_str!("../../shaders/stream.wgsl");

/// Workgroup memory the kernels need: the most any entry point declares, which is the fused
/// channels-last training forward's (a statistics partial per thread, and a (mean, invstd)
/// pair per channel of its band). A unit test measures every entry point's with naga.
pub const WORKGROUP_STORAGE_BYTES: u64 =
    WORKGROUP_SIZE as u64 * STATISTICS_PARTIAL_BYTES + STRIDED_BAND as u64 * 8;

/// A WGSL program: one shader module with several entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Program {
    /// Per-channel mean and variance (`shaders/batch_statistics.wgsl`).
    BatchStatistics,
    /// The fused normalize-scale-shift (`shaders/normalize.wgsl`).
    Normalize,
    /// The same on vec4s, for rows that split into whole vec4s (`shaders/normalize_vec4.wgsl`).
    NormalizeVec4,
    /// dx, dgamma, dbeta (`shaders/backward.wgsl`).
    Backward,
    /// dx on vec4s, for rows that split into whole vec4s (`shaders/input_gradient_vec4.wgsl`).
    InputGradientVec4,
}

impl Program {
    /// Every program, for tests that validate them all.
    pub const ALL: [Program; 5] = [
        Program::BatchStatistics,
        Program::Normalize,
        Program::NormalizeVec4,
        Program::Backward,
        Program::InputGradientVec4,
    ];

    /// The full WGSL source: the common block followed by the program's own files.
    pub fn source(self) -> String {
        let own: &[&str] = match self {
            Program::BatchStatistics => &[include_str!("../../shaders/batch_statistics.wgsl")],
            Program::Normalize => &[
                CHANNEL_STATISTICS_WGSL,
                include_str!("../../shaders/normalize.wgsl"),
            ],
            Program::NormalizeVec4 => &[
                CHANNEL_STATISTICS_WGSL,
                include_str!("../../shaders/normalize_vec4.wgsl"),
            ],
            Program::Backward => &[DX_FACTORS_WGSL, include_str!("../../shaders/backward.wgsl")],
            Program::InputGradientVec4 => &[
                DX_FACTORS_WGSL,
                include_str!("../../shaders/input_gradient_vec4.wgsl"),
            ],
        };
        std::iter::once(COMMON_WGSL)
            .chain(own.iter().copied())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The uniform block `Params` of `shaders/common.wgsl`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub elem_shift: u32,
    pub o_count: u32,
    pub c0: u32,
    pub c_count: u32,
    pub channels: u32,
    pub inner: u32,
    pub chunk_len: u32,
    pub chunks: u32,
    pub chunk_base: u32,
    pub chunks_total: u32,
    pub items: u32,
    pub values_per_channel: f32,
    pub eps: f32,
    pub momentum: f32,
    pub var_correction: f32,
    pub _pad: u32,
}

impl Params {
    /// The geometry of one window of `plan`; scalars left at zero.
    pub fn for_window(plan: &Plan, window: &Window) -> Self {
        Params {
            elem_shift: window.elem_shift as u32,
            o_count: window.o_count as u32,
            c0: window.c0 as u32,
            c_count: window.c_count as u32,
            channels: plan.view.channels as u32,
            inner: plan.view.inner as u32,
            chunk_len: plan.chunk_len as u32,
            chunks: window.chunks as u32,
            chunk_base: window.chunk_base as u32,
            chunks_total: plan.chunks_total as u32,
            items: window.reduction_items(plan.kind) as u32,
            values_per_channel: plan.view.values_per_channel() as f32,
            ..Params::default()
        }
    }
}

/// Identifies one pipeline: program, entry point, and its boolean override constants.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    program: Program,
    entry: &'static str,
    overrides: Vec<(&'static str, bool)>,
}

/// Compiled shader modules and pipelines of one device. Each is built once, on first use.
#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<Program, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
}

impl PipelineCache {
    fn get(
        &self,
        ctx: &GpuContext,
        program: Program,
        entry: &'static str,
        overrides: &[(&'static str, bool)],
    ) -> Result<wgpu::ComputePipeline> {
        let key = PipelineKey {
            program,
            entry,
            overrides: overrides.to_vec(),
        };
        let mut pipelines = self
            .pipelines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pipeline) = pipelines.get(&key) {
            return Ok(pipeline.clone());
        }
        let module = self.module(ctx, program)?;
        let constants: Vec<(&str, f64)> = overrides
            .iter()
            .map(|&(name, on)| (name, if on { 1.0 } else { 0.0 }))
            .collect();
        let pipeline = ctx.checked(|device| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    // Every kernel writes its workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        })?;
        pipelines.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn module(&self, ctx: &GpuContext, program: Program) -> Result<wgpu::ShaderModule> {
        let mut modules = self
            .modules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(module) = modules.get(&program) {
            return Ok(module.clone());
        }
        let source = program.source();
        let module = ctx.checked(|device| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&format!("{program:?}")),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            })
        })?;
        modules.insert(program, module.clone());
        Ok(module)
    }
}

/// A storage buffer range bound at one binding slot.
pub(crate) struct Slot<'a> {
    pub binding: u32,
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: Option<u64>,
}

impl<'a> Slot<'a> {
    /// The whole buffer.
    pub fn whole(binding: u32, buffer: &'a wgpu::Buffer) -> Self {
        Slot {
            binding,
            buffer,
            offset: 0,
            size: None,
        }
    }

    /// The first `bytes` of a buffer (scratch buffers may be larger than one call needs).
    pub fn prefix(binding: u32, buffer: &'a wgpu::Buffer, bytes: u64) -> Self {
        Slot {
            binding,
            buffer,
            offset: 0,
            size: Some(bytes),
        }
    }

    /// The part of a tensor's buffer that `window` covers.
    pub fn window(binding: u32, buffer: &'a wgpu::Buffer, window: &Window) -> Self {
        Slot {
            binding,
            buffer,
            offset: window.binding_offset,
            size: Some(window.binding_size),
        }
    }
}

/// One dispatch, ready to record.
pub(crate) struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: u32,
}

impl Dispatch {
    /// Builds the bind group of `entry` with `params` as its uniform block and `slots` as its
    /// storage bindings.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: &GpuContext,
        program: Program,
        entry: &'static str,
        overrides: &[(&'static str, bool)],
        params: Params,
        slots: &[Slot<'_>],
        workgroups: u32,
    ) -> Result<Self> {
        let pipeline = ctx.pipelines().get(ctx, program, entry, overrides)?;
        // Not `create_buffer_init`: it panics when the device has been lost.
        let uniform = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-batchnorm params"),
            size: std::mem::size_of::<Params>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue()
            .write_buffer(&uniform, 0, bytemuck::bytes_of(&params));
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(slots.iter().map(|slot| wgpu::BindGroupEntry {
            binding: slot.binding,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: slot.buffer,
                offset: slot.offset,
                size: slot.size.and_then(wgpu::BufferSize::new),
            }),
        }));
        let bind_group = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Ok(Dispatch {
            pipeline,
            bind_group,
            workgroups,
        })
    }
}

/// Where to write GPU timestamps around an operation's compute pass (the benchmark's timer).
#[derive(Clone, Copy, Debug)]
pub struct PassTimestamps<'a> {
    /// A timestamp query set.
    pub query_set: &'a wgpu::QuerySet,
    /// Query written when the pass begins.
    pub begin: u32,
    /// Query written when the pass ends.
    pub end: u32,
}

/// Records `dispatches` in order into one compute pass (wgpu orders dispatches that share a
/// buffer, so each step sees the previous one's writes).
pub(crate) fn record_pass(
    encoder: &mut wgpu::CommandEncoder,
    label: &str,
    dispatches: &[Dispatch],
    timestamps: Option<PassTimestamps<'_>>,
) {
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: timestamps.map(|t| wgpu::ComputePassTimestampWrites {
            query_set: t.query_set,
            beginning_of_pass_write_index: Some(t.begin),
            end_of_pass_write_index: Some(t.end),
        }),
    });
    for dispatch in dispatches {
        pass.set_pipeline(&dispatch.pipeline);
        pass.set_bind_group(0, &dispatch.bind_group, &[]);
        pass.dispatch_workgroups(dispatch.workgroups, 1, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(source: &str) -> naga::Module {
        naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|error| panic!("{}", error.emit_to_string(source)))
    }

    #[test]
    fn every_shader_is_valid_wgsl() {
        let sources = Program::ALL
            .map(Program::source)
            .into_iter()
            .chain([STREAM_WGSL.to_string()]);
        for source in sources {
            let module = parse(&source);
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::default(),
            )
            .validate(&module)
            .unwrap_or_else(|error| panic!("{}", error.emit_to_string(&source)));
        }
    }

    /// Bytes of workgroup memory each entry point of `source` uses, by name.
    fn workgroup_bytes_per_entry_point(source: &str) -> Vec<(String, u64)> {
        let module = parse(source);
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module)
        .expect("valid WGSL");
        module
            .entry_points
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let uses = info.get_entry_point(index);
                let bytes = module
                    .global_variables
                    .iter()
                    .filter(|(handle, var)| {
                        var.space == naga::AddressSpace::WorkGroup && !uses[*handle].is_empty()
                    })
                    .map(|(_, var)| u64::from(module.types[var.ty].inner.size(module.to_ctx())))
                    .sum();
                (entry.name.clone(), bytes)
            })
            .collect()
    }

    #[test]
    fn the_workgroup_storage_requirement_is_what_the_shaders_declare() {
        let per_entry: Vec<(String, u64)> = Program::ALL
            .into_iter()
            .flat_map(|program| workgroup_bytes_per_entry_point(&program.source()))
            .collect();
        let (largest, bytes) = per_entry
            .iter()
            .max_by_key(|(_, bytes)| *bytes)
            .expect("entry points");
        assert_eq!(
            *bytes, WORKGROUP_STORAGE_BYTES,
            "{largest} uses the most workgroup memory; every entry point: {per_entry:?}"
        );
    }

    #[test]
    fn the_params_block_has_the_same_fields_in_rust_and_wgsl() {
        use std::mem::offset_of;
        let rust = [
            ("elem_shift", offset_of!(Params, elem_shift)),
            ("o_count", offset_of!(Params, o_count)),
            ("c0", offset_of!(Params, c0)),
            ("c_count", offset_of!(Params, c_count)),
            ("channels", offset_of!(Params, channels)),
            ("inner", offset_of!(Params, inner)),
            ("chunk_len", offset_of!(Params, chunk_len)),
            ("chunks", offset_of!(Params, chunks)),
            ("chunk_base", offset_of!(Params, chunk_base)),
            ("chunks_total", offset_of!(Params, chunks_total)),
            ("items", offset_of!(Params, items)),
            ("values_per_channel", offset_of!(Params, values_per_channel)),
            ("eps", offset_of!(Params, eps)),
            ("momentum", offset_of!(Params, momentum)),
            ("var_correction", offset_of!(Params, var_correction)),
            ("_pad", offset_of!(Params, _pad)),
        ];
        let module = parse(&Program::Normalize.source());
        let (members, span) = module
            .types
            .iter()
            .find_map(|(_, ty)| match (&ty.name, &ty.inner) {
                (Some(name), naga::TypeInner::Struct { members, span }) if name == "Params" => {
                    Some((members.clone(), *span))
                }
                _ => None,
            })
            .expect("shaders/common.wgsl declares Params");
        let wgsl: Vec<(&str, usize)> = members
            .iter()
            .map(|m| (m.name.as_deref().unwrap_or(""), m.offset as usize))
            .collect();
        assert_eq!(wgsl, rust);
        assert_eq!(span as usize, std::mem::size_of::<Params>());
    }
}
