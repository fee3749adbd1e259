//! Pure planning: from a tensor's view and the device's limits to the windows and dispatch
//! sizes of every kernel. No GPU here, so every rule is unit-tested.
//!
//! Rules, in order:
//! - A tensor is split into windows that each fit in one storage binding
//!   (`max_storage_buffer_binding_size`), with binding offsets aligned to
//!   `min_storage_buffer_offset_alignment`. A window holds whole outer rows (all channels) when a
//!   row fits; otherwise it holds one outer row and a range of channels.
//! - On GPUs, reductions use the strided kernel (32 consecutive channels per workgroup,
//!   coalesced) when a channel's values are not contiguous (`inner == 1`) and windows hold whole
//!   rows; otherwise the contiguous kernel (one workgroup per chunk of one channel). On CPU
//!   adapters, the per-thread kernels (no barriers), in every layout: where channels are
//!   innermost (`inner == 1`) and a multiple of four, threads of four consecutive channels
//!   (quads), `QUAD_LANES` of them sharing a chunk of rows; one thread per chunk of one channel
//!   otherwise.
//! - A chunk holds `CONTIGUOUS_CHUNK` values (or `STRIDED_CHUNK_ROWS` rows). On GPUs, a plan
//!   that is not fused halves it (not below eight values per thread) until the reduction has
//!   `MIN_GPU_REDUCTION_ITEMS` work items. A per-thread chunk starts at `MIN_RUN_CHUNK` values
//!   (the quad kernel's at `MIN_QUAD_CHUNK_ROWS` rows, or more where a thread has few quads).
//!   Then a chunk is doubled until the partials of all chunks fit in one storage binding and, on
//!   CPU adapters, until the reduction has at most `CPU_REDUCTION_THREADS` work items.
//! - Each channel's partials are merged by one thread when there are at most
//!   `PER_THREAD_FINALIZE_MAX_PARTIALS` of them or on a CPU adapter (no barriers, no idle
//!   threads), by a whole
//!   workgroup otherwise.
//! - Elementwise kernels load and store vec4s when the tensor's rows and every window's rows
//!   split into whole vec4s (`C * inner % 4 == 0`) and every window starts on a vec4; scalars
//!   otherwise. A vec4's lanes hold one channel (channels-first, `inner % 4 == 0`), four
//!   consecutive channels (channels-last), or a run's end and the next run's start
//!   (channels-first 7x7: each lane finds its channel). The CPU adapters' per-thread
//!   reductions read vec4s on the same condition (`Plan::reduction_vec4_at`): a quad of
//!   channels-last channels, or a vec4 of a channels-first run of eight values or more whose
//!   lanes outside the run are masked off (shorter runs are read one value at a time).
//! - Half-precision tensors (two elements to a 32-bit word): every window starts at an even
//!   element, so that each elementwise thread owns whole words, and no operation is fused (the
//!   fused kernels store single elements from neighbouring threads).
//! - An operation is fused into one dispatch (a workgroup per channel, or per band of 32
//!   channels, reads its values, reduces them, then writes its output from the same values)
//!   when the tensor is one window and each channel is one chunk: small and mid-sized channels,
//!   where the separate dispatches' fixed costs weigh most. The training forward of a
//!   channels-last tensor of one window too tall for a chunk of 32 channels is fused in a band
//!   of 16 channels (`NARROW_BAND`) where its rows fit a chunk of the same number of values and
//!   the bands number at least `NARROW_FUSED_MIN_WORKGROUPS`; its backward stays split. On CPU
//!   adapters, whose per-thread kernels avoid barriers, a channels-first f32 tensor of one
//!   window whose runs are read in quads (eight values or more) is fused with a thread per
//!   channel group: the fewest consecutive channels whose runs fill whole quads (1, 2 or 4 by
//!   `inner % 4`, so that no two threads write one quad), where the channels split into such
//!   groups, a group holds at most `FUSED_RUN_MAX_VALUES` values and there are at least
//!   `FUSED_RUN_MIN_THREADS` groups: the thread finds its channels' values in its core's cache
//!   when it writes the output. Other CPU plans are not fused (the workgroup kernels merge in
//!   workgroup memory, behind barriers).
//! - Workgroup counts are capped at `max_compute_workgroups_per_dimension`; kernels loop over
//!   their work items, so no count is ever refused.
//! - A reduction that is not fused and is one window merges each channel's partials (contiguous)
//!   or each band's (strided) in the workgroup that finishes the channel or band last, counted by
//!   an atomic counter per channel or band, instead of in a separate finalize dispatch, where the
//!   device has `@coherent` storage (`MEMORY_DECORATION_COHERENT`): without it other
//!   workgroups' partials are not guaranteed visible. The merge keeps the finalize kind's order,
//!   so results are bitwise those of the finalize dispatch. Several windows keep the dispatch:
//!   a channel's partials then come from several dispatches. So do strided plans whose channels
//!   have over 32 partials: their band's last workgroup would merge its channels one after
//!   another.

use crate::dtype::DType;
use crate::error::BatchNormError;
use crate::layout::ChannelView;

