//! The GPU forward pass against the f64 CPU reference on random shapes (proptest, capped: the
//! software adapter is slow), both layouts, ranks 2 to 5, affine on and off, several steps of
//! running stats, momentum `None`, and track_running_stats off; plus deterministic cases that
//! need several reduction chunks per channel.

mod common;

use common::{assert_fused, context, normal_data, Scenario, FUSED_SHAPES};
use proptest::prelude::*;
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, BatchNormError, Layout, Tensor};

fn layout() -> impl Strategy<Value = Layout> {
    prop_oneof![Just(Layout::ChannelsFirst), Just(Layout::ChannelsLast)]
}

/// Shapes in memory order, rank 2 to 5, with odd sizes.
fn shape() -> impl Strategy<Value = (Vec<usize>, Layout)> {
    (
        1usize..=6,
        1usize..=9,
        prop::collection::vec(1usize..=7, 0..=3),
        layout(),
    )
        .prop_map(|(n, c, spatial, layout)| {
            let mut shape = vec![n];
            match layout {
                Layout::ChannelsFirst => {
                    shape.push(c);
                    shape.extend(spatial);
                }
                Layout::ChannelsLast => {
                    shape.extend(spatial);
                    shape.push(c);
                }
            }
            (shape, layout)
        })
}

fn config() -> impl Strategy<Value = BatchNormConfig> {
    (
        prop_oneof![Just(None), (0.0f64..=1.0).prop_map(Some)],
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(1e-5), Just(1e-3), Just(0.0)],
    )
        .prop_map(
            |(momentum, affine, track_running_stats, eps)| BatchNormConfig {
                eps,
                momentum,
                affine,
                track_running_stats,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn forward_matches_reference(
        (shape, layout) in shape(),
        config in config(),
        steps in 1usize..=3,
        seed in any::<u64>(),
        offset in prop_oneof![Just(0.0), -50.0f64..50.0],
        scale in prop_oneof![Just(1.0), 0.01f64..20.0],
    ) {
        let len: usize = shape.iter().product();
        let channels = match layout {
            Layout::ChannelsFirst => shape[1],
            Layout::ChannelsLast => shape[shape.len() - 1],
        };
        if len / channels == 1 {
            // PyTorch refuses training on one value per channel; so do we, and change nothing.
            let ctx = context();
            let mut layer = BatchNorm::with_config(&ctx, channels, config).unwrap();
            let x = Tensor::from_slice(&ctx, &normal_data(len, seed, 0.0, 1.0), &shape, layout).unwrap();
            let refused = matches!(layer.forward(&x), Err(BatchNormError::TooFewValuesPerChannel { .. }));
            prop_assert!(refused);
            prop_assert_eq!(layer.num_batches_tracked(), 0);
            return Ok(());
        }
        let affine = config.affine.then(|| {
            let gamma = normal_data(channels, seed ^ 1, 0.0, 1.0);
            let beta = normal_data(channels, seed ^ 2, 0.0, 1.0);
            (gamma, beta)
        });
        let batches = (0..steps)
            .map(|k| normal_data(len, seed.wrapping_add(k as u64 * 7919), offset, scale))
            .collect();
        Scenario { shape, layout, config, affine, batches }.check();
    }
}

/// The fused plans (one dispatch per training forward) against the reference.
#[test]
fn fused_plans_match_the_reference() {
    for (k, (shape, layout)) in FUSED_SHAPES.into_iter().enumerate() {
        assert_fused(shape, layout);
        let view = wgpu_batchnorm::ChannelView::new(shape, layout).unwrap();
        Scenario {
            shape: shape.to_vec(),
            layout,
            config: BatchNormConfig::default(),
            affine: Some((
                normal_data(view.channels, 50 + k as u64, 1.0, 0.5),
                normal_data(view.channels, 60 + k as u64, 0.0, 1.0),
            )),
            batches: vec![
                normal_data(view.len(), 70 + k as u64, 3.0, 2.0),
                normal_data(view.len(), 80 + k as u64, -2.0, 0.5),
            ],
        }
        .check();
    }
}

/// Channels whose values span several reduction chunks and several partials per channel, in
/// both reduction kernels and both finalize kinds; N = 1 with a spatial extent; C = 1.
#[test]
fn channels_spanning_several_chunks() {
    let cases: [(&[usize], Layout); 8] = [
        (&[8, 3, 40, 41], Layout::ChannelsFirst),
        // Over 32 partials per channel: merged by a workgroup, not a thread.
        (&[2, 2, 300, 300], Layout::ChannelsFirst),
        (&[9000, 3], Layout::ChannelsFirst),
        (&[3, 40, 41, 5], Layout::ChannelsLast),
        (&[2100, 7], Layout::ChannelsFirst),
        (&[1, 2, 100, 90], Layout::ChannelsFirst),
        (&[5, 1, 3000], Layout::ChannelsFirst),
        (&[1, 33, 1], Layout::ChannelsLast),
    ];
    for (k, (shape, layout)) in cases.into_iter().enumerate() {
        let len: usize = shape.iter().product();
        let channels = match layout {
            Layout::ChannelsFirst => shape[1],
            Layout::ChannelsLast => shape[shape.len() - 1],
        };
        Scenario {
            shape: shape.to_vec(),
            layout,
            config: BatchNormConfig::default(),
            affine: Some((
                normal_data(channels, 10 + k as u64, 1.0, 0.5),
                normal_data(channels, 20 + k as u64, 0.0, 1.0),
            )),
            batches: vec![
                normal_data(len, 30 + k as u64, 2.0, 3.0),
                normal_data(len, 40 + k as u64, -1.0, 0.5),
            ],
        }
        .check();
    }
}
