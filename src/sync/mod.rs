//! Synchronized batch norm (`torch.nn.SyncBatchNorm`): a batch split over several GPUs, in one
//! process or in several on several hosts, normalized with the statistics of the whole batch.
//!
//! A training forward on each rank computes its shard's per-channel (count, mean, M2) on its
//! GPU; every rank gathers every rank's (an all-gather of 2C + 1 numbers per rank, after a
//! fixed-size header that lets the ranks check that they agree on the layer and the call) and
//! merges them on the host with Chan's formula in rank order, in f64 rounded once, so every
//! rank gets bitwise the same mean and invstd whatever its adapter and transport; each rank
//! then normalizes its own shard and updates its running stats with the total count. The
//! backward gathers every rank's (sum dy x_hat, sum dy) and adds them in rank order the same
//! way, then each rank computes its dx; dgamma and dbeta stay each rank's own, as in PyTorch.
//!
//! Shards may be stored as f32, f16 or bf16, the same type on every rank (the header carries
//! it). Synchronized calls take no epilogue: a ReLU or residual add that follows runs as its
//! own operation.
//!
//! Transports implement [`Exchange`]: [`InProcessExchange`] for several `GpuContext`s in one
//! process (a thread each), and `MpiExchange` over MPI with the `mpi` feature.

mod error;
mod exchange;
mod layer;
mod merge;
#[cfg(feature = "mpi")]
mod mpi;
pub mod protocol;

pub use error::{HeaderField, SyncError};
pub use exchange::{in_process_group, Exchange, InProcessExchange};
pub use layer::{SyncBatchNorm, SyncForwardOutput, SyncSavedStats};
#[cfg(feature = "mpi")]
pub use mpi::MpiExchange;