/// Values each workgroup of the contiguous reduction takes (64 per thread). Smaller chunks left
/// an H200's training forward of 64x64x112x112 at 185 us instead of 171 us: each workgroup has
/// a fixed cost (its shift, its tree merge, its write) that more values amortize.
pub const CONTIGUOUS_CHUNK: usize = 16384;
/// Rows each workgroup of the strided reduction takes (128 per row lane), for the same reason.
pub const STRIDED_CHUNK_ROWS: usize = 1024;
/// Channels per workgroup of the strided kernels (`MAX_BAND` in the shaders): 32 lanes read 128
/// contiguous bytes of a row. A fused plan may narrow its band (`NARROW_BAND`).
pub const STRIDED_BAND: usize = 32;
/// The narrower band a fused strided training forward may take, so that a channels-last tensor
/// too tall for one workgroup per 32 channels still runs in one dispatch
/// (`fused_in_a_narrower_band`): each workgroup keeps the values of `STRIDED_CHUNK_ROWS` rows
/// of 32 channels (it reads twice the rows of half the channels), and there are twice the
/// workgroups. A band of 8 (up to 4096 rows) ran slower fused than split on an H200
/// (64x2048x7x7 channels-last, 3136 rows: 40.1 us against 37.4; `docs/performance.md`, section
/// 46): each workgroup's walk down its rows grows with them, while the split plan's workgroups
/// take a few hundred.
pub const NARROW_BAND: usize = 16;
/// The fewest workgroups (bands) of a plan fused in `NARROW_BAND`: with fewer, most of a GPU
/// idles while each walks its 2048 rows. On an H200, 32x64x8x8 channels-last (4 workgroups)
/// ran faster split (17.4 to 17.6 us in four processes) than fused in the runs before (19.9 to
/// 24.1), 32x1024x8x8 (64) faster fused (22.1 against 28.0; section 46).
pub const NARROW_FUSED_MIN_WORKGROUPS: usize = 64;
/// Threads per workgroup (`WORKGROUP` in the shaders).
pub const WORKGROUP_SIZE: usize = 256;
/// Threads per workgroup of the per-thread reduction (`RUN_WORKGROUP` in the shaders): small, so
/// that a CPU adapter's threads share the workgroups evenly.
pub const RUN_WORKGROUP_SIZE: usize = 64;
/// Values a per-thread reduction merges into a block before it merges the block into its total
/// (`RUN_BLOCK` in the shaders), so that no chain of additions runs the whole chunk.
pub const RUN_BLOCK: usize = 256;
/// The smallest per-thread chunk, in values: below it, each thread's fixed cost (its position,
/// its partial's write) weighs on its loads.
pub const MIN_RUN_CHUNK: usize = 1024;
/// Threads of the per-thread quad kernel that share a chunk of rows, each taking every
/// `QUAD_LANES`-th quad of four channels (`QUAD_LANES` in the shaders): a SIMD vector of
/// llvmpipe (8 lanes of 32 bits) then reads 128 contiguous bytes of each row.
pub const QUAD_LANES: usize = 8;
/// The smallest chunk of the per-thread quad kernel, in rows (two blocks of eight): a vector
/// finds the chunk's pages and cache lines at hand when it comes back for the next 128 bytes
/// of its rows, and a mid-sized tensor splits into enough threads for a CPU's cores to share
/// evenly (64x2048x7x7 channels-last: 196 chunks, 1568 threads; chunks of 128 rows gave 200
/// threads, four workgroups for two cores). Where a thread has few quads, its chunk starts
/// longer, so that it still reads `MIN_RUN_CHUNK` values (`first_quad_chunk_rows`). Chunks then
/// double until the reduction has at most `CPU_REDUCTION_THREADS` work items, so large tensors
/// keep long chunks and few partials.
pub const MIN_QUAD_CHUNK_ROWS: usize = 16;
/// The most values a thread of a CPU adapter's fused plan takes (those of its channel group,
/// `shaders/fused_per_thread.wgsl`): the eight threads of an llvmpipe vector then hold their
/// x and dy in 1 MiB, no more than a core's L2 cache on the development machines (1 MiB on an
/// AMD EPYC, 2 MiB on the Intel Xeon where this was measured), for the output pass to find
/// there. 64x256x56x56 (200704 values a channel, 256 threads) ran slower fused
/// (`docs/performance.md` section 33).
pub const FUSED_RUN_MAX_VALUES: usize = 16384;
/// The fewest threads (channel groups) a CPU adapter's fused plan takes: at least eight
/// workgroups of `RUN_WORKGROUP_SIZE` threads for a CPU's cores to share. 16x64x32x32 (64
/// channels, a thread each: one workgroup, one core) ran slower fused than split
/// (`docs/performance.md` section 33).
pub const FUSED_RUN_MIN_THREADS: usize = 512;
/// The most channels a thread of a CPU adapter's fused plan takes (`Plan::fused_channel_group`:
/// four runs of an odd length fill whole quads).
pub const FUSED_GROUP_MAX: usize = 4;
/// Most partials per channel that one thread merges alone.
pub const PER_THREAD_FINALIZE_MAX_PARTIALS: usize = 32;
/// Bytes of one partial of the statistics reduction: count, shift, mean - shift, M2.
pub const STATISTICS_PARTIAL_BYTES: u64 = 16;
/// Bytes of one partial of the backward's reduction: sum dy, sum dy * (x - mean).
pub const GRADIENT_PARTIAL_BYTES: u64 = 8;
const F32_BYTES: u64 = 4;
/// Why a half-precision tensor cannot be split into windows of whole words.
const HALF_WINDOWS: &str = "a half-precision (f16, bf16) tensor larger than one storage binding \
    needs windows that start on whole 32-bit words: an even number of elements per outer row, \
    or, where one row alone exceeds a binding, an even number per channel run; store it as f32 \
    or pad that dimension";
/// Most values in one window, whatever the binding limit (Metal's can exceed 4 GiB): the
/// kernels index a window with u32 arithmetic that may run a few thousand values past its end
/// before a bounds test.
pub const MAX_WINDOW_VALUES: u64 = 1 << 30;

