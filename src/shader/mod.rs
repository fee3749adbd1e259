//! The WGSL programs as data: which roles each binds, its element width, its override
//! constants, and its source, assembled in one order:
//!
//! 1. the prelude generated from Rust (`prelude.rs`): constants, the uniform block, override
//!    constants, the program's bindings (one number per role, `bindings.rs`) and its element
//!    type's load and store functions;
//! 2. `shaders/common.wgsl`: the index walks and the elementwise cursor;
//! 3. the shared pieces the program needs, in this order: `epilogue.wgsl` (the output
//!    y = epilogue((x - mean) scale + shift)), `reduction.wgsl` (the workgroup merge and the
//!    finalize, over the program's accumulator), `elementwise.wgsl` (the grid-stride loop),
//!    `channel_statistics.wgsl` or `dx_factors.wgsl` (per-channel factors);
//! 4. the program's own file, with its entry points.
//!
//! WGSL declarations are order-independent, so a shared piece may call what the program's own
//! file defines (`acc_merge`, `finalize_channel`, `lane_factors`, `apply`).

mod bindings;
mod params;
mod prelude;

pub use bindings::{Access, Role, PARAMS_BINDING};
#[cfg(test)]
use params::PARAMS_OFFSETS;
pub use params::{Params, PARAMS_FIELDS};

use crate::plan::{STATISTICS_PARTIAL_BYTES, STRIDED_BAND, WORKGROUP_SIZE};

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const EPILOGUE: &str = include_str!("../../shaders/epilogue.wgsl");
const REDUCTION: &str = include_str!("../../shaders/reduction.wgsl");
const ELEMENTWISE: &str = include_str!("../../shaders/elementwise.wgsl");
const CHANNEL_STATISTICS: &str = include_str!("../../shaders/channel_statistics.wgsl");
const DX_FACTORS: &str = include_str!("../../shaders/dx_factors.wgsl");

/// Workgroup memory the kernels need: the most any entry point declares, which is the fused
/// channels-last training forward's (an accumulator per thread for the reduction, and a
/// (mean, invstd) pair per channel of its band). A unit test measures every entry point's with
/// naga.
pub const WORKGROUP_STORAGE_BYTES: u64 =
    WORKGROUP_SIZE as u64 * STATISTICS_PARTIAL_BYTES + STRIDED_BAND as u64 * 8;

/// The benchmark's roofline kernel: read one vec4, write one vec4 (`shaders/stream.wgsl`).
pub const STREAM_WGSL: &str = include_str!("../../shaders/stream.wgsl");

