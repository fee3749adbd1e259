// The merge inside the partials dispatch (plans with `Merge::LastWorkgroup`: one window, not
// fused, a device with `@coherent` storage). After writing its partial of a channel
// (contiguous) or of a band of 32 channels (strided), a workgroup counts it on the channel's or
// band's counter; the workgroup whose count completes it merges the channel's or band's
// partials, in partial-index order with the finalize kind's function (`PER_THREAD_MERGE`:
// `merge_channel_by_thread`, else `merge_channel_by_workgroup`; strided plans always the
// first), so the result is bitwise the finalize dispatch's whichever workgroup finishes last,
// and resets the counter to zero for the next dispatch. No workgroup ever waits for another:
// WebGPU promises no forward progress between workgroups, so only the workgroup that finishes
// last does more work.
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
        if (lid == 0u) {
            merge_channel_by_thread(c);
        }
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
    let count = min(p.band, p.c_count - first);
    if (lid < count) {
        merge_channel_by_thread(p.c0 + first + lid);
    }
}