/// The device limits that planning depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    /// `max_storage_buffer_binding_size`, bytes.
    pub max_binding_bytes: u64,
    /// `min_storage_buffer_offset_alignment`, bytes.
    pub offset_alignment: u64,
    /// `max_compute_workgroups_per_dimension`.
    pub max_workgroups: u32,
    /// Most workgroups an elementwise dispatch uses (its threads then loop).
    pub elementwise_workgroups: u32,
    /// Steps of the elementwise loop times the tensors the dispatch reads and writes, each
    /// thread's budget where the tensor is large enough (fewer workgroups, each thread looping
    /// more): see `elementwise_steps`. 1 (one step) on GPUs.
    pub elementwise_streams: u32,
    /// An elementwise dispatch's workgroup count is also a multiple of this where rounding down
    /// to a common multiple of it and the row unit costs at most `1 / 16` of the count wanted
    /// (see `workgroups_for_elements`, `CPU_ELEMENTWISE_WORKGROUP_MULTIPLE`); 1 on GPUs.
    pub elementwise_workgroup_multiple: u32,
    /// Reduction chunks grow until a reduction has at most this many work items.
    pub max_reduction_items: u32,
    /// Reductions run one thread per chunk, without barriers (CPU adapters).
    pub per_thread_reductions: bool,
    /// Reduction chunks of plans that are not fused shrink, down to `MIN_CONTIGUOUS_CHUNK` or
    /// `MIN_STRIDED_CHUNK_ROWS`, until a reduction has at least this many work items.
    pub min_reduction_items: u32,
    /// The device has `Features::MEMORY_DECORATION_COHERENT` enabled, so one workgroup can read
    /// the partials others wrote in the same dispatch (`Merge::LastWorkgroup`).
    pub coherent_storage: bool,
}

/// Work items a GPU's reduction should have at least: a few workgroups per compute unit, so
/// that each unit has loads of several workgroups in flight. An H200 has 132 units.
pub const MIN_GPU_REDUCTION_ITEMS: u32 = 1024;
/// The smallest contiguous chunk: eight values per thread (one load of `walk_eight`).
pub const MIN_CONTIGUOUS_CHUNK: usize = 8 * WORKGROUP_SIZE;
/// The smallest strided chunk: eight rows per row lane.
pub const MIN_STRIDED_CHUNK_ROWS: usize = 8 * 8;

/// Work items (threads) of a per-thread reduction on a CPU adapter: 32 workgroups, enough to
/// share among a CPU's cores, and each thread's fixed cost stays small beside its loads.
pub const CPU_REDUCTION_THREADS: u32 = 2048;

/// Workgroups of an elementwise dispatch on a GPU. The stream kernel on an H200 reached 3.56,
/// 3.81, 3.90 and 3.12 TB/s with 1024, 4096, 16384 and 65535 workgroups; and a thread that
/// loops over several elements of its channel loads the channel's parameters once for all of
/// them (channels-last vec4s touch four channels' parameters per element).
pub const GPU_ELEMENTWISE_WORKGROUPS: u32 = 16384;

/// Steps of the elementwise loop times tensors per thread on a CPU adapter (lavapipe, llvmpipe,
/// WARP). Such an adapter runs a workgroup's SIMD vectors one after another, each through its
/// whole loop, and a vector reads only its lanes' bytes of each grid step of each tensor: the
/// pages a vector visits at once (its steps times the tensors it streams) should be few enough
/// that the CPU's prefetchers follow them and the vectors after the first find them in cache,
/// and each workgroup's fixed cost still amortized. 64x64x112x112 channels-last inference on
/// lavapipe: 126 ms with 64 workgroups (about 500 steps), 85 ms at 32 steps, 84 at 64, 103 at
/// 128 (docs/performance.md, section 22); 8192x4096 inference on llvmpipe 125 to 147 ms at 32
/// steps, 45 to 63 at 16 (section 35); and with three tensors or more (dx, an added shortcut)
/// 16 steps ran up to 3x slower than 8, and with five 4 steps were fastest (section 47).
pub const CPU_ELEMENTWISE_STREAMS: u32 = 32;

/// A CPU adapter's elementwise workgroup counts are multiples of this where that is cheap
/// (`workgroups_for_elements`). Measured, not explained: on llvmpipe with two worker threads,
/// the second window of a 64x256x56x56 channels-last dx (17.8 M values, 8 steps a thread) ran
/// in 47 to 95 ms at 2175, 2177, 2178, 2179, 2181 and 2185 workgroups and in 20 to 27 ms at
/// 2144, 2160, 2168, 2176, 2180, 2184 and 2192 (outside the machine's slow phases), while the
/// first window's 33.5 M values ran alike at the counts tried, 4063 to 4127
/// (docs/performance.md, section 49).
pub const CPU_ELEMENTWISE_WORKGROUP_MULTIPLE: u32 = 8;

impl PlanLimits {
    /// Reads the limits of a device of the given type with the given features enabled.
    pub fn new(
        limits: &wgpu::Limits,
        device_type: wgpu::DeviceType,
        features: wgpu::Features,
    ) -> Self {
        let max_workgroups = limits.max_compute_workgroups_per_dimension;
        PlanLimits {
            max_binding_bytes: limits.max_storage_buffer_binding_size,
            offset_alignment: u64::from(limits.min_storage_buffer_offset_alignment),
            max_workgroups,
            elementwise_workgroups: match device_type {
                wgpu::DeviceType::Cpu => max_workgroups,
                _ => GPU_ELEMENTWISE_WORKGROUPS,
            }
            .min(max_workgroups),
            elementwise_streams: match device_type {
                wgpu::DeviceType::Cpu => CPU_ELEMENTWISE_STREAMS,
                _ => 1,
            },
            elementwise_workgroup_multiple: match device_type {
                wgpu::DeviceType::Cpu => CPU_ELEMENTWISE_WORKGROUP_MULTIPLE,
                _ => 1,
            },
            max_reduction_items: match device_type {
                wgpu::DeviceType::Cpu => CPU_REDUCTION_THREADS,
                _ => u32::MAX,
            },
            per_thread_reductions: device_type == wgpu::DeviceType::Cpu,
            min_reduction_items: match device_type {
                wgpu::DeviceType::Cpu => 0,
                _ => MIN_GPU_REDUCTION_ITEMS,
            },
            coherent_storage: features.contains(wgpu::Features::MEMORY_DECORATION_COHERENT),
        }
    }

