//! A plain f64 convolution for the fold tests: any number of spatial dimensions (none is a
//! linear layer), groups, stride, zero/reflect/replicate/circular padding, and the transposed
//! convolution (PyTorch's `ConvTranspose`: `padding` crops, `output_padding` extends). Loops
//! over every output and tap, written to be checked by eye rather than to be fast.

use ndarray::{ArrayD, Dimension, IxDyn};

/// How a convolution reads positions outside its input (PyTorch's `padding_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    Zeros,
    Reflect,
    Replicate,
    Circular,
}

/// Everything but the weight and the bias, one entry per spatial dimension.
#[derive(Clone, Debug)]
pub struct ConvSpec {
    pub stride: Vec<usize>,
    pub padding: Vec<usize>,
    pub mode: PadMode,
    pub groups: usize,
    pub transposed: bool,
    pub output_padding: Vec<usize>,
}

/// Where input position `pos` (which may lie in the padding) reads, or `None` for a zero.
fn source(pos: isize, len: usize, mode: PadMode) -> Option<usize> {
    let last = len as isize - 1;
    let index = match mode {
        _ if (0..=last).contains(&pos) => pos,
        PadMode::Zeros => return None,
        PadMode::Reflect if pos < 0 => -pos,
        PadMode::Reflect => 2 * last - pos,
        PadMode::Replicate => pos.clamp(0, last),
        PadMode::Circular => pos.rem_euclid(len as isize),
    };
    assert!((0..=last).contains(&index), "padding wider than the input");
    Some(index as usize)
}

/// `x` `[N, C_in, spatial...]` through the layer: weight `[C_out, C_in / groups, k...]`, or
/// `[C_in, C_out / groups, k...]` when transposed.
pub fn conv(
    x: &ArrayD<f64>,
    weight: &ArrayD<f64>,
    bias: Option<&[f64]>,
    spec: &ConvSpec,
) -> ArrayD<f64> {
    let (batch, in_channels) = (x.shape()[0], x.shape()[1]);
    let spatial_in = &x.shape()[2..];
    let kernel = &weight.shape()[2..];
    let dims = spatial_in.len();
    assert_eq!(
        kernel.len(),
        dims,
        "the weight's rank must match the input's"
    );
    let groups = spec.groups;
    let out_channels = if spec.transposed {
        weight.shape()[1] * groups
    } else {
        weight.shape()[0]
    };
    let spatial_out: Vec<usize> = (0..dims)
        .map(|d| {
            let (len, k, s, p) = (spatial_in[d], kernel[d], spec.stride[d], spec.padding[d]);
            if spec.transposed {
                (len - 1) * s + k + spec.output_padding[d] - 2 * p
            } else {
                (len + 2 * p - k) / s + 1
            }
        })
        .collect();
    let mut out_shape = vec![batch, out_channels];
    out_shape.extend(&spatial_out);
    let mut out = ArrayD::<f64>::zeros(IxDyn(&out_shape));
    let in_per_group = in_channels / groups;
    let out_per_group = out_channels / groups;
    let taps: Vec<Vec<usize>> = ndarray::indices(IxDyn(kernel))
        .into_iter()
        .map(|k| k.slice().to_vec())
        .collect();
    if spec.transposed {
        // Every input position scatters each tap to output i * stride + k - padding.
        for n in 0..batch {
            for ci in 0..in_channels {
                let group = ci / in_per_group;
                for i in ndarray::indices(IxDyn(spatial_in)) {
                    let xv = x[[&[n, ci][..], i.slice()].concat().as_slice()];
                    for k in &taps {
                        let o: Option<Vec<usize>> = (0..dims)
                            .map(|d| {
                                let pos = (i[d] * spec.stride[d] + k[d]) as isize
                                    - spec.padding[d] as isize;
                                (0..spatial_out[d] as isize)
                                    .contains(&pos)
                                    .then_some(pos as usize)
                            })
                            .collect();
                        let Some(o) = o else { continue };
                        for j in 0..out_per_group {
                            let co = group * out_per_group + j;
                            let w = weight[[&[ci, j][..], k].concat().as_slice()];
                            out[[&[n, co][..], &o].concat().as_slice()] += w * xv;
                        }
                    }
                }
            }
        }
    } else {
        // Every output gathers each tap from input o * stride + k - padding.
        for n in 0..batch {
            for co in 0..out_channels {
                let group = co / out_per_group;
                for o in ndarray::indices(IxDyn(&spatial_out)) {
                    let mut sum = 0.0;
                    for k in &taps {
                        let i: Option<Vec<usize>> = (0..dims)
                            .map(|d| {
                                let pos = (o[d] * spec.stride[d] + k[d]) as isize
                                    - spec.padding[d] as isize;
                                source(pos, spatial_in[d], spec.mode)
                            })
                            .collect();
                        let Some(i) = i else { continue };
                        for j in 0..in_per_group {
                            let ci = group * in_per_group + j;
                            let w = weight[[&[co, j][..], k].concat().as_slice()];
                            sum += w * x[[&[n, ci][..], &i].concat().as_slice()];
                        }
                    }
                    out[[&[n, co][..], o.slice()].concat().as_slice()] = sum;
                }
            }
        }
    }
    if let Some(bias) = bias {
        for (index, v) in out.indexed_iter_mut() {
            *v += bias[index[1]];
        }
    }
    out
}
