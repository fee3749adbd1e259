//! Half-precision storage (f16, bf16): the kernels' rounding of stores against the `half`
//! crate bit for bit (the edges of f16's range, subnormals, ties, NaN and infinities, and
//! thousands of random products), a tensor's odd last element leaving its word's other half
//! alone, NaN and Inf kept in their channel, uploads and downloads in every element type, and
//! the refusals of misaligned half views and mixed types.
//!
//! The rounding tests run an inference forward with running mean 0, running variance 1 and
//! eps 0, so invstd is exactly 1 and y = x * gamma + 0 in one f32 multiplication (the + 0 of
//! beta turns a -0 product into +0): what is stored is then the storage type's rounding of an
//! f32 the host computes exactly the same way.

mod common;

use common::storage::stored;
use common::{normal_data, planned, Planned};
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use wgpu_batchnorm::functional::{batch_norm_backward_into, batch_norm_into};
use wgpu_batchnorm::reference;
use wgpu_batchnorm::{
    BatchNorm, BatchNormError, ChannelPair, ChannelView, DType, Element, Epilogue, EpilogueGrad,
    ForwardArgs, GpuContext, Layout, Tensor,
};

/// y = x * gamma per channel, stored as `dtype`, from x given per channel (`x` repeats over
/// each channel's values) on a tensor of `shape` channels-first.
fn products(
    ctx: &GpuContext,
    dtype: DType,
    shape: &[usize],
    layout: Layout,
    x: &[f32],
    gamma: &[f32],
) -> Vec<f32> {
    let view = ChannelView::new(shape, layout).expect("shape");
    let xt = Tensor::from_f32_as(ctx, x, shape, layout, dtype).expect("upload x");
    let y = Tensor::zeros_as(ctx, shape, layout, dtype).expect("y");
    y.fill(f32::NAN).expect("poison y");
    let c = view.channels;
    let affine = ChannelPair::new(ctx, gamma, &vec![0.0f32; c]).expect("affine");
    let running = ChannelPair::new(ctx, &vec![0.0f32; c], &vec![1.0f32; c]).expect("running");
    batch_norm_into(
        &xt,
        &y,
        &ForwardArgs {
            affine: Some(&affine),
            running: Some(&running),
            training: false,
            momentum: 0.1,
            eps: 0.0,
            epilogue: Epilogue::None,
        },
    )
    .expect("inference forward");
    y.to_vec().expect("download")
}

/// The storage type's bits of an f32, by the `half` crate.
fn bits_of(dtype: DType, value: f32) -> u16 {
    match dtype {
        DType::F16 => f16::from_f32(value).to_bits(),
        DType::BF16 => bf16::from_f32(value).to_bits(),
        DType::F32 => unreachable!("half types only"),
    }
}

/// Asserts that the stored `got` (decoded to f32) is the `half` crate's rounding of `want`
/// (an f32 product), bit for bit; any NaN for a NaN.
fn assert_rounded(what: &str, dtype: DType, got: &[f32], want: &[f32]) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: {w} stored as {g}, not NaN");
            continue;
        }
        let got_bits = match dtype {
            DType::F16 => f16::from_f32(g).to_bits(),
            _ => bf16::from_f32(g).to_bits(),
        };
        assert_eq!(
            got_bits,
            bits_of(dtype, w),
            "{what}[{i}]: {w} stored as {g}, the half crate rounds it to {}",
            match dtype {
                DType::F16 => f16::from_bits(bits_of(dtype, w)).to_f32(),
                _ => bf16::from_bits(bits_of(dtype, w)).to_f32(),
            }
        );
    }
}

/// The shapes the rounding tests store through: pairs of one channel (word kernel), four of
/// one channel (vec4 kernel), pairs across channels of an odd count, and an odd spatial size
/// whose tensor ends in half a word.
fn rounding_layouts(channels: usize) -> [(Vec<usize>, Layout); 4] {
    [
        (vec![1, channels, 2], Layout::ChannelsFirst),
        (vec![1, channels, 4], Layout::ChannelsFirst),
        (vec![2, channels], Layout::ChannelsFirst),
        (vec![1, channels, 3], Layout::ChannelsFirst),
    ]
}

