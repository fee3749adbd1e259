//! Fused epilogues (y = relu(bn(x)), y = relu(bn(x) + z)) and half-precision storage, forward
//! and backward, in every storage type, layout and kind of plan, against the f64 reference
//! composed as PyTorch composes it (`reference::epilogue`, `reference::epilogue_gradient`) and
//! rounded once to the storage type; the fused backward against finite differences of that
//! composition; and the refusals of mismatched epilogues and shortcuts.
//!
//! Bounds: a kernel computes in f32 and rounds once to the storage type, so an output is within
//! one unit in the last place of the storage type (half a unit from the rounding, the rest for
//! f32's error, which moves a value across a rounding boundary at most) plus f32's own error,
//! a few 2^-24 of the magnitudes that enter it. A wrong channel, a missed mask or a dropped
//! shortcut is off by the size of the values.

mod common;

use common::checks::{
    check_parameter_gradients, sum_depth, BackwardInputs, Channels, ForwardInputs, Through,
};
use common::scenario::{read_saved, require};
use common::storage::{round_to, stored, ulp};
use common::{normal_data, planned, Planned};
use ndarray::{ArrayD, IxDyn};
use wgpu_batchnorm::functional::{batch_norm_backward_into, batch_norm_into};
use wgpu_batchnorm::plan::{plan, Operation};
use wgpu_batchnorm::reference::{self, BatchStatistics};
use wgpu_batchnorm::{
    BatchNormError, ChannelPair, ChannelView, DType, Epilogue, EpilogueGrad, EpilogueKind,
    ForwardArgs, GpuContext, Layout, StatsSource, Tensor,
};

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;
const EPILOGUES: [EpilogueKind; 3] = [
    EpilogueKind::None,
    EpilogueKind::Relu,
    EpilogueKind::AddRelu,
];

/// Shapes by the plans they get: odd spatial sizes and channel counts (word kernels, a last
/// half word), rows that split into vec4s, some of whose vec4s straddle two channels (odd
/// spatial sizes, channels-first; a grid that keeps to rows, [64, 16, 7, 7] on the GPU plan,
/// and grids that do not), a 2-D tensor of odd size; fused and multi-chunk plans; and windows
/// (odd rows, so half windows take rows in pairs, the last one alone and ending in half a
/// word); CPU plans fused a thread per channel group (f32: four channels of runs of nine
/// values a thread, one channel of runs of 28 values).
const CASES: [(Planned, &[usize], Layout); 15] = [
    (Planned::Cpu, &[3, 5, 7, 7], Layout::ChannelsFirst),
    (Planned::Cpu, &[1, 2048, 3, 3], Layout::ChannelsFirst),
    (Planned::Cpu, &[2, 512, 4, 7], Layout::ChannelsFirst),
    (Planned::Cpu, &[2, 3, 3, 5], Layout::ChannelsLast),
    (Planned::Cpu, &[4, 8, 4, 4], Layout::ChannelsFirst),
    (Planned::Cpu, &[3, 3, 2, 8], Layout::ChannelsLast),
    (Planned::Cpu, &[7, 3], Layout::ChannelsFirst),
    (Planned::Cpu, &[2, 4, 7, 7], Layout::ChannelsFirst),
    (Planned::DiscreteGpu, &[2, 12, 9, 9], Layout::ChannelsFirst),
    (Planned::DiscreteGpu, &[64, 16, 7, 7], Layout::ChannelsFirst),
    (Planned::DiscreteGpu, &[2, 4, 40, 40], Layout::ChannelsFirst),
    (Planned::DiscreteGpu, &[4, 12, 12, 24], Layout::ChannelsLast),
    (
        Planned::SmallBindings,
        &[5, 3, 61, 61],
        Layout::ChannelsFirst,
    ),
    (
        Planned::SmallBindings,
        &[150, 7, 7, 5],
        Layout::ChannelsLast,
    ),
    // Windows of 16 channels of runs of 1001 values: vec4s that straddle two runs, in windows
    // of a channel range.
    (
        Planned::SmallBindings,
        &[2, 32, 7, 143],
        Layout::ChannelsFirst,
    ),
];

