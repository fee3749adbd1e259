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
//!   adapters, the per-thread kernels (no barriers), in every layout (unless their partials
//!   would not fit in one binding: then the workgroup kernels, as on GPUs): where channels are
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
//!   have over 32 partials (their band's last workgroup would merge its channels one after
//!   another) and the per-thread plans of CPU adapters (their kernels have no workgroup to
//!   count and merge with).

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
mod tests;
