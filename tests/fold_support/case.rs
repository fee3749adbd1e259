//! The random layers of the fold tests: a linear layer or a convolution (1-D or 2-D, plain or
//! transposed, grouped), its f32 weight and bias, and the f64 convolution that runs it.

use ndarray::{Array1, ArrayD, IxDyn};
use proptest::prelude::*;
use wgpu_batchnorm::fold::{Layer, Padding};

use super::common::normal_data;
use super::conv::{conv, ConvSpec, PadMode};

/// Which layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Linear,
    Convolution { dims: usize },
    Transposed { dims: usize },
}

/// One random layer and the input shape it runs on.
#[derive(Clone, Debug)]
pub struct Case {
    pub kind: Kind,
    pub groups: usize,
    pub in_per_group: usize,
    pub out_per_group: usize,
    pub batch: usize,
    pub input: Vec<usize>,
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    /// Per spatial dimension; `mode` says what the padding holds.
    pub padding: Vec<usize>,
    pub mode: PadMode,
    pub bias: bool,
    pub seed: u64,
}

/// Groups 1, 2, or one per input channel (depthwise, 2 to 4 channels).
fn groups() -> impl Strategy<Value = (usize, usize)> {
    prop_oneof![
        (1usize..=3).prop_map(|per_group| (1, per_group)),
        (1usize..=3).prop_map(|per_group| (2, per_group)),
        (2usize..=4).prop_map(|channels| (channels, 1)),
    ]
}

/// Layers of `kinds`, with padding of `modes` (an amount of 1 where a mode pads at all, 0 or 1
/// with zeros).
pub fn cases(kinds: Vec<Kind>, modes: Vec<PadMode>) -> impl Strategy<Value = Case> {
    (
        prop::sample::select(kinds),
        prop::sample::select(modes),
        groups(),
        1usize..=3,
        2usize..=3,
        (
            prop::collection::vec(4usize..=6, 2),
            prop::collection::vec(1usize..=3, 2),
            prop::collection::vec(1usize..=2, 2),
            prop::collection::vec(0usize..=1, 2),
        ),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(kind, mode, (groups, in_per_group), out_per_group, batch, geometry, bias, seed)| {
                let (input, kernel, stride, zero_padding) = geometry;
                let dims = match kind {
                    Kind::Linear => 0,
                    Kind::Convolution { dims } | Kind::Transposed { dims } => dims,
                };
                let linear = kind == Kind::Linear;
                let padding = match mode {
                    PadMode::Zeros => zero_padding,
                    _ => vec![1; 2],
                };
                Case {
                    kind,
                    groups: if linear { 1 } else { groups },
                    in_per_group,
                    out_per_group,
                    batch,
                    input: input[..dims].to_vec(),
                    kernel: kernel[..dims].to_vec(),
                    stride: stride[..dims].to_vec(),
                    padding: padding[..dims].to_vec(),
                    mode,
                    bias,
                    seed,
                }
            },
        )
}

impl Case {
    pub fn in_channels(&self) -> usize {
        self.groups * self.in_per_group
    }

    pub fn out_channels(&self) -> usize {
        self.groups * self.out_per_group
    }

    /// `[N, C_in, spatial...]`.
    pub fn input_shape(&self) -> Vec<usize> {
        [vec![self.batch, self.in_channels()], self.input.clone()].concat()
    }

    /// The weight `[out, in / groups, k...]` (`[in, out / groups, k...]` transposed) and the
    /// bias, from the case's seed.
    pub fn weights(&self) -> (ArrayD<f32>, Option<Array1<f32>>) {
        let leading = match self.kind {
            Kind::Transposed { .. } => [self.in_channels(), self.out_per_group],
            _ => [self.out_channels(), self.in_per_group],
        };
        let shape = [&leading[..], &self.kernel].concat();
        let len = shape.iter().product();
        let weight =
            ArrayD::from_shape_vec(IxDyn(&shape), normal_data(len, self.seed ^ 0x11, 0.0, 0.5))
                .expect("shape");
        let bias = self
            .bias
            .then(|| Array1::from(normal_data(self.out_channels(), self.seed ^ 0x22, 0.0, 1.0)));
        (weight, bias)
    }

    /// The layer the fold functions take.
    pub fn layer(&self, weight: ArrayD<f32>, bias: Option<Array1<f32>>) -> Layer {
        match self.kind {
            Kind::Linear => Layer::linear(weight, bias),
            Kind::Convolution { .. } => {
                let padding = match self.mode {
                    _ if self.padding.iter().all(|&p| p == 0) => Padding::None,
                    PadMode::Zeros => Padding::Zeros,
                    PadMode::Reflect => Padding::Reflect,
                    PadMode::Replicate => Padding::Replicate,
                    PadMode::Circular => Padding::Circular,
                };
                Layer::convolution(weight, bias, self.groups, padding)
            }
            Kind::Transposed { .. } => Layer::transposed_convolution(weight, bias, self.groups),
        }
    }

    /// The f64 convolution of this case's geometry.
    pub fn spec(&self) -> ConvSpec {
        ConvSpec {
            stride: self.stride.clone(),
            padding: self.padding.clone(),
            mode: self.mode,
            groups: self.groups,
            transposed: matches!(self.kind, Kind::Transposed { .. }),
            output_padding: vec![0; self.input.len()],
        }
    }

    /// `x` through `layer` (the case's own or a folded one), in f64.
    pub fn run(&self, layer: &Layer, x: &ArrayD<f64>) -> ArrayD<f64> {
        let bias = layer.bias.as_ref().map(|b| b.mapv(f64::from).to_vec());
        conv(
            x,
            &layer.weight.mapv(f64::from),
            bias.as_deref(),
            &self.spec(),
        )
    }

    /// `x` through `|layer's weight|`, without bias: the sums of the magnitudes of each
    /// output's terms, out of which the rounding bounds are made.
    pub fn run_magnitudes(&self, layer: &Layer, x: &ArrayD<f64>) -> ArrayD<f64> {
        let weight = layer.weight.mapv(|w| f64::from(w).abs());
        conv(&x.mapv(f64::abs), &weight, None, &self.spec())
    }
}