    /// Steps of the elementwise loop a thread takes where it streams `tensors` tensors: the
    /// largest power of two within `elementwise_streams / tensors`, at least one (on a CPU
    /// adapter: 16 for a normalize, 8 for a dx through batch statistics, 4 for one that also
    /// reads the forward's output and writes dz under add-ReLU).
    pub fn elementwise_steps(&self, tensors: u32) -> u32 {
        let most = (self.elementwise_streams / tensors.max(1)).max(1);
        1 << most.ilog2()
    }
}

/// The operation a plan is made for: what it reduces decides what its partials need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Batch statistics, then the output.
    TrainingForward,
    /// The output from the running stats: no reduction.
    InferenceForward,
    /// dgamma and dbeta by a reduction, then dx.
    Backward,
}

impl Operation {
    /// Bytes of one of its reduction partials; `None` when it reduces nothing.
    pub fn partial_bytes(self) -> Option<u64> {
        match self {
            Operation::TrainingForward => Some(STATISTICS_PARTIAL_BYTES),
            Operation::InferenceForward => None,
            Operation::Backward => Some(GRADIENT_PARTIAL_BYTES),
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Operation::TrainingForward => "training forward",
            Operation::InferenceForward => "inference forward",
            Operation::Backward => "backward",
        }
    }
}

/// Which reduction kernel a tensor uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReductionKind {
    /// One workgroup per chunk of one channel; a channel's values are runs of `inner`.
    Contiguous,
    /// One workgroup per chunk of rows of 32 consecutive channels (`inner == 1`).
    Strided,
    /// One thread per chunk of one channel, read in order (CPU adapters): no workgroup memory
    /// and no barrier, which on a CPU adapter turns each invocation into a coroutine. The run
    /// of each outer row is read in aligned quads of the window, lanes outside it masked off,
    /// or, where runs are shorter than eight values, one value at a time (`Plan::runs_in_quads`).
    PerThread,
    /// Threads of four consecutive channels (CPU adapters, `inner == 1` and a multiple of four
    /// channels), `QUAD_LANES` of them sharing a chunk of rows, thread k taking quads k,
    /// k + `QUAD_LANES`, ...: each row step reads 16 contiguous bytes, a SIMD vector 128.
    PerThreadQuads,
}

impl ReductionKind {
    /// One thread per work item, without barriers (the CPU adapters' kernels).
    pub fn is_per_thread(self) -> bool {
        matches!(
            self,
            ReductionKind::PerThread | ReductionKind::PerThreadQuads
        )
    }
}

/// How each channel's partials are merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalizeKind {
    /// One thread per channel.
    PerThread,
    /// One workgroup per channel.
    PerWorkgroup,
}

/// Where each channel's partials are merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// A finalize dispatch after the partials (and inference, which reduces nothing).
    Dispatch,
    /// The partials dispatch itself: the workgroup that writes the last partial of a channel
    /// (contiguous) or of a band of 32 channels (strided, only with `FinalizeKind::PerThread`)
    /// merges them, found through an atomic counter per channel or band that it resets to zero.
    LastWorkgroup,
}

/// One binding-sized piece of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First outer row.
    pub o0: usize,
    /// Outer rows.
    pub o_count: usize,
    /// First channel.
    pub c0: usize,
    /// Channels.
    pub c_count: usize,
    /// Index in the tensor of element (o0, c0, 0), the window's first.
    pub first: usize,
    /// One past the index in the tensor of the window's last element.
    pub end: usize,
    /// Reduction chunks per channel in this window.
    pub chunks: usize,
    /// Partial slot of this window's first chunk.
    pub chunk_base: usize,
}

/// Where a tensor's window is bound: a binding at an aligned offset, and the window's first
/// element somewhere inside it (the kernels add `shift` to their indices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowBinding {
    /// Byte offset of the binding in the buffer (a multiple of the offset alignment).
    pub offset: u64,
    /// Byte size of the binding.
    pub size: u64,
    /// Index in the binding of the window's first element.
    pub shift: usize,
}

impl Window {
    /// The binding of this window of a tensor of `dtype` that starts `tensor_offset` bytes into
    /// its buffer (a multiple of 4), on a device whose storage bindings align to `alignment`
    /// bytes. The binding ends on a whole word.
    pub fn binding(&self, tensor_offset: u64, alignment: u64, dtype: DType) -> WindowBinding {
        let element = dtype.bytes();
        let alignment = alignment.max(F32_BYTES);
        let start = tensor_offset + self.first as u64 * element;
        let offset = start / alignment * alignment;
        let end = (tensor_offset + self.end as u64 * element).next_multiple_of(F32_BYTES);
        WindowBinding {
            offset,
            size: end - offset,
            shift: ((start - offset) / element) as usize,
        }
    }

    /// Work items of this window's reduction dispatch, with `band` channels per item (a strided
    /// workgroup's, or a fused per-thread thread's; `Plan::band`).
    pub fn reduction_items(&self, kind: ReductionKind, band: usize) -> usize {
        match kind {
            ReductionKind::Contiguous | ReductionKind::PerThread | ReductionKind::Strided => {
                self.chunks * self.c_count.div_ceil(band)
            }
            ReductionKind::PerThreadQuads => self.chunks * QUAD_LANES.min(self.c_count / 4),
        }
    }
}

/// The whole plan for one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The tensor's view.
    pub view: ChannelView,
    /// How its elements are stored.
    pub dtype: DType,
    /// Reduction kernel.
    pub kind: ReductionKind,
    /// Windows, in order.
    pub windows: Vec<Window>,
    /// Partial slots per channel over all windows.
    pub chunks_total: usize,
    /// Values (contiguous, per-thread) or rows (strided) per chunk.
    pub chunk_len: usize,
    /// Channels a work item of the reduction takes together: a strided workgroup's band
    /// (`STRIDED_BAND`, or `NARROW_BAND` for a fused plan), a fused per-thread plan's
    /// channel group (`fused_channel_group`); 1 otherwise.
    pub band: usize,
    /// How partials are merged: by a thread or by a workgroup per channel.
    pub finalize: FinalizeKind,
    /// Where partials are merged.
    pub merge: Merge,
    /// Elementwise kernels may use vec4 loads and stores, where every tensor of the call starts
    /// on a vec4 of its buffer (`Plan::vec4_at`).
    pub vec4: bool,
    /// The limits the plan was made for (its dispatches' workgroup counts are capped by them).
    pub limits: PlanLimits,
}

