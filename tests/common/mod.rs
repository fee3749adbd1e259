//! Shared by the GPU integration tests: the test contexts (the adapter as it is, and contexts
//! with explicit limits and device types, so that a test's plan is the same on every adapter),
//! deterministic data, outputs poisoned before every run, the plan a test claims, and the
//! drivers and checks of `scenario` and `checks`.
#![allow(dead_code)]

pub mod checks;
pub mod scenario;
pub mod storage;
pub mod sync;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use ndarray::{ArrayD, IxDyn};
use wgpu_batchnorm::gpu::list_adapters;
use wgpu_batchnorm::plan::{plan, FinalizeKind, Merge, Operation, Plan, STRIDED_BAND};
use wgpu_batchnorm::{AdapterOptions, AdapterSummary, BatchNormError, ChannelView, GpuContext};
use wgpu_batchnorm::{DType, Layout, Tensor};

/// The context of this test binary on the adapter as it is (its own limits and device type).
/// Fails (never skips) when there is no adapter. Everything the crate allocates for an output
/// starts as NaN, so a value no kernel writes fails its check.
pub fn context() -> GpuContext {
    static CONTEXT: OnceLock<GpuContext> = OnceLock::new();
    CONTEXT
        .get_or_init(|| {
            let ctx = match GpuContext::new() {
                Ok(ctx) => ctx,
                Err(error @ BatchNormError::NoAdapter { .. }) => panic!(
                    "GPU tests need a wgpu adapter and found none: {error}. On Debian run \
                     `bash .ci/install-gpu-drivers.sh` (Mesa's software Vulkan and GL drivers)."
                ),
                Err(error) => panic!("could not open the GPU: {error}"),
            };
            eprintln!("testing on {}", ctx.adapter());
            ctx.set_debug_fill(Some(f32::NAN));
            ctx
        })
        .clone()
}

/// The test adapter, and a device on it with the limits `choose` picks from the adapter's and
/// no optional feature, owned by the test as a caller would own it.
pub fn caller_device(
    label: &str,
    choose: impl FnOnce(wgpu::Limits) -> wgpu::Limits,
) -> (wgpu::Adapter, wgpu::Device, wgpu::Queue) {
    caller_device_with(label, choose, wgpu::Features::empty())
}

/// `caller_device` with the `features` the adapter offers among those given.
pub fn caller_device_with(
    label: &str,
    choose: impl FnOnce(wgpu::Limits) -> wgpu::Limits,
    features: wgpu::Features,
) -> (wgpu::Adapter, wgpu::Device, wgpu::Queue) {
    let adapter = list_adapters(&AdapterOptions::from_env())
        .into_iter()
        .next()
        .expect("an adapter (see `context` for how to install one)");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some(label),
        required_features: adapter.features() & features,
        required_limits: choose(adapter.limits()),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .expect("a device on the test adapter");
    (adapter, device, queue)
}

/// A context on the test adapter with WebGPU's default limits but `max_binding_bytes` and
/// `max_workgroups`, planned as a device of `device_type`, outputs NaN-filled, with `@coherent`
/// storage where the adapter offers it (reductions of one window then merge in their last
/// workgroup).
pub fn limited_context(
    max_binding_bytes: u64,
    max_workgroups: u32,
    device_type: wgpu::DeviceType,
) -> GpuContext {
    limited_context_with(
        max_binding_bytes,
        max_workgroups,
        device_type,
        wgpu::Features::MEMORY_DECORATION_COHERENT,
    )
}

/// `limited_context` with the `features` the adapter offers among those given.
pub fn limited_context_with(
    max_binding_bytes: u64,
    max_workgroups: u32,
    device_type: wgpu::DeviceType,
    features: wgpu::Features,
) -> GpuContext {
    let choose = |limits| wgpu::Limits {
        max_storage_buffer_binding_size: max_binding_bytes,
        max_compute_workgroups_per_dimension: max_workgroups,
        ..wgpu::Limits::default().using_resolution(limits)
    };
    let (adapter, device, queue) =
        caller_device_with("a test device with explicit limits", choose, features);
    let summary = AdapterSummary {
        device_type,
        ..AdapterSummary::from(adapter.get_info())
    };
    let ctx = GpuContext::from_device(device, queue, summary).expect("limits the kernels accept");
    ctx.set_debug_fill(Some(f32::NAN));
    ctx
}

/// The plans a test can ask for, whatever adapter runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Planned {
    /// A CPU adapter's plans (few, large reduction chunks) under WebGPU's default limits.
    Cpu,
    /// A discrete GPU's plans (chunks shrunk to 1024 reduction work items, fused single
    /// dispatches) under WebGPU's default limits.
    DiscreteGpu,
    /// 64 KiB bindings: windows from 16 K values on, CPU plans.
    SmallBindings,
}

