// The grid-stride loop of every elementwise kernel (normalize, dx; scalar or vec4: LANES
// elements per step). Each program defines `lane_factors(cursor)` (what a step starting at
// that element needs: its channel's, or with vec4s the channels' of its four lanes,
// `channel_lanes`) and `apply(index, factors)` (one step: load, compute, store).
//
// When the stride is a multiple of the window's row (the host picks such workgroup counts),
// every element a thread visits has the same place in its row, so the same channel (or
// channels): the thread finds it once, computes its factors once, and then only adds the
// stride. Otherwise each step finds its channel.
fn elementwise(gid: u32, threads: u32) {
    let total = p.o_count * p.c_count * p.inner / LANES;
    if (stride_keeps_channel(LANES * threads)) {
        if (gid >= total) {
            return;
        }
        let first = cursor_at(LANES * gid);
        let factors = lane_factors(first);
        for (var q = gid; q < total; q += threads) {
            apply(first.index / LANES + (q - gid), factors);
        }
    } else {
        for (var q = gid; q < total; q += threads) {
            let cursor = cursor_at(LANES * q);
            apply(cursor.index / LANES, lane_factors(cursor));
        }
    }
}
