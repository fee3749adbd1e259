// The normalize kernel for half types, one 32-bit word (two elements) per step, for windows
// whose rows do not split into whole vec4s: each thread owns whole words, so no two threads
// write halves of one word. The two elements of a word may lie in different channels (an odd
// spatial size channels-first, consecutive channels channels-last), so each finds its own. A
// window with an odd element count ends in half a word: its other half is not the tensor's and
// is kept.

fn word_element(e: u32, total: u32) -> ChannelScale {
    if (e < total) {
        return channel_scale(cursor_at(e).c);
    }
    return ChannelScale(0.0, 0.0, 0.0);
}

@compute @workgroup_size(WORKGROUP)
fn normalize_words(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let threads = nwg.x * WORKGROUP;
    save_running_statistics(gid.x, threads);
    let total = p.o_count * p.c_count * p.inner;
    for (var q = gid.x; 2u * q < total; q += threads) {
        let first = cursor_at(2u * q);
        // Windows and rows of a half tensor start on whole words, so the word of element 2q is
        // the one its index in the window lands in.
        let word = first.index / 2u;
        let a = channel_scale(first.c);
        let b = word_element(2u * q + 1u, total);
        let x = load_x(word);
        let pre = vec2<f32>(
            normalized(x.x, a.mean, a.scale, a.shift),
            normalized(x.y, b.mean, b.scale, b.shift),
        );
        let y = epilogue2(pre, shortcut(word));
        if (2u * q + 1u < total) {
            store_y(word, y);
        } else {
            store_y_low(word, y.x);
        }
    }
}
