//! The driver of the synchronized batch-norm tests, whatever the transport: each rank trains a
//! `SyncBatchNorm` for a few steps on its own shard ([`run_rank`]), the ranks' downloaded
//! results are gathered ([`gather_runs`], over the group's own `Exchange`), and
//! [`check_group`] checks them as one batch: every shard is read as rows of C values (its
//! layout, rank and spatial extent notwithstanding), the rows of all ranks are the whole
//! batch, and every result is checked against float64 over the whole batch with the bounds of
//! `checks` (the single-device tests'), against the single-device layer run on the whole batch,
//! and across ranks for bitwise equality.

use ndarray::{ArrayD, IxDyn};
use wgpu_batchnorm::plan::Operation;
use wgpu_batchnorm::sync::{Exchange, SyncBatchNorm};
use wgpu_batchnorm::{reference, BatchNorm, BatchNormConfig, ChannelView, GpuContext, Layout};

use super::checks::{
    check_batch_statistics, check_input_gradient, check_output, check_parameter_gradients,
    check_running_statistics, compare_batch_statistics, sum_depth, BackwardInputs, Channels,
    ForwardInputs, Saved, Through, UNIT_ROUNDOFF,
};
use super::scenario::{read_saved, require};
use super::{filled_on, limited_context, normal_data, plan_of, upload_to, Planned};

/// One rank's shard: its shape in memory order, its layout, and how its context plans.
#[derive(Clone, Debug)]
pub struct Shard {
    pub shape: Vec<usize>,
    pub layout: Layout,
    pub planned: Planned,
}

impl Shard {
    pub fn new(shape: &[usize], layout: Layout, planned: Planned) -> Self {
        Shard {
            shape: shape.to_vec(),
            layout,
            planned,
        }
    }

    fn view(&self) -> ChannelView {
        ChannelView::new(&self.shape, self.layout).expect("rank >= 2")
    }
}

/// A synchronized training run: the layer's options, every rank's shard, and the steps.
#[derive(Clone, Debug)]
pub struct SyncCase {
    pub seed: u64,
    pub channels: usize,
    pub config: BatchNormConfig,
    pub shards: Vec<Shard>,
    pub steps: usize,
}

