// The fused training forward and backward of CPU adapters (channels-first f32 windows of runs
// of eight values or more, whose channels are one chunk each: a per-thread plan's fused
// window). A thread takes a channel group of `p.band` consecutive channels (1, 2 or 4: the
// fewest whose runs together fill whole quads, `Plan::fused_channel_group`). It reduces each
// channel as `partials_per_thread_runs` reduces a chunk (`run_chunk`, per_thread_runs.wgsl),
// hands the total to the finalize's hook, and then writes the output of the group's runs,
// which it has just read and so finds in its core's cache: one dispatch instead of three, no
// partials, and each channel's factors found once instead of per element. No barrier and no
// workgroup memory, for the reason per_thread_runs.wgsl gives.
//
// The output takes aligned quads (`load_<role>_quad`, `store_<role>_quad`). A group's runs in
// an outer row are contiguous and fill whole quads, so every quad is one thread's: the vec4
// programs store it whole, the scalar programs one element at a time. (Were a thread to take a
// single channel of 7x7 runs, two threads would write one vec4, and WGSL lets a store to one
// component of a vector access the whole vector; f32 only: a half type's neighbours share a
// word.) A quad where one run ends and the next begins takes each lane's factors from its own
// channel (`select_factors`).
// Its arithmetic is the elementwise kernels', lane for lane (`normalized4`, `epilogue4`,
// `input_gradient_value4`), on the factors the finalize's hook computes from the same total; the
// scalar and the vec4 programs give the same bits (tests/views.rs).

// Each thread's channel group: its channels' reductions, then the output of their runs.
fn fused_groups(thread: u32, threads: u32) {
    for (var group = thread; group < p.items; group += threads) {
        let c_first = group * p.band;
        var factors: array<OutputFactors, FUSED_GROUP_MAX>;
        for (var k = 0u; k < p.band; k += 1u) {
            let c_rel = c_first + k;
            let total = run_chunk(c_rel, 0u, p.o_count * p.inner, run_context(c_rel));
            finalize_channel(p.c0 + c_rel, total);
            factors[k] = output_factors(p.c0 + c_rel, total);
        }
        output_runs(c_first, &factors);
    }
}

// Hands every quad of the runs of the channels c_first to c_first + p.band - 1 to the program's
// `output_quad`, with each lane's channel's factors. The quads that lie in one run take its
// channel's factors alone, in a loop as simple as a single channel's; a quad where a run ends and
// the next begins (runs of eight values or more: one such end at most) takes each lane's.
fn output_runs(c_first: u32, factors: ptr<function, array<OutputFactors, FUSED_GROUP_MAX>>) {
    for (var o = 0u; o < p.o_count; o += 1u) {
        let row_start = (o * p.channels + c_first) * p.inner;
        for (var k = 0u; k < p.band; k += 1u) {
            let lo = row_start + k * p.inner;
            let hi = lo + p.inner;
            let f = (*factors)[k];
            // A quad holding this run's start and the previous run's end was written with it.
            for (var q = (lo + 3u) / 4u; 4u * q + 4u <= hi; q += 1u) {
                output_quad(q, f);
            }
            // The group's last run ends on a quad's end, so k + 1 is one of its channels here.
            if (hi % 4u != 0u) {
                let q = hi / 4u;
                let next_run = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u) >= vec4<u32>(hi);
                output_quad(q, select_factors(f, (*factors)[k + 1u], next_run));
            }
        }
    }
}
