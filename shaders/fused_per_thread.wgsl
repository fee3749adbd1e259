// The fused training forward and backward of CPU adapters (channels-first windows whose runs
// split into whole quads, eight values or more, and whose channels are one chunk each: a
// per-thread plan's fused window). One thread per channel reduces it as
// `partials_per_thread_runs` reduces a chunk (`run_chunk`, per_thread_runs.wgsl), hands the total
// to the finalize's hook, and then writes the output of the same runs, which it has just read and
// so finds in its core's cache: one dispatch instead of three, no partials, and the channel's
// factors found once instead of per element. No barrier and no workgroup memory, for the reason
// per_thread_runs.wgsl gives.
//
// The output takes the reduction's aligned quads (`load_<role>_quad`, `store_<role>_quad`). Runs
// of whole quads make every quad one thread's: the vec4 programs store it whole, the scalar
// programs the lanes `keep` one element each. (Where a run ended inside a quad, two threads would
// write one vec4, and WGSL lets a store to one component of a vector access the whole vector;
// f32 only: a half type's neighbours share a word.)
// Its arithmetic is the elementwise kernels', lane for lane (`normalized4`, `epilogue4`,
// `input_gradient_value4`), on the factors the finalize's hook computes from the same total; the
// scalar and the vec4 programs give the same bits (tests/views.rs).

// Hands every aligned quad of window channel c_rel's runs, with the lanes that lie in the run,
// to the program's `output_quad`.
fn output_runs(c_rel: u32, factors: OutputFactors) {
    for (var o = 0u; o < p.o_count; o += 1u) {
        let lo = (o * p.channels + c_rel) * p.inner;
        let hi = lo + p.inner;
        for (var q = lo / 4u; 4u * q < hi; q += 1u) {
            output_quad(q, lanes_between(q, lo, hi), factors);
        }
    }
}