/// x = +1, -1, +1, ... in every channel: y = +-gamma.
fn signs(shape: &[usize], layout: Layout) -> Vec<f32> {
    let view = ChannelView::new(shape, layout).expect("shape");
    (0..view.len())
        .map(|i| {
            if (i / view.channels / view.inner + i % view.inner).is_multiple_of(2) {
                1.0
            } else {
                -1.0
            }
        })
        .collect()
}

fn check_edges(dtype: DType, gammas: &[f32]) {
    let ctx = planned(Planned::Cpu);
    for (shape, layout) in rounding_layouts(gammas.len()) {
        let view = ChannelView::new(&shape, layout).expect("shape");
        let x = signs(&shape, layout);
        let got = products(&ctx, dtype, &shape, layout, &x, gammas);
        let want: Vec<f32> = (0..view.len())
            .map(|i| x[i] * gammas[view.channel_of(i)] + 0.0)
            .collect();
        assert_rounded(&format!("{dtype} {shape:?}"), dtype, &got, &want);
    }
}

#[test]
fn f16_stores_round_like_the_half_crate_at_every_edge() {
    let two = |e: i32| 2f32.powi(e);
    let gammas = [
        65504.0,
        65519.99,
        65520.0,
        65536.0,
        1e9,
        f32::INFINITY,
        f32::NAN,
        two(-14),
        two(-14) - two(-25),
        two(-24),
        two(-25),
        3.0 * two(-26),
        1.5 * two(-24),
        2.5 * two(-24),
        1e-10,
        0.0,
        1.0 + two(-11),
        1.0 + 3.0 * two(-11),
        1.0 + two(-11) + two(-20),
        0.1,
        7.389_05,
    ];
    check_edges(DType::F16, &gammas);
    // The ones a reader checks by eye: the largest finite, the overflow threshold, the
    // smallest subnormal, a tie to even.
    let ctx = planned(Planned::Cpu);
    let got = products(
        &ctx,
        DType::F16,
        &[1, 5, 2],
        Layout::ChannelsFirst,
        &[1.0, -1.0].repeat(5),
        &[65519.99, 65520.0, two(-24), two(-25), 1.0 + two(-11)],
    );
    assert_eq!(
        got,
        [
            65504.0,
            -65504.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            two(-24),
            -two(-24),
            0.0,
            -0.0,
            1.0,
            -1.0
        ]
    );
    assert!(got[7].is_sign_negative(), "-2^-25 rounds to -0");
}

#[test]
fn bf16_stores_round_like_the_half_crate_at_every_edge() {
    let two = |e: i32| 2f32.powi(e);
    let gammas = [
        1.0 + two(-8),
        1.0 + 3.0 * two(-8),
        1.0 + two(-8) + two(-20),
        f32::MAX,
        3.38e38,
        two(-126),
        f32::INFINITY,
        f32::NAN,
        0.0,
        0.1,
        7.389_05,
        1e30,
        -7.5e-20,
    ];
    check_edges(DType::BF16, &gammas);
    let ctx = planned(Planned::Cpu);
    let got = products(
        &ctx,
        DType::BF16,
        &[1, 2, 2],
        Layout::ChannelsFirst,
        &[1.0, -1.0, 1.0, -1.0],
        &[1.0 + two(-8), f32::MAX],
    );
    assert_eq!(got, [1.0, -1.0, f32::INFINITY, f32::NEG_INFINITY]);
}

