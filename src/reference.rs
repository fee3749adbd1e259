//! CPU reference for every batch-norm operation the GPU runs, accumulating in `f64`.
//!
//! This is the oracle the tests and benchmarks check the WGSL kernels against: one plain function
//! per GPU operation, written for clarity rather than speed, with PyTorch's semantics (see the
//! crate docs). Inputs of any float type that converts into `f64` are accepted; every sum,
//! statistic and output is computed in `f64`. Statistics use two passes (the mean, then the sum
//! of squared deviations from it), so a large offset costs no accuracy.
//!
//! Arrays are given in memory order with their shape in memory order (channels-last means
//! `[N, d1, ..., C]`), as [`ChannelView`] reads them; they are iterated in logical order, so a
//! view with non-standard strides gives the same answer as its standard-layout copy. Outputs have
//! the shape of `x`, in standard layout.
//!
//! Per-channel slices (`mean`, `invstd`, `gamma`, ...) have one value per channel. `gamma = None`
//! means 1 and `beta = None` means 0 (`affine = false`).

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::epilogue::kind::EpilogueKind;
use crate::layout::{ChannelView, Layout};

/// Per-channel batch statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStatistics {
    /// Mean of the M values of each channel.
    pub mean: Vec<f64>,
    /// Biased variance (divided by M) of each channel.
    pub var: Vec<f64>,
    /// `1 / sqrt(var + eps)` of each channel.
    pub invstd: Vec<f64>,
}

/// Gradients of batch norm.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    /// Gradient with respect to the input, shaped like the input.
    pub dx: ArrayD<f64>,
    /// Gradient with respect to gamma, per channel (computed even when not affine).
    pub dgamma: Vec<f64>,
    /// Gradient with respect to beta, per channel (computed even when not affine).
    pub dbeta: Vec<f64>,
}

/// Reads `shape` as `[outer][channels][inner]`.
///
/// Panics when the rank is below 2: the reference is a test oracle, and its callers check shapes.
fn channel_view(shape: &[usize], layout: Layout) -> ChannelView {
    ChannelView::new(shape, layout).expect("batch norm needs a shape of rank >= 2 ([N, C, ...])")
}

/// Panics unless a per-channel slice has one value per channel.
fn check_per_channel(what: &str, len: usize, channels: usize) {
    assert_eq!(
        len, channels,
        "{what} has {len} values but the input has {channels} channels"
    );
}

/// Value of an optional per-channel parameter, `default` when absent.
fn parameter<P: Copy + Into<f64>>(values: Option<&[P]>, channel: usize, default: f64) -> f64 {
    values.map_or(default, |v| v[channel].into())
}

/// The elements of `x` in logical order, each with its channel, as `(channel, value)`.
fn elements<'a, T: Copy + Into<f64>>(
    x: &'a ArrayViewD<'_, T>,
    view: &'a ChannelView,
) -> impl Iterator<Item = (usize, f64)> + 'a {
    x.iter()
        .enumerate()
        .map(|(index, &value)| (view.channel_of(index), value.into()))
}

/// (channel, x, dy) for every element, in logical order.
fn element_triples<'a, T, D>(
    x: &'a ArrayViewD<'_, T>,
    dy: &'a ArrayViewD<'_, D>,
    view: &'a ChannelView,
) -> impl Iterator<Item = (usize, f64, f64)> + 'a
where
    T: Copy + Into<f64>,
    D: Copy + Into<f64>,
{
    elements(x, view)
        .zip(dy.iter())
        .map(|((c, x), &dy)| (c, x, dy.into()))
}

