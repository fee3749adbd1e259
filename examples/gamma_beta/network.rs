//! The network, 64 -> 256 -> 256 -> 256 -> 10, in its five variants: linear layers, ReLU,
//! softmax cross-entropy and the parameters on the host (ndarray), each batch norm behind
//! [`Norm`] (the crate's GPU kernels, or the f64 reference for the start-up check).

use ndarray::{Array1, Array2, Axis};
use serde::Serialize;

use super::data::{CLASSES, PIXELS};
use super::real::Real;
use super::rng::Rng;
use super::ExperimentResult;

/// Widths of the layers, input to output.
pub const WIDTHS: [usize; 5] = [PIXELS, 256, 256, 256, CLASSES];
/// Hidden layers, each with a batch norm in the variants that have one.
pub const HIDDEN: usize = WIDTHS.len() - 2;

/// Where the batch norm of a hidden layer sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Arrangement {
    /// (i) Linear -> BN -> ReLU.
    BeforeRelu,
    /// (ii) Linear -> ReLU -> BN: each batch norm feeds a linear layer directly.
    AfterRelu,
    /// Linear -> ReLU.
    NoBatchNorm,
}

/// One of the five networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Variant {
    /// Short name, used in files and plots.
    pub name: &'static str,
    /// Where the batch norms sit.
    pub arrangement: Arrangement,
    /// Whether the batch norms have gamma and beta.
    pub affine: bool,
}

/// The five variants, in the order of every table and plot.
pub const VARIANTS: [Variant; 5] = [
    Variant {
        name: "bn-relu+affine",
        arrangement: Arrangement::BeforeRelu,
        affine: true,
    },
    Variant {
        name: "bn-relu",
        arrangement: Arrangement::BeforeRelu,
        affine: false,
    },
    Variant {
        name: "relu-bn+affine",
        arrangement: Arrangement::AfterRelu,
        affine: true,
    },
    Variant {
        name: "relu-bn",
        arrangement: Arrangement::AfterRelu,
        affine: false,
    },
    Variant {
        name: "no-bn",
        arrangement: Arrangement::NoBatchNorm,
        affine: false,
    },
];

impl Variant {
    fn has_batch_norm(self) -> bool {
        self.arrangement != Arrangement::NoBatchNorm
    }
}

/// All trainable values, or a gradient of them: weights `[in, out]`, biases, and gamma and
/// beta per hidden layer (empty without them).
#[derive(Clone, Debug, PartialEq)]
pub struct Parameters<T> {
    /// One per layer.
    pub weights: Vec<Array2<T>>,
    /// One per layer.
    pub biases: Vec<Array1<T>>,
    /// One per hidden layer when affine, else none.
    pub gamma: Vec<Array1<T>>,
    /// One per hidden layer when affine, else none.
    pub beta: Vec<Array1<T>>,
}

impl Parameters<f32> {
    /// Glorot-uniform weights (U(-a, a), a = sqrt(6 / (in + out))) from `seed`, zero biases,
    /// gamma 1 and beta 0 when `variant` is affine. Every variant of a seed gets the same
    /// weights.
    pub fn initial(seed: u64, variant: Variant) -> Self {
        let mut rng = Rng::new(seed, 1);
        let weights = WIDTHS
            .windows(2)
            .map(|pair| {
                let limit = (6.0 / (pair[0] + pair[1]) as f64).sqrt();
                Array2::from_shape_simple_fn((pair[0], pair[1]), || {
                    ((2.0 * rng.unit() - 1.0) * limit) as f32
                })
            })
            .collect();
        let biases = WIDTHS[1..].iter().map(|&n| Array1::zeros(n)).collect();
        let affine = variant.affine && variant.has_batch_norm();
        let per_hidden = |value: f32| -> Vec<Array1<f32>> {
            if affine {
                WIDTHS[1..=HIDDEN]
                    .iter()
                    .map(|&n| Array1::from_elem(n, value))
                    .collect()
            } else {
                Vec::new()
            }
        };
        Parameters {
            weights,
            biases,
            gamma: per_hidden(1.0),
            beta: per_hidden(0.0),
        }
    }

    /// The same values in f64.
    pub fn widened(&self) -> Parameters<f64> {
        self.map(|v| f64::from(*v))
    }
}

impl<T: Real> Parameters<T> {
    fn map<U>(&self, f: impl Fn(&T) -> U + Copy) -> Parameters<U> {
        Parameters {
            weights: self.weights.iter().map(|w| w.map(f)).collect(),
            biases: self.biases.iter().map(|b| b.map(f)).collect(),
            gamma: self.gamma.iter().map(|g| g.map(f)).collect(),
            beta: self.beta.iter().map(|b| b.map(f)).collect(),
        }
    }

    fn vectors(&self) -> impl Iterator<Item = &[T]> {
        let weights = self.weights.iter().map(|w| w.as_slice().expect("standard"));
        let vectors = self.biases.iter().chain(&self.gamma).chain(&self.beta);
        weights.chain(vectors.map(|v| v.as_slice().expect("standard")))
    }

