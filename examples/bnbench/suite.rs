//! The benchmark suite: which cases run (shapes x layouts x operations), and the GPU state one
//! case runs on (rotating input copies, an output, parameters and running stats).
//!
//! Shared by the `bnbench` program and the criterion benches (`benches/batch_norm.rs`), so both
//! time exactly the same work.

use serde::Serialize;
use wgpu_batchnorm::functional::{
    batch_norm_backward_into, batch_norm_into, record_batch_norm, record_batch_norm_backward,
};
use wgpu_batchnorm::{
    BatchNorm, BatchNormConfig, ChannelPair, ForwardArgs, GpuContext, Layout, PassTimestamps,
    Result, SavedStats, Tensor,
};

/// The full suite's shapes (logical order, `[N, C, ...]`): ResNet's batch norms at batch 64,
/// two 2-D ones, a tiny one, and 1x3x100x101, whose rows (3 x 10100 values) are too long for
/// the elementwise grid to stride whole rows (`plan::workgroups_for_elements`).
/// `scripts/torch_bench.py` lists the same shapes.
pub const FULL_SHAPES: [&[usize]; 8] = [
    &[64, 64, 112, 112],
    &[64, 256, 56, 56],
    &[64, 1024, 14, 14],
    &[64, 2048, 7, 7],
    &[8192, 4096],
    &[256, 1024],
    &[32, 64, 8, 8],
    &[1, 3, 100, 101],
];

/// The `--quick` shapes: small enough for the software adapter in CI, and still one of each kind
/// (4-D with few values per channel, 2-D, 4-D with many).
pub const QUICK_SHAPES: [&[usize]; 3] = [&[32, 64, 8, 8], &[256, 1024], &[8, 32, 28, 28]];

/// eps of every case (PyTorch's default).
pub const EPS: f64 = 1e-5;
/// Running-stat momentum of the training forward (PyTorch's default).
pub const MOMENTUM: f64 = 0.1;
/// At most this many copies of an input rotate, however small it is (each copy is a buffer).
pub const MAX_COPIES: usize = 4096;
/// The layer's calls rotate over at most this many copies: fewer than the inputs a layer keeps
/// prepared, so that its calls are the steady state of a training loop.
pub const LAYER_COPIES: usize = 8;

/// One batch-norm operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// Training forward: batch statistics, normalize, running-stat update.
    TrainForward,
    /// Inference forward from the running stats.
    EvalForward,
    /// Backward through the batch statistics: dx, dgamma, dbeta.
    Backward,
}

impl Op {
    /// Every operation, in the order the suite runs them.
    pub const ALL: [Op; 3] = [Op::TrainForward, Op::EvalForward, Op::Backward];

    /// The name used in every report (and by `scripts/torch_bench.py`).
    pub fn name(self) -> &'static str {
        match self {
            Op::TrainForward => "train-forward",
            Op::EvalForward => "eval-forward",
            Op::Backward => "backward",
        }
    }

    /// The least traffic the operation needs: each input read once, each output written once
    /// (x and y forward; x, dy and dx backward).
    pub fn bytes_per_element(self) -> u64 {
        match self {
            Op::TrainForward | Op::EvalForward => 8,
            Op::Backward => 12,
        }
    }
}

/// Memory order of a case's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutChoice {
    /// `[N, C, d1, ...]` (NCHW).
    ChannelsFirst,
    /// `[N, d1, ..., C]` (NHWC).
    ChannelsLast,
}

impl LayoutChoice {
    /// Both layouts, channels-first first.
    pub const ALL: [LayoutChoice; 2] = [LayoutChoice::ChannelsFirst, LayoutChoice::ChannelsLast];

    /// The library's layout.
    pub fn layout(self) -> Layout {
        match self {
            LayoutChoice::ChannelsFirst => Layout::ChannelsFirst,
            LayoutChoice::ChannelsLast => Layout::ChannelsLast,
        }
    }

    /// The name used in every report (and by `scripts/torch_bench.py`).
    pub fn name(self) -> &'static str {
        match self {
            LayoutChoice::ChannelsFirst => "channels-first",
            LayoutChoice::ChannelsLast => "channels-last",
        }
    }
}

/// One timed case: an operation on a shape in a layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// The operation.
    pub op: Op,
    /// Memory order.
    pub layout: LayoutChoice,
    /// Logical shape `[N, C, d1, ...]`, as PyTorch gives it whatever the memory order.
    pub shape: Vec<usize>,
}

impl Case {
    /// The shape in memory order (channels-last moves C to the end), as the library takes it.
    pub fn memory_shape(&self) -> Vec<usize> {
        let mut shape = self.shape.clone();
        if self.layout == LayoutChoice::ChannelsLast {
            let channels = shape.remove(1);
            shape.push(channels);
        }
        shape
    }

    /// Number of channels C.
    pub fn channels(&self) -> usize {
        self.shape[1]
    }

