//! Data-parallel training with synchronized batch norm over MPI:
//!
//! ```sh
//! cargo build --release --features mpi --example sync_bn
//! mpirun -np 2 target/release/examples/sync_bn
//! ```
//!
//! A small network, x -> Linear(16, 64) -> SyncBatchNorm(64) -> ReLU -> Linear(64, 1) (linear
//! layers without bias), squared error, trained with SGD on a batch of 256 rows split over the
//! ranks (unevenly when they do not divide it). Linear layers, ReLU and loss run on the host;
//! the batch norm on each rank's GPU. Parameter gradients are summed over the ranks, as a
//! data-parallel trainer does. Every rank also trains the same network on the whole batch alone
//! (plain `BatchNorm`) and prints, step by step, that its merged statistics, running statistics
//! and summed gradients match that run. Then it times steps: the share of a step spent in the
//! batch norm's exchanges, and the synchronized batch norm's calls against the same calls of an
//! unsynchronized layer on the rank's shard.

use std::cell::Cell;
use std::time::{Duration, Instant};

use wgpu_batchnorm::sync::{Exchange, MpiExchange, SyncBatchNorm, SyncError};

type World = MpiExchange<mpi::topology::SimpleCommunicator>;
use wgpu_batchnorm::{BatchNorm, GpuContext, Layout, Tensor};

const INPUTS: usize = 16;
const CHANNELS: usize = 64;
const BATCH: usize = 256;
const LEARNING_RATE: f32 = 0.05;
const CHECKED_STEPS: usize = 5;
const TIMED_STEPS: usize = 30;

/// An exchange that adds up the wall time its all-gathers take.
struct Timed<E> {
    inner: E,
    spent: Cell<Duration>,
}

impl<E: Exchange> Exchange for Timed<E> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn ranks(&self) -> usize {
        self.inner.ranks()
    }
    fn all_gather(&self, local: &[u32]) -> Result<Vec<u32>, SyncError> {
        let start = Instant::now();
        let gathered = self.inner.all_gather(local);
        self.spent.set(self.spent.get() + start.elapsed());
        gathered
    }
}

/// Deterministic values in [-1, 1) (SplitMix64), the same on every rank.
fn uniform(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `a` [rows, inner] times `b` [inner, cols].
fn matmul(a: &[f32], b: &[f32], rows: usize, inner: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; rows * cols];
    for r in 0..rows {
        for k in 0..inner {
            let a_rk = a[r * inner + k];
            for c in 0..cols {
                out[r * cols + c] += a_rk * b[k * cols + c];
            }
        }
    }
    out
}

/// `a` [rows, inner] transposed times `b` [rows, cols].
fn matmul_tn(a: &[f32], b: &[f32], rows: usize, inner: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; inner * cols];
    for r in 0..rows {
        for k in 0..inner {
            for c in 0..cols {
                out[k * cols + c] += a[r * inner + k] * b[r * cols + c];
            }
        }
    }
    out
}

/// The network's parameters (the batch norm's gamma and beta live in its layer).
#[derive(Clone)]
struct Linear {
    w1: Vec<f32>,
    w2: Vec<f32>,
}

/// One step's batch-norm results and gradients, as the run saw them (summed over the ranks).
struct StepReport {
    mean: Vec<f32>,
    invstd: Vec<f32>,
    running: (Vec<f32>, Vec<f32>),
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
    dw1: Vec<f32>,
    dw2: Vec<f32>,
    loss: f32,
}

/// The batch norm of a run: synchronized over the ranks, or the whole batch alone.
enum Norm<'a> {
    /// The layer, and the group, whose all-gathers add up their time; the parameter
    /// gradients' sums go through the same group untimed.
    Synchronized(&'a mut SyncBatchNorm, &'a Timed<World>),
    Alone(&'a mut BatchNorm),
}

/// Sums `values` over the ranks, in rank order.
fn sum_over_ranks(exchange: &dyn Exchange, values: &[f32]) -> Vec<f32> {
    let bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
    let gathered = exchange.all_gather(&bits).expect("all-gather");
    (0..values.len())
        .map(|i| {
            gathered
                .chunks(values.len())
                .map(|part| f64::from(f32::from_bits(part[i])))
                .sum::<f64>() as f32
        })
        .collect()
}

