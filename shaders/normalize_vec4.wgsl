// The normalize kernel of `normalize.wgsl` on four elements at a time, for windows whose rows
// split into whole vec4s: channels-first with the spatial size a multiple of 4 (the four lanes
// share a channel), or channels-last with C a multiple of 4 (the lanes are four consecutive
// channels). Wide loads move the same bytes in a quarter of the memory operations.

override HAS_AFFINE: bool = true;

@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;
// [gamma (C) | beta (C)]
@group(0) @binding(4) var<storage, read> affine: array<f32>;

struct LaneParams {
    mean: vec4<f32>,
    scale: vec4<f32>,
    shift: vec4<f32>,
}

fn lane_params(c: u32) -> LaneParams {
    let lanes = channel_lanes(c);
    let n = p.channels;
    let m0 = channel_mean_invstd(lanes.x);
    let m1 = channel_mean_invstd(lanes.y);
    let m2 = channel_mean_invstd(lanes.z);
    let m3 = channel_mean_invstd(lanes.w);
    let mean = vec4<f32>(m0.x, m1.x, m2.x, m3.x);
    var scale = vec4<f32>(m0.y, m1.y, m2.y, m3.y);
    var shift = vec4<f32>(0.0);
    if (HAS_AFFINE) {
        scale *= vec4<f32>(affine[lanes.x], affine[lanes.y], affine[lanes.z], affine[lanes.w]);
        shift = vec4<f32>(
            affine[n + lanes.x],
            affine[n + lanes.y],
            affine[n + lanes.z],
            affine[n + lanes.w],
        );
    }
    return LaneParams(mean, scale, shift);
}

@compute @workgroup_size(WORKGROUP)
fn normalize_vec4(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let total = p.o_count * p.c_count * p.inner / 4u;
    let stride = nwg.x * WORKGROUP;
    save_running_statistics(gid.x, stride);
    if (stride_keeps_channel(4u * stride)) {
        if (gid.x >= total) {
            return;
        }
        let first = cursor_at(4u * gid.x);
        let lanes = lane_params(first.c);
        for (var q = gid.x; q < total; q += stride) {
            let index = first.index / 4u + (q - gid.x);
            y[index] = (x[index] - lanes.mean) * lanes.scale + lanes.shift;
        }
    } else {
        for (var q = gid.x; q < total; q += stride) {
            let cursor = cursor_at(4u * q);
            let lanes = lane_params(cursor.c);
            y[cursor.index / 4u] = (x[cursor.index / 4u] - lanes.mean) * lanes.scale + lanes.shift;
        }
    }
}
