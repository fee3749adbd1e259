//! The WGSL programs as data: which roles each binds, its element width, its override
//! constants, the storage types it comes in, and its source, assembled in one order:
//!
//! 1. the prelude generated from Rust (`prelude.rs`): constants, the uniform block, override
//!    constants, the program's bindings (one number per role, `bindings.rs`) and its storage
//!    type's load and store functions;
//! 2. `shaders/half.wgsl` (half types only: exact loads and rounding stores) and
//!    `shaders/common.wgsl` (the index walks and the elementwise cursor);
//! 3. the shared pieces the program needs, in this order: `epilogue.wgsl` (the output
//!    y = epilogue((x - mean) scale + shift), and a channel's scale and shift),
//!    `reduction.wgsl` (the workgroup merge and the finalize, over the program's accumulator),
//!    `merge_by_dispatch.wgsl` or `last_workgroup.wgsl` (what a reduction workgroup does once
//!    its partial is written: nothing, or count it and merge where it was the last),
//!    `elementwise.wgsl` (the grid-stride loop), `channel_statistics.wgsl` or
//!    `dx_factors.wgsl` (per-channel factors), `statistics_partial.wgsl` or
//!    `gradient_sums_accumulator.wgsl` (the reduction's accumulator, with no loads but the
//!    prelude's quad accessors), `per_thread_quads.wgsl` and `per_thread_runs.wgsl` (the CPU
//!    adapters' channels-last and channels-first reductions, at the program's load width),
//!    `per_thread_values.wgsl` (the CPU adapters' reduction of runs shorter than eight values,
//!    scalar programs only), `statistics_finalize.wgsl` or `gradient_sums_finalize.wgsl` (the
//!    finalize's hook: what a channel's merged partials become);
//! 4. the program's own files, with its entry points (the fused per-thread kernels' shared loop,
//!    `fused_per_thread.wgsl`, before the forward's or the backward's file). Entry points that
//!    store single elements from neighbouring threads (the fused kernels, the scalar
//!    elementwise ones) exist only for
//!    f32: two threads may not write halves of one word, so half types store through the vec4
//!    and word programs.
//!
//! WGSL declarations are order-independent, so a piece may call what a later file defines
//! (`acc_merge`, `finalize_channel`, `lane_factors`, `apply`).

mod bindings;
mod params;
mod prelude;

pub use bindings::{Access, Role, PARAMS_BINDING};
#[cfg(test)]
use params::PARAMS_OFFSETS;
pub use params::{Params, PARAMS_FIELDS};

use std::path::Path;

use crate::dtype::DType;
use crate::plan::{STATISTICS_PARTIAL_BYTES, STRIDED_BAND, WORKGROUP_SIZE};

/// One WGSL file of `shaders/`: its name there and its text, compiled into the crate.
#[derive(Clone, Copy, Debug)]
struct ShaderFile {
    name: &'static str,
    text: &'static str,
}

/// The [`ShaderFile`] of `shaders/<name>`.
macro_rules! shader_file {
    ($name:literal) => {
        ShaderFile {
            name: $name,
            text: include_str!(concat!("../../shaders/", $name)),
        }
    };
}

