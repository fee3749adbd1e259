// The half types' bits to and from f32, in integer arithmetic. Stores round to nearest even:
// WGSL leaves `pack2x16float` indeterminate for NaN, infinities and values out of f16's range,
// and lets it flush subnormals. Loads are exact (every f16 and bf16 value, subnormals included,
// is an f32); f16 is decoded here rather than with `unpack2x16float`, which wgpu accepts only
// on adapters with the SHADER_F16_IN_F32 downlevel capability (not every GL ES one has it),
// and bf16 is a shift.

// The f32 value of f16 bits h (in the low 16 bits).
fn f16_value(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exponent = (h >> 10u) & 0x1fu;
    let mantissa = h & 0x3ffu;
    if (exponent == 0u) {
        // Zero or subnormal: mantissa x 2^-24, exact in f32.
        return bitcast<f32>(sign | bitcast<u32>(ldexp(f32(mantissa), -24)));
    }
    if (exponent == 31u) {
        // Infinity or NaN (the payload kept).
        return bitcast<f32>(sign | 0x7f800000u | (mantissa << 13u));
    }
    return bitcast<f32>(sign | ((exponent + 112u) << 23u) | (mantissa << 13u));
}

// f16 bits of v: magnitudes at or above 65520 (the midpoint between 65504, the largest finite
// f16, and the next step, 65536) become infinity; below, round to nearest even, at most 65504;
// subnormals kept; NaN stays a (quiet) NaN; the sign of zero is kept.
fn f16_bits(v: f32) -> u32 {
    let bits = bitcast<u32>(v);
    let sign = (bits >> 16u) & 0x8000u;
    let magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) {
        return sign | 0x7e00u;
    }
    if (magnitude >= 0x477ff000u) {
        return sign | 0x7c00u;
    }
    if (magnitude >= 0x38800000u) {
        // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits.
        let rebiased = magnitude - 0x38000000u;
        return sign | ((rebiased + 0x0fffu + ((rebiased >> 13u) & 1u)) >> 13u);
    }
    if (magnitude <= 0x33000000u) {
        // At most 2^-25, half the smallest subnormal: rounds to (signed) zero.
        return sign;
    }
    // Subnormal: the value in units of 2^-24 is the full mantissa shifted right by 126 - exponent
    // (14 to 24 places), rounded to nearest even. A carry into 1024 is the smallest normal.
    let exponent = magnitude >> 23u;
    let mantissa = (magnitude & 0x7fffffu) | 0x800000u;
    let places = 126u - exponent;
    let kept = mantissa >> places;
    let rest = mantissa & ((1u << places) - 1u);
    let half_unit = 1u << (places - 1u);
    let round_up = rest > half_unit || (rest == half_unit && (kept & 1u) == 1u);
    return sign | (kept + select(0u, 1u, round_up));
}

// bf16 bits of v: the top 16 bits of the f32, rounded to nearest even; a NaN stays NaN with its
// quiet bit set (as PyTorch and the half crate convert).
fn bf16_bits(v: f32) -> u32 {
    let bits = bitcast<u32>(v);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return (bits >> 16u) | 0x0040u;
    }
    return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
}