/// Plans `operation` on a non-empty tensor. Refuses, with what does not fit and by how much,
/// a tensor whose per-channel vectors, contiguous runs or reduction partials exceed one
/// storage binding; partials only count where the operation allocates them (not in
/// inference, not under a fused plan). Where a CPU adapter's per-thread partials do not fit
/// (a chunk per channel and window, and many channels), the GPU kernels' plan, which may be
/// fused and need none.
pub fn plan(
    view: ChannelView,
    dtype: DType,
    limits: PlanLimits,
    operation: Operation,
) -> Result<Plan, BatchNormError> {
    match plan_reductions(view, dtype, limits, operation) {
        Err(BatchNormError::PartialsTooLarge { .. }) if limits.per_thread_reductions => {
            let workgroup_kernels = PlanLimits {
                per_thread_reductions: false,
                ..limits
            };
            plan_reductions(view, dtype, workgroup_kernels, operation)
        }
        planned => planned,
    }
}

fn plan_reductions(
    view: ChannelView,
    dtype: DType,
    limits: PlanLimits,
    operation: Operation,
) -> Result<Plan, BatchNormError> {
    let channel_vectors = view.channels as u64 * 2 * F32_BYTES;
    if channel_vectors > limits.max_binding_bytes {
        return Err(BatchNormError::ChannelVectorsTooLarge {
            channels: view.channels,
            bytes: channel_vectors,
            max: limits.max_binding_bytes,
        });
    }
    let mut plan = plan_with_chunk(view, dtype, limits, None)?;
    let Some(partial_bytes) = operation.partial_bytes() else {
        return Ok(plan);
    };
    if let Some(narrow) = fused_in_a_narrower_band(&plan, view, dtype, limits, operation)? {
        return Ok(narrow);
    }
    if let Some(fused) = fused_per_thread(&plan, view, dtype, limits)? {
        return Ok(fused);
    }
    let merged_where = |plan: Plan| {
        // Per-thread plans (CPU adapters) keep the dispatch: the last workgroup's handshake
        // needs the barriers those kernels exist to avoid. So do strided plans whose channels
        // have over 32 partials each: their band's last workgroup would merge its 32 channels
        // one after the other, a tail that cost an H200 more than the dispatch it saves
        // (docs/performance.md, section 45).
        let band_merged_in_parallel =
            plan.kind != ReductionKind::Strided || plan.finalize == FinalizeKind::PerThread;
        let last_workgroup = limits.coherent_storage
            && plan.windows.len() == 1
            && plan.fused_window().is_none()
            && !plan.kind.is_per_thread()
            && band_merged_in_parallel;
        Plan {
            merge: if last_workgroup {
                Merge::LastWorkgroup
            } else {
                Merge::Dispatch
            },
            ..plan
        }
    };
    let min_chunk = match plan.kind {
        ReductionKind::Contiguous => MIN_CONTIGUOUS_CHUNK,
        ReductionKind::Strided => MIN_STRIDED_CHUNK_ROWS,
        ReductionKind::PerThread => MIN_RUN_CHUNK,
        ReductionKind::PerThreadQuads => first_quad_chunk_rows(view.channels),
    };
    while plan.fused_window().is_none()
        && plan.reduction_items() < limits.min_reduction_items as usize
        && plan.chunk_len / 2 >= min_chunk
    {
        plan = plan_with_chunk(view, dtype, limits, Some(plan.chunk_len / 2))?;
    }
    if let Some(rows) = strided_even_chunk(&plan) {
        plan = plan_with_chunk(view, dtype, limits, Some(rows))?;
    }
    let row_groups = plan.windows.iter().filter(|w| w.c0 == 0).count();
    loop {
        let partials_bytes = plan.partials_bytes(partial_bytes);
        let partials_fit = partials_bytes <= limits.max_binding_bytes;
        let within_budget = plan.reduction_items() <= limits.max_reduction_items as usize;
        let can_grow = plan.chunks_total > row_groups;
        if partials_fit && (within_budget || !can_grow) {
            return Ok(merged_where(plan));
        }
        if !can_grow {
            return Err(BatchNormError::PartialsTooLarge {
                operation: operation.name(),
                channels: view.channels,
                chunks: plan.chunks_total,
                partial_bytes,
                bytes: partials_bytes,
                max: limits.max_binding_bytes,
            });
        }
        plan = plan_with_chunk(view, dtype, limits, Some(plan.chunk_len * 2))?;
    }
}

/// The longer chunk, in rows, that a strided plan whose channels a thread merges (at most 32
/// partials each) takes back after halving overshot its work items (by up to twice
/// `min_reduction_items`): the longest that still gives as many items, at most
/// `STRIDED_CHUNK_ROWS`; `None` where it is no longer than the plan's. 64x2048x7x7
/// channels-last: 16 chunks of 196 rows a band (1024 items) instead of 25 of 128 (1600), and an
/// H200's backward took 45.8 us instead of 51.8. Not for plans merged by a workgroup per
/// channel: 64x1024x14x14 channels-last, whose 49 partials of 256 rows would become 32 of 392,
/// merged in the last workgroup, ran slower (training forward 61.7 us against 58.5, backward
/// 79.2 against 77.2; `docs/performance.md`, section 46).
fn strided_even_chunk(plan: &Plan) -> Option<usize> {
    if plan.kind != ReductionKind::Strided
        || plan.finalize != FinalizeKind::PerThread
        || plan.fused_window().is_some()
    {
        return None;
    }
    let bands = plan.view.channels.div_ceil(plan.band);
    let chunks_per_band = (plan.limits.min_reduction_items as usize).div_ceil(bands);
    // Rounding the rows down makes at least `chunks_per_band` chunks a band (none without a
    // minimum: nothing was halved).
    let rows = plan
        .view
        .outer
        .checked_div(chunks_per_band)?
        .min(STRIDED_CHUNK_ROWS);
    (rows > plan.chunk_len).then_some(rows)
}

