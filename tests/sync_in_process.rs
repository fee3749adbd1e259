//! Synchronized batch norm across several devices in one process (`InProcessExchange`, a
//! thread per rank, each with a device of its own): k = 2, 3 and 4 ranks with equal and uneven
//! shards, an empty shard, one value per shard, mixed layouts and tensor ranks, plans with
//! windows, workgroup finalizes and GPU chunks, Vulkan and GL adapters in one group, checked as
//! one batch by `common::sync`; bitwise determinism; every refusal on every rank with the
//! layers' state unchanged (disagreeing layers and dtypes, a rank's bad arguments, too few
//! values over all ranks, ranks out of step, a rank that leaves); inference and its backward
//! local; and the halves of a recorded call.

mod common;

use common::checks::{check_inference_statistics, check_output, ForwardInputs};
use common::scenario::{read_saved, require};
use common::sync::{check_group, gather_runs, rank_context, run_rank, Shard, StepResult, SyncCase};
use common::{context, filled_on, limited_context, normal_data, upload_to, Planned};
use wgpu_batchnorm::sync::{
    in_process_group, Exchange, HeaderField, InProcessExchange, SyncBatchNorm, SyncError,
};
use wgpu_batchnorm::{
    AdapterOptions, BatchNorm, BatchNormConfig, BatchNormError, DType, GpuContext, Layout, Tensor,
};

const CF: Layout = Layout::ChannelsFirst;
const CL: Layout = Layout::ChannelsLast;

