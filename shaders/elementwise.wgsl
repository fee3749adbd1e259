// The grid-stride loop of every elementwise kernel (normalize, dx; scalar or vec4: LANES
// elements per step). Each program defines `lane_factors(c)` (what a step starting in
// channel c needs: its channel's, or four consecutive channels' when channels-last vec4) and
// `apply(index, factors)` (one step: load, compute, store).
//
// When the stride is a multiple of the window's row (the host picks such workgroup counts),
// every element a thread visits has the same channel: the thread finds it once, computes its
// factors once, and then only adds the stride. Otherwise each step finds its channel.
fn elementwise(gid: u32, threads: u32) {
    let total = p.o_count * p.c_count * p.inner / LANES;
    if (stride_keeps_channel(LANES * threads)) {
        if (gid >= total) {
            return;
        }
        let first = cursor_at(LANES * gid);
        let factors = lane_factors(first.c);
        for (var q = gid; q < total; q += threads) {
            apply(first.index / LANES + (q - gid), factors);
        }
    } else {
        for (var q = gid; q < total; q += threads) {
            let cursor = cursor_at(LANES * q);
            apply(cursor.index / LANES, lane_factors(cursor.c));
        }
    }
}