/// A training forward's strided plan of one window that is not fused with 32 channels per
/// workgroup, fused in `NARROW_BAND` where its workgroups take the window's rows in one chunk of
/// the same number of values and there are at least `NARROW_FUSED_MIN_WORKGROUPS` of them;
/// `None` where not (or the plan is not such). Backward plans stay split: fused in narrow
/// bands, an H200 ran them slower than split (64x2048x7x7 channels-last 66.8 us against 56.1,
/// 32x64x8x8 37.4 against 15.6; docs/performance.md, section 45).
fn fused_in_a_narrower_band(
    plan: &Plan,
    view: ChannelView,
    dtype: DType,
    limits: PlanLimits,
    operation: Operation,
) -> Result<Option<Plan>, BatchNormError> {
    let [window] = plan.windows.as_slice() else {
        return Ok(None);
    };
    let rows = STRIDED_CHUNK_ROWS * STRIDED_BAND / NARROW_BAND;
    if operation != Operation::TrainingForward
        || plan.kind != ReductionKind::Strided
        || dtype.is_half()
        || plan.fused_window().is_some()
        || window.o_count > rows
        || view.channels.div_ceil(NARROW_BAND) < NARROW_FUSED_MIN_WORKGROUPS
    {
        return Ok(None);
    }
    let fused = Plan {
        band: NARROW_BAND,
        ..plan_with_chunk(view, dtype, limits, Some(rows))?
    };
    Ok(fused.fused_window().is_some().then_some(fused))
}

/// A per-thread plan of channels-first runs read in quads (CPU adapters, one f32 window), fused
/// with a thread per channel group (`Plan::fused_channel_group`) where a group holds at most
/// `FUSED_RUN_MAX_VALUES` values and there are at least `FUSED_RUN_MIN_THREADS` groups; `None`
/// where not.
fn fused_per_thread(
    plan: &Plan,
    view: ChannelView,
    dtype: DType,
    limits: PlanLimits,
) -> Result<Option<Plan>, BatchNormError> {
    let [window] = plan.windows.as_slice() else {
        return Ok(None);
    };
    let Some(group) = plan.fused_channel_group() else {
        return Ok(None);
    };
    if plan.kind != ReductionKind::PerThread || dtype.is_half() {
        return Ok(None);
    }
    let fused = Plan {
        band: group,
        ..plan_with_chunk(view, dtype, limits, Some(window.o_count * view.inner))?
    };
    Ok(fused.fused_window().is_some().then_some(fused))
}

/// The first chunk of the per-thread quad kernel over `channels` (a multiple of four), in rows:
/// `MIN_QUAD_CHUNK_ROWS`, or, where a thread takes few quads (narrow tensors), as many rows as
/// give it `MIN_RUN_CHUNK` values: 32x8x8x64 (two quads a thread) gets chunks of 128 rows, not
/// 16, whose thousand threads of 128 values ran slower (`docs/performance.md` section 29).
fn first_quad_chunk_rows(channels: usize) -> usize {
    let quads = channels / 4;
    let quads_per_thread = quads.div_ceil(QUAD_LANES.min(quads));
    (MIN_RUN_CHUNK / (4 * quads_per_thread))
        .next_multiple_of(8)
        .max(MIN_QUAD_CHUNK_ROWS)
}

fn plan_with_chunk(
    view: ChannelView,
    dtype: DType,
    limits: PlanLimits,
    chunk_len: Option<usize>,
) -> Result<Plan, BatchNormError> {
    let element = dtype.bytes();
    let align = limits.offset_alignment.max(F32_BYTES);
    // A half window's binding ends on a whole word: room for the padding half.
    let padding = if dtype.is_half() { element } else { 0 };
    let usable =
        (limits.max_binding_bytes.saturating_sub(align + padding) / element).min(MAX_WINDOW_VALUES);
    let row = (view.channels * view.inner) as u64;
    let whole_rows = row <= usable;
    let channels_innermost = view.inner == 1 && whole_rows;
    let kind = if limits.per_thread_reductions {
        if channels_innermost && view.channels.is_multiple_of(4) {
            ReductionKind::PerThreadQuads
        } else {
            ReductionKind::PerThread
        }
    } else if channels_innermost {
        ReductionKind::Strided
    } else {
        ReductionKind::Contiguous
    };
    let chunk_len = chunk_len.unwrap_or(match kind {
        ReductionKind::Contiguous => CONTIGUOUS_CHUNK,
        ReductionKind::Strided => STRIDED_CHUNK_ROWS,
        ReductionKind::PerThread => MIN_RUN_CHUNK,
        ReductionKind::PerThreadQuads => first_quad_chunk_rows(view.channels),
    });
    let chunks_for = |o_count: usize| match kind {
        ReductionKind::Contiguous | ReductionKind::PerThread | ReductionKind::PerThreadQuads => {
            (o_count * view.inner).div_ceil(chunk_len)
        }
        ReductionKind::Strided => o_count.div_ceil(chunk_len),
    };
    let window_at = |o0: usize, o_count: usize, c0: usize, c_count: usize, chunk_base: usize| {
        let first = (o0 * view.channels + c0) * view.inner;
        let end = if c_count == view.channels {
            (o0 + o_count) * view.channels * view.inner
        } else {
            first + c_count * view.inner
        };
        Window {
            o0,
            o_count,
            c0,
            c_count,
            first,
            end,
            chunks: chunks_for(o_count),
            chunk_base,
        }
    };

    let mut windows = Vec::new();
    let mut chunk_base = 0;
    // Half types: windows start at even elements (whole words).
    let odd_row = dtype.is_half() && row % 2 == 1;
    if whole_rows {
        let mut rows_per_window = (usable / row.max(1)).max(1) as usize;
        if odd_row && rows_per_window < view.outer {
            if rows_per_window == 1 {
                return Err(BatchNormError::Unsupported(HALF_WINDOWS));
            }
            rows_per_window -= rows_per_window % 2;
        }
        let mut o0 = 0;
        while o0 < view.outer {
            let o_count = rows_per_window.min(view.outer - o0);
            let window = window_at(o0, o_count, 0, view.channels, chunk_base);
            chunk_base += window.chunks;
            windows.push(window);
            o0 += o_count;
        }
    } else {
        let run_bytes = view.inner as u64 * element;
        let mut channels_per_window = (usable / view.inner as u64) as usize;
        if channels_per_window == 0 {
            return Err(BatchNormError::RunTooLarge {
                bytes: run_bytes,
                max: usable * element,
            });
        }
        if dtype.is_half() && view.inner % 2 == 1 {
            if odd_row || channels_per_window == 1 {
                return Err(BatchNormError::Unsupported(HALF_WINDOWS));
            }
            channels_per_window -= channels_per_window % 2;
        }
        for o0 in 0..view.outer {
            let mut c0 = 0;
            let mut chunks = 0;
            while c0 < view.channels {
                let c_count = channels_per_window.min(view.channels - c0);
                let window = window_at(o0, 1, c0, c_count, chunk_base);
                chunks = window.chunks;
                windows.push(window);
                c0 += c_count;
            }
            chunk_base += chunks;
        }
    }
    let vec4 = (view.channels * view.inner).is_multiple_of(4)
        && windows
            .iter()
            .all(|w| w.first.is_multiple_of(4) && (w.c_count * view.inner).is_multiple_of(4));
    Ok(Plan {
        view,
        dtype,
        kind,
        windows,
        vec4,
        limits,
        chunks_total: chunk_base,
        chunk_len,
        band: if kind == ReductionKind::Strided {
            STRIDED_BAND
        } else {
            1
        },
        // CPU adapters merge every channel in one thread: a workgroup's barriers cost them far
        // more than a long serial merge (65 partials of 4096 channels: 28 ms by workgroups).
        finalize: if chunk_base <= PER_THREAD_FINALIZE_MAX_PARTIALS || limits.per_thread_reductions
        {
            FinalizeKind::PerThread
        } else {
            FinalizeKind::PerWorkgroup
        },
        merge: Merge::Dispatch,
    })
}