const HALF: ShaderFile = shader_file!("half.wgsl");
const COMMON: ShaderFile = shader_file!("common.wgsl");
const EPILOGUE: ShaderFile = shader_file!("epilogue.wgsl");
const REDUCTION: ShaderFile = shader_file!("reduction.wgsl");
const MERGE_BY_DISPATCH: ShaderFile = shader_file!("merge_by_dispatch.wgsl");
const LAST_WORKGROUP: ShaderFile = shader_file!("last_workgroup.wgsl");
const ELEMENTWISE: ShaderFile = shader_file!("elementwise.wgsl");
const CHANNEL_STATISTICS: ShaderFile = shader_file!("channel_statistics.wgsl");
const DX_FACTORS: ShaderFile = shader_file!("dx_factors.wgsl");
const STATISTICS: ShaderFile = shader_file!("statistics.wgsl");
const GRADIENT_SUMS: ShaderFile = shader_file!("gradient_sums.wgsl");
const STATISTICS_PARTIAL: ShaderFile = shader_file!("statistics_partial.wgsl");
const GRADIENT_SUMS_ACCUMULATOR: ShaderFile = shader_file!("gradient_sums_accumulator.wgsl");
const PER_THREAD_QUADS: ShaderFile = shader_file!("per_thread_quads.wgsl");
const PER_THREAD_RUNS: ShaderFile = shader_file!("per_thread_runs.wgsl");
const PER_THREAD_VALUES: ShaderFile = shader_file!("per_thread_values.wgsl");
const STATISTICS_FINALIZE: ShaderFile = shader_file!("statistics_finalize.wgsl");
const GRADIENT_SUMS_FINALIZE: ShaderFile = shader_file!("gradient_sums_finalize.wgsl");
const FUSED_PER_THREAD: ShaderFile = shader_file!("fused_per_thread.wgsl");
const FUSED_PER_THREAD_FORWARD: ShaderFile = shader_file!("fused_per_thread_forward.wgsl");
const FUSED_PER_THREAD_BACKWARD: ShaderFile = shader_file!("fused_per_thread_backward.wgsl");

/// Workgroup memory the kernels need: the most any entry point declares, which is the fused
/// channels-last training forward's (an accumulator per thread for the reduction, and a
/// (mean, invstd) pair per channel of its band). A unit test measures every entry point's with
/// naga.
pub const WORKGROUP_STORAGE_BYTES: u64 =
    WORKGROUP_SIZE as u64 * STATISTICS_PARTIAL_BYTES + STRIDED_BAND as u64 * 8;

/// Storage buffers the kernels bind at most in one dispatch: the dx kernels of the add-ReLU
/// backward (x, dy, the forward's output, dx, dz, the saved statistics, gamma and beta, dgamma
/// and dbeta). WebGPU guarantees 8 per shader stage. A unit test counts every entry point's
/// with naga.
pub const STORAGE_BUFFERS_PER_STAGE: u32 = 8;

/// The benchmark's roofline kernel: read one vec4, write one vec4 (`shaders/stream.wgsl`).
pub const STREAM_WGSL: &str = include_str!("../../shaders/stream.wgsl");

/// A WGSL program: one shader module with several entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Program {
    /// Per-channel mean and variance (`shaders/statistics.wgsl`), and for f32 the fused
    /// training forward (`shaders/fused_forward.wgsl`).
    BatchStatistics,
    /// The normalize-scale-shift, one element per step (`shaders/normalize.wgsl`; f32).
    Normalize,
    /// The same on vec4s, for rows that split into whole vec4s (`shaders/normalize_vec4.wgsl`).
    NormalizeVec4,
    /// The same on whole words of a half type, two elements per step
    /// (`shaders/normalize_words.wgsl`).
    NormalizeWords,
    /// dgamma and dbeta (`shaders/gradient_sums.wgsl`), and for f32 dx one element per step and
    /// the fused backward (`shaders/input_gradient.wgsl`, `shaders/fused_backward.wgsl`).
    Backward,
    /// dx on vec4s, for rows that split into whole vec4s (`shaders/input_gradient_vec4.wgsl`).
    InputGradientVec4,
    /// dx on whole words of a half type (`shaders/input_gradient_words.wgsl`).
    InputGradientWords,
    /// The statistics' partials merged by the last workgroup of each channel or band
    /// (`shaders/statistics.wgsl` with `shaders/last_workgroup.wgsl`); needs
    /// `Features::MEMORY_DECORATION_COHERENT`.
    LastWorkgroupStatistics,
    /// The gradient sums' partials merged the same way (`shaders/gradient_sums.wgsl` with
    /// `shaders/last_workgroup.wgsl`); needs `Features::MEMORY_DECORATION_COHERENT`.
    LastWorkgroupGradientSums,
    /// The statistics' partials of the per-thread kernels (CPU adapters) on vec4 loads, where x
    /// starts on a vec4: the quad kernel of channels-last rows (`shaders/per_thread_quads.wgsl`)
    /// and the kernel of channels-first runs of eight values or more
    /// (`shaders/per_thread_runs.wgsl`); and for f32 the fused per-thread training forward on
    /// vec4s, where y (and z) start on vec4s too (`shaders/fused_per_thread_forward.wgsl`).
    StatisticsVec4,
    /// The gradient sums' partials of the same kernels on vec4 loads, where x, dy and the
    /// forward's output start on vec4s; and for f32 the fused per-thread backward, where dx
    /// (and dz) do too (`shaders/fused_per_thread_backward.wgsl`).
    GradientSumsVec4,
}

