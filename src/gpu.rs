//! The GPU context: adapter choice, device and queue, the limits the plans read, the pipeline
//! cache and scratch buffers. Cheap to clone and safe to share between threads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::dtype::{encode, DType};
use crate::error::{BatchNormError, Result};
use crate::plan::{PlanLimits, WORKGROUP_SIZE};
use crate::shader::{Override, Variant, STORAGE_BUFFERS_PER_STAGE, WORKGROUP_STORAGE_BYTES};
use crate::steps::Step;

/// Which adapter to open. [`AdapterOptions::from_env`] honours `WGPU_BACKEND` and
/// `WGPU_ADAPTER_NAME`, as wgpu's own examples do.
#[derive(Clone, Debug)]
pub struct AdapterOptions {
    /// Backends to consider.
    pub backends: wgpu::Backends,
    /// Keep only adapters whose name contains this text (case-insensitive).
    pub name_contains: Option<String>,
}

impl Default for AdapterOptions {
    fn default() -> Self {
        AdapterOptions {
            backends: wgpu::Backends::all(),
            name_contains: None,
        }
    }
}

impl AdapterOptions {
    /// All backends and any name, narrowed by `WGPU_BACKEND` (e.g. `vulkan`, `gl`) and
    /// `WGPU_ADAPTER_NAME` when they are set.
    pub fn from_env() -> Self {
        AdapterOptions {
            backends: wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()),
            name_contains: std::env::var("WGPU_ADAPTER_NAME")
                .ok()
                .filter(|n| !n.is_empty()),
        }
    }

    /// The filters in force as text, e.g. " for backends GL" (empty when none); what
    /// [`BatchNormError::NoAdapter`] reports.
    pub fn describe(&self) -> String {
        let mut filter = String::new();
        if self.backends != wgpu::Backends::all() {
            filter += &format!(" for backends {:?}", self.backends);
        }
        if let Some(name) = &self.name_contains {
            filter += &format!(" with a name containing '{name}'");
        }
        filter
    }
}

/// What a context runs on, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Adapter name, e.g. "llvmpipe (LLVM 19.1.7, 256 bits)" or "NVIDIA H200".
    pub name: String,
    /// Backend: Vulkan, Metal, Dx12, Gl, BrowserWebGpu.
    pub backend: wgpu::Backend,
    /// Discrete, integrated, virtual, CPU.
    pub device_type: wgpu::DeviceType,
    /// Driver name and version as the adapter reports them.
    pub driver: String,
}

impl From<wgpu::AdapterInfo> for AdapterSummary {
    fn from(info: wgpu::AdapterInfo) -> Self {
        AdapterSummary {
            name: info.name,
            backend: info.backend,
            device_type: info.device_type,
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
        }
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:?}, {:?}, driver {})",
            self.name, self.backend, self.device_type, self.driver
        )
    }
}

/// Lists the adapters wgpu sees for `options`, best first.
pub fn list_adapters(options: &AdapterOptions) -> Vec<wgpu::Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: options.backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
    });
    let mut adapters: Vec<wgpu::Adapter> =
        pollster::block_on(instance.enumerate_adapters(options.backends))
            .into_iter()
            .filter(|a| {
                let name = a.get_info().name.to_lowercase();
                options
                    .name_contains
                    .as_ref()
                    .is_none_or(|want| name.contains(&want.to_lowercase()))
            })
            .collect();
    adapters.sort_by_key(|a| adapter_rank(&a.get_info()));
    adapters
}

fn adapter_rank(info: &wgpu::AdapterInfo) -> u8 {
    match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// Refuses a device whose limits are below what the kernels use: 256-thread workgroups with
/// [`WORKGROUP_STORAGE_BYTES`] of workgroup memory and [`STORAGE_BUFFERS_PER_STAGE`] storage
/// buffers in one shader (the add-ReLU backward's dx kernel).
fn check_kernel_limits(limits: &wgpu::Limits) -> Result<()> {
    let workgroup = WORKGROUP_SIZE as u64;
    let required = [
        (
            "max_storage_buffers_per_shader_stage",
            u64::from(STORAGE_BUFFERS_PER_STAGE),
            u64::from(limits.max_storage_buffers_per_shader_stage),
        ),
        (
            "max_compute_invocations_per_workgroup",
            workgroup,
            u64::from(limits.max_compute_invocations_per_workgroup),
        ),
        (
            "max_compute_workgroup_size_x",
            workgroup,
            u64::from(limits.max_compute_workgroup_size_x),
        ),
        (
            "max_compute_workgroup_storage_size",
            WORKGROUP_STORAGE_BYTES,
            u64::from(limits.max_compute_workgroup_storage_size),
        ),
    ];
    match required.into_iter().find(|&(_, need, have)| have < need) {
        Some((limit, required, actual)) => Err(BatchNormError::InsufficientLimit {
            limit,
            required,
            actual,
        }),
        None => Ok(()),
    }
}

/// Identifies one pipeline: module, entry point, and its override constants.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    module: Variant,
    entry: &'static str,
    overrides: Vec<(Override, bool)>,
}