/// A tensor's values as stored, on the host, in memory order.
struct Host {
    values: Vec<f32>,
    shape: Vec<usize>,
}

impl Host {
    fn array(&self) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(&self.shape), self.values.clone()).expect("shape")
    }
}

/// Uploads `values` as `dtype`; returns the tensor and what it stores.
fn upload(
    ctx: &GpuContext,
    values: &[f32],
    shape: &[usize],
    layout: Layout,
    dtype: DType,
) -> (Tensor, Host) {
    let tensor = Tensor::from_f32_as(ctx, values, shape, layout, dtype).expect("upload");
    let host = Host {
        values: stored(dtype, values),
        shape: shape.to_vec(),
    };
    (tensor, host)
}

/// An output of `dtype`, NaN-filled so that an element no kernel writes fails the checks.
fn poisoned(ctx: &GpuContext, shape: &[usize], layout: Layout, dtype: DType) -> Tensor {
    let tensor = Tensor::zeros_as(ctx, shape, layout, dtype).expect("allocate");
    tensor.fill(f32::NAN).expect("fill");
    tensor
}

/// Asserts `|got - want| <= bound(i)` for every element (NaN fails).
fn assert_within(what: &str, got: &[f32], want: &[f64], bound: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let error = (f64::from(g) - w).abs();
        assert!(
            error <= bound(i),
            "{what}[{i}]: got {g}, want {w} (error {error:e}, bound {:e})",
            bound(i)
        );
    }
}

/// One case: a training forward and its backward, then an inference forward and its backward,
/// each checked against the reference.
struct Case {
    planned: Planned,
    shape: &'static [usize],
    layout: Layout,
    dtype: DType,
    epilogue: EpilogueKind,
}

impl Case {
    fn what(&self) -> String {
        format!(
            "{:?} {:?} {:?} {} {}",
            self.planned, self.shape, self.layout, self.dtype, self.epilogue
        )
    }

