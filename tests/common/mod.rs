//! Shared by the GPU integration tests: one context per test binary, deterministic data, and
//! tolerance checks against the f64 reference.
#![allow(dead_code)]

use std::sync::OnceLock;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use wgpu_batchnorm::{BatchNormError, GpuContext, Layout, Tensor};

/// The context of this test binary. Fails (never skips) when there is no adapter.
pub fn context() -> GpuContext {
    static CONTEXT: OnceLock<GpuContext> = OnceLock::new();
    CONTEXT
        .get_or_init(|| match GpuContext::new() {
            Ok(ctx) => {
                eprintln!("testing on {}", ctx.adapter());
                ctx
            }
            Err(error @ BatchNormError::NoAdapter { .. }) => panic!(
                "GPU tests need a wgpu adapter and found none: {error}. On Debian run \
                 `bash .ci/install-gpu-drivers.sh` (Mesa's software Vulkan and GL drivers)."
            ),
            Err(error) => panic!("could not open the GPU: {error}"),
        })
        .clone()
}

/// Deterministic normal-ish values: `offset + scale * z` (SplitMix64 + Box-Muller).
pub fn normal_data(len: usize, seed: u64, offset: f64, scale: f64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next_unit = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..len)
        .map(|_| {
            let (u1, u2) = (next_unit(), next_unit());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (offset + scale * z) as f32
        })
        .collect()
}

/// An input tensor and its host copy.
pub fn upload(data: &[f32], shape: &[usize], layout: Layout) -> (Tensor, ArrayD<f32>) {
    let tensor = Tensor::from_slice(&context(), data, shape, layout).expect("upload");
    let host = ArrayD::from_shape_vec(IxDyn(shape), data.to_vec()).expect("shape");
    (tensor, host)
}

/// An output tensor filled with NaN, so that an element no kernel writes fails the test.
pub fn poisoned(shape: &[usize], layout: Layout) -> Tensor {
    let tensor = Tensor::zeros(&context(), shape, layout).expect("allocate");
    tensor.fill(f32::NAN).expect("fill with NaN");
    tensor
}

/// Asserts |got - want| <= atol + rtol * |want| everywhere (NaN never passes unless both are).
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        if w.is_nan() && g.is_nan() {
            continue;
        }
        let err = (g - w).abs();
        let bound = atol + rtol * w.abs();
        assert!(
            err <= bound,
            "{what}[{i}]: got {g}, want {w} (error {err:e} > bound {bound:e})"
        );
        if err > worst.0 {
            worst = (err, i);
        }
    }
}

/// Flattens an ndarray in logical order.
pub fn flat(array: ArrayViewD<'_, f64>) -> Vec<f64> {
    array.iter().copied().collect()
}
