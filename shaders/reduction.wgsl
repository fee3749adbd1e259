// The reduction both reducing programs share, over the accumulator `Acc` each defines with
// `acc_empty` and `acc_merge` (Chan's merge of (count, shift, mean, M2) partials for the
// statistics; plain sums of (dy, dy (x - mean)) for the gradients):
// - `reduce_workgroup` and `merge_row_lanes`: a workgroup's threads into one accumulator, in a
//   fixed order;
// - the finalize entry points: each channel's partials from the `partials` buffer merged in a
//   fixed order, by a workgroup (`finalize`, for channels with many partials) or by one thread
//   (`finalize_per_thread`, for few, and on CPU adapters: no barriers, no idle threads), then
//   handed to the program's `finalize_channel`; `last_workgroup.wgsl` merges inside the
//   partials dispatch with `merge_channel_by_workgroup`, or in `merge_channel_by_thread`'s
//   order through its own `merge_channels_staged`.
// Fixed orders make results bitwise the same from run to run.

var<workgroup> shared_acc: array<Acc, WORKGROUP>;

// Merges shared_acc[0..WORKGROUP] into shared_acc[0] in a fixed order, eight at a time
// (256 -> 32 -> 4 -> 1): three barriers instead of a binary tree's eight.
fn reduce_workgroup(lid: u32) {
    workgroupBarrier();
    var width = WORKGROUP;
    loop {
        let next = max(width / 8u, 1u);
        if (lid < next) {
            var acc = shared_acc[lid];
            for (var k = lid + next; k < width; k += next) {
                acc = acc_merge(acc, shared_acc[k]);
            }
            shared_acc[lid] = acc;
        }
        workgroupBarrier();
        width = next;
        if (width == 1u) {
            break;
        }
    }
}

// Merges the row lanes of a strided workgroup's channel (called by row lane 0, after a barrier
// that follows every lane's write of shared_acc).
fn merge_row_lanes(lid: u32) -> Acc {
    var acc = shared_acc[lid];
    for (var lane = 1u; lane < WORKGROUP / p.band; lane += 1u) {
        acc = acc_merge(acc, shared_acc[lid + lane * p.band]);
    }
    return acc;
}

// Merges channel c's partials with the whole workgroup, in a fixed order, and hands the result
// to `finalize_channel` (thread 0). Called in uniform control flow (it has barriers).
fn merge_channel_by_workgroup(c: u32, lid: u32) {
    var acc = acc_empty();
    for (var k = lid; k < p.chunks_total; k += WORKGROUP) {
        acc = acc_merge(acc, partials[c * p.chunks_total + k]);
    }
    shared_acc[lid] = acc;
    reduce_workgroup(lid);
    if (lid == 0u) {
        finalize_channel(c, shared_acc[0]);
    }
    workgroupBarrier();
}

// Merges channel c's partials in one thread, in partial-index order, and hands the result to
// `finalize_channel`.
fn merge_channel_by_thread(c: u32) {
    var acc = acc_empty();
    for (var k = 0u; k < p.chunks_total; k += 1u) {
        acc = acc_merge(acc, partials[c * p.chunks_total + k]);
    }
    finalize_channel(c, acc);
}

// One workgroup per channel: for channels with many partials.
@compute @workgroup_size(WORKGROUP)
fn finalize(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var c = wid.x; c < p.channels; c += nwg.x) {
        merge_channel_by_workgroup(c, lid);
    }
}

// One thread per channel: for channels with few partials, and on CPU adapters always.
@compute @workgroup_size(WORKGROUP)
fn finalize_per_thread(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var c = gid.x; c < p.channels; c += nwg.x * WORKGROUP) {
        merge_channel_by_thread(c);
    }
}
