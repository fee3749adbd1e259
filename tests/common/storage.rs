//! Host arithmetic of the storage types, for the half-precision and epilogue tests: rounding
//! to a type (the `half` crate's f32 conversions, an implementation independent of the
//! kernels'), and the spacing of a type's values, which bounds what one rounding may change.
//!
//! Not `half`'s `from_f64`: in half 2.7.1, `bf16::from_f64` drops the low 32 bits of the f64
//! before it rounds, and so rounds 2 in 12800 normal f32 values the wrong way.

use half::{bf16, f16};
use wgpu_batchnorm::DType;

/// `value` rounded once to `dtype`, to nearest even, back as f64: the f32 rounding's result
/// or a neighbour of it, whichever is nearest (rounding through f32 alone could round twice).
pub fn round_to(dtype: DType, value: f64) -> f64 {
    let (bits, decode): (u16, fn(u16) -> f64) = match dtype {
        DType::F32 => return f64::from(value as f32),
        DType::F16 => (f16::from_f32(value as f32).to_bits(), |b| {
            f16::from_bits(b).to_f64()
        }),
        DType::BF16 => (bf16::from_f32(value as f32).to_bits(), |b| {
            bf16::from_bits(b).to_f64()
        }),
    };
    if value.is_nan() {
        return value;
    }
    let candidates = [bits.wrapping_sub(1), bits, bits.wrapping_add(1)];
    candidates
        .into_iter()
        .map(|b| (b, decode(b)))
        .filter(|(_, v)| !v.is_nan() && v.signum() == value.signum())
        .min_by(|(a, va), (b, vb)| {
            let (da, db) = ((va - value).abs(), (vb - value).abs());
            da.total_cmp(&db).then((a & 1).cmp(&(b & 1)))
        })
        .map_or(decode(bits), |(_, v)| v)
}

/// The gap between `dtype`'s values at `value`: one unit in the last place (the subnormal
/// spacing below the normal range).
pub fn ulp(dtype: DType, value: f64) -> f64 {
    let (mantissa_bits, min_exponent) = match dtype {
        DType::F32 => (23, -126),
        DType::F16 => (10, -14),
        DType::BF16 => (7, -126),
    };
    let magnitude = value.abs();
    let exponent = if magnitude > 0.0 && magnitude.is_finite() {
        (magnitude.log2().floor() as i32).max(min_exponent)
    } else {
        min_exponent
    };
    2f64.powi(exponent - mantissa_bits)
}

/// Every value of `values` rounded to `dtype` (what an upload stores), as f32.
pub fn stored(dtype: DType, values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| match dtype {
            DType::F32 => v,
            DType::F16 => f16::from_f32(v).to_f32(),
            DType::BF16 => bf16::from_f32(v).to_f32(),
        })
        .collect()
}
