// The `input_gradient` kernel of `backward.wgsl` on four elements at a time, for windows whose
// rows split into whole vec4s (the rule of `normalize_vec4.wgsl`): channels-first with the
// spatial size a multiple of 4 (the lanes share a channel), or channels-last with C a multiple
// of 4 (the lanes are four consecutive channels).

@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> dx: array<vec4<f32>>;

struct LaneFactors {
    mean: vec4<f32>,
    invstd: vec4<f32>,
    scale: vec4<f32>,
    mean_dy: vec4<f32>,
    mean_dy_xhat: vec4<f32>,
}

fn lane_factors(c: u32) -> LaneFactors {
    let lanes = channel_lanes(c);
    let f0 = channel_factors(lanes.x);
    let f1 = channel_factors(lanes.y);
    let f2 = channel_factors(lanes.z);
    let f3 = channel_factors(lanes.w);
    return LaneFactors(
        vec4<f32>(f0.mean, f1.mean, f2.mean, f3.mean),
        vec4<f32>(f0.invstd, f1.invstd, f2.invstd, f3.invstd),
        vec4<f32>(f0.scale, f1.scale, f2.scale, f3.scale),
        vec4<f32>(f0.mean_dy, f1.mean_dy, f2.mean_dy, f3.mean_dy),
        vec4<f32>(f0.mean_dy_xhat, f1.mean_dy_xhat, f2.mean_dy_xhat, f3.mean_dy_xhat),
    );
}

fn input_gradient_lanes(q: u32, f: LaneFactors) {
    if (BATCH_STATS) {
        let x_hat = (x[q] - f.mean) * f.invstd;
        dx[q] = f.scale * (dy[q] - f.mean_dy - x_hat * f.mean_dy_xhat);
    } else {
        dx[q] = dy[q] * f.scale;
    }
}

@compute @workgroup_size(WORKGROUP)
fn input_gradient_vec4(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let total = p.o_count * p.c_count * p.inner / 4u;
    let stride = nwg.x * WORKGROUP;
    if (stride_keeps_channel(4u * stride)) {
        if (gid.x >= total) {
            return;
        }
        let first = cursor_at(4u * gid.x);
        let f = lane_factors(first.c);
        for (var q = gid.x; q < total; q += stride) {
            input_gradient_lanes(first.index / 4u + (q - gid.x), f);
        }
    } else {
        for (var q = gid.x; q < total; q += stride) {
            let cursor = cursor_at(4u * q);
            input_gradient_lanes(cursor.index / 4u, lane_factors(cursor.c));
        }
    }
}