    fn vectors_mut(&mut self) -> impl Iterator<Item = &mut [T]> {
        let weights = self
            .weights
            .iter_mut()
            .map(|w| w.as_slice_mut().expect("standard"));
        let vectors = self
            .biases
            .iter_mut()
            .chain(&mut self.gamma)
            .chain(&mut self.beta);
        weights.chain(vectors.map(|v| v.as_slice_mut().expect("standard")))
    }

    /// `self + alpha * direction` (an SGD step is alpha = -learning rate).
    pub fn plus_scaled(&self, alpha: f64, direction: &Parameters<T>) -> Parameters<T> {
        let mut out = self.clone();
        let alpha = T::from_f64(alpha);
        for (values, step) in out.vectors_mut().zip(direction.vectors()) {
            for (value, &d) in values.iter_mut().zip(step) {
                *value = *value + alpha * d;
            }
        }
        out
    }

    /// Euclidean norm of `self - other` over every value, in f64.
    pub fn distance(&self, other: &Parameters<T>) -> f64 {
        self.vectors()
            .zip(other.vectors())
            .flat_map(|(a, b)| a.iter().zip(b))
            .map(|(&a, &b)| (a.to_f64() - b.to_f64()).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// Euclidean norm over every value, in f64.
    pub fn norm(&self) -> f64 {
        self.vectors()
            .flatten()
            .map(|&v| v.to_f64().powi(2))
            .sum::<f64>()
            .sqrt()
    }
}

/// How a batch norm normalizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics; the running statistics and the batch count are updated.
    Train,
    /// Batch statistics; nothing of the layer's state changes (the optimization probes).
    Probe,
    /// Running statistics (test accuracy, full training-set loss).
    Eval,
}

/// A batch norm's backward: dx, and (dgamma, dbeta) when affine.
pub type NormGradients<T> = (Array2<T>, Option<(Array1<T>, Array1<T>)>);

/// The batch norms of one network, one per hidden layer.
pub trait Norm<T: Real> {
    /// What the backward pass needs from a forward.
    type Saved;

    /// Normalizes `x` `[batch, channels]` with hidden layer `layer`'s batch norm; `affine` is
    /// (gamma, beta) when the variant has them.
    fn forward(
        &mut self,
        layer: usize,
        x: &Array2<T>,
        affine: Option<(&Array1<T>, &Array1<T>)>,
        mode: Mode,
    ) -> ExperimentResult<(Array2<T>, Self::Saved)>;

    /// dx, and (dgamma, dbeta) when affine, for the forward that saved `saved`.
    fn backward(
        &mut self,
        saved: &Self::Saved,
        dy: &Array2<T>,
    ) -> ExperimentResult<NormGradients<T>>;
}

/// What the backward pass of one hidden layer needs.
struct HiddenCache<T, S> {
    /// The layer's input.
    input: Array2<T>,
    /// Where its ReLU let the value through.
    relu_open: Array2<bool>,
    /// Its batch norm's forward, when it has one.
    saved: Option<S>,
}

/// A forward pass: the outcome, each hidden layer's cache, and the last layer's input.
type ForwardPass<T, S> = (Outcome<T>, Vec<HiddenCache<T, S>>, Array2<T>);

/// A network's parameters, variant and batch norms, run forward and backward.
pub struct Network<'a, T: Real, N: Norm<T>> {
    /// The values the network runs with.
    pub params: &'a Parameters<T>,
    /// Which of the five networks.
    pub variant: Variant,
    /// Its batch norms.
    pub norm: &'a mut N,
}

/// A forward pass over labelled inputs.
pub struct Outcome<T> {
    /// Mean cross-entropy, accumulated in f64.
    pub loss: f64,
    /// Inputs whose largest logit is their label's.
    pub correct: usize,
    /// dloss/dlogits.
    dlogits: Array2<T>,
}

