//! The benchmark suite: its shapes, and the GPU state one case runs on (rotating input copies,
//! the outputs, parameters and running stats). The cases themselves are `case.rs`'s.
//!
//! Shared by the `bnbench` program and the criterion benches (`benches/batch_norm.rs`), so both
//! time exactly the same work.

use wgpu_batchnorm::functional::{
    batch_norm_backward_into, batch_norm_into, record_batch_norm, record_batch_norm_backward,
};
use wgpu_batchnorm::{
    BatchNorm, BatchNormConfig, ChannelPair, DType, Epilogue, EpilogueGrad, ForwardArgs,
    GpuContext, PassTimestamps, Result, SavedStats, Tensor,
};

use super::case::{Case, EpilogueChoice, Op};

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

/// The host copies of a case's data, in memory order and as stored (rounded to the case's
/// storage type), for the CPU reference.
#[derive(Clone, Debug)]
pub struct HostData {
    /// The input (every GPU copy holds these values).
    pub x: Vec<f32>,
    /// The upstream gradient (backward only; every GPU copy holds these values).
    pub dy: Option<Vec<f32>>,
    /// The shortcut z (add-ReLU only; every GPU copy holds these values).
    pub z: Option<Vec<f32>>,
    /// The output of the forward whose backward is timed, which the ReLU's mask reads
    /// (backward with an epilogue only).
    pub forward_y: Option<Vec<f32>>,
    /// Per-channel scale, in [0.5, 1.5).
    pub gamma: Vec<f32>,
    /// Per-channel shift.
    pub beta: Vec<f32>,
    /// Running mean the inference forward normalizes with.
    pub running_mean: Vec<f32>,
    /// Running variance the inference forward normalizes with, in [0.5, 1.5).
    pub running_var: Vec<f32>,
}

/// `values` rounded to `dtype`, as an upload stores them.
pub fn stored(dtype: DType, values: Vec<f32>) -> Vec<f32> {
    match dtype {
        DType::F32 => values,
        DType::F16 => values
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect(),
        DType::BF16 => values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect(),
    }
}

/// Everything one case runs on: `copies` identical copies of the inputs (x, and dy for the
/// backward, z for add-ReLU), so that consecutive runs read different memory and no timing is
/// of cached data, one shared output, and the parameters.
pub struct Workload {
    case: Case,
    inputs: Vec<Tensor>,
    upstream: Vec<Tensor>,
    shortcuts: Vec<Tensor>,
    /// y for the forwards, dx for the backward.
    output: Tensor,
    /// Backward with an epilogue: the forward's output (the ReLU's mask).
    forward_output: Option<Tensor>,
    /// Backward with add-ReLU: dz.
    shortcut_grad: Option<Tensor>,
    affine: ChannelPair,
    running: ChannelPair,
    /// The statistics the backward differentiates through; `None` for the forwards.
    saved: Option<SavedStats>,
    /// The same operation as a training loop calls it: a layer that keeps its calls prepared.
    layer: BatchNorm,
    host: HostData,
}

/// The forward epilogue of `case` on shortcut `z` (used with add-ReLU only).
fn epilogue_of<'a>(case: &Case, z: Option<&'a Tensor>) -> Epilogue<'a> {
    match (case.epilogue, z) {
        (EpilogueChoice::Relu, _) => Epilogue::Relu,
        (EpilogueChoice::AddRelu, Some(z)) => Epilogue::AddRelu(z),
        _ => Epilogue::None,
    }
}

/// The backward epilogue of a forward whose output was `y` (with an epilogue), writing `dz`
/// (add-ReLU).
fn epilogue_grad_of<'a>(y: Option<&'a Tensor>, dz: Option<&'a Tensor>) -> EpilogueGrad<'a> {
    match (y, dz) {
        (Some(y), Some(dz)) => EpilogueGrad::AddRelu { y, dz },
        (Some(y), None) => EpilogueGrad::Relu { y },
        _ => EpilogueGrad::None,
    }
}