/// One SGD step on `x` (rows of INPUTS) with targets `t`; the loss is the mean over the whole
/// batch of BATCH rows.
fn step(
    ctx: &GpuContext,
    linear: &mut Linear,
    mut norm: Norm<'_>,
    x: &[f32],
    t: &[f32],
) -> StepReport {
    let rows = t.len();
    let h = matmul(x, &linear.w1, rows, INPUTS, CHANNELS);
    let h_gpu = Tensor::from_slice(ctx, &h, &[rows, CHANNELS], Layout::ChannelsFirst).unwrap();
    let (y_gpu, saved, sync) = match &mut norm {
        Norm::Synchronized(layer, exchange) => {
            let out = layer
                .forward(&h_gpu, &**exchange)
                .expect("synchronized forward");
            (out.y, out.saved.stats().clone(), Some(out.saved))
        }
        Norm::Alone(layer) => {
            let out = layer.forward(&h_gpu).expect("forward");
            (out.y, out.saved, None)
        }
    };
    let y = y_gpu.to_vec().unwrap();
    let a: Vec<f32> = y.iter().map(|v| v.max(0.0)).collect();
    let out = matmul(&a, &linear.w2, rows, CHANNELS, 1);
    let residual: Vec<f32> = out.iter().zip(t).map(|(o, t)| o - t).collect();
    let mut loss = residual.iter().map(|r| 0.5 * r * r).sum::<f32>() / BATCH as f32;
    let dout: Vec<f32> = residual.iter().map(|r| r / BATCH as f32).collect();
    let mut dw2 = matmul_tn(&a, &dout, rows, CHANNELS, 1);
    let dy: Vec<f32> = (0..rows * CHANNELS)
        .map(|i| {
            if y[i] > 0.0 {
                dout[i / CHANNELS] * linear.w2[i % CHANNELS]
            } else {
                0.0
            }
        })
        .collect();
    let dy_gpu = Tensor::from_slice(ctx, &dy, &[rows, CHANNELS], Layout::ChannelsFirst).unwrap();
    let grads = match (&norm, &sync) {
        (Norm::Synchronized(layer, exchange), Some(saved)) => layer
            .backward(&h_gpu, &dy_gpu, saved, &**exchange)
            .expect("synchronized backward"),
        (Norm::Alone(layer), _) => layer.backward(&h_gpu, &dy_gpu, &saved).expect("backward"),
        _ => unreachable!("a synchronized forward saves synchronized statistics"),
    };
    let dh = grads.dx.to_vec().unwrap();
    let (mut dgamma, mut dbeta) = grads.params.expect("affine").read().unwrap();
    let mut dw1 = matmul_tn(x, &dh, rows, INPUTS, CHANNELS);
    let running;
    if let Norm::Synchronized(layer, exchange) = norm {
        // Data parallelism: every parameter gradient summed over the ranks.
        let group = &exchange.inner;
        dw1 = sum_over_ranks(group, &dw1);
        dw2 = sum_over_ranks(group, &dw2);
        dgamma = sum_over_ranks(group, &dgamma);
        dbeta = sum_over_ranks(group, &dbeta);
        loss = sum_over_ranks(group, &[loss])[0];
        update_affine(layer.layer_mut(), &dgamma, &dbeta);
        running = layer.layer().running_statistics().unwrap();
    } else if let Norm::Alone(layer) = norm {
        update_affine(layer, &dgamma, &dbeta);
        running = layer.running_statistics().unwrap();
    } else {
        unreachable!()
    }
    for (w, g) in linear.w1.iter_mut().zip(&dw1) {
        *w -= LEARNING_RATE * g;
    }
    for (w, g) in linear.w2.iter_mut().zip(&dw2) {
        *w -= LEARNING_RATE * g;
    }
    let (mean, invstd) = saved.read().unwrap();
    StepReport {
        mean,
        invstd,
        running,
        dgamma,
        dbeta,
        dw1,
        dw2,
        loss,
    }
}

fn update_affine(layer: &mut BatchNorm, dgamma: &[f32], dbeta: &[f32]) {
    let (mut gamma, mut beta) = layer.parameters().unwrap();
    for (p, g) in gamma.iter_mut().zip(dgamma) {
        *p -= LEARNING_RATE * g;
    }
    for (p, g) in beta.iter_mut().zip(dbeta) {
        *p -= LEARNING_RATE * g;
    }
    layer.set_parameters(&gamma, &beta).unwrap();
}

/// The largest |a - b| over the largest |b| (or 1 when all are below 1).
fn deviation(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(1.0f64, |m, v| m.max(f64::from(v.abs())));
    a.iter()
        .zip(b)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max)
        / scale
}

