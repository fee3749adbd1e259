//! Batch-norm state in safetensors files with PyTorch's `state_dict` names: the files of
//! `tests/fixtures/checkpoints/` (written by `scripts/make_checkpoints.py` the way PyTorch
//! writes them: a whole model's file with several layers, F16 and BF16 vectors, an old file
//! without `num_batches_tracked`) load as `expected.json` says; saved state loads back bit for
//! bit; and every bad file or key is a typed error that names it, with the layer unchanged.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{context, limited_context};
use serde_json::Value;
use wgpu_batchnorm::{save_state, BatchNorm, BatchNormConfig, BatchNormError};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checkpoints")
        .join(name)
}

/// `expected.json`: per "file:prefix", the f32 values each key must load as.
fn expected() -> HashMap<String, Value> {
    let text = std::fs::read_to_string(fixture("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("JSON")
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| v.as_f64().expect("a number") as f32)
        .collect()
}

/// Everything a layer holds, as bits.
fn state(layer: &BatchNorm) -> (Option<Vec<u32>>, Option<Vec<u32>>, u64) {
    let bits =
        |(a, b): (Vec<f32>, Vec<f32>)| a.into_iter().chain(b).map(f32::to_bits).collect::<Vec<_>>();
    (
        layer.parameters().ok().map(bits),
        layer.running_statistics().ok().map(bits),
        layer.num_batches_tracked(),
    )
}

#[test]
fn pytorch_style_files_load() {
    let expected = expected();
    let cases = [
        ("model_f32.safetensors", "layer1.0.bn1", 3),
        ("model_f32.safetensors", "layer1.0.bn2", 5),
        ("half.safetensors", "bn", 4),
        ("no_count.safetensors", "bn", 2),
    ];
    for (file, prefix, channels) in cases {
        let want = &expected[&format!("{file}:{prefix}")];
        let mut layer = BatchNorm::new(&context(), channels).unwrap();
        layer.load_state_file(fixture(file), prefix).expect(file);
        let (gamma, beta) = layer.parameters().unwrap();
        let (mean, var) = layer.running_statistics().unwrap();
        assert_eq!(gamma, floats(&want["weight"]), "{file} {prefix}");
        assert_eq!(beta, floats(&want["bias"]), "{file} {prefix}");
        assert_eq!(mean, floats(&want["running_mean"]), "{file} {prefix}");
        assert_eq!(var, floats(&want["running_var"]), "{file} {prefix}");
        assert_eq!(
            layer.num_batches_tracked(),
            want["num_batches_tracked"].as_u64().unwrap(),
            "{file} {prefix}"
        );
    }
}

#[test]
fn saved_state_loads_back_bit_for_bit() {
    let ctx = context();
    let mut first = BatchNorm::new(&ctx, 3).unwrap();
    first
        .load_state_file(fixture("model_f32.safetensors"), "layer1.0.bn1")
        .unwrap();
    let plain = BatchNorm::with_config(
        &ctx,
        2,
        BatchNormConfig {
            affine: false,
            ..BatchNormConfig::default()
        },
    )
    .unwrap();
    let untracked = BatchNorm::with_config(
        &ctx,
        4,
        BatchNormConfig {
            track_running_stats: false,
            ..BatchNormConfig::default()
        },
    )
    .unwrap();
    let bytes = save_state(&[("a.bn", &first), ("b", &plain), ("", &untracked)]).unwrap();
    // The names and dtypes PyTorch's state_dict has, for the parts each layer keeps.
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "a.bn.bias",
            "a.bn.num_batches_tracked",
            "a.bn.running_mean",
            "a.bn.running_var",
            "a.bn.weight",
            "b.num_batches_tracked",
            "b.running_mean",
            "b.running_var",
            "bias",
            "weight"
        ]
    );
    let count = file.tensor("a.bn.num_batches_tracked").unwrap();
    assert_eq!(
        (count.dtype(), count.shape()),
        (safetensors::Dtype::I64, &[][..])
    );
    assert_eq!(
        file.tensor("weight").unwrap().dtype(),
        safetensors::Dtype::F32
    );

    let mut again = BatchNorm::new(&ctx, 3).unwrap();
    again.load_state(&bytes, "a.bn").unwrap();
    assert_eq!(state(&again), state(&first));
    let mut plain_again = BatchNorm::with_config(&ctx, 2, plain.config()).unwrap();
    plain_again.set_num_batches_tracked(99);
    plain_again.load_state(&bytes, "b").unwrap();
    assert_eq!(state(&plain_again), state(&plain));
}

