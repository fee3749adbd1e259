//! Data designed to break the numerics: large offsets, constant channels, tiny and huge
//! scales, NaN and infinity, forward and backward, both layouts, with shapes whose plans are
//! asserted (several reduction chunks per channel merged by a thread or by a workgroup, and
//! fused single dispatches). Every expected value comes from the f64 reference
//! (`wgpu_batchnorm::reference`), from a closed form, or from the checks of `common::checks`,
//! which hold outputs to a few roundings of the reference built from the GPU's own saved
//! statistics (tight enough to reject a normalize that folds the mean into the shift at an
//! offset of 1e4) and the saved statistics to the design's accuracy.
//!
//! Outputs are poisoned before the GPU writes them: with NaN, except in the tests where NaN is
//! the expected answer, which poison with a finite sentinel (their outputs and everything the
//! crate allocates), so that a NaN found there was written by a kernel.

mod common;

use common::checks::{
    check_batch_statistics, check_input_gradient, check_output, check_parameter_gradients,
    check_running_statistics, sum_depth, BackwardInputs, Channels, ForwardInputs, Saved, Through,
    UNIT_ROUNDOFF,
};
use common::scenario::{read_saved, require, Scenario};
use common::{
    filled_on, limited_context, normal_data, plan_of, planned, upload_to, PlanClaim, Planned,
    PlannedCase,
};
use ndarray::ArrayD;
use wgpu_batchnorm::plan::{FinalizeKind, Operation};
use wgpu_batchnorm::reference;
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, ChannelView, GpuContext, Layout};

const FIRST: Layout = Layout::ChannelsFirst;
const LAST: Layout = Layout::ChannelsLast;
const U: f64 = UNIT_ROUNDOFF;
/// The finite value the NaN tests poison outputs with.
const SENTINEL: f32 = 7.25;

fn view(shape: &[usize], layout: Layout) -> ChannelView {
    ChannelView::new(shape, layout).expect("rank >= 2")
}

/// Memory index of the `m`-th value (m < M) of channel `c`.
fn value_index(view: &ChannelView, c: usize, m: usize) -> usize {
    view.index(m / view.inner, c, m % view.inner)
}

/// Normal data with a per-channel offset and scale: `offset_c + scale_c * z`, in f64 and then
/// rounded once to f32.
fn data_by_channel(
    shape: &[usize],
    layout: Layout,
    seed: u64,
    offset_scale: impl Fn(usize) -> (f64, f64),
) -> Vec<f32> {
    let view = view(shape, layout);
    normal_data(view.len(), seed, 0.0, 1.0)
        .into_iter()
        .enumerate()
        .map(|(i, z)| {
            let (offset, scale) = offset_scale(view.channel_of(i));
            (offset + scale * f64::from(z)) as f32
        })
        .collect()
}

/// gamma and beta away from 1 and 0, of both signs.
fn affine(channels: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let gamma = normal_data(channels, seed, 0.0, 1.0)
        .into_iter()
        .enumerate()
        .map(|(c, g)| {
            if c % 2 == 0 {
                0.5 + g.abs()
            } else {
                -0.5 - g.abs()
            }
        })
        .collect();
    (gamma, normal_data(channels, seed + 1, 0.0, 1.0))
}

/// CPU plans fused a thread per channel group, which writes the output of its runs from the
/// values it has just reduced: runs of seven quads, a channel a thread; runs of nine values, four
/// channels a thread, whose quads at a run's ends hold a neighbouring channel's values.
const CPU_FUSED_CASES: [PlannedCase; 2] = [
    PlannedCase {
        shape: &[2, 512, 4, 7],
        layout: FIRST,
        planned: Planned::Cpu,
        claim: PlanClaim::FUSED,
    },
    PlannedCase {
        shape: &[1, 2048, 3, 3],
        layout: FIRST,
        planned: Planned::Cpu,
        claim: PlanClaim::FUSED,
    },
];