impl Planned {
    /// Every kind, for property tests.
    pub const ALL: [Planned; 3] = [Planned::Cpu, Planned::DiscreteGpu, Planned::SmallBindings];
}

/// The shared context of a kind (one device per kind and test binary).
pub fn planned(kind: Planned) -> GpuContext {
    static CONTEXTS: OnceLock<Mutex<HashMap<Planned, GpuContext>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    contexts
        .entry(kind)
        .or_insert_with(|| {
            let max_workgroups = wgpu::Limits::default().max_compute_workgroups_per_dimension;
            match kind {
                Planned::Cpu => limited_context(128 << 20, max_workgroups, wgpu::DeviceType::Cpu),
                Planned::DiscreteGpu => {
                    limited_context(128 << 20, max_workgroups, wgpu::DeviceType::DiscreteGpu)
                }
                Planned::SmallBindings => {
                    limited_context(64 << 10, max_workgroups, wgpu::DeviceType::Cpu)
                }
            }
        })
        .clone()
}

/// The plan `ctx` makes for `operation` on `shape`.
pub fn plan_of(ctx: &GpuContext, shape: &[usize], layout: Layout, operation: Operation) -> Plan {
    let view = ChannelView::new(shape, layout).expect("rank >= 2");
    plan(view, DType::F32, ctx.plan_limits(), operation).expect("a plan")
}

/// The parts of a plan a test can claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanClaim {
    /// One dispatch per training forward or backward.
    pub fused: bool,
    /// Windows (binding-sized pieces of the tensor).
    pub windows: usize,
    /// Reduction partials per channel over all windows.
    pub chunks: usize,
    /// How the partials are merged (meaningless, and `PerThread`, when fused).
    pub finalize: FinalizeKind,
    /// The partials are merged by the last workgroup to finish a channel or band, on devices
    /// with `@coherent` storage (elsewhere by a finalize dispatch).
    pub last_workgroup: bool,
    /// The training forward alone is fused, in a band narrower than 32 channels
    /// (`plan::NARROW_BAND`); the backward is the plan the other fields claim.
    pub narrow_forward: bool,
}

impl PlanClaim {
    /// A fused plan: one window, one chunk.
    pub const FUSED: PlanClaim = PlanClaim {
        fused: true,
        windows: 1,
        chunks: 1,
        finalize: FinalizeKind::PerThread,
        last_workgroup: false,
        narrow_forward: false,
    };

    /// One window, `chunks` chunks per channel, merged by `finalize` (in the last workgroup
    /// where the device allows and the plan is not per-thread, nor strided with over 32
    /// partials a channel: `split_in_dispatch`).
    pub const fn split(chunks: usize, finalize: FinalizeKind) -> Self {
        PlanClaim {
            fused: false,
            windows: 1,
            chunks,
            finalize,
            last_workgroup: true,
            narrow_forward: false,
        }
    }

    /// One window, `chunks` chunks per channel, merged by `finalize` in a finalize dispatch on
    /// every device: a strided plan with over 32 partials a channel, whose band's last
    /// workgroup would merge its channels one after another.
    pub const fn split_in_dispatch(chunks: usize, finalize: FinalizeKind) -> Self {
        PlanClaim {
            last_workgroup: false,
            ..PlanClaim::split(chunks, finalize)
        }
    }

    /// A channels-last tensor whose training forward is fused in a narrower band, and whose
    /// backward is `backward`.
    pub const fn narrow_forward(backward: PlanClaim) -> Self {
        PlanClaim {
            narrow_forward: true,
            ..backward
        }
    }

    /// What `plan` is.
    pub fn of(plan: &Plan) -> Self {
        PlanClaim {
            fused: plan.fused_window().is_some(),
            windows: plan.windows.len(),
            chunks: plan.chunks_total,
            finalize: plan.finalize,
            last_workgroup: plan.merge == Merge::LastWorkgroup,
            narrow_forward: false,
        }
    }
}

/// Whether `ctx`'s device has `@coherent` storage, which merges in the last workgroup need.
pub fn has_coherent_storage(ctx: &GpuContext) -> bool {
    ctx.device()
        .features()
        .contains(wgpu::Features::MEMORY_DECORATION_COHERENT)
}

