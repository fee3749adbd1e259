//! Shared by the GPU integration tests: one context per test binary, deterministic data, and
//! tolerance checks against the f64 reference.
#![allow(dead_code)]

use std::sync::OnceLock;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use wgpu_batchnorm::{BatchNormError, GpuContext, Layout, Tensor};

/// The context of this test binary. Fails (never skips) when there is no adapter.
pub fn context() -> GpuContext {
    static CONTEXT: OnceLock<GpuContext> = OnceLock::new();
    CONTEXT
        .get_or_init(|| match GpuContext::new() {
            Ok(ctx) => {
                eprintln!("testing on {}", ctx.adapter());
                ctx
            }
            Err(error @ BatchNormError::NoAdapter { .. }) => panic!(
                "GPU tests need a wgpu adapter and found none: {error}. On Debian run \
                 `bash .ci/install-gpu-drivers.sh` (Mesa's software Vulkan and GL drivers)."
            ),
            Err(error) => panic!("could not open the GPU: {error}"),
        })
        .clone()
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
    poisoned_on(&context(), shape, layout)
}

/// An output tensor on `ctx` filled with NaN.
pub fn poisoned_on(ctx: &GpuContext, shape: &[usize], layout: Layout) -> Tensor {
    let tensor = Tensor::zeros(ctx, shape, layout).expect("allocate");
    tensor.fill(f32::NAN).expect("fill with NaN");
    tensor
}

/// Checks dgamma and dbeta against the reference, channel c within `dgamma_tol[c]` and
/// `dbeta_tol[c]`.
pub fn assert_parameter_gradients(
    what: &str,
    got: &wgpu_batchnorm::ChannelPair,
    want: &wgpu_batchnorm::reference::Gradients,
    dgamma_tol: &[f64],
    dbeta_tol: &[f64],
) {
    let (dgamma, dbeta) = got.read().unwrap();
    for c in 0..dgamma.len() {
        assert!(
            (f64::from(dgamma[c]) - want.dgamma[c]).abs() <= dgamma_tol[c],
            "{what}: dgamma[{c}] = {}, want {} (tolerance {:e})",
            dgamma[c],
            want.dgamma[c],
            dgamma_tol[c]
        );
        assert!(
            (f64::from(dbeta[c]) - want.dbeta[c]).abs() <= dbeta_tol[c],
            "{what}: dbeta[{c}] = {}, want {} (tolerance {:e})",
            dbeta[c],
            want.dbeta[c],
            dbeta_tol[c]
        );
    }
}

/// Tolerances of dgamma = sum(dy x_hat) and dbeta = sum(dy) for channel sums of |dy x_hat| and
/// |dy|: 1e-5 of the summed magnitudes (float32 rounding in a reduction of our depth stays far
/// below that), plus, for dgamma, the error of x_hat that the float32 mean carries,
/// `x_hat_err[c]` (about 8 |mean| invstd 2^-24), on every term: it does not shrink with
/// x_hat, and matters where the variance is far below eps (x_hat near 0, invstd near
/// eps^-1/2).
pub fn parameter_gradient_tolerances(
    sum_abs_dy_xhat: &[f64],
    sum_abs_dy: &[f64],
    x_hat_err: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let dgamma = (0..sum_abs_dy.len())
        .map(|c| 1e-5 * sum_abs_dy_xhat[c] + x_hat_err[c] * sum_abs_dy[c] + 1e-6)
        .collect();
    let dbeta = sum_abs_dy.iter().map(|s| 1e-5 * s + 1e-6).collect();
    (dgamma, dbeta)
}

/// Asserts |got - want| <= atol + rtol * |want| everywhere (NaN never passes unless both are).
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        if w.is_nan() && g.is_nan() {
            continue;
        }
        let err = (g - w).abs();
        let bound = atol + rtol * w.abs();
        assert!(
            err <= bound,
            "{what}[{i}]: got {g}, want {w} (error {err:e} > bound {bound:e})"
        );
        if err > worst.0 {
            worst = (err, i);
        }
    }
}

/// Flattens an ndarray in logical order.
pub fn flat(array: ArrayViewD<'_, f64>) -> Vec<f64> {
    array.iter().copied().collect()
}