    /// Number of elements.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The least bytes the operation moves (see [`Op::bytes_per_element`]).
    pub fn min_bytes(&self) -> u64 {
        self.elements() as u64 * self.op.bytes_per_element()
    }

    /// The shape as `64x64x112x112`.
    pub fn shape_text(&self) -> String {
        self.shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("x")
    }

    /// The memory order as PyTorch users name it: NC, NCL/NLC, NCHW/NHWC, NCDHW/NDHWC.
    pub fn format(&self) -> String {
        let first = match self.shape.len() {
            2 => "NC",
            3 => "NCL",
            4 => "NCHW",
            5 => "NCDHW",
            _ => return self.layout.name().to_string(),
        };
        match self.layout {
            LayoutChoice::ChannelsFirst => first.to_string(),
            LayoutChoice::ChannelsLast => format!("N{}C", &first[2..]),
        }
    }

    /// `train-forward 64x64x112x112 NCHW`.
    pub fn label(&self) -> String {
        format!("{} {} {}", self.op.name(), self.shape_text(), self.format())
    }
}

/// The cases of a suite, shape by shape, then layout, then operation. A 2-D shape `[N, C]` is
/// the same memory in both layouts, so it runs once (as channels-first) when either is asked for.
pub fn cases(shapes: &[Vec<usize>], ops: &[Op], layouts: &[LayoutChoice]) -> Vec<Case> {
    let mut cases = Vec::new();
    for shape in shapes {
        let shape_layouts: Vec<LayoutChoice> = if shape.len() == 2 {
            vec![LayoutChoice::ChannelsFirst]
        } else {
            layouts.to_vec()
        };
        for &layout in &shape_layouts {
            for &op in ops {
                cases.push(Case {
                    op,
                    layout,
                    shape: shape.clone(),
                });
            }
        }
    }
    cases
}

/// The host copies of a case's data, in memory order, for the CPU reference.
#[derive(Clone, Debug)]
pub struct HostData {
    /// The input (every GPU copy holds these values).
    pub x: Vec<f32>,
    /// The upstream gradient (backward only; every GPU copy holds these values).
    pub dy: Option<Vec<f32>>,
    /// Per-channel scale, in [0.5, 1.5).
    pub gamma: Vec<f32>,
    /// Per-channel shift.
    pub beta: Vec<f32>,
    /// Running mean the inference forward normalizes with.
    pub running_mean: Vec<f32>,
    /// Running variance the inference forward normalizes with, in [0.5, 1.5).
    pub running_var: Vec<f32>,
}

/// Everything one case runs on: `copies` identical copies of the input (and of dy for the
/// backward), so that consecutive runs read different memory and no timing is of cached data,
/// one shared output, and the parameters.
pub struct Workload {
    case: Case,
    inputs: Vec<Tensor>,
    upstream: Vec<Tensor>,
    output: Tensor,
    affine: ChannelPair,
    running: ChannelPair,
    /// The statistics the backward differentiates through; `None` for the forwards.
    saved: Option<SavedStats>,
    /// The same operation as a training loop calls it: a layer that keeps its calls prepared.
    layer: BatchNorm,
    host: HostData,
}

impl Workload {
    /// Uploads the case's data: enough copies that together they hold at least `rotate_bytes`
    /// (at most [`MAX_COPIES`]). The backward case also runs one training forward, for the
    /// statistics it saves.
    pub fn new(ctx: &GpuContext, case: &Case, rotate_bytes: u64) -> Result<Self> {
        let channels = case.channels();
        let elements = case.elements();
        let shape = case.memory_shape();
        let layout = case.layout.layout();
        let mut random = Normal::new(0x5eed ^ elements as u64);
        let host = HostData {
            x: random.take(elements),
            dy: (case.op == Op::Backward).then(|| random.take(elements)),
            gamma: random.uniform(channels, 0.5, 1.5),
            beta: random.take(channels),
            running_mean: random.take(channels),
            running_var: random.uniform(channels, 0.5, 1.5),
        };
        let copy_bytes = 4 * elements as u64 * if host.dy.is_some() { 2 } else { 1 };
        let copies = rotate_bytes
            .div_ceil(copy_bytes.max(1))
            .clamp(1, MAX_COPIES as u64) as usize;
        let upload = |data: &[f32]| -> Result<Vec<Tensor>> {
            (0..copies)
                .map(|_| Tensor::from_slice(ctx, data, &shape, layout))
                .collect()
        };
        let inputs = upload(&host.x)?;
        let upstream = match &host.dy {
            Some(dy) => upload(dy)?,
            None => Vec::new(),
        };
        let output = Tensor::zeros(ctx, &shape, layout)?;
        let affine = ChannelPair::new(ctx, &host.gamma, &host.beta)?;
        let running = ChannelPair::new(ctx, &host.running_mean, &host.running_var)?;
        let config = BatchNormConfig {
            eps: EPS,
            momentum: Some(MOMENTUM),
            ..BatchNormConfig::default()
        };
        let mut layer = BatchNorm::with_config(ctx, channels, config)?;
        layer.set_parameters(&host.gamma, &host.beta)?;
        layer.set_running_statistics(&host.running_mean, &host.running_var)?;
        layer.set_training(case.op != Op::EvalForward);
        let mut workload = Workload {
            case: case.clone(),
            inputs,
            upstream,
            output,
            affine,
            running,
            saved: None,
            layer,
            host,
        };
        if case.op == Op::Backward {
            let args = workload.forward_args(true);
            let saved = batch_norm_into(&workload.inputs[0], &workload.output, &args)?;
            workload.saved = Some(saved);
        }
        Ok(workload)
    }

