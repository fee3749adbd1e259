//! Batch norm inside a training loop: layers of several shapes recorded into one encoder per
//! step and submitted once; after the first step, a step creates no buffers and no bind groups
//! (wgpu's live-object counters, read around the recording); calls recorded before one
//! submission each see their own values (two shapes, two layers, and one layer twice with
//! momentum `None`, whose count advances on the GPU); and the layer's cache of prepared calls
//! is bounded and lets a caller's dropped buffers go.

mod common;

use common::checks::{
    check_batch_statistics, check_input_gradient, check_output, check_parameter_gradients,
    check_running_statistics, sum_depth, BackwardInputs, Channels, ForwardInputs, Through,
};
use common::scenario::{read_saved, require};
use common::{filled_on, limited_context, normal_data, plan_of, upload_to};
use ndarray::ArrayD;
use wgpu_batchnorm::plan::Operation;
use wgpu_batchnorm::{reference, BatchNorm, BatchNormConfig, GpuContext, Layout, Tensor};

/// A context of its own, so the counters see only this test's objects.
fn own_context() -> GpuContext {
    limited_context(128 << 20, 65535, wgpu::DeviceType::Cpu)
}

/// PyTorch's defaults with momentum `None`: running stats as a cumulative average, weighted by
/// the batch count the GPU advances.
fn cumulative() -> BatchNormConfig {
    BatchNormConfig {
        momentum: None,
        ..BatchNormConfig::default()
    }
}

/// Live buffers and bind groups of the device.
fn live_objects(ctx: &GpuContext) -> (isize, isize) {
    let counters = ctx.device().get_internal_counters();
    (counters.hal.buffers.read(), counters.hal.bind_groups.read())
}

/// One layer of the loop: its module and the tensors it reads and writes, kept across steps.
struct Layer {
    norm: BatchNorm,
    shape: Vec<usize>,
    layout: Layout,
    x: Tensor,
    x_host: ArrayD<f32>,
    y: Tensor,
    dy: Tensor,
    dy_host: ArrayD<f32>,
    dx: Tensor,
}

impl Layer {
    fn new(
        ctx: &GpuContext,
        shape: &[usize],
        layout: Layout,
        config: BatchNormConfig,
        seed: u64,
    ) -> Self {
        let view = wgpu_batchnorm::ChannelView::new(shape, layout).unwrap();
        let (x, x_host) = upload_to(ctx, &normal_data(view.len(), seed, 1.0, 2.0), shape, layout);
        let (dy, dy_host) = upload_to(
            ctx,
            &normal_data(view.len(), seed ^ 9, 0.0, 1.0),
            shape,
            layout,
        );
        let mut norm = BatchNorm::with_config(ctx, view.channels, config).unwrap();
        norm.set_parameters(
            &normal_data(view.channels, seed ^ 1, 1.0, 0.5),
            &normal_data(view.channels, seed ^ 2, 0.0, 1.0),
        )
        .unwrap();
        Layer {
            norm,
            shape: shape.to_vec(),
            layout,
            x,
            x_host,
            y: filled_on(ctx, shape, layout, f32::NAN),
            dy,
            dy_host,
            dx: filled_on(ctx, shape, layout, f32::NAN),
        }
    }
}

/// Records every layer's forward, then every layer's backward (in reverse), into `encoder`;
/// returns each layer's saved statistics and dgamma/dbeta.
fn record_step(
    layers: &mut [Layer],
    encoder: &mut wgpu::CommandEncoder,
) -> Vec<(wgpu_batchnorm::SavedStats, wgpu_batchnorm::ChannelPair)> {
    let saved: Vec<_> = layers
        .iter_mut()
        .map(|l| l.norm.record_forward(encoder, &l.x, &l.y, None).unwrap())
        .collect();
    let mut grads: Vec<_> = layers
        .iter()
        .zip(&saved)
        .rev()
        .map(|(l, s)| {
            l.norm
                .record_backward(encoder, &l.x, &l.dy, &l.dx, s, None)
                .unwrap()
                .unwrap()
        })
        .collect();
    grads.reverse();
    saved.into_iter().zip(grads).collect()
}