impl Workload {
    /// Uploads the case's data: enough copies that together they hold at least `rotate_bytes`
    /// (at most [`MAX_COPIES`]). The backward case also runs one training forward (with the
    /// case's epilogue), for the statistics it saves and the output its mask reads.
    pub fn new(ctx: &GpuContext, case: &Case, rotate_bytes: u64) -> Result<Self> {
        let channels = case.channels();
        let elements = case.elements();
        let shape = case.memory_shape();
        let layout = case.layout.layout();
        let dtype = case.dtype.dtype();
        let backward = case.op == Op::Backward;
        let add = case.epilogue == EpilogueChoice::AddRelu;
        let mut random = Normal::new(0x5eed ^ elements as u64);
        let host = HostData {
            x: stored(dtype, random.take(elements)),
            dy: backward.then(|| stored(dtype, random.take(elements))),
            z: add.then(|| stored(dtype, random.take(elements))),
            forward_y: None,
            gamma: random.uniform(channels, 0.5, 1.5),
            beta: random.take(channels),
            running_mean: random.take(channels),
            running_var: random.uniform(channels, 0.5, 1.5),
        };
        let per_copy = 1 + u64::from(backward) + u64::from(add);
        let copy_bytes = dtype.bytes() * elements as u64 * per_copy;
        let copies = rotate_bytes
            .div_ceil(copy_bytes.max(1))
            .clamp(1, MAX_COPIES as u64) as usize;
        let upload = |data: Option<&Vec<f32>>| -> Result<Vec<Tensor>> {
            let Some(data) = data else {
                return Ok(Vec::new());
            };
            (0..copies)
                .map(|_| Tensor::from_f32_as(ctx, data, &shape, layout, dtype))
                .collect()
        };
        let inputs = upload(Some(&host.x))?;
        let upstream = upload(host.dy.as_ref())?;
        let shortcuts = upload(host.z.as_ref())?;
        let new_output = || Tensor::zeros_as(ctx, &shape, layout, dtype);
        let output = new_output()?;
        let with_epilogue = case.epilogue != EpilogueChoice::None;
        let forward_output = (backward && with_epilogue).then(new_output).transpose()?;
        let shortcut_grad = (backward && add).then(new_output).transpose()?;
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
            shortcuts,
            output,
            forward_output,
            shortcut_grad,
            affine,
            running,
            saved: None,
            layer,
            host,
        };
        if backward {
            let args = workload.forward_args(true, 0);
            let y = workload.forward_output.as_ref().unwrap_or(&workload.output);
            let saved = batch_norm_into(&workload.inputs[0], y, &args)?;
            if let Some(y) = &workload.forward_output {
                workload.host.forward_y = Some(y.to_vec()?);
            }
            workload.saved = Some(saved);
        }
        Ok(workload)
    }

    /// The forward's arguments on input copy `copy`.
    fn forward_args(&self, training: bool, copy: usize) -> ForwardArgs<'_> {
        ForwardArgs {
            affine: Some(&self.affine),
            running: Some(&self.running),
            training,
            momentum: MOMENTUM,
            eps: EPS,
            epilogue: epilogue_of(&self.case, self.shortcuts.get(copy)),
        }
    }

    /// The backward's epilogue: the forward's output, and dz with add-ReLU.
    fn epilogue_grad(&self) -> EpilogueGrad<'_> {
        epilogue_grad_of(self.forward_output.as_ref(), self.shortcut_grad.as_ref())
    }

    /// The case this workload runs.
    pub fn case(&self) -> &Case {
        &self.case
    }

    /// How many copies of the inputs rotate.
    pub fn copies(&self) -> usize {
        self.inputs.len()
    }

    /// Bytes of input the copies hold together (x, and dy for the backward, z for add-ReLU).
    pub fn rotation_bytes(&self) -> u64 {
        let per_copy =
            1 + usize::from(!self.upstream.is_empty()) + usize::from(!self.shortcuts.is_empty());
        (self.copies() * per_copy * self.case.elements()) as u64 * self.case.dtype.dtype().bytes()
    }

    /// The host data, for the reference.
    pub fn host(&self) -> &HostData {
        &self.host
    }

    /// The output every run writes: y for the forwards, dx for the backward.
    pub fn output(&self) -> &Tensor {
        &self.output
    }

    /// dz, which the add-ReLU backward writes besides dx.
    pub fn shortcut_grad(&self) -> Option<&Tensor> {
        self.shortcut_grad.as_ref()
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
                self.epilogue_grad(),
                timestamps,
            ),
            None => {
                let args = self.forward_args(self.case.op == Op::TrainForward, copy);
                record_batch_norm(encoder, &self.inputs[copy], &self.output, &args, timestamps)
                    .map(|_| None)
            }
        }
    }

    /// Records run `run` through the case's layer (`BatchNorm::record_forward_with` or
    /// `record_backward_with`), which prepares its dispatches on the first call on an input
    /// and reuses them after: the host cost of a call inside a training loop.
    pub fn record_layer(&mut self, encoder: &mut wgpu::CommandEncoder, run: usize) -> Result<()> {
        let copy = run % self.copies().min(LAYER_COPIES);
        let epilogue_grad =
            epilogue_grad_of(self.forward_output.as_ref(), self.shortcut_grad.as_ref());
        match &self.saved {
            Some(saved) => self
                .layer
                .record_backward_with(
                    encoder,
                    &self.inputs[copy],
                    &self.upstream[copy],
                    &self.output,
                    saved,
                    epilogue_grad,
                    None,
                )
                .map(|_| ()),
            None => self
                .layer
                .record_forward_with(
                    encoder,
                    &self.inputs[copy],
                    &self.output,
                    epilogue_of(&self.case, self.shortcuts.get(copy)),
                    None,
                )
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
                self.epilogue_grad(),
            ),
            None => {
                let args = self.forward_args(self.case.op == Op::TrainForward, copy);
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