/// float32 unit roundoff.
/// Shapes that the test adapter plans fused (one dispatch per training forward or backward),
/// each with enough values per thread for the eight-at-a-time loads and a remainder:
/// channels-first with odd spatial runs, channels-last and 2-D with a last band of fewer than
/// 32 channels.
pub const FUSED_SHAPES: [(&[usize], Layout); 4] = [
    (&[3, 5, 67, 61], Layout::ChannelsFirst),
    (&[4, 16, 16, 40], Layout::ChannelsLast),
    (&[700, 33], Layout::ChannelsFirst),
    (&[2, 3, 1000], Layout::ChannelsFirst),
];

/// Panics unless the test context plans `shape` fused.
pub fn assert_fused(shape: &[usize], layout: Layout) {
    let view = wgpu_batchnorm::ChannelView::new(shape, layout).unwrap();
    let plan = wgpu_batchnorm::plan::plan(
        view,
        context().plan_limits(),
        wgpu_batchnorm::plan::Operation::TrainingForward,
    )
    .unwrap();
    assert!(plan.fused_window().is_some(), "{shape:?} should be fused");
}

pub const F32_EPS: f64 = 1.0 / (1u64 << 24) as f64;

/// One layer configuration driven through several batches, on the GPU and in the reference.
pub struct Scenario {
    pub shape: Vec<usize>,
    pub layout: Layout,
    pub config: wgpu_batchnorm::BatchNormConfig,
    /// gamma and beta, when affine.
    pub affine: Option<(Vec<f32>, Vec<f32>)>,
    /// One input per training step; the first is reused for inference at the end.
    pub batches: Vec<Vec<f32>>,
}

impl Scenario {
    fn channels(&self) -> usize {
        wgpu_batchnorm::ChannelView::new(&self.shape, self.layout)
            .unwrap()
            .channels
    }

    /// Output tolerance: 1e-5 |gamma| plus 8 |mean|/std x 2^-24 |gamma| (DESIGN.md); the checks
    /// add one float32 ulp of the expected value, since y itself is rounded to float32 (which
    /// matters when |gamma| is tiny and y is about beta).
    fn output_tolerance(&self, stats: &wgpu_batchnorm::reference::BatchStatistics) -> Vec<f64> {
        let gamma_abs = |c: usize| {
            self.affine
                .as_ref()
                .map_or(1.0, |(g, _)| f64::from(g[c]).abs())
        };
        (0..self.channels())
            .map(|c| {
                let ratio = stats.mean[c].abs() * stats.invstd[c];
                gamma_abs(c) * (1e-5 + 8.0 * ratio * F32_EPS)
            })
            .collect()
    }