/// Thousands of random products over f16's whole range (overflow, subnormals and all) and a
/// wide bf16 range, of inputs that include f16 subnormals: every stored value is the half
/// crate's rounding of the same f32 product.
#[test]
fn random_products_round_like_the_half_crate() {
    let ctx = planned(Planned::Cpu);
    for dtype in [DType::F16, DType::BF16] {
        for (shape, layout) in [
            (vec![64usize, 24, 8], Layout::ChannelsFirst),
            (vec![96, 5, 3], Layout::ChannelsFirst),
            (vec![128, 7], Layout::ChannelsLast),
        ] {
            let view = ChannelView::new(&shape, layout).expect("shape");
            // Gammas log-uniform over 2^-30 .. 2^20, signs mixed.
            let gammas: Vec<f32> = normal_data(view.channels, 3, 0.0, 1.0)
                .iter()
                .zip(normal_data(view.channels, 4, 0.0, 1.0))
                .map(|(&u, s)| {
                    let exponent = -30.0 + 50.0 * (0.5 + u.clamp(-2.0, 2.0) / 4.0);
                    2f32.powf(exponent) * if s < 0.0 { -1.0 } else { 1.0 }
                })
                .collect();
            // Half of x of unit size, half tiny (f16's subnormals load too).
            let x: Vec<f32> = normal_data(view.len(), 5, 0.0, 3.0)
                .iter()
                .zip(normal_data(view.len(), 6, 0.0, 3e-6))
                .enumerate()
                .map(|(i, (&unit, tiny))| if i % 2 == 0 { unit } else { tiny })
                .collect();
            let x = stored(dtype, &x);
            let got = products(&ctx, dtype, &shape, layout, &x, &gammas);
            let want: Vec<f32> = (0..view.len())
                .map(|i| x[i] * gammas[view.channel_of(i)] + 0.0)
                .collect();
            assert_rounded(&format!("{dtype} {shape:?} {layout:?}"), dtype, &got, &want);
        }
    }
}

/// A half tensor of odd length ends in half a word: the forward's y, the backward's dx and dz
/// write their elements and leave the other half of their last word as it was.
#[test]
fn an_odd_last_element_keeps_its_words_other_half() {
    let ctx = planned(Planned::Cpu);
    let shape = [3usize, 1, 5];
    let layout = Layout::ChannelsFirst;
    let n = 15;
    for dtype in [DType::F16, DType::BF16] {
        let x =
            Tensor::from_f32_as(&ctx, &normal_data(n, 1, 0.0, 1.0), &shape, layout, dtype).unwrap();
        let z =
            Tensor::from_f32_as(&ctx, &normal_data(n, 2, 0.0, 1.0), &shape, layout, dtype).unwrap();
        let dy =
            Tensor::from_f32_as(&ctx, &normal_data(n, 3, 0.0, 1.0), &shape, layout, dtype).unwrap();
        // Outputs are views at the start of 8-word buffers whose bytes 30 and 31 (the last
        // word's upper half) hold a sentinel.
        let sentinel = [0xcd, 0xab];
        let output = || {
            let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("odd output"),
                size: 32,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut bytes = [0xffu8; 32];
            bytes[30..].copy_from_slice(&sentinel);
            ctx.queue().write_buffer(&buffer, 0, &bytes);
            let tensor = Tensor::from_buffer_as(&ctx, buffer.clone(), 0, &shape, layout, dtype)
                .expect("a view");
            (tensor, buffer)
        };
        let last_half = |buffer: &wgpu::Buffer| {
            let whole =
                Tensor::from_buffer_as(&ctx, buffer.clone(), 0, &[2, 8], layout, DType::F16)
                    .expect("the whole buffer");
            let halves: Vec<f16> = whole.to_vec_of().expect("download");
            halves[15].to_bits().to_le_bytes()
        };
        let (y, y_buffer) = output();
        let saved = batch_norm_into(
            &x,
            &y,
            &ForwardArgs {
                affine: None,
                running: None,
                training: true,
                momentum: 0.1,
                eps: 1e-5,
                epilogue: Epilogue::AddRelu(&z),
            },
        )
        .expect("forward");
        assert_eq!(last_half(&y_buffer), sentinel, "{dtype}: y's last word");
        let y_values = y.to_vec().unwrap();
        assert!(
            y_values.iter().all(|v| v.is_finite()),
            "{dtype}: {y_values:?}"
        );
        let (dx, dx_buffer) = output();
        let (dz, dz_buffer) = output();
        batch_norm_backward_into(
            &x,
            &dy,
            &dx,
            &saved,
            None,
            EpilogueGrad::AddRelu { y: &y, dz: &dz },
        )
        .expect("backward");
        assert_eq!(last_half(&dx_buffer), sentinel, "{dtype}: dx's last word");
        assert_eq!(last_half(&dz_buffer), sentinel, "{dtype}: dz's last word");
        // The elements themselves were written: dz is dy masked by y.
        let (dy_values, dz_values) = (dy.to_vec().unwrap(), dz.to_vec().unwrap());
        for i in 0..n {
            let want = if y_values[i] > 0.0 { dy_values[i] } else { 0.0 };
            assert_eq!(dz_values[i], want, "{dtype}: dz[{i}]");
        }
        assert!(dx.to_vec().unwrap().iter().all(|v| v.is_finite()));
    }
}