/// Shapes for the offset tests: several chunks per channel merged by a thread (CPU plans) or a
/// workgroup (GPU plans), in both reduction kernels, and fused single dispatches. On the CPU,
/// channels-last with a multiple of four channels takes the quad kernel, whose statistics shift
/// each group of eight rows by its first value: [3, 37, 41, 8] has 4551 rows, chunks of 256 and
/// a last chunk ending in a group of seven.
const OFFSET_CASES: [PlannedCase; 10] = [
    PlannedCase {
        shape: &[8, 3, 64, 64],
        layout: FIRST,
        planned: Planned::Cpu,
        claim: PlanClaim::split(32, FinalizeKind::PerThread),
    },
    PlannedCase {
        shape: &[36, 2, 128, 128],
        layout: FIRST,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::split(288, FinalizeKind::PerWorkgroup),
    },
    PlannedCase {
        shape: &[4, 64, 64, 3],
        layout: LAST,
        planned: Planned::Cpu,
        claim: PlanClaim::split(16, FinalizeKind::PerThread),
    },
    PlannedCase {
        shape: &[3, 37, 41, 8],
        layout: LAST,
        planned: Planned::Cpu,
        claim: PlanClaim::split(18, FinalizeKind::PerThread),
    },
    // Runs of 49 values: quads shared with the neighbouring channels, groups shifted by a
    // value in any lane, chunks that start inside a run.
    PlannedCase {
        shape: &[344, 4, 7, 7],
        layout: FIRST,
        planned: Planned::Cpu,
        claim: PlanClaim::split(17, FinalizeKind::PerThread),
    },
    // Fused, a thread per channel (runs of seven quads), and a thread per four channels (runs
    // of nine values).
    CPU_FUSED_CASES[0],
    CPU_FUSED_CASES[1],
    PlannedCase {
        shape: &[10, 64, 63, 8],
        layout: LAST,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::split_in_dispatch(630, FinalizeKind::PerWorkgroup),
    },
    PlannedCase {
        shape: &[5, 3, 7],
        layout: FIRST,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::FUSED,
    },
    PlannedCase {
        shape: &[6, 5, 3],
        layout: LAST,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::FUSED,
    },
];

/// Shapes for the constant-channel and NaN tests: four channels, but for the narrow band's 1009
/// (a band of 16 needs 64 bands to be fused).
const SPECIAL_VALUE_CASES: [PlannedCase; 10] = [
    PlannedCase {
        shape: &[8, 4, 64, 64],
        layout: FIRST,
        planned: Planned::Cpu,
        claim: PlanClaim::split(32, FinalizeKind::PerThread),
    },
    PlannedCase {
        shape: &[2, 48, 48, 4],
        layout: LAST,
        planned: Planned::Cpu,
        claim: PlanClaim::split(18, FinalizeKind::PerThread),
    },
    // Runs of 49 values: each quad at a run's ends holds a neighbouring channel's values; in
    // one chunk and in chunks that start inside a run.
    PlannedCase {
        shape: &[344, 4, 7, 7],
        layout: FIRST,
        planned: Planned::Cpu,
        claim: PlanClaim::split(17, FinalizeKind::PerThread),
    },
    PlannedCase {
        shape: &[16, 4, 7, 7],
        layout: FIRST,
        planned: Planned::Cpu,
        claim: PlanClaim::split(1, FinalizeKind::PerThread),
    },
    // Eight values a channel: each channel's whole reduction is one group of the per-thread
    // kernels (channels-first runs, channels-last quads), whose partial alone must carry the NaN.
    PlannedCase {
        shape: &[1, 4, 2, 4],
        layout: FIRST,
        planned: Planned::Cpu,
        claim: PlanClaim::split(1, FinalizeKind::PerThread),
    },
    PlannedCase {
        shape: &[8, 4],
        layout: LAST,
        planned: Planned::Cpu,
        claim: PlanClaim::split(1, FinalizeKind::PerThread),
    },
    PlannedCase {
        shape: &[2, 48, 48, 4],
        layout: LAST,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::split_in_dispatch(72, FinalizeKind::PerWorkgroup),
    },
    PlannedCase {
        shape: &[3, 4, 5, 6],
        layout: FIRST,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::FUSED,
    },
    PlannedCase {
        shape: &[3, 5, 6, 4],
        layout: LAST,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::FUSED,
    },
    // 1125 rows: the training forward fused 16 channels a workgroup (`plan::NARROW_BAND`, 64
    // workgroups, the last of one channel), the backward split.
    PlannedCase {
        shape: &[5, 15, 15, 1009],
        layout: LAST,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::narrow_forward(PlanClaim::split(18, FinalizeKind::PerThread)),
    },
];

