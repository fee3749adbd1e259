//! `--chain resnet50`: the batch norms of a whole network, as a training step calls them. Every
//! layer's forward, then every layer's backward in reverse order, recorded into one encoder and
//! submitted once, each layer a `BatchNorm` that keeps its calls prepared. Measured per step:
//! the thread CPU time to record the step and to submit it, the GPU time from the first
//! operation's beginning to the last one's end, and the wall time of steps submitted back to
//! back. The last layer's forward and the first layer's backward of the last step are checked
//! against the f64 reference: a sample, not every layer.

use serde::Serialize;
use wgpu_batchnorm::{
    BatchNorm, ChannelPair, GpuContext, PassTimestamps, Result, SavedStats, Tensor,
};

use super::case::{Case, DTypeChoice, EpilogueChoice, LayoutChoice, Op};
use super::check::{self, Check};
use super::suite::{HostData, Normal};
use super::timing::{awaited_calls, back_to_back, host_cost, BenchResult, GpuTimer, TimeSummary};

/// A network whose batch norms make a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Chain {
    /// ResNet-50 (torchvision's, the stride on the 3x3 convolution) on 224x224 images: 53
    /// batch norms.
    Resnet50,
}

impl Chain {
    /// The network's batch norms in the order its forward calls them.
    pub fn layers(self) -> Vec<LayerSpec> {
        match self {
            Chain::Resnet50 => resnet50(),
        }
    }

    /// The name used in every report (and by `scripts/torch_bench.py --chain`).
    pub fn name(self) -> &'static str {
        match self {
            Chain::Resnet50 => "resnet50",
        }
    }
}

/// One batch norm of a network: its name in the network's `state_dict`, its channels and the
/// side of its square feature map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerSpec {
    /// As `torchvision.models.resnet50().state_dict()` names it (without `.weight`).
    pub name: String,
    /// Channels C.
    pub channels: usize,
    /// Height and width of its input.
    pub size: usize,
}

impl LayerSpec {
    /// The logical shape `[N, C, H, W]` at batch `batch`.
    pub fn shape(&self, batch: usize) -> Vec<usize> {
        vec![batch, self.channels, self.size, self.size]
    }
}

/// ResNet-50's batch norms at 224x224: the stem's at 112x112, then four stages of bottleneck
/// blocks (1x1, 3x3, 1x1 convolutions, each followed by a batch norm, and a batch norm on the
/// first block's projection shortcut). A stage's first block takes the previous stage's size
/// into its first batch norm and halves it on its 3x3 convolution.
fn resnet50() -> Vec<LayerSpec> {
    let layer = |name: String, channels, size| LayerSpec {
        name,
        channels,
        size,
    };
    let mut layers = vec![layer("bn1".into(), 64, 112)];
    // (width of the block, blocks, input side, output side) per stage; the stage's output has
    // 4 x width channels.
    let stages = [
        (64, 3, 56, 56),
        (128, 4, 56, 28),
        (256, 6, 28, 14),
        (512, 3, 14, 7),
    ];
    for (stage, &(width, blocks, input, output)) in stages.iter().enumerate() {
        for block in 0..blocks {
            let prefix = format!("layer{}.{block}", stage + 1);
            let first_side = if block == 0 { input } else { output };
            layers.push(layer(format!("{prefix}.bn1"), width, first_side));
            layers.push(layer(format!("{prefix}.bn2"), width, output));
            layers.push(layer(format!("{prefix}.bn3"), 4 * width, output));
            if block == 0 {
                layers.push(layer(format!("{prefix}.downsample.1"), 4 * width, output));
            }
        }
    }
    layers
}