/// Workgroups for a dispatch of `items` work items, capped at the device's per-dimension limit
/// (kernels loop over the rest).
pub fn workgroups_for_items(items: usize, limits: PlanLimits) -> u32 {
    items.clamp(1, limits.max_workgroups as usize) as u32
}

/// Workgroups for a dispatch with one thread per item (kernels loop past the cap).
pub fn workgroups_for_threads(threads: usize, limits: PlanLimits) -> u32 {
    workgroups_for_items(threads.div_ceil(WORKGROUP_SIZE), limits)
}

/// Workgroups for an elementwise dispatch over a window of `elements` in rows of `row` elements
/// that streams `tensors` tensors: a thread per `elementwise_steps(tensors)` elements, at most the
/// adapter's elementwise budget, rounded down to a multiple of `row / gcd(row, WORKGROUP_SIZE)`
/// where that leaves at least one such multiple, so the grid stride is a whole number of rows and
/// each thread stays on one channel (the kernels then load a channel's parameters once per thread
/// and do no index arithmetic per element), and to a common multiple of that and the adapter's
/// `elementwise_workgroup_multiple` where that costs at most `1 / 16` of the count wanted (an odd
/// row unit of 196 would otherwise take 588 workgroups to 392). Where the row's multiple is
/// larger than the count wanted, one multiple if every thread of it still has an element and the
/// device allows that many workgroups (a channels-first row of 12544 values asks for a multiple
/// of 784: without whole rows, each element finds its channel with two integer divisions, which
/// took a CPU adapter's inference forward of 64x64x112x112 from 48 to 237 ms); else the plain
/// count, since rounding up would launch thousands of idle workgroups (7575 for a 1x3x100x101
/// tensor that wants 30).
pub fn workgroups_for_elements(
    elements: usize,
    row: usize,
    tensors: u32,
    limits: PlanLimits,
) -> u32 {
    let steps = limits.elementwise_steps(tensors) as usize;
    let wanted = workgroups_for_items(elements.div_ceil(WORKGROUP_SIZE * steps), limits)
        .min(limits.elementwise_workgroups) as usize;
    let unit = row / gcd(row.max(1), WORKGROUP_SIZE);
    let multiple = limits.elementwise_workgroup_multiple.max(1) as usize;
    let common_unit = unit / gcd(unit, multiple) * multiple;
    let rounded = wanted / common_unit * common_unit;
    if rounded > 0 && wanted - rounded <= wanted / 16 {
        return rounded as u32;
    }
    if unit > wanted {
        let fills_its_threads = unit * WORKGROUP_SIZE <= elements;
        if fills_its_threads && unit <= limits.max_workgroups as usize {
            return unit as u32;
        }
        return wanted as u32;
    }
    (wanted / unit).max(1) as u32 * unit as u32
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Plan {
    /// The binding of window `w` of a tensor that starts `tensor_offset` bytes into its buffer.
    pub fn window_binding(&self, w: usize, tensor_offset: u64) -> WindowBinding {
        self.windows[w].binding(tensor_offset, self.limits.offset_alignment, self.dtype)
    }

    /// Whether the elementwise kernels may use vec4s for tensors that start at these byte
    /// offsets of their buffers: the plan allows it and every tensor starts on a vec4 (f32), or
    /// on a word (half types, whose vec4 is two words).
    pub fn vec4_at(&self, tensor_offsets: &[u64]) -> bool {
        let alignment = 4 * self.dtype.bytes();
        self.vec4
            && tensor_offsets
                .iter()
                .all(|o| o.is_multiple_of(alignment.max(F32_BYTES)))
    }

    /// Whether a per-thread plan reads its runs in quads (`shaders/per_thread_runs.wgsl`): runs
    /// of at least eight values. Shorter runs (a run of one value: channels-last and 2-D with a
    /// channel count not a multiple of four; spatial sizes such as 2x2) are read one value at a
    /// time, eight at once across runs (`shaders/per_thread_values.wgsl`): in quads, each run
    /// would cost loads, a partial and a merge of its own (`docs/performance.md` section 32).
    pub fn runs_in_quads(&self) -> bool {
        self.view.inner >= 8
    }

    /// The channels a thread of a fused per-thread kernel takes (`shaders/fused_per_thread.wgsl`),
    /// where its runs are read in quads: the fewest consecutive channels whose runs of an outer
    /// row fill whole quads (1 where `inner % 4 == 0`, 2 where `inner % 4 == 2`, 4 where `inner`
    /// is odd), so that every quad of the output is one thread's; `None` where the runs are
    /// shorter or the channels do not split into such groups.
    pub fn fused_channel_group(&self) -> Option<usize> {
        let group = match self.view.inner % 4 {
            0 => 1,
            2 => 2,
            _ => FUSED_GROUP_MAX,
        };
        (self.runs_in_quads() && self.view.channels.is_multiple_of(group)).then_some(group)
    }

    /// Whether the per-thread reductions (CPU adapters) read vec4s of tensors that start at these
    /// byte offsets: aligned quads of the window (channels-last rows of four channels, or
    /// channels-first runs of eight values or more with their neighbours' values masked off),
    /// where the elementwise kernels would (`vec4_at`).
    pub fn reduction_vec4_at(&self, tensor_offsets: &[u64]) -> bool {
        let reads_quads = match self.kind {
            ReductionKind::PerThreadQuads => true,
            ReductionKind::PerThread => self.runs_in_quads(),
            ReductionKind::Contiguous | ReductionKind::Strided => false,
        };
        reads_quads && self.vec4_at(tensor_offsets)
    }

    /// Bytes of the reduction partials of all chunks at `partial_bytes` each; 0 under a fused
    /// plan, which reduces each channel in one workgroup (or thread) and writes no partial.
    pub fn partials_bytes(&self, partial_bytes: u64) -> u64 {
        if self.fused_window().is_some() {
            0
        } else {
            self.view.channels as u64 * self.chunks_total as u64 * partial_bytes
        }
    }

    /// Work items of all reduction dispatches together.
    pub fn reduction_items(&self) -> usize {
        self.windows
            .iter()
            .map(|w| w.reduction_items(self.kind, self.band))
            .sum()
    }

    /// The window of a fused plan, where one dispatch does a whole operation (statistics, then
    /// the output from the values just read): the tensor is one f32 window and each channel's
    /// values are one chunk, under the workgroup kernels or, for channels-first runs read in
    /// quads, the per-thread kernel (`shaders/fused_per_thread.wgsl`, `fuses_its_kind`); not
    /// under the quad kernel or the kernel of short runs. `None` otherwise.
    pub fn fused_window(&self) -> Option<&Window> {
        match self.windows.as_slice() {
            [window]
                if self.chunks_total == 1
                    && !self.dtype.is_half()
                    && self.fuses_its_kind(window) =>
            {
                Some(window)
            }
            _ => None,
        }
    }

    /// Whether a one-window plan of one chunk per channel fuses under its reduction kind: the
    /// workgroup kernels always; per-thread, only channels-first runs read in quads whose plan
    /// takes a channel group a thread (`band`, `fused_channel_group`), at most
    /// `FUSED_RUN_MAX_VALUES` values a group, `FUSED_RUN_MIN_THREADS` groups or more (a plan may
    /// reach one chunk per channel by growing its chunks, with channels of any size).
    fn fuses_its_kind(&self, window: &Window) -> bool {
        match self.kind {
            ReductionKind::Contiguous | ReductionKind::Strided => true,
            ReductionKind::PerThread => {
                self.fused_channel_group() == Some(self.band)
                    && self.band * window.o_count * self.view.inner <= FUSED_RUN_MAX_VALUES
                    && window.c_count / self.band >= FUSED_RUN_MIN_THREADS
            }
            ReductionKind::PerThreadQuads => false,
        }
    }

    /// Workgroups of a reduction dispatch of `items` work items: a workgroup each, or a thread
    /// each in workgroups of `RUN_WORKGROUP_SIZE` (per-thread).
    pub fn reduction_workgroups(&self, items: usize) -> u32 {
        match self.kind {
            ReductionKind::Contiguous | ReductionKind::Strided => {
                workgroups_for_items(items, self.limits)
            }
            ReductionKind::PerThread | ReductionKind::PerThreadQuads => {
                workgroups_for_items(items.div_ceil(RUN_WORKGROUP_SIZE), self.limits)
            }
        }
    }

    /// Counters of a `Merge::LastWorkgroup` plan: one per channel (contiguous) or per band of
    /// `STRIDED_BAND` channels (strided); none otherwise (per-thread plans always merge in a
    /// dispatch).
    pub fn merge_counters(&self) -> usize {
        match (self.merge, self.kind) {
            (Merge::Dispatch, _)
            | (_, ReductionKind::PerThread | ReductionKind::PerThreadQuads) => 0,
            (Merge::LastWorkgroup, ReductionKind::Contiguous) => self.view.channels,
            (Merge::LastWorkgroup, ReductionKind::Strided) => {
                self.view.channels.div_ceil(self.band)
            }
        }
    }

    /// Workgroups of the finalize dispatch: a thread or a workgroup per channel.
    pub fn finalize_workgroups(&self) -> u32 {
        match self.finalize {
            FinalizeKind::PerThread => workgroups_for_threads(self.view.channels, self.limits),
            FinalizeKind::PerWorkgroup => workgroups_for_items(self.view.channels, self.limits),
        }
    }
}

#[cfg(test)]
mod tests {
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
}
