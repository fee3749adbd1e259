//! Loader for PyTorch's answers in `tests/fixtures/` (see its README), for integration tests.
//!
//! Include it with `#[path = "common/fixtures.rs"] mod fixtures;`. The `.npz` files hold every
//! tensor in logical channels-first order; this loader hands full-size tensors over in the case's
//! memory layout (channels-last: `[N, d1, ..., C]`, standard layout), ready for the library.
//! Any problem with the files panics with the file and key at fault: a test must not pass on
//! missing data.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::{Array1, ArrayD, IxDyn};
use ndarray_npy::NpzReader;
use serde_json::Value;
use wgpu_batchnorm::layout::Layout;

/// One entry of `manifest.json`.
#[derive(Clone, Debug)]
pub struct FixtureCase {
    /// Case name; the data file is `<name>.npz`.
    pub name: String,
    /// Logical shape, channels-first `[N, C, d1, ...]`.
    pub shape: Vec<usize>,
    /// How the library receives the data (see [`memory_shape`]).
    pub layout: Layout,
    /// Running-stat momentum; `None` means the cumulative average, m = 1 / (k + 1) at step k.
    pub momentum: Option<f64>,
    /// eps added to the variance.
    pub eps: f64,
    /// Whether gamma and beta take part (when false, gamma = 1 and beta = 0).
    pub affine: bool,
    /// Number of training steps.
    pub steps: usize,
    /// The tensors; `None` for a case that must be refused.
    pub data: Option<FixtureData>,
    /// PyTorch's error message, for a case that must be refused.
    pub expect_error: Option<String>,
}

/// The tensors of one case. Full-size tensors are in the case's memory layout.
#[derive(Clone, Debug)]
pub struct FixtureData {
    /// Per-channel scale (stored even when the case is not affine; then unused).
    pub gamma: Vec<f32>,
    /// Per-channel shift (stored even when the case is not affine; then unused).
    pub beta: Vec<f32>,
    /// Upstream gradient for the backward of the last step.
    pub dy: ArrayD<f32>,
    /// The training steps, in order.
    pub steps: Vec<FixtureStep>,
    /// Inference on the first step's x with the running stats after the last step (rounded to
    /// float32).
    pub y_eval: ArrayD<f32>,
    /// Backward of the last training step for `dy` (rounded to float32).
    pub dx: ArrayD<f32>,
    /// Gradient of gamma (affine cases only).
    pub dgamma: Option<Vec<f64>>,
    /// Gradient of beta (affine cases only).
    pub dbeta: Option<Vec<f64>>,
}

/// One training step: its input, output and statistics.
#[derive(Clone, Debug)]
pub struct FixtureStep {
    /// The batch (float32 input).
    pub x: ArrayD<f32>,
    /// Training output (float64 result rounded to float32).
    pub y: ArrayD<f32>,
    /// Batch mean per channel.
    pub mean: Vec<f64>,
    /// Batch `1 / sqrt(var + eps)` per channel (biased variance).
    pub invstd: Vec<f64>,
    /// Running mean after this step (it starts at 0).
    pub running_mean: Vec<f64>,
    /// Running variance after this step (it starts at 1).
    pub running_var: Vec<f64>,
}

/// The folder holding the fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every case of the manifest, with its data loaded.
pub fn load_all() -> Vec<FixtureCase> {
    let path = fixtures_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let manifest: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let cases = manifest["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("{} has no \"cases\" list", path.display()));
    assert!(!cases.is_empty(), "{} lists no case", path.display());
    cases.iter().map(parse_case).collect()
}

/// The shape of the case's tensors in memory: the logical shape for channels-first,
/// `[N, d1, ..., C]` for channels-last.
pub fn memory_shape(case: &FixtureCase) -> Vec<usize> {
    permutation(case.layout, case.shape.len())
        .into_iter()
        .map(|axis| case.shape[axis])
        .collect()
}

/// Logical axes in memory order.
fn permutation(layout: Layout, rank: usize) -> Vec<usize> {
    match layout {
        Layout::ChannelsFirst => (0..rank).collect(),
        Layout::ChannelsLast => std::iter::once(0).chain(2..rank).chain([1]).collect(),
    }
}

