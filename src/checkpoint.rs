//! A batch norm's state in safetensors files, under PyTorch's `state_dict` names:
//! `<prefix>.weight` and `.bias` (gamma and beta), `.running_mean`, `.running_var`, and
//! `.num_batches_tracked` (a 0-dimensional I64). Loading accepts F32, F16 and BF16 vectors
//! (converted to f32, which the kernels keep), and a missing `num_batches_tracked` (read as 0,
//! as PyTorch reads old checkpoints); saving writes F32 and I64. A whole model's file holds many
//! layers, each under its own prefix; keys of other prefixes are left alone.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::batch_norm::BatchNorm;
use crate::error::{BatchNormError, Result};

/// The state a layer keeps, as loaded and before anything is written to the GPU.
struct State {
    parameters: Option<(Vec<f32>, Vec<f32>)>,
    running: Option<(Vec<f32>, Vec<f32>)>,
    num_batches_tracked: u64,
}

fn error(what: String, problem: impl Into<String>) -> BatchNormError {
    BatchNormError::Checkpoint {
        what,
        problem: problem.into(),
    }
}

fn key_error(key: &str, problem: impl Into<String>) -> BatchNormError {
    error(format!("key '{key}'"), problem)
}

/// `<prefix>.<name>`, or `<name>` without a prefix.
fn state_key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The values of a per-channel vector, converted to f32.
fn per_channel(file: &SafeTensors<'_>, key: &str, channels: usize) -> Result<Vec<f32>> {
    let tensor = file
        .tensor(key)
        .map_err(|_| key_error(key, "missing from the file"))?;
    if tensor.shape() != [channels] {
        return Err(key_error(
            key,
            format!(
                "has shape {:?}, but the layer has {channels} channels (shape [{channels}])",
                tensor.shape()
            ),
        ));
    }
    let data = tensor.data();
    let values = match tensor.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(key_error(
                key,
                format!("is {other:?}; a batch norm's vectors load from F32, F16 or BF16"),
            ))
        }
    };
    Ok(values)
}

/// `num_batches_tracked`: a 0-dimensional (or one-value) I64; 0 when missing.
fn batch_count(file: &SafeTensors<'_>, key: &str) -> Result<u64> {
    let Ok(tensor) = file.tensor(key) else {
        return Ok(0);
    };
    if tensor.dtype() != Dtype::I64 || tensor.shape().iter().product::<usize>() != 1 {
        return Err(key_error(
            key,
            format!(
                "is {:?} of shape {:?}; num_batches_tracked is a single I64",
                tensor.dtype(),
                tensor.shape()
            ),
        ));
    }
    let Ok(bytes) = <[u8; 8]>::try_from(tensor.data()) else {
        return Err(key_error(key, "does not hold eight bytes"));
    };
    u64::try_from(i64::from_le_bytes(bytes))
        .map_err(|_| key_error(key, "is negative; a batch count cannot be"))
}

impl BatchNorm {
    /// Loads this layer's state from the bytes of a safetensors file, under `prefix` (e.g.
    /// `"layer1.0.bn1"`; `""` for keys without one). Every key the layer keeps must be there
    /// (but `num_batches_tracked`, read as 0 when missing), with the layer's channel count, and
    /// no key of a part the layer does not keep (gamma and beta without affine, running stats
    /// without tracking). Nothing is written unless everything checks out.
    pub fn load_state(&mut self, file: &[u8], prefix: &str) -> Result<()> {
        let file = SafeTensors::deserialize(file).map_err(|e| {
            error(
                "file".into(),
                format!("is not a readable safetensors file: {e}"),
            )
        })?;
        let key = |name: &str| state_key(prefix, name);
        let channels = self.channels();
        let config = self.config();
        let pair = |keep: bool, first: &str, second: &str, why: &str| -> Result<_> {
            if keep {
                Ok(Some((
                    per_channel(&file, &key(first), channels)?,
                    per_channel(&file, &key(second), channels)?,
                )))
            } else {
                for name in [first, second] {
                    if file.tensor(&key(name)).is_ok() {
                        return Err(key_error(&key(name), format!("is unexpected: {why}")));
                    }
                }
                Ok(None)
            }
        };
        let state = State {
            parameters: pair(
                config.affine,
                "weight",
                "bias",
                "this layer has no gamma and beta (affine = false)",
            )?,
            running: pair(
                config.track_running_stats,
                "running_mean",
                "running_var",
                "this layer keeps no running stats (track_running_stats = false)",
            )?,
            num_batches_tracked: if config.track_running_stats {
                batch_count(&file, &key("num_batches_tracked"))?
            } else {
                0
            },
        };
        if let Some((gamma, beta)) = &state.parameters {
            self.set_parameters(gamma, beta)?;
        }
        if let Some((mean, var)) = &state.running {
            self.set_running_statistics(mean, var)?;
        }
        self.set_num_batches_tracked(state.num_batches_tracked);
        Ok(())
    }

    /// Loads this layer's state from a safetensors file (see [`BatchNorm::load_state`]).
    pub fn load_state_file(&mut self, path: impl AsRef<Path>, prefix: &str) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| error(format!("file '{}'", path.display()), e.to_string()))?;
        self.load_state(&bytes, prefix)
    }
}

/// The bytes of a safetensors file with the state of every layer under its prefix: F32 vectors
/// and an I64 `num_batches_tracked`, for the parts each layer keeps (as PyTorch's
/// `state_dict`).
pub fn save_state(layers: &[(&str, &BatchNorm)]) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let f32_bytes = |values: &[f32]| values.iter().flat_map(|v| v.to_le_bytes()).collect();
    for &(prefix, layer) in layers {
        let key = |name: &str| state_key(prefix, name);
        let channels = vec![layer.channels()];
        let config = layer.config();
        // What the layer keeps comes from its config: a failed read (a lost device) is an
        // error, never a checkpoint without the part.
        if config.affine {
            let (gamma, beta) = layer.parameters()?;
            tensors.push((
                key("weight"),
                Dtype::F32,
                channels.clone(),
                f32_bytes(&gamma),
            ));
            tensors.push((key("bias"), Dtype::F32, channels.clone(), f32_bytes(&beta)));
        }
        if config.track_running_stats {
            let (mean, var) = layer.running_statistics()?;
            tensors.push((
                key("running_mean"),
                Dtype::F32,
                channels.clone(),
                f32_bytes(&mean),
            ));
            tensors.push((
                key("running_var"),
                Dtype::F32,
                channels.clone(),
                f32_bytes(&var),
            ));
            let count = i64::try_from(layer.num_batches_tracked()).unwrap_or(i64::MAX);
            tensors.push((
                key("num_batches_tracked"),
                Dtype::I64,
                vec![],
                count.to_le_bytes().to_vec(),
            ));
        }
    }
    let mut views = Vec::with_capacity(tensors.len());
    for (name, dtype, shape, data) in &tensors {
        let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
            .map_err(|e| key_error(name, e.to_string()))?;
        if views.iter().any(|(other, _)| other == name) {
            return Err(key_error(
                name,
                "appears twice: give each layer its own prefix",
            ));
        }
        views.push((name.clone(), view));
    }
    safetensors::serialize(views, None).map_err(|e| error("file".into(), e.to_string()))
}

/// Writes [`save_state`]'s bytes to `path`.
pub fn save_state_file(path: impl AsRef<Path>, layers: &[(&str, &BatchNorm)]) -> Result<()> {
    let path = path.as_ref();
    let bytes = save_state(layers)?;
    std::fs::write(path, bytes)
        .map_err(|e| error(format!("file '{}'", path.display()), e.to_string()))
}