/// dgamma = sum(dy * x_hat) and dbeta = sum(dy) per channel, x_hat = (x - mean) * invstd: the
/// same sums whichever statistics the forward used.
fn parameter_gradients<T, D>(
    x: &ArrayViewD<'_, T>,
    dy: &ArrayViewD<'_, D>,
    view: &ChannelView,
    mean: &[f64],
    invstd: &[f64],
) -> (Vec<f64>, Vec<f64>)
where
    T: Copy + Into<f64>,
    D: Copy + Into<f64>,
{
    let dbeta = channel_sums(
        view.channels,
        element_triples(x, dy, view).map(|(c, _, dy)| (c, dy)),
    );
    let dgamma = channel_sums(
        view.channels,
        element_triples(x, dy, view).map(|(c, x, dy)| (c, dy * (x - mean[c]) * invstd[c])),
    );
    (dgamma, dbeta)
}

/// Per-channel sums of `(channel, term)` pairs.
fn channel_sums(channels: usize, terms: impl Iterator<Item = (usize, f64)>) -> Vec<f64> {
    let mut sums = vec![0.0; channels];
    for (channel, term) in terms {
        sums[channel] += term;
    }
    sums
}

/// An array of `shape` (standard layout) filled with `values` in logical order.
fn array_from_values(shape: IxDyn, values: impl Iterator<Item = f64>) -> ArrayD<f64> {
    let mut array = ArrayD::zeros(shape);
    for (slot, value) in array.iter_mut().zip(values) {
        *slot = value;
    }
    array
}

/// Per-channel mean, biased variance and `invstd = 1 / sqrt(var + eps)` of `x` (training mode).
///
/// Two passes in `f64`: the mean, then the mean of squared deviations from it. With no values
/// per channel (an empty batch) the statistics are NaN.
///
/// # Panics
///
/// When `x` has rank below 2.
pub fn batch_statistics<T: Copy + Into<f64>>(
    x: ArrayViewD<'_, T>,
    layout: Layout,
    eps: f64,
) -> BatchStatistics {
    let view = channel_view(x.shape(), layout);
    let count = view.values_per_channel() as f64;
    let mean: Vec<f64> = channel_sums(view.channels, elements(&x, &view))
        .into_iter()
        .map(|sum| sum / count)
        .collect();
    let squared_deviations = elements(&x, &view).map(|(c, v)| (c, (v - mean[c]).powi(2)));
    let var: Vec<f64> = channel_sums(view.channels, squared_deviations)
        .into_iter()
        .map(|sum| sum / count)
        .collect();
    let invstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    BatchStatistics { mean, var, invstd }
}

/// `y = (x - mean) * invstd * gamma + beta`, per channel (gamma = 1, beta = 0 when `None`).
///
/// # Panics
///
/// When `x` has rank below 2, or a per-channel slice does not have one value per channel.
pub fn normalize<T: Copy + Into<f64>, P: Copy + Into<f64>>(
    x: ArrayViewD<'_, T>,
    layout: Layout,
    mean: &[f64],
    invstd: &[f64],
    gamma: Option<&[P]>,
    beta: Option<&[P]>,
) -> ArrayD<f64> {
    let view = channel_view(x.shape(), layout);
    check_per_channel("mean", mean.len(), view.channels);
    check_per_channel("invstd", invstd.len(), view.channels);
    if let Some(g) = gamma {
        check_per_channel("gamma", g.len(), view.channels);
    }
    if let Some(b) = beta {
        check_per_channel("beta", b.len(), view.channels);
    }
    let values = elements(&x, &view).map(|(c, x)| {
        (x - mean[c]) * invstd[c] * parameter(gamma, c, 1.0) + parameter(beta, c, 0.0)
    });
    array_from_values(x.raw_dim(), values)
}

/// Training forward: normalizes `x` with its own batch statistics, which it also returns (the
/// running statistics are updated separately, by [`update_running_statistics`]).
///
/// # Panics
///
/// When `x` has rank below 2, or gamma or beta does not have one value per channel.
pub fn training_forward<T: Copy + Into<f64>, P: Copy + Into<f64>>(
    x: ArrayViewD<'_, T>,
    layout: Layout,
    gamma: Option<&[P]>,
    beta: Option<&[P]>,
    eps: f64,
) -> (ArrayD<f64>, BatchStatistics) {
    let stats = batch_statistics(x.view(), layout, eps);
    let y = normalize(x, layout, &stats.mean, &stats.invstd, gamma, beta);
    (y, stats)
}

