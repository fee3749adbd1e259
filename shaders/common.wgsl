// Shared by every batch-norm shader (prepended by the host before compilation).
//
// A tensor is read as [outer][channels][inner]. A dispatch covers one window of it: outer rows
// [o0, o0 + o_count) and channels [c0, c0 + c_count), bound so that element (o0, c0, 0) sits at
// index `elem_shift` of the binding. Windows exist so that tensors larger than one storage
// binding can be processed; a small tensor is one window.

struct Params {
    elem_shift: u32,
    o_count: u32,
    c0: u32,
    c_count: u32,
    channels: u32,
    inner: u32,
    // Values per chunk (contiguous kernels) or rows per chunk (strided kernels).
    chunk_len: u32,
    // Chunks per channel in this window.
    chunks: u32,
    // Partial slot of this window's first chunk, and partial slots per channel in all.
    chunk_base: u32,
    chunks_total: u32,
    // Work items of the dispatch: the loop bound for workgroups.
    items: u32,
    // M, the number of values per channel, as a float.
    values_per_channel: f32,
    eps: f32,
    momentum: f32,
    // M / (M - 1): turns the biased variance into the unbiased one for the running stats.
    var_correction: f32,
    _pad: u32,
}

const WORKGROUP: u32 = 256u;
// Strided kernels (channels-last): 32 consecutive channels per workgroup, 8 row lanes.
const BAND: u32 = 32u;
const ROW_LANES: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;

// Binding index of the m-th value (m < o_count * inner) of window channel c_rel.
fn value_index(c_rel: u32, m: u32) -> u32 {
    let o = m / p.inner;
    let i = m - o * p.inner;
    return p.elem_shift + o * p.channels * p.inner + c_rel * p.inner + i;
}