/// Compiled shader modules and pipelines of one device. Each is built once, on first use.
#[derive(Default)]
struct PipelineCache {
    modules: Mutex<HashMap<Variant, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
}

/// Locks `mutex`, taking over from a thread that panicked while holding it (the maps it
/// guards hold only finished entries).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A device and queue with everything the batch-norm kernels need. Clone it freely: clones
/// share the device, the pipeline cache and the scratch buffers.
#[derive(Clone)]
pub struct GpuContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    summary: AdapterSummary,
    pipelines: PipelineCache,
    scratch: Mutex<HashMap<&'static str, wgpu::Buffer>>,
    lost: Arc<AtomicBool>,
    /// `f32::to_bits` of the debug fill, or `NO_DEBUG_FILL`.
    debug_fill: AtomicU64,
    /// Where the kernels' WGSL files are read from instead of the crate's own, if anywhere
    /// (`GpuContext::set_shader_directory`).
    shader_directory: Mutex<Option<PathBuf>>,
}

/// The scratch key of the counters of merges in the last workgroup.
const MERGE_COUNTERS: &str = "last-workgroup merge counters";

/// `ContextInner::debug_fill` when no fill is set (no f32's bits are this large).
const NO_DEBUG_FILL: u64 = u64::MAX;

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.inner.summary)
            .finish()
    }
}

impl GpuContext {
    /// Opens the best adapter (discrete > integrated > virtual > CPU) allowed by
    /// `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
    pub fn new() -> Result<Self> {
        Self::with_options(&AdapterOptions::from_env())
    }

    /// Opens the best adapter that `options` allow.
    pub fn with_options(options: &AdapterOptions) -> Result<Self> {
        let adapter =
            list_adapters(options)
                .into_iter()
                .next()
                .ok_or_else(|| BatchNormError::NoAdapter {
                    filter: options.describe(),
                })?;
        Self::from_adapter(&adapter)
    }