    /// Runs every batch in training mode, then inference on the first batch, checking outputs,
    /// saved statistics and running stats against the f64 reference after every step.
    pub fn check(&self) {
        use wgpu_batchnorm::reference;
        let ctx = context();
        let channels = self.channels();
        let mut layer =
            wgpu_batchnorm::BatchNorm::with_config(&ctx, channels, self.config).expect("layer");
        if let Some((gamma, beta)) = &self.affine {
            layer.set_parameters(gamma, beta).expect("parameters");
        }
        let gamma = self.affine.as_ref().map(|(g, _)| g.as_slice());
        let beta = self.affine.as_ref().map(|(_, b)| b.as_slice());
        let mut running_mean = vec![0.0f64; channels];
        let mut running_var = vec![1.0f64; channels];
        let view = wgpu_batchnorm::ChannelView::new(&self.shape, self.layout).unwrap();
        let eps = self.config.eps;
        for (step, batch) in self.batches.iter().enumerate() {
            let (x, host) = upload(batch, &self.shape, self.layout);
            let y = poisoned(&self.shape, self.layout);
            let saved = layer.forward_into(&x, &y).expect("training forward");
            let (want, stats) =
                reference::training_forward(host.view(), self.layout, gamma, beta, eps);
            let tol = self.output_tolerance(&stats);
            let got = y.to_vec().unwrap();
            for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                let bound = tol[view.channel_of(i)] + 2.0 * F32_EPS * w.abs();
                let err = (f64::from(*g) - w).abs();
                assert!(
                    err <= bound || (g.is_nan() && w.is_nan()),
                    "step {step}: y[{i}] = {g}, want {w} (error {err:e} > {bound:e}); {:?} {:?}",
                    self.shape,
                    self.layout
                );
            }
            let (mean, invstd) = saved.read().unwrap();
            let mean_tol: Vec<f64> = stats.mean.iter().map(|m| 4.0 * m.abs() * F32_EPS).collect();
            for c in 0..channels {
                let mean_err = (f64::from(mean[c]) - stats.mean[c]).abs();
                assert!(
                    mean_err <= 1e-6 / stats.invstd[c] + mean_tol[c],
                    "step {step}: mean[{c}] {} vs {}",
                    mean[c],
                    stats.mean[c]
                );
                let invstd_err = (f64::from(invstd[c]) - stats.invstd[c]).abs();
                assert!(
                    invstd_err <= 1e-5 * stats.invstd[c],
                    "step {step}: invstd[{c}] {} vs {}",
                    invstd[c],
                    stats.invstd[c]
                );
            }
            if self.config.track_running_stats {
                let momentum = self.config.momentum.unwrap_or(1.0 / (step + 1) as f64);
                reference::update_running_statistics(
                    &mut running_mean,
                    &mut running_var,
                    &stats,
                    view.values_per_channel(),
                    momentum,
                );
                let (got_mean, got_var) = layer.running_statistics().unwrap();
                for c in 0..channels {
                    // Relative to the mean and to the spread: the batch mean itself is only
                    // known to 1e-6 std (see the saved-mean check above).
                    let tol_mean =
                        1e-6 / stats.invstd[c] + 1e-5 * running_mean[c].abs() + mean_tol[c];
                    assert!(
                        (f64::from(got_mean[c]) - running_mean[c]).abs() <= tol_mean,
                        "step {step}: running_mean[{c}] {} vs {}",
                        got_mean[c],
                        running_mean[c]
                    );
                    let tol_var = 1e-6 + 1e-5 * running_var[c].abs();
                    assert!(
                        (f64::from(got_var[c]) - running_var[c]).abs() <= tol_var,
                        "step {step}: running_var[{c}] {} vs {}",
                        got_var[c],
                        running_var[c]
                    );
                }
            }
        }
        layer.set_training(false);
        let (x, host) = upload(&self.batches[0], &self.shape, self.layout);
        let y = poisoned(&self.shape, self.layout);
        layer.forward_into(&x, &y).expect("inference forward");
        let (want, tol) = if self.config.track_running_stats {
            let want = reference::inference_forward(
                host.view(),
                self.layout,
                &running_mean,
                &running_var,
                gamma,
                beta,
                eps,
            );
            let stats = reference::BatchStatistics {
                invstd: running_var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
                mean: running_mean.clone(),
                var: running_var.clone(),
            };
            (want, self.output_tolerance(&stats))
        } else {
            let (want, stats) =
                reference::training_forward(host.view(), self.layout, gamma, beta, eps);
            (want, self.output_tolerance(&stats))
        };
        let got = y.to_vec().unwrap();
        for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
            let bound = tol[view.channel_of(i)] + 2.0 * F32_EPS * w.abs();
            assert!(
                (f64::from(*g) - w).abs() <= bound,
                "inference: y[{i}] = {g}, want {w}; {:?} {:?}",
                self.shape,
                self.layout
            );
        }
    }
}