#[test]
fn large_offsets_match_the_reference() {
    for offset in [1e4f64, 1e6] {
        for (k, case) in OFFSET_CASES.into_iter().enumerate() {
            let ctx = case.context();
            let channels = view(case.shape, case.layout).channels;
            let seed = 100 * k as u64 + offset.log10() as u64;
            // Channel c sits at offset * (1 + c/4) with unit spread: |mean|/std up to ~1.5e6.
            let batches = (0..2)
                .map(|step| {
                    data_by_channel(case.shape, case.layout, seed + step, |c| {
                        (offset * (1.0 + c as f64 / 4.0), 1.0)
                    })
                })
                .collect();
            Scenario {
                shape: case.shape.to_vec(),
                layout: case.layout,
                config: BatchNormConfig::default(),
                affine: Some(affine(channels, seed)),
                batches,
            }
            .check_on(&ctx);
        }
    }
}

/// What one training step on a fresh layer produced.
struct Step {
    layer: BatchNorm,
    host: ArrayD<f32>,
    y: Vec<f32>,
    saved: Saved,
}

/// One training step of a fresh layer with `gamma` and `beta` on `ctx`, y poisoned with
/// `poison` first.
fn training_step(
    ctx: &GpuContext,
    case: &PlannedCase,
    data: &[f32],
    parameters: &(Vec<f32>, Vec<f32>),
    poison: f32,
) -> Step {
    let channels = view(case.shape, case.layout).channels;
    let mut layer = BatchNorm::new(ctx, channels).unwrap();
    layer.set_parameters(&parameters.0, &parameters.1).unwrap();
    let (x, host) = upload_to(ctx, data, case.shape, case.layout);
    let y = filled_on(ctx, case.shape, case.layout, poison);
    let saved = read_saved(&layer.forward_into(&x, &y).expect("training"));
    Step {
        layer,
        host,
        y: y.to_vec().unwrap(),
        saved,
    }
}

/// A constant channel: x - mean is exactly 0, so y = 0 * scale + beta = beta bitwise; its
/// saved mean is the constant exactly (every shifted difference is 0); its biased variance is
/// 0, so the running variance follows r_var <- (1 - m) r_var, i.e. 0.9^k after k steps from 1,
/// and the running mean c (1 - 0.9^k). The other channels are checked against the reference.
#[test]
fn constant_channel_gives_beta_exactly() {
    let constant = 1234.567f32;
    let steps = 3usize;
    let eps = 1e-5f64;
    for (k, case) in SPECIAL_VALUE_CASES.into_iter().enumerate() {
        let ctx = case.context();
        let view = view(case.shape, case.layout);
        let channels = view.channels;
        let (gamma, beta) = affine(channels, 7 + k as u64);
        let mut layer = BatchNorm::new(&ctx, channels).unwrap();
        layer.set_parameters(&gamma, &beta).unwrap();
        let mut running = (vec![0.0; channels], vec![1.0; channels]);
        let other_channels: Vec<usize> = (0..channels).filter(|&c| c != 1).collect();
        for step in 0..steps {
            let what = format!("{:?} {:?} step {step}", case.shape, case.layout);
            let seed = 50 + 10 * k as u64 + step as u64;
            let mut data = data_by_channel(case.shape, case.layout, seed, |c| {
                (c as f64 * 3.0 - 2.0, 1.0 + c as f64)
            });
            for m in 0..view.values_per_channel() {
                data[value_index(&view, 1, m)] = constant;
            }
            let (x, host) = upload_to(&ctx, &data, case.shape, case.layout);
            let y = filled_on(&ctx, case.shape, case.layout, f32::NAN);
            let saved = read_saved(&layer.forward_into(&x, &y).expect("training"));
            let got = y.to_vec().unwrap();

            // Closed forms for the constant channel.
            for m in 0..view.values_per_channel() {
                let i = value_index(&view, 1, m);
                assert_eq!(
                    got[i].to_bits(),
                    beta[1].to_bits(),
                    "{what}: y[{i}] = {} on the constant channel, want beta = {}",
                    got[i],
                    beta[1]
                );
            }
            assert_eq!(saved.mean[1].to_bits(), constant.to_bits(), "{what}: mean");
            // invstd = 1 / sqrt(0 + eps): float32 eps, sqrt and division, a few u.
            let want_invstd = 1.0 / eps.sqrt();
            let err = (f64::from(saved.invstd[1]) - want_invstd).abs();
            assert!(
                err <= 4.0 * U * want_invstd,
                "{what}: invstd[1] = {}, want {want_invstd}",
                saved.invstd[1]
            );
            let (run_mean, run_var) = layer.running_statistics().unwrap();
            let decay = 0.9f64.powi(step as i32 + 1);
            let want_mean = f64::from(constant) * (1.0 - decay);
            // Each step rounds (1 - m) r, m mean and their sum: 3 u per step, compounding.
            let steps_tol = 4.0 * (step + 1) as f64 * U;
            assert!(
                (f64::from(run_var[1]) - decay).abs() <= steps_tol * decay,
                "{what}: running_var[1] = {}, want {decay}",
                run_var[1]
            );
            assert!(
                (f64::from(run_mean[1]) - want_mean).abs() <= steps_tol * f64::from(constant),
                "{what}: running_mean[1] = {}, want {want_mean}",
                run_mean[1]
            );

            // The other channels against the reference.
            let inputs = ForwardInputs {
                x: host.view(),
                layout: case.layout,
                gamma: Some(&gamma),
                beta: Some(&beta),
                eps,
            };
            let others = Channels::Only(&other_channels);
            require(check_batch_statistics(&what, &inputs, &saved, others));
            require(check_output(&what, &inputs, &saved, &got, others));
            let stats = reference::batch_statistics(host.view(), case.layout, eps);
            assert_eq!(stats.var[1], 0.0);
            reference::update_running_statistics(
                &mut running.0,
                &mut running.1,
                &stats,
                view.values_per_channel(),
                0.1,
            );
            require(check_running_statistics(
                &what, &running.0, &running.1, &stats, &run_mean, &run_var, others,
            ));
        }
    }
}