/// One compiled form of a program: its storage type, and whether its tensor inputs are
/// declared read-write (for calls whose input shares a buffer with an output: wgpu refuses one
/// buffer bound read-only and read-write in one dispatch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    /// The program.
    pub program: Program,
    /// The storage type of its tensors.
    pub dtype: DType,
    /// Tensor inputs declared read-write.
    pub inputs_read_write: bool,
    /// The per-channel vectors (statistics, parameters, gradients) are declared as vec4s, so
    /// that the vec4 elementwise programs (`Program::reads_channel_quads`) load four channels'
    /// factors in one load each: taken for channels-last tensors, whose C is a multiple of four
    /// and whose `[first | second]` bindings so hold whole vec4s.
    pub channel_quads: bool,
}

/// A pipeline-overridable boolean of the shaders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Override {
    /// gamma and beta take part (else 1 and 0).
    HasAffine,
    /// The statistics update the running stats.
    HasRunning,
    /// Normalize with the running stats (inference).
    FromRunning,
    /// dx through the batch statistics (else through constant running stats).
    BatchStats,
    /// The running stats' momentum is 1 / the layer's batch count on the GPU (momentum
    /// `None`), not the uniform block's.
    Cumulative,
    /// The statistics' finalize writes each channel's `[mean | M2]` instead of
    /// `[mean | invstd]` and leaves the running stats alone: one rank's part of a
    /// synchronized batch norm (`crate::sync`), which merges every rank's on the host.
    Moments,
    /// The epilogue ends with a ReLU (forward), or its mask applies to dy (backward).
    Relu,
    /// The epilogue adds the shortcut z before the ReLU (forward), or writes dz (backward).
    Add,
    /// A merge in the last workgroup runs on one thread per channel (`FinalizeKind::PerThread`),
    /// else on the whole workgroup, as the finalize dispatch would.
    PerThreadMerge,
    /// The four lanes of every vec4 of the window lie in one channel (channels-first runs of a
    /// multiple of four values): the vec4 elementwise kernels find that channel's factors once
    /// a thread instead of once a lane.
    LanesShareChannel,
}

impl Override {
    /// Its WGSL name.
    pub fn name(self) -> &'static str {
        match self {
            Override::HasAffine => "HAS_AFFINE",
            Override::HasRunning => "HAS_RUNNING",
            Override::FromRunning => "FROM_RUNNING",
            Override::BatchStats => "BATCH_STATS",
            Override::Cumulative => "CUMULATIVE",
            Override::Moments => "MOMENTS",
            Override::Relu => "RELU",
            Override::Add => "ADD",
            Override::PerThreadMerge => "PER_THREAD_MERGE",
            Override::LanesShareChannel => "LANES_SHARE_CHANNEL",
        }
    }

    /// Its value when a pipeline does not set it.
    pub fn default_value(self) -> bool {
        matches!(self, Override::HasAffine | Override::BatchStats)
    }
}

impl Program {
    /// Every program, for tests that validate them all.
    pub const ALL: [Program; 11] = [
        Program::BatchStatistics,
        Program::Normalize,
        Program::NormalizeVec4,
        Program::NormalizeWords,
        Program::Backward,
        Program::InputGradientVec4,
        Program::InputGradientWords,
        Program::LastWorkgroupStatistics,
        Program::LastWorkgroupGradientSums,
        Program::StatisticsVec4,
        Program::GradientSumsVec4,
    ];