/// Every result of the step against the reference, `steps_before` training steps on the same
/// batch having run before it (momentum 0.1).
fn check_step(
    ctx: &GpuContext,
    layers: &[Layer],
    results: &[(wgpu_batchnorm::SavedStats, wgpu_batchnorm::ChannelPair)],
    steps_before: usize,
) {
    for (layer, (saved_stats, grads)) in layers.iter().zip(results) {
        let what = format!(
            "{:?} {:?} step {}",
            layer.shape,
            layer.layout,
            steps_before + 1
        );
        let saved = read_saved(saved_stats);
        let (gamma, beta) = layer.norm.parameters().unwrap();
        let inputs = ForwardInputs {
            x: layer.x_host.view(),
            layout: layer.layout,
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
            &layer.y.to_vec().unwrap(),
            Channels::All,
        ));
        let stats = reference::batch_statistics(layer.x_host.view(), layer.layout, 1e-5);
        let channels = gamma.len();
        let (mut mean, mut var) = (vec![0.0; channels], vec![1.0; channels]);
        let m = layer.x_host.len() / channels;
        for _ in 0..=steps_before {
            reference::update_running_statistics(&mut mean, &mut var, &stats, m, 0.1);
        }
        let (got_mean, got_var) = layer.norm.running_statistics().unwrap();
        require(check_running_statistics(
            &what,
            &mean,
            &var,
            &stats,
            &got_mean,
            &got_var,
            Channels::All,
        ));
        let backward = BackwardInputs {
            forward: inputs,
            dy: layer.dy_host.view(),
            saved: &saved,
            through: Through::Batch,
            depth: sum_depth(&plan_of(
                ctx,
                &layer.shape,
                layer.layout,
                Operation::Backward,
            )),
        };
        require(check_input_gradient(
            &what,
            &backward,
            &layer.dx.to_vec().unwrap(),
            Channels::All,
        ));
        let (dgamma, dbeta) = grads.read().unwrap();
        require(check_parameter_gradients(
            &what,
            &backward,
            &dgamma,
            &dbeta,
            Channels::All,
        ));
    }
}

#[test]
fn a_steady_training_step_creates_no_buffers_and_no_bind_groups() {
    let ctx = own_context();
    let config = BatchNormConfig::default();
    let mut layers = vec![
        Layer::new(&ctx, &[4, 8, 12, 12], Layout::ChannelsFirst, config, 1),
        Layer::new(&ctx, &[4, 6, 6, 16], Layout::ChannelsLast, config, 2),
        // Several chunks: partials in the context's scratch.
        Layer::new(&ctx, &[8, 3, 64, 64], Layout::ChannelsFirst, config, 3),
    ];
    for step in 0..3 {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        let before = live_objects(&ctx);
        let results = record_step(&mut layers, &mut encoder);
        let after = live_objects(&ctx);
        if step > 0 {
            assert_eq!(
                after, before,
                "step {step}: (buffers, bind groups) before and after recording"
            );
        } else {
            assert!(
                after.0 > before.0 && after.1 > before.1,
                "the first step prepares"
            );
        }
        ctx.queue().submit([encoder.finish()]);
        check_step(&ctx, &layers, &results, step);
        // The next step reuses these outputs with the same inputs: poisoned, a dispatch the
        // prepared calls skipped would leave NaN, not this step's right answer.
        for (layer, (_, grads)) in layers.iter().zip(&results) {
            layer.y.fill(f32::NAN).unwrap();
            layer.dx.fill(f32::NAN).unwrap();
            let nan = vec![f32::NAN; 2 * layer.norm.channels()];
            ctx.queue()
                .write_buffer(grads.buffer(), 0, bytemuck::cast_slice(&nan));
        }
    }
    for layer in &layers {
        assert_eq!(layer.norm.prepared_calls(), 2, "a forward and a backward");
    }
}

