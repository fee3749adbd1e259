//! The errors of a synchronized call: this rank's own refusal, another rank's, ranks that
//! disagree on the layer, too few values over all ranks, and a transport that failed or lost a
//! rank. Every rank of a group returns an error for the same call, never some ranks a result.

use crate::error::BatchNormError;

/// A field of the header every rank sends before a synchronized call (`protocol::Header`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderField {
    /// The wire format's version.
    Protocol,
    /// Which half of a training step the rank is in (forward statistics or backward sums).
    Operation,
    /// The layer's channel count.
    Channels,
    /// The element type of the rank's tensors.
    DType,
    /// The layer's eps.
    Eps,
    /// The layer's momentum (`None`, a value, or no running statistics).
    Momentum,
}

impl std::fmt::Display for HeaderField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeaderField::Protocol => "protocol version",
            HeaderField::Operation => "operation",
            HeaderField::Channels => "channels",
            HeaderField::DType => "dtype",
            HeaderField::Eps => "eps",
            HeaderField::Momentum => "momentum",
        })
    }
}

/// Everything that can go wrong in a synchronized call. When one rank returns an error, every
/// rank of the group returns one for the same call, and no layer changed its state.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// This rank's own call was refused (bad input, or its GPU failed); the other ranks return
    /// [`SyncError::PeerRefused`].
    #[error("this rank refused the synchronized call: {0}")]
    Local(#[from] BatchNormError),

    /// Another rank refused the call (its input was bad or its GPU failed), so every rank
    /// refuses it; that rank's own error says why.
    #[error(
        "rank(s) {ranks:?} refused the synchronized call ({reason}), so every rank refuses it; \
         see the error on {}",
        if ranks.len() == 1 { "that rank" } else { "those ranks" }
    )]
    PeerRefused {
        /// The ranks that refused.
        ranks: Vec<usize>,
        /// What the first of them reported: "its arguments" or "its GPU".
        reason: &'static str,
    },

    /// The ranks disagree on the layer or on the call: build every rank's layer with the same
    /// channels, eps and momentum, give every rank the same dtype, and make the same calls in
    /// the same order on every rank.
    #[error(
        "the ranks disagree on {field}: {} (rank by rank); every rank refuses the call. Build \
         each rank's layer alike and call it in the same order on every rank",
        values.join(", ")
    )]
    Disagreement {
        /// What differs (the first field that does, in header order).
        field: HeaderField,
        /// Each rank's value, in rank order.
        values: Vec<String>,
    },

    /// Training needs more than one value per channel over all ranks together.
    #[error(
        "Expected more than 1 value per channel when training, got {} over all ranks (per \
         rank: {counts:?}); every rank refuses the call",
        counts.iter().sum::<u64>()
    )]
    TooFewValues {
        /// Values per channel on each rank, in rank order.
        counts: Vec<u64>,
    },

    /// A rank left the group (its endpoint was dropped, or its thread panicked) before or
    /// during the exchange; the group cannot be used again.
    #[error("rank {rank} left the group; make a new group")]
    PeerGone {
        /// The rank that left.
        rank: usize,
    },

    /// The transport failed, or the ranks sent messages of different lengths (a bug of the
    /// protocol or of an `Exchange` implementation).
    #[error("the exchange failed: {0}")]
    Transport(String),
}
