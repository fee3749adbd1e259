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
    /// What the case holds.
    pub kind: CaseKind,
}

/// The three kinds of case.
#[derive(Clone, Debug)]
pub enum CaseKind {
    /// `F.batch_norm` calls: training steps, inference and backward.
    Functional(Box<FunctionalCase>),
    /// The module's bookkeeping over several training calls (`module: true`).
    Module(ModuleCase),
    /// A call PyTorch refuses.
    Refused(Refusal),
}

/// A functional case's settings and tensors.
#[derive(Clone, Debug)]
pub struct FunctionalCase {
    /// How the library receives the data (see [`memory_shape`]).
    pub layout: Layout,
    /// Running-stat momentum; `None` means the cumulative average, m = 1 / (k + 1) at step k.
    pub momentum: Option<f64>,
    /// eps added to the variance.
    pub eps: f64,
    /// Whether gamma and beta take part (when false, gamma = 1 and beta = 0).
    pub affine: bool,
    /// Whether running stats are kept (when false, inference uses batch statistics).
    pub track_running_stats: bool,
    /// Per-channel scale (stored even when the case is not affine; then unused).
    pub gamma: Vec<f32>,
    /// Per-channel shift (stored even when the case is not affine; then unused).
    pub beta: Vec<f32>,
    /// Upstream gradient for the backward of the last step (and of inference).
    pub dy: ArrayD<f32>,
    /// The training steps, in order.
    pub steps: Vec<FixtureStep>,
    /// Inference on the first step's x after the last step (rounded to float32).
    pub y_eval: ArrayD<f32>,
    /// Backward of the last training step for `dy`.
    pub backward: Backward,
    /// Backward of the inference for `dy`, the running statistics being constants (the cases
    /// added with PyTorch 2.15 that track running stats).
    pub eval_backward: Option<Backward>,
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
    /// Running mean and variance after this step (they start at 0 and 1), when tracked.
    pub running: Option<(Vec<f64>, Vec<f64>)>,
}

/// A backward pass's answers.
#[derive(Clone, Debug)]
pub struct Backward {
    /// dx (rounded to float32).
    pub dx: ArrayD<f32>,
    /// dgamma and dbeta, when affine.
    pub parameters: Option<(Vec<f64>, Vec<f64>)>,
}

/// The module case: each training call's batch and the module's state after it.
#[derive(Clone, Debug)]
pub struct ModuleCase {
    /// momentum (`None`: cumulative average).
    pub momentum: Option<f64>,
    /// eps.
    pub eps: f64,
    /// Whether gamma and beta take part.
    pub affine: bool,
    /// The calls, in order.
    pub steps: Vec<ModuleStep>,
}

/// One training call of the module.
#[derive(Clone, Debug)]
pub struct ModuleStep {
    /// The batch (channels-first; possibly empty).
    pub x: ArrayD<f32>,
    /// Running mean after the call.
    pub running_mean: Vec<f64>,
    /// Running variance after the call.
    pub running_var: Vec<f64>,
    /// PyTorch's `num_batches_tracked` after the call.
    pub num_batches_tracked: u64,
}

/// A call PyTorch refuses.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// Training (batch statistics) or inference.
    pub training: bool,
    /// eps of the call.
    pub eps: f64,
    /// PyTorch's message.
    pub message: String,
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

/// The names of the manifest's cases of one kind, for the assertion that a test checked all.
pub fn names(cases: &[FixtureCase], kind: fn(&CaseKind) -> bool) -> Vec<String> {
    cases
        .iter()
        .filter(|c| kind(&c.kind))
        .map(|c| c.name.clone())
        .collect()
}

/// The shape of a case's tensors in memory: the logical shape for channels-first,
/// `[N, d1, ..., C]` for channels-last.
pub fn memory_shape(shape: &[usize], layout: Layout) -> Vec<usize> {
    permutation(layout, shape.len())
        .into_iter()
        .map(|axis| shape[axis])
        .collect()
}