/// A NaN or an infinity in one channel of a half tensor stays in that channel: the others are
/// exactly what they are without it.
#[test]
fn nan_and_inf_stay_in_their_channel() {
    let ctx = planned(Planned::Cpu);
    let shape = [4usize, 3, 5];
    let layout = Layout::ChannelsFirst;
    let view = ChannelView::new(&shape, layout).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let clean = normal_data(view.len(), 8, 0.0, 1.0);
        let mut poisoned = clean.clone();
        poisoned[view.index(1, 0, 2)] = f32::NAN;
        poisoned[view.index(2, 2, 4)] = f32::INFINITY;
        let forward = |values: &[f32]| {
            let x = Tensor::from_f32_as(&ctx, values, &shape, layout, dtype).unwrap();
            let (y, _) = wgpu_batchnorm::functional::batch_norm(
                &x,
                &ForwardArgs {
                    affine: None,
                    running: None,
                    training: true,
                    momentum: 0.1,
                    eps: 1e-5,
                    epilogue: Epilogue::Relu,
                },
            )
            .unwrap();
            y.to_vec().unwrap()
        };
        let (want, got) = (forward(&clean), forward(&poisoned));
        for i in 0..view.len() {
            match view.channel_of(i) {
                1 => assert_eq!(got[i].to_bits(), want[i].to_bits(), "{dtype}: y[{i}]"),
                _ => assert!(
                    got[i].is_nan(),
                    "{dtype}: y[{i}] = {} in a poisoned channel",
                    got[i]
                ),
            }
        }
    }
}