/// Inference forward: normalizes `x` with the running statistics,
/// `invstd = 1 / sqrt(running_var + eps)`.
///
/// # Panics
///
/// When `x` has rank below 2, or a per-channel slice does not have one value per channel.
pub fn inference_forward<T: Copy + Into<f64>, P: Copy + Into<f64>>(
    x: ArrayViewD<'_, T>,
    layout: Layout,
    running_mean: &[f64],
    running_var: &[f64],
    gamma: Option<&[P]>,
    beta: Option<&[P]>,
    eps: f64,
) -> ArrayD<f64> {
    let invstd: Vec<f64> = running_var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    normalize(x, layout, running_mean, &invstd, gamma, beta)
}

/// PyTorch's running-statistics update after one training batch of `values_per_channel` (M)
/// values per channel: `r_mean = (1 - m) r_mean + m mean` and
/// `r_var = (1 - m) r_var + m var * M / (M - 1)` (the unbiased variance).
///
/// For momentum `None` (a cumulative average) PyTorch passes `m = 1 / num_batches_tracked`,
/// counted after this batch; the caller does the same. An empty batch (M = 0) changes nothing.
///
/// # Panics
///
/// When M = 1 (PyTorch refuses to train on one value per channel: the unbiased variance is
/// undefined), or the slices do not all have the same length.
pub fn update_running_statistics(
    running_mean: &mut [f64],
    running_var: &mut [f64],
    stats: &BatchStatistics,
    values_per_channel: usize,
    momentum: f64,
) {
    assert_ne!(
        values_per_channel, 1,
        "expected more than 1 value per channel when training"
    );
    let channels = stats.mean.len();
    check_per_channel("running_mean", running_mean.len(), channels);
    check_per_channel("running_var", running_var.len(), channels);
    check_per_channel("var", stats.var.len(), channels);
    if values_per_channel == 0 {
        return;
    }
    let m = values_per_channel as f64;
    for c in 0..channels {
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * stats.mean[c];
        running_var[c] =
            (1.0 - momentum) * running_var[c] + momentum * stats.var[c] * m / (m - 1.0);
    }
}

/// Backward of the training forward, through the batch statistics.
///
/// With `x_hat = (x - mean) * invstd` and M values per channel: `dbeta = sum(dy)`,
/// `dgamma = sum(dy * x_hat)`, `dx = gamma * invstd / M * (M * dy - dbeta - x_hat * dgamma)`.
/// `mean` and `invstd` are the statistics the forward saved.
///
/// # Panics
///
/// When `x` has rank below 2, `dy` has another shape than `x`, or a per-channel slice does not
/// have one value per channel.
pub fn backward_batch_statistics<T, D, P>(
    x: ArrayViewD<'_, T>,
    dy: ArrayViewD<'_, D>,
    layout: Layout,
    mean: &[f64],
    invstd: &[f64],
    gamma: Option<&[P]>,
) -> Gradients
where
    T: Copy + Into<f64>,
    D: Copy + Into<f64>,
    P: Copy + Into<f64>,
{
    let view = channel_view(x.shape(), layout);
    assert_eq!(x.shape(), dy.shape(), "dy must have the shape of x");
    check_per_channel("mean", mean.len(), view.channels);
    check_per_channel("invstd", invstd.len(), view.channels);
    if let Some(g) = gamma {
        check_per_channel("gamma", g.len(), view.channels);
    }
    let x_hat = |c: usize, x: f64| (x - mean[c]) * invstd[c];
    let (dgamma, dbeta) = parameter_gradients(&x, &dy, &view, mean, invstd);
    let m = view.values_per_channel() as f64;
    let dx = element_triples(&x, &dy, &view).map(|(c, x, dy)| {
        parameter(gamma, c, 1.0) * invstd[c] / m * (m * dy - dbeta[c] - x_hat(c, x) * dgamma[c])
    });
    Gradients {
        dx: array_from_values(x.raw_dim(), dx),
        dgamma,
        dbeta,
    }
}