/// Logical axes in memory order.
fn permutation(layout: Layout, rank: usize) -> Vec<usize> {
    match layout {
        Layout::ChannelsFirst => (0..rank).collect(),
        Layout::ChannelsLast => std::iter::once(0).chain(2..rank).chain([1]).collect(),
    }
}

/// A manifest entry's fields, with panics that name the case.
struct Entry<'a> {
    name: &'a str,
    value: &'a Value,
}

impl Entry<'_> {
    fn field(&self, key: &str) -> &Value {
        self.value
            .get(key)
            .unwrap_or_else(|| panic!("case {}: no \"{key}\" in the manifest", self.name))
    }

    fn number(&self, key: &str) -> f64 {
        self.field(key)
            .as_f64()
            .unwrap_or_else(|| panic!("case {}: {key} is not a number", self.name))
    }

    fn flag(&self, key: &str, default: bool) -> bool {
        self.value.get(key).map_or(default, |v| {
            v.as_bool()
                .unwrap_or_else(|| panic!("case {}: {key} is not a boolean", self.name))
        })
    }

    fn momentum(&self) -> Option<f64> {
        match self.field("momentum") {
            Value::Null => None,
            _ => Some(self.number("momentum")),
        }
    }
}

fn parse_case(value: &Value) -> FixtureCase {
    let name = value["case"]
        .as_str()
        .unwrap_or_else(|| panic!("manifest entry without a case name: {value}"))
        .to_string();
    let entry = Entry { name: &name, value };
    let shape: Vec<usize> = entry
        .field("shape")
        .as_array()
        .unwrap_or_else(|| panic!("case {name}: shape is not a list"))
        .iter()
        .map(|d| {
            d.as_u64()
                .unwrap_or_else(|| panic!("case {name}: shape has a non-integer {d}"))
                as usize
        })
        .collect();
    let kind = if let Some(message) = value.get("expect_error") {
        // Entries without settings are `F.batch_norm(x, running_mean, running_var,
        // training=True)` with PyTorch's default eps.
        CaseKind::Refused(Refusal {
            training: entry.flag("training", true),
            eps: value.get("eps").map_or(1e-5, |_| entry.number("eps")),
            message: message
                .as_str()
                .unwrap_or_else(|| panic!("case {name}: expect_error is not a string"))
                .to_string(),
        })
    } else if entry.flag("module", false) {
        CaseKind::Module(load_module(&entry, &shape))
    } else {
        CaseKind::Functional(Box::new(load_functional(&entry, &shape)))
    };
    FixtureCase { name, shape, kind }
}

/// An open `<name>.npz` and the keys it holds.
struct Npz {
    path: PathBuf,
    reader: NpzReader<File>,
    keys: Vec<String>,
}

impl Npz {
    fn open(name: &str) -> Self {
        let path = fixtures_dir().join(format!("{name}.npz"));
        let file =
            File::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        let mut reader = NpzReader::new(file)
            .unwrap_or_else(|e| panic!("{} is not an npz: {e}", path.display()));
        let keys = reader
            .names()
            .unwrap_or_else(|e| panic!("{}: cannot list its arrays: {e}", path.display()))
            .into_iter()
            .map(|k| k.trim_end_matches(".npy").to_string())
            .collect();
        Npz { path, reader, keys }
    }

