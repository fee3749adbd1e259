//! Tensors that are views into a caller's buffer: x, y, dy and dx at arbitrary 4-byte offsets
//! of one shared buffer (an arena, as a training loop keeps its activations), under fused,
//! split and windowed plans, checked against the f64 reference; the bytes around the views left
//! alone; and every refusal (misaligned, past the end, no STORAGE usage, overlapping input and
//! output) typed, with nothing changed.

mod common;

use common::checks::{
    check_batch_statistics, check_inference_statistics, check_input_gradient, check_output,
    check_parameter_gradients, sum_depth, BackwardInputs, Channels, ForwardInputs, Through,
};
use common::scenario::{read_saved, require};
use common::{normal_data, plan_of, planned, PlanClaim, Planned, PlannedCase, SPLIT_CASES};
use ndarray::{ArrayD, IxDyn};
use wgpu_batchnorm::plan::{plan, FinalizeKind, Operation, ReductionKind};
use wgpu_batchnorm::{BatchNorm, BatchNormError, ChannelView, DType, GpuContext, Layout, Tensor};

/// What the arena holds outside the views.
const SENTINEL: f32 = 7.25;

/// One caller buffer, filled with the sentinel, that tensors are views of.
struct Arena {
    ctx: GpuContext,
    buffer: wgpu::Buffer,
}

impl Arena {
    fn new(ctx: &GpuContext, bytes: u64) -> Self {
        let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("a caller's arena"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let words = vec![SENTINEL; (bytes / 4) as usize];
        ctx.queue()
            .write_buffer(&buffer, 0, bytemuck::cast_slice(&words));
        Arena {
            ctx: ctx.clone(),
            buffer,
        }
    }

    /// An f32 view at byte `offset`, holding `data` (`None`: left as it is).
    fn view(&self, offset: u64, shape: &[usize], layout: Layout, data: Option<&[f32]>) -> Tensor {
        self.view_as(offset, shape, layout, DType::F32, data)
    }

    /// A view of `dtype` at byte `offset`, holding `data` rounded to `dtype` (`None`: left as
    /// it is).
    fn view_as(
        &self,
        offset: u64,
        shape: &[usize],
        layout: Layout,
        dtype: DType,
        data: Option<&[f32]>,
    ) -> Tensor {
        let tensor =
            Tensor::from_buffer_as(&self.ctx, self.buffer.clone(), offset, shape, layout, dtype)
                .expect("a view inside the arena");
        if let Some(data) = data {
            // Stored by the crate's own rounding, then copied in: an even element count, so
            // whole words.
            let stored = Tensor::from_f32_as(&self.ctx, data, shape, layout, dtype).unwrap();
            let mut encoder = self
                .ctx
                .device()
                .create_command_encoder(&Default::default());
            let bytes = data.len() as u64 * dtype.bytes();
            encoder.copy_buffer_to_buffer(stored.buffer(), 0, &self.buffer, offset, bytes);
            self.ctx.queue().submit([encoder.finish()]);
        }
        tensor
    }

    /// Every word of the arena.
    fn words(&self) -> Vec<f32> {
        let len = (self.buffer.size() / 4) as usize;
        Tensor::from_buffer(
            &self.ctx,
            self.buffer.clone(),
            &[1, len],
            Layout::ChannelsFirst,
        )
        .unwrap()
        .to_vec()
        .unwrap()
    }
}

/// Runs a training forward and its backward with x, y, dy and dx as views at the given byte
/// offsets of one arena, and an inference forward with y at a third offset; checks every
/// result and that no word outside the outputs changed.
fn check_views(ctx: &GpuContext, shape: &[usize], layout: Layout, offsets: [u64; 4], seed: u64) {
    let view = ChannelView::new(shape, layout).unwrap();
    let (len, channels) = (view.len(), view.channels);
    let bytes = len as u64 * 4;
    let [x_at, y_at, dy_at, dx_at] = offsets;
    let arena_bytes = offsets.iter().max().unwrap() + bytes + 64;
    let arena = Arena::new(ctx, arena_bytes);
    let x_data = normal_data(len, seed, 1.5, 2.0);
    let dy_data = normal_data(len, seed ^ 1, 0.0, 1.0);
    let gamma = normal_data(channels, seed ^ 2, 1.0, 0.5);
    let beta = normal_data(channels, seed ^ 3, 0.0, 1.0);
    let x = arena.view(x_at, shape, layout, Some(&x_data));
    let y = arena.view(y_at, shape, layout, None);
    let dy = arena.view(dy_at, shape, layout, Some(&dy_data));
    let dx = arena.view(dx_at, shape, layout, None);
    let mut layer = BatchNorm::new(ctx, channels).unwrap();
    layer.set_parameters(&gamma, &beta).unwrap();
    let saved_stats = layer.forward_into(&x, &y).expect("forward on views");
    let params = layer
        .backward_into(&x, &dy, &dx, &saved_stats)
        .expect("backward on views")
        .expect("affine");

    let what = format!("{shape:?} {layout:?} at {offsets:?}");
    let host = |data: &[f32]| ArrayD::from_shape_vec(IxDyn(shape), data.to_vec()).unwrap();
    let (x_host, dy_host) = (host(&x_data), host(&dy_data));
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
        &y.to_vec().unwrap(),
        Channels::All,
    ));
    let backward = BackwardInputs {
        forward: inputs.clone(),
        dy: dy_host.view(),
        saved: &saved,
        through: Through::Batch,
        depth: sum_depth(&plan_of(ctx, shape, layout, Operation::Backward)),
    };
    require(check_input_gradient(
        &what,
        &backward,
        &dx.to_vec().unwrap(),
        Channels::All,
    ));
    let (dgamma, dbeta) = params.read().unwrap();
    require(check_parameter_gradients(
        &what,
        &backward,
        &dgamma,
        &dbeta,
        Channels::All,
    ));

    // Every word outside y and dx still holds what was put there.
    let words = arena.words();
    for (k, &word) in words.iter().enumerate() {
        let at = k as u64 * 4;
        let inside = |start: u64| (start..start + bytes).contains(&at);
        if inside(y_at) || inside(dx_at) {
            continue;
        }
        let want = if inside(x_at) {
            x_data[((at - x_at) / 4) as usize]
        } else if inside(dy_at) {
            dy_data[((at - dy_at) / 4) as usize]
        } else {
            SENTINEL
        };
        assert_eq!(
            word.to_bits(),
            want.to_bits(),
            "{what}: byte {at} of the arena changed"
        );
    }

    // Inference writes y over the old y: the same view again, from the running stats.
    layer.set_training(false);
    let saved = read_saved(&layer.forward_into(&x, &y).expect("inference on views"));
    let (running_mean, running_var) = layer.running_statistics().expect("tracked");
    require(check_inference_statistics(
        &what,
        &running_mean,
        &running_var,
        1e-5,
        &saved,
    ));
    require(check_output(
        &what,
        &inputs,
        &saved,
        &y.to_vec().unwrap(),
        Channels::All,
    ));
}