/// One layer of the chain on the GPU: the layer and its tensors. Each layer has its own input
/// (the backward reads it); y, dy and dx are views at the start of buffers that every layer
/// shares, as a training loop's transient activations would.
struct ChainLayer {
    spec: LayerSpec,
    layer: BatchNorm,
    x: Tensor,
    y: Tensor,
    dy: Tensor,
    dx: Tensor,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// The chain's layers and the host data the sample is checked against.
pub struct ChainWorkload {
    layout: LayoutChoice,
    batch: usize,
    layers: Vec<ChainLayer>,
    /// The first values of every layer's x (each layer's x is a prefix of these).
    x: Vec<f32>,
    /// The first values of the shared dy.
    dy: Vec<f32>,
}

impl ChainWorkload {
    /// Uploads the chain's tensors at batch `batch` in `layout`, with random gamma and beta.
    pub fn new(ctx: &GpuContext, chain: Chain, layout: LayoutChoice, batch: usize) -> Result<Self> {
        let specs = chain.layers();
        let largest = specs
            .iter()
            .map(|spec| spec.shape(batch).iter().product::<usize>())
            .max()
            .unwrap_or(0);
        let mut random = Normal::new(0xc4a1 ^ batch as u64);
        let x = random.take(largest);
        let dy = random.take(largest);
        let shared = |label: &str| {
            ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 4 * largest as u64,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let (y_buffer, dy_buffer, dx_buffer) =
            (shared("chain y"), shared("chain dy"), shared("chain dx"));
        ctx.queue()
            .write_buffer(&dy_buffer, 0, bytemuck::cast_slice(&dy));
        let mut layers = Vec::with_capacity(specs.len());
        for spec in specs {
            let case = Case {
                op: Op::TrainForward,
                layout,
                shape: spec.shape(batch),
                dtype: DTypeChoice::F32,
                epilogue: EpilogueChoice::None,
            };
            let (shape, lib_layout) = (case.memory_shape(), layout.layout());
            let elements = case.elements();
            let view = |buffer: &wgpu::Buffer| {
                Tensor::from_buffer(ctx, buffer.clone(), &shape, lib_layout)
            };
            let gamma = random.uniform(spec.channels, 0.5, 1.5);
            let beta = random.take(spec.channels);
            let mut layer = BatchNorm::new(ctx, spec.channels)?;
            layer.set_parameters(&gamma, &beta)?;
            layers.push(ChainLayer {
                x: Tensor::from_slice(ctx, &x[..elements], &shape, lib_layout)?,
                y: view(&y_buffer)?,
                dy: view(&dy_buffer)?,
                dx: view(&dx_buffer)?,
                spec,
                layer,
                gamma,
                beta,
            });
        }
        Ok(ChainWorkload {
            layout,
            batch,
            layers,
            x,
            dy,
        })
    }

    /// Values the chain's tensors hold together (x, y, dy and dx of every layer).
    pub fn elements(&self) -> usize {
        self.layers.iter().map(|layer| layer.x.len()).sum()
    }

    /// Records one training step's batch norms into `encoder`: every forward, then every
    /// backward in reverse order. `timestamps`' begin goes on the first operation's pass and
    /// its end on the last one's. Returns the first layer's `[dgamma | dbeta]`.
    pub fn record_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        timestamps: Option<PassTimestamps<'_>>,
    ) -> Result<ChannelPair> {
        let begin = timestamps.map(|t| PassTimestamps { end: None, ..t });
        let end = timestamps.map(|t| PassTimestamps { begin: None, ..t });
        let mut saved: Vec<SavedStats> = Vec::with_capacity(self.layers.len());
        for (index, l) in self.layers.iter_mut().enumerate() {
            let stamp = if index == 0 { begin } else { None };
            saved.push(l.layer.record_forward(encoder, &l.x, &l.y, stamp)?);
        }
        let mut first_grads = None;
        for (index, (l, saved)) in self.layers.iter().zip(&saved).enumerate().rev() {
            let stamp = if index == 0 { end } else { None };
            let grads = l
                .layer
                .record_backward(encoder, &l.x, &l.dy, &l.dx, saved, stamp)?;
            if index == 0 {
                first_grads = grads;
            }
        }
        first_grads.ok_or_else(|| {
            wgpu_batchnorm::BatchNormError::Validation("an affine layer returned no dgamma".into())
        })
    }