#[test]
fn tiny_and_huge_scales_match_the_reference() {
    let cases: [(&[usize], Layout); 2] = [(&[4, 6, 9, 9], FIRST), (&[4, 9, 9, 6], LAST)];
    let ctx = planned(Planned::Cpu);
    // The smallest eps here is 1e-30, not 0: PyTorch 2.15 refuses eps = 0 in training. 1e-30
    // is far below every variance, so the kernels' division is as bare as with 0.
    for (k, (shape, layout)) in cases.into_iter().enumerate() {
        let seed = 300 + 10 * k as u64;
        // The running-mean tolerance is absolute (1e-6) plus relative to the mean, so at std
        // 1e12 the channel keeps an offset of half a std (otherwise its mean, ~std/sqrt(M),
        // could land near 0 and leave only 1e-6 of slack for an error of ~1e-7 std).
        let uniform = [
            (0.0, 1e-6, 1e-30),
            (0.0, 1e-6, 1e-5),
            (3e-6, 1e-6, 1e-30),
            (0.5e12, 1e12, 1e-5),
            (0.5e12, 1e12, 1e-30),
        ];
        for (j, (offset, scale, eps)) in uniform.into_iter().enumerate() {
            let batches = (0..2)
                .map(|s| {
                    normal_data(
                        shape.iter().product(),
                        seed + j as u64 * 3 + s,
                        offset,
                        scale,
                    )
                })
                .collect();
            Scenario {
                shape: shape.to_vec(),
                layout,
                config: BatchNormConfig {
                    eps,
                    ..BatchNormConfig::default()
                },
                affine: Some(affine(6, seed)),
                batches,
            }
            .check_on(&ctx);
        }
        // Channels 18 orders of magnitude apart in one tensor, each with |mean| / std = 2.
        let scales = [1e-6, 1e-3, 1.0, 1e3, 1e6, 1e12];
        for eps in [1e-30, 1e-5] {
            let batches = (0..2)
                .map(|s| {
                    data_by_channel(shape, layout, seed + 50 + s, |c| {
                        (2.0 * scales[c], scales[c])
                    })
                })
                .collect();
            Scenario {
                shape: shape.to_vec(),
                layout,
                config: BatchNormConfig {
                    eps,
                    ..BatchNormConfig::default()
                },
                affine: Some(affine(6, seed + 1)),
                batches,
            }
            .check_on(&ctx);
        }
    }
}

