// The ends of a reduction work item where a separate finalize dispatch merges the partials
// (reduction.wgsl): the workgroup has nothing left to do once its partial is written.
// `last_workgroup.wgsl` defines the same two functions where the partials dispatch merges.

fn channel_partial_written(c_rel: u32, lid: u32) {}

fn band_partial_written(band: u32, lid: u32) {}
