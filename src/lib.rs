#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod batch_norm;
pub mod checkpoint;
pub mod dtype;
mod encode;
pub mod epilogue;
pub mod error;
pub mod fold;
pub mod functional;
pub mod gpu;
pub mod layout;
#[doc(hidden)]
pub mod plan;
pub mod reference;
#[doc(hidden)]
pub mod shader;
#[doc(hidden)]
pub mod steps;
pub mod sync;
pub mod tensor;
mod workspace;

pub use batch_norm::{BatchNorm, BatchNormConfig, ForwardOutput};
pub use checkpoint::{save_state, save_state_file};
pub use dtype::{DType, Element};
pub use encode::{DispatchInfo, DispatchTimestamps, PassTimestamps};
pub use epilogue::{Epilogue, EpilogueGrad, EpilogueKind};
pub use error::{BatchNormError, Result};
pub use functional::{ForwardArgs, Gradients, SavedStats, StatsSource};
pub use gpu::{AdapterOptions, AdapterSummary, GpuContext};
pub use layout::{ChannelView, Layout};
pub use steps::DispatchPart;
pub use tensor::{ChannelPair, Tensor};
