//! Probes at the edges of reduction chunks and windows, where an off-by-one moves a statistic
//! by about 1/M and hides under any tolerance at large M; and data built to expose the
//! shortcuts the kernels rejected. The chunk and window edges come from the plan each case's
//! context makes (asserted first).
//!
//! - dy zero except distinct powers of two at the first and last value of every chunk: each
//!   partial sum of distinct powers of two below 2^24 is exact in float32, in any order, so
//!   dbeta must equal the exact sum bit for bit; a value dropped or added twice changes it.
//! - A spike at the first and last value of every chunk, forward: a dropped or doubled spike
//!   moves the mean by spike/M, far over the tolerance.
//! - The first value of every chunk far from the mean: the chunk's shift (`batch_statistics.wgsl`)
//!   is its first value; shifted sums (sum (x - K), sum (x - K)^2, rejected in
//!   `docs/performance.md`) lose about (|K - mean| / std)^2 u of the variance there.
//! - Chunk means alternating by 2e4: the variance lives in Chan's delta term of the cross-chunk
//!   merge.

mod common;

use common::checks::{
    check_batch_statistics, check_input_gradient, check_output, check_parameter_gradients,
    sum_depth, BackwardInputs, Channels, ForwardInputs, Through,
};
use common::scenario::{read_saved, require};
use common::{filled_on, normal_data, plan_of, upload_to, PlanClaim, Planned, PlannedCase};
use wgpu_batchnorm::plan::{FinalizeKind, Operation, Plan, ReductionKind};
use wgpu_batchnorm::{BatchNorm, ChannelView, Layout};

const FIRST: Layout = Layout::ChannelsFirst;
const LAST: Layout = Layout::ChannelsLast;

/// Plans with chunk and window edges of every kind: several chunks per channel (contiguous and
/// strided, merged by a thread or a workgroup), windows of whole rows and of channel ranges,
/// and a fused plan (one chunk: the channel's first and last values).
const CASES: [PlannedCase; 10] = [
    PlannedCase {
        shape: &[8, 3, 64, 64],
        layout: FIRST,
        planned: Planned::Cpu,
        claim: PlanClaim::split(32, FinalizeKind::PerThread),
    },
    PlannedCase {
        shape: &[2, 2, 300, 300],
        layout: FIRST,
        planned: Planned::Cpu,
        // A CPU adapter merges even 176 partials in one thread.
        claim: PlanClaim::split(176, FinalizeKind::PerThread),
    },
    PlannedCase {
        shape: &[9000, 3],
        layout: FIRST,
        planned: Planned::Cpu,
        claim: PlanClaim::split(9, FinalizeKind::PerThread),
    },
    PlannedCase {
        shape: &[3, 40, 41, 5],
        layout: LAST,
        planned: Planned::Cpu,
        claim: PlanClaim::split(5, FinalizeKind::PerThread),
    },
    PlannedCase {
        shape: &[36, 2, 128, 128],
        layout: FIRST,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::split(288, FinalizeKind::PerWorkgroup),
    },
    PlannedCase {
        shape: &[4200, 7],
        layout: FIRST,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::split_in_dispatch(66, FinalizeKind::PerWorkgroup),
    },
    PlannedCase {
        shape: &[8, 3, 64, 64],
        layout: FIRST,
        planned: Planned::SmallBindings,
        claim: PlanClaim {
            fused: false,
            windows: 8,
            chunks: 32,
            finalize: FinalizeKind::PerThread,
            last_workgroup: false,
            narrow_forward: false,
        },
    },
    PlannedCase {
        shape: &[10, 64, 63, 8],
        layout: LAST,
        planned: Planned::SmallBindings,
        claim: PlanClaim {
            fused: false,
            windows: 20,
            chunks: 159,
            finalize: FinalizeKind::PerThread,
            last_workgroup: false,
            narrow_forward: false,
        },
    },
    PlannedCase {
        shape: &[2, 3, 10000],
        layout: FIRST,
        planned: Planned::SmallBindings,
        claim: PlanClaim {
            fused: false,
            windows: 6,
            chunks: 20,
            finalize: FinalizeKind::PerThread,
            last_workgroup: false,
            narrow_forward: false,
        },
    },
    PlannedCase {
        shape: &[3, 5, 67, 61],
        layout: FIRST,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::FUSED,
    },
];