    /// Checks the sample against the f64 reference: the last layer's y (the shared y holds it
    /// after a step) and the first layer's dx (likewise) with its dgamma and dbeta.
    fn check_sample(&self, grads: &ChannelPair) -> BenchResult<Vec<SampleCheck>> {
        let last = self.layers.last().ok_or("an empty chain")?;
        let first = self.layers.first().ok_or("an empty chain")?;
        let y = last.y.to_vec()?;
        let dx = first.dx.to_vec()?;
        let params = grads.read()?;
        let sample =
            |l: &ChainLayer, op: Op, output: &[f32], params: Option<&(Vec<f32>, Vec<f32>)>| {
                let case = Case {
                    op,
                    layout: self.layout,
                    shape: l.spec.shape(self.batch),
                    dtype: DTypeChoice::F32,
                    epilogue: EpilogueChoice::None,
                };
                let elements = case.elements();
                let host = HostData {
                    x: self.x[..elements].to_vec(),
                    dy: (op == Op::Backward).then(|| self.dy[..elements].to_vec()),
                    z: None,
                    forward_y: None,
                    gamma: l.gamma.clone(),
                    beta: l.beta.clone(),
                    running_mean: vec![0.0; l.spec.channels],
                    running_var: vec![1.0; l.spec.channels],
                };
                SampleCheck {
                    layer: l.spec.name.clone(),
                    op,
                    check: check::check(&case, &host, output, params, None),
                }
            };
        Ok(vec![
            sample(last, Op::TrainForward, &y, None),
            sample(first, Op::Backward, &dx, Some(&params)),
        ])
    }
}

/// One checked operation of the chain.
#[derive(Clone, Debug, Serialize)]
pub struct SampleCheck {
    /// The layer's name.
    pub layer: String,
    /// The operation checked.
    pub op: Op,
    /// The comparison with the reference.
    pub check: Check,
}

/// What the chain measured in one layout.
#[derive(Clone, Debug, Serialize)]
pub struct ChainResult {
    /// The network.
    pub chain: Chain,
    /// Memory order of every tensor.
    pub layout: LayoutChoice,
    /// Batch size N.
    pub batch: usize,
    /// Batch norms in the chain.
    pub layers: usize,
    /// Values of x over all layers.
    pub elements: usize,
    /// Timed steps.
    pub steps: usize,
    /// Median thread CPU time to record one step (every forward and backward), microseconds.
    pub host_record_us: f64,
    /// Median thread CPU time to finish and submit the step's encoder, microseconds.
    pub host_submit_us: f64,
    /// Median GPU time of one step, microseconds (see the run's timing method).
    pub gpu_step_us: f64,
    /// Wall time per step of steps submitted back to back, microseconds.
    pub back_to_back_us: f64,
    /// The sample checked against the reference.
    pub checks: Vec<SampleCheck>,
}

impl ChainResult {
    /// Whether every checked operation matched the reference.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|sample| sample.check.passed)
    }

    /// Host CPU time per step: recording and submitting.
    pub fn host_us(&self) -> f64 {
        self.host_record_us + self.host_submit_us
    }
}

/// Runs the chain in `layout`: two awaited steps (pipelines and prepared calls), then `steps`
/// steps for each measurement, the last one checked.
pub fn run_chain(
    ctx: &GpuContext,
    timer: Option<&GpuTimer>,
    chain: Chain,
    layout: LayoutChoice,
    batch: usize,
    steps: usize,
) -> BenchResult<ChainResult> {
    let mut workload = ChainWorkload::new(ctx, chain, layout, batch)?;
    let step = |workload: &mut ChainWorkload| -> BenchResult<()> {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        workload.record_step(&mut encoder, None)?;
        let index = ctx.queue().submit([encoder.finish()]);
        ctx.device().poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        })?;
        Ok(())
    };
    awaited_calls(2, |_| step(&mut workload))?;
    let host = host_cost(ctx, steps, |encoder, _| {
        workload.record_step(encoder, None)?;
        Ok(())
    })?;
    let gpu = match timer {
        Some(timer) => timer.time(ctx, steps, |encoder, _, timestamps| {
            workload.record_step(encoder, Some(timestamps))?;
            Ok(())
        })?,
        None => awaited_calls(steps, |_| step(&mut workload))?,
    };
    // A value that the checked step did not write stays NaN and fails the check.
    let first = &workload.layers[0];
    first.dx.fill(f32::NAN)?;
    first.y.fill(f32::NAN)?;
    let mut grads = None;
    let back_to_back = back_to_back(ctx, steps, |encoder, _| {
        grads = Some(workload.record_step(encoder, None)?);
        Ok(())
    })?;
    let checks = workload.check_sample(&grads.ok_or("no step ran")?)?;
    let median = |seconds: &[f64]| {
        TimeSummary::of(seconds)
            .map(|t| t.median * 1e6)
            .ok_or("no timed step")
    };
    Ok(ChainResult {
        chain,
        layout,
        batch,
        layers: workload.layers.len(),
        elements: workload.elements(),
        steps,
        host_record_us: median(&host.record)?,
        host_submit_us: median(&host.submit)?,
        gpu_step_us: median(&gpu)?,
        back_to_back_us: back_to_back * 1e6,
        checks,
    })
}
