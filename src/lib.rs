#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod batch_norm;
pub mod error;
pub mod functional;
pub mod gpu;
pub mod kernels;
pub mod layout;
pub mod plan;
pub mod reference;
pub mod tensor;

pub use batch_norm::{BatchNorm, BatchNormConfig, ForwardOutput};
pub use error::{BatchNormError, Result};
pub use functional::{ForwardArgs, Gradients, SavedStats, StatsSource};
pub use gpu::{AdapterOptions, AdapterSummary, GpuContext};
pub use kernels::PassTimestamps;
pub use layout::{ChannelView, Layout};
pub use tensor::{ChannelPair, Tensor};