/// Runs `case` with a thread per rank on `contexts`, gathers every rank's results over the
/// group, and returns them as rank 0 gathered them.
fn run_group(case: &SyncCase, contexts: &[GpuContext]) -> Vec<Vec<StepResult>> {
    let group = in_process_group(case.shards.len());
    let gathered: Vec<Vec<Vec<StepResult>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = group
            .into_iter()
            .zip(contexts)
            .map(|(endpoint, ctx)| {
                scope.spawn(move || {
                    let run = run_rank(case, endpoint.rank(), ctx, &endpoint);
                    gather_runs(&endpoint, &run)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a rank panicked"))
            .collect()
    });
    // Every rank gathered the same results.
    assert!(gathered.iter().all(|g| g == &gathered[0]));
    gathered.into_iter().next().expect("ranks")
}

fn contexts_of(case: &SyncCase) -> Vec<GpuContext> {
    case.shards
        .iter()
        .enumerate()
        .map(|(rank, shard)| rank_context(rank, shard.planned))
        .collect()
}

fn check(case: &SyncCase) {
    let runs = run_group(case, &contexts_of(case));
    check_group(case, &runs, &context());
}

fn config(momentum: Option<f64>, affine: bool) -> BatchNormConfig {
    BatchNormConfig {
        momentum,
        affine,
        ..BatchNormConfig::default()
    }
}

#[test]
fn two_equal_shards_match_the_whole_batch() {
    check(&SyncCase {
        seed: 11,
        channels: 6,
        config: config(Some(0.1), true),
        shards: vec![
            Shard::new(&[4, 6, 5, 5], CF, Planned::Cpu),
            Shard::new(&[4, 6, 5, 5], CF, Planned::Cpu),
        ],
        steps: 3,
    });
}

#[test]
fn three_uneven_shards_in_mixed_layouts_and_ranks_with_momentum_none() {
    check(&SyncCase {
        seed: 12,
        channels: 6,
        config: config(None, true),
        shards: vec![
            Shard::new(&[3, 6, 7, 5], CF, Planned::Cpu),
            Shard::new(&[5, 4, 4, 6], CL, Planned::Cpu),
            Shard::new(&[2, 6, 11], CF, Planned::Cpu),
        ],
        steps: 3,
    });
}

#[test]
fn four_shards_with_an_empty_one_without_affine() {
    check(&SyncCase {
        seed: 13,
        channels: 6,
        config: config(Some(0.3), false),
        shards: vec![
            Shard::new(&[0, 6, 3, 3], CF, Planned::Cpu),
            Shard::new(&[7, 6], CF, Planned::Cpu),
            Shard::new(&[2, 3, 2, 2, 6], CL, Planned::Cpu),
            Shard::new(&[1, 6, 2, 3, 4], CF, Planned::Cpu),
        ],
        steps: 3,
    });
}

#[test]
fn one_value_per_shard_is_enough_together() {
    // Each shard alone would be refused in training; two values per channel in all are not.
    check(&SyncCase {
        seed: 14,
        channels: 5,
        config: config(None, true),
        shards: vec![
            Shard::new(&[1, 5], CF, Planned::Cpu),
            Shard::new(&[1, 5], CF, Planned::Cpu),
        ],
        steps: 2,
    });
}

#[test]
fn shards_planned_with_windows_workgroup_finalizes_and_gpu_chunks() {
    // Rank 0: 8 windows of 64 KiB; rank 1: 288 chunks merged by a workgroup per channel;
    // rank 2: channels-last, strided reduction in 5 chunks.
    check(&SyncCase {
        seed: 15,
        channels: 2,
        config: config(Some(0.1), true),
        shards: vec![
            Shard::new(&[8, 2, 64, 64], CF, Planned::SmallBindings),
            Shard::new(&[36, 2, 128, 128], CF, Planned::DiscreteGpu),
            Shard::new(&[3, 40, 41, 2], CL, Planned::Cpu),
        ],
        steps: 2,
    });
}

#[test]
fn vulkan_and_gl_adapters_in_one_group() {
    let on = |backends| {
        let ctx = GpuContext::with_options(&AdapterOptions {
            backends,
            name_contains: None,
        })
        .expect("both the Vulkan and the GL adapter (bash .ci/install-gpu-drivers.sh)");
        ctx.set_debug_fill(Some(f32::NAN));
        ctx
    };
    let contexts = [on(wgpu::Backends::VULKAN), on(wgpu::Backends::GL)];
    let case = SyncCase {
        seed: 16,
        channels: 8,
        config: config(Some(0.1), true),
        shards: vec![
            Shard::new(&[3, 8, 6, 6], CF, Planned::Cpu),
            Shard::new(&[2, 5, 5, 8], CL, Planned::Cpu),
        ],
        steps: 2,
    };
    check_group(&case, &run_group(&case, &contexts), &context());
}

#[test]
fn runs_are_bitwise_repeatable() {
    let case = SyncCase {
        seed: 17,
        channels: 6,
        config: config(None, true),
        shards: vec![
            Shard::new(&[3, 6, 7, 5], CF, Planned::Cpu),
            Shard::new(&[5, 4, 4, 6], CL, Planned::SmallBindings),
            Shard::new(&[9, 6], CF, Planned::DiscreteGpu),
        ],
        steps: 2,
    };
    let contexts = contexts_of(&case);
    let first = run_group(&case, &contexts);
    let second = run_group(&case, &contexts);
    let bits = |runs: &Vec<Vec<StepResult>>| -> Vec<u32> {
        runs.iter()
            .flatten()
            .flat_map(|s| {
                [
                    &s.y,
                    &s.mean,
                    &s.invstd,
                    &s.running_mean,
                    &s.running_var,
                    &s.dx,
                    &s.dgamma,
                    &s.dbeta,
                ]
                .into_iter()
                .flatten()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(bits(&first), bits(&second));
}

/// A layer's state: its running stats (when tracked) and its batch count.
type State = (Option<(Vec<f32>, Vec<f32>)>, u64);

/// A rank's layer and tensors for the refusal tests.
struct Rank {
    layer: SyncBatchNorm,
    x: Tensor,
    y: Tensor,
}

impl Rank {
    fn new(rank: usize, channels: usize, config: BatchNormConfig, shape: &[usize]) -> Self {
        Rank::on(
            &rank_context(rank, Planned::Cpu),
            rank,
            channels,
            config,
            shape,
        )
    }

    /// A rank on `ctx` (a device of its own for a test that destroys it: the others are shared
    /// by the process's tests).
    fn on(
        ctx: &GpuContext,
        rank: usize,
        channels: usize,
        config: BatchNormConfig,
        shape: &[usize],
    ) -> Self {
        let len = shape.iter().product();
        let (x, _) = upload_to(ctx, &normal_data(len, rank as u64, 1.0, 2.0), shape, CF);
        let layer = BatchNorm::with_config(ctx, channels, config).expect("layer");
        Rank {
            layer: SyncBatchNorm::new(layer),
            y: filled_on(ctx, shape, CF, f32::NAN),
            x,
        }
    }

    /// The layer's state: running stats and batch count.
    fn state(&self) -> State {
        let layer = self.layer.layer();
        (layer.running_statistics().ok(), layer.num_batches_tracked())
    }
}

/// Runs `call` on every rank at once, each with its endpoint, and returns each rank's result.
fn on_every_rank<T: Send>(
    ranks: &mut [Rank],
    call: impl Fn(usize, &mut Rank, &InProcessExchange) -> T + Sync,
) -> Vec<T> {
    let group = in_process_group(ranks.len());
    std::thread::scope(|scope| {
        let call = &call;
        let handles: Vec<_> = ranks
            .iter_mut()
            .zip(group)
            .enumerate()
            .map(|(r, (rank, endpoint))| scope.spawn(move || call(r, rank, &endpoint)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    })
}

/// Every rank's forward is refused as `want` says, and no rank's state changed.
fn assert_refused_everywhere(ranks: &mut [Rank], want: impl Fn(usize, &SyncError) -> bool) {
    let before: Vec<_> = ranks.iter().map(Rank::state).collect();
    let results = on_every_rank(ranks, |_, rank, endpoint| {
        rank.layer
            .forward_into(&rank.x, &rank.y, endpoint)
            .map(|_| ())
    });
    for (r, result) in results.iter().enumerate() {
        match result {
            Err(error) => assert!(want(r, error), "rank {r}: {error}"),
            Ok(()) => panic!("rank {r} accepted the call"),
        }
    }
    let after: Vec<_> = ranks.iter().map(Rank::state).collect();
    assert_eq!(before, after, "a refused call changed a layer's state");
}

#[test]
fn ranks_that_disagree_on_the_layer_are_refused_on_every_rank() {
    let base = BatchNormConfig::default();
    let cases = [
        (vec![(6, base), (5, base)], HeaderField::Channels),
        (
            vec![
                (6, base),
                (6, BatchNormConfig { eps: 1e-3, ..base }),
                (6, base),
            ],
            HeaderField::Eps,
        ),
        (
            vec![
                (6, base),
                (
                    6,
                    BatchNormConfig {
                        momentum: Some(0.2),
                        ..base
                    },
                ),
            ],
            HeaderField::Momentum,
        ),
        (
            vec![
                (6, base),
                (
                    6,
                    BatchNormConfig {
                        momentum: None,
                        ..base
                    },
                ),
            ],
            HeaderField::Momentum,
        ),
        (
            vec![
                (6, base),
                (
                    6,
                    BatchNormConfig {
                        track_running_stats: false,
                        ..base
                    },
                ),
            ],
            HeaderField::Momentum,
        ),
    ];
    for (layers, field) in cases {
        let mut ranks: Vec<Rank> = layers
            .iter()
            .enumerate()
            .map(|(r, &(channels, config))| Rank::new(r, channels, config, &[4, channels, 3]))
            .collect();
        let count = ranks.len();
        assert_refused_everywhere(
            &mut ranks,
            |_, error| matches!(error, SyncError::Disagreement { field: f, values } if *f == field && values.len() == count),
        );
    }
}

/// A rank whose tensors are f16 among f32 ranks: every rank refuses, forward and backward,
/// naming each rank's dtype, and no layer's state changes.
#[test]
fn a_rank_with_another_dtype_is_refused_on_every_rank() {
    let mut ranks = [
        Rank::new(0, 4, BatchNormConfig::default(), &[3, 4, 5]),
        Rank::new(1, 4, BatchNormConfig::default(), &[3, 4, 5]),
    ];
    let half = |data: &[f32]| {
        let ctx = rank_context(1, Planned::Cpu);
        Tensor::from_f32_as(&ctx, data, &[3, 4, 5], CF, DType::F16).expect("f16 tensor")
    };
    let f32_x = std::mem::replace(&mut ranks[1].x, half(&normal_data(60, 1, 1.0, 2.0)));
    let f32_y = std::mem::replace(&mut ranks[1].y, half(&[f32::NAN; 60]));
    let f32_and_f16 = |error: &SyncError| {
        matches!(error, SyncError::Disagreement { field: HeaderField::DType, values }
            if values == &["f32", "f16"])
    };
    assert_refused_everywhere(&mut ranks, |_, error| f32_and_f16(error));
    // A synchronized forward in f32 on both ranks, then rank 1's backward on f16 tensors.
    (ranks[1].x, ranks[1].y) = (f32_x, f32_y);
    let saved = on_every_rank(&mut ranks, |_, rank, endpoint| {
        rank.layer
            .forward_into(&rank.x, &rank.y, endpoint)
            .expect("forward")
    });
    let results = on_every_rank(&mut ranks, |r, rank, endpoint| {
        let (x, dy) = match r {
            0 => (rank.x.clone(), rank.y.clone()),
            _ => (half(&[1.0; 60]), half(&[0.5; 60])),
        };
        rank.layer
            .backward(&x, &dy, &saved[r], endpoint)
            .map(|_| ())
    });
    for result in &results {
        assert!(matches!(result, Err(e) if f32_and_f16(e)), "{result:?}");
    }
}

#[test]
fn a_rank_that_refuses_its_arguments_makes_every_rank_refuse() {
    let mut ranks: Vec<Rank> = (0..3)
        .map(|r| Rank::new(r, 4, BatchNormConfig::default(), &[3, 4, 5]))
        .collect();
    // Rank 2's output has the wrong shape.
    ranks[2].y = filled_on(&rank_context(2, Planned::Cpu), &[3, 4, 6], CF, f32::NAN);
    assert_refused_everywhere(&mut ranks, |r, error| match r {
        2 => matches!(
            error,
            SyncError::Local(BatchNormError::ShapeMismatch { .. })
        ),
        _ => {
            matches!(error, SyncError::PeerRefused { ranks, reason: "its arguments" } if ranks == &[2])
        }
    });
}

/// A rank whose GPU fails in the first half still sends a whole payload (as many words as the
/// others: an all-gather of unequal counts is erroneous under MPI), so the others read its
/// status and refuse, with their state unchanged.
#[test]
fn a_rank_whose_gpu_fails_makes_every_rank_refuse() {
    let max_workgroups = wgpu::Limits::default().max_compute_workgroups_per_dimension;
    let doomed = limited_context(128 << 20, max_workgroups, wgpu::DeviceType::Cpu);
    let mut ranks: Vec<Rank> = (0..3)
        .map(|r| match r {
            1 => Rank::on(&doomed, r, 4, BatchNormConfig::default(), &[3, 4, 5]),
            _ => Rank::new(r, 4, BatchNormConfig::default(), &[3, 4, 5]),
        })
        .collect();
    let before: Vec<_> = ranks.iter().map(Rank::state).collect();
    doomed.device().destroy();
    let results = on_every_rank(&mut ranks, |_, rank, endpoint| {
        rank.layer
            .forward_into(&rank.x, &rank.y, endpoint)
            .map(|_| ())
    });
    for (r, result) in results.iter().enumerate() {
        match (r, result) {
            (1, Err(SyncError::Local(BatchNormError::DeviceLost(_)))) => {}
            (
                0 | 2,
                Err(SyncError::PeerRefused {
                    ranks,
                    reason: "its GPU",
                }),
            ) if ranks == &[1] => {}
            (_, other) => panic!("rank {r}: {other:?}"),
        }
    }
    for r in [0, 2] {
        assert_eq!(ranks[r].state(), before[r], "rank {r}'s state changed");
    }
    assert_eq!(ranks[1].layer.layer().num_batches_tracked(), before[1].1);
}

#[test]
fn too_few_values_over_all_ranks_are_refused_on_every_rank() {
    for momentum in [Some(0.1), None] {
        let config = BatchNormConfig {
            momentum,
            ..BatchNormConfig::default()
        };
        let mut ranks = vec![
            Rank::new(0, 4, config, &[1, 4]),
            Rank::new(1, 4, config, &[0, 4]),
            Rank::new(2, 4, config, &[0, 4, 3]),
        ];
        assert_refused_everywhere(
            &mut ranks,
            |_, error| matches!(error, SyncError::TooFewValues { counts } if counts == &[1, 0, 0]),
        );
    }
}

#[test]
fn ranks_out_of_step_are_refused_on_every_rank() {
    let mut ranks: Vec<Rank> = (0..2)
        .map(|r| Rank::new(r, 4, BatchNormConfig::default(), &[3, 4, 5]))
        .collect();
    // Both forward together, then rank 0 runs a forward while rank 1 runs its backward.
    let saved = on_every_rank(&mut ranks, |_, rank, endpoint| {
        rank.layer
            .forward_into(&rank.x, &rank.y, endpoint)
            .expect("forward")
    });
    let results = on_every_rank(&mut ranks, |r, rank, endpoint| match r {
        0 => rank
            .layer
            .forward_into(&rank.x, &rank.y, endpoint)
            .map(|_| ()),
        _ => rank
            .layer
            .backward(&rank.x, &rank.y, &saved[r], endpoint)
            .map(|_| ()),
    });
    for result in results {
        assert!(
            matches!(&result, Err(SyncError::Disagreement { field: HeaderField::Operation, values })
                if values == &["forward statistics", "backward sums"]),
            "{result:?}"
        );
    }
}

#[test]
fn a_rank_that_leaves_ends_the_others_wait_with_an_error() {
    let mut ranks: Vec<Rank> = (0..3)
        .map(|r| Rank::new(r, 4, BatchNormConfig::default(), &[3, 4, 5]))
        .collect();
    let before = ranks[0].state();
    let results = on_every_rank(&mut ranks, |r, rank, endpoint| match r {
        // Rank 2 leaves without calling: its endpoint is dropped when its thread ends.
        2 => Ok(()),
        _ => rank
            .layer
            .forward_into(&rank.x, &rank.y, endpoint)
            .map(|_| ()),
    });
    for result in &results[..2] {
        assert!(
            matches!(result, Err(SyncError::PeerGone { rank: 2 })),
            "{result:?}"
        );
    }
    assert_eq!(before, ranks[0].state());
}

/// An exchange that fails the test if a call uses it.
struct Unused;

impl Exchange for Unused {
    fn rank(&self) -> usize {
        0
    }
    fn ranks(&self) -> usize {
        2
    }
    fn all_gather(&self, _: &[u32]) -> Result<Vec<u32>, SyncError> {
        panic!("an inference call exchanged");
    }
}

#[test]
fn inference_and_its_backward_are_local() {
    let ctx = rank_context(0, Planned::Cpu);
    let shape = [4, 3, 5, 5];
    let running_mean = vec![0.5, -1.0, 2.0];
    let running_var = vec![1.5, 0.25, 4.0];
    let mut layer = BatchNorm::new(&ctx, 3).unwrap();
    layer
        .set_running_statistics(&running_mean, &running_var)
        .unwrap();
    layer.set_training(false);
    let layer = SyncBatchNorm::new(layer);
    let mut layer = layer;
    let data = normal_data(300, 5, 0.0, 2.0);
    let (x, x_host) = upload_to(&ctx, &data, &shape, CF);
    let out = layer.forward(&x, &Unused).expect("inference");
    assert!(!out.saved.is_synchronized());
    let saved = read_saved(out.saved.stats());
    require(check_inference_statistics(
        "inference",
        &running_mean,
        &running_var,
        1e-5,
        &saved,
    ));
    let inputs = ForwardInputs {
        x: x_host.view(),
        layout: CF,
        gamma: None,
        beta: None,
        eps: 1e-5,
    };
    require(check_output(
        "inference",
        &inputs,
        &saved,
        &out.y.to_vec().unwrap(),
        common::checks::Channels::All,
    ));
    let grads = layer
        .backward(&x, &out.y, &out.saved, &Unused)
        .expect("inference backward");
    // Through constant statistics, dx = dy invstd (gamma 1).
    let dx = grads.dx.to_vec().unwrap();
    let y = out.y.to_vec().unwrap();
    for (i, (&d, &g)) in dx.iter().zip(&y).enumerate() {
        let c = (i / 25) % 3;
        let want = f64::from(g) * f64::from(saved.invstd[c]);
        assert!(
            (f64::from(d) - want).abs() <= 3.0 * f64::EPSILON.max(1e-7) * want.abs() + 1e-30,
            "dx[{i}]"
        );
    }
    assert_eq!(layer.layer().num_batches_tracked(), 0);
}

#[test]
fn a_recorded_call_leaves_its_second_half_in_the_callers_encoder() {
    let shape = [4, 3, 6];
    let group = in_process_group(2);
    let results: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|endpoint| {
                scope.spawn(move || {
                    let ctx = rank_context(endpoint.rank(), Planned::Cpu);
                    let data = normal_data(72, 40 + endpoint.rank() as u64, 1.0, 1.0);
                    let (x, _) = upload_to(&ctx, &data, &shape, CF);
                    let y = filled_on(&ctx, &shape, CF, f32::NAN);
                    let mut layer = SyncBatchNorm::new(BatchNorm::new(&ctx, 3).unwrap());
                    let mut encoder = ctx.device().create_command_encoder(&Default::default());
                    layer
                        .record_forward(&mut encoder, &x, &y, &endpoint)
                        .expect("record");
                    // The statistics ran; the normalization waits in the encoder.
                    let before = y.to_vec().unwrap();
                    ctx.queue().submit([encoder.finish()]);
                    (data, before, y.to_vec().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<f64> = results
        .iter()
        .flat_map(|r| r.0.iter().map(|&v| f64::from(v)))
        .collect();
    for (_, before, after) in &results {
        assert!(
            before.iter().all(|v| v.is_nan()),
            "y was written before the caller submitted"
        );
        assert!(after.iter().all(|v| v.is_finite()));
    }
    // Over both ranks' y together: mean 0 and variance 1 per channel, to a few roundings.
    for c in 0..3 {
        let ys: Vec<f64> = results
            .iter()
            .flat_map(|r| {
                r.2.chunks(6)
                    .enumerate()
                    .filter(|(k, _)| k % 3 == c)
                    .flat_map(|(_, v)| v.to_vec())
            })
            .map(f64::from)
            .collect();
        let mean = ys.iter().sum::<f64>() / ys.len() as f64;
        let var = ys.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / ys.len() as f64;
        assert!(mean.abs() < 1e-6, "channel {c}: mean {mean}");
        let xs: Vec<f64> = all
            .chunks(6)
            .enumerate()
            .filter(|(k, _)| k % 3 == c)
            .flat_map(|(_, v)| v.to_vec())
            .collect();
        let xm = xs.iter().sum::<f64>() / xs.len() as f64;
        let xv = xs.iter().map(|v| (v - xm).powi(2)).sum::<f64>() / xs.len() as f64;
        let want = xv / (xv + 1e-5);
        assert!(
            (var - want).abs() < 1e-5,
            "channel {c}: variance {var}, want {want}"
        );
    }
}
