//! GPU drivers of the tests: a layer driven through several training batches and then inference
//! ([`Scenario`]), and forward-backward round trips in training and in inference. Every output
//! is poisoned before the GPU writes it, and every result goes through `checks`: outputs from
//! the GPU's own saved statistics, saved and running statistics against f64.

use ndarray::ArrayD;
use wgpu_batchnorm::plan::Operation;
use wgpu_batchnorm::{reference, BatchNorm, BatchNormConfig, ChannelView, GpuContext, Layout};

use super::checks::{
    check_batch_statistics, check_inference_statistics, check_input_gradient, check_output,
    check_parameter_gradients, check_running_statistics, sum_depth, BackwardInputs, Channels,
    Checked, ForwardInputs, Saved, Through,
};
use super::{context, filled_on, normal_data, plan_of, upload_to};

/// Panics with the findings of a failed check.
pub fn require(result: Checked) {
    if let Err(findings) = result {
        panic!("{findings}");
    }
}

/// The statistics a forward saved, downloaded.
pub fn read_saved(saved: &wgpu_batchnorm::SavedStats) -> Saved {
    let (mean, invstd) = saved.read().expect("download the saved statistics");
    Saved { mean, invstd }
}

/// One layer configuration driven through several batches, on the GPU and in the reference.
pub struct Scenario {
    /// Shape in memory order.
    pub shape: Vec<usize>,
    /// Layout.
    pub layout: Layout,
    /// The layer's options.
    pub config: BatchNormConfig,
    /// gamma and beta, when affine.
    pub affine: Option<(Vec<f32>, Vec<f32>)>,
    /// One input per training step; the first is reused for inference at the end.
    pub batches: Vec<Vec<f32>>,
}

impl Scenario {
    /// Runs on the test binary's context.
    pub fn check(&self) {
        self.check_on(&context());
    }

    /// Runs every batch in training mode, then inference on the first batch, checking the
    /// output, the saved statistics and the running stats after every step.
    pub fn check_on(&self, ctx: &GpuContext) {
        let view = ChannelView::new(&self.shape, self.layout).expect("rank >= 2");
        let channels = view.channels;
        let mut layer = BatchNorm::with_config(ctx, channels, self.config).expect("layer");
        if let Some((gamma, beta)) = &self.affine {
            layer.set_parameters(gamma, beta).expect("parameters");
        }
        let gamma = self.affine.as_ref().map(|(g, _)| g.as_slice());
        let beta = self.affine.as_ref().map(|(_, b)| b.as_slice());
        let mut running_mean = vec![0.0f64; channels];
        let mut running_var = vec![1.0f64; channels];
        let eps = self.config.eps;
        let hosts: Vec<ArrayD<f32>> = self
            .batches
            .iter()
            .map(|batch| {
                ArrayD::from_shape_vec(self.shape.clone(), batch.clone()).expect("batch shape")
            })
            .collect();
        for (step, host) in hosts.iter().enumerate() {
            let what = format!("{:?} {:?} step {step}", self.shape, self.layout);
            let (x, _) = upload_to(ctx, &self.batches[step], &self.shape, self.layout);
            let y = filled_on(ctx, &self.shape, self.layout, f32::NAN);
            let saved = read_saved(&layer.forward_into(&x, &y).expect("training forward"));
            let inputs = ForwardInputs {
                x: host.view(),
                layout: self.layout,
                gamma,
                beta,
                eps,
            };
            let got_y = y.to_vec().expect("download y");
            require(check_batch_statistics(
                &what,
                &inputs,
                &saved,
                Channels::All,
            ));
            require(check_output(&what, &inputs, &saved, &got_y, Channels::All));
            if self.config.track_running_stats {
                let stats = reference::batch_statistics(host.view(), self.layout, eps);
                let momentum = self.config.momentum.unwrap_or(1.0 / (step + 1) as f64);
                reference::update_running_statistics(
                    &mut running_mean,
                    &mut running_var,
                    &stats,
                    view.values_per_channel(),
                    momentum,
                );
                let (got_mean, got_var) = layer.running_statistics().expect("tracked");
                require(check_running_statistics(
                    &what,
                    &running_mean,
                    &running_var,
                    &stats,
                    &got_mean,
                    &got_var,
                    Channels::All,
                ));
            }
        }
        layer.set_training(false);
        let what = format!("{:?} {:?} inference", self.shape, self.layout);
        let (x, _) = upload_to(ctx, &self.batches[0], &self.shape, self.layout);
        let y = filled_on(ctx, &self.shape, self.layout, f32::NAN);
        let saved = read_saved(&layer.forward_into(&x, &y).expect("inference forward"));
        let inputs = ForwardInputs {
            x: hosts[0].view(),
            layout: self.layout,
            gamma,
            beta,
            eps,
        };
        if self.config.track_running_stats {
            let (got_mean, got_var) = layer.running_statistics().expect("tracked");
            require(check_inference_statistics(
                &what, &got_mean, &got_var, eps, &saved,
            ));
        } else {
            // As PyTorch: without running stats, inference normalizes with the batch's own.
            require(check_batch_statistics(
                &what,
                &inputs,
                &saved,
                Channels::All,
            ));
        }
        let got_y = y.to_vec().expect("download y");
        require(check_output(&what, &inputs, &saved, &got_y, Channels::All));
    }
}