/// The value numbers m (0 <= m < M) where each chunk of channel `c` begins and ends, in the
/// order the plan's windows and chunks take them.
fn chunk_edges(plan: &Plan, c: usize) -> Vec<(usize, usize)> {
    let view = plan.view;
    let mut edges = Vec::new();
    for window in &plan.windows {
        if c < window.c0 || c >= window.c0 + window.c_count {
            continue;
        }
        // Values of the channel in the window, and the number of the first one.
        let (values, first) = match plan.kind {
            ReductionKind::Contiguous
            | ReductionKind::PerThread
            | ReductionKind::PerThreadQuads => {
                (window.o_count * view.inner, window.o0 * view.inner)
            }
            ReductionKind::Strided => (window.o_count, window.o0),
        };
        let chunk = if plan.fused_window().is_some() {
            values
        } else {
            plan.chunk_len
        };
        for start in (0..values).step_by(chunk) {
            let end = (start + chunk).min(values);
            edges.push((first + start, first + end - 1));
        }
    }
    edges
}

/// Memory index of the m-th value of channel c.
fn value_index(view: &ChannelView, c: usize, m: usize) -> usize {
    view.index(m / view.inner, c, m % view.inner)
}

/// Every edge value of channel c (a chunk's first and last), at most 24 of them: the first and
/// last twelve where a plan has more.
fn edge_values(plan: &Plan, c: usize) -> Vec<usize> {
    let mut values: Vec<usize> = chunk_edges(plan, c)
        .into_iter()
        .flat_map(|(first, last)| [first, last])
        .collect();
    values.dedup();
    if values.len() > 24 {
        let tail = values.split_off(values.len() - 12);
        values.truncate(12);
        values.extend(tail);
    }
    values
}

#[test]
fn the_edges_cover_every_value_once() {
    for case in CASES {
        let ctx = case.context();
        for operation in [Operation::TrainingForward, Operation::Backward] {
            let plan = plan_of(&ctx, case.shape, case.layout, operation);
            for c in [0, plan.view.channels - 1] {
                let edges = chunk_edges(&plan, c);
                assert_eq!(edges.len(), plan.chunks_total, "{case:?}");
                let mut next = 0;
                for (first, last) in edges {
                    assert_eq!(first, next, "{case:?}");
                    next = last + 1;
                }
                assert_eq!(next, plan.view.values_per_channel(), "{case:?}");
            }
        }
    }
}

/// dy is zero but for distinct powers of two at the chunk edges: dbeta is exact, bit for bit.
#[test]
fn dbeta_is_exact_over_chunk_and_window_edges() {
    for (k, case) in CASES.into_iter().enumerate() {
        let ctx = case.context();
        let what = format!("{case:?}");
        let plan = plan_of(&ctx, case.shape, case.layout, Operation::Backward);
        let view = plan.view;
        let x_data = normal_data(view.len(), 40 + k as u64, 0.5, 2.0);
        let mut dy_data = vec![0.0f32; view.len()];
        let mut want_dbeta = vec![0.0f64; view.channels];
        for (c, want) in want_dbeta.iter_mut().enumerate() {
            for (e, m) in edge_values(&plan, c).into_iter().enumerate() {
                // Channel-dependent signs, so a value that lands in the wrong channel shows.
                let power = if c % 2 == 0 { 1.0 } else { -1.0 } * f64::from(1u32 << e);
                dy_data[value_index(&view, c, m)] = power as f32;
                *want += power;
            }
        }
        let (x, x_host) = upload_to(&ctx, &x_data, case.shape, case.layout);
        let (dy, dy_host) = upload_to(&ctx, &dy_data, case.shape, case.layout);
        let mut layer = BatchNorm::new(&ctx, view.channels).unwrap();
        let saved_stats = layer.forward(&x).unwrap().saved;
        let dx = filled_on(&ctx, case.shape, case.layout, f32::NAN);
        let (dgamma, dbeta) = layer
            .backward_into(&x, &dy, &dx, &saved_stats)
            .unwrap()
            .unwrap()
            .read()
            .unwrap();
        for c in 0..view.channels {
            assert_eq!(
                dbeta[c].to_bits(),
                (want_dbeta[c] as f32).to_bits(),
                "{what}: dbeta[{c}] = {}, want exactly {}",
                dbeta[c],
                want_dbeta[c]
            );
        }
        let saved = read_saved(&saved_stats);
        let backward = BackwardInputs {
            forward: ForwardInputs {
                x: x_host.view(),
                layout: case.layout,
                gamma: None,
                beta: None,
                eps: 1e-5,
            },
            dy: dy_host.view(),
            saved: &saved,
            through: Through::Batch,
            depth: sum_depth(&plan),
        };
        require(check_input_gradient(
            &what,
            &backward,
            &dx.to_vec().unwrap(),
            Channels::All,
        ));
        require(check_parameter_gradients(
            &what,
            &backward,
            &dgamma,
            &dbeta,
            Channels::All,
        ));
    }
}

