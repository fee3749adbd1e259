//! `--compare-shaders DIR`: the crate's kernels against the WGSL files of DIR on one adapter, in
//! one process. Two contexts on the adapter, the second reading its kernels from DIR
//! (`GpuContext::set_shader_directory`); each round runs every case on both sides, one right
//! after the other (seconds apart: a busy machine's speed drifts over minutes, and between
//! processes by up to 2x), the two sides in turn going first, so that neither the drift nor
//! the order decides a comparison. The stream kernel (the crate's `shaders/stream.wgsl`, built
//! in: a changed copy in DIR is not read) is measured once before the first round and once
//! after the last, and every run's "% of stream" is taken against the faster.

use std::path::Path;

use wgpu_batchnorm::GpuContext;

use super::case::Case;
use super::cli::Settings;
use super::report::{digits3, AdapterRun, CaseResult, Table};
use super::runner::{measure_stream, measure_stream_again, run_adapter, Progress};
use super::timing::{BenchResult, TimeSummary};

/// One case's runs on both sides, a run a round each.
pub struct CaseRounds {
    /// `train-forward 64x64x112x112 NCHW`, as `Case::label`.
    pub label: String,
    /// On the crate's kernels.
    pub builtin: Vec<AdapterRun>,
    /// On the kernels read from the directory.
    pub changed: Vec<AdapterRun>,
}

/// Runs each of `cases` `rounds` times on each side.
pub fn run_comparison(
    adapter: &wgpu::Adapter,
    settings: &Settings,
    cases: &[Case],
    directory: &Path,
    rounds: u32,
    progress: &Progress,
) -> BenchResult<Vec<CaseRounds>> {
    if !directory.is_dir() {
        return Err(format!("--compare-shaders {}: not a directory", directory.display()).into());
    }
    let builtin_ctx = GpuContext::from_adapter(adapter)?;
    let changed_ctx = GpuContext::from_adapter(adapter)?;
    changed_ctx.set_shader_directory(directory)?;
    progress.note(&format!("Running on {}", builtin_ctx.adapter()));
    let stream = measure_stream(&builtin_ctx, settings, progress)?;
    let mut compared: Vec<CaseRounds> = cases
        .iter()
        .map(|case| CaseRounds {
            label: case.label(),
            builtin: Vec::new(),
            changed: Vec::new(),
        })
        .collect();
    for round in 0..rounds {
        progress.note(&format!("round {} of {rounds}", round + 1));
        let builtin_first = round % 2 == 0;
        for (case, rounds_of_case) in cases.iter().zip(&mut compared) {
            for builtin in [builtin_first, !builtin_first] {
                let (ctx, runs) = if builtin {
                    (&builtin_ctx, &mut rounds_of_case.builtin)
                } else {
                    (&changed_ctx, &mut rounds_of_case.changed)
                };
                runs.push(run_adapter(
                    ctx,
                    settings,
                    std::slice::from_ref(case),
                    &stream,
                    progress,
                )?);
            }
        }
    }
    if let Some(later) = measure_stream_again(&builtin_ctx, settings, progress) {
        for run in compared
            .iter_mut()
            .flat_map(|case| case.builtin.iter_mut().chain(&mut case.changed))
        {
            run.take_faster_stream(&later);
        }
    }
    Ok(compared)
}

/// One row a case, and with `--breakdown` one a dispatch under it: each side's GPU median of
/// every round, the median of those (the upper one of an even count, as elsewhere), and the
/// ratio built-in / changed (above 1: the directory's kernels are faster). The checks column
/// says FAILED where any run of either side failed its check or could not run, "skipped"
/// where one was left out by choice (`--max-elements`) or for a device too small.
pub fn table(compared: &[CaseRounds], directory: &Path) -> Table {
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
    for case in compared {
        let runs = || case.builtin.iter().chain(&case.changed);
        let failed = runs().any(|run| {
            run.cases.iter().any(|result| !result.check.passed())
                || run.skipped.iter().any(|skip| skip.failure)
        });
        let skipped = runs().any(|run| !run.skipped.is_empty());
        let check = match (failed, skipped) {
            (true, _) => "FAILED",
            (false, true) => "skipped",
            (false, false) => "ok",
        };
        rows.push(row(case, case.label.clone(), check, |c| {
            Some(c.gpu_median_us)
        }));
        let first_result = runs().flat_map(|run| &run.cases).next();
        let dispatches = first_result
            .and_then(|result| result.breakdown.as_ref())
            .map_or(&[][..], |breakdown| &breakdown.dispatches);
        for (index, dispatch) in dispatches.iter().enumerate() {
            let name = format!("  {index}: {} ({})", dispatch.part, dispatch.entry);
            rows.push(row(case, name, "", move |c| {
                let dispatch = c.breakdown.as_ref()?.dispatches.get(index)?;
                Some(dispatch.gpu_median_us)
            }));
        }
    }
    Table { header, rows }
}

/// The row `name`: the time `time` gives of each run of `case` that has one, on both sides.
fn row(
    case: &CaseRounds,
    name: String,
    check: &str,
    time: impl Fn(&CaseResult) -> Option<f64>,
) -> Vec<String> {
    let times = |runs: &[AdapterRun]| -> Vec<f64> {
        runs.iter()
            .flat_map(|run| &run.cases)
            .filter_map(&time)
            .collect()
    };
    let (builtin, changed) = (times(&case.builtin), times(&case.changed));
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

/// Every run of both sides, for the report (whose failure count counts a case once).
pub fn into_runs(compared: Vec<CaseRounds>) -> Vec<AdapterRun> {
    compared
        .into_iter()
        .flat_map(|case| case.builtin.into_iter().chain(case.changed))
        .collect()
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|&v| digits3(v))
        .collect::<Vec<_>>()
        .join(", ")
}