    fn run(&self, seed: u64) {
        let ctx = planned(self.planned);
        let (shape, layout, dtype) = (self.shape, self.layout, self.dtype);
        let view = ChannelView::new(shape, layout).expect("shape");
        let (n, c) = (view.len(), view.channels);
        let what = self.what();
        let (x, x_host) = upload(&ctx, &normal_data(n, seed, 0.3, 1.7), shape, layout, dtype);
        let (z, z_host) = upload(
            &ctx,
            &normal_data(n, seed + 1, -0.2, 1.0),
            shape,
            layout,
            dtype,
        );
        let (dy, dy_host) = upload(
            &ctx,
            &normal_data(n, seed + 2, 0.0, 1.0),
            shape,
            layout,
            dtype,
        );
        let gamma: Vec<f32> = normal_data(c, seed + 3, 1.0, 0.3);
        let beta: Vec<f32> = normal_data(c, seed + 4, 0.2, 0.5);
        let (r_mean, r_var): (Vec<f32>, Vec<f32>) = (
            normal_data(c, seed + 5, 0.1, 0.3),
            normal_data(c, seed + 6, 1.0, 0.2)
                .iter()
                .map(|v| v.abs() + 0.3)
                .collect(),
        );
        let affine = ChannelPair::new(&ctx, &gamma, &beta).expect("affine");
        let running = ChannelPair::new(&ctx, &r_mean, &r_var).expect("running");
        let epilogue = match self.epilogue {
            EpilogueKind::None => Epilogue::None,
            EpilogueKind::Relu => Epilogue::Relu,
            EpilogueKind::AddRelu => Epilogue::AddRelu(&z),
        };
        let z_array = z_host.array();
        let shortcut = (self.epilogue == EpilogueKind::AddRelu).then(|| z_array.view());

        // Training forward.
        let y = poisoned(&ctx, shape, layout, dtype);
        let args = ForwardArgs {
            affine: Some(&affine),
            running: Some(&running),
            training: true,
            momentum: MOMENTUM,
            eps: EPS,
            epilogue,
        };
        let saved = batch_norm_into(&x, &y, &args).expect("training forward");
        let x_array = x_host.array();
        let (bn, stats) =
            reference::training_forward(x_array.view(), layout, Some(&gamma), Some(&beta), EPS);
        let want_y = reference::epilogue(bn.view(), shortcut.clone(), self.epilogue);
        let y_got = y.to_vec().expect("y");
        let magnitude: Vec<f64> = bn
            .iter()
            .zip(&z_host.values)
            .map(|(b, z)| b.abs() + f64::from(z.abs()) + 1.0)
            .collect();
        let want_flat: Vec<f64> = want_y.iter().copied().collect();
        assert_within(&format!("{what}: y"), &y_got, &want_flat, |i| {
            ulp(dtype, want_flat[i]) + 8e-7 * magnitude[i]
        });
        check_statistics(&what, &saved.read().expect("saved"), &stats);
        let mut want_mean: Vec<f64> = r_mean.iter().map(|&v| f64::from(v)).collect();
        let mut want_var: Vec<f64> = r_var.iter().map(|&v| f64::from(v)).collect();
        reference::update_running_statistics(
            &mut want_mean,
            &mut want_var,
            &stats,
            view.values_per_channel(),
            MOMENTUM,
        );
        let (got_mean, got_var) = running.read().expect("running");
        common::assert_close(
            &format!("{what}: running mean"),
            &got_mean,
            &want_mean,
            1e-6,
            1e-5,
        );
        common::assert_close(
            &format!("{what}: running var"),
            &got_var,
            &want_var,
            1e-6,
            1e-5,
        );

        // Its backward, the mask from the forward's own output (as the kernels take it).
        let y_host = ArrayD::from_shape_vec(IxDyn(shape), y_got).expect("shape");
        let dy_array = dy_host.array();
        let g = reference::epilogue_gradient(dy_array.view(), y_host.view(), self.epilogue);
        let want = reference::backward_batch_statistics(
            x_array.view(),
            g.view(),
            layout,
            &stats.mean,
            &stats.invstd,
            Some(&gamma),
        );
        self.check_backward(
            &ctx,
            (&x, &dy, &y),
            &saved,
            &affine,
            &g,
            &want,
            &stats.invstd,
            &gamma,
        );

        // Inference forward from the running stats it just updated, and its backward.
        let (got_mean, got_var) = running.read().expect("running");
        let y = poisoned(&ctx, shape, layout, dtype);
        let args = ForwardArgs {
            training: false,
            ..args
        };
        let saved = batch_norm_into(&x, &y, &args).expect("inference forward");
        let running_mean: Vec<f64> = got_mean.iter().map(|&v| f64::from(v)).collect();
        let running_var: Vec<f64> = got_var.iter().map(|&v| f64::from(v)).collect();
        let bn = reference::inference_forward(
            x_array.view(),
            layout,
            &running_mean,
            &running_var,
            Some(&gamma),
            Some(&beta),
            EPS,
        );
        let want_y: Vec<f64> = reference::epilogue(bn.view(), shortcut, self.epilogue)
            .iter()
            .copied()
            .collect();
        let y_got = y.to_vec().expect("y");
        assert_within(&format!("{what}: inference y"), &y_got, &want_y, |i| {
            ulp(dtype, want_y[i]) + 8e-7 * (bn.as_slice().expect("standard")[i].abs() + 3.0)
        });
        let y_host = ArrayD::from_shape_vec(IxDyn(shape), y_got).expect("shape");
        let g = reference::epilogue_gradient(dy_array.view(), y_host.view(), self.epilogue);
        let want = reference::backward_running_statistics(
            x_array.view(),
            g.view(),
            layout,
            &running_mean,
            &running_var,
            EPS,
            Some(&gamma),
        );
        let invstd: Vec<f64> = running_var.iter().map(|v| 1.0 / (v + EPS).sqrt()).collect();
        self.check_backward(
            &ctx,
            (&x, &dy, &y),
            &saved,
            &affine,
            &g,
            &want,
            &invstd,
            &gamma,
        );
    }

