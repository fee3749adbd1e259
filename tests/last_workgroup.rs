//! Reductions whose last workgroup merges the partials (`plan::Merge::LastWorkgroup`) against
//! the finalize dispatch on the same adapter: bitwise the same outputs, saved statistics,
//! running stats and gradients over many calls, both kernels (contiguous, strided), both
//! finalize kinds (a thread, a workgroup; the strided kernel a thread alone), planned as a
//! discrete GPU (a CPU adapter's per-thread plans always merge in a dispatch); and every merge
//! counter back at zero after every call, after calls recorded into one submission by layers
//! that share the scratch, and after a refused call. Runs on every backend (`WGPU_BACKEND`);
//! an adapter without `@coherent` storage fails these tests (both contexts would take the
//! finalize dispatch, and the comparison would be of one path with itself): Mesa's lavapipe
//! and llvmpipe GL, which the tests install, offer it.

mod common;

use common::{
    assert_plan, has_coherent_storage, limited_context, limited_context_with, normal_data,
    upload_to, PlanClaim,
};
use wgpu_batchnorm::plan::{FinalizeKind, Merge, Operation};
use wgpu_batchnorm::{BatchNorm, GpuContext, Layout, Tensor};

const FIRST: Layout = Layout::ChannelsFirst;

/// A case: shape, layout, the device type it is planned as, and its split plan.
type Case = (&'static [usize], Layout, wgpu::DeviceType, PlanClaim);

const GPU: wgpu::DeviceType = wgpu::DeviceType::DiscreteGpu;

/// One window each, as a discrete GPU plans them (many small chunks): the contiguous kernel
/// with both finalize kinds, the strided one with the only kind it merges in the last
/// workgroup (a thread per channel: strided plans with more partials keep the finalize
/// dispatch), a last band of fewer than 32 channels, and the most partials a thread merges
/// (32: four rounds through workgroup memory).
const CASES: [Case; 5] = [
    (
        &[8, 3, 64, 64],
        FIRST,
        GPU,
        PlanClaim::split(16, FinalizeKind::PerThread),
    ),
    (
        &[2, 2, 300, 300],
        FIRST,
        GPU,
        PlanClaim::split(88, FinalizeKind::PerWorkgroup),
    ),
    (
        &[36, 2, 128, 128],
        FIRST,
        GPU,
        PlanClaim::split(288, FinalizeKind::PerWorkgroup),
    ),
    // Strided with few partials: too tall to fuse in any band, many channels (62 bands, the
    // last of 8), so 17 chunks of 256 rows reach 1024 work items.
    (
        &[4097, 1960],
        FIRST,
        GPU,
        PlanClaim::split(17, FinalizeKind::PerThread),
    ),
    // Strided, 32 partials a channel in two bands (the training forward too: too few
    // channels to fuse in a narrower band).
    (
        &[32, 8, 8, 64],
        Layout::ChannelsLast,
        GPU,
        PlanClaim::split(32, FinalizeKind::PerThread),
    ),
];

/// Calls per case and path: forwards and backwards, 50 of each over the cases.
const REPS: u64 = 10;

/// Contexts planned as `device_type` with WebGPU's default limits: with `@coherent` storage
/// (panics where the adapter does not offer it), and without.
fn contexts(device_type: wgpu::DeviceType) -> (GpuContext, GpuContext) {
    let max_workgroups = wgpu::Limits::default().max_compute_workgroups_per_dimension;
    let merged = limited_context(128 << 20, max_workgroups, device_type);
    assert!(
        has_coherent_storage(&merged),
        "{} offers no MEMORY_DECORATION_COHERENT, so the last-workgroup merge cannot run on it: \
         run these tests on Mesa's lavapipe or llvmpipe (bash .ci/install-gpu-drivers.sh)",
        merged.adapter()
    );
    let split = limited_context_with(
        128 << 20,
        max_workgroups,
        device_type,
        wgpu::Features::empty(),
    );
    (merged, split)
}

/// Panics unless every merge counter of `ctx` is zero.
fn assert_counters_zero(ctx: &GpuContext, what: &str) {
    let counters = ctx.read_merge_counters().expect("download the counters");
    if let Some((k, value)) = counters.iter().enumerate().find(|(_, &c)| c != 0) {
        panic!("{what}: counter {k} is {value} after the call");
    }
}

/// What one training forward and backward produced, as bits.
#[derive(Debug, PartialEq, Eq)]
struct Outputs {
    y: Vec<u32>,
    saved: Vec<u32>,
    running: Vec<u32>,
    dx: Vec<u32>,
    grads: Vec<u32>,
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn pair_bits((a, b): (Vec<f32>, Vec<f32>)) -> Vec<u32> {
    bits(&[a, b].concat())
}

/// Runs `REPS` training forwards and backwards of `shape` on `ctx`, each on new data with its
/// own offset, checking the counters after every call.
fn run(ctx: &GpuContext, shape: &[usize], layout: Layout, seed: u64) -> Vec<Outputs> {
    let len: usize = shape.iter().product();
    let channels = match layout {
        Layout::ChannelsFirst => shape[1],
        Layout::ChannelsLast => shape[shape.len() - 1],
    };
    let mut layer = BatchNorm::new(ctx, channels).expect("layer");
    let gamma = normal_data(channels, seed, 1.0, 0.5);
    let beta = normal_data(channels, seed + 1, 0.0, 0.5);
    layer.set_parameters(&gamma, &beta).expect("parameters");
    let what = format!("{shape:?} {layout:?}");
    (0..REPS)
        .map(|rep| {
            let offset = [0.0, 3.0, -1e3, 1e4][rep as usize % 4];
            let x_data = normal_data(len, seed * 1000 + rep, offset, 2.0);
            let dy_data = normal_data(len, seed * 1000 + rep + 500, 0.1, 1.0);
            let (x, _) = upload_to(ctx, &x_data, shape, layout);
            let (dy, _) = upload_to(ctx, &dy_data, shape, layout);
            let out = layer.forward(&x).expect("training forward");
            assert_counters_zero(ctx, &format!("{what} forward {rep}"));
            let grads = layer.backward(&x, &dy, &out.saved).expect("backward");
            assert_counters_zero(ctx, &format!("{what} backward {rep}"));
            Outputs {
                y: bits(&out.y.to_vec().expect("y")),
                saved: pair_bits(out.saved.read().expect("saved")),
                running: pair_bits(layer.running_statistics().expect("running")),
                dx: bits(&grads.dx.to_vec().expect("dx")),
                grads: pair_bits(grads.params.expect("affine").read().expect("grads")),
            }
        })
        .collect()
}

#[test]
fn the_last_workgroup_merge_is_bitwise_the_finalize_dispatch() {
    for (k, (shape, layout, device_type, claim)) in CASES.into_iter().enumerate() {
        let (merged, split) = contexts(device_type);
        assert_plan(&merged, shape, layout, claim);
        assert_plan(
            &split,
            shape,
            layout,
            PlanClaim {
                last_workgroup: false,
                ..claim
            },
        );
        let seed = 40 + k as u64;
        let (got, want) = (
            run(&merged, shape, layout, seed),
            run(&split, shape, layout, seed),
        );
        for (rep, (got, want)) in got.iter().zip(&want).enumerate() {
            assert!(
                got == want,
                "{shape:?} {layout:?} call {rep}: the paths differ"
            );
        }
        assert!(
            !merged.read_merge_counters().unwrap().is_empty(),
            "{shape:?}: the merged path used no counters"
        );
    }
}

/// Panics unless `ctx` merges the training forward of `shape` in the last workgroup.
fn assert_merged(ctx: &GpuContext, shape: &[usize], layout: Layout) {
    let plan = common::plan_of(ctx, shape, layout, Operation::TrainingForward);
    assert_eq!(plan.merge, Merge::LastWorkgroup, "{shape:?} {layout:?}");
}

/// Forwards of three layers (two shapes, contiguous and strided, one layer twice) recorded into
/// one encoder share the partials and the counters; each finds its counters zero and leaves
/// them so.
#[test]
fn calls_recorded_into_one_submission_share_the_counters() {
    let cases: [(&[usize], Layout); 3] = [
        (&[36, 2, 128, 128], FIRST),
        (&[4097, 1960], FIRST),
        (&[36, 2, 128, 128], FIRST),
    ];
    let record_all = |ctx: &GpuContext| -> Vec<Vec<u32>> {
        let mut first = BatchNorm::new(ctx, 2).expect("layer");
        let mut second = BatchNorm::new(ctx, 1960).expect("layer");
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        let mut outputs: Vec<(Tensor, Tensor)> = Vec::new();
        let mut saved = Vec::new();
        for (k, (shape, layout)) in cases.into_iter().enumerate() {
            let len: usize = shape.iter().product();
            let (x, _) = upload_to(
                ctx,
                &normal_data(len, 90 + k as u64, 1.0, 3.0),
                shape,
                layout,
            );
            let y = Tensor::zeros(ctx, shape, layout).expect("y");
            let layer = if shape[1] == 2 {
                &mut first
            } else {
                &mut second
            };
            saved.push(
                layer
                    .record_forward(&mut encoder, &x, &y, None)
                    .expect("record"),
            );
            outputs.push((x, y));
        }
        ctx.queue().submit([encoder.finish()]);
        assert_counters_zero(ctx, "three forwards in one submission");
        let mut results: Vec<Vec<u32>> = outputs
            .iter()
            .map(|(_, y)| bits(&y.to_vec().expect("y")))
            .collect();
        results.extend(saved.iter().map(|s| pair_bits(s.read().expect("saved"))));
        results.push(pair_bits(first.running_statistics().expect("running")));
        results
    };
    let (merged, split) = contexts(GPU);
    for (shape, layout) in cases {
        assert_merged(&merged, shape, layout);
    }
    assert!(
        record_all(&merged) == record_all(&split),
        "the paths differ"
    );
}

/// A refused call dispatches nothing and leaves the counters zero; the next call is exact.
#[test]
fn a_refused_call_leaves_the_counters_zero() {
    let (merged, split) = contexts(GPU);
    let shape: &[usize] = &[8, 8, 64, 64];
    assert_merged(&merged, shape, FIRST);
    let len: usize = shape.iter().product();
    let data = normal_data(len, 7, 0.0, 1.0);
    let forward = |ctx: &GpuContext| {
        let mut layer = BatchNorm::new(ctx, 8).expect("layer");
        let (x, _) = upload_to(ctx, &data, shape, FIRST);
        let wrong = Tensor::zeros(ctx, &[8, 9, 64, 64], FIRST).expect("y");
        assert!(layer.forward_into(&x, &wrong).is_err(), "a mismatched y");
        assert_counters_zero(ctx, "a refused forward");
        let out = layer.forward(&x).expect("forward");
        assert_counters_zero(ctx, "the forward after it");
        bits(&out.y.to_vec().expect("y"))
    };
    assert!(forward(&merged) == forward(&split), "the paths differ");
}