/// Backward of the inference forward, where the running statistics are constants.
///
/// With `invstd = 1 / sqrt(running_var + eps)` and `x_hat = (x - running_mean) * invstd`:
/// `dx = dy * gamma * invstd`, `dgamma = sum(dy * x_hat)`, `dbeta = sum(dy)`.
///
/// # Panics
///
/// When `x` has rank below 2, `dy` has another shape than `x`, or a per-channel slice does not
/// have one value per channel.
pub fn backward_running_statistics<T, D, P>(
    x: ArrayViewD<'_, T>,
    dy: ArrayViewD<'_, D>,
    layout: Layout,
    running_mean: &[f64],
    running_var: &[f64],
    eps: f64,
    gamma: Option<&[P]>,
) -> Gradients
where
    T: Copy + Into<f64>,
    D: Copy + Into<f64>,
    P: Copy + Into<f64>,
{
    let view = channel_view(x.shape(), layout);
    assert_eq!(x.shape(), dy.shape(), "dy must have the shape of x");
    check_per_channel("running_mean", running_mean.len(), view.channels);
    check_per_channel("running_var", running_var.len(), view.channels);
    if let Some(g) = gamma {
        check_per_channel("gamma", g.len(), view.channels);
    }
    let invstd: Vec<f64> = running_var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let (dgamma, dbeta) = parameter_gradients(&x, &dy, &view, running_mean, &invstd);
    let dx =
        element_triples(&x, &dy, &view).map(|(c, _, dy)| dy * parameter(gamma, c, 1.0) * invstd[c]);
    Gradients {
        dx: array_from_values(x.raw_dim(), dx),
        dgamma,
        dbeta,
    }
}

/// The epilogue of a forward, on the batch norm's output `bn`: the identity, `relu(bn)`, or
/// `relu(bn + z)` (PyTorch's `F.relu(F.batch_norm(x, ...) + z)`), elementwise in `f64`. A NaN
/// stays NaN through the ReLU.
///
/// # Panics
///
/// When the shortcut is missing for `AddRelu` or has another shape than `bn`.
pub fn epilogue<Z: Copy + Into<f64>>(
    bn: ArrayViewD<'_, f64>,
    shortcut: Option<ArrayViewD<'_, Z>>,
    kind: EpilogueKind,
) -> ArrayD<f64> {
    let relu = |v: f64| if v < 0.0 { 0.0 } else { v };
    match kind {
        EpilogueKind::None => bn.to_owned(),
        EpilogueKind::Relu => bn.mapv(relu),
        EpilogueKind::AddRelu => {
            let z = shortcut.expect("add-relu needs the shortcut z");
            assert_eq!(z.shape(), bn.shape(), "z must have the shape of the input");
            let mut out = bn.to_owned();
            out.zip_mut_with(&z, |v, &z| *v = relu(*v + z.into()));
            out
        }
    }
}

