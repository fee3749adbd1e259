// Index helpers every program shares: the walks of a channel's values that reductions take,
// and the cursor of the elementwise loop. (The generated prelude comes first: constants, the
// uniform block `p`, bindings, and the element type's load and store functions.)
//
// A tensor is read as [outer][channels][inner]. A dispatch covers one window of it: outer rows
// [o0, o0 + o_count) and channels [c0, c0 + c_count). Indices here are relative to the window's
// element (o0, c0, 0); each tensor's load and store functions (the prelude) add where that
// element sits in the tensor's binding. Windows exist so that tensors larger than one storage
// binding can be processed; a small tensor is one window.

// Walks the values of one window channel that a thread reads in a reduction: the m-th value
// (m < o_count * inner), then every `step`-th one (WORKGROUP when a workgroup shares a chunk, 1
// when one thread reads a chunk alone). One division to start, none per step: integer division
// is dear on GPUs and dearer on CPU adapters.
struct ValueWalk {
    index: u32,
    i: u32,
    step_i: u32,
    step_index: u32,
}

fn walk_values(c_rel: u32, m: u32, step: u32) -> ValueWalk {
    let o = m / p.inner;
    let i = m - o * p.inner;
    let step_o = step / p.inner;
    let row = p.channels * p.inner;
    return ValueWalk(
        o * row + c_rel * p.inner + i,
        i,
        step - step_o * p.inner,
        step_o * row + (step - step_o * p.inner),
    );
}

fn walk_next(walk: ValueWalk) -> ValueWalk {
    var next = walk;
    next.i += walk.step_i;
    next.index += walk.step_index;
    if (next.i >= p.inner) {
        // Carry into the next outer row: skip the other channels' runs.
        next.i -= p.inner;
        next.index += (p.channels - 1u) * p.inner;
    }
    return next;
}

// Reductions load eight values per thread before they use any: loads that do not wait on each
// other are in flight together, which hides memory latency (one at a time, an H200's reductions
// reached about 40% of its bandwidth). Plain variables, not arrays: an array indexed in a loop
// may be put in memory instead of registers.
struct Eight {
    lo: vec4<u32>,
    hi: vec4<u32>,
}

// The next eight indices of a walk, which moves past them.
fn walk_eight(walk: ptr<function, ValueWalk>) -> Eight {
    var indices: Eight;
    indices.lo.x = (*walk).index;
    *walk = walk_next(*walk);
    indices.lo.y = (*walk).index;
    *walk = walk_next(*walk);
    indices.lo.z = (*walk).index;
    *walk = walk_next(*walk);
    indices.lo.w = (*walk).index;
    *walk = walk_next(*walk);
    indices.hi.x = (*walk).index;
    *walk = walk_next(*walk);
    indices.hi.y = (*walk).index;
    *walk = walk_next(*walk);
    indices.hi.z = (*walk).index;
    *walk = walk_next(*walk);
    indices.hi.w = (*walk).index;
    *walk = walk_next(*walk);
    return indices;
}

// Eight indices `step` apart from `first` (a strided reduction's rows).
fn stride_eight(first: u32, step: u32) -> Eight {
    let k = vec4<u32>(0u, 1u, 2u, 3u);
    return Eight(first + k * step, first + (k + 4u) * step);
}

// Where a reduction's partial for window channel c_rel, chunk `chunk` goes.
fn partial_slot(c_rel: u32, chunk: u32) -> u32 {
    return (p.c0 + c_rel) * p.chunks_total + p.chunk_base + chunk;
}

// Elementwise kernels run a grid-stride loop over the window's elements. When the stride is a
// multiple of the window's row (the host picks such workgroup counts), every element a thread
// visits has the same channel: the thread finds it once, loads its parameters once, and then
// only adds the stride. Otherwise each element finds its channel.
struct ElementCursor {
    // Index in the window.
    index: u32,
    // Absolute channel.
    c: u32,
    // Position in the channel's run of `inner` values.
    i: u32,
}

fn cursor_at(e: u32) -> ElementCursor {
    let row = p.c_count * p.inner;
    let o = e / row;
    let within_row = e - o * row;
    let c_rel = within_row / p.inner;
    return ElementCursor(
        o * p.channels * p.inner + within_row,
        p.c0 + c_rel,
        within_row - c_rel * p.inner,
    );
}

// The channels of the four lanes of a vec4 that starts at `cursor`: four consecutive channels
// channels-last (inner == 1); channels-first, the cursor's channel in every lane, or where the
// spatial size is not a multiple of 4 (7x7), the next channel in the lanes past the run's end.
// Rows split into whole vec4s (the plan's rule), so a vec4 never leaves its row.
fn channel_lanes(cursor: ElementCursor) -> vec4<u32> {
    return vec4<u32>(cursor.c) + (vec4<u32>(cursor.i) + vec4<u32>(0u, 1u, 2u, 3u)) / p.inner;
}

fn stride_keeps_channel(stride: u32) -> bool {
    return stride % (p.c_count * p.inner) == 0u;
}
