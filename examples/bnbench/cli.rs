//! The command line (clap), and the settings a run derives from it.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::Serialize;
use wgpu_batchnorm::AdapterOptions;

use super::case::{DTypeChoice, EpilogueChoice, LayoutChoice, Op};
use super::chain::Chain;
use super::suite::{FULL_SHAPES, QUICK_SHAPES};

const MIB: u64 = 1 << 20;

/// Times batch norm (training forward, inference forward, backward) on wgpu adapters, against a
/// streaming kernel on the same adapter and an f64 CPU reference that checks every result.
#[derive(Clone, Debug, Parser)]
#[command(name = "bnbench", version)]
pub struct Cli {
    /// Backend to run on [default: WGPU_BACKEND if set, else any; best adapter first].
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,

    /// Only adapters whose name contains NAME, case-insensitive [default: WGPU_ADAPTER_NAME].
    #[arg(long, value_name = "NAME")]
    pub adapter: Option<String>,

    /// Run on every adapter that matches, one after the other, and add a side-by-side summary.
    #[arg(long)]
    pub all: bool,

    /// List the adapters that match, and exit.
    #[arg(long)]
    pub list: bool,

    /// The small suite for CI: shapes (32,64,8,8), (256,1024), (8,32,28,28), 10 runs after 2
    /// warm-ups, inputs rotating over 16 MiB instead of 128 MiB.
    #[arg(long)]
    pub quick: bool,

    /// Run this shape instead of the suite's: logical order N,C[,spatial...], as PyTorch gives
    /// it whatever the layout. Repeatable.
    #[arg(long, value_name = "N,C,...", value_parser = parse_shape)]
    pub shape: Vec<Shape>,

    /// Instead of the suite, the batch norms of a network's training step: every layer's
    /// forward, then every backward, recorded into one encoder per step and submitted once.
    /// Reports host CPU time and GPU time per step, and checks a sample against the reference.
    /// Runs in each layout asked for; --reps is the number of steps [default: 20, or 5 on a
    /// CPU adapter].
    #[arg(long, value_enum, conflicts_with_all = ["quick", "shape", "op", "svg", "max_elements", "dtype", "epilogue", "breakdown"])]
    pub chain: Option<Chain>,

    /// The chain's batch size N [default: 32, or 2 on a CPU adapter].
    #[arg(long, requires = "chain", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: Option<u32>,

    /// Only this operation. Repeatable [default: all three].
    #[arg(long, value_enum)]
    pub op: Vec<Op>,

    /// Only this layout. Repeatable [default: both; 2-D shapes run once].
    #[arg(long, value_enum)]
    pub layout: Vec<LayoutChoice>,

    /// Storage type of x, y, dy, dx and the shortcut (statistics stay f32). Repeatable
    /// [default: f32].
    #[arg(long, value_enum)]
    pub dtype: Vec<DTypeChoice>,

    /// What follows the normalization in the same kernels: none, relu (y = relu(bn(x))),
    /// add-relu (y = relu(bn(x) + z)). Repeatable [default: none].
    #[arg(long, value_enum)]
    pub epilogue: Vec<EpilogueChoice>,

    /// Timed runs per case; also the number of calls of each host measurement
    /// [default: 50, or 10 with --quick; with --chain, steps: 20, or 5 on a CPU adapter].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: Option<u32>,

    /// Untimed runs per case before timing, each awaited [default: 5, or 2 with --quick].
    #[arg(long)]
    pub warmup: Option<u32>,

    /// Then at least this many milliseconds of untimed runs submitted back to back, so a GPU
    /// that idled while the host prepared the case is back at full clocks [default: 300, or
    /// 20 with --quick]. An H200 left idle for a second times 4x slower without it.
    #[arg(long, value_name = "MS")]
    pub warmup_ms: Option<u64>,

    /// Inputs rotate among copies that together hold at least this many MiB, so no run reads
    /// cached data [default: 128, or 16 with --quick]. The stream kernel uses buffers of this size.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub rotate_mib: Option<u64>,

    /// Time with the wall clock of awaited calls even where the adapter has GPU timestamps.
    #[arg(long)]
    pub wall_clock: bool,

    /// Also time each dispatch of every case, with timestamps between the dispatches of its
    /// compute pass (where the adapter has TIMESTAMP_QUERY_INSIDE_PASSES; elsewhere the run says
    /// so and measures none). Those timestamps add waits of their own: the parts need not sum
    /// to the whole pass's time.
    #[arg(long)]
    pub breakdown: bool,

    /// Leave out the GPU back-to-back column (3 submissions of 100 calls a case). On a CPU
    /// adapter those 300 calls are most of a suite's time; the other columns do not change.
    #[arg(long, conflicts_with = "chain")]
    pub no_back_to_back: bool,

    /// Skip cases with more elements than this (each skip is printed and recorded).
    #[arg(long, value_name = "COUNT")]
    pub max_elements: Option<usize>,

    /// Write the results as JSON.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Write the results as CSV, one row per adapter and case.
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,

    /// Write the results as Markdown tables.
    #[arg(long, value_name = "PATH")]
    pub markdown: Option<PathBuf>,

    /// Write an SVG chart: GB/s and percent of the stream kernel per case.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,

    /// Compare the crate's kernels with the WGSL files in DIR (a changed copy of `shaders/`),
    /// in one process on one adapter: --rounds runs of the cases on each, alternating which
    /// goes first, then one table of both GPU medians and their ratio. Every result is still
    /// checked against the reference.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["chain", "all", "json", "csv", "markdown", "svg"])]
    pub compare_shaders: Option<PathBuf>,

    /// Runs of the cases on each side of --compare-shaders.
    #[arg(long, default_value_t = 4, requires = "compare_shaders", value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
}