/// Runs a training forward and the backward through batch statistics on `ctx` (outputs
/// NaN-poisoned first) and checks y, dx, dgamma and dbeta against the f64 reference; then the
/// same for inference and the backward through running statistics
/// ([`check_inference_round_trip`]).
///
/// Tolerances: outputs as [`Scenario`]; dx the same scaled by invstd (dx carries the factor
/// gamma * invstd); dgamma and dbeta within (1e-5 + 8 |mean|/std 2^-24) of the sum of the
/// absolute values of their terms, which bounds float32 rounding in a reduction of our depth.
pub fn check_round_trip(ctx: &GpuContext, shape: &[usize], layout: Layout, seed: u64) {
    use wgpu_batchnorm::{reference, BatchNorm};
    let view = wgpu_batchnorm::ChannelView::new(shape, layout).unwrap();
    let channels = view.channels;
    let len = view.len();
    let x_data = normal_data(len, seed, 1.5, 2.0);
    let dy_data = normal_data(len, seed ^ 0xA5A5, 0.0, 1.0);
    let gamma = normal_data(channels, seed ^ 3, 1.0, 0.5);
    let beta = normal_data(channels, seed ^ 4, 0.0, 1.0);
    let (x, x_host) = upload_to(ctx, &x_data, shape, layout);
    let (dy, dy_host) = upload_to(ctx, &dy_data, shape, layout);
    let mut layer = BatchNorm::new(ctx, channels).unwrap();
    layer.set_parameters(&gamma, &beta).unwrap();
    let y = poisoned_on(ctx, shape, layout);
    let saved = layer.forward_into(&x, &y).expect("forward");
    let dx = poisoned_on(ctx, shape, layout);
    let params = layer
        .backward_into(&x, &dy, &dx, &saved)
        .expect("backward")
        .expect("affine gradients");

    let (want_y, stats) =
        reference::training_forward(x_host.view(), layout, Some(&gamma), Some(&beta), 1e-5);
    let grads = reference::backward_batch_statistics(
        x_host.view(),
        dy_host.view(),
        layout,
        &stats.mean,
        &stats.invstd,
        Some(&gamma),
    );
    let ratio: Vec<f64> = (0..channels)
        .map(|c| stats.mean[c].abs() * stats.invstd[c])
        .collect();
    let out_tol: Vec<f64> = (0..channels)
        .map(|c| f64::from(gamma[c]).abs() * (1e-5 + 8.0 * ratio[c] * F32_EPS))
        .collect();
    let got_y = y.to_vec().unwrap();
    let got_dx = dx.to_vec().unwrap();
    let mut sum_abs_dy = vec![0.0f64; channels];
    let mut sum_abs_dy_xhat = vec![0.0f64; channels];
    for i in 0..len {
        let c = view.channel_of(i);
        let x_hat = (f64::from(x_data[i]) - stats.mean[c]) * stats.invstd[c];
        sum_abs_dy[c] += f64::from(dy_data[i]).abs();
        sum_abs_dy_xhat[c] += (f64::from(dy_data[i]) * x_hat).abs();
        let want = want_y.as_slice().unwrap()[i];
        // Plus one float32 ulp of the output: y itself is rounded to float32.
        let y_err = (f64::from(got_y[i]) - want).abs();
        assert!(
            y_err <= out_tol[c] + 2.0 * F32_EPS * want.abs(),
            "{shape:?} {layout:?}: y[{i}] = {}, want {}",
            got_y[i],
            want_y.as_slice().unwrap()[i]
        );
        let want_dx = grads.dx.as_slice().unwrap()[i];
        let dx_err = (f64::from(got_dx[i]) - want_dx).abs();
        assert!(
            dx_err <= out_tol[c] * stats.invstd[c].max(1.0) + 2.0 * F32_EPS * want_dx.abs(),
            "{shape:?} {layout:?}: dx[{i}] = {}, want {want_dx}",
            got_dx[i]
        );
    }
    let x_hat_err: Vec<f64> = ratio.iter().map(|r| 8.0 * r * F32_EPS).collect();
    let (dgamma_tol, dbeta_tol) =
        parameter_gradient_tolerances(&sum_abs_dy_xhat, &sum_abs_dy, &x_hat_err);
    assert_parameter_gradients(
        &format!("{shape:?} {layout:?}"),
        &params,
        &grads,
        &dgamma_tol,
        &dbeta_tol,
    );
    check_inference_round_trip(ctx, shape, layout, seed);
}