/// Offsets where no tensor starts on a vec4 or on a binding-aligned byte, the tensors packed
/// back to back with gaps of a few words.
fn scattered(bytes: u64) -> [u64; 4] {
    let x = 12;
    let y = x + bytes + 8;
    let dy = y + bytes + 4;
    let dx = dy + bytes + 20;
    [x, y, dy, dx]
}

#[test]
fn views_at_any_element_offset_of_one_buffer() {
    let fused = PlannedCase {
        shape: &[3, 5, 67, 61],
        layout: Layout::ChannelsFirst,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::FUSED,
    };
    let strided = PlannedCase {
        shape: &[4, 16, 16, 40],
        layout: Layout::ChannelsLast,
        planned: Planned::DiscreteGpu,
        claim: PlanClaim::FUSED,
    };
    let windowed = SPLIT_CASES[7];
    assert_eq!(windowed.planned, Planned::SmallBindings);
    let cases = [fused, strided, SPLIT_CASES[0], SPLIT_CASES[5], windowed];
    for (k, case) in cases.into_iter().enumerate() {
        let ctx = case.context();
        let bytes = case.shape.iter().product::<usize>() as u64 * 4;
        check_views(
            &ctx,
            case.shape,
            case.layout,
            scattered(bytes),
            10 + k as u64,
        );
    }
}

/// A shape whose rows split into whole vec4s: vec4 kernels where every view starts on a vec4,
/// the scalar ones where one does not, both right.
#[test]
fn vec4_kernels_run_only_where_every_view_starts_on_a_vec4() {
    let ctx = planned(Planned::Cpu);
    let shape = [8usize, 3, 64, 64];
    let layout = Layout::ChannelsFirst;
    let plan = plan_of(&ctx, &shape, layout, Operation::TrainingForward);
    assert!(plan.vec4);
    assert_eq!(plan.finalize, FinalizeKind::PerThread);
    let bytes = shape.iter().product::<usize>() as u64 * 4;
    assert!(plan.vec4_at(&[16, 48 + bytes]));
    check_views(
        &ctx,
        &shape,
        layout,
        [16, 48 + bytes, 64 + 2 * bytes, 80 + 3 * bytes],
        40,
    );
    assert!(!plan.vec4_at(&[16, 52 + bytes]));
    check_views(
        &ctx,
        &shape,
        layout,
        [16, 52 + bytes, 64 + 2 * bytes, 84 + 3 * bytes],
        41,
    );
}

