//! The layer a batch norm folds into: [`Layer`] (weight, optional bias and [`LayerKind`]), and
//! the geometry that maps each weight element to its input and output channel.

use ndarray::{Array1, ArrayD};

use super::FoldError;

/// How a convolution that follows a batch norm fills its border, as PyTorch's `padding_mode`
/// together with whether `padding` is above 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// No padding (`padding = 0`): every output reads only input values.
    None,
    /// `padding_mode = "zeros"` with `padding > 0` on some side.
    Zeros,
    /// `padding_mode = "reflect"`.
    Reflect,
    /// `padding_mode = "replicate"`.
    Replicate,
    /// `padding_mode = "circular"`.
    Circular,
}

/// What a weight is, and so how its axes map to channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// `y = x W^T + b`, weight `[out, in]` (PyTorch's `nn.Linear`).
    Linear,
    /// `nn.Conv1d/2d/3d`: weight `[out, in / groups, k...]`.
    Convolution {
        /// Channel groups; both channel counts are multiples of it.
        groups: usize,
        /// How the input's border is padded (only a fold into this layer reads it).
        padding: Padding,
    },
    /// `nn.ConvTranspose1d/2d/3d`: weight `[in, out / groups, k...]`, so output channel
    /// `g * (out / groups) + j` of group `g` is on axis 1 at `j`.
    TransposedConvolution {
        /// Channel groups.
        groups: usize,
    },
}

/// A linear or convolution layer as PyTorch stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// The weight, laid out as [`LayerKind`] says.
    pub weight: ArrayD<f32>,
    /// One value per output channel; `None` means zeros (`bias = False`).
    pub bias: Option<Array1<f32>>,
    /// Linear, convolution or transposed convolution.
    pub kind: LayerKind,
}

impl Layer {
    /// A linear layer, weight `[out, in]`.
    pub fn linear(weight: ArrayD<f32>, bias: Option<Array1<f32>>) -> Self {
        Layer {
            weight,
            bias,
            kind: LayerKind::Linear,
        }
    }

    /// A convolution of any rank, weight `[out, in / groups, k...]`.
    pub fn convolution(
        weight: ArrayD<f32>,
        bias: Option<Array1<f32>>,
        groups: usize,
        padding: Padding,
    ) -> Self {
        Layer {
            weight,
            bias,
            kind: LayerKind::Convolution { groups, padding },
        }
    }

    /// A transposed convolution of any rank, weight `[in, out / groups, k...]`.
    pub fn transposed_convolution(
        weight: ArrayD<f32>,
        bias: Option<Array1<f32>>,
        groups: usize,
    ) -> Self {
        Layer {
            weight,
            bias,
            kind: LayerKind::TransposedConvolution { groups },
        }
    }

    /// Output channels, once the layer is consistent.
    pub fn out_channels(&self) -> Result<usize, FoldError> {
        Ok(self.geometry()?.out_channels)
    }

    /// Input channels, once the layer is consistent.
    pub fn in_channels(&self) -> Result<usize, FoldError> {
        Ok(self.geometry()?.in_channels)
    }

    /// Checks the weight's rank, the groups and the bias, and reads the channel counts.
    pub(super) fn geometry(&self) -> Result<Geometry, FoldError> {
        let shape = self.weight.shape();
        let rank_error = |kind, expected| FoldError::WeightRank {
            kind,
            expected,
            shape: shape.to_vec(),
        };
        let (groups, transposed) = match self.kind {
            LayerKind::Linear if shape.len() != 2 => {
                return Err(rank_error("linear", "[out, in]"));
            }
            LayerKind::Linear => (1, false),
            LayerKind::Convolution { .. } | LayerKind::TransposedConvolution { .. }
                if shape.len() < 3 =>
            {
                return Err(rank_error(
                    "convolution",
                    "of rank 3 or more ([out, in / groups, k...], or [in, out / groups, k...] \
                     transposed)",
                ));
            }
            LayerKind::Convolution { groups, .. } => (groups, false),
            LayerKind::TransposedConvolution { groups } => (groups, true),
        };
        if groups == 0 {
            return Err(FoldError::ZeroGroups);
        }
        if !shape[0].is_multiple_of(groups) {
            return Err(FoldError::GroupsDoNotDivide {
                what: if transposed { "input" } else { "output" },
                channels: shape[0],
                groups,
                shape: shape.to_vec(),
            });
        }
        let grouped = shape[1]
            .checked_mul(groups)
            .ok_or_else(|| FoldError::TooManyChannels {
                groups,
                shape: shape.to_vec(),
            })?;
        let (out_channels, in_channels) = if transposed {
            (grouped, shape[0])
        } else {
            (shape[0], grouped)
        };
        if let Some(bias) = &self.bias {
            if bias.len() != out_channels {
                return Err(FoldError::BiasLength {
                    expected: out_channels,
                    actual: bias.len(),
                });
            }
        }
        Ok(Geometry {
            axis0: shape[0],
            axis1: shape[1],
            taps: shape[2..].iter().product(),
            groups,
            transposed,
            out_channels,
            in_channels,
        })
    }
}

/// A checked layer's channel bookkeeping: the weight read as `[axis0][axis1][taps]`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    axis0: usize,
    axis1: usize,
    taps: usize,
    groups: usize,
    transposed: bool,
    pub(super) out_channels: usize,
    pub(super) in_channels: usize,
}

impl Geometry {
    /// `(output channel, input channel)` of every weight element, in standard-layout order.
    pub(super) fn channels(self) -> impl Iterator<Item = (usize, usize)> {
        let per_group_axis0 = self.axis0 / self.groups;
        (0..self.axis0).flat_map(move |a| {
            let group = a / per_group_axis0;
            (0..self.axis1).flat_map(move |b| {
                let grouped = group * self.axis1 + b;
                let pair = if self.transposed {
                    (grouped, a)
                } else {
                    (a, grouped)
                };
                std::iter::repeat_n(pair, self.taps)
            })
        })
    }
}
