//! Storage types of tensors: f32, and the half-precision f16 and bf16 (PyTorch's `torch.half`
//! and `torch.bfloat16`). Only x, y, dy, dx and the shortcut are stored in them; statistics,
//! accumulation, gamma, beta and the running stats stay f32, as PyTorch keeps them for a half
//! batch norm.
//!
//! On the GPU a half tensor is an array of u32 words, two elements to a word, the first in the
//! low half (little-endian order, as the host lays the elements out). Kernels decode f16 in
//! integer arithmetic (exact; not `unpack2x16float`, which not every adapter offers) and bf16
//! with a shift, compute in f32, and round stores to nearest even in integer arithmetic
//! (`shaders/half.wgsl`), since WGSL leaves `pack2x16float` indeterminate for NaN, infinities
//! and out-of-range values.

use half::{bf16, f16};

/// How a tensor's elements are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float.
    #[default]
    F32,
    /// 16-bit IEEE float (5 exponent bits, 10 mantissa bits; largest finite 65504).
    F16,
    /// bfloat16 (8 exponent bits as f32, 7 mantissa bits).
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Its name in messages and reports: "f32", "f16", "bf16".
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// True for f16 and bf16.
    pub fn is_half(self) -> bool {
        self != DType::F32
    }

    /// The alignment, in bytes, of where a tensor of this type may start in a buffer: its
    /// element size for f32, a whole 32-bit word for the half types (two elements share a
    /// word, and no two threads may write halves of one word).
    pub fn view_alignment(self) -> u64 {
        4
    }

    /// Bytes a buffer needs to hold `elements` of this type: whole 32-bit words.
    pub fn buffer_bytes(self, elements: u64) -> Option<u64> {
        elements
            .checked_mul(self.bytes())
            .and_then(|bytes| bytes.checked_next_multiple_of(4))
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A host element type a tensor can be uploaded from and downloaded to: `f32`, `half::f16`,
/// `half::bf16`. Conversions from f32 round to nearest even (the `half` crate's, which match
/// the kernels' stores and PyTorch's).
pub trait Element: bytemuck::Pod + Copy + Send + Sync + 'static {
    /// The storage type of a tensor of these elements.
    const DTYPE: DType;
    /// The value as f32 (exact).
    fn to_f32(self) -> f32;
    /// The nearest value to `value` (ties to even).
    fn from_f32(value: f32) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(value: f32) -> Self {
        value
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(value: f32) -> Self {
        bf16::from_f32(value)
    }
}

/// The bytes of `values` stored as `dtype` (rounded to nearest even), padded to whole words.
pub(crate) fn encode(values: &[f32], dtype: DType) -> Vec<u8> {
    let mut bytes: Vec<u8> = match dtype {
        DType::F32 => bytemuck::cast_slice(values).to_vec(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
    };
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes
}

/// The first `len` elements of `bytes`, stored as `dtype`, as f32.
pub(crate) fn decode(bytes: &[u8], dtype: DType, len: usize) -> Vec<f32> {
    match dtype {
        DType::F32 => bytemuck::pod_collect_to_vec(&bytes[..4 * len]),
        DType::F16 => bytes
            .chunks_exact(2)
            .take(len)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .take(len)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_rounds_to_nearest_even_and_pads_to_words() {
        // 1 + 2^-11 is halfway between two f16 values: ties to the even one, 1.
        let bytes = encode(&[1.0 + 2f32.powi(-11), 65520.0, -0.0], DType::F16);
        assert_eq!(bytes.len(), 8);
        assert_eq!(&bytes[..6], &[0x00, 0x3c, 0x00, 0x7c, 0x00, 0x80]);
        assert_eq!(decode(&bytes, DType::F16, 3), [1.0, f32::INFINITY, -0.0]);
        // bf16 keeps f32's exponent: 2^100 is exact; 1 + 2^-8 ties to 1.
        let bytes = encode(&[2f32.powi(100), 1.0 + 2f32.powi(-8)], DType::BF16);
        assert_eq!(decode(&bytes, DType::BF16, 2), [2f32.powi(100), 1.0]);
    }

    #[test]
    fn buffers_hold_whole_words() {
        assert_eq!(DType::F16.buffer_bytes(3), Some(8));
        assert_eq!(DType::BF16.buffer_bytes(4), Some(8));
        assert_eq!(DType::F32.buffer_bytes(3), Some(12));
        assert_eq!(DType::F16.buffer_bytes(u64::MAX), None);
        // 2^64 - 2 bytes, which a whole word would take past u64::MAX.
        assert_eq!(DType::F16.buffer_bytes(u64::MAX / 2), None);
    }
}
