//! Fused epilogues: what follows the batch norm in the same kernels, as residual networks use
//! it. `Epilogue::Relu` computes y = relu(bn(x)) and `Epilogue::AddRelu(z)` computes
//! y = relu(bn(x) + z), PyTorch's `F.relu(F.batch_norm(x, ...) + z)` (running stats included)
//! with one pass over the data instead of two or three. The ReLU keeps NaN (a select, not
//! `max`).
//!
//! The backward takes the gradient through the epilogue first: dy is zeroed where the forward's
//! output y is <= 0 (the mask comes from the saved output, as PyTorch's `threshold_backward`
//! takes it from the ReLU's result, not from a recomputed pre-activation: the two can differ
//! where a positive pre-activation rounds to 0 in a half type, or where the forward and
//! backward kernels contract a multiply-add differently, and reading y costs one read per
//! element); then the batch norm's backward of that masked gradient. With `AddRelu` the masked
//! gradient is also the shortcut's, dz, written in the same pass as dx.

pub(crate) mod kind;

pub use kind::EpilogueKind;

use crate::tensor::Tensor;

/// What follows the batch norm in a forward call.
#[derive(Clone, Copy, Debug, Default)]
pub enum Epilogue<'a> {
    /// y = bn(x).
    #[default]
    None,
    /// y = relu(bn(x)).
    Relu,
    /// y = relu(bn(x) + z): the shortcut z, shaped and stored like x.
    AddRelu(&'a Tensor),
}

/// The epilogue's part of a backward call: what its gradient needs and writes.
#[derive(Clone, Copy, Debug, Default)]
pub enum EpilogueGrad<'a> {
    /// The forward had no epilogue.
    #[default]
    None,
    /// The forward was y = relu(bn(x)); `y` is its output (the ReLU's mask).
    Relu {
        /// The forward's output.
        y: &'a Tensor,
    },
    /// The forward was y = relu(bn(x) + z); `y` is its output, and `dz` receives the
    /// shortcut's gradient.
    AddRelu {
        /// The forward's output.
        y: &'a Tensor,
        /// Written: the gradient of z.
        dz: &'a Tensor,
    },
}

impl<'a> Epilogue<'a> {
    /// Its kind.
    pub fn kind(&self) -> EpilogueKind {
        match self {
            Epilogue::None => EpilogueKind::None,
            Epilogue::Relu => EpilogueKind::Relu,
            Epilogue::AddRelu(_) => EpilogueKind::AddRelu,
        }
    }

    /// The shortcut z, for `AddRelu`.
    pub fn shortcut(&self) -> Option<&'a Tensor> {
        match self {
            Epilogue::AddRelu(z) => Some(z),
            _ => None,
        }
    }
}

impl<'a> EpilogueGrad<'a> {
    /// The kind of forward it is the gradient of.
    pub fn kind(&self) -> EpilogueKind {
        match self {
            EpilogueGrad::None => EpilogueKind::None,
            EpilogueGrad::Relu { .. } => EpilogueKind::Relu,
            EpilogueGrad::AddRelu { .. } => EpilogueKind::AddRelu,
        }
    }

    /// The forward's output, which the ReLU's mask is read from.
    pub fn forward_output(&self) -> Option<&'a Tensor> {
        match self {
            EpilogueGrad::None => None,
            EpilogueGrad::Relu { y } | EpilogueGrad::AddRelu { y, .. } => Some(y),
        }
    }

    /// Where dz goes, for `AddRelu`.
    pub fn shortcut_grad(&self) -> Option<&'a Tensor> {
        match self {
            EpilogueGrad::AddRelu { dz, .. } => Some(dz),
            _ => None,
        }
    }
}