/// One training forward of `x_data` on a fresh layer; statistics and output checked.
fn check_forward(what: &str, case: &PlannedCase, x_data: &[f32]) {
    let ctx = case.context();
    let view = ChannelView::new(case.shape, case.layout).unwrap();
    let (x, host) = upload_to(&ctx, x_data, case.shape, case.layout);
    let gamma = normal_data(view.channels, 7, 1.0, 0.5);
    let beta = normal_data(view.channels, 8, 0.0, 1.0);
    let mut layer = BatchNorm::new(&ctx, view.channels).unwrap();
    layer.set_parameters(&gamma, &beta).unwrap();
    let y = filled_on(&ctx, case.shape, case.layout, f32::NAN);
    let saved = read_saved(&layer.forward_into(&x, &y).unwrap());
    let inputs = ForwardInputs {
        x: host.view(),
        layout: case.layout,
        gamma: Some(&gamma),
        beta: Some(&beta),
        eps: 1e-5,
    };
    require(check_batch_statistics(what, &inputs, &saved, Channels::All));
    require(check_output(
        what,
        &inputs,
        &saved,
        &y.to_vec().unwrap(),
        Channels::All,
    ));
}

/// Normal data with the values at `at(plan, c)` of every channel replaced by `value(c, k)`
/// (k counts the replaced values of the channel).
fn data_with_edges(
    case: &PlannedCase,
    seed: u64,
    at: impl Fn(&Plan, usize) -> Vec<usize>,
    value: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    let plan = plan_of(
        &common::planned(case.planned),
        case.shape,
        case.layout,
        Operation::TrainingForward,
    );
    let view = plan.view;
    let mut data = normal_data(view.len(), seed, 1.0, 1.0);
    for c in 0..view.channels {
        for (k, m) in at(&plan, c).into_iter().enumerate() {
            data[value_index(&view, c, m)] = value(c, k);
        }
    }
    data
}

#[test]
fn a_spike_at_every_chunk_edge() {
    for (k, case) in CASES.into_iter().enumerate() {
        let data = data_with_edges(&case, 60 + k as u64, edge_values, |c, k| {
            (1000 + 100 * c) as f32 * if k % 2 == 0 { 1.0 } else { -0.5 }
        });
        check_forward(&format!("spikes {case:?}"), &case, &data);
    }
}

#[test]
fn chunks_that_start_far_from_the_mean() {
    let firsts = |plan: &Plan, c: usize| -> Vec<usize> {
        chunk_edges(plan, c)
            .into_iter()
            .map(|(first, _)| first)
            .collect()
    };
    for (k, case) in CASES.into_iter().enumerate() {
        // 1 + 1000: a thousand standard deviations from the mean of the other values.
        let data = data_with_edges(&case, 80 + k as u64, firsts, |_, _| 1001.0);
        check_forward(&format!("far first values {case:?}"), &case, &data);
    }
}

#[test]
fn chunk_means_alternating_by_2e4() {
    for (k, case) in CASES.into_iter().enumerate() {
        let ctx = case.context();
        let plan = plan_of(&ctx, case.shape, case.layout, Operation::TrainingForward);
        let view = plan.view;
        let mut data = normal_data(view.len(), 100 + k as u64, 0.0, 1.0);
        for c in 0..view.channels {
            for (chunk, (first, last)) in chunk_edges(&plan, c).into_iter().enumerate() {
                let offset = if chunk % 2 == 0 { 1e4 } else { -1e4 };
                for m in first..=last {
                    data[value_index(&view, c, m)] += offset;
                }
            }
        }
        check_forward(&format!("alternating chunk means {case:?}"), &case, &data);
    }
}
