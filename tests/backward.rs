//! The GPU backward pass against the f64 CPU reference: random shapes (proptest, capped), both
//! layouts, affine on and off, gradients through batch statistics (training, or inference
//! without running stats) and through running statistics (inference), all outputs
//! NaN-poisoned before the run.
//!
//! Tolerances: dx as the forward's outputs times invstd (dx carries gamma * invstd), dgamma and
//! dbeta within 1e-5 of the sum of the absolute values of their terms (float32 rounding in a
//! reduction of our depth stays far below that).

mod common;

use common::{assert_fused, context, normal_data, poisoned, upload, F32_EPS, FUSED_SHAPES};
use proptest::prelude::*;
use wgpu_batchnorm::{reference, BatchNorm, BatchNormConfig, ChannelView, Layout, StatsSource};

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Training: batch statistics, gradients through them.
    Training,
    /// Inference with running stats: constants.
    Running,
    /// Inference without running stats: batch statistics, as PyTorch.
    Untracked,
}

fn check_backward(shape: &[usize], layout: Layout, affine: bool, mode: Mode, seed: u64) {
    let ctx = context();
    let view = ChannelView::new(shape, layout).unwrap();
    let (channels, len) = (view.channels, view.len());
    let config = BatchNormConfig {
        affine,
        track_running_stats: !matches!(mode, Mode::Untracked),
        ..BatchNormConfig::default()
    };
    let mut layer = BatchNorm::with_config(&ctx, channels, config).unwrap();
    let gamma = normal_data(channels, seed ^ 1, 0.5, 1.0);
    let beta = normal_data(channels, seed ^ 2, 0.0, 1.0);
    if affine {
        layer.set_parameters(&gamma, &beta).unwrap();
    }
    let running_mean = normal_data(channels, seed ^ 3, 1.0, 1.0);
    let running_var: Vec<f32> = normal_data(channels, seed ^ 4, 0.0, 1.0)
        .iter()
        .map(|v| 0.2 + v.abs())
        .collect();
    if let Mode::Running = mode {
        layer
            .set_running_statistics(&running_mean, &running_var)
            .unwrap();
        layer.set_training(false);
    }
    if let Mode::Untracked = mode {
        layer.set_training(false);
    }
    let x_data = normal_data(len, seed, 1.0, 2.0);
    let dy_data = normal_data(len, seed ^ 5, 0.0, 1.0);
    let (x, x_host) = upload(&x_data, shape, layout);
    let (dy, dy_host) = upload(&dy_data, shape, layout);
    let y = poisoned(shape, layout);
    let saved = layer.forward_into(&x, &y).unwrap();
    let dx = poisoned(shape, layout);
    let params = layer.backward_into(&x, &dy, &dx, &saved).unwrap();
    assert_eq!(params.is_some(), affine);

    let gamma_ref = affine.then_some(gamma.as_slice());
    let eps = 1e-5;
    let (want, mean, invstd) = match mode {
        Mode::Running => {
            assert_eq!(saved.source(), StatsSource::Running);
            let rm: Vec<f64> = running_mean.iter().map(|&v| f64::from(v)).collect();
            let rv: Vec<f64> = running_var.iter().map(|&v| f64::from(v)).collect();
            let invstd = rv.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
            let want = reference::backward_running_statistics(
                x_host.view(),
                dy_host.view(),
                layout,
                &rm,
                &rv,
                eps,
                gamma_ref,
            );
            (want, rm, invstd)
        }
        Mode::Training | Mode::Untracked => {
            assert_eq!(saved.source(), StatsSource::Batch);
            let stats = reference::batch_statistics(x_host.view(), layout, eps);
            let want = reference::backward_batch_statistics(
                x_host.view(),
                dy_host.view(),
                layout,
                &stats.mean,
                &stats.invstd,
                gamma_ref,
            );
            (want, stats.mean, stats.invstd)
        }
    };
    let gamma_abs = |c: usize| {
        if affine {
            f64::from(gamma[c]).abs()
        } else {
            1.0
        }
    };
    let got_dx = dx.to_vec().unwrap();
    let mut sum_abs_dy = vec![0.0f64; channels];
    let mut sum_abs_dy_xhat = vec![0.0f64; channels];
    for i in 0..len {
        let c = view.channel_of(i);
        let ratio = mean[c].abs() * invstd[c];
        let x_hat = (f64::from(x_data[i]) - mean[c]) * invstd[c];
        sum_abs_dy[c] += f64::from(dy_data[i]).abs();
        sum_abs_dy_xhat[c] += (f64::from(dy_data[i]) * x_hat).abs();
        let tol = gamma_abs(c) * invstd[c].max(1.0) * (1e-5 + 8.0 * ratio * F32_EPS);
        let w = want.dx.as_slice().unwrap()[i];
        assert!(
            (f64::from(got_dx[i]) - w).abs() <= tol + 2.0 * F32_EPS * w.abs(),
            "{shape:?} {layout:?} {mode:?} affine={affine}: dx[{i}] = {}, want {w}",
            got_dx[i]
        );
    }
    if let Some(params) = params {
        let (dgamma, dbeta) = params.read().unwrap();
        for c in 0..channels {
            let rel = 1e-5 + 8.0 * mean[c].abs() * invstd[c] * F32_EPS;
            assert!(
                (f64::from(dgamma[c]) - want.dgamma[c]).abs() <= rel * sum_abs_dy_xhat[c] + 1e-6,
                "{shape:?} {layout:?} {mode:?}: dgamma[{c}] = {}, want {}",
                dgamma[c],
                want.dgamma[c]
            );
            assert!(
                (f64::from(dbeta[c]) - want.dbeta[c]).abs() <= 1e-5 * sum_abs_dy[c] + 1e-6,
                "{shape:?} {layout:?} {mode:?}: dbeta[{c}] = {}, want {}",
                dbeta[c],
                want.dbeta[c]
            );
        }
    }
}