/// A context planned as `kind` whose every crate-allocated output starts as [`SENTINEL`]: a
/// NaN read back from it was written by a kernel.
fn sentinel_context(kind: Planned) -> GpuContext {
    let device_type = match kind {
        Planned::DiscreteGpu => wgpu::DeviceType::DiscreteGpu,
        Planned::Cpu | Planned::SmallBindings => wgpu::DeviceType::Cpu,
    };
    let max_binding = match kind {
        Planned::SmallBindings => 64 << 10,
        Planned::Cpu | Planned::DiscreteGpu => 128 << 20,
    };
    let ctx = limited_context(
        max_binding,
        wgpu::Limits::default().max_compute_workgroups_per_dimension,
        device_type,
    );
    ctx.set_debug_fill(Some(SENTINEL));
    ctx
}

/// Four channels of normal data; channel 1 gets a NaN in the middle of its values, channel 2 a
/// +Inf as its very first value (the value a chunk's shift is taken from).
fn data_with_nan_and_inf(shape: &[usize], layout: Layout, seed: u64) -> Vec<f32> {
    let view = view(shape, layout);
    let mut data = data_by_channel(shape, layout, seed, |c| (c as f64 - 1.5, 0.5 + c as f64));
    let m = view.values_per_channel();
    data[value_index(&view, 1, m / 2 + 1)] = f32::NAN;
    data[value_index(&view, 2, 0)] = f32::INFINITY;
    data
}

/// NaN and infinity stay in their channels, with PyTorch's classes: channels 0 and 3 match the
/// reference (outputs, saved stats, running stats); channel 1 (a NaN) gives NaN everywhere: y,
/// saved mean and invstd, running mean and variance, as PyTorch (its mean and var are NaN);
/// channel 2 (+Inf) gives NaN y, invstd and running variance, as PyTorch, and a saved and
/// running mean of NaN where PyTorch gives +Inf (the crate's documented exception: the shifted
/// reduction computes Inf - Inf). Outputs start at a finite sentinel, so every NaN was written.
#[test]
fn nan_and_inf_stay_in_their_channels_forward() {
    let eps = 1e-5;
    for (k, case) in SPECIAL_VALUE_CASES
        .into_iter()
        .chain(CPU_FUSED_CASES)
        .enumerate()
    {
        let ctx = sentinel_context(case.planned);
        common::assert_plan(&ctx, case.shape, case.layout, case.claim);
        let what = format!("{:?} {:?} {:?}", case.shape, case.layout, case.planned);
        let view = view(case.shape, case.layout);
        let parameters = affine(view.channels, 500 + k as u64);
        let data = data_with_nan_and_inf(case.shape, case.layout, 510 + k as u64);
        let step = training_step(&ctx, &case, &data, &parameters, SENTINEL);
        let inputs = ForwardInputs {
            x: step.host.view(),
            layout: case.layout,
            gamma: Some(&parameters.0),
            beta: Some(&parameters.1),
            eps,
        };
        // Every channel: the checks' rules for non-finite references are PyTorch's classes.
        require(check_batch_statistics(
            &what,
            &inputs,
            &step.saved,
            Channels::All,
        ));
        require(check_output(
            &what,
            &inputs,
            &step.saved,
            &step.y,
            Channels::All,
        ));
        let stats = reference::batch_statistics(step.host.view(), case.layout, eps);
        let (mut want_mean, mut want_var) = (vec![0.0; view.channels], vec![1.0; view.channels]);
        reference::update_running_statistics(
            &mut want_mean,
            &mut want_var,
            &stats,
            view.values_per_channel(),
            0.1,
        );
        let (run_mean, run_var) = step.layer.running_statistics().unwrap();
        require(check_running_statistics(
            &what,
            &want_mean,
            &want_var,
            &stats,
            &run_mean,
            &run_var,
            Channels::All,
        ));
        // The classes, spelled out.
        for m in 0..view.values_per_channel() {
            for c in [1, 2] {
                let i = value_index(&view, c, m);
                assert!(
                    step.y[i].is_nan(),
                    "{what}: y[{i}] (channel {c}) = {}",
                    step.y[i]
                );
            }
        }
        assert!(stats.mean[1].is_nan() && stats.mean[2] == f64::INFINITY);
        for (name, value) in [
            ("saved mean[1]", step.saved.mean[1]),
            ("saved invstd[1]", step.saved.invstd[1]),
            ("saved invstd[2]", step.saved.invstd[2]),
            ("running_mean[1]", run_mean[1]),
            ("running_var[1]", run_var[1]),
            ("running_var[2]", run_var[2]),
        ] {
            assert!(value.is_nan(), "{what}: {name} = {value}, want NaN");
        }
        for (name, value) in [
            ("saved mean[2]", step.saved.mean[2]),
            ("running_mean[2]", run_mean[2]),
        ] {
            assert!(
                value.is_nan() || value == f32::INFINITY,
                "{what}: {name} = {value}, want NaN or +Inf"
            );
        }
    }
}

