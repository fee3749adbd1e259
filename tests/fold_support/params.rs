//! A host-side batch norm for the fold tests that need no GPU run.

use wgpu_batchnorm::fold::{BatchNormParameters, RunningStatistics};

/// A host-side batch norm of `channels` channels with running statistics.
pub fn host_params(channels: usize) -> BatchNormParameters {
    BatchNormParameters {
        channels,
        gamma: Some(vec![1.5; channels]),
        beta: Some(vec![0.5; channels]),
        running: Some(RunningStatistics {
            mean: vec![0.25; channels],
            var: vec![2.0; channels],
        }),
        eps: 1e-5,
    }
}