/// Uploads from every element type and downloads to it, bit for bit; parameters given in half
/// precision are kept as their f32 values.
#[test]
fn tensors_and_parameters_round_trip_in_every_element_type() {
    let ctx = planned(Planned::Cpu);
    let values = normal_data(21, 9, 0.0, 100.0);
    fn round_trip<T: Element + PartialEq + std::fmt::Debug>(ctx: &GpuContext, values: &[f32]) {
        let host: Vec<T> = values.iter().map(|&v| T::from_f32(v)).collect();
        let tensor = Tensor::from_slice(ctx, &host, &[3, 7], Layout::ChannelsFirst).unwrap();
        assert_eq!(tensor.dtype(), T::DTYPE);
        let back: Vec<T> = tensor.to_vec_of().unwrap();
        assert_eq!(back, host);
        let as_f32: Vec<f32> = host.iter().map(|v| v.to_f32()).collect();
        assert_eq!(tensor.to_vec().unwrap(), as_f32);
        let array = ArrayD::from_shape_vec(IxDyn(&[3, 7]), host.clone()).unwrap();
        let from_array = Tensor::from_array(ctx, array.view(), Layout::ChannelsFirst).unwrap();
        assert_eq!(from_array.to_vec_of::<T>().unwrap(), host);
    }
    round_trip::<f32>(&ctx, &values);
    round_trip::<f16>(&ctx, &values);
    round_trip::<bf16>(&ctx, &values);
    let wrong = Tensor::from_slice(&ctx, &[f16::ONE; 4], &[2, 2], Layout::ChannelsFirst)
        .unwrap()
        .to_vec_of::<bf16>()
        .unwrap_err();
    assert!(matches!(
        wrong,
        BatchNormError::ElementTypeMismatch {
            stored: DType::F16,
            requested: DType::BF16,
        }
    ));
    assert!(
        wrong.to_string().contains("stored as f16, not bf16"),
        "{wrong}"
    );

    let mut layer = BatchNorm::new(&ctx, 2).unwrap();
    let gamma = [bf16::from_f32(1.5), bf16::from_f32(-0.25)];
    let beta = [bf16::from_f32(0.125), bf16::from_f32(3.0)];
    layer.set_parameters(&gamma, &beta).unwrap();
    assert_eq!(
        layer.parameters().unwrap(),
        (vec![1.5, -0.25], vec![0.125, 3.0])
    );
}

