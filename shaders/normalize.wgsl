// y = (x - mean_c) * scale_c + beta_c with scale_c = gamma_c * invstd_c: one subtraction and one
// multiply-add per element. The mean is never folded into the shift (x * scale + (beta - mean *
// scale)): at an offset of 1e4 that cancels away about four digits.

override HAS_AFFINE: bool = true;

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
// [gamma (C) | beta (C)]
@group(0) @binding(4) var<storage, read> affine: array<f32>;

fn normalize_one(index: u32, c: u32) {
    let mean_invstd = channel_mean_invstd(c);
    var scale = mean_invstd.y;
    var shift = 0.0;
    if (HAS_AFFINE) {
        scale *= affine[c];
        shift = affine[p.channels + c];
    }
    y[index] = (x[index] - mean_invstd.x) * scale + shift;
}

@compute @workgroup_size(WORKGROUP)
fn normalize(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let total = p.o_count * p.c_count * p.inner;
    let stride = nwg.x * WORKGROUP;
    save_running_statistics(gid.x, stride);
    if (stride_keeps_channel(stride)) {
        if (gid.x >= total) {
            return;
        }
        let first = cursor_at(gid.x);
        let c = first.c;
        let mean_invstd = channel_mean_invstd(c);
        let mean = mean_invstd.x;
        var scale = mean_invstd.y;
        var shift = 0.0;
        if (HAS_AFFINE) {
            scale *= affine[c];
            shift = affine[p.channels + c];
        }
        for (var e = gid.x; e < total; e += stride) {
            let index = first.index + (e - gid.x);
            y[index] = (x[index] - mean) * scale + shift;
        }
    } else {
        for (var e = gid.x; e < total; e += stride) {
            let cursor = cursor_at(e);
            normalize_one(cursor.index, cursor.c);
        }
    }
}
