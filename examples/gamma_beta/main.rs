//! `gamma_beta`: are batch norm's gamma and beta redundant? Trains a 64-256-256-256-10
//! network on scikit-learn's digits in five variants (batch norm before each ReLU with and
//! without gamma and beta, after each ReLU with and without, no batch norm), at three learning
//! rates and over several seeds, with plain SGD, and measures Santurkar et al.'s instruments
//! along the way. The protocol and the answer: `docs/gamma-beta.md`.
//!
//! ```text
//! cargo run --release --example gamma_beta              # the full run (7 minutes on lavapipe)
//! cargo run --release --example gamma_beta -- --quick   # under a minute
//! ```
//!
//! Every batch norm runs on the crate's GPU kernels (training forward with running statistics,
//! backward, inference forward; the functional form without running statistics for probes).
//! The linear layers, ReLU, the loss and SGD run on the host through ndarray, in f32.
//!
//! The modules, in the order a run uses them: [`cli`], [`data`], [`network`] (with [`real`],
//! [`rng`], [`gpu_norm`] and [`reference_norm`]), [`training`], [`probes`], [`stats`],
//! [`report`], [`plots`]. `tests/gamma_beta_quick.rs` includes this file as a module and calls
//! [`run`], so the modules name each other with `super::`, never `crate::`.

pub mod cli;
pub mod data;
pub mod gpu_norm;
pub mod network;
pub mod plots;
pub mod probes;
pub mod real;
pub mod reference_norm;
pub mod report;
pub mod rng;
pub mod stats;
pub mod training;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use wgpu_batchnorm::{BatchNormError, GpuContext};

use self::cli::Cli;
use self::data::{DataError, Digits};
use self::gpu_norm::GpuNorm;
use self::network::{Parameters, VARIANTS};
use self::reference_norm::ReferenceNorm;
use self::report::{Report, StartupCheck};

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// The data could not be loaded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The GPU refused or failed.
    #[error("GPU: {0}")]
    Gpu(#[from] BatchNormError),
    /// The GPU network does not compute what the f64 reference does.
    #[error(
        "start-up check failed: {variant} at step {step} has loss {gpu} on the GPU and {reference} \
         in the f64 reference, a relative difference of {difference:e} > {tolerance:e}; the GPU \
         batch norm or the host network is wrong on this adapter"
    )]
    StartupMismatch {
        /// Variant.
        variant: &'static str,
        /// Step.
        step: usize,
        /// The GPU network's loss.
        gpu: f64,
        /// The f64 network's loss.
        reference: f64,
        /// |gpu - reference| / reference.
        difference: f64,
        /// The tolerance.
        tolerance: f64,
    },
    /// An output could not be written.
    #[error("{path}: {message}")]
    Output {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// Shorthand.
pub type ExperimentResult<T> = Result<T, ExperimentError>;

/// Steps of the start-up check, per variant.
const CHECK_STEPS: usize = 3;
/// Relative difference allowed between the f32 GPU network's first losses and the f64 run's:
/// 2^-13 (512 u), over 200 times the largest difference measured on lavapipe (5.6e-7, see
/// `docs/gamma-beta.md`), which comes from float32 sums of up to 256 terms through four layers
/// and three steps. A wrong term is far larger: the unbiased variance in place of the biased
/// one alone scales every normalized value by sqrt(127 / 128), 0.4%.
const CHECK_TOLERANCE: f64 = 1.0 / 8192.0;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gamma_beta: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the data, checks the GPU network against the f64 one, runs every variant, learning
/// rate and seed, and writes the results.
pub fn run(cli: &Cli) -> ExperimentResult<Report> {
    let started = Instant::now();
    let settings = cli.settings();
    std::fs::create_dir_all(&settings.out).map_err(|e| ExperimentError::Output {
        path: settings.out.clone(),
        message: e.to_string(),
    })?;
    let digits = data::load(&settings.data)?;
    let split = data::split(&digits);
    let ctx = GpuContext::new()?;
    println!("batch norms on {}", ctx.adapter());
    println!(
        "{} training and {} test images",
        split.train.labels.len(),
        split.test.labels.len()
    );
    let largest_rate = settings.learning_rates.iter().copied().fold(0.0, f64::max);
    let startup_check = startup_check(&ctx, &split.train, largest_rate)?;
    println!(
        "start-up check: the first {CHECK_STEPS} losses match the f64 run within {:.1e} \
         (tolerance {CHECK_TOLERANCE:.1e})",
        startup_check.worst
    );

    let cadence = settings.cadence;
    let runs_total = settings.learning_rates.len() * VARIANTS.len() * settings.seeds as usize;
    let progress = ProgressBar::new((runs_total * cadence.steps) as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} steps, eta {eta} {msg}",
        )
        .expect("a valid template"),
    );
    let mut runs = Vec::with_capacity(runs_total);
    for &learning_rate in &settings.learning_rates {
        for variant in VARIANTS {
            for seed in 0..settings.seeds {
                progress.set_message(format!("{} lr {learning_rate} seed {seed}", variant.name));
                runs.push(training::train(
                    &ctx,
                    &split,
                    variant,
                    learning_rate,
                    seed,
                    cadence,
                    &progress,
                )?);
            }
        }
    }
    progress.finish_and_clear();

    let primary = report::primary(&settings, &runs);
    let comparisons = report::comparisons(&primary);
    print!("{}", report::markdown(&primary));
    for comparison in &comparisons {
        println!(
            "lr {}: {} vs {} on {}: {}",
            comparison.learning_rate,
            comparison.with_affine,
            comparison.without_affine,
            comparison.measure,
            comparison.verdict
        );
    }
    let out = settings.out.clone();
    let report = Report {
        adapter: ctx.adapter().to_string(),
        settings,
        seconds: started.elapsed().as_secs_f64(),
        startup_check,
        primary,
        comparisons,
        runs,
    };
    write_outputs(&report, &out)?;
    println!("{:.1} s; results in {}", report.seconds, out.display());
    Ok(report)
}