/// A training forward (momentum 0.1 from the initial running stats) and the backward through
/// its batch statistics on `ctx`, outputs poisoned, every result checked; then
/// [`check_inference_round_trip`].
pub fn check_round_trip(ctx: &GpuContext, shape: &[usize], layout: Layout, seed: u64) {
    let view = ChannelView::new(shape, layout).expect("rank >= 2");
    let channels = view.channels;
    let x_data = normal_data(view.len(), seed, 1.5, 2.0);
    let dy_data = normal_data(view.len(), seed ^ 0xA5A5, 0.0, 1.0);
    let gamma = normal_data(channels, seed ^ 3, 1.0, 0.5);
    let beta = normal_data(channels, seed ^ 4, 0.0, 1.0);
    let (x, x_host) = upload_to(ctx, &x_data, shape, layout);
    let (dy, dy_host) = upload_to(ctx, &dy_data, shape, layout);
    let mut layer = BatchNorm::new(ctx, channels).expect("layer");
    layer.set_parameters(&gamma, &beta).expect("parameters");
    let y = filled_on(ctx, shape, layout, f32::NAN);
    let saved_stats = layer.forward_into(&x, &y).expect("forward");
    let dx = filled_on(ctx, shape, layout, f32::NAN);
    let params = layer
        .backward_into(&x, &dy, &dx, &saved_stats)
        .expect("backward")
        .expect("affine gradients");

    let what = format!("{shape:?} {layout:?} training");
    let saved = read_saved(&saved_stats);
    let inputs = ForwardInputs {
        x: x_host.view(),
        layout,
        gamma: Some(&gamma),
        beta: Some(&beta),
        eps: 1e-5,
    };
    require(check_batch_statistics(
        &what,
        &inputs,
        &saved,
        Channels::All,
    ));
    require(check_output(
        &what,
        &inputs,
        &saved,
        &y.to_vec().expect("download y"),
        Channels::All,
    ));
    let stats = reference::batch_statistics(x_host.view(), layout, 1e-5);
    let (mut want_mean, mut want_var) = (vec![0.0; channels], vec![1.0; channels]);
    reference::update_running_statistics(
        &mut want_mean,
        &mut want_var,
        &stats,
        view.values_per_channel(),
        0.1,
    );
    let (got_mean, got_var) = layer.running_statistics().expect("tracked");
    require(check_running_statistics(
        &what,
        &want_mean,
        &want_var,
        &stats,
        &got_mean,
        &got_var,
        Channels::All,
    ));
    let backward = BackwardInputs {
        forward: inputs,
        dy: dy_host.view(),
        saved: &saved,
        through: Through::Batch,
        depth: sum_depth(&plan_of(ctx, shape, layout, Operation::Backward)),
    };
    require(check_input_gradient(
        &what,
        &backward,
        &dx.to_vec().expect("download dx"),
        Channels::All,
    ));
    let (dgamma, dbeta) = params.read().expect("download dgamma and dbeta");
    require(check_parameter_gradients(
        &what,
        &backward,
        &dgamma,
        &dbeta,
        Channels::All,
    ));
    check_inference_round_trip(ctx, shape, layout, seed);
}

/// An inference forward from given running stats (one dispatch per window) and the backward
/// through them on `ctx`, outputs poisoned, every result checked.
pub fn check_inference_round_trip(ctx: &GpuContext, shape: &[usize], layout: Layout, seed: u64) {
    let view = ChannelView::new(shape, layout).expect("rank >= 2");
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
    let mut layer = BatchNorm::new(ctx, channels).expect("layer");
    layer.set_parameters(&gamma, &beta).expect("parameters");
    layer
        .set_running_statistics(&running_mean, &running_var)
        .expect("running stats");
    layer.set_training(false);
    let y = filled_on(ctx, shape, layout, f32::NAN);
    let saved_stats = layer.forward_into(&x, &y).expect("inference forward");
    let dx = filled_on(ctx, shape, layout, f32::NAN);
    let params = layer
        .backward_into(&x, &dy, &dx, &saved_stats)
        .expect("backward through running stats")
        .expect("affine gradients");

    let what = format!("{shape:?} {layout:?} inference");
    let saved = read_saved(&saved_stats);
    require(check_inference_statistics(
        &what,
        &running_mean,
        &running_var,
        1e-5,
        &saved,
    ));
    let inputs = ForwardInputs {
        x: x_host.view(),
        layout,
        gamma: Some(&gamma),
        beta: Some(&beta),
        eps: 1e-5,
    };
    require(check_output(
        &what,
        &inputs,
        &saved,
        &y.to_vec().expect("download y"),
        Channels::All,
    ));
    let backward = BackwardInputs {
        forward: inputs,
        dy: dy_host.view(),
        saved: &saved,
        through: Through::Running,
        depth: sum_depth(&plan_of(ctx, shape, layout, Operation::Backward)),
    };
    require(check_input_gradient(
        &what,
        &backward,
        &dx.to_vec().expect("download dx"),
        Channels::All,
    ));
    let (dgamma, dbeta) = params.read().expect("download dgamma and dbeta");
    require(check_parameter_gradients(
        &what,
        &backward,
        &dgamma,
        &dbeta,
        Channels::All,
    ));
    // The layer's own state: inference leaves the running stats as they were.
    let (mean_after, var_after) = layer.running_statistics().expect("tracked");
    assert_eq!(
        (mean_after, var_after),
        (running_mean, running_var),
        "{what}: inference changed the running stats"
    );
}