    /// Runs the backward of a forward whose output is `y` and checks dx, dz, dgamma, dbeta.
    #[allow(clippy::too_many_arguments)]
    fn check_backward(
        &self,
        ctx: &GpuContext,
        (x, dy, y): (&Tensor, &Tensor, &Tensor),
        saved: &wgpu_batchnorm::SavedStats,
        affine: &ChannelPair,
        g: &ArrayD<f64>,
        want: &reference::Gradients,
        invstd: &[f64],
        gamma: &[f32],
    ) {
        let (shape, layout, dtype) = (self.shape, self.layout, self.dtype);
        let what = format!("{}: {:?} backward", self.what(), saved.source());
        let view = ChannelView::new(shape, layout).expect("shape");
        let dx = poisoned(ctx, shape, layout, dtype);
        let dz = poisoned(ctx, shape, layout, dtype);
        let epilogue = match self.epilogue {
            EpilogueKind::None => EpilogueGrad::None,
            EpilogueKind::Relu => EpilogueGrad::Relu { y },
            EpilogueKind::AddRelu => EpilogueGrad::AddRelu { y, dz: &dz },
        };
        let grads = batch_norm_backward_into(x, dy, &dx, saved, Some(affine), epilogue)
            .expect("backward")
            .expect("affine gradients");
        // f32's error of dx: a few 2^-24 of the terms of gamma invstd (g - mean g - x_hat ...).
        let mut largest_g = vec![0.0_f64; view.channels];
        for (i, gi) in g.iter().enumerate() {
            let c = view.channel_of(i);
            largest_g[c] = largest_g[c].max(gi.abs());
        }
        let want_dx: Vec<f64> = want.dx.iter().copied().collect();
        assert_within(
            &format!("{what}: dx"),
            &dx.to_vec().expect("dx"),
            &want_dx,
            |i| {
                let c = view.channel_of(i);
                let scale = f64::from(gamma[c]).abs() * invstd[c];
                ulp(dtype, want_dx[i]) + 4e-6 * scale * largest_g[c] * 3.0
            },
        );
        // dgamma and dbeta within the sums' own bound ((K + 3) u of sum |g (x - m)| s, K u of
        // sum |g|: tests/common/checks.rs) from the statistics the forward saved; g (a masked dy
        // of the storage type) and x are exact in f32.
        let (dgamma, dbeta) = grads.read().expect("grads");
        let x_f32 = ArrayD::from_shape_vec(IxDyn(shape), x.to_vec().expect("x")).expect("shape");
        let g_f32 = g.mapv(|v| v as f32);
        let plan = plan(view, dtype, ctx.plan_limits(), Operation::Backward).expect("a plan");
        let through = match saved.source() {
            StatsSource::Batch => Through::Batch,
            StatsSource::Running => Through::Running,
        };
        let gradients = BackwardInputs {
            forward: ForwardInputs {
                x: x_f32.view(),
                layout,
                gamma: Some(gamma),
                beta: None,
                eps: EPS,
            },
            dy: g_f32.view(),
            saved: &read_saved(saved),
            through,
            depth: sum_depth(&plan),
        };
        require(check_parameter_gradients(
            &what,
            &gradients,
            &dgamma,
            &dbeta,
            Channels::All,
        ));
        if self.epilogue == EpilogueKind::AddRelu {
            // dz is the masked dy itself: exact.
            let got = dz.to_vec().expect("dz");
            for (i, (&got, &want)) in got.iter().zip(g.iter()).enumerate() {
                assert_eq!(f64::from(got), want, "{what}: dz[{i}]");
            }
        }
    }
}

/// The saved mean and invstd (f32) against the f64 statistics of the stored input.
fn check_statistics(what: &str, (mean, invstd): &(Vec<f32>, Vec<f32>), stats: &BatchStatistics) {
    common::assert_close(
        &format!("{what}: saved mean"),
        mean,
        &stats.mean,
        1e-6,
        1e-5,
    );
    common::assert_close(
        &format!("{what}: saved invstd"),
        invstd,
        &stats.invstd,
        0.0,
        1e-5,
    );
}

