// The output of a forward, y = epilogue((x - mean) * scale + shift), in one place for every
// kernel that writes y (fused or not, scalar or vec4). The epilogue is the identity today; a
// fused activation goes here.
//
// (x - mean) * scale + shift: one subtraction and one multiply-add per element. The mean is
// never folded into the shift (x * scale + (shift - mean * scale)): at an offset of 1e4 that
// cancels away about four digits.

fn epilogue(v: f32) -> f32 {
    return v;
}

fn epilogue4(v: vec4<f32>) -> vec4<f32> {
    return v;
}

fn normalized(x: f32, mean: f32, scale: f32, shift: f32) -> f32 {
    return epilogue((x - mean) * scale + shift);
}

fn normalized4(x: vec4<f32>, mean: vec4<f32>, scale: vec4<f32>, shift: vec4<f32>) -> vec4<f32> {
    return epilogue4((x - mean) * scale + shift);
}