#[test]
fn bad_files_and_keys_are_refused_by_name() {
    let ctx = context();
    let mut layer = BatchNorm::new(&ctx, 3).unwrap();
    layer
        .set_parameters(&[1.5, 2.5, 3.5], &[-1.0, 0.0, 1.0])
        .unwrap();
    layer.set_num_batches_tracked(5);
    let before = state(&layer);
    let refused = |layer: &mut BatchNorm, bytes: &[u8], prefix: &str, needles: &[&str]| {
        let error = layer.load_state(bytes, prefix).expect_err("refused");
        assert!(
            matches!(error, BatchNormError::Checkpoint { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        for needle in needles {
            assert!(message.contains(needle), "{needle:?} in {message}");
        }
        assert_eq!(state(layer), before, "{message}: the layer changed");
    };
    let read = |name: &str| std::fs::read(fixture(name)).unwrap();
    refused(
        &mut layer,
        &read("missing_key.safetensors"),
        "bn",
        &["'bn.running_var'", "missing"],
    );
    refused(
        &mut layer,
        &read("wrong_length.safetensors"),
        "bn",
        &["'bn.bias'", "shape [2]", "3 channels"],
    );
    refused(
        &mut layer,
        &read("wrong_dtype.safetensors"),
        "bn",
        &["'bn.weight'", "I32", "F32, F16 or BF16"],
    );
    // Another channel count, another prefix, a truncated and a corrupt file.
    refused(
        &mut layer,
        &read("model_f32.safetensors"),
        "layer1.0.bn2",
        &["'layer1.0.bn2.weight'", "3 channels"],
    );
    refused(
        &mut layer,
        &read("model_f32.safetensors"),
        "nope",
        &["'nope.weight'", "missing"],
    );
    let good = read("model_f32.safetensors");
    refused(
        &mut layer,
        &good[..good.len() - 10],
        "layer1.0.bn1",
        &["file", "safetensors"],
    );
    refused(
        &mut layer,
        b"not a safetensors file at all",
        "bn",
        &["file", "safetensors"],
    );
    // Keys of a part the layer does not keep.
    let mut plain = BatchNorm::with_config(
        &ctx,
        3,
        BatchNormConfig {
            affine: false,
            ..BatchNormConfig::default()
        },
    )
    .unwrap();
    let error = plain
        .load_state(&read("model_f32.safetensors"), "layer1.0.bn1")
        .expect_err("weight without affine");
    let message = error.to_string();
    assert!(
        message.contains("'layer1.0.bn1.weight'") && message.contains("unexpected"),
        "{message}"
    );
    // A missing file names its path.
    let error = layer
        .load_state_file(fixture("no_such.safetensors"), "bn")
        .expect_err("missing file");
    assert!(error.to_string().contains("no_such.safetensors"), "{error}");
    assert_eq!(state(&layer), before);
}

/// A layer whose state cannot be read (its device is lost) makes `save_state` fail, rather than
/// write a file without its weights or running stats.
#[test]
fn a_layer_that_cannot_be_read_is_not_saved_without_its_parts() {
    let max_workgroups = wgpu::Limits::default().max_compute_workgroups_per_dimension;
    let ctx = limited_context(128 << 20, max_workgroups, wgpu::DeviceType::Cpu);
    let layer = BatchNorm::new(&ctx, 3).unwrap();
    save_state(&[("bn", &layer)]).expect("saved while the device lives");
    ctx.device().destroy();
    match save_state(&[("bn", &layer)]) {
        Err(BatchNormError::DeviceLost(_)) => {}
        other => panic!("{:?}", other.map(|bytes| bytes.len())),
    }
}
