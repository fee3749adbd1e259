//! The results: primary numbers per variant and learning rate (mean and 95% interval over
//! seeds), the comparisons they answer, and every curve, as JSON and CSV.

use std::path::Path;

use serde::Serialize;

use super::cli::Settings;
use super::network::VARIANTS;
use super::stats::Interval;
use super::training::RunCurves;
use super::{ExperimentError, ExperimentResult};

/// The start-up check: the GPU network's first minibatch losses against an f64 CPU run.
#[derive(Clone, Debug, Serialize)]
pub struct StartupCheck {
    /// Steps compared per variant.
    pub steps: usize,
    /// The learning rate they ran at.
    pub learning_rate: f64,
    /// Largest relative difference allowed.
    pub tolerance: f64,
    /// Largest relative difference seen.
    pub worst: f64,
}

/// The primary results of one variant at one learning rate.
#[derive(Clone, Debug, Serialize)]
pub struct Primary {
    /// Variant name.
    pub variant: &'static str,
    /// Learning rate.
    pub learning_rate: f64,
    /// Training-set loss after the last step (running statistics).
    pub final_train_loss: Interval,
    /// Test accuracy after the last step.
    pub final_test_accuracy: Interval,
}

/// With and without gamma and beta, at one learning rate, on one measure.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// Learning rate.
    pub learning_rate: f64,
    /// "final_train_loss" or "final_test_accuracy".
    pub measure: &'static str,
    /// The variant with gamma and beta.
    pub with_affine: &'static str,
    /// The same arrangement without.
    pub without_affine: &'static str,
    /// "no measurable difference" where the intervals overlap, else which is better.
    pub verdict: String,
}

/// Everything a run writes.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The adapter the batch norms ran on.
    pub adapter: String,
    /// What ran.
    pub settings: Settings,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
    /// The start-up check.
    pub startup_check: StartupCheck,
    /// Per variant and learning rate.
    pub primary: Vec<Primary>,
    /// The answers.
    pub comparisons: Vec<Comparison>,
    /// Every run's curves.
    pub runs: Vec<RunCurves>,
}

/// The primary results of `runs`, in the order of `settings`' learning rates and the variants.
pub fn primary(settings: &Settings, runs: &[RunCurves]) -> Vec<Primary> {
    let mut rows = Vec::new();
    for &learning_rate in &settings.learning_rates {
        for variant in VARIANTS {
            let of = |measure: fn(&RunCurves) -> f64| {
                let values: Vec<f64> = runs
                    .iter()
                    .filter(|r| r.variant == variant.name && r.learning_rate == learning_rate)
                    .map(measure)
                    .collect();
                Interval::of(&values)
            };
            rows.push(Primary {
                variant: variant.name,
                learning_rate,
                final_train_loss: of(RunCurves::final_train_loss),
                final_test_accuracy: of(RunCurves::final_test_accuracy),
            });
        }
    }
    rows
}

/// Each arrangement with gamma and beta against without, on both measures.
pub fn comparisons(primary: &[Primary]) -> Vec<Comparison> {
    let pairs = [("bn-relu+affine", "bn-relu"), ("relu-bn+affine", "relu-bn")];
    let mut out = Vec::new();
    for row in primary {
        for (with_affine, without_affine) in pairs {
            if row.variant != with_affine {
                continue;
            }
            let other = primary
                .iter()
                .find(|r| r.variant == without_affine && r.learning_rate == row.learning_rate)
                .expect("every variant at every learning rate");
            let measures: [(&str, &Interval, &Interval, bool); 2] = [
                (
                    "final_train_loss",
                    &row.final_train_loss,
                    &other.final_train_loss,
                    false,
                ),
                (
                    "final_test_accuracy",
                    &row.final_test_accuracy,
                    &other.final_test_accuracy,
                    true,
                ),
            ];
            for (measure, a, b, higher_is_better) in measures {
                let verdict = if a.overlaps(b) || a.low.is_nan() || b.low.is_nan() {
                    "no measurable difference".to_string()
                } else if (a.mean > b.mean) == higher_is_better {
                    format!("{with_affine} is better")
                } else {
                    format!("{without_affine} is better")
                };
                out.push(Comparison {
                    learning_rate: row.learning_rate,
                    measure,
                    with_affine,
                    without_affine,
                    verdict,
                });
            }
        }
    }
    out
}

