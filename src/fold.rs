//! Folding a batch norm into the layer before it or after it, on the host: the folded layer
//! alone computes what the pair computed.
//!
//! A batch norm in inference is a per-channel map `x -> s x + t`, with
//! `s = gamma / sqrt(running_var + eps)` and `t = beta - running_mean s`; its affine part alone
//! is `x -> gamma x + beta`. Either map folds into a neighbouring linear or convolution layer:
//!
//! - Into the previous layer ([`fold_into_previous`], inference only): `W' = W s` along the
//!   output channels, `b' = (b - running_mean) s + beta`.
//! - Into the next layer: `W' = W s` along the input channels (per group), `b' = b + W t`, where
//!   for a convolution each kernel's weights are summed times `t`.
//!   [`fold_inference_into_next`] folds the whole inference batch norm;
//!   [`fold_affine_into_next`] folds only gamma and beta, leaving a batch norm without them
//!   (`affine = False`), which is exact in training too.
//!
//! A batch norm in training normalizes with each batch's own statistics, which change from
//! batch to batch: no weight can hold them, so the whole of it never folds; its gamma and beta
//! still move into the next layer.
//!
//! A fold into the next layer is exact when every output of that layer reads the batch norm's
//! output at every kernel tap: without padding, or with reflect, replicate or circular padding
//! (the padding repeats normalized values). Zero padding is refused ([`FoldError::ZeroPadding`]):
//! the padded zeros are not normalized, so outputs that read them would change; that includes
//! a 1-wide kernel, whose outputs over the padding would gain `W t`. A transposed convolution
//! is refused as a next layer for the same reason ([`FoldError::TransposedNext`]).
//!
//! Every product and sum is computed in f64 from the f32 inputs and rounded once to f32.
//! A 1-channel batch norm next to a linear layer is broadcast over all its features (a
//! `BatchNorm1d(1)` over `[N, 1, features]`).

mod error;
mod layer;
mod parameters;

pub use self::error::FoldError;
pub use self::layer::{Layer, LayerKind, Padding};
pub use self::parameters::{BatchNormParameters, RunningStatistics};

use ndarray::{Array1, ArrayD};

use self::layer::Geometry;
use self::parameters::ChannelMap;

/// Folds a batch norm in inference into the layer before it: the returned layer computes
/// `bn(layer(x))`. Needs the running statistics.
pub fn fold_into_previous(
    layer: &Layer,
    batch_norm: &BatchNormParameters,
) -> Result<Layer, FoldError> {
    let geometry = layer.geometry()?;
    check_channels(
        layer,
        "before it outputs",
        geometry.out_channels,
        batch_norm,
    )?;
    let map = batch_norm.inference_map(geometry.out_channels)?;
    let weight = scaled_weight(layer, geometry, |(out, _)| map.scale[out]);
    let bias = (0..geometry.out_channels)
        .map(|c| (map.scale[c] * bias_value(layer, c) + map.shift[c]) as f32)
        .collect();
    Ok(Layer {
        weight,
        bias: Some(bias),
        kind: layer.kind,
    })
}

/// Folds a batch norm in inference into the layer after it: the returned layer computes
/// `layer(bn(x))`. Needs the running statistics; refuses zero padding and transposed
/// convolutions (see the module docs).
pub fn fold_inference_into_next(
    batch_norm: &BatchNormParameters,
    layer: &Layer,
) -> Result<Layer, FoldError> {
    let geometry = checked_next(batch_norm, layer)?;
    fold_next(
        layer,
        geometry,
        &batch_norm.inference_map(geometry.in_channels)?,
    )
}

/// Folds a batch norm's gamma and beta into the layer after it: the returned layer after the
/// same batch norm without gamma and beta (`affine = False`, same statistics) computes what the
/// layer computed after the affine one, in training and in inference. Refuses zero padding and
/// transposed convolutions (see the module docs).
pub fn fold_affine_into_next(
    batch_norm: &BatchNormParameters,
    layer: &Layer,
) -> Result<Layer, FoldError> {
    let geometry = checked_next(batch_norm, layer)?;
    fold_next(
        layer,
        geometry,
        &batch_norm.affine_map(geometry.in_channels)?,
    )
}

fn checked_next(batch_norm: &BatchNormParameters, layer: &Layer) -> Result<Geometry, FoldError> {
    let geometry = layer.geometry()?;
    check_channels(layer, "after it takes", geometry.in_channels, batch_norm)?;
    match layer.kind {
        LayerKind::Convolution {
            padding: Padding::Zeros,
            ..
        } => Err(FoldError::ZeroPadding),
        LayerKind::TransposedConvolution { .. } => Err(FoldError::TransposedNext),
        _ => Ok(geometry),
    }
}

/// `W' = W scale[in]`, `b' = b + sum over each output's weights of W shift[in]`.
fn fold_next(layer: &Layer, geometry: Geometry, map: &ChannelMap) -> Result<Layer, FoldError> {
    let weight = scaled_weight(layer, geometry, |(_, input)| map.scale[input]);
    let mut bias: Vec<f64> = (0..geometry.out_channels)
        .map(|c| bias_value(layer, c))
        .collect();
    let original = layer.weight.as_standard_layout();
    for (&w, (out, input)) in original.iter().zip(geometry.channels()) {
        bias[out] += f64::from(w) * map.shift[input];
    }
    Ok(Layer {
        weight,
        bias: Some(bias.into_iter().map(|b| b as f32).collect::<Array1<f32>>()),
        kind: layer.kind,
    })
}

/// The weight with each element times `factor((output channel, input channel))`, in f64,
/// rounded once.
fn scaled_weight(
    layer: &Layer,
    geometry: Geometry,
    factor: impl Fn((usize, usize)) -> f64,
) -> ArrayD<f32> {
    let values = layer
        .weight
        .as_standard_layout()
        .iter()
        .zip(geometry.channels())
        .map(|(&w, channels)| (f64::from(w) * factor(channels)) as f32)
        .collect();
    ArrayD::from_shape_vec(layer.weight.raw_dim(), values)
        .expect("one value per element of the weight's own shape")
}

fn bias_value(layer: &Layer, channel: usize) -> f64 {
    layer
        .bias
        .as_ref()
        .map_or(0.0, |bias| f64::from(bias[channel]))
}

/// The batch norm's channels must be the layer's on that side, or 1 beside a linear layer.
fn check_channels(
    layer: &Layer,
    side: &'static str,
    layer_channels: usize,
    batch_norm: &BatchNormParameters,
) -> Result<(), FoldError> {
    let broadcast = batch_norm.channels == 1 && layer.kind == LayerKind::Linear;
    if batch_norm.channels == layer_channels || broadcast {
        Ok(())
    } else {
        Err(FoldError::ChannelMismatch {
            side,
            layer: layer_channels,
            batch_norm: batch_norm.channels,
        })
    }
}