fn every_case(dtype: DType) {
    for (k, &(planned, shape, layout)) in CASES.iter().enumerate() {
        for (e, epilogue) in EPILOGUES.into_iter().enumerate() {
            Case {
                planned,
                shape,
                layout,
                dtype,
                epilogue,
            }
            .run(100 * k as u64 + e as u64);
        }
    }
}

#[test]
fn f32_epilogues_match_the_reference_in_every_plan() {
    every_case(DType::F32);
}

#[test]
fn f16_with_every_epilogue_matches_the_reference_in_every_plan() {
    every_case(DType::F16);
}

#[test]
fn bf16_with_every_epilogue_matches_the_reference_in_every_plan() {
    every_case(DType::BF16);
}

/// sum(w * epilogue(bn(x))) in f64: the loss whose gradients the backward computes with
/// dy = w.
struct Loss<'a> {
    w: &'a [f32],
    shape: &'a [usize],
    layout: Layout,
    kind: EpilogueKind,
}

impl Loss<'_> {
    fn at(&self, x: &[f64], z: &[f64], gamma: &[f64], beta: &[f64]) -> f64 {
        let x = ArrayD::from_shape_vec(IxDyn(self.shape), x.to_vec()).expect("shape");
        let z = ArrayD::from_shape_vec(IxDyn(self.shape), z.to_vec()).expect("shape");
        let (bn, _) =
            reference::training_forward(x.view(), self.layout, Some(gamma), Some(beta), EPS);
        let y = reference::epilogue(bn.view(), Some(z.view()), self.kind);
        y.iter().zip(self.w).map(|(y, &w)| y * f64::from(w)).sum()
    }
}

/// The fused backward's dx, dz, dgamma and dbeta (f32, fused and split plans) are the
/// derivatives of the forward composition, by central differences in f64. Data whose
/// pre-activations come within 0.05 of the ReLU's kink are skipped (a difference across the
/// kink is no derivative).
#[test]
fn epilogue_gradients_are_the_derivatives_of_the_forward() {
    for (planned, shape, layout) in [
        (
            Planned::DiscreteGpu,
            &[3usize, 2, 5][..],
            Layout::ChannelsFirst,
        ),
        (Planned::Cpu, &[4, 3][..], Layout::ChannelsFirst),
        (
            Planned::SmallBindings,
            &[2, 3, 4, 3][..],
            Layout::ChannelsLast,
        ),
    ] {
        for kind in [EpilogueKind::Relu, EpilogueKind::AddRelu] {
            check_by_finite_differences(planned, shape, layout, kind);
        }
    }
}