fn output_error(path: &Path) -> impl FnOnce(String) -> ExperimentError + '_ {
    move |message| ExperimentError::Output {
        path: path.to_path_buf(),
        message,
    }
}

/// The whole report as JSON.
pub fn write_json(report: &Report, path: &Path) -> ExperimentResult<()> {
    let text = serde_json::to_string(report).map_err(|e| output_error(path)(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| output_error(path)(e.to_string()))
}

/// Writes `rows` (after `header`) as CSV.
fn write_csv(path: &Path, header: &[&str], rows: Vec<Vec<String>>) -> ExperimentResult<()> {
    let write = || -> Result<(), csv::Error> {
        let mut writer = csv::Writer::from_path(path)?;
        writer.write_record(header)?;
        for row in rows {
            writer.write_record(&row)?;
        }
        writer.flush()?;
        Ok(())
    };
    write().map_err(|e| output_error(path)(e.to_string()))
}

/// One row per variant, learning rate and measure; `values` lists every seed's.
pub fn write_primary_csv(primary: &[Primary], path: &Path) -> ExperimentResult<()> {
    let mut rows = Vec::new();
    for row in primary {
        for (measure, interval) in [
            ("final_train_loss", &row.final_train_loss),
            ("final_test_accuracy", &row.final_test_accuracy),
        ] {
            let values: Vec<String> = interval.values.iter().map(f64::to_string).collect();
            rows.push(vec![
                row.variant.to_string(),
                row.learning_rate.to_string(),
                measure.to_string(),
                interval.mean.to_string(),
                interval.low.to_string(),
                interval.high.to_string(),
                interval.diverged.to_string(),
                values.join(";"),
            ]);
        }
    }
    let header = [
        "variant",
        "learning_rate",
        "measure",
        "mean",
        "ci_low",
        "ci_high",
        "diverged",
        "values",
    ];
    write_csv(path, &header, rows)
}

/// Every point of every curve: `variant,learning_rate,seed,step,curve,value`.
pub fn write_curves_csv(runs: &[RunCurves], path: &Path) -> ExperimentResult<()> {
    let mut rows = Vec::new();
    for run in runs {
        let mut row = |step: usize, curve: &str, value: f64| {
            rows.push(vec![
                run.variant.to_string(),
                run.learning_rate.to_string(),
                run.seed.to_string(),
                step.to_string(),
                curve.to_string(),
                value.to_string(),
            ]);
        };
        for (step, &loss) in run.minibatch_loss.iter().enumerate() {
            row(step, "minibatch_loss", loss);
        }
        for (k, &step) in run.eval_steps.iter().enumerate() {
            row(step, "train_loss", run.train_loss[k]);
            row(step, "test_accuracy", run.test_accuracy[k]);
        }
        for probe in &run.probes {
            row(probe.step, "loss_min", probe.loss_min);
            row(probe.step, "loss_max", probe.loss_max);
            row(probe.step, "gradient_change_min", probe.gradient_change_min);
            row(probe.step, "gradient_change_max", probe.gradient_change_max);
            row(probe.step, "beta_smoothness", probe.beta_smoothness);
        }
    }
    let header = ["variant", "learning_rate", "seed", "step", "curve", "value"];
    write_csv(path, &header, rows)
}

/// The primary results as a Markdown table (printed, and pasted into the docs).
pub fn markdown(primary: &[Primary]) -> String {
    let mut text = String::from(
        "| learning rate | variant | final training loss | 95% CI | final test accuracy | 95% CI |\n\
         |---|---|---|---|---|---|\n",
    );
    for row in primary {
        let (loss, accuracy) = (&row.final_train_loss, &row.final_test_accuracy);
        let diverged = match loss.diverged {
            0 => String::new(),
            n => format!(" ({n} diverged)"),
        };
        text.push_str(&format!(
            "| {} | {} | {:.3e}{diverged} | [{:.3e}, {:.3e}] | {:.2}% | [{:.2}%, {:.2}%] |\n",
            row.learning_rate,
            row.variant,
            loss.mean,
            loss.low,
            loss.high,
            100.0 * accuracy.mean,
            100.0 * accuracy.low,
            100.0 * accuracy.high
        ));
    }
    text
}
