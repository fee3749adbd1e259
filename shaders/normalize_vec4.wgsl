// The normalize kernel on four elements at a time, for windows whose rows split into whole
// vec4s (C times the spatial size a multiple of 4): channels-first, the four lanes share a
// channel or, where the spatial size is not a multiple of 4, some lanes are in the next one;
// channels-last, the lanes are four consecutive channels (`channel_lanes`).
// Wide loads move the same bytes in a quarter of the memory operations.

struct LaneScale {
    mean: vec4<f32>,
    scale: vec4<f32>,
    shift: vec4<f32>,
}

// Where the lanes share a channel (LANES_SHARE_CHANNEL), its factors are found once: on a CPU
// adapter, each per-lane load of four channels' factors weighed as much as a quarter of a
// thread's 16 steps of x and y (docs/performance.md section 37).
// Channels-last, in the variant whose per-channel vectors are vec4s (CHANNEL_QUADS), the lanes'
// four channels' factors come in one load each (section 39).
fn lane_factors(cursor: ElementCursor) -> LaneScale {
    if (LANES_SHARE_CHANNEL) {
        let s = channel_scale(cursor.c);
        return LaneScale(vec4<f32>(s.mean), vec4<f32>(s.scale), vec4<f32>(s.shift));
    }
    if (CHANNEL_QUADS) {
        return quad_factors(cursor.c);
    }
    let lanes = channel_lanes(cursor);
    let s0 = channel_scale(lanes.x);
    let s1 = channel_scale(lanes.y);
    let s2 = channel_scale(lanes.z);
    let s3 = channel_scale(lanes.w);
    return LaneScale(
        vec4<f32>(s0.mean, s1.mean, s2.mean, s3.mean),
        vec4<f32>(s0.scale, s1.scale, s2.scale, s3.scale),
        vec4<f32>(s0.shift, s1.shift, s2.shift, s3.shift),
    );
}

// Channels c to c + 3 (c a multiple of four): `channel_scale` of each, lane by lane, from
// the per-channel vectors' quads.
fn quad_factors(c: u32) -> LaneScale {
    let first = c / 4u;
    let second = (p.channels + c) / 4u;
    var mean: vec4<f32>;
    var invstd: vec4<f32>;
    if (FROM_RUNNING) {
        mean = running_quad(first);
        invstd = 1.0 / sqrt(running_quad(second) + p.eps);
    } else {
        mean = stats_quad(first);
        invstd = stats_quad(second);
    }
    if (HAS_AFFINE) {
        return LaneScale(mean, invstd * affine_quad(first), affine_quad(second));
    }
    return LaneScale(mean, invstd, vec4<f32>(0.0));
}

fn apply(q: u32, f: LaneScale) {
    store_y(q, epilogue4(normalized4(load_x(q), f.mean, f.scale, f.shift), shortcut(q)));
}

@compute @workgroup_size(WORKGROUP)
fn normalize_vec4(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let threads = nwg.x * WORKGROUP;
    save_running_statistics(gid.x, threads);
    elementwise(gid.x, threads);
}