fn check_by_finite_differences(
    kind_of_plan: Planned,
    shape: &[usize],
    layout: Layout,
    kind: EpilogueKind,
) {
    let ctx = planned(kind_of_plan);
    let view = ChannelView::new(shape, layout).expect("shape");
    let (n, c) = (view.len(), view.channels);
    let what = format!("{kind_of_plan:?} {shape:?} {kind}");
    // The first seed whose pre-activations all keep away from the kink.
    let (x, z, gamma, beta) = (0..)
        .map(|seed: u64| {
            let x = normal_data(n, 7 * seed, 0.0, 1.0);
            let z = normal_data(n, 7 * seed + 1, 0.0, 0.5);
            let gamma = normal_data(c, 7 * seed + 2, 1.0, 0.3);
            let beta = normal_data(c, 7 * seed + 3, 0.0, 0.3);
            (x, z, gamma, beta)
        })
        .find(|(x, z, gamma, beta)| {
            let xa = ArrayD::from_shape_vec(IxDyn(shape), x.clone()).expect("shape");
            let (bn, _) =
                reference::training_forward(xa.view(), layout, Some(gamma), Some(beta), EPS);
            bn.iter().zip(z).all(|(b, &z)| {
                (b + if kind == EpilogueKind::AddRelu {
                    f64::from(z)
                } else {
                    0.0
                })
                .abs()
                    > 0.05
            })
        })
        .expect("a seed");
    let w = normal_data(n, 99, 0.0, 1.0);
    let to64 = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
    let (x64, z64, gamma64, beta64) = (to64(&x), to64(&z), to64(&gamma), to64(&beta));
    let loss = Loss {
        w: &w,
        shape,
        layout,
        kind,
    };
    let f = |x: &[f64], z: &[f64], gamma: &[f64], beta: &[f64]| loss.at(x, z, gamma, beta);
    let h = 1e-6;
    let derivative = |values: &[f64], i: usize, eval: &dyn Fn(&[f64]) -> f64| {
        let (mut up, mut down) = (values.to_vec(), values.to_vec());
        up[i] += h;
        down[i] -= h;
        (eval(&up) - eval(&down)) / (2.0 * h)
    };
    let want_dx: Vec<f64> = (0..n)
        .map(|i| derivative(&x64, i, &|x| f(x, &z64, &gamma64, &beta64)))
        .collect();
    let want_dz: Vec<f64> = (0..n)
        .map(|i| derivative(&z64, i, &|z| f(&x64, z, &gamma64, &beta64)))
        .collect();
    let want_dgamma: Vec<f64> = (0..c)
        .map(|i| derivative(&gamma64, i, &|g| f(&x64, &z64, g, &beta64)))
        .collect();
    let want_dbeta: Vec<f64> = (0..c)
        .map(|i| derivative(&beta64, i, &|b| f(&x64, &z64, &gamma64, b)))
        .collect();

    let up = |v: &[f32]| Tensor::from_slice(&ctx, v, shape, layout).expect("upload");
    let (xt, zt, wt) = (up(&x), up(&z), up(&w));
    let affine = ChannelPair::new(&ctx, &gamma, &beta).expect("affine");
    let epilogue = match kind {
        EpilogueKind::AddRelu => Epilogue::AddRelu(&zt),
        _ => Epilogue::Relu,
    };
    let y = poisoned(&ctx, shape, layout, DType::F32);
    let args = ForwardArgs {
        affine: Some(&affine),
        running: None,
        training: true,
        momentum: MOMENTUM,
        eps: EPS,
        epilogue,
    };
    let saved = batch_norm_into(&xt, &y, &args).expect("forward");
    let (dx, dz) = (
        poisoned(&ctx, shape, layout, DType::F32),
        poisoned(&ctx, shape, layout, DType::F32),
    );
    let grad = match kind {
        EpilogueKind::AddRelu => EpilogueGrad::AddRelu { y: &y, dz: &dz },
        _ => EpilogueGrad::Relu { y: &y },
    };
    let grads = batch_norm_backward_into(&xt, &wt, &dx, &saved, Some(&affine), grad)
        .expect("backward")
        .expect("affine");
    let (dgamma, dbeta) = grads.read().expect("grads");
    let tolerance = 2e-4;
    common::assert_close(
        &format!("{what}: dx"),
        &dx.to_vec().unwrap(),
        &want_dx,
        tolerance,
        tolerance,
    );
    common::assert_close(
        &format!("{what}: dgamma"),
        &dgamma,
        &want_dgamma,
        tolerance,
        tolerance,
    );
    common::assert_close(
        &format!("{what}: dbeta"),
        &dbeta,
        &want_dbeta,
        tolerance,
        tolerance,
    );
    if kind == EpilogueKind::AddRelu {
        common::assert_close(
            &format!("{what}: dz"),
            &dz.to_vec().unwrap(),
            &want_dz,
            tolerance,
            tolerance,
        );
    }
}