/// Runs an inference forward (one dispatch per window, from the running stats) and the
/// backward through running statistics on `ctx`, outputs NaN-poisoned first, and checks y, the
/// saved mean and invstd, dx, dgamma and dbeta against the f64 reference. Tolerances as
/// [`check_round_trip`]'s, with the running stats in place of the batch's.
pub fn check_inference_round_trip(ctx: &GpuContext, shape: &[usize], layout: Layout, seed: u64) {
    use wgpu_batchnorm::{reference, BatchNorm};
    let view = wgpu_batchnorm::ChannelView::new(shape, layout).unwrap();
    let channels = view.channels;
    let x_data = normal_data(view.len(), seed ^ 0x5A5A, -0.5, 1.5);
    let dy_data = normal_data(view.len(), seed ^ 0x3C3C, 0.0, 1.0);
    let gamma = normal_data(channels, seed ^ 5, 1.0, 0.5);
    let beta = normal_data(channels, seed ^ 6, 0.0, 1.0);
    let running_mean = normal_data(channels, seed ^ 7, -0.5, 1.0);
    let running_var: Vec<f32> = normal_data(channels, seed ^ 8, 0.0, 1.0)
        .iter()
        .map(|v| 0.2 + v.abs())
        .collect();
    let (x, x_host) = upload_to(ctx, &x_data, shape, layout);
    let (dy, dy_host) = upload_to(ctx, &dy_data, shape, layout);
    let mut layer = BatchNorm::new(ctx, channels).unwrap();
    layer.set_parameters(&gamma, &beta).unwrap();
    layer
        .set_running_statistics(&running_mean, &running_var)
        .unwrap();
    layer.set_training(false);
    let y = poisoned_on(ctx, shape, layout);
    let saved = layer.forward_into(&x, &y).expect("inference forward");
    let dx = poisoned_on(ctx, shape, layout);
    let params = layer
        .backward_into(&x, &dy, &dx, &saved)
        .expect("backward through running stats")
        .expect("affine gradients");

    let mean: Vec<f64> = running_mean.iter().map(|&v| v.into()).collect();
    let var: Vec<f64> = running_var.iter().map(|&v| v.into()).collect();
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
    let want_y = reference::inference_forward(
        x_host.view(),
        layout,
        &mean,
        &var,
        Some(&gamma),
        Some(&beta),
        1e-5,
    );
    let grads = reference::backward_running_statistics(
        x_host.view(),
        dy_host.view(),
        layout,
        &mean,
        &var,
        1e-5,
        Some(&gamma),
    );
    let (saved_mean, saved_invstd) = saved.read().unwrap();
    for c in 0..channels {
        assert_eq!(
            f64::from(saved_mean[c]),
            mean[c],
            "{shape:?}: saved mean[{c}]"
        );
        assert!(
            (f64::from(saved_invstd[c]) - invstd[c]).abs() <= 4.0 * F32_EPS * invstd[c],
            "{shape:?} {layout:?}: saved invstd[{c}] = {}, want {}",
            saved_invstd[c],
            invstd[c]
        );
    }
    let got_y = y.to_vec().unwrap();
    let got_dx = dx.to_vec().unwrap();
    let mut sum_abs_dy = vec![0.0f64; channels];
    let mut sum_abs_dy_xhat = vec![0.0f64; channels];
    for i in 0..view.len() {
        let c = view.channel_of(i);
        let x_hat = (f64::from(x_data[i]) - mean[c]) * invstd[c];
        sum_abs_dy[c] += f64::from(dy_data[i]).abs();
        sum_abs_dy_xhat[c] += (f64::from(dy_data[i]) * x_hat).abs();
        let out_tol =
            f64::from(gamma[c]).abs() * (1e-5 + 8.0 * mean[c].abs() * invstd[c] * F32_EPS);
        let want = want_y.as_slice().unwrap()[i];
        assert!(
            (f64::from(got_y[i]) - want).abs() <= out_tol + 2.0 * F32_EPS * want.abs(),
            "{shape:?} {layout:?}: inference y[{i}] = {}, want {want}",
            got_y[i]
        );
        let want_dx = grads.dx.as_slice().unwrap()[i];
        assert!(
            (f64::from(got_dx[i]) - want_dx).abs() <= 4.0 * F32_EPS * want_dx.abs(),
            "{shape:?} {layout:?}: dx[{i}] through running stats = {}, want {want_dx}",
            got_dx[i]
        );
    }
    // The running mean is exact here: x_hat carries only relative rounding.
    let (dgamma_tol, dbeta_tol) =
        parameter_gradient_tolerances(&sum_abs_dy_xhat, &sum_abs_dy, &vec![0.0; channels]);
    assert_parameter_gradients(
        &format!("{shape:?} {layout:?} through running stats"),
        &params,
        &grads,
        &dgamma_tol,
        &dbeta_tol,
    );
}