    /// The roles the program declares bindings for.
    pub fn roles(self) -> &'static [Role] {
        use Role::*;
        match self {
            Program::BatchStatistics | Program::StatisticsVec4 => {
                &[X, Y, Shortcut, Affine, Running, Stats, Partials, Batches]
            }
            Program::Normalize | Program::NormalizeVec4 | Program::NormalizeWords => {
                &[X, Y, Shortcut, Affine, Running, Stats]
            }
            Program::Backward | Program::GradientSumsVec4 => &[
                X,
                Dy,
                Dx,
                Result,
                ShortcutGrad,
                Affine,
                Stats,
                Partials,
                Grads,
            ],
            Program::InputGradientVec4 | Program::InputGradientWords => {
                &[X, Dy, Dx, Result, ShortcutGrad, Affine, Stats, Grads]
            }
            Program::LastWorkgroupStatistics => &[X, Running, Stats, Partials, Batches, Counters],
            Program::LastWorkgroupGradientSums => {
                &[X, Dy, Result, Stats, Partials, Grads, Counters]
            }
        }
    }

    /// Whether it reduces (binds partials): its accumulator's hooks for the per-thread quad
    /// kernel load through the prelude's quad accessors.
    pub fn reduces(self) -> bool {
        self.roles().contains(&Role::Partials)
    }

    /// Whether its reductions merge their partials in the last workgroup (its partials are
    /// `@coherent`, which a device must enable).
    pub fn merges_in_last_workgroup(self) -> bool {
        matches!(
            self,
            Program::LastWorkgroupStatistics | Program::LastWorkgroupGradientSums
        )
    }

    /// Whether it reads four consecutive channels' factors at once (the vec4 elementwise
    /// programs, whose lanes are four channels channels-last), and so comes in a variant with
    /// vec4 per-channel vectors (`Variant::channel_quads`).
    pub fn reads_channel_quads(self) -> bool {
        matches!(self, Program::NormalizeVec4 | Program::InputGradientVec4)
    }

    /// Elements per load and store of its tensors: 4 for the vec4 programs, 2 for the word
    /// programs.
    pub fn lanes(self) -> u32 {
        match self {
            Program::NormalizeVec4
            | Program::InputGradientVec4
            | Program::StatisticsVec4
            | Program::GradientSumsVec4 => 4,
            Program::NormalizeWords | Program::InputGradientWords => 2,
            _ => 1,
        }
    }

    /// Whether the program comes in storage type `dtype`.
    pub fn supports(self, dtype: DType) -> bool {
        match self {
            Program::Normalize => dtype == DType::F32,
            Program::NormalizeWords | Program::InputGradientWords => dtype.is_half(),
            _ => true,
        }
    }

    /// The override constants it declares.
    pub fn overrides(self) -> &'static [Override] {
        match self {
            Program::BatchStatistics | Program::StatisticsVec4 => &[
                Override::HasRunning,
                Override::HasAffine,
                Override::Cumulative,
                Override::Moments,
                Override::Relu,
                Override::Add,
            ],
            Program::Normalize | Program::NormalizeWords => &[
                Override::HasAffine,
                Override::FromRunning,
                Override::Relu,
                Override::Add,
            ],
            Program::NormalizeVec4 => &[
                Override::HasAffine,
                Override::FromRunning,
                Override::Relu,
                Override::Add,
                Override::LanesShareChannel,
            ],
            Program::Backward | Program::InputGradientWords | Program::GradientSumsVec4 => &[
                Override::HasAffine,
                Override::BatchStats,
                Override::Relu,
                Override::Add,
            ],
            Program::InputGradientVec4 => &[
                Override::HasAffine,
                Override::BatchStats,
                Override::Relu,
                Override::Add,
                Override::LanesShareChannel,
            ],
            Program::LastWorkgroupStatistics => &[
                Override::HasRunning,
                Override::Cumulative,
                Override::Moments,
                Override::PerThreadMerge,
            ],
            Program::LastWorkgroupGradientSums => &[
                Override::HasAffine,
                Override::BatchStats,
                Override::Relu,
                Override::Add,
                Override::PerThreadMerge,
            ],
        }
    }

    /// The WGSL files after the prelude, in the documented order, for storage type `dtype`.
    fn files(self, dtype: DType) -> Vec<ShaderFile> {
        let f32_only = |file: ShaderFile| (dtype == DType::F32).then_some(file);
        let files: Vec<Option<ShaderFile>> = match self {
            Program::BatchStatistics => vec![
                Some(COMMON),
                f32_only(EPILOGUE),
                Some(REDUCTION),
                Some(MERGE_BY_DISPATCH),
                Some(STATISTICS_PARTIAL),
                Some(PER_THREAD_QUADS),
                Some(PER_THREAD_RUNS),
                Some(PER_THREAD_VALUES),
                Some(STATISTICS_FINALIZE),
                Some(STATISTICS),
                f32_only(shader_file!("fused_forward.wgsl")),
                f32_only(FUSED_PER_THREAD),
                f32_only(FUSED_PER_THREAD_FORWARD),
            ],
            Program::Normalize => vec![
                Some(COMMON),
                Some(EPILOGUE),
                Some(ELEMENTWISE),
                Some(CHANNEL_STATISTICS),
                Some(shader_file!("normalize.wgsl")),
            ],
            Program::NormalizeVec4 => vec![
                Some(COMMON),
                Some(EPILOGUE),
                Some(ELEMENTWISE),
                Some(CHANNEL_STATISTICS),
                Some(shader_file!("normalize_vec4.wgsl")),
            ],
            Program::NormalizeWords => vec![
                Some(COMMON),
                Some(EPILOGUE),
                Some(CHANNEL_STATISTICS),
                Some(shader_file!("normalize_words.wgsl")),
            ],
            Program::Backward => vec![
                Some(COMMON),
                Some(REDUCTION),
                Some(MERGE_BY_DISPATCH),
                f32_only(ELEMENTWISE),
                f32_only(DX_FACTORS),
                Some(GRADIENT_SUMS_ACCUMULATOR),
                Some(PER_THREAD_QUADS),
                Some(PER_THREAD_RUNS),
                Some(PER_THREAD_VALUES),
                Some(GRADIENT_SUMS_FINALIZE),
                Some(GRADIENT_SUMS),
                f32_only(shader_file!("input_gradient.wgsl")),
                f32_only(shader_file!("fused_backward.wgsl")),
                f32_only(FUSED_PER_THREAD),
                f32_only(FUSED_PER_THREAD_BACKWARD),
            ],
            Program::InputGradientVec4 => vec![
                Some(COMMON),
                Some(ELEMENTWISE),
                Some(DX_FACTORS),
                Some(shader_file!("input_gradient_vec4.wgsl")),
            ],
            Program::InputGradientWords => vec![
                Some(COMMON),
                Some(DX_FACTORS),
                Some(shader_file!("input_gradient_words.wgsl")),
            ],
            Program::LastWorkgroupStatistics => vec![
                Some(COMMON),
                Some(REDUCTION),
                Some(LAST_WORKGROUP),
                Some(STATISTICS_PARTIAL),
                Some(STATISTICS_FINALIZE),
                Some(STATISTICS),
            ],
            Program::LastWorkgroupGradientSums => vec![
                Some(COMMON),
                Some(REDUCTION),
                Some(LAST_WORKGROUP),
                Some(GRADIENT_SUMS_ACCUMULATOR),
                Some(GRADIENT_SUMS_FINALIZE),
                Some(GRADIENT_SUMS),
            ],
            Program::StatisticsVec4 => vec![
                Some(COMMON),
                f32_only(EPILOGUE),
                Some(STATISTICS_PARTIAL),
                Some(PER_THREAD_QUADS),
                Some(PER_THREAD_RUNS),
                f32_only(STATISTICS_FINALIZE),
                f32_only(FUSED_PER_THREAD),
                f32_only(FUSED_PER_THREAD_FORWARD),
            ],
            Program::GradientSumsVec4 => vec![
                Some(COMMON),
                f32_only(DX_FACTORS),
                Some(GRADIENT_SUMS_ACCUMULATOR),
                Some(PER_THREAD_QUADS),
                Some(PER_THREAD_RUNS),
                f32_only(GRADIENT_SUMS_FINALIZE),
                f32_only(FUSED_PER_THREAD),
                f32_only(FUSED_PER_THREAD_BACKWARD),
            ],
        };
        let half = dtype.is_half().then_some(HALF);
        std::iter::once(half).chain(files).flatten().collect()
    }
}