    fn forward_args(&self, training: bool) -> ForwardArgs<'_> {
        ForwardArgs {
            affine: Some(&self.affine),
            running: Some(&self.running),
            training,
            momentum: MOMENTUM,
            eps: EPS,
        }
    }

    /// The case this workload runs.
    pub fn case(&self) -> &Case {
        &self.case
    }

    /// How many copies of the input rotate.
    pub fn copies(&self) -> usize {
        self.inputs.len()
    }

    /// Bytes of input the copies hold together (x, and dy for the backward).
    pub fn rotation_bytes(&self) -> u64 {
        let per_copy = if self.upstream.is_empty() { 1 } else { 2 };
        (self.copies() * per_copy * self.case.elements() * 4) as u64
    }

    /// The host data, for the reference.
    pub fn host(&self) -> &HostData {
        &self.host
    }

    /// The output every run writes: y for the forwards, dx for the backward.
    pub fn output(&self) -> &Tensor {
        &self.output
    }

    /// Records run `run` (on input copy `run % copies`) into `encoder` as one compute pass,
    /// with timestamps around it when given. Returns `[dgamma | dbeta]` for the backward.
    pub fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        run: usize,
        timestamps: Option<PassTimestamps<'_>>,
    ) -> Result<Option<ChannelPair>> {
        let copy = run % self.copies();
        match &self.saved {
            Some(saved) => record_batch_norm_backward(
                encoder,
                &self.inputs[copy],
                &self.upstream[copy],
                &self.output,
                saved,
                Some(&self.affine),
                timestamps,
            ),
            None => {
                let args = self.forward_args(self.case.op == Op::TrainForward);
                record_batch_norm(encoder, &self.inputs[copy], &self.output, &args, timestamps)
                    .map(|_| None)
            }
        }
    }

    /// Records run `run` through the case's layer (`BatchNorm::record_forward` or
    /// `record_backward`), which prepares its dispatches on the first call on an input and
    /// reuses them after: the host cost of a call inside a training loop.
    pub fn record_layer(&mut self, encoder: &mut wgpu::CommandEncoder, run: usize) -> Result<()> {
        let copy = run % self.copies().min(LAYER_COPIES);
        match &self.saved {
            Some(saved) => self
                .layer
                .record_backward(
                    encoder,
                    &self.inputs[copy],
                    &self.upstream[copy],
                    &self.output,
                    saved,
                    None,
                )
                .map(|_| ()),
            None => self
                .layer
                .record_forward(encoder, &self.inputs[copy], &self.output, None)
                .map(|_| ()),
        }
    }

    /// Run `run` through the library's convenience call, which records, submits and waits.
    pub fn call_and_wait(&self, run: usize) -> Result<Option<ChannelPair>> {
        let copy = run % self.copies();
        match &self.saved {
            Some(saved) => batch_norm_backward_into(
                &self.inputs[copy],
                &self.upstream[copy],
                &self.output,
                saved,
                Some(&self.affine),
            ),
            None => {
                let args = self.forward_args(self.case.op == Op::TrainForward);
                batch_norm_into(&self.inputs[copy], &self.output, &args).map(|_| None)
            }
        }
    }
}

/// A small deterministic generator of standard normal values (SplitMix64 and Box-Muller), so
/// every run of the benchmark times the same data.
pub struct Normal {
    state: u64,
}

impl Normal {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Normal { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `count` values uniform in [low, high).
    pub fn uniform(&mut self, count: usize, low: f64, high: f64) -> Vec<f32> {
        (0..count)
            .map(|_| (low + (high - low) * self.unit()) as f32)
            .collect()
    }

    /// `count` standard normal values.
    pub fn take(&mut self, count: usize) -> Vec<f32> {
        let mut values = Vec::with_capacity(count + 1);
        while values.len() < count {
            let radius = (-2.0 * (1.0 - self.unit()).ln()).sqrt();
            let angle = std::f64::consts::TAU * self.unit();
            values.push((radius * angle.cos()) as f32);
            values.push((radius * angle.sin()) as f32);
        }
        values.truncate(count);
        values
    }
}