/// Median of durations, in milliseconds.
fn median_ms(mut values: Vec<Duration>) -> f64 {
    values.sort();
    values[values.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let universe = mpi::initialize().expect("MPI initializes once");
    let exchange = Timed {
        inner: MpiExchange::new(universe.world()),
        spent: Cell::new(Duration::ZERO),
    };
    let (rank, ranks) = (exchange.rank(), exchange.ranks());
    let ctx = GpuContext::new().expect("a GPU adapter");
    // Rows of each rank: BATCH split as evenly as it goes, the first ranks one more.
    let first_row = |r: usize| r * (BATCH / ranks) + r.min(BATCH % ranks);
    let rows = first_row(rank)..first_row(rank + 1);
    let x_all = uniform(BATCH * INPUTS, 1);
    let t_all: Vec<f32> = uniform(BATCH, 2).iter().map(|v| v * 2.0 + 0.5).collect();
    let x = &x_all[rows.start * INPUTS..rows.end * INPUTS];
    let t = &t_all[rows.clone()];
    let start = Linear {
        w1: uniform(INPUTS * CHANNELS, 3)
            .iter()
            .map(|v| v * 0.5)
            .collect(),
        w2: uniform(CHANNELS, 4).iter().map(|v| v * 0.3).collect(),
    };
    if rank == 0 {
        println!(
            "sync_bn: {ranks} ranks on {}, batch {BATCH} ({INPUTS} -> {CHANNELS} -> BN -> ReLU -> 1)",
            ctx.adapter()
        );
    }

    // Checked steps: the synchronized run against the whole batch alone, on every rank.
    let (mut sync_linear, mut whole_linear) = (start.clone(), start.clone());
    let mut sync_norm = SyncBatchNorm::new(BatchNorm::new(&ctx, CHANNELS).unwrap());
    let mut whole_norm = BatchNorm::new(&ctx, CHANNELS).unwrap();
    let mut all_match = true;
    for s in 0..CHECKED_STEPS {
        let ours = step(
            &ctx,
            &mut sync_linear,
            Norm::Synchronized(&mut sync_norm, &exchange),
            x,
            t,
        );
        let whole = step(
            &ctx,
            &mut whole_linear,
            Norm::Alone(&mut whole_norm),
            &x_all,
            &t_all,
        );
        let statistics = [
            deviation(&ours.mean, &whole.mean),
            deviation(&ours.invstd, &whole.invstd),
            deviation(&ours.running.0, &whole.running.0),
            deviation(&ours.running.1, &whole.running.1),
        ]
        .into_iter()
        .fold(0.0, f64::max);
        let gradients = [
            deviation(&ours.dgamma, &whole.dgamma),
            deviation(&ours.dbeta, &whole.dbeta),
            deviation(&ours.dw1, &whole.dw1),
            deviation(&ours.dw2, &whole.dw2),
        ]
        .into_iter()
        .fold(0.0, f64::max);
        // float32 results of different summation orders: a few units of 2^-24 relative.
        let ok = statistics < 1e-5 && gradients < 1e-5;
        all_match &= ok;
        println!(
            "rank {rank} step {s}: loss {:.5} (whole batch {:.5}); statistics {} (largest relative \
             deviation {statistics:.1e}), gradients {} ({gradients:.1e})",
            ours.loss,
            whole.loss,
            if ok { "match" } else { "DIFFER" },
            if ok { "match" } else { "DIFFER" },
        );
    }

    // Timed steps: the synchronized layer's calls and exchanges, and the same calls of an
    // unsynchronized layer on this rank's shard alone.
    let shape = [rows.len(), CHANNELS];
    let h = matmul(x, &sync_linear.w1, rows.len(), INPUTS, CHANNELS);
    let h_gpu = Tensor::from_slice(&ctx, &h, &shape, Layout::ChannelsFirst).unwrap();
    let dy_gpu =
        Tensor::from_slice(&ctx, &uniform(h.len(), 5), &shape, Layout::ChannelsFirst).unwrap();
    let (y, dx) = (
        Tensor::zeros(&ctx, &shape, Layout::ChannelsFirst).unwrap(),
        Tensor::zeros(&ctx, &shape, Layout::ChannelsFirst).unwrap(),
    );
    let mut local_norm = BatchNorm::new(&ctx, CHANNELS).unwrap();
    let (mut step_times, mut exchange_times, mut bn_times, mut local_times) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..TIMED_STEPS {
        exchange.spent.set(Duration::ZERO);
        let started = Instant::now();
        step(
            &ctx,
            &mut sync_linear,
            Norm::Synchronized(&mut sync_norm, &exchange),
            x,
            t,
        );
        step_times.push(started.elapsed());
        exchange_times.push(exchange.spent.get());
        let started = Instant::now();
        let saved = sync_norm.forward_into(&h_gpu, &y, &exchange).unwrap();
        sync_norm
            .backward_into(&h_gpu, &dy_gpu, &dx, &saved, &exchange)
            .unwrap();
        bn_times.push(started.elapsed());
        let started = Instant::now();
        let saved = local_norm.forward_into(&h_gpu, &y).unwrap();
        local_norm
            .backward_into(&h_gpu, &dy_gpu, &dx, &saved)
            .unwrap();
        local_times.push(started.elapsed());
    }
    let (step_ms, exchange_ms) = (median_ms(step_times), median_ms(exchange_times));
    let (bn_ms, local_ms) = (median_ms(bn_times), median_ms(local_times));
    println!(
        "rank {rank}: step {step_ms:.2} ms, of which the batch norm's exchanges (4 all-gathers) \
         {exchange_ms:.3} ms = {:.1}% (medians of {TIMED_STEPS}); synchronized batch norm forward + \
         backward {bn_ms:.2} ms against {local_ms:.2} ms unsynchronized on the same shard",
        100.0 * exchange_ms / step_ms
    );
    if !all_match {
        eprintln!("rank {rank}: the synchronized run differs from the whole batch's");
        std::process::exit(1);
    }
}