/// A WGSL program: one shader module with several entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Program {
    /// Per-channel mean and variance, and the fused training forward
    /// (`shaders/batch_statistics.wgsl`).
    BatchStatistics,
    /// The normalize-scale-shift (`shaders/normalize.wgsl`).
    Normalize,
    /// The same on vec4s, for rows that split into whole vec4s (`shaders/normalize_vec4.wgsl`).
    NormalizeVec4,
    /// dx, dgamma, dbeta (`shaders/backward.wgsl`).
    Backward,
    /// dx on vec4s, for rows that split into whole vec4s (`shaders/input_gradient_vec4.wgsl`).
    InputGradientVec4,
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
        }
    }

    /// Its value when a pipeline does not set it.
    pub fn default_value(self) -> bool {
        matches!(self, Override::HasAffine | Override::BatchStats)
    }
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

    /// The roles the program declares bindings for.
    pub fn roles(self) -> &'static [Role] {
        use Role::*;
        match self {
            Program::BatchStatistics => &[X, Y, Affine, Running, Stats, Partials, Batches],
            Program::Normalize | Program::NormalizeVec4 => &[X, Y, Affine, Running, Stats],
            Program::Backward => &[X, Dy, Dx, Affine, Stats, Partials, Grads],
            Program::InputGradientVec4 => &[X, Dy, Dx, Affine, Stats, Grads],
        }
    }

    /// Elements per load and store of its tensors: 4 for the vec4 programs.
    pub fn lanes(self) -> u32 {
        match self {
            Program::NormalizeVec4 | Program::InputGradientVec4 => 4,
            _ => 1,
        }
    }

    /// The override constants it declares.
    pub fn overrides(self) -> &'static [Override] {
        match self {
            Program::BatchStatistics => &[
                Override::HasRunning,
                Override::HasAffine,
                Override::Cumulative,
                Override::Moments,
            ],
            Program::Normalize | Program::NormalizeVec4 => {
                &[Override::HasAffine, Override::FromRunning]
            }
            Program::Backward | Program::InputGradientVec4 => {
                &[Override::HasAffine, Override::BatchStats]
            }
        }
    }

    /// The WGSL files after the prelude, in the documented order.
    fn files(self) -> &'static [&'static str] {
        match self {
            Program::BatchStatistics => &[
                COMMON,
                EPILOGUE,
                REDUCTION,
                include_str!("../../shaders/batch_statistics.wgsl"),
            ],
            Program::Normalize => &[
                COMMON,
                EPILOGUE,
                ELEMENTWISE,
                CHANNEL_STATISTICS,
                include_str!("../../shaders/normalize.wgsl"),
            ],
            Program::NormalizeVec4 => &[
                COMMON,
                EPILOGUE,
                ELEMENTWISE,
                CHANNEL_STATISTICS,
                include_str!("../../shaders/normalize_vec4.wgsl"),
            ],
            Program::Backward => &[
                COMMON,
                REDUCTION,
                ELEMENTWISE,
                DX_FACTORS,
                include_str!("../../shaders/backward.wgsl"),
            ],
            Program::InputGradientVec4 => &[
                COMMON,
                ELEMENTWISE,
                DX_FACTORS,
                include_str!("../../shaders/input_gradient_vec4.wgsl"),
            ],
        }
    }

    /// The full WGSL source; with `inputs_read_write`, the variant whose tensor inputs are
    /// declared read-write (`Role::access_in`).
    pub fn source(self, inputs_read_write: bool) -> String {
        std::iter::once(prelude::prelude(self, inputs_read_write))
            .chain(self.files().iter().map(|file| file.to_string()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(source: &str) -> naga::Module {
        naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|error| panic!("{}", error.emit_to_string(source)))
    }

    fn validate(source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
        let module = parse(source);
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module)
        .unwrap_or_else(|error| panic!("{}", error.emit_to_string(source)));
        (module, info)
    }

    #[test]
    fn every_program_is_valid_wgsl() {
        for program in Program::ALL {
            for inputs_read_write in [false, true] {
                validate(&program.source(inputs_read_write));
            }
        }
        validate(STREAM_WGSL);
    }

    /// Every global every entry point uses is bound where the role table says, with the
    /// table's access mode (x and dy read-write in the variant for inputs that share the
    /// output's buffer); the uniform block is at `PARAMS_BINDING`.
    #[test]
    fn every_entry_point_binds_by_the_role_table() {
        for (program, inputs_read_write) in Program::ALL
            .into_iter()
            .flat_map(|program| [(program, false), (program, true)])
        {
            let (module, info) = validate(&program.source(inputs_read_write));
            for (index, entry) in module.entry_points.iter().enumerate() {
                let uses = info.get_entry_point(index);
                for (handle, var) in module.global_variables.iter() {
                    if uses[handle].is_empty() {
                        continue;
                    }
                    let name = var.name.as_deref().unwrap_or_default();
                    let what = format!("{program:?}::{}: {name}", entry.name);
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
        let module = parse(&Program::Normalize.source(false));
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

    #[test]
    fn the_workgroup_storage_requirement_is_what_the_shaders_declare() {
        let per_entry: Vec<(String, u64)> = Program::ALL
            .into_iter()
            .flat_map(|program| workgroup_bytes_per_entry_point(&program.source(false)))
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
}