/// A wgpu backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// Vulkan.
    Vulkan,
    /// Metal.
    Metal,
    /// Direct3D 12.
    Dx12,
    /// OpenGL / OpenGL ES.
    Gl,
}

impl BackendChoice {
    fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
            BackendChoice::Gl => wgpu::Backends::GL,
        }
    }
}

/// A logical shape `[N, C, ...]` from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape(pub Vec<usize>);

fn parse_shape(text: &str) -> Result<Shape, String> {
    let dims = text
        .split(',')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("'{text}' is not a comma-separated list of sizes: {e}"))?;
    if dims.len() < 2 {
        return Err(format!("'{text}': batch norm needs at least N and C"));
    }
    if dims.contains(&0) {
        return Err(format!("'{text}': every size must be at least 1"));
    }
    let values_per_channel = dims[2..]
        .iter()
        .fold(dims[0], |product, &d| product.saturating_mul(d));
    if values_per_channel < 2 {
        return Err(format!(
            "'{text}': training needs more than one value per channel (N x spatial >= 2)"
        ));
    }
    Ok(Shape(dims))
}

/// What a run does, resolved from the command line (defaults filled in).
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// The small CI suite.
    pub quick: bool,
    /// Timed runs per case, and calls per host measurement; with a chain, steps (`None`: the
    /// adapter's default).
    pub reps: Option<usize>,
    /// Untimed runs per case, each awaited.
    pub warmup: usize,
    /// Then at least this many milliseconds of untimed runs submitted back to back.
    pub warmup_ms: u64,
    /// Bytes the rotating input copies hold together at least.
    pub rotate_bytes: u64,
    /// Cases with more elements are skipped.
    pub max_elements: Option<usize>,
    /// Wall clock even where GPU timestamps exist.
    pub wall_clock: bool,
    /// Time each dispatch too, with timestamps inside the pass.
    pub breakdown: bool,
    /// Measure the GPU back-to-back column.
    pub back_to_back: bool,
    /// Logical shapes.
    pub shapes: Vec<Vec<usize>>,
    /// Operations.
    pub ops: Vec<Op>,
    /// Layouts.
    pub layouts: Vec<LayoutChoice>,
    /// Storage types.
    pub dtypes: Vec<DTypeChoice>,
    /// Epilogues.
    pub epilogues: Vec<EpilogueChoice>,
    /// The network whose chain of batch norms runs instead of the suite.
    pub chain: Option<Chain>,
    /// The chain's batch size (`None`: the adapter's default).
    pub batch: Option<usize>,
}

impl Settings {
    /// Timed runs per case.
    pub fn case_reps(&self) -> usize {
        self.reps.unwrap_or(if self.quick { 10 } else { 50 })
    }

    /// The chain's steps and batch size on an adapter of `device_type`.
    pub fn chain_steps_and_batch(&self, device_type: wgpu::DeviceType) -> (usize, usize) {
        let cpu = device_type == wgpu::DeviceType::Cpu;
        (
            self.reps.unwrap_or(if cpu { 5 } else { 20 }),
            self.batch.unwrap_or(if cpu { 2 } else { 32 }),
        )
    }
}

impl Cli {
    /// The adapters to consider: the flags, else `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
    pub fn adapter_options(&self) -> AdapterOptions {
        let from_env = AdapterOptions::from_env();
        AdapterOptions {
            backends: self
                .backend
                .map_or(from_env.backends, BackendChoice::backends),
            name_contains: self.adapter.clone().or(from_env.name_contains),
        }
    }

    /// The settings, with the defaults of the full or the quick suite.
    pub fn settings(&self) -> Settings {
        let (warmup, warmup_ms, rotate_mib, suite): (u32, u64, u64, &[&[usize]]) = if self.quick {
            (2, 20, 16, &QUICK_SHAPES)
        } else {
            (5, 300, 128, &FULL_SHAPES)
        };
        let shapes = if self.shape.is_empty() {
            suite.iter().map(|s| s.to_vec()).collect()
        } else {
            self.shape.iter().map(|s| s.0.clone()).collect()
        };
        Settings {
            quick: self.quick,
            reps: self.reps.map(|reps| reps as usize),
            warmup: self.warmup.unwrap_or(warmup) as usize,
            warmup_ms: self.warmup_ms.unwrap_or(warmup_ms),
            rotate_bytes: self.rotate_mib.unwrap_or(rotate_mib) * MIB,
            max_elements: self.max_elements,
            wall_clock: self.wall_clock,
            breakdown: self.breakdown,
            back_to_back: !self.no_back_to_back,
            shapes,
            ops: chosen_or_all(&self.op, &Op::ALL),
            layouts: chosen_or_all(&self.layout, &LayoutChoice::ALL),
            dtypes: chosen_or(&self.dtype, DTypeChoice::F32),
            epilogues: chosen_or(&self.epilogue, EpilogueChoice::None),
            chain: self.chain,
            batch: self.batch.map(|batch| batch as usize),
        }
    }
}

/// The values chosen on the command line, once each, in the order given; `default` when none
/// was.
fn chosen_or<T: Copy + PartialEq>(chosen: &[T], default: T) -> Vec<T> {
    let mut values: Vec<T> = Vec::new();
    for &value in chosen {
        if !values.contains(&value) {
            values.push(value);
        }
    }
    if values.is_empty() {
        values.push(default);
    }
    values
}

/// The values chosen on the command line, once each, in the suite's order; all when none was.
fn chosen_or_all<T: Copy + PartialEq>(chosen: &[T], all: &[T]) -> Vec<T> {
    all.iter()
        .copied()
        .filter(|value| chosen.is_empty() || chosen.contains(value))
        .collect()
}
