//! Synchronized batch norm on half-precision tensors (f16, bf16), in one process: two ranks'
//! training forward and backward against the single-device layer run on the whole batch in
//! the same storage type, through the word kernels (an odd spatial size, and a shard that ends
//! in half a word) and the vec4 ones (channels-last, C = 4). The statistics and the ranks'
//! summed dgamma and dbeta agree within f32's rounding; y and dx, which both compute in f32
//! from statistics that differ only in f32 rounding and then round to the storage type, within
//! one unit in its last place and f32's error near zero.

mod common;

use common::storage::ulp;
use common::sync::rank_context;
use common::{assert_close, context, normal_data, Planned};
use wgpu_batchnorm::sync::{in_process_group, Exchange, SyncBatchNorm};
use wgpu_batchnorm::{BatchNorm, ChannelView, DType, GpuContext, Layout, Tensor};

/// What one side (a rank, or the single device) downloads after a training step.
struct Outcome {
    y: Vec<f32>,
    dx: Vec<f32>,
    mean: Vec<f32>,
    invstd: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

/// A layer with the case's gamma and beta.
fn layer(ctx: &GpuContext, channels: usize) -> BatchNorm {
    let mut layer = BatchNorm::new(ctx, channels).expect("layer");
    layer
        .set_parameters(
            &normal_data(channels, 5, 1.0, 0.5),
            &normal_data(channels, 6, 0.0, 1.0),
        )
        .expect("parameters");
    layer
}

/// One training step of `layer` (synchronized over `exchange`, or alone) on x and dy stored
/// as `dtype`.
fn step(
    ctx: &GpuContext,
    layer: &mut Layer<'_>,
    (x, dy): (&[f32], &[f32]),
    shape: &[usize],
    layout: Layout,
    dtype: DType,
) -> Outcome {
    let upload = |data| Tensor::from_f32_as(ctx, data, shape, layout, dtype).expect("upload");
    let (x, dy) = (upload(x), upload(dy));
    let (y, saved, grads, bn) = match layer {
        Layer::Synchronized(layer, exchange) => {
            let out = layer.forward(&x, *exchange).expect("synchronized forward");
            let grads = layer
                .backward(&x, &dy, &out.saved, *exchange)
                .expect("synchronized backward");
            (out.y, out.saved.stats().clone(), grads, layer.layer())
        }
        Layer::Alone(layer) => {
            let out = layer.forward(&x).expect("forward");
            let grads = layer.backward(&x, &dy, &out.saved).expect("backward");
            (out.y, out.saved, grads, &**layer)
        }
    };
    assert_eq!(y.dtype(), dtype);
    let (mean, invstd) = saved.read().expect("saved");
    let (running_mean, running_var) = bn.running_statistics().expect("running stats");
    let (dgamma, dbeta) = grads.params.expect("affine").read().expect("grads");
    Outcome {
        y: y.to_vec().expect("y"),
        dx: grads.dx.to_vec().expect("dx"),
        mean,
        invstd,
        running_mean,
        running_var,
        dgamma,
        dbeta,
    }
}

/// The layer a step trains: a rank's, synchronized over its exchange, or the single device's.
enum Layer<'a> {
    Synchronized(&'a mut SyncBatchNorm, &'a dyn Exchange),
    Alone(&'a mut BatchNorm),
}

/// Asserts that every stored value of `got` is within one unit in the last place of `dtype`
/// (at the larger of the two) of `want`, plus 1e-4 for the f32 values before rounding: they
/// differ by a few f32 roundings of terms of order 1, which near zero is more than an ulp.
fn assert_within_an_ulp(what: &str, dtype: DType, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (f64::from(g), f64::from(w));
        let bound = ulp(dtype, g.abs().max(w.abs())) + 1e-4;
        assert!((g - w).abs() <= bound, "{what}[{i}]: {g} against {w}");
    }
}