fn case() -> impl Strategy<Value = (Vec<usize>, Layout)> {
    (
        1usize..=6,
        1usize..=9,
        prop::collection::vec(1usize..=7, 0..=3),
        any::<bool>(),
    )
        .prop_filter_map(
            "training needs two values per channel",
            |(n, c, spatial, last)| {
                if n * spatial.iter().product::<usize>() < 2 {
                    return None;
                }
                let mut shape = vec![n];
                if last {
                    shape.extend(spatial);
                    shape.push(c);
                    Some((shape, Layout::ChannelsLast))
                } else {
                    shape.push(c);
                    shape.extend(spatial);
                    Some((shape, Layout::ChannelsFirst))
                }
            },
        )
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Training),
        Just(Mode::Running),
        Just(Mode::Untracked)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn backward_matches_reference(
        (shape, layout) in case(),
        affine in any::<bool>(),
        mode in mode(),
        seed in any::<u64>(),
    ) {
        check_backward(&shape, layout, affine, mode, seed);
    }
}

/// Channels spanning several reduction chunks, in both reduction kernels and every mode.
#[test]
fn backward_over_several_chunks() {
    let cases: [(&[usize], Layout); 6] = [
        (&[8, 3, 40, 41], Layout::ChannelsFirst),
        // Over 32 partials per channel: merged by a workgroup, not a thread.
        (&[2, 2, 300, 300], Layout::ChannelsFirst),
        (&[9000, 3], Layout::ChannelsFirst),
        (&[3, 40, 41, 5], Layout::ChannelsLast),
        (&[2100, 7], Layout::ChannelsFirst),
        (&[1, 2, 100, 90], Layout::ChannelsFirst),
    ];
    for (k, (shape, layout)) in cases.into_iter().enumerate() {
        for mode in [Mode::Training, Mode::Running, Mode::Untracked] {
            check_backward(shape, layout, true, mode, 50 + k as u64);
        }
    }
}

/// The fused plans (one dispatch per backward) against the reference, in every mode.
#[test]
fn fused_plans_match_the_reference() {
    for (k, (shape, layout)) in FUSED_SHAPES.into_iter().enumerate() {
        assert_fused(shape, layout);
        for mode in [Mode::Training, Mode::Running, Mode::Untracked] {
            check_backward(shape, layout, k % 2 == 0, mode, 90 + k as u64);
        }
    }
}