/// Refusals: a shortcut that differs from x, a backward with another epilogue than its
/// forward's, a dz over dx; each a typed error, nothing run.
#[test]
fn mismatched_epilogues_and_shortcuts_are_refused() {
    let ctx = planned(Planned::Cpu);
    let shape = [2, 3, 4, 4];
    let layout = Layout::ChannelsFirst;
    let data = normal_data(96, 5, 0.0, 1.0);
    let x = Tensor::from_slice(&ctx, &data, &shape, layout).unwrap();
    let y = Tensor::zeros(&ctx, &shape, layout).unwrap();
    let forward = |epilogue| {
        batch_norm_into(
            &x,
            &y,
            &ForwardArgs {
                affine: None,
                running: None,
                training: true,
                momentum: MOMENTUM,
                eps: EPS,
                epilogue,
            },
        )
    };
    let wrong_shape = Tensor::zeros(&ctx, &[2, 3, 4, 5], layout).unwrap();
    assert!(matches!(
        forward(Epilogue::AddRelu(&wrong_shape)),
        Err(BatchNormError::ShapeMismatch {
            what: "the shortcut z",
            ..
        })
    ));
    let wrong_layout = Tensor::zeros(&ctx, &shape, Layout::ChannelsLast).unwrap();
    assert!(matches!(
        forward(Epilogue::AddRelu(&wrong_layout)),
        Err(BatchNormError::ShapeMismatch {
            what: "the shortcut z",
            ..
        })
    ));
    let half = Tensor::zeros_as(&ctx, &shape, layout, DType::F16).unwrap();
    let error = forward(Epilogue::AddRelu(&half)).unwrap_err();
    assert!(
        matches!(
            error,
            BatchNormError::DTypeMismatch {
                what: "the shortcut z",
                expected: DType::F32,
                actual: DType::F16
            }
        ),
        "{error}"
    );
    assert!(matches!(
        forward(Epilogue::AddRelu(&y)),
        Err(BatchNormError::OverlappingViews { .. })
    ));

    let saved = forward(Epilogue::Relu).expect("a relu forward");
    let dx = Tensor::zeros(&ctx, &shape, layout).unwrap();
    dx.fill(7.0).unwrap();
    let error =
        batch_norm_backward_into(&x, &x, &dx, &saved, None, EpilogueGrad::None).unwrap_err();
    assert!(
        matches!(
            error,
            BatchNormError::EpilogueMismatch {
                forward: EpilogueKind::Relu,
                backward: EpilogueKind::None
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("relu"), "{error}");
    let saved = forward(Epilogue::AddRelu(&x)).expect("an add-relu forward");
    let error = batch_norm_backward_into(
        &x,
        &x,
        &dx,
        &saved,
        None,
        EpilogueGrad::AddRelu { y: &y, dz: &dx },
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            BatchNormError::OverlappingViews {
                output: "the gradient dx",
                ..
            }
        ),
        "{error}"
    );
    // Nothing ran: dx keeps its fill.
    assert!(dx.to_vec().unwrap().iter().all(|&v| v == 7.0));
    // A half dy for an f32 x.
    let error = batch_norm_backward_into(
        &x,
        &half,
        &dx,
        &saved,
        None,
        EpilogueGrad::AddRelu {
            y: &y,
            dz: &wrong_shape,
        },
    )
    .unwrap_err();
    assert!(
        matches!(error, BatchNormError::DTypeMismatch { .. }),
        "{error}"
    );
}

/// Round-trip sanity of the host helpers the bounds rest on.
#[test]
fn storage_helpers_round_and_space_like_the_types() {
    assert_eq!(ulp(DType::F16, 1.0), 2f64.powi(-10));
    assert_eq!(ulp(DType::F16, 65504.0), 32.0);
    assert_eq!(ulp(DType::F16, 1e-7), 2f64.powi(-24));
    assert_eq!(ulp(DType::BF16, 1.0), 2f64.powi(-7));
    assert_eq!(ulp(DType::F32, 3.0), 2f64.powi(-22));
    assert_eq!(round_to(DType::F16, 1.0 + 2f64.powi(-11)), 1.0);
    assert_eq!(
        round_to(DType::BF16, 1.0 + 3.0 * 2f64.powi(-9)),
        1.0 + 2f64.powi(-7)
    );
}