/// Runs a training forward and the backward of `dy` on a fresh layer (dx poisoned with
/// `poison`) and checks the statistics, dx, dgamma and dbeta of every channel from the GPU's
/// saved statistics (the checks' rules for non-finite references are PyTorch's classes).
/// Returns (dx, dgamma, dbeta).
fn check_backward(
    what: &str,
    ctx: &GpuContext,
    case: &PlannedCase,
    x_data: &[f32],
    dy_data: &[f32],
    gamma: &[f32],
    poison: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut layer = BatchNorm::new(ctx, gamma.len()).unwrap();
    layer
        .set_parameters(gamma, &vec![0.25; gamma.len()])
        .unwrap();
    let (x, x_host) = upload_to(ctx, x_data, case.shape, case.layout);
    let (dy, dy_host) = upload_to(ctx, dy_data, case.shape, case.layout);
    let saved_stats = layer.forward(&x).expect("forward").saved;
    let dx = filled_on(ctx, case.shape, case.layout, poison);
    let params = layer
        .backward_into(&x, &dy, &dx, &saved_stats)
        .expect("backward")
        .expect("affine layer");
    let saved = read_saved(&saved_stats);
    let inputs = ForwardInputs {
        x: x_host.view(),
        layout: case.layout,
        gamma: Some(gamma),
        beta: None,
        eps: 1e-5,
    };
    require(check_batch_statistics(what, &inputs, &saved, Channels::All));
    let backward = BackwardInputs {
        forward: inputs,
        dy: dy_host.view(),
        saved: &saved,
        through: Through::Batch,
        depth: sum_depth(&plan_of(ctx, case.shape, case.layout, Operation::Backward)),
    };
    let got_dx = dx.to_vec().unwrap();
    let (dgamma, dbeta) = params.read().unwrap();
    require(check_input_gradient(
        what,
        &backward,
        &got_dx,
        Channels::All,
    ));
    require(check_parameter_gradients(
        what,
        &backward,
        &dgamma,
        &dbeta,
        Channels::All,
    ));
    (got_dx, dgamma, dbeta)
}

#[test]
fn backward_at_offset_1e4_matches_the_reference() {
    for (k, case) in OFFSET_CASES.into_iter().enumerate() {
        let ctx = case.context();
        let view = view(case.shape, case.layout);
        let c = view.channels;
        let seed = 700 + 10 * k as u64;
        let x = data_by_channel(case.shape, case.layout, seed, |c| {
            (1e4 * (1.0 + c as f64 / 4.0), 1.0)
        });
        let dy = normal_data(view.len(), seed + 1, 0.0, 1.0);
        let (gamma, _) = affine(c, seed + 2);
        check_backward(
            &format!("offset 1e4 {:?} {:?}", case.shape, case.layout),
            &ctx,
            &case,
            &x,
            &dy,
            &gamma,
            f32::NAN,
        );
    }
}