/// Two ranks with `rows` outer rows each of `tail` (the rest of the shape), against the single
/// device on all rows.
fn check(dtype: DType, rows: [usize; 2], tail: &[usize], layout: Layout) {
    let shape_of =
        |n: usize| -> Vec<usize> { std::iter::once(n).chain(tail.iter().copied()).collect() };
    let channels = ChannelView::new(&shape_of(1), layout)
        .expect("shape")
        .channels;
    let data = |rank: usize| {
        let len: usize = shape_of(rows[rank]).iter().product();
        let seed = 31 + rank as u64;
        (
            normal_data(len, seed, 3.0 + rank as f64, 1.5),
            normal_data(len, seed ^ 0xD1, 0.0, 1.0),
        )
    };
    let group = in_process_group(2);
    let ranks: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = group
            .iter()
            .map(|exchange| {
                let (shape, (x, dy)) = (shape_of(rows[exchange.rank()]), data(exchange.rank()));
                scope.spawn(move || {
                    let ctx = rank_context(exchange.rank(), Planned::Cpu);
                    let mut synchronized = SyncBatchNorm::new(layer(&ctx, channels));
                    let mut layer = Layer::Synchronized(&mut synchronized, exchange);
                    step(&ctx, &mut layer, (&x, &dy), &shape, layout, dtype)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a rank panicked"))
            .collect()
    });
    let ctx = context();
    let (x, dy): (Vec<f32>, Vec<f32>) = {
        let ((x0, dy0), (x1, dy1)) = (data(0), data(1));
        ([x0, x1].concat(), [dy0, dy1].concat())
    };
    let mut single = layer(&ctx, channels);
    let whole = step(
        &ctx,
        &mut Layer::Alone(&mut single),
        (&x, &dy),
        &shape_of(rows[0] + rows[1]),
        layout,
        dtype,
    );
    let what = format!("{dtype} {rows:?} x {tail:?} {layout:?}");
    // Every rank holds bitwise the same statistics.
    for (got, first) in [
        (&ranks[1].mean, &ranks[0].mean),
        (&ranks[1].invstd, &ranks[0].invstd),
    ] {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(got), bits(first), "{what}: the ranks' statistics");
    }
    let wide = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    let rank = &ranks[0];
    for (name, got, want) in [
        ("mean", &rank.mean, &whole.mean),
        ("invstd", &rank.invstd, &whole.invstd),
        ("running mean", &rank.running_mean, &whole.running_mean),
        ("running var", &rank.running_var, &whole.running_var),
    ] {
        assert_close(&format!("{what}: {name}"), got, &wide(want), 1e-6, 1e-5);
    }
    // dgamma and dbeta are each rank's own: their sum is the whole batch's.
    let summed = |pick: fn(&Outcome) -> &Vec<f32>| -> Vec<f32> {
        (0..channels)
            .map(|c| pick(&ranks[0])[c] + pick(&ranks[1])[c])
            .collect()
    };
    assert_close(
        &format!("{what}: dbeta"),
        &summed(|o| &o.dbeta),
        &wide(&whole.dbeta),
        1e-4,
        1e-4,
    );
    assert_close(
        &format!("{what}: dgamma"),
        &summed(|o| &o.dgamma),
        &wide(&whole.dgamma),
        1e-4,
        1e-4,
    );
    let both = |pick: fn(&Outcome) -> &Vec<f32>| {
        [pick(&ranks[0]).clone(), pick(&ranks[1]).clone()].concat()
    };
    assert_within_an_ulp(&format!("{what}: y"), dtype, &both(|o| &o.y), &whole.y);
    assert_within_an_ulp(&format!("{what}: dx"), dtype, &both(|o| &o.dx), &whole.dx);
}

#[test]
fn f16_shards_match_the_single_device_layer() {
    // Words: a spatial size of 15 (rank 1's 135 values end in half a word).
    check(DType::F16, [2, 3], &[3, 5, 3], Layout::ChannelsFirst);
    // vec4s: channels-last with C = 4.
    check(DType::F16, [2, 1], &[2, 3, 4], Layout::ChannelsLast);
}

#[test]
fn bf16_shards_match_the_single_device_layer() {
    check(DType::BF16, [2, 3], &[3, 5, 3], Layout::ChannelsFirst);
    check(DType::BF16, [2, 1], &[2, 3, 4], Layout::ChannelsLast);
}
