//! `--compare-shaders DIR`: the crate's kernels against the WGSL files of DIR on one adapter, in
//! one process. Two contexts on the adapter, the second reading its kernels from DIR
//! (`GpuContext::set_shader_directory`); each round runs every case on both sides, one right
//! after the other (seconds apart: a busy machine's speed drifts over minutes, and between
//! processes by up to 2x), the two sides in turn going first, so that neither the drift nor
//! the order decides a comparison. Each run measures the stream kernel too, as a plain run
//! does.

use std::path::Path;

use wgpu_batchnorm::GpuContext;

use super::case::Case;
use super::cli::Settings;
use super::report::{digits3, AdapterRun, CaseResult, Table};
use super::runner::{run_adapter, Progress};
use super::timing::{BenchResult, TimeSummary};

/// The runs of both sides: one a case a round.
pub struct Comparison {
    /// The crate's kernels.
    pub builtin: Vec<AdapterRun>,
    /// The kernels read from the directory.
    pub changed: Vec<AdapterRun>,
}

/// Runs `cases` `rounds` times on each side.
pub fn run_comparison(
    adapter: &wgpu::Adapter,
    settings: &Settings,
    cases: &[Case],
    directory: &Path,
    rounds: u32,
    progress: &Progress,
) -> BenchResult<Comparison> {
    if !directory.is_dir() {
        return Err(format!("--compare-shaders {}: not a directory", directory.display()).into());
    }
    let builtin_ctx = GpuContext::from_adapter(adapter)?;
    let changed_ctx = GpuContext::from_adapter(adapter)?;
    changed_ctx.set_shader_directory(directory)?;
    let mut comparison = Comparison {
        builtin: Vec::new(),
        changed: Vec::new(),
    };
    for round in 0..rounds {
        progress.note(&format!("round {} of {rounds}", round + 1));
        let builtin_first = round % 2 == 0;
        for case in cases {
            for builtin in [builtin_first, !builtin_first] {
                let (ctx, runs) = if builtin {
                    (&builtin_ctx, &mut comparison.builtin)
                } else {
                    (&changed_ctx, &mut comparison.changed)
                };
                runs.push(run_adapter(
                    ctx,
                    settings,
                    std::slice::from_ref(case),
                    progress,
                )?);
            }
        }
    }
    Ok(comparison)
}

impl Comparison {
    /// One row a case, and with `--breakdown` one a dispatch under it: each side's GPU median
    /// of every round, the median of those (the upper one of an even count, as elsewhere),
    /// and the ratio built-in / changed (above 1: the directory's kernels are faster).
    pub fn table(&self, directory: &Path) -> Table {
        let header = vec![
            "case".to_string(),
            "built-in us (rounds)".to_string(),
            format!("{} us (rounds)", directory.display()),
            "built-in median us".to_string(),
            "changed median us".to_string(),
            "built-in / changed".to_string(),
            "checks".to_string(),
        ];
        let mut rows = Vec::new();
        let mut labels = std::collections::BTreeSet::new();
        let first_of_each = self.builtin.iter().flat_map(|run| &run.cases);
        for case in first_of_each.filter(|case| labels.insert(case.label())) {
            let label = case.label();
            let passed = [&self.builtin, &self.changed]
                .into_iter()
                .flatten()
                .flat_map(|run| &run.cases)
                .filter(|other| other.label() == label)
                .all(|other| other.check.passed());
            let check = if passed { "ok" } else { "FAILED" };
            rows.push(self.row(label.clone(), &label, check, |c| Some(c.gpu_median_us)));
            let dispatches = case.breakdown.as_ref().map_or(&[][..], |b| &b.dispatches);
            for (index, dispatch) in dispatches.iter().enumerate() {
                let name = format!("  {index}: {} ({})", dispatch.part, dispatch.entry);
                rows.push(self.row(name, &label, "", move |c| {
                    let dispatch = c.breakdown.as_ref()?.dispatches.get(index)?;
                    Some(dispatch.gpu_median_us)
                }));
            }
        }
        Table { header, rows }
    }

    /// The row `name` of the time `time` gives for the case labelled `label`.
    fn row(
        &self,
        name: String,
        label: &str,
        check: &str,
        time: impl Fn(&CaseResult) -> Option<f64>,
    ) -> Vec<String> {
        let times = |runs: &[AdapterRun]| -> Vec<f64> {
            runs.iter()
                .flat_map(|run| &run.cases)
                .filter(|case| case.label() == label)
                .filter_map(&time)
                .collect()
        };
        let (builtin, changed) = (times(&self.builtin), times(&self.changed));
        let median = |times: &[f64]| TimeSummary::of(times).map(|summary| summary.median);
        let (builtin_median, changed_median) = (median(&builtin), median(&changed));
        vec![
            name,
            list(&builtin),
            list(&changed),
            builtin_median.map_or("-".to_string(), digits3),
            changed_median.map_or("-".to_string(), digits3),
            match (builtin_median, changed_median) {
                (Some(b), Some(c)) if c > 0.0 => format!("{:.2}", b / c),
                _ => "-".to_string(),
            },
            check.to_string(),
        ]
    }

    /// Every run of both sides, for the report's failure count.
    pub fn into_runs(self) -> Vec<AdapterRun> {
        self.builtin.into_iter().chain(self.changed).collect()
    }
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|&v| digits3(v))
        .collect::<Vec<_>>()
        .join(", ")
}