    fn has(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key)
    }

    /// A float32 tensor of channels-first `shape`, permuted to `layout`'s memory order.
    fn tensor(&mut self, key: &str, shape: &[usize], layout: Layout) -> ArrayD<f32> {
        let logical: ArrayD<f32> = self.reader.by_name(key).unwrap_or_else(|e| {
            panic!("{}: cannot read float32 '{key}': {e}", self.path.display())
        });
        assert_eq!(
            logical.shape(),
            shape,
            "{}: shape of '{key}'",
            self.path.display()
        );
        logical
            .permuted_axes(IxDyn(&permutation(layout, shape.len())))
            .as_standard_layout()
            .to_owned()
    }

    /// A per-channel vector.
    fn per_channel<T: ndarray_npy::ReadableElement + Clone>(
        &mut self,
        key: &str,
        channels: usize,
    ) -> Vec<T> {
        let values: Array1<T> = self
            .reader
            .by_name(key)
            .unwrap_or_else(|e| panic!("{}: cannot read '{key}': {e}", self.path.display()));
        assert_eq!(
            values.len(),
            channels,
            "{}: length of '{key}'",
            self.path.display()
        );
        values.to_vec()
    }

    /// A backward's answers under `dx_key` and, when affine, `dgamma_key`, `dbeta_key`.
    fn backward(
        &mut self,
        keys: [&str; 3],
        shape: &[usize],
        layout: Layout,
        affine: bool,
    ) -> Backward {
        let channels = shape[1];
        Backward {
            dx: self.tensor(keys[0], shape, layout),
            parameters: affine.then(|| {
                (
                    self.per_channel(keys[1], channels),
                    self.per_channel(keys[2], channels),
                )
            }),
        }
    }
}

fn load_functional(entry: &Entry<'_>, shape: &[usize]) -> FunctionalCase {
    let name = entry.name;
    let layout = match entry.field("layout").as_str() {
        Some("channels_first") => Layout::ChannelsFirst,
        Some("channels_last") => Layout::ChannelsLast,
        other => panic!("case {name}: unknown layout {other:?}"),
    };
    let affine = entry.flag("affine", true);
    let track_running_stats = entry.flag("track_running_stats", true);
    let steps = entry.number("steps") as usize;
    assert!(steps > 0, "case {name}: no training step");
    let channels = shape[1];
    let mut npz = Npz::open(name);
    let steps = (0..steps)
        .map(|k| FixtureStep {
            x: npz.tensor(&format!("x_{k}"), shape, layout),
            y: npz.tensor(&format!("y_{k}"), shape, layout),
            mean: npz.per_channel(&format!("mean_{k}"), channels),
            invstd: npz.per_channel(&format!("invstd_{k}"), channels),
            running: track_running_stats.then(|| {
                (
                    npz.per_channel(&format!("running_mean_{k}"), channels),
                    npz.per_channel(&format!("running_var_{k}"), channels),
                )
            }),
        })
        .collect();
    let eval_backward = npz.has("dx_eval").then(|| {
        npz.backward(
            ["dx_eval", "dgamma_eval", "dbeta_eval"],
            shape,
            layout,
            affine,
        )
    });
    FunctionalCase {
        layout,
        momentum: entry.momentum(),
        eps: entry.number("eps"),
        affine,
        track_running_stats,
        gamma: npz.per_channel("gamma", channels),
        beta: npz.per_channel("beta", channels),
        dy: npz.tensor("dy", shape, layout),
        steps,
        y_eval: npz.tensor("y_eval", shape, layout),
        backward: npz.backward(["dx", "dgamma", "dbeta"], shape, layout, affine),
        eval_backward,
    }
}

fn load_module(entry: &Entry<'_>, shape: &[usize]) -> ModuleCase {
    let channels = shape[1];
    let mut npz = Npz::open(entry.name);
    let steps = (0..entry.number("steps") as usize)
        .map(|k| {
            let x: ArrayD<f32> = npz
                .reader
                .by_name(&format!("x_{k}"))
                .unwrap_or_else(|e| panic!("{}: x_{k}: {e}", npz.path.display()));
            assert_eq!(x.shape()[1], channels, "{}: x_{k}", npz.path.display());
            let count: ndarray::Array0<i64> = npz
                .reader
                .by_name(&format!("num_batches_tracked_{k}"))
                .unwrap_or_else(|e| panic!("{}: num_batches_tracked_{k}: {e}", npz.path.display()));
            ModuleStep {
                x,
                running_mean: npz.per_channel(&format!("running_mean_{k}"), channels),
                running_var: npz.per_channel(&format!("running_var_{k}"), channels),
                num_batches_tracked: count.into_scalar() as u64,
            }
        })
        .collect();
    ModuleCase {
        momentum: entry.momentum(),
        eps: entry.number("eps"),
        affine: entry.flag("affine", true),
        steps,
    }
}
