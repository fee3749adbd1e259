// The output of a forward, y = epilogue((x - mean) * scale + shift), in one place for every
// kernel that writes y (fused or not, scalar, word or vec4). The epilogue is the identity, a
// ReLU (`RELU`), or the shortcut z added first (`ADD`: relu(bn(x) + z)); callers pass z from
// `shortcut(i)`, zeros without `ADD`. The ReLU keeps NaN, and tests the sign in integers: WGSL's
// `max` need not keep a NaN, and a float compare in a select is what a driver's optimizer folds
// into one (llvmpipe's GL turned relu(NaN) into 0 that way).
//
// (x - mean) * scale + shift: one subtraction and one multiply-add per element. The mean is
// never folded into the shift (x * scale + (shift - mean * scale)): at an offset of 1e4 that
// cancels away about four digits.

fn normalized(x: f32, mean: f32, scale: f32, shift: f32) -> f32 {
    return (x - mean) * scale + shift;
}

fn normalized4(x: vec4<f32>, mean: vec4<f32>, scale: vec4<f32>, shift: vec4<f32>) -> vec4<f32> {
    return (x - mean) * scale + shift;
}

// (scale, shift) of channel c from its (mean, invstd): y = (x - mean) * scale + shift.
fn scale_shift(c: u32, mean_invstd: vec2<f32>) -> vec2<f32> {
    if (HAS_AFFINE) {
        return vec2<f32>(mean_invstd.y * affine_at(c), affine_at(p.channels + c));
    }
    return vec2<f32>(mean_invstd.y, 0.0);
}

// Bits of the floats below zero (-0 excluded, -inf included): sign set, not NaN.
fn below_zero(bits: u32) -> bool {
    return bits > 0x80000000u && bits <= 0xff800000u;
}

fn epilogue(v: f32, z: f32) -> f32 {
    var out = v;
    if (ADD) {
        out += z;
    }
    if (RELU) {
        out = select(out, 0.0, below_zero(bitcast<u32>(out)));
    }
    return out;
}

fn epilogue2(v: vec2<f32>, z: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(epilogue(v.x, z.x), epilogue(v.y, z.y));
}

fn epilogue4(v: vec4<f32>, z: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(epilogue(v.x, z.x), epilogue(v.y, z.y), epilogue(v.z, z.z), epilogue(v.w, z.w));
}