#[test]
fn views_that_cannot_be_are_refused() {
    let ctx = planned(Planned::Cpu);
    let arena = Arena::new(&ctx, 256);
    let shape = [2usize, 3];
    let view_at = |offset| {
        Tensor::from_buffer_at(
            &ctx,
            arena.buffer.clone(),
            offset,
            &shape,
            Layout::ChannelsFirst,
        )
    };
    let error = view_at(6).expect_err("not a multiple of 4");
    assert!(
        matches!(
            error,
            BatchNormError::MisalignedView {
                offset: 6,
                alignment: 4,
                dtype: DType::F32
            }
        ),
        "{error:?}"
    );
    let error = view_at(240).expect_err("past the end");
    assert!(
        matches!(
            error,
            BatchNormError::ViewPastEnd {
                offset: 240,
                bytes: 24,
                buffer_bytes: 256
            }
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("8 bytes past the end"),
        "{error}"
    );
    // An offset near u64::MAX: refused, and its message says so without overflowing.
    let error = view_at(u64::MAX - 3).expect_err("past the end");
    assert!(
        matches!(error, BatchNormError::ViewPastEnd { offset, .. } if offset == u64::MAX - 3),
        "{error:?}"
    );
    assert!(error.to_string().contains("past the end"), "{error}");
    let no_storage = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("no STORAGE"),
        size: 64,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let error = Tensor::from_buffer_at(&ctx, no_storage, 0, &shape, Layout::ChannelsFirst)
        .expect_err("no STORAGE usage");
    assert!(
        matches!(&error, BatchNormError::MissingBufferUsage { missing, .. } if missing == "STORAGE"),
        "{error:?}"
    );
    assert_eq!(arena.words(), vec![SENTINEL; 64]);
}

/// An input and the output overlapping in one buffer are refused before any GPU work, with
/// the ranges in the message: the layer's state and the buffer stay as they were.
#[test]
fn overlapping_inputs_and_outputs_are_refused() {
    let ctx = planned(Planned::Cpu);
    let arena = Arena::new(&ctx, 1024);
    let shape = [4usize, 3, 5];
    let data = normal_data(60, 3, 0.0, 1.0);
    let x = arena.view(0, &shape, Layout::ChannelsFirst, Some(&data));
    let mut layer = BatchNorm::new(&ctx, 3).unwrap();
    let before = arena.words();
    // In place, and shifted by one element.
    for y_at in [0, 4] {
        let y = arena.view(y_at, &shape, Layout::ChannelsFirst, None);
        let error = layer.forward_into(&x, &y).expect_err("overlapping views");
        assert!(
            matches!(
                error,
                BatchNormError::OverlappingViews {
                    input: "the input x",
                    output: "the output y",
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("bytes 0..240"), "{error}");
    }
    assert_eq!(layer.num_batches_tracked(), 0);
    assert_eq!(
        layer.running_statistics().unwrap(),
        (vec![0.0; 3], vec![1.0; 3])
    );
    // The backward: dy and dx overlapping.
    let y = arena.view(256, &shape, Layout::ChannelsFirst, None);
    let saved = layer.forward_into(&x, &y).unwrap();
    let dy = arena.view(512, &shape, Layout::ChannelsFirst, Some(&data));
    let dx = arena.view(600, &shape, Layout::ChannelsFirst, None);
    let words = arena.words();
    let error = layer
        .backward_into(&x, &dy, &dx, &saved)
        .expect_err("dy and dx overlap");
    assert!(
        matches!(
            error,
            BatchNormError::OverlappingViews {
                input: "the gradient dy",
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(arena.words(), words);
    assert_ne!(words, before);
}

/// The per-thread reductions (CPU adapters) read vec4s where x and dy start on one and scalars
/// otherwise; both merge the same values in the same order, so the batch statistics and the
/// parameter gradients agree bit for bit, in f32 and in both half types (whose vec4s are two words,
/// and whose scalar loads take one half of a word), and so do y and dx. The quad kernel
/// (channels-last): more quads than a chunk's threads, several chunks, and a last chunk whose rows
/// end in a part eight. The kernel of channels-first runs: runs of seven vec4s (a group of two
/// ends at the run's end), and runs of 49 values, whose vec4s at each end hold a neighbouring
/// channel's values, in chunks that start inside a run; and fused in f32, runs of seven vec4s
/// (512 channels, a thread each), of 49 values (2048 channels, four a thread) and of 18 values
/// (1024 channels, two a thread), whose output quads at a run's end hold the next channel's
/// values.
#[test]
fn per_thread_reductions_give_the_same_bits_on_vec4_and_scalar_loads() {
    const FUSED: usize = 0;
    // (shape, layout, kernel, chunks in f32: FUSED for a fused plan, and in the half types)
    for (shape, layout, kind, chunks) in [
        (
            &[3usize, 17, 23, 48][..],
            Layout::ChannelsLast,
            ReductionKind::PerThreadQuads,
            [10, 10],
        ),
        (
            &[43, 6, 4, 7],
            Layout::ChannelsFirst,
            ReductionKind::PerThread,
            [2, 2],
        ),
        (
            &[43, 4, 7, 7],
            Layout::ChannelsFirst,
            ReductionKind::PerThread,
            [3, 3],
        ),
        // 512 channels: fused in f32.
        (
            &[2, 512, 4, 7],
            Layout::ChannelsFirst,
            ReductionKind::PerThread,
            [FUSED, 1],
        ),
        // Runs of 49 values: fused four channels a thread, where there are 512 such groups.
        (
            &[2, 512, 7, 7],
            Layout::ChannelsFirst,
            ReductionKind::PerThread,
            [1, 1],
        ),
        (
            &[1, 2048, 7, 7],
            Layout::ChannelsFirst,
            ReductionKind::PerThread,
            [FUSED, 1],
        ),
        (
            &[1, 1024, 3, 6],
            Layout::ChannelsFirst,
            ReductionKind::PerThread,
            [FUSED, 1],
        ),
    ] {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let chunks = chunks[usize::from(dtype != DType::F32)];
            per_thread_reduction_bits_agree(shape, layout, dtype, kind, chunks);
        }
    }
}

fn per_thread_reduction_bits_agree(
    shape: &[usize],
    layout: Layout,
    dtype: DType,
    kind: ReductionKind,
    chunks: usize,
) {
    let ctx = planned(Planned::Cpu);
    let view = ChannelView::new(shape, layout).unwrap();
    let plan = plan(view, dtype, ctx.plan_limits(), Operation::TrainingForward).unwrap();
    assert_eq!(plan.kind, kind);
    if chunks == 0 {
        assert!(plan.fused_window().is_some(), "{shape:?} {dtype}");
    } else {
        assert!(plan.fused_window().is_none(), "{shape:?} {dtype}");
        assert_eq!(plan.chunks_total, chunks, "{shape:?} {dtype}");
    }
    let (len, channels) = (view.len(), view.channels);
    let bytes = len as u64 * dtype.bytes();
    let x_data = normal_data(len, 61, 3.0, 2.0);
    let dy_data = normal_data(len, 62, 0.0, 1.0);
    let gamma = normal_data(channels, 63, 1.0, 0.5);
    let beta = normal_data(channels, 64, 0.0, 1.0);
    let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let run = |x_at: u64| {
        let [y_at, dy_at, dx_at] = [
            x_at + bytes + 16,
            x_at + 2 * bytes + 32,
            x_at + 3 * bytes + 48,
        ];
        assert_eq!(
            plan.reduction_vec4_at(&[x_at, y_at, dy_at, dx_at]),
            x_at.is_multiple_of(16)
        );
        let arena = Arena::new(&ctx, dx_at + bytes + 64);
        let x = arena.view_as(x_at, shape, layout, dtype, Some(&x_data));
        let y = arena.view_as(y_at, shape, layout, dtype, None);
        let dy = arena.view_as(dy_at, shape, layout, dtype, Some(&dy_data));
        let dx = arena.view_as(dx_at, shape, layout, dtype, None);
        let mut layer = BatchNorm::new(&ctx, channels).unwrap();
        layer.set_parameters(&gamma, &beta).unwrap();
        let saved_stats = layer.forward_into(&x, &y).expect("forward");
        let params = layer
            .backward_into(&x, &dy, &dx, &saved_stats)
            .expect("backward")
            .expect("affine");
        let saved = read_saved(&saved_stats);
        let (dgamma, dbeta) = params.read().unwrap();
        [
            bits(&saved.mean),
            bits(&saved.invstd),
            bits(&dgamma),
            bits(&dbeta),
            bits(&y.to_vec().unwrap()),
            bits(&dx.to_vec().unwrap()),
        ]
    };
    let on_vec4s = run(16);
    let on_scalars = run(20);
    for (what, (a, b)) in ["mean", "invstd", "dgamma", "dbeta", "y", "dx"]
        .into_iter()
        .zip(on_vec4s.iter().zip(&on_scalars))
    {
        assert_eq!(a, b, "{what} ({dtype}): vec4 and scalar loads differ");
    }
}