/// A constant channel in the backward pass: x_hat = 0 exactly, so dgamma = sum(dy x_hat) = 0
/// exactly and dx = gamma invstd (dy - mean(dy)) with invstd = 1/sqrt(eps).
#[test]
fn backward_with_a_constant_channel_matches_the_reference() {
    for (k, case) in SPECIAL_VALUE_CASES
        .into_iter()
        .chain(CPU_FUSED_CASES)
        .enumerate()
    {
        let ctx = case.context();
        let view = view(case.shape, case.layout);
        let seed = 800 + 10 * k as u64;
        let mut x = data_by_channel(case.shape, case.layout, seed, |c| {
            (c as f64, 1.0 + c as f64)
        });
        for m in 0..view.values_per_channel() {
            x[value_index(&view, 1, m)] = -42.375;
        }
        let dy = normal_data(view.len(), seed + 1, 0.5, 1.0);
        let (gamma, _) = affine(view.channels, seed + 2);
        let what = format!("constant channel {:?} {:?}", case.shape, case.layout);
        let (_, dgamma, _) = check_backward(&what, &ctx, &case, &x, &dy, &gamma, f32::NAN);
        assert_eq!(dgamma[1], 0.0, "{what}: dgamma[1] must be exactly 0");
    }
}

/// dy with a NaN in one element of channel 1: channels 0, 2 and 3 match the reference; all of
/// channel 1's dx and its dgamma and dbeta are NaN (PyTorch: NaN enters both sums, and every
/// dx of the channel reads them). dx and the gradients start at a finite sentinel.
#[test]
fn nan_in_dy_stays_in_its_channel_backward() {
    for (k, case) in SPECIAL_VALUE_CASES
        .into_iter()
        .chain(CPU_FUSED_CASES)
        .enumerate()
    {
        let ctx = sentinel_context(case.planned);
        common::assert_plan(&ctx, case.shape, case.layout, case.claim);
        let view = view(case.shape, case.layout);
        let seed = 900 + 10 * k as u64;
        let x = data_by_channel(case.shape, case.layout, seed, |c| (c as f64, 1.0));
        let mut dy = normal_data(view.len(), seed + 1, 0.0, 1.0);
        dy[value_index(&view, 1, view.values_per_channel() / 3)] = f32::NAN;
        let (gamma, _) = affine(view.channels, seed + 2);
        let what = format!("NaN dy {:?} {:?}", case.shape, case.layout);
        let (dx, dgamma, dbeta) = check_backward(&what, &ctx, &case, &x, &dy, &gamma, SENTINEL);
        for m in 0..view.values_per_channel() {
            let i = value_index(&view, 1, m);
            assert!(dx[i].is_nan(), "{what}: dx[{i}] = {}", dx[i]);
        }
        assert!(dgamma[1].is_nan(), "{what}: dgamma[1] = {}", dgamma[1]);
        assert!(dbeta[1].is_nan(), "{what}: dbeta[1] = {}", dbeta[1]);
    }
}

/// The backward of the forward with NaN (channel 1) and +Inf (channel 2) in x, finite dy:
/// channels 0 and 3 match the reference; channels 1 and 2 give NaN dx everywhere and NaN
/// dgamma (their invstd is NaN, as PyTorch's); dbeta = sum(dy) involves no x, so it is finite
/// and matches the reference on every channel. Outputs start at a finite sentinel.
#[test]
fn non_finite_input_stays_in_its_channels_backward() {
    for (k, case) in SPECIAL_VALUE_CASES
        .into_iter()
        .chain(CPU_FUSED_CASES)
        .enumerate()
    {
        let ctx = sentinel_context(case.planned);
        common::assert_plan(&ctx, case.shape, case.layout, case.claim);
        let view = view(case.shape, case.layout);
        let seed = 1000 + 10 * k as u64;
        let x = data_with_nan_and_inf(case.shape, case.layout, seed);
        let dy = normal_data(view.len(), seed + 1, 0.0, 1.0);
        let (gamma, _) = affine(view.channels, seed + 2);
        let what = format!("non-finite x {:?} {:?}", case.shape, case.layout);
        let (dx, dgamma, dbeta) = check_backward(&what, &ctx, &case, &x, &dy, &gamma, SENTINEL);
        for m in 0..view.values_per_channel() {
            for c in [1, 2] {
                let i = value_index(&view, c, m);
                assert!(dx[i].is_nan(), "{what}: dx[{i}] (channel {c}) = {}", dx[i]);
            }
        }
        for c in [1, 2] {
            assert!(dgamma[c].is_nan(), "{what}: dgamma[{c}] = {}", dgamma[c]);
        }
        assert!(
            dbeta.iter().all(|v| v.is_finite()),
            "{what}: dbeta {dbeta:?}"
        );
    }
}
