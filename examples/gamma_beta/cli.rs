//! The command line (clap, every value range-checked as it is parsed), and the settings a run
//! derives from it.

use std::path::PathBuf;

use clap::Parser;
use serde::Serialize;

use super::training::Cadence;

/// Trains a 64-256-256-256-10 network on the digits with batch norm before or after each
/// ReLU, with and without gamma and beta, and without batch norm; measures Santurkar et al.'s
/// loss landscape, gradient predictiveness and effective beta-smoothness along the way.
#[derive(Clone, Debug, Parser)]
#[command(name = "gamma_beta")]
pub struct Cli {
    /// The small run for tests (2 seeds, 12 steps, probes and evaluations every 4 steps);
    /// any option given still applies.
    #[arg(long)]
    pub quick: bool,

    /// Seeds per variant and learning rate (2 to 100) [default: 5, or 2 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=100))]
    pub seeds: Option<u64>,

    /// SGD steps per run (1 to 100000) [default: 600, or 12 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub steps: Option<u64>,

    /// Probe before every step that is a multiple of this [default: 10, or 4 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub probe_every: Option<u64>,

    /// Evaluate the training-set loss and test accuracy after every step that is a multiple
    /// of this, and before the first [default: 20, or 4 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub eval_every: Option<u64>,

    /// SGD learning rates, comma-separated, each in (0, 10] [default: 0.05,0.1,0.5].
    #[arg(long, value_delimiter = ',', value_parser = parse_learning_rate)]
    pub learning_rates: Vec<f64>,

    /// Folder for results.json, primary.csv, curves.csv and the SVG figures (created if
    /// missing).
    #[arg(long, default_value = "target/gamma-beta")]
    pub out: PathBuf,

    /// The digits data [default: data/digits.csv.gz in this repository].
    #[arg(long)]
    pub data: Option<PathBuf>,
}

fn parse_learning_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 10.0 => Ok(rate),
        Ok(rate) => Err(format!("learning rate {rate} is not in (0, 10]")),
        Err(e) => Err(format!("'{text}' is not a number: {e}")),
    }
}

/// What a run does, defaults filled in.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// The small run.
    pub quick: bool,
    /// Seeds 0 to seeds - 1.
    pub seeds: u64,
    /// Steps, probes and evaluations.
    pub cadence: Cadence,
    /// SGD learning rates.
    pub learning_rates: Vec<f64>,
    /// The data file.
    pub data: PathBuf,
    /// The output folder.
    pub out: PathBuf,
}

impl Cli {
    /// The settings, with the defaults of the full or the quick run.
    pub fn settings(&self) -> Settings {
        let (seeds, steps, probe_every, eval_every) = if self.quick {
            (2, 12, 4, 4)
        } else {
            (5, 600, 10, 20)
        };
        let learning_rates = if self.learning_rates.is_empty() {
            vec![0.05, 0.1, 0.5]
        } else {
            self.learning_rates.clone()
        };
        Settings {
            quick: self.quick,
            seeds: self.seeds.unwrap_or(seeds),
            cadence: Cadence {
                steps: self.steps.unwrap_or(steps) as usize,
                probe_every: self.probe_every.unwrap_or(probe_every) as usize,
                eval_every: self.eval_every.unwrap_or(eval_every) as usize,
            },
            learning_rates,
            data: self.data.clone().unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv.gz")
            }),
            out: self.out.clone(),
        }
    }
}