impl Variant {
    /// Every variant a program comes in, for tests that validate them all.
    pub fn all() -> Vec<Variant> {
        let mut variants = Vec::new();
        for program in Program::ALL {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                for inputs_read_write in [false, true] {
                    for channel_quads in [false, true] {
                        if program.supports(dtype)
                            && (!channel_quads || program.reads_channel_quads())
                        {
                            variants.push(Variant {
                                program,
                                dtype,
                                inputs_read_write,
                                channel_quads,
                            });
                        }
                    }
                }
            }
        }
        variants
    }

    /// The full WGSL source, of the files compiled into the crate.
    pub fn source(self) -> String {
        let files = self.program.files(self.dtype);
        self.after_prelude(files.into_iter().map(|file| file.text.to_string()))
    }

    /// The full WGSL source with each file of `shaders/` read from `directory` instead (the
    /// prelude, generated from the crate's constants, stays built in): for comparing changed
    /// kernels against the crate's own in one process (`GpuContext::set_shader_directory`).
    pub fn source_in(self, directory: &Path) -> std::io::Result<String> {
        let read = |file: ShaderFile| {
            let path = directory.join(file.name);
            std::fs::read_to_string(&path).map_err(|error| {
                std::io::Error::new(error.kind(), format!("{}: {error}", path.display()))
            })
        };
        let files = self.program.files(self.dtype);
        let texts = files
            .into_iter()
            .map(read)
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(self.after_prelude(texts))
    }

    /// The names of the files of `shaders/` its source joins after the prelude, in order.
    pub fn file_names(self) -> Vec<&'static str> {
        let files = self.program.files(self.dtype);
        files.into_iter().map(|file| file.name).collect()
    }

    /// The generated prelude, then `texts`, one after the other.
    fn after_prelude(self, texts: impl IntoIterator<Item = String>) -> String {
        std::iter::once(prelude::prelude(self))
            .chain(texts)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What naga validates the programs with in tests: WebGPU's defaults and `@coherent` (which
/// only the last-workgroup programs use, on devices that enable it).
#[cfg(test)]
pub(crate) const CAPABILITIES: naga::valid::Capabilities =
    naga::valid::Capabilities::MULTISAMPLED_SHADING
        .union(naga::valid::Capabilities::CUBE_ARRAY_TEXTURES)
        .union(naga::valid::Capabilities::MEMORY_DECORATION_COHERENT);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(source: &str) -> naga::Module {
        naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|error| panic!("{}", error.emit_to_string(source)))
    }

    fn validate(source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
        let module = parse(source);
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), CAPABILITIES)
            .validate(&module)
            .unwrap_or_else(|error| panic!("{}", error.emit_to_string(source)));
        (module, info)
    }

    #[test]
    fn every_program_is_valid_wgsl() {
        for variant in Variant::all() {
            validate(&variant.source());
        }
        validate(STREAM_WGSL);
    }

    /// Devices without `@coherent` storage create every other program.
    #[test]
    fn only_the_last_workgroup_programs_need_coherent_storage() {
        for variant in Variant::all() {
            let module = parse(&variant.source());
            let without = naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::default(),
            )
            .validate(&module);
            assert_eq!(
                without.is_err(),
                variant.program.merges_in_last_workgroup(),
                "{variant:?}"
            );
        }
    }

    /// Every global every entry point uses is bound where the role table says, with the
    /// table's access mode (x and dy read-write in the variant for inputs that share the
    /// output's buffer); the uniform block is at `PARAMS_BINDING`.
    #[test]
    fn every_entry_point_binds_by_the_role_table() {
        for variant in Variant::all() {
            let (program, inputs_read_write) = (variant.program, variant.inputs_read_write);
            let (module, info) = validate(&variant.source());
            for (index, entry) in module.entry_points.iter().enumerate() {
                let uses = info.get_entry_point(index);
                for (handle, var) in module.global_variables.iter() {
                    if uses[handle].is_empty() {
                        continue;
                    }
                    let name = var.name.as_deref().unwrap_or_default();
                    let what = format!("{variant:?}::{}: {name}", entry.name);
                    let binding = var.binding.as_ref().map(|b| (b.group, b.binding));
                    match var.space {
                        naga::AddressSpace::Uniform => {
                            assert_eq!(binding, Some((0, PARAMS_BINDING)), "{what}");
                        }
                        naga::AddressSpace::Storage { access } => {
                            let role = Role::ALL
                                .into_iter()
                                .find(|role| role.name() == name)
                                .unwrap_or_else(|| panic!("{what}: no role of that name"));
                            assert!(program.roles().contains(&role), "{what}");
                            assert_eq!(binding, Some((0, role.binding())), "{what}");
                            let want = match role.access_in(inputs_read_write) {
                                Access::Read => naga::StorageAccess::LOAD,
                                Access::ReadWrite => {
                                    naga::StorageAccess::LOAD | naga::StorageAccess::STORE
                                }
                            };
                            assert_eq!(access, want, "{what}");
                        }
                        naga::AddressSpace::WorkGroup | naga::AddressSpace::Private => {}
                        other => panic!("{what}: unexpected address space {other:?}"),
                    }
                }
            }
        }
        // One number per role.
        let mut numbers: Vec<u32> = Role::ALL.iter().map(|r| r.binding()).collect();
        numbers.push(PARAMS_BINDING);
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), Role::ALL.len() + 1);
    }

    #[test]
    fn the_params_block_has_the_same_fields_in_rust_and_wgsl() {
        let module = parse(&f32_variant(Program::Normalize).source());
        let (members, span) = module
            .types
            .iter()
            .find_map(|(_, ty)| match (&ty.name, &ty.inner) {
                (Some(name), naga::TypeInner::Struct { members, span }) if name == "Params" => {
                    Some((members.clone(), *span))
                }
                _ => None,
            })
            .expect("the prelude declares Params");
        let wgsl: Vec<(&str, usize)> = members
            .iter()
            .map(|m| (m.name.as_deref().unwrap_or(""), m.offset as usize))
            .collect();
        let rust: Vec<(&str, usize)> = PARAMS_FIELDS
            .iter()
            .map(|(name, _)| *name)
            .zip(PARAMS_OFFSETS.iter().copied())
            .collect();
        assert_eq!(wgsl, rust);
        assert_eq!(span as usize, std::mem::size_of::<Params>());
    }

    /// Bytes of workgroup memory each entry point of `source` uses, by name.
    fn workgroup_bytes_per_entry_point(source: &str) -> Vec<(String, u64)> {
        let (module, info) = validate(source);
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

    fn f32_variant(program: Program) -> Variant {
        Variant {
            program,
            dtype: DType::F32,
            inputs_read_write: false,
            channel_quads: false,
        }
    }

    #[test]
    fn the_workgroup_storage_requirement_is_what_the_shaders_declare() {
        let per_entry: Vec<(String, u64)> = Variant::all()
            .into_iter()
            .flat_map(|variant| workgroup_bytes_per_entry_point(&variant.source()))
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
    fn the_storage_buffer_requirement_is_what_the_shaders_bind() {
        let mut most = (String::new(), 0);
        for variant in Variant::all() {
            let (module, info) = validate(&variant.source());
            for (index, entry) in module.entry_points.iter().enumerate() {
                let uses = info.get_entry_point(index);
                let storage = module
                    .global_variables
                    .iter()
                    .filter(|(handle, var)| {
                        matches!(var.space, naga::AddressSpace::Storage { .. })
                            && !uses[*handle].is_empty()
                    })
                    .count();
                if storage > most.1 {
                    most = (format!("{variant:?}::{}", entry.name), storage);
                }
            }
        }
        assert_eq!(most.1 as u32, STORAGE_BUFFERS_PER_STAGE, "{}", most.0);
    }
}