/// A half view must start on a whole word, hold its padded last word inside the buffer, and
/// every tensor of a call must have x's type: each refusal is typed and changes nothing.
#[test]
fn misaligned_half_views_and_mixed_types_are_refused() {
    let ctx = planned(Planned::Cpu);
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("views"),
        size: 12,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let view = |offset, shape: &[usize]| {
        Tensor::from_buffer_as(
            &ctx,
            buffer.clone(),
            offset,
            shape,
            Layout::ChannelsFirst,
            DType::F16,
        )
    };
    let error = view(2, &[1, 2]).unwrap_err();
    assert!(
        matches!(
            error,
            BatchNormError::MisalignedView {
                offset: 2,
                alignment: 4,
                dtype: DType::F16
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("32-bit word"), "{error}");
    // 3 halves at byte 4 span bytes 4..10, but their last word runs to byte 12: fits; at byte
    // 8 they would need bytes 8..16.
    view(4, &[1, 3]).expect("fits with its last word");
    assert!(matches!(
        view(8, &[1, 3]).unwrap_err(),
        BatchNormError::ViewPastEnd {
            offset: 8,
            bytes: 8,
            buffer_bytes: 12
        }
    ));

    let shape = [2usize, 3, 4];
    let layout = Layout::ChannelsFirst;
    let x = Tensor::from_f32_as(
        &ctx,
        &normal_data(24, 1, 0.0, 1.0),
        &shape,
        layout,
        DType::F16,
    )
    .unwrap();
    let y32 = Tensor::zeros(&ctx, &shape, layout).unwrap();
    y32.fill(5.0).unwrap();
    let running = ChannelPair::new(&ctx, &[0.0f32; 3], &[1.0f32; 3]).unwrap();
    let error = batch_norm_into(
        &x,
        &y32,
        &ForwardArgs {
            affine: None,
            running: Some(&running),
            training: true,
            momentum: 0.1,
            eps: 1e-5,
            epilogue: Epilogue::None,
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            BatchNormError::DTypeMismatch {
                what: "the output y",
                expected: DType::F16,
                actual: DType::F32
            }
        ),
        "{error}"
    );
    assert!(
        y32.to_vec().unwrap().iter().all(|&v| v == 5.0),
        "y untouched"
    );
    assert_eq!(
        running.read().unwrap(),
        (vec![0.0; 3], vec![1.0; 3]),
        "running stats untouched"
    );
}

/// A layer called on half tensors in a training loop (its calls prepared once, then reused):
/// the same results as the functional form, step after step, with an epilogue.
#[test]
fn a_layer_trains_on_half_tensors_with_an_epilogue() {
    let ctx = planned(Planned::Cpu);
    let shape = [4usize, 6, 5, 5];
    let layout = Layout::ChannelsFirst;
    let n = 600;
    let dtype = DType::BF16;
    let up = |seed| {
        Tensor::from_f32_as(&ctx, &normal_data(n, seed, 0.0, 1.0), &shape, layout, dtype).unwrap()
    };
    let (x, z, dy) = (up(1), up(2), up(3));
    let out = || Tensor::zeros_as(&ctx, &shape, layout, dtype).unwrap();
    let (y, dx, dz) = (out(), out(), out());
    let mut layer = BatchNorm::new(&ctx, 6).unwrap();
    let mut steps = Vec::new();
    for _ in 0..2 {
        // Poisoned, so that a dispatch the second (prepared) step skipped shows as NaN
        // rather than as the first step's identical outputs.
        for tensor in [&y, &dx, &dz] {
            tensor.fill(f32::NAN).unwrap();
        }
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        let saved = layer
            .record_forward_with(&mut encoder, &x, &y, Epilogue::AddRelu(&z), None)
            .unwrap();
        let grads = layer
            .record_backward_with(
                &mut encoder,
                &x,
                &dy,
                &dx,
                &saved,
                EpilogueGrad::AddRelu { y: &y, dz: &dz },
                None,
            )
            .unwrap()
            .unwrap();
        ctx.queue().submit([encoder.finish()]);
        steps.push((
            y.to_vec().unwrap(),
            dx.to_vec().unwrap(),
            dz.to_vec().unwrap(),
            grads.read().unwrap(),
        ));
        let nan = vec![f32::NAN; 2 * layer.channels()];
        ctx.queue()
            .write_buffer(grads.buffer(), 0, bytemuck::cast_slice(&nan));
    }
    assert_eq!(
        layer.prepared_calls(),
        2,
        "one forward and one backward, reused"
    );
    // Gamma and beta stay 1 and 0, so both steps give the same outputs (the running stats
    // change, but training normalizes with the batch's own).
    assert_eq!(steps[0], steps[1]);
    // The functional form on the same tensors gives the same bits.
    let affine = ChannelPair::new(&ctx, &[1.0f32; 6], &[0.0f32; 6]).unwrap();
    let (y2, saved) = wgpu_batchnorm::functional::batch_norm(
        &x,
        &ForwardArgs {
            affine: Some(&affine),
            running: None,
            training: true,
            momentum: 0.1,
            eps: 1e-5,
            epilogue: Epilogue::AddRelu(&z),
        },
    )
    .unwrap();
    assert_eq!(y2.to_vec().unwrap(), steps[0].0);
    let y_host = ArrayD::from_shape_vec(IxDyn(&shape), steps[0].0.clone()).unwrap();
    let dy_host = ArrayD::from_shape_vec(IxDyn(&shape), dy.to_vec().unwrap()).unwrap();
    let g = reference::epilogue_gradient(
        dy_host.view(),
        y_host.view(),
        wgpu_batchnorm::EpilogueKind::AddRelu,
    );
    let dz_want: Vec<f32> = g.iter().map(|&v| v as f32).collect();
    assert_eq!(steps[0].2, dz_want);
    assert_eq!(saved.epilogue(), wgpu_batchnorm::EpilogueKind::AddRelu);
    // The functional backward (checked against the reference in tests/epilogues.rs) on the
    // same tensors: the layer's dx, dgamma and dbeta, bit for bit.
    let dz2 = out();
    let functional_grads = wgpu_batchnorm::functional::batch_norm_backward(
        &x,
        &dy,
        &saved,
        Some(&affine),
        EpilogueGrad::AddRelu { y: &y2, dz: &dz2 },
    )
    .unwrap();
    assert_eq!(functional_grads.dx.to_vec().unwrap(), steps[0].1);
    assert_eq!(functional_grads.params.unwrap().read().unwrap(), steps[0].3);
    assert_eq!(dz2.to_vec().unwrap(), steps[0].2);
}