    /// Creates a device on `adapter` with the adapter's own limits (the kernels plan from them),
    /// timestamp queries where the adapter has them (the benchmark uses them), and `@coherent`
    /// storage where the adapter has it (reductions then merge their partials without a
    /// finalize dispatch: `plan::Merge::LastWorkgroup`).
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Result<Self> {
        let summary = AdapterSummary::from(adapter.get_info());
        let wanted = wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
            | wgpu::Features::MEMORY_DECORATION_COHERENT;
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("wgpu-batchnorm"),
            required_features: adapter.features() & wanted,
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&descriptor)).map_err(|e| {
                BatchNormError::DeviceRequest {
                    adapter: summary.name.clone(),
                    reason: e.to_string(),
                }
            })?;
        // Every operation runs inside error scopes; anything that still escapes them must not
        // abort the caller's process.
        device.on_uncaptured_error(Arc::new(|error: wgpu::Error| {
            eprintln!("wgpu-batchnorm: uncaptured wgpu error: {error}");
        }));
        let context = Self::wrap(device, queue, summary)?;
        let lost = Arc::clone(&context.inner.lost);
        context
            .inner
            .device
            .set_device_lost_callback(move |_reason, _message| lost.store(true, Ordering::SeqCst));
        Ok(context)
    }

    /// Wraps a device and queue the caller already owns. Plans read `device.limits()`, so a
    /// device with smaller limits than its adapter is respected; a device below what the
    /// kernels need (WebGPU's defaults suffice) is refused. Reductions merge their partials in
    /// their last workgroup only where the device has `Features::MEMORY_DECORATION_COHERENT`
    /// enabled; otherwise a finalize dispatch merges them.
    ///
    /// The caller's error handler and device-lost callback are left alone (wgpu keeps one
    /// callback per device, and setting one drops the previous): this crate's calls catch
    /// their own errors with error scopes, and notice a lost device when they next map memory,
    /// at the end of every call that waits for the GPU and in every download. From then on
    /// every call of this context returns [`BatchNormError::DeviceLost`]. Work only recorded
    /// into an encoder after a loss returns `Ok` (wgpu discards it without an error); the next
    /// waiting call or download reports the loss.
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        summary: AdapterSummary,
    ) -> Result<Self> {
        Self::wrap(device, queue, summary)
    }

    fn wrap(device: wgpu::Device, queue: wgpu::Queue, summary: AdapterSummary) -> Result<Self> {
        check_kernel_limits(&device.limits())?;
        let lost = Arc::new(AtomicBool::new(false));
        Ok(GpuContext {
            inner: Arc::new(ContextInner {
                device,
                queue,
                summary,
                pipelines: PipelineCache::default(),
                scratch: Mutex::new(HashMap::new()),
                lost,
                debug_fill: AtomicU64::new(NO_DEBUG_FILL),
                shader_directory: Mutex::new(None),
            }),
        })
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// Adapter name, backend, type and driver.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.inner.summary
    }

    /// The device's limits (what plans are made from).
    pub fn limits(&self) -> wgpu::Limits {
        self.inner.device.limits()
    }

    /// True when the device supports timestamp queries (GPU timing in the benchmark).
    pub fn has_timestamps(&self) -> bool {
        self.inner
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// True when the device can write timestamps between the dispatches of a compute pass
    /// ([`crate::PassTimestamps::after_each_dispatch`]).
    pub fn has_timestamps_inside_passes(&self) -> bool {
        self.inner.device.features().contains(
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
        )
    }

    /// The limits that `plan::plan` plans this context's dispatches with.
    pub fn plan_limits(&self) -> PlanLimits {
        PlanLimits::new(
            &self.limits(),
            self.inner.summary.device_type,
            self.inner.device.features(),
        )
    }

    /// The compute pipeline a step runs, compiled on first use (each new one is a shader
    /// compile: tens of milliseconds on a CPU adapter).
    pub(crate) fn pipeline(&self, step: &Step) -> Result<wgpu::ComputePipeline> {
        let key = PipelineKey {
            module: step.variant,
            entry: step.entry,
            overrides: step.overrides.clone(),
        };
        let mut pipelines = lock(&self.inner.pipelines.pipelines);
        if let Some(pipeline) = pipelines.get(&key) {
            return Ok(pipeline.clone());
        }
        let entry = step.entry;
        let module = self.shader_module(key.module)?;
        let constants: Vec<(&str, f64)> = step
            .overrides
            .iter()
            .map(|&(name, on)| (name.name(), if on { 1.0 } else { 0.0 }))
            .collect();
        let pipeline = self.checked(|device| {
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

    fn shader_module(&self, variant: Variant) -> Result<wgpu::ShaderModule> {
        let mut modules = lock(&self.inner.pipelines.modules);
        if let Some(module) = modules.get(&variant) {
            return Ok(module.clone());
        }
        let directory = lock(&self.inner.shader_directory).clone();
        let source =
            match &directory {
                None => variant.source(),
                Some(directory) => variant.source_in(directory).map_err(|error| {
                    BatchNormError::ShaderDirectory {
                        directory: directory.clone(),
                        problem: error.to_string(),
                    }
                })?,
            };
        let module = self
            .checked(|device| {
                device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&format!("{:?} {}", variant.program, variant.dtype)),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                })
            })
            .map_err(|error| match (directory, error) {
                (Some(directory), BatchNormError::Validation(message)) => {
                    BatchNormError::ShaderDirectory {
                        directory,
                        problem: format!(
                            "the {:?} kernels (the generated prelude, then {}) do not compile: \
                             {message}",
                            variant.program,
                            variant.file_names().join(", ")
                        ),
                    }
                }
                (_, error) => error,
            })?;
        modules.insert(variant, module.clone());
        Ok(module)
    }

    /// True when both handles share one device.
    pub fn same_as(&self, other: &GpuContext) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Fills, from now on, every buffer this context allocates for an output (saved
    /// statistics, dgamma and dbeta, the outputs of the allocating calls) and every scratch
    /// buffer before each use with `value`, so that a value no kernel writes shows up (the
    /// tests use NaN). `None`, the default, leaves new outputs zero. A debugging aid: each
    /// fill is an upload of the buffer's size.
    pub fn set_debug_fill(&self, value: Option<f32>) {
        let bits = value.map_or(NO_DEBUG_FILL, |v| u64::from(v.to_bits()));
        self.inner.debug_fill.store(bits, Ordering::SeqCst);
    }

    /// Builds this context's kernels from the WGSL files in `directory` (named as in the
    /// crate's `shaders/`) instead of the crate's own; the generated prelude, the plans and
    /// the bindings stay the crate's. A tool for kernel work: two contexts on one adapter, one
    /// of them reading a changed copy of `shaders/`, compare the change in one process
    /// (`bnbench --compare-shaders`), free of the drift between processes. Files are read when
    /// a kernel is first built; a missing or unreadable one, or one that does not compile,
    /// is a [`BatchNormError::ShaderDirectory`] then (the compiler's message counts lines
    /// from the start of the generated prelude, which the error lists with the files after
    /// it). Refused with `ShaderDirectory` once the context has built a kernel, so that every
    /// kernel of a context comes from one source.
    pub fn set_shader_directory(&self, directory: &Path) -> Result<()> {
        let modules = lock(&self.inner.pipelines.modules);
        if !modules.is_empty() {
            return Err(BatchNormError::ShaderDirectory {
                directory: directory.to_path_buf(),
                problem: "this context has built kernels already; set the directory on a new \
                          context, before its first call"
                    .to_string(),
            });
        }
        // Absolute now, so that a later change of the working directory does not move it.
        let absolute =
            std::path::absolute(directory).map_err(|error| BatchNormError::ShaderDirectory {
                directory: directory.to_path_buf(),
                problem: error.to_string(),
            })?;
        *lock(&self.inner.shader_directory) = Some(absolute);
        Ok(())
    }

    /// The value set by [`GpuContext::set_debug_fill`].
    pub fn debug_fill(&self) -> Option<f32> {
        let bits = self.inner.debug_fill.load(Ordering::SeqCst);
        (bits != NO_DEBUG_FILL).then(|| f32::from_bits(bits as u32))
    }

    /// Writes the debug fill, when one is set, over the first `elements` of `buffer` stored as
    /// `dtype` (whole words).
    pub(crate) fn apply_debug_fill(
        &self,
        buffer: &wgpu::Buffer,
        elements: u64,
        dtype: DType,
    ) -> Result<()> {
        let Some(value) = self.debug_fill() else {
            return Ok(());
        };
        let bytes = encode(&vec![value; elements as usize], dtype);
        self.checked(|_| self.inner.queue.write_buffer(buffer, 0, &bytes))
    }

    /// A scratch storage buffer of at least `bytes`, reused between calls. Sharing is safe:
    /// every operation writes its scratch before it reads it, in its own command stream.
    pub(crate) fn scratch(&self, key: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        let buffer = self.scratch_buffer(key, bytes)?;
        self.apply_debug_fill(&buffer, bytes / 4, DType::F32)?;
        Ok(buffer)
    }

    /// The counters of merges in the last workgroup, at least `bytes` of them. Never
    /// debug-filled: each merge's dispatch expects them zero, as wgpu creates them, and leaves
    /// them zero. Shared by every call of the context, as the partials are: dispatches that
    /// bind them are ordered by wgpu, and each finds them zero.
    pub(crate) fn merge_counters(&self, bytes: u64) -> Result<wgpu::Buffer> {
        self.scratch_buffer(MERGE_COUNTERS, bytes)
    }

    /// Downloads the counters of merges in the last workgroup: all zero between calls unless a
    /// dispatch was cut short. A debugging aid (the tests check that every call leaves them
    /// zero); empty before the first merge.
    pub fn read_merge_counters(&self) -> Result<Vec<u32>> {
        let Some(buffer) = lock(&self.inner.scratch).get(MERGE_COUNTERS).cloned() else {
            return Ok(Vec::new());
        };
        let bytes = self.read_bytes(&buffer, 0, buffer.size())?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn scratch_buffer(&self, key: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        let mut pool = lock(&self.inner.scratch);
        if let Some(buffer) = pool.get(key).filter(|b| b.size() >= bytes) {
            return Ok(buffer.clone());
        }
        let buffer = self.checked(|device| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(key),
                size: bytes.max(16),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        pool.insert(key, buffer.clone());
        Ok(buffer)
    }

    /// Runs `work` inside out-of-memory and validation error scopes and turns what they catch
    /// into this crate's errors (wgpu's default handler would panic).
    pub(crate) fn checked<T>(&self, work: impl FnOnce(&wgpu::Device) -> T) -> Result<T> {
        self.ensure_alive()?;
        let device = &self.inner.device;
        let out_of_memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = work(device);
        let validation_error = pollster::block_on(validation.pop());
        let memory_error = pollster::block_on(out_of_memory.pop());
        if memory_error.is_some() || validation_error.is_some() {
            // On a lost device, work on its invalid objects fails validation: report the loss.
            self.probe_mapping()?;
        }
        if let Some(error) = memory_error {
            return Err(BatchNormError::OutOfMemory(error.to_string()));
        }
        if let Some(error) = validation_error {
            return Err(BatchNormError::Validation(error.to_string()));
        }
        self.ensure_alive()?;
        Ok(value)
    }

    /// Copies `bytes` bytes (a multiple of 4) of `buffer` from byte `offset` to the host and
    /// waits for them.
    pub(crate) fn read_bytes(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        bytes: u64,
    ) -> Result<Vec<u8>> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.checked(|device| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-batchnorm readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        let mut encoder = self
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, bytes);
        self.submit_and_wait(encoder)?;
        self.read_mapped(&staging, bytes, "a download could not map its buffer")
    }

    /// Maps the first `bytes` of `staging` (a `MAP_READ` buffer the GPU has finished writing),
    /// copies them out and unmaps it, so that it can be used again; `what` says what failed if
    /// it cannot be mapped.
    pub(crate) fn read_mapped(
        &self,
        staging: &wgpu::Buffer,
        bytes: u64,
        what: &str,
    ) -> Result<Vec<u8>> {
        let (sender, receiver) = std::sync::mpsc::channel();
        staging
            .slice(..bytes)
            .map_async(wgpu::MapMode::Read, move |result| {
                // The receiver outlives this callback: it waits just below.
                let _ = sender.send(result);
            });
        self.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| BatchNormError::DeviceLost(e.to_string()))?;
        let mapped = receiver.recv().ok().and_then(Result::ok);
        let data = mapped.and_then(|()| {
            let range = staging.slice(..bytes).get_mapped_range().ok()?;
            Some(range.to_vec())
        });
        if mapped.is_some() {
            staging.unmap();
        }
        data.ok_or_else(|| self.lost_now(what))
    }

    /// Submits `encoder` (inside error scopes), waits until the GPU has finished it, and
    /// checks that the device survived.
    pub(crate) fn submit_and_wait(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        let index = self.checked(|_| self.inner.queue.submit([encoder.finish()]))?;
        self.inner
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| {
                self.probe_mapping()
                    .err()
                    .unwrap_or_else(|| BatchNormError::DeviceLost(e.to_string()))
            })?;
        self.ensure_alive()?;
        self.probe_mapping()
    }

    /// Notices a lost device that no callback reported (a caller's device). After a loss wgpu
    /// drops every error of the device and a submission does nothing, but a buffer mapped at
    /// creation cannot be read: a one-word mapping tells.
    fn probe_mapping(&self) -> Result<()> {
        let probe = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-batchnorm liveness probe"),
            size: 4,
            usage: wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        let mapped = probe.slice(..).get_mapped_range().is_ok();
        if mapped {
            Ok(())
        } else {
            Err(self.lost_now("a buffer could not be mapped"))
        }
    }

    /// Records that the device is gone (a mapping failed) and returns the error to report.
    pub(crate) fn lost_now(&self, what: &str) -> BatchNormError {
        self.inner.lost.store(true, Ordering::SeqCst);
        BatchNormError::DeviceLost(format!(
            "{what}: the device was lost; create a new GpuContext"
        ))
    }

    fn ensure_alive(&self) -> Result<()> {
        if self.inner.lost.load(Ordering::SeqCst) {
            Err(BatchNormError::DeviceLost(
                "the device was lost; create a new GpuContext".into(),
            ))
        } else {
            Ok(())
        }
    }
}
