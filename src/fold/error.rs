//! [`FoldError`]: why a batch norm cannot be folded into a neighbouring layer.

use crate::error::BatchNormError;

/// A refused fold. Nothing is computed or changed when a fold is refused.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// The weight's rank does not fit the layer kind.
    #[error("a {kind} weight must be {expected}, but this one has shape {shape:?}")]
    WeightRank {
        /// Linear, convolution or transposed convolution.
        kind: &'static str,
        /// The shape it needs, in words.
        expected: &'static str,
        /// The shape it has.
        shape: Vec<usize>,
    },

    /// A convolution with no group.
    #[error("a convolution needs groups >= 1, got 0")]
    ZeroGroups,

    /// The channels on the weight's grouped axis are not a multiple of `groups`.
    #[error(
        "the weight's axis 0 has {channels} {what} channels, not a multiple of groups = {groups} \
         (a weight of shape {shape:?})"
    )]
    GroupsDoNotDivide {
        /// "output" (convolution) or "input" (transposed convolution).
        what: &'static str,
        /// Channels on axis 0.
        channels: usize,
        /// The groups given.
        groups: usize,
        /// The weight's shape.
        shape: Vec<usize>,
    },

    /// The weight's grouped axis times `groups` is more channels than a `usize` counts.
    #[error(
        "a weight of shape {shape:?} with groups = {groups} has more than usize::MAX channels on \
         its grouped axis"
    )]
    TooManyChannels {
        /// The groups given.
        groups: usize,
        /// The weight's shape.
        shape: Vec<usize>,
    },

    /// The bias does not have one value per output channel.
    #[error("the bias has {actual} values but the layer has {expected} output channels")]
    BiasLength {
        /// Output channels of the layer.
        expected: usize,
        /// Values of the bias.
        actual: usize,
    },

    /// A per-channel vector of the batch norm does not have one value per channel.
    #[error(
        "the batch norm's {what} has {actual} values but the batch norm has {expected} channels"
    )]
    ParameterLength {
        /// gamma, beta, running_mean or running_var.
        what: &'static str,
        /// The batch norm's channels.
        expected: usize,
        /// Values given.
        actual: usize,
    },

    /// The batch norm and the layer disagree on the channels between them.
    #[error(
        "the batch norm has {batch_norm} channels but the layer {side} {layer} channels; they \
         must be equal (or the batch norm has 1 channel and the layer is linear)"
    )]
    ChannelMismatch {
        /// "before it outputs" or "after it takes".
        side: &'static str,
        /// Channels on the layer's side.
        layer: usize,
        /// Channels of the batch norm.
        batch_norm: usize,
    },

    /// Folding the normalization needs running statistics.
    #[error(
        "folding a whole batch norm needs its running statistics, and this one keeps none \
         (track_running_stats = false). A batch norm that normalizes with each batch's own \
         statistics (training mode) cannot be folded: they change from batch to batch. Only its \
         gamma and beta can move into the next layer (fold_affine_into_next)"
    )]
    MissingRunningStatistics,

    /// eps is not finite or is negative.
    #[error("the batch norm's eps must be finite and >= 0, got {0}")]
    InvalidEps(f64),

    /// running_var + eps is not positive, so the batch norm divides by zero or by a NaN.
    #[error(
        "channel {channel}: running_var + eps = {value}, but it must be positive and finite to \
         divide by its square root"
    )]
    NonPositiveVariance {
        /// The channel.
        channel: usize,
        /// running_var + eps.
        value: f64,
    },

    /// The next layer pads with zeros, which the batch norm never sees.
    #[error(
        "the next layer pads with zeros: the padded zeros are not normalized, so an output that \
         reads padding would lose beta's (and the running mean's) part of the bias, and no \
         per-channel weight and bias can reproduce it; fold only into a layer without padding \
         or with reflect, replicate or circular padding"
    )]
    ZeroPadding,

    /// The next layer is a transposed convolution.
    #[error(
        "the next layer is a transposed convolution: its border outputs (and, with a stride \
         above 1, all of them) receive only some of the kernel's taps, so beta's part differs \
         from position to position and no per-channel bias can carry it"
    )]
    TransposedNext,

    /// Downloading a batch norm's parameters from the GPU failed.
    #[error("could not read the batch norm from the GPU: {0}")]
    Gpu(#[from] BatchNormError),
}