/// What one rank saw at one step, downloaded; inputs and outputs in its shard's memory order.
#[derive(Clone, Debug, PartialEq)]
pub struct StepResult {
    pub x: Vec<f32>,
    pub dy: Vec<f32>,
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

const VECTORS_PER_STEP: usize = 10;

impl StepResult {
    fn vectors(&self) -> [&Vec<f32>; VECTORS_PER_STEP] {
        [
            &self.x,
            &self.dy,
            &self.y,
            &self.mean,
            &self.invstd,
            &self.running_mean,
            &self.running_var,
            &self.dx,
            &self.dgamma,
            &self.dbeta,
        ]
    }
}

/// gamma and beta of a case, the same on every rank.
fn parameters(case: &SyncCase) -> (Vec<f32>, Vec<f32>) {
    (
        normal_data(case.channels, case.seed ^ 1, 1.0, 0.5),
        normal_data(case.channels, case.seed ^ 2, 0.0, 1.0),
    )
}

/// x and dy of a rank's shard at a step, with an offset per channel so the shards' means
/// differ.
fn inputs(case: &SyncCase, rank: usize, step: usize) -> (Vec<f32>, Vec<f32>) {
    let shard = &case.shards[rank];
    let view = shard.view();
    let seed = case.seed ^ ((rank as u64) << 32) ^ ((step as u64) << 48);
    let x = normal_data(view.len(), seed, 3.0 + rank as f64, 1.5 + 0.5 * step as f64);
    let dy = normal_data(view.len(), seed ^ 0xD1, 0.0, 1.0);
    (x, dy)
}

/// A device of its own for `rank`, planned as `planned` (one per rank and kind per process, so
/// that ranks never share a device).
pub fn rank_context(rank: usize, planned: Planned) -> GpuContext {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CONTEXTS: OnceLock<Mutex<HashMap<(usize, Planned), GpuContext>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    contexts
        .entry((rank, planned))
        .or_insert_with(|| {
            let max_workgroups = wgpu::Limits::default().max_compute_workgroups_per_dimension;
            match planned {
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

/// Trains `case`'s layer on `rank`'s shard for its steps, every output NaN-poisoned first,
/// and downloads what each step gave.
pub fn run_rank(
    case: &SyncCase,
    rank: usize,
    ctx: &GpuContext,
    exchange: &dyn Exchange,
) -> Vec<StepResult> {
    let shard = &case.shards[rank];
    let (shape, layout) = (&shard.shape[..], shard.layout);
    let mut layer = BatchNorm::with_config(ctx, case.channels, case.config).expect("layer");
    if case.config.affine {
        let (gamma, beta) = parameters(case);
        layer.set_parameters(&gamma, &beta).expect("parameters");
    }
    let mut layer = SyncBatchNorm::new(layer);
    (0..case.steps)
        .map(|step| {
            let (x_data, dy_data) = inputs(case, rank, step);
            let (x, _) = upload_to(ctx, &x_data, shape, layout);
            let (dy, _) = upload_to(ctx, &dy_data, shape, layout);
            let y = filled_on(ctx, shape, layout, f32::NAN);
            let dx = filled_on(ctx, shape, layout, f32::NAN);
            let saved = layer
                .forward_into(&x, &y, exchange)
                .unwrap_or_else(|e| panic!("rank {rank} step {step} forward: {e}"));
            let grads = layer
                .backward_into(&x, &dy, &dx, &saved, exchange)
                .unwrap_or_else(|e| panic!("rank {rank} step {step} backward: {e}"));
            let (mean, invstd) = saved.stats().read().expect("saved statistics");
            let (running_mean, running_var) =
                layer.layer().running_statistics().unwrap_or_default();
            let (dgamma, dbeta) = grads
                .map(|g| g.read().expect("dgamma and dbeta"))
                .unwrap_or_default();
            StepResult {
                x: x_data,
                dy: dy_data,
                y: y.to_vec().expect("y"),
                mean,
                invstd,
                running_mean,
                running_var,
                dx: dx.to_vec().expect("dx"),
                dgamma,
                dbeta,
            }
        })
        .collect()
}

/// Every rank's results, gathered over the group's exchange (lengths first, then the words
/// padded to the longest rank's).
pub fn gather_runs(exchange: &dyn Exchange, run: &[StepResult]) -> Vec<Vec<StepResult>> {
    let mut words = vec![run.len() as u32];
    for step in run {
        for vector in step.vectors() {
            words.push(vector.len() as u32);
            words.extend(vector.iter().map(|v| v.to_bits()));
        }
    }
    let lengths = exchange.all_gather(&[words.len() as u32]).expect("lengths");
    let longest = *lengths.iter().max().expect("ranks") as usize;
    words.resize(longest, 0);
    let gathered = exchange.all_gather(&words).expect("results");
    gathered
        .chunks(longest)
        .map(|words| {
            let mut at = 1;
            let mut next = || {
                let len = words[at] as usize;
                let vector = words[at + 1..at + 1 + len]
                    .iter()
                    .map(|&w| f32::from_bits(w))
                    .collect();
                at += 1 + len;
                vector
            };
            (0..words[0])
                .map(|_| StepResult {
                    x: next(),
                    dy: next(),
                    y: next(),
                    mean: next(),
                    invstd: next(),
                    running_mean: next(),
                    running_var: next(),
                    dx: next(),
                    dgamma: next(),
                    dbeta: next(),
                })
                .collect()
        })
        .collect()
}

/// A shard's values as rows of C (row = outer index, then inner index), in memory order of
/// nothing in particular but the same for x, dy, y and dx of one shard.
pub fn rows(data: &[f32], shard: &Shard) -> Vec<f32> {
    let view = shard.view();
    let mut rows = Vec::with_capacity(data.len());
    for o in 0..view.outer {
        for i in 0..view.inner {
            rows.extend((0..view.channels).map(|c| data[view.index(o, c, i)]));
        }
    }
    rows
}

/// The whole batch's rows: every rank's, in rank order.
fn whole(
    runs: &[Vec<StepResult>],
    case: &SyncCase,
    step: usize,
    pick: fn(&StepResult) -> &[f32],
) -> Vec<f32> {
    runs.iter()
        .zip(&case.shards)
        .flat_map(|(run, shard)| rows(pick(&run[step]), shard))
        .collect()
}

fn assert_bitwise_equal(what: &str, rank: usize, got: &[f32], want: &[f32]) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(got),
        bits(want),
        "{what}: rank {rank} differs from rank 0"
    );
}

/// Checks every rank's results of `case` as one batch (see the module docs); `ctx` runs the
/// single-device layer on the whole batch.
pub fn check_group(case: &SyncCase, runs: &[Vec<StepResult>], ctx: &GpuContext) {
    assert_eq!(runs.len(), case.shards.len(), "one run per rank");
    let c = case.channels;
    let total: usize = case
        .shards
        .iter()
        .map(|s| s.view().values_per_channel())
        .sum();
    let whole_shape = [total, c];
    let (gamma, beta) = parameters(case);
    let affine = case.config.affine;
    let (gamma, beta) = (affine.then_some(&gamma[..]), affine.then_some(&beta[..]));
    // A sum over all ranks passes through each rank's reduction, then the ranks' sum.
    let depth = case
        .shards
        .iter()
        .zip(0..)
        .filter(|(shard, _)| !shard.view().is_empty())
        .map(|(shard, rank)| {
            let ctx = rank_context(rank, shard.planned);
            sum_depth(&plan_of(
                &ctx,
                &shard.shape,
                shard.layout,
                Operation::Backward,
            ))
        })
        .fold(0.0, f64::max)
        + case.shards.len() as f64;
    let mut single = BatchNorm::with_config(ctx, c, case.config).expect("single-device layer");
    if let (Some(g), Some(b)) = (gamma, beta) {
        single.set_parameters(g, b).expect("parameters");
    }
    let mut running_mean = vec![0.0f64; c];
    let mut running_var = vec![1.0f64; c];
    for step in 0..case.steps {
        let what = format!(
            "{} ranks {:?} step {step}",
            runs.len(),
            case.config.momentum
        );
        // Every rank holds bitwise the same statistics.
        for (rank, run) in runs.iter().enumerate() {
            let (got, want) = (&run[step], &runs[0][step]);
            assert_bitwise_equal(&format!("{what}: mean"), rank, &got.mean, &want.mean);
            assert_bitwise_equal(&format!("{what}: invstd"), rank, &got.invstd, &want.invstd);
            assert_bitwise_equal(
                &format!("{what}: running mean"),
                rank,
                &got.running_mean,
                &want.running_mean,
            );
            assert_bitwise_equal(
                &format!("{what}: running var"),
                rank,
                &got.running_var,
                &want.running_var,
            );
        }
        let x =
            ArrayD::from_shape_vec(IxDyn(&whole_shape), whole(runs, case, step, |s| &s.x)).unwrap();
        let dy = ArrayD::from_shape_vec(IxDyn(&whole_shape), whole(runs, case, step, |s| &s.dy))
            .unwrap();
        let y = whole(runs, case, step, |s| &s.y);
        let dx = whole(runs, case, step, |s| &s.dx);
        let saved = Saved {
            mean: runs[0][step].mean.clone(),
            invstd: runs[0][step].invstd.clone(),
        };
        let inputs = ForwardInputs {
            x: x.view(),
            layout: Layout::ChannelsFirst,
            gamma,
            beta,
            eps: case.config.eps,
        };
        require(check_batch_statistics(
            &what,
            &inputs,
            &saved,
            Channels::All,
        ));
        require(check_output(&what, &inputs, &saved, &y, Channels::All));
        let stats = reference::batch_statistics(x.view(), Layout::ChannelsFirst, case.config.eps);
        if case.config.track_running_stats {
            let momentum = case.config.momentum.unwrap_or(1.0 / (step + 1) as f64);
            reference::update_running_statistics(
                &mut running_mean,
                &mut running_var,
                &stats,
                total,
                momentum,
            );
            require(check_running_statistics(
                &what,
                &running_mean,
                &running_var,
                &stats,
                &runs[0][step].running_mean,
                &runs[0][step].running_var,
                Channels::All,
            ));
        }
        let backward = BackwardInputs {
            forward: inputs.clone(),
            dy: dy.view(),
            saved: &saved,
            through: Through::Batch,
            depth,
        };
        require(check_input_gradient(&what, &backward, &dx, Channels::All));
        let summed = |pick: fn(&StepResult) -> &[f32]| -> Vec<f32> {
            (0..c)
                .map(|k| {
                    runs.iter()
                        .map(|run| f64::from(pick(&run[step])[k]))
                        .sum::<f64>() as f32
                })
                .collect()
        };
        if affine {
            let (dgamma, dbeta) = (summed(|s| &s.dgamma), summed(|s| &s.dbeta));
            require(check_parameter_gradients(
                &what,
                &backward,
                &dgamma,
                &dbeta,
                Channels::All,
            ));
        } else {
            assert!(
                runs.iter().all(|run| run[step].dgamma.is_empty()),
                "{what}: no affine, no dgamma"
            );
        }
        // The single-device layer on the whole batch: the same statistics within the checks'
        // bounds of each (both are held to them against float64).
        let (x_single, _) = upload_to(
            ctx,
            x.as_slice().unwrap(),
            &whole_shape,
            Layout::ChannelsFirst,
        );
        let (dy_single, _) = upload_to(
            ctx,
            dy.as_slice().unwrap(),
            &whole_shape,
            Layout::ChannelsFirst,
        );
        let out = single.forward(&x_single).expect("single-device forward");
        let single_saved = read_saved(&out.saved);
        require(compare_batch_statistics(
            &format!("{what}: single-device"),
            &stats,
            &single_saved,
            Channels::All,
        ));
        for k in 0..c {
            let mean_tol =
                2.0 * (1e-6 / stats.invstd[k] + 4.0 * stats.mean[k].abs() * UNIT_ROUNDOFF);
            assert!(
                (f64::from(saved.mean[k]) - f64::from(single_saved.mean[k])).abs() <= mean_tol,
                "{what}: mean[{k}] {} against the single-device {}",
                saved.mean[k],
                single_saved.mean[k]
            );
            let invstd_tol = 2e-5 * stats.invstd[k];
            assert!(
                (f64::from(saved.invstd[k]) - f64::from(single_saved.invstd[k])).abs()
                    <= invstd_tol,
                "{what}: invstd[{k}] {} against the single-device {}",
                saved.invstd[k],
                single_saved.invstd[k]
            );
        }
        if case.config.track_running_stats {
            let (single_mean, single_var) = single.running_statistics().unwrap();
            for k in 0..c {
                let mean_tol = 2.0
                    * (1e-6 / stats.invstd[k]
                        + 1e-5 * running_mean[k].abs()
                        + 4.0 * stats.mean[k].abs() * UNIT_ROUNDOFF);
                let var_tol = 2.0 * (1e-6 + 1e-5 * running_var[k].abs());
                let (got_mean, got_var) =
                    (runs[0][step].running_mean[k], runs[0][step].running_var[k]);
                assert!(
                    (f64::from(got_mean) - f64::from(single_mean[k])).abs() <= mean_tol,
                    "{what}: running mean[{k}]"
                );
                assert!(
                    (f64::from(got_var) - f64::from(single_var[k])).abs() <= var_tol,
                    "{what}: running var[{k}]"
                );
            }
        }
        let grads = single
            .backward(&x_single, &dy_single, &out.saved)
            .expect("single-device backward");
        if let Some(params) = grads.params {
            let (single_dgamma, single_dbeta) = params.read().unwrap();
            let single_backward = BackwardInputs {
                saved: &single_saved,
                ..backward.clone()
            };
            require(check_parameter_gradients(
                &format!("{what}: single-device"),
                &single_backward,
                &single_dgamma,
                &single_dbeta,
                Channels::All,
            ));
        }
    }
}
