//! Memory layouts of a batch-norm input and the one view every kernel and the CPU reference use.
//!
//! Both layouts are read as `[outer][channels][inner]`: channels-first `[N, C, d1, ...]` has
//! `outer = N` and `inner = d1 * ...`; channels-last `[N, d1, ..., C]` has `outer = N * d1 * ...`
//! and `inner = 1`. Element `(o, c, i)` lies at `(o * channels + c) * inner + i`.

/// Why a shape cannot be read as `[outer][channels][inner]`. Converts into the matching
/// [`crate::BatchNormError`] variants, which display the same message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// Batch norm needs `[N, C, ...]`: at least two dimensions.
    #[error("shape {shape:?} has rank {}; batch norm needs rank 2 or more ([N, C, ...])", shape.len())]
    RankTooLow {
        /// The shape given.
        shape: Vec<usize>,
    },
    /// The element count of a shape does not fit in memory addresses.
    #[error("shape {shape:?} has more elements than can be addressed")]
    TooManyElements {
        /// The shape given.
        shape: Vec<usize>,
    },
}

/// How the dimensions of a tensor are ordered in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `[N, C, d1, ...]`: `[N, C]`, `[N, C, L]`, NCHW, NCDHW (PyTorch's default).
    ChannelsFirst,
    /// `[N, d1, ..., C]`: NHWC, NDHWC.
    ChannelsLast,
}

/// A shape seen as `[outer][channels][inner]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelView {
    /// Product of the dimensions before the channel dimension (and, channels-last, the spatial ones).
    pub outer: usize,
    /// Number of channels C.
    pub channels: usize,
    /// Product of the dimensions after the channel dimension (1 for channels-last).
    pub inner: usize,
}

impl ChannelView {
    /// Reads `shape` (in memory order) as `[outer][channels][inner]`.
    ///
    /// Errors when the rank is below 2 or the element count overflows `usize`.
    pub fn new(shape: &[usize], layout: Layout) -> Result<Self, ShapeError> {
        if shape.len() < 2 {
            return Err(ShapeError::RankTooLow {
                shape: shape.to_vec(),
            });
        }
        let product = |dims: &[usize]| {
            dims.iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or(ShapeError::TooManyElements {
                    shape: shape.to_vec(),
                })
        };
        let view = match layout {
            Layout::ChannelsFirst => ChannelView {
                outer: shape[0],
                channels: shape[1],
                inner: product(&shape[2..])?,
            },
            Layout::ChannelsLast => ChannelView {
                outer: product(&shape[..shape.len() - 1])?,
                channels: shape[shape.len() - 1],
                inner: 1,
            },
        };
        view.len_checked().ok_or(ShapeError::TooManyElements {
            shape: shape.to_vec(),
        })?;
        Ok(view)
    }

    fn len_checked(&self) -> Option<usize> {
        self.outer
            .checked_mul(self.channels)?
            .checked_mul(self.inner)
    }

    /// Total number of elements.
    pub fn len(&self) -> usize {
        self.outer * self.channels * self.inner
    }

    /// True when the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of values per channel, M = outer * inner (PyTorch's N x spatial).
    pub fn values_per_channel(&self) -> usize {
        self.outer * self.inner
    }

    /// Flat index of element `(o, c, i)`.
    pub fn index(&self, o: usize, c: usize, i: usize) -> usize {
        (o * self.channels + c) * self.inner + i
    }

    /// Channel of the element at flat index `index`.
    pub fn channel_of(&self, index: usize) -> usize {
        (index / self.inner) % self.channels
    }
}

/// The channel count of `shape` in `layout`, if the rank is at least 2.
pub fn channel_count(shape: &[usize], layout: Layout) -> Option<usize> {
    if shape.len() < 2 {
        return None;
    }
    Some(match layout {
        Layout::ChannelsFirst => shape[1],
        Layout::ChannelsLast => shape[shape.len() - 1],
    })
}