fn parse_case(entry: &Value) -> FixtureCase {
    let name = entry["case"]
        .as_str()
        .unwrap_or_else(|| panic!("manifest entry without a case name: {entry}"))
        .to_string();
    let field = |key: &str| -> &Value {
        entry
            .get(key)
            .unwrap_or_else(|| panic!("case {name}: no \"{key}\" in the manifest"))
    };
    let shape: Vec<usize> = field("shape")
        .as_array()
        .unwrap_or_else(|| panic!("case {name}: shape is not a list"))
        .iter()
        .map(|d| {
            d.as_u64()
                .unwrap_or_else(|| panic!("case {name}: shape has a non-integer {d}"))
                as usize
        })
        .collect();

    if let Some(message) = entry.get("expect_error") {
        let message = message
            .as_str()
            .unwrap_or_else(|| panic!("case {name}: expect_error is not a string"));
        // The manifest gives only the shape; the other settings are those of the
        // `F.batch_norm(x, running_mean, running_var, training=True)` call that PyTorch refused.
        return FixtureCase {
            name,
            shape,
            layout: Layout::ChannelsFirst,
            momentum: Some(0.1),
            eps: 1e-5,
            affine: false,
            steps: 1,
            data: None,
            expect_error: Some(message.to_string()),
        };
    }

    let layout = match field("layout").as_str() {
        Some("channels_first") => Layout::ChannelsFirst,
        Some("channels_last") => Layout::ChannelsLast,
        other => panic!("case {name}: unknown layout {other:?}"),
    };
    let momentum = match field("momentum") {
        Value::Null => None,
        value => Some(
            value
                .as_f64()
                .unwrap_or_else(|| panic!("case {name}: momentum is not a number")),
        ),
    };
    let eps = field("eps")
        .as_f64()
        .unwrap_or_else(|| panic!("case {name}: eps is not a number"));
    let affine = field("affine")
        .as_bool()
        .unwrap_or_else(|| panic!("case {name}: affine is not a boolean"));
    let steps = field("steps")
        .as_u64()
        .unwrap_or_else(|| panic!("case {name}: steps is not an integer")) as usize;
    assert!(steps > 0, "case {name}: no training step");

    let mut case = FixtureCase {
        name,
        shape,
        layout,
        momentum,
        eps,
        affine,
        steps,
        data: None,
        expect_error: None,
    };
    case.data = Some(load_data(&case));
    case
}

/// Reads `<name>.npz`, checking every shape against the manifest.
fn load_data(case: &FixtureCase) -> FixtureData {
    let path = fixtures_dir().join(format!("{}.npz", case.name));
    let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut npz =
        NpzReader::new(file).unwrap_or_else(|e| panic!("{} is not an npz: {e}", path.display()));
    let channels = case.shape[1];
    let axes = permutation(case.layout, case.shape.len());

    // A full-size float32 tensor, permuted to memory order.
    let mut tensor = |key: &str| -> ArrayD<f32> {
        let logical: ArrayD<f32> = npz
            .by_name(key)
            .unwrap_or_else(|e| panic!("{}: cannot read float32 '{key}': {e}", path.display()));
        assert_eq!(
            logical.shape(),
            &case.shape[..],
            "{}: shape of '{key}'",
            path.display()
        );
        logical
            .permuted_axes(IxDyn(&axes))
            .as_standard_layout()
            .to_owned()
    };
    let dy = tensor("dy");
    let y_eval = tensor("y_eval");
    let dx = tensor("dx");
    let xs: Vec<(ArrayD<f32>, ArrayD<f32>)> = (0..case.steps)
        .map(|k| (tensor(&format!("x_{k}")), tensor(&format!("y_{k}"))))
        .collect();

    // A per-channel vector of the given element type.
    fn per_channel<T: ndarray_npy::ReadableElement + Clone>(
        npz: &mut NpzReader<File>,
        path: &Path,
        key: &str,
        channels: usize,
    ) -> Vec<T> {
        let values: Array1<T> = npz
            .by_name(key)
            .unwrap_or_else(|e| panic!("{}: cannot read '{key}': {e}", path.display()));
        assert_eq!(
            values.len(),
            channels,
            "{}: length of '{key}'",
            path.display()
        );
        values.to_vec()
    }
    let gamma = per_channel::<f32>(&mut npz, &path, "gamma", channels);
    let beta = per_channel::<f32>(&mut npz, &path, "beta", channels);
    let steps = xs
        .into_iter()
        .enumerate()
        .map(|(k, (x, y))| FixtureStep {
            x,
            y,
            mean: per_channel(&mut npz, &path, &format!("mean_{k}"), channels),
            invstd: per_channel(&mut npz, &path, &format!("invstd_{k}"), channels),
            running_mean: per_channel(&mut npz, &path, &format!("running_mean_{k}"), channels),
            running_var: per_channel(&mut npz, &path, &format!("running_var_{k}"), channels),
        })
        .collect();
    let (dgamma, dbeta) = if case.affine {
        (
            Some(per_channel(&mut npz, &path, "dgamma", channels)),
            Some(per_channel(&mut npz, &path, "dbeta", channels)),
        )
    } else {
        (None, None)
    };
    FixtureData {
        gamma,
        beta,
        dy,
        steps,
        y_eval,
        dx,
        dgamma,
        dbeta,
    }
}