/// Three calls recorded into one encoder and submitted once: two layers of two shapes, and the
/// first layer twice on the same tensors, a copy of another batch into its x recorded between
/// the two. With momentum None the second call must weigh its batch by 1/2 and the first by
/// 1/1, though both calls run the same prepared dispatches and no host write could tell them
/// apart before the submission (the count advances on the GPU).
#[test]
fn calls_recorded_before_one_submission_each_see_their_own_values() {
    let ctx = own_context();
    let cumulative = cumulative();
    let mut first = Layer::new(&ctx, &[6, 5, 7], Layout::ChannelsFirst, cumulative, 11);
    let mut second = Layer::new(
        &ctx,
        &[3, 4, 4, 9],
        Layout::ChannelsLast,
        BatchNormConfig::default(),
        12,
    );
    let other = normal_data(first.x_host.len(), 13, -3.0, 0.5);
    let (other_x, other_host) = upload_to(&ctx, &other, &first.shape, first.layout);

    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    first
        .norm
        .record_forward(&mut encoder, &first.x, &first.y, None)
        .unwrap();
    let saved_second = second
        .norm
        .record_forward(&mut encoder, &second.x, &second.y, None)
        .unwrap();
    encoder.copy_buffer_to_buffer(
        other_x.buffer(),
        0,
        first.x.buffer(),
        0,
        other.len() as u64 * 4,
    );
    let saved_first = first
        .norm
        .record_forward(&mut encoder, &first.x, &first.y, None)
        .unwrap();
    assert_eq!(first.norm.num_batches_tracked(), 2);
    assert_eq!(
        first.norm.prepared_calls(),
        1,
        "both calls run the same prepared dispatches"
    );
    ctx.queue().submit([encoder.finish()]);

    // The first layer's running stats: its first batch with weight 1/1, the other with 1/2.
    let stats_first = reference::batch_statistics(first.x_host.view(), first.layout, 1e-5);
    let stats_other = reference::batch_statistics(other_host.view(), first.layout, 1e-5);
    let (mut mean, mut var) = (vec![0.0; 5], vec![1.0; 5]);
    reference::update_running_statistics(&mut mean, &mut var, &stats_first, 42, 1.0);
    reference::update_running_statistics(&mut mean, &mut var, &stats_other, 42, 0.5);
    let (got_mean, got_var) = first.norm.running_statistics().unwrap();
    require(check_running_statistics(
        "first layer",
        &mean,
        &var,
        &stats_other,
        &got_mean,
        &got_var,
        Channels::All,
    ));
    // The second call's y and statistics, from the other batch.
    let (gamma, beta) = first.norm.parameters().unwrap();
    let inputs = ForwardInputs {
        x: other_host.view(),
        layout: first.layout,
        gamma: Some(&gamma),
        beta: Some(&beta),
        eps: 1e-5,
    };
    let saved = read_saved(&saved_first);
    require(check_batch_statistics(
        "first layer",
        &inputs,
        &saved,
        Channels::All,
    ));
    require(check_output(
        "first layer",
        &inputs,
        &saved,
        &first.y.to_vec().unwrap(),
        Channels::All,
    ));
    // The second layer, between them, its own.
    let (gamma, beta) = second.norm.parameters().unwrap();
    let inputs = ForwardInputs {
        x: second.x_host.view(),
        layout: second.layout,
        gamma: Some(&gamma),
        beta: Some(&beta),
        eps: 1e-5,
    };
    let saved = read_saved(&saved_second);
    require(check_batch_statistics(
        "second layer",
        &inputs,
        &saved,
        Channels::All,
    ));
    require(check_output(
        "second layer",
        &inputs,
        &saved,
        &second.y.to_vec().unwrap(),
        Channels::All,
    ));
}

#[test]
fn the_cache_is_bounded_and_lets_dropped_buffers_go() {
    let ctx = own_context();
    let mut norm = BatchNorm::new(&ctx, 3).unwrap();
    let shape = [4usize, 3, 5];
    let tensors = |seed: u64| {
        let (x, _) = upload_to(
            &ctx,
            &normal_data(60, seed, 0.0, 1.0),
            &shape,
            Layout::ChannelsFirst,
        );
        (x, filled_on(&ctx, &shape, Layout::ChannelsFirst, 0.0))
    };
    let run = |norm: &mut BatchNorm, (x, y): &(Tensor, Tensor)| {
        norm.forward_into(x, y).unwrap();
    };
    let a = tensors(1);
    let b = tensors(2);
    run(&mut norm, &a);
    run(&mut norm, &b);
    assert_eq!(norm.prepared_calls(), 2);
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    let (buffers_with_a, _) = live_objects(&ctx);
    drop(a);
    // The next call sweeps a's entry; a's buffers, its uniform block and its saved statistics go.
    run(&mut norm, &b);
    assert_eq!(norm.prepared_calls(), 1);
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    let (buffers_without_a, _) = live_objects(&ctx);
    assert!(
        buffers_without_a <= buffers_with_a - 4,
        "live buffers {buffers_with_a} -> {buffers_without_a}: a's x, y, uniforms and statistics should be gone"
    );
    // Bounded: many inputs kept alive, at most CAPACITY (16) prepared calls.
    let kept: Vec<_> = (10..40).map(tensors).collect();
    for pair in &kept {
        run(&mut norm, pair);
    }
    assert_eq!(norm.prepared_calls(), 16);
}

/// A batch count at the end of its range stays there: the host's u64 and the GPU's u32 (which
/// momentum `None` divides by) neither overflow nor wrap to 0, and the running stats stay
/// finite, barely moved by a batch of weight 1 / count.
#[test]
fn a_batch_count_at_the_end_of_its_range_stays_there() {
    let ctx = own_context();
    let cumulative = cumulative();
    for count in [u64::from(u32::MAX), u64::MAX] {
        let mut layer = Layer::new(&ctx, &[4, 3, 5], Layout::ChannelsFirst, cumulative, 21);
        layer.norm.set_num_batches_tracked(count);
        for _ in 0..2 {
            layer.norm.forward_into(&layer.x, &layer.y).unwrap();
        }
        assert_eq!(layer.norm.num_batches_tracked(), count.saturating_add(2));
        let (mean, var) = layer.norm.running_statistics().unwrap();
        for c in 0..3 {
            assert!(mean[c].abs() < 1e-6, "count {count}: running mean {mean:?}");
            assert!(
                (var[c] - 1.0).abs() < 1e-6,
                "count {count}: running var {var:?}"
            );
        }
    }
}