/// Panics unless `ctx` plans the training forward and the backward of `shape` as `claim` says
/// (the two operations plan alike at these sizes, but for the narrow band of a
/// `PlanClaim::narrow_forward` claim's training forward). Tests call it first, so that one
/// whose name claims a plan fails when a change of the planner takes that plan away.
pub fn assert_plan(ctx: &GpuContext, shape: &[usize], layout: Layout, claim: PlanClaim) {
    let claim = PlanClaim {
        last_workgroup: claim.last_workgroup
            && has_coherent_storage(ctx)
            && !ctx.plan_limits().per_thread_reductions,
        ..claim
    };
    for operation in [Operation::TrainingForward, Operation::Backward] {
        let plan = plan_of(ctx, shape, layout, operation);
        let want = if claim.narrow_forward && operation == Operation::TrainingForward {
            assert!(plan.band < STRIDED_BAND, "{shape:?}: band {}", plan.band);
            PlanClaim::FUSED
        } else {
            PlanClaim {
                narrow_forward: false,
                ..claim
            }
        };
        assert_eq!(
            PlanClaim::of(&plan),
            want,
            "the plan of {operation:?} on {shape:?} {layout:?}"
        );
    }
}

/// Shapes that a context planned as [`Planned::DiscreteGpu`] fuses (one dispatch per training forward
/// or backward), each with enough values per thread for the eight-at-a-time loads and a
/// remainder: channels-first with odd spatial runs, channels-last and 2-D with a last band of
/// fewer than 32 channels; N = 1 with a spatial extent; one channel.
pub const FUSED_SHAPES: [Shaped; 7] = [
    (&[3, 5, 67, 61], Layout::ChannelsFirst),
    (&[4, 16, 16, 40], Layout::ChannelsLast),
    (&[700, 33], Layout::ChannelsFirst),
    (&[2, 3, 1000], Layout::ChannelsFirst),
    (&[1, 2, 100, 90], Layout::ChannelsFirst),
    (&[5, 1, 3000], Layout::ChannelsFirst),
    (&[1, 33, 1], Layout::ChannelsLast),
];

/// Shapes that a context planned as [`Planned::Cpu`] fuses with a thread per channel group
/// (channels-first runs of eight values or more, `Plan::fused_channel_group` channels a thread,
/// at most `plan::FUSED_RUN_MAX_VALUES` values a group, `plan::FUSED_RUN_MIN_THREADS` groups or
/// more): a channel a thread, runs of 28, 32, 100 and 16 values, N = 1, an odd channel count;
/// four channels a thread, runs of 9 and 25 values (an odd number of groups); two channels a
/// thread, runs of 14 values.
pub const CPU_FUSED_SHAPES: [Shaped; 7] = [
    (&[2, 512, 4, 7], Layout::ChannelsFirst),
    (&[3, 600, 4, 8], Layout::ChannelsFirst),
    (&[1, 512, 100], Layout::ChannelsFirst),
    (&[2, 513, 4, 4], Layout::ChannelsFirst),
    (&[2, 2048, 3, 3], Layout::ChannelsFirst),
    (&[1, 2052, 5, 5], Layout::ChannelsFirst),
    (&[2, 1026, 2, 7], Layout::ChannelsFirst),
];