/// The gradient that reaches the batch norm through an epilogue's ReLU: `dy` where the
/// forward's output `y` is above 0 (or NaN), 0 where it is <= 0, as PyTorch's
/// `threshold_backward` takes the mask from the ReLU's result. The identity without an
/// epilogue. With `AddRelu` this is also the gradient of the shortcut z.
///
/// # Panics
///
/// When `y` has another shape than `dy`.
pub fn epilogue_gradient<D: Copy + Into<f64>, Y: Copy + Into<f64>>(
    dy: ArrayViewD<'_, D>,
    y: ArrayViewD<'_, Y>,
    kind: EpilogueKind,
) -> ArrayD<f64> {
    assert_eq!(y.shape(), dy.shape(), "y must have the shape of dy");
    let mut out = dy.mapv(|g| g.into());
    if kind != EpilogueKind::None {
        out.zip_mut_with(&y, |g, &y| {
            if y.into() <= 0.0 {
                *g = 0.0;
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr2, Array, ArrayD, IxDyn};

    /// No parameters, for calls with `gamma = beta = None`.
    const NONE: Option<&[f64]> = None;

    /// A small deterministic generator (Knuth's MMIX LCG), values in [-1, 1).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }

        fn array(&mut self, shape: &[usize]) -> ArrayD<f64> {
            ArrayD::from_shape_simple_fn(IxDyn(shape), || self.next())
        }

        fn vec(&mut self, len: usize, low: f64, high: f64) -> Vec<f64> {
            (0..len)
                .map(|_| low + (self.next() + 1.0) / 2.0 * (high - low))
                .collect()
        }
    }

    fn assert_close(actual: f64, expected: f64, tolerance: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= tolerance * (1.0 + expected.abs()),
            "{what}: {actual} vs {expected} (tolerance {tolerance})"
        );
    }

    fn assert_all_close(actual: &[f64], expected: &[f64], tolerance: f64, what: &str) {
        assert_eq!(actual.len(), expected.len(), "{what}: lengths");
        for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
            assert_close(a, e, tolerance, &format!("{what}[{i}]"));
        }
    }

    fn assert_arrays_close(
        actual: &ArrayD<f64>,
        expected: &ArrayD<f64>,
        tolerance: f64,
        what: &str,
    ) {
        assert_eq!(actual.shape(), expected.shape(), "{what}: shapes");
        let actual: Vec<f64> = actual.iter().copied().collect();
        let expected: Vec<f64> = expected.iter().copied().collect();
        assert_all_close(&actual, &expected, tolerance, what);
    }

    #[test]
    fn constant_channel_gives_beta_and_zero_variance() {
        // [N = 4, C = 2, L = 3]; channel 0 constant 5, channel 1 varied.
        let mut rng = Lcg(1);
        let mut x = rng.array(&[4, 2, 3]);
        x.index_axis_mut(ndarray::Axis(1), 0).fill(5.0);
        let gamma = [1.7, 0.6];
        let beta = [-0.25, 2.0];
        let (y, stats) = training_forward(
            x.view(),
            Layout::ChannelsFirst,
            Some(&gamma[..]),
            Some(&beta[..]),
            1e-5,
        );
        assert_eq!(stats.mean[0], 5.0);
        assert_eq!(stats.var[0], 0.0);
        assert_eq!(stats.invstd[0], 1.0 / 1e-5f64.sqrt());
        assert!(stats.var[1] > 0.0);
        for &value in y.index_axis(ndarray::Axis(1), 0) {
            assert_eq!(value, beta[0]);
        }
    }

    #[test]
    fn hand_computed_two_by_two() {
        // [N = 2, C = 2]: channel 0 holds 1, 3 (mean 2, var 1); channel 1 holds 10, 14
        // (mean 12, var 4). With eps = 0, invstd = 1 and 1/2, so x_hat = [[-1, -1], [1, 1]].
        let x = arr2(&[[1.0f32, 10.0], [3.0, 14.0]]).into_dyn();
        let gamma = [2.0f32, 3.0];
        let beta = [0.5f32, -1.0];
        let (y, stats) = training_forward(
            x.view(),
            Layout::ChannelsFirst,
            Some(&gamma[..]),
            Some(&beta[..]),
            0.0,
        );
        assert_eq!(stats.mean, vec![2.0, 12.0]);
        assert_eq!(stats.var, vec![1.0, 4.0]);
        assert_eq!(stats.invstd, vec![1.0, 0.5]);
        // y = x_hat * gamma + beta.
        assert_eq!(y, arr2(&[[-1.5, -4.0], [2.5, 2.0]]).into_dyn());

        // eps > 0 enters as 1 / sqrt(var + eps).
        let stats = batch_statistics(x.view(), Layout::ChannelsFirst, 0.5);
        assert_eq!(stats.invstd, vec![1.0 / 1.5f64.sqrt(), 1.0 / 4.5f64.sqrt()]);

        // Running stats from 0 and 1 with momentum 0.1, M = 2 (unbiased var = 2 * biased):
        // r_mean = 0.1 * [2, 12]; r_var = 0.9 + 0.1 * [2, 8].
        let stats = batch_statistics(x.view(), Layout::ChannelsFirst, 0.0);
        let mut running_mean = vec![0.0, 0.0];
        let mut running_var = vec![1.0, 1.0];
        update_running_statistics(&mut running_mean, &mut running_var, &stats, 2, 0.1);
        assert_all_close(&running_mean, &[0.2, 1.2], 1e-15, "running_mean");
        assert_all_close(&running_var, &[1.1, 1.7], 1e-15, "running_var");

        // Inference with r_mean = [2, 12], r_var = [1, 4] and eps = 0 gives the training output.
        let y_eval = inference_forward(
            x.view(),
            Layout::ChannelsFirst,
            &[2.0, 12.0],
            &[1.0, 4.0],
            Some(&gamma[..]),
            Some(&beta[..]),
            0.0,
        );
        assert_eq!(y_eval, y);

        // Backward with dy = [[1, 0], [0, 1]]: dbeta = sum(dy) = [1, 1];
        // dgamma = sum(dy * x_hat) = [-1, 1]. With two values per channel and eps = 0 the
        // normalized values are -1 and 1 whatever x is, so dx = 0:
        //   channel 0: 2 * 1 / 2 * ([2, 0] - 1 - [-1, 1] * -1) = [0, 0]
        //   channel 1: 3 * 0.5 / 2 * ([0, 2] - 1 - [-1, 1] * 1) = [0, 0]
        let dy = arr2(&[[1.0f32, 0.0], [0.0, 1.0]]).into_dyn();
        let grads = backward_batch_statistics(
            x.view(),
            dy.view(),
            Layout::ChannelsFirst,
            &stats.mean,
            &stats.invstd,
            Some(&gamma[..]),
        );
        assert_eq!(grads.dbeta, vec![1.0, 1.0]);
        assert_eq!(grads.dgamma, vec![-1.0, 1.0]);
        assert_eq!(grads.dx, ArrayD::<f64>::zeros(IxDyn(&[2, 2])));

        // Inference backward: dx = dy * gamma * invstd with the running stats as constants.
        let grads = backward_running_statistics(
            x.view(),
            dy.view(),
            Layout::ChannelsFirst,
            &[2.0, 12.0],
            &[1.0, 4.0],
            0.0,
            Some(&gamma[..]),
        );
        assert_eq!(grads.dx, arr2(&[[2.0, 0.0], [0.0, 1.5]]).into_dyn());
        assert_eq!(grads.dbeta, vec![1.0, 1.0]);
        assert_eq!(grads.dgamma, vec![-1.0, 1.0]);
    }

    #[test]
    fn empty_batch_changes_no_running_statistics() {
        let x = ArrayD::<f32>::zeros(IxDyn(&[0, 3, 2]));
        let (y, stats) = training_forward(x.view(), Layout::ChannelsFirst, NONE, NONE, 1e-5);
        assert_eq!(y.shape(), &[0, 3, 2]);
        let mut running_mean = vec![0.5; 3];
        let mut running_var = vec![2.0; 3];
        update_running_statistics(&mut running_mean, &mut running_var, &stats, 0, 0.1);
        assert_eq!(running_mean, vec![0.5; 3]);
        assert_eq!(running_var, vec![2.0; 3]);
    }

    #[test]
    #[should_panic(expected = "rank >= 2")]
    fn rank_one_panics() {
        let x = ArrayD::<f32>::zeros(IxDyn(&[4]));
        batch_statistics(x.view(), Layout::ChannelsFirst, 1e-5);
    }

    #[test]
    fn channels_first_and_channels_last_agree() {
        // Logical [N = 2, C = 3, H = 4, W = 5]; channels-last memory is [N, H, W, C].
        let mut rng = Lcg(2);
        let x_first = rng.array(&[2, 3, 4, 5]).mapv(|v| 3.0 * v + 7.0);
        let dy_first = rng.array(&[2, 3, 4, 5]);
        let to_last = |a: &ArrayD<f64>| {
            a.view()
                .permuted_axes(IxDyn(&[0, 2, 3, 1]))
                .as_standard_layout()
                .to_owned()
        };
        let x_last = to_last(&x_first);
        let dy_last = to_last(&dy_first);
        let gamma = rng.vec(3, 0.5, 1.5);
        let beta = rng.vec(3, -1.0, 1.0);
        let g = Some(&gamma[..]);
        let b = Some(&beta[..]);

        let (y_first, stats_first) =
            training_forward(x_first.view(), Layout::ChannelsFirst, g, b, 1e-5);
        let (y_last, stats_last) =
            training_forward(x_last.view(), Layout::ChannelsLast, g, b, 1e-5);
        // Only the summation order differs.
        assert_all_close(&stats_last.mean, &stats_first.mean, 1e-14, "mean");
        assert_all_close(&stats_last.var, &stats_first.var, 1e-14, "var");
        assert_arrays_close(&y_last, &to_last(&y_first), 1e-14, "y");

        // A non-standard-layout view (the permuted view itself) gives the standard copy's answer
        // exactly: it is read in logical order.
        let x_strided = x_first.view().permuted_axes(IxDyn(&[0, 2, 3, 1]));
        assert!(!x_strided.is_standard_layout());
        let (y_strided, stats_strided) =
            training_forward(x_strided, Layout::ChannelsLast, g, b, 1e-5);
        assert_eq!(stats_strided, stats_last);
        assert_eq!(y_strided, y_last);

        let grads_first = backward_batch_statistics(
            x_first.view(),
            dy_first.view(),
            Layout::ChannelsFirst,
            &stats_first.mean,
            &stats_first.invstd,
            g,
        );
        let grads_last = backward_batch_statistics(
            x_last.view(),
            dy_last.view(),
            Layout::ChannelsLast,
            &stats_first.mean,
            &stats_first.invstd,
            g,
        );
        assert_arrays_close(&grads_last.dx, &to_last(&grads_first.dx), 1e-13, "dx");
        assert_all_close(&grads_last.dgamma, &grads_first.dgamma, 1e-13, "dgamma");
        assert_all_close(&grads_last.dbeta, &grads_first.dbeta, 1e-13, "dbeta");

        let running_mean = rng.vec(3, -1.0, 1.0);
        let running_var = rng.vec(3, 0.5, 2.0);
        let eval_first = inference_forward(
            x_first.view(),
            Layout::ChannelsFirst,
            &running_mean,
            &running_var,
            g,
            b,
            1e-3,
        );
        let eval_last = inference_forward(
            x_last.view(),
            Layout::ChannelsLast,
            &running_mean,
            &running_var,
            g,
            b,
            1e-3,
        );
        assert_arrays_close(&eval_last, &to_last(&eval_first), 1e-14, "y_eval");
    }

    /// Which forward a finite-difference check differentiates.
    #[derive(Clone, Copy)]
    enum Mode {
        /// `training_forward`, checked against `backward_batch_statistics`.
        Training,
        /// `inference_forward` with fixed running stats, against `backward_running_statistics`.
        Inference,
    }

    /// Checks dx, dgamma and dbeta of `mode` against central finite differences of
    /// `loss = sum(y * w)` (so dy = w), all in f64.
    fn check_gradients_by_finite_differences(
        shape: &[usize],
        layout: Layout,
        mode: Mode,
        seed: u64,
    ) {
        let mut rng = Lcg(seed);
        let channels = match layout {
            Layout::ChannelsFirst => shape[1],
            Layout::ChannelsLast => shape[shape.len() - 1],
        };
        let x = rng.array(shape).mapv(|v| 2.0 * v + 0.5);
        let w = rng.array(shape);
        let gamma = rng.vec(channels, 0.5, 1.5);
        let beta = rng.vec(channels, -1.0, 1.0);
        let running_mean = rng.vec(channels, -0.5, 0.5);
        let running_var = rng.vec(channels, 0.5, 2.0);
        let eps = 1e-3;

        let loss = |x: &ArrayD<f64>, gamma: &[f64], beta: &[f64]| -> f64 {
            let y = match mode {
                Mode::Training => {
                    training_forward(x.view(), layout, Some(gamma), Some(beta), eps).0
                }
                Mode::Inference => inference_forward(
                    x.view(),
                    layout,
                    &running_mean,
                    &running_var,
                    Some(gamma),
                    Some(beta),
                    eps,
                ),
            };
            (&y * &w).sum()
        };

        let grads = match mode {
            Mode::Training => {
                let stats = batch_statistics(x.view(), layout, eps);
                backward_batch_statistics(
                    x.view(),
                    w.view(),
                    layout,
                    &stats.mean,
                    &stats.invstd,
                    Some(&gamma[..]),
                )
            }
            Mode::Inference => backward_running_statistics(
                x.view(),
                w.view(),
                layout,
                &running_mean,
                &running_var,
                eps,
                Some(&gamma[..]),
            ),
        };

        // Central differences: truncation error ~ h^2 * (third derivative), rounding
        // ~ 1e-16 * |loss| / h; both stay below 1e-8 for h = 1e-5 on these unit-scale tensors.
        let h = 1e-5;
        let tolerance = 1e-7;
        let mut dx_numeric = Array::zeros(x.raw_dim());
        for (index, slot) in dx_numeric.indexed_iter_mut() {
            let mut plus = x.clone();
            plus[&index] += h;
            let mut minus = x.clone();
            minus[&index] -= h;
            *slot = (loss(&plus, &gamma, &beta) - loss(&minus, &gamma, &beta)) / (2.0 * h);
        }
        assert_arrays_close(&grads.dx, &dx_numeric, tolerance, "dx");

        let numeric_parameter_gradient = |which: usize| -> Vec<f64> {
            (0..channels)
                .map(|c| {
                    let mut params = [gamma.clone(), beta.clone()];
                    params[which][c] += h;
                    let up = loss(&x, &params[0], &params[1]);
                    params[which][c] -= 2.0 * h;
                    let down = loss(&x, &params[0], &params[1]);
                    (up - down) / (2.0 * h)
                })
                .collect()
        };
        assert_all_close(
            &grads.dgamma,
            &numeric_parameter_gradient(0),
            tolerance,
            "dgamma",
        );
        assert_all_close(
            &grads.dbeta,
            &numeric_parameter_gradient(1),
            tolerance,
            "dbeta",
        );

        // The gradients are not trivially small, so the comparison means something.
        assert!(grads.dx.iter().any(|v| v.abs() > 1e-2));
        assert!(grads.dgamma.iter().all(|v| v.abs() > 1e-3));
    }

    #[test]
    fn training_backward_matches_finite_differences() {
        check_gradients_by_finite_differences(&[3, 2, 4], Layout::ChannelsFirst, Mode::Training, 3);
        check_gradients_by_finite_differences(&[5, 3], Layout::ChannelsLast, Mode::Training, 4);
        check_gradients_by_finite_differences(
            &[2, 3, 2, 3],
            Layout::ChannelsLast,
            Mode::Training,
            5,
        );
    }

    #[test]
    fn inference_backward_matches_finite_differences() {
        check_gradients_by_finite_differences(
            &[3, 2, 4],
            Layout::ChannelsFirst,
            Mode::Inference,
            6,
        );
        check_gradients_by_finite_differences(&[5, 3], Layout::ChannelsLast, Mode::Inference, 7);
        check_gradients_by_finite_differences(
            &[2, 3, 2, 3],
            Layout::ChannelsLast,
            Mode::Inference,
            8,
        );
    }
}
