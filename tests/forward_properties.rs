//! The GPU forward pass against the f64 CPU reference on random shapes (proptest; 32 cases
//! unless `PROPTEST_CASES` says otherwise: the software adapter is slow), both layouts, ranks 2
//! to 5, channel counts around the band width of 32, affine on and off, several steps of
//! running stats, momentum `None`, 0 and 1, track_running_stats off, and the plans of a CPU
//! adapter, a discrete GPU and small bindings; plus deterministic cases whose plans are
//! asserted: fused, and channels spanning several chunks and windows.

mod common;

use common::scenario::Scenario;
use common::{
    assert_plan, context, normal_data, planned, proptest_cases, PlanClaim, Planned, FUSED_CASES,
    SPLIT_CASES,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use wgpu_batchnorm::{
    BatchNorm, BatchNormConfig, BatchNormError, ChannelView, GpuContext, Layout, Tensor,
};

fn layout() -> impl Strategy<Value = Layout> {
    prop_oneof![Just(Layout::ChannelsFirst), Just(Layout::ChannelsLast)]
}

/// Channel counts, weighted towards the edges of a strided band (32 channels) and of two.
fn channels() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 1usize..=9,
        2 => 31usize..=33,
        2 => 63usize..=65,
        1 => 10usize..=100,
    ]
}

/// Shapes in memory order, rank 2 to 5, with odd sizes.
fn shape() -> impl Strategy<Value = (Vec<usize>, Layout)> {
    (
        1usize..=6,
        channels(),
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

/// The context a case runs on: the adapter as it is, or one of the planned kinds.
fn context_kind() -> impl Strategy<Value = Option<Planned>> {
    prop_oneof![
        Just(None),
        Just(Some(Planned::Cpu)),
        Just(Some(Planned::DiscreteGpu)),
        Just(Some(Planned::SmallBindings)),
    ]
}

fn config() -> impl Strategy<Value = BatchNormConfig> {
    (
        prop_oneof![
            Just(None),
            Just(Some(0.0)),
            Just(Some(1.0)),
            (0.0f64..=1.0).prop_map(Some)
        ],
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(1e-5), Just(1e-3), Just(1e-30)],
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
    #![proptest_config(ProptestConfig {
        cases: proptest_cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn forward_matches_reference(
        (shape, layout) in shape(),
        kind in context_kind(),
        config in config(),
        steps in 1usize..=3,
        seed in any::<u64>(),
        offset in prop_oneof![Just(0.0), -50.0f64..50.0],
        scale in prop_oneof![Just(1.0), 0.01f64..20.0],
    ) {
        let ctx = kind.map_or_else(context, planned);
        let view = ChannelView::new(&shape, layout).unwrap();
        let (len, channels) = (view.len(), view.channels);
        if view.values_per_channel() == 1 {
            // PyTorch refuses training on one value per channel; so do we, and change nothing.
            let mut layer = BatchNorm::with_config(&ctx, channels, config).unwrap();
            let x = Tensor::from_slice(&ctx, &normal_data(len, seed, 0.0, 1.0), &shape, layout)
                .unwrap();
            let refused =
                matches!(layer.forward(&x), Err(BatchNormError::TooFewValuesPerChannel { .. }));
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
        Scenario { shape, layout, config, affine, batches }.check_on(&ctx);
    }
}

/// The fused plans (one dispatch per training forward: a workgroup per channel or band, or on
/// CPU adapters a thread per channel) against the reference.
#[test]
fn fused_plans_match_the_reference() {
    for (planned_as, shapes) in FUSED_CASES {
        let ctx = planned(planned_as);
        for (k, &(shape, layout)) in shapes.iter().enumerate() {
            fused_forward_matches_the_reference(&ctx, shape, layout, k as u64);
        }
    }
}

fn fused_forward_matches_the_reference(ctx: &GpuContext, shape: &[usize], layout: Layout, k: u64) {
    assert_plan(ctx, shape, layout, PlanClaim::FUSED);
    let view = ChannelView::new(shape, layout).unwrap();
    Scenario {
        shape: shape.to_vec(),
        layout,
        config: BatchNormConfig::default(),
        affine: Some((
            normal_data(view.channels, 50 + k, 1.0, 0.5),
            normal_data(view.channels, 60 + k, 0.0, 1.0),
        )),
        batches: vec![
            normal_data(view.len(), 70 + k, 3.0, 2.0),
            normal_data(view.len(), 80 + k, -2.0, 0.5),
        ],
    }
    .check_on(ctx);
}

/// Channels whose values span several reduction chunks and windows (`common::SPLIT_CASES`:
/// both reduction kernels, both finalize kinds, windows), two training steps and inference.
#[test]
fn channels_spanning_several_chunks() {
    for (k, case) in SPLIT_CASES.into_iter().enumerate() {
        let ctx = case.context();
        let view = ChannelView::new(case.shape, case.layout).unwrap();
        Scenario {
            shape: case.shape.to_vec(),
            layout: case.layout,
            config: BatchNormConfig::default(),
            affine: Some((
                normal_data(view.channels, 10 + k as u64, 1.0, 0.5),
                normal_data(view.channels, 20 + k as u64, 0.0, 1.0),
            )),
            batches: vec![
                normal_data(view.len(), 30 + k as u64, 2.0, 3.0),
                normal_data(view.len(), 40 + k as u64, -1.0, 0.5),
            ],
        }
        .check_on(&ctx);
    }
}