/// Runs the first steps of every variant on the GPU (f32) and in the f64 reference from the
/// same weights and batches, and fails unless their losses agree.
fn startup_check(
    ctx: &GpuContext,
    train: &Digits,
    learning_rate: f64,
) -> ExperimentResult<StartupCheck> {
    let seed = 0;
    let mut worst = 0.0f64;
    for variant in VARIANTS {
        let params = Parameters::initial(seed, variant);
        let mut gpu = GpuNorm::new(ctx, variant.affine)?;
        let gpu_losses = training::first_losses(
            train,
            params.clone(),
            variant,
            &mut gpu,
            seed,
            learning_rate,
            CHECK_STEPS,
        )?;
        let reference_losses = training::first_losses(
            train,
            params.widened(),
            variant,
            &mut ReferenceNorm::default(),
            seed,
            learning_rate,
            CHECK_STEPS,
        )?;
        for (step, (&gpu, &reference)) in gpu_losses.iter().zip(&reference_losses).enumerate() {
            let difference = (gpu - reference).abs() / reference.abs();
            if difference.is_nan() || difference > CHECK_TOLERANCE {
                return Err(ExperimentError::StartupMismatch {
                    variant: variant.name,
                    step,
                    gpu,
                    reference,
                    difference,
                    tolerance: CHECK_TOLERANCE,
                });
            }
            worst = worst.max(difference);
        }
    }
    Ok(StartupCheck {
        steps: CHECK_STEPS,
        learning_rate,
        tolerance: CHECK_TOLERANCE,
        worst,
    })
}

/// results.json, primary.csv, curves.csv, and two figures per learning rate.
fn write_outputs(report: &Report, out: &std::path::Path) -> ExperimentResult<()> {
    report::write_json(report, &out.join("results.json"))?;
    report::write_primary_csv(&report.primary, &out.join("primary.csv"))?;
    report::write_curves_csv(&report.runs, &out.join("curves.csv"))?;
    for &learning_rate in &report.settings.learning_rates {
        let runs: Vec<_> = report
            .runs
            .iter()
            .filter(|r| r.learning_rate == learning_rate)
            .collect();
        plots::write_landscape(
            &runs,
            learning_rate,
            &out.join(format!("landscape-lr{learning_rate}.svg")),
        )?;
        plots::write_curves(
            &runs,
            learning_rate,
            &out.join(format!("curves-lr{learning_rate}.svg")),
        )?;
    }
    Ok(())
}
