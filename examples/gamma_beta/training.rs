//! One training run (a variant, a learning rate, a seed): plain SGD on minibatches of 128 in a
//! seeded order, with the curves it records: the minibatch loss at every step; the full
//! training-set loss and the test accuracy (batch norms from running statistics) every
//! `eval_every` steps; and the probes every `probe_every` steps.

use indicatif::ProgressBar;
use ndarray::{Array2, Axis};
use serde::Serialize;

use super::data::{Digits, Split};
use super::gpu_norm::GpuNorm;
use super::network::{Mode, Network, Norm, Parameters, Variant};
use super::probes::{probe, Probe};
use super::real::Real;
use super::rng::Rng;
use super::ExperimentResult;

/// Images per minibatch.
pub const BATCH: usize = 128;

/// The minibatches of one seed: each epoch a fresh shuffle of the training set, cut into
/// whole batches of 128 (the 1297 - 10 x 128 = 17 left over wait for the next epoch's shuffle).
pub struct Schedule {
    rng: Rng,
    order: Vec<usize>,
    next: usize,
}

impl Schedule {
    /// The order for `seed` over `images` training images.
    pub fn new(seed: u64, images: usize) -> Self {
        Schedule {
            rng: Rng::new(seed, 2),
            order: (0..images).collect(),
            next: images,
        }
    }

    /// The next minibatch's rows.
    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.next + BATCH > self.order.len() {
            self.rng.shuffle(&mut self.order);
            self.next = 0;
        }
        self.next += BATCH;
        self.order[self.next - BATCH..self.next].to_vec()
    }
}

/// A minibatch's images and labels, in the network's float type.
pub fn batch<T: Real>(data: &Digits, rows: &[usize]) -> (Array2<T>, Vec<usize>) {
    let images = data
        .images
        .select(Axis(0), rows)
        .mapv(|v| T::from_f64(f64::from(v)));
    (images, rows.iter().map(|&r| data.labels[r]).collect())
}

/// How long a run is and how often it measures.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Cadence {
    /// SGD steps.
    pub steps: usize,
    /// Probes before every step that is a multiple of this.
    pub probe_every: usize,
    /// Training-set loss and test accuracy after every step that is a multiple of this (and
    /// before the first).
    pub eval_every: usize,
}

/// Everything one run recorded.
#[derive(Clone, Debug, Serialize)]
pub struct RunCurves {
    /// The variant's name.
    pub variant: &'static str,
    /// The SGD learning rate.
    pub learning_rate: f64,
    /// The seed of the initial weights and the batch order.
    pub seed: u64,
    /// The minibatch loss of every step, before its update (batch statistics).
    pub minibatch_loss: Vec<f64>,
    /// Steps taken at each evaluation.
    pub eval_steps: Vec<usize>,
    /// Mean loss over the whole training set at each evaluation.
    pub train_loss: Vec<f64>,
    /// Share of test images classified right at each evaluation.
    pub test_accuracy: Vec<f64>,
    /// The instruments, every `probe_every` steps.
    pub probes: Vec<Probe>,
}

impl RunCurves {
    /// The last evaluation's training loss.
    pub fn final_train_loss(&self) -> f64 {
        *self
            .train_loss
            .last()
            .expect("at least the initial evaluation")
    }

    /// The last evaluation's test accuracy.
    pub fn final_test_accuracy(&self) -> f64 {
        *self
            .test_accuracy
            .last()
            .expect("at least the initial evaluation")
    }
}

/// Trains `variant` from `seed`'s initial weights on the GPU and records its curves.
#[allow(clippy::too_many_arguments)]
pub fn train(
    ctx: &wgpu_batchnorm::GpuContext,
    split: &Split,
    variant: Variant,
    learning_rate: f64,
    seed: u64,
    cadence: Cadence,
    progress: &ProgressBar,
) -> ExperimentResult<RunCurves> {
    let mut params = Parameters::initial(seed, variant);
    let mut norm = GpuNorm::new(ctx, variant.affine)?;
    let mut schedule = Schedule::new(seed, split.train.labels.len());
    let train_set = batch::<f32>(
        &split.train,
        &(0..split.train.labels.len()).collect::<Vec<_>>(),
    );
    let test_set = batch::<f32>(
        &split.test,
        &(0..split.test.labels.len()).collect::<Vec<_>>(),
    );
    let mut curves = RunCurves {
        variant: variant.name,
        learning_rate,
        seed,
        minibatch_loss: Vec::with_capacity(cadence.steps),
        eval_steps: Vec::new(),
        train_loss: Vec::new(),
        test_accuracy: Vec::new(),
        probes: Vec::new(),
    };
    let mut evaluate = |params: &Parameters<f32>, norm: &mut GpuNorm, step: usize| {
        let mut network = Network {
            params,
            variant,
            norm,
        };
        let train = network.evaluate(&train_set.0, &train_set.1)?;
        let test = network.evaluate(&test_set.0, &test_set.1)?;
        curves.eval_steps.push(step);
        curves.train_loss.push(train.loss);
        curves
            .test_accuracy
            .push(test.correct as f64 / test_set.1.len() as f64);
        ExperimentResult::Ok(())
    };
    evaluate(&params, &mut norm, 0)?;
    let mut probes = Vec::new();
    let mut losses = Vec::with_capacity(cadence.steps);
    for step in 0..cadence.steps {
        let (x, labels) = batch::<f32>(&split.train, &schedule.next_batch());
        let (loss, gradient) = Network {
            params: &params,
            variant,
            norm: &mut norm,
        }
        .loss_and_gradient(&x, &labels, Mode::Train)?;
        losses.push(loss);
        if step % cadence.probe_every == 0 {
            probes.push(probe(
                step,
                &params,
                &gradient,
                variant,
                &mut norm,
                &x,
                &labels,
                learning_rate,
            )?);
        }
        params = params.plus_scaled(-learning_rate, &gradient);
        if (step + 1) % cadence.eval_every == 0 || step + 1 == cadence.steps {
            evaluate(&params, &mut norm, step + 1)?;
        }
        progress.inc(1);
    }
    curves.minibatch_loss = losses;
    curves.probes = probes;
    Ok(curves)
}

/// The minibatch losses of the first `steps` steps of `norm`'s network from `params`.
pub fn first_losses<T: Real, N: Norm<T>>(
    data: &Digits,
    params: Parameters<T>,
    variant: Variant,
    norm: &mut N,
    seed: u64,
    learning_rate: f64,
    steps: usize,
) -> ExperimentResult<Vec<f64>> {
    let mut schedule = Schedule::new(seed, data.labels.len());
    let mut params = params;
    let mut losses = Vec::with_capacity(steps);
    for _ in 0..steps {
        let (x, labels) = batch::<T>(data, &schedule.next_batch());
        let (loss, gradient) = Network {
            params: &params,
            variant,
            norm: &mut *norm,
        }
        .loss_and_gradient(&x, &labels, Mode::Train)?;
        losses.push(loss);
        params = params.plus_scaled(-learning_rate, &gradient);
    }
    Ok(losses)
}
