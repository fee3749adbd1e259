// The normalize kernel: y from x and each channel's (mean, scale, shift)
// (channel_statistics.wgsl), one element per step of the elementwise loop.

fn lane_factors(cursor: ElementCursor) -> ChannelScale {
    return channel_scale(cursor.c);
}

fn apply(index: u32, f: ChannelScale) {
    store_y(index, epilogue(normalized(load_x(index), f.mean, f.scale, f.shift), shortcut(index)));
}

@compute @workgroup_size(WORKGROUP)
fn normalize(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let threads = nwg.x * WORKGROUP;
    save_running_statistics(gid.x, threads);
    elementwise(gid.x, threads);
}