/// A shape in memory order and its layout.
pub type Shaped = (&'static [usize], Layout);

/// Every fused plan's shapes and the context that fuses them.
pub const FUSED_CASES: [(Planned, &[Shaped]); 2] = [
    (Planned::DiscreteGpu, &FUSED_SHAPES),
    (Planned::Cpu, &CPU_FUSED_SHAPES),
];

/// A shape, the context kind it runs on and the plan that context makes for it.
#[derive(Clone, Copy, Debug)]
pub struct PlannedCase {
    /// Shape in memory order.
    pub shape: &'static [usize],
    /// Layout.
    pub layout: Layout,
    /// The context.
    pub planned: Planned,
    /// Its plan.
    pub claim: PlanClaim,
}

impl PlannedCase {
    /// The case's context, after asserting its plan.
    pub fn context(&self) -> GpuContext {
        let ctx = planned(self.planned);
        assert_plan(&ctx, self.shape, self.layout, self.claim);
        ctx
    }
}

/// Channels spanning several reduction chunks: both reduction kernels (contiguous,
/// channels-first with a spatial extent; strided, channels-last and 2-D), both finalize kinds
/// (a thread, or on a GPU a workgroup when a channel has over 32 partials; a CPU adapter merges
/// up to 176 in a thread here), and several windows.
pub const SPLIT_CASES: [PlannedCase; 9] = [
    PlannedCase {
        shape: &[8, 3, 64, 64],
        layout: Layout::ChannelsFirst,
        planned: Planned::Cpu,
        claim: PlanClaim::split(32, FinalizeKind::PerThread),
    },
    PlannedCase {
        shape: &[2, 2, 300, 300],
        layout: Layout::ChannelsFirst,
        planned: Planned::Cpu,
        claim: PlanClaim::split(176, FinalizeKind::PerThread),
    },
    PlannedCase {
        shape: &[36, 2, 128, 128],
        layout: Layout::ChannelsFirst,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::split(288, FinalizeKind::PerWorkgroup),
    },
    PlannedCase {
        shape: &[40000, 3],
        layout: Layout::ChannelsFirst,
        planned: Planned::Cpu,
        claim: PlanClaim::split(40, FinalizeKind::PerThread),
    },
    PlannedCase {
        shape: &[4200, 7],
        layout: Layout::ChannelsFirst,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::split_in_dispatch(66, FinalizeKind::PerWorkgroup),
    },
    PlannedCase {
        shape: &[3, 40, 41, 5],
        layout: Layout::ChannelsLast,
        planned: Planned::Cpu,
        claim: PlanClaim::split(5, FinalizeKind::PerThread),
    },
    PlannedCase {
        shape: &[10, 64, 63, 8],
        layout: Layout::ChannelsLast,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::split_in_dispatch(630, FinalizeKind::PerWorkgroup),
    },
    PlannedCase {
        shape: &[8, 3, 64, 64],
        layout: Layout::ChannelsFirst,
        planned: Planned::SmallBindings,
        claim: PlanClaim {
            fused: false,
            windows: 8,
            chunks: 32,
            finalize: FinalizeKind::PerThread,
            last_workgroup: false,
            narrow_forward: false,
        },
    },
    PlannedCase {
        shape: &[10, 64, 63, 8],
        layout: Layout::ChannelsLast,
        planned: Planned::SmallBindings,
        claim: PlanClaim {
            fused: false,
            windows: 20,
            chunks: 159,
            finalize: FinalizeKind::PerThread,
            last_workgroup: false,
            narrow_forward: false,
        },
    },
];

/// Cases per property test: `PROPTEST_CASES` when set (a long run can ask for thousands), else
/// 32, which keeps CI on the software adapter within its time.
pub fn proptest_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

/// Deterministic normal-ish values: `offset + scale * z` (SplitMix64 + Box-Muller).
pub fn normal_data(len: usize, seed: u64, offset: f64, scale: f64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next_unit = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..len)
        .map(|_| {
            let (u1, u2) = (next_unit(), next_unit());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (offset + scale * z) as f32
        })
        .collect()
}

/// An input tensor on the test context and its host copy.
pub fn upload(data: &[f32], shape: &[usize], layout: Layout) -> (Tensor, ArrayD<f32>) {
    upload_to(&context(), data, shape, layout)
}

/// An input tensor on `ctx` and its host copy.
pub fn upload_to(
    ctx: &GpuContext,
    data: &[f32],
    shape: &[usize],
    layout: Layout,
) -> (Tensor, ArrayD<f32>) {
    let tensor = Tensor::from_slice(ctx, data, shape, layout).expect("upload");
    let host = ArrayD::from_shape_vec(IxDyn(shape), data.to_vec()).expect("shape");
    (tensor, host)
}

/// An output tensor on the test context filled with NaN, so that an element no kernel writes
/// fails the test.
pub fn poisoned(shape: &[usize], layout: Layout) -> Tensor {
    filled_on(&context(), shape, layout, f32::NAN)
}

/// An output tensor on `ctx` filled with `value`.
pub fn filled_on(ctx: &GpuContext, shape: &[usize], layout: Layout, value: f32) -> Tensor {
    let tensor = Tensor::zeros(ctx, shape, layout).expect("allocate");
    tensor.fill(value).expect("fill");
    tensor
}

/// Asserts that every element of `got` is within `atol` of `want`, or within `rtol` of the
/// larger magnitude (`approx`'s `relative_eq`, on ndarray arrays); reports the first one that
/// is not.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    use approx::RelativeEq;
    assert_eq!(got.len(), want.len(), "{what}: length");
    let got: ndarray::Array1<f64> = got.iter().map(|&g| f64::from(g)).collect();
    let want = ndarray::ArrayView1::from(want);
    if !got.relative_eq(&want, atol, rtol) {
        let (i, (g, w)) = got
            .iter()
            .zip(want.iter())
            .enumerate()
            .find(|(_, (g, w))| !g.relative_eq(w, atol, rtol))
            .expect("an element that differs");
        panic!("{what}[{i}]: got {g}, want {w} (atol {atol:e}, rtol {rtol:e})");
    }
}
