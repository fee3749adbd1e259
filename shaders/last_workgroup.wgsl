// The merge inside the partials dispatch (plans with `Merge::LastWorkgroup`: one window, not
// fused, a device with `@coherent` storage). After writing its partial of a channel
// (contiguous) or of a band of 32 channels (strided), a workgroup counts it on the channel's or
// band's counter; the workgroup whose count completes it merges the channel's or band's
// partials, in the finalize kind's order (`PER_THREAD_MERGE`: a thread per channel in
// partial-index order, as `merge_channel_by_thread`, through `merge_channels_staged`; else
// `merge_channel_by_workgroup`; strided plans always the first), so the result is bitwise the
// finalize dispatch's whichever workgroup finishes last, and resets the counter to zero for
// the next dispatch. No workgroup ever waits for another: WebGPU promises no forward progress
// between workgroups, so only the workgroup that finishes last does more work.
//
// Why the partials of other workgroups are visible: the prelude declares `partials` with
// `@coherent`, so its stores and loads reach memory every workgroup shares rather than a
// workgroup's own cache; the storage barrier before the count orders this workgroup's partial
// stores (by its writer threads) before the count, and the one after it orders the merge's
// loads after the count that saw every other partial counted.

var<workgroup> finished_last: bool;

// Counts this workgroup's partial on counter `k` (one of `p.chunks`) and tells every thread
// whether it was the last.
fn counted_last(k: u32, lid: u32) -> bool {
    storageBarrier();
    if (lid == 0u) {
        let last = atomicAdd(&counters[k], 1u) + 1u == p.chunks;
        if (last) {
            atomicStore(&counters[k], 0u);
        }
        finished_last = last;
    }
    let last = workgroupUniformLoad(&finished_last);
    storageBarrier();
    return last;
}

// Contiguous kernels: window channel c_rel's partial is written.
fn channel_partial_written(c_rel: u32, lid: u32) {
    let c = p.c0 + c_rel;
    if (!counted_last(c, lid)) {
        return;
    }
    if (PER_THREAD_MERGE) {
        merge_channels_staged(c, 1u, lid);
    } else {
        merge_channel_by_workgroup(c, lid);
    }
}

// Strided kernels: the partials of band `band`'s channels are written. Only plans whose
// channels have at most 32 partials each (`PER_THREAD_MERGE`) merge here, a thread per
// channel; the planner keeps the finalize dispatch for the others, since one workgroup merging
// its band's channels one after another cost an H200 more than that dispatch.
fn band_partial_written(band: u32, lid: u32) {
    if (!counted_last(band, lid)) {
        return;
    }
    let first = band * p.band;
    merge_channels_staged(p.c0 + first, min(p.band, p.c_count - first), lid);
}

// Merges the partials of channels `first` to `first + count - 1` (count <= p.band), a thread
// per channel in partial-index order: `merge_channel_by_thread`'s merges, in its order, so its
// bits. The partials come through workgroup memory, `WORKGROUP / p.band` of each channel a
// round, every thread loading one: a thread reading its channel's partials from storage itself
// waits for each coherent load in turn (staged, the partials dispatch of the 32x64x8x8
// channels-last backward, 64 workgroups and 32 partials a channel, took an H200 13.3 us
// instead of 18.0: docs/performance.md, section 46). Called in uniform control flow (it has
// barriers), after a barrier that ends the workgroup's other uses of `shared_acc`.
fn merge_channels_staged(first: u32, count: u32, lid: u32) {
    let per_round = WORKGROUP / p.band;
    let loader_channel = lid / per_round;
    let loader_slot = lid - loader_channel * per_round;
    var acc = acc_empty();
    for (var k0 = 0u; k0 < p.chunks_total; k0 += per_round) {
        if (loader_channel < count && k0 + loader_slot < p.chunks_total) {
            let slot = (first + loader_channel) * p.chunks_total + k0 + loader_slot;
            shared_acc[lid] = partials[slot];
        }
        workgroupBarrier();
        if (lid < count) {
            let staged = min(per_round, p.chunks_total - k0);
            for (var k = 0u; k < staged; k += 1u) {
                acc = acc_merge(acc, shared_acc[lid * per_round + k]);
            }
        }
        workgroupBarrier();
    }
    if (lid < count) {
        finalize_channel(first + lid, acc);
    }
}