impl<T: Real, N: Norm<T>> Network<'_, T, N> {
    /// The mean loss on `(x, labels)` and its gradient with respect to every parameter.
    pub fn loss_and_gradient(
        &mut self,
        x: &Array2<T>,
        labels: &[usize],
        mode: Mode,
    ) -> ExperimentResult<(f64, Parameters<T>)> {
        let (outcome, caches, last_input) = self.forward(x, labels, mode)?;
        let gradient = self.backward(&outcome.dlogits, &caches, &last_input)?;
        Ok((outcome.loss, gradient))
    }

    /// The mean loss and the count of correct answers, batch norms from running statistics.
    pub fn evaluate(&mut self, x: &Array2<T>, labels: &[usize]) -> ExperimentResult<Outcome<T>> {
        Ok(self.forward(x, labels, Mode::Eval)?.0)
    }

    /// The outcome, each hidden layer's cache, and the last layer's input.
    fn forward(
        &mut self,
        x: &Array2<T>,
        labels: &[usize],
        mode: Mode,
    ) -> ExperimentResult<ForwardPass<T, N::Saved>> {
        let params = self.params;
        let mut h = x.clone();
        let mut caches = Vec::with_capacity(HIDDEN);
        for layer in 0..HIDDEN {
            let z = h.dot(&params.weights[layer]) + &params.biases[layer];
            let affine =
                (!params.gamma.is_empty()).then(|| (&params.gamma[layer], &params.beta[layer]));
            let (out, relu_open, saved) = match self.variant.arrangement {
                Arrangement::BeforeRelu => {
                    let (normalized, saved) = self.norm.forward(layer, &z, affine, mode)?;
                    (relu(&normalized), open(&normalized), Some(saved))
                }
                Arrangement::AfterRelu => {
                    let (normalized, saved) = self.norm.forward(layer, &relu(&z), affine, mode)?;
                    (normalized, open(&z), Some(saved))
                }
                Arrangement::NoBatchNorm => (relu(&z), open(&z), None),
            };
            caches.push(HiddenCache {
                input: h,
                relu_open,
                saved,
            });
            h = out;
        }
        let logits = h.dot(&params.weights[HIDDEN]) + &params.biases[HIDDEN];
        Ok((cross_entropy(&logits, labels), caches, h))
    }

    fn backward(
        &mut self,
        dlogits: &Array2<T>,
        caches: &[HiddenCache<T, N::Saved>],
        last_input: &Array2<T>,
    ) -> ExperimentResult<Parameters<T>> {
        let params = self.params;
        let mut weights = vec![last_input.t().dot(dlogits)];
        let mut biases = vec![dlogits.sum_axis(Axis(0))];
        let (mut gamma, mut beta) = (Vec::new(), Vec::new());
        let mut dh = dlogits.dot(&params.weights[HIDDEN].t());
        for (layer, cache) in caches.iter().enumerate().rev() {
            let mut norm_backward = |dy: &Array2<T>| -> ExperimentResult<Array2<T>> {
                let saved = cache.saved.as_ref().expect("a batch-norm variant saves");
                let (dx, affine) = self.norm.backward(saved, dy)?;
                if let Some((dgamma, dbeta)) = affine {
                    gamma.push(dgamma);
                    beta.push(dbeta);
                }
                Ok(dx)
            };
            let dz = match self.variant.arrangement {
                Arrangement::BeforeRelu => norm_backward(&masked(&dh, &cache.relu_open))?,
                Arrangement::AfterRelu => masked(&norm_backward(&dh)?, &cache.relu_open),
                Arrangement::NoBatchNorm => masked(&dh, &cache.relu_open),
            };
            weights.push(cache.input.t().dot(&dz));
            biases.push(dz.sum_axis(Axis(0)));
            if layer > 0 {
                dh = dz.dot(&params.weights[layer].t());
            }
        }
        weights.reverse();
        for list in [&mut biases, &mut gamma, &mut beta] {
            list.reverse();
        }
        Ok(Parameters {
            weights,
            biases,
            gamma,
            beta,
        })
    }
}

fn relu<T: Real>(x: &Array2<T>) -> Array2<T> {
    x.mapv(|v| if v > T::zero() { v } else { T::zero() })
}

fn open<T: Real>(x: &Array2<T>) -> Array2<bool> {
    x.mapv(|v| v > T::zero())
}

fn masked<T: Real>(dy: &Array2<T>, open: &Array2<bool>) -> Array2<T> {
    ndarray::Zip::from(dy)
        .and(open)
        .map_collect(|&d, &o| if o { d } else { T::zero() })
}

/// Mean softmax cross-entropy, the count of correct answers, and dloss/dlogits
/// = (softmax - one_hot) / batch. Each row is shifted by its largest logit so exp never
/// overflows.
fn cross_entropy<T: Real>(logits: &Array2<T>, labels: &[usize]) -> Outcome<T> {
    let batch = logits.nrows();
    let mut dlogits = Array2::zeros(logits.raw_dim());
    let mut total = 0.0;
    let mut correct = 0;
    for ((row, label), mut grad) in logits
        .rows()
        .into_iter()
        .zip(labels)
        .zip(dlogits.rows_mut())
    {
        let (argmax, max) =
            row.iter().enumerate().fold(
                (0, row[0]),
                |best, (j, &v)| {
                    if v > best.1 {
                        (j, v)
                    } else {
                        best
                    }
                },
            );
        correct += usize::from(argmax == *label);
        let exps = row.mapv(|v| (v - max).exp());
        let sum = exps.sum();
        total += (sum.ln() - (row[*label] - max)).to_f64();
        let scale = T::one() / (sum * T::from_f64(batch as f64));
        grad.assign(&(exps * scale));
        grad[*label] = grad[*label] - T::one() / T::from_f64(batch as f64);
    }
    Outcome {
        loss: total / batch as f64,
        correct,
        dlogits,
    }
}
