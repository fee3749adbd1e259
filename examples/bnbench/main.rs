//! `bnbench`: times this crate's batch norm (training forward, inference forward, backward
//! through the batch statistics; channels-first and channels-last; f32, f16 and bf16 storage;
//! with or without a fused ReLU or add-ReLU) on one or more wgpu
//! adapters, compares each case's bandwidth with a streaming kernel on the same adapter, checks
//! every timed result against the f64 CPU reference, measures the host's cost of a call, and
//! writes a terminal table, JSON, CSV, Markdown and an SVG chart. `--chain` times instead the
//! batch norms of a whole network's training step.
//!
//! ```text
//! cargo run --release --example bnbench -- --quick --json results.json
//! cargo run --release --example bnbench -- --backend gl --shape 32,64,56,56 --svg chart.svg
//! cargo run --release --example bnbench -- --all --markdown results.md
//! cargo run --release --example bnbench -- --dtype f16 --epilogue add-relu --shape 64,256,56,56
//! cargo run --release --example bnbench -- --chain resnet50 --batch 32
//! cargo run --release --example bnbench -- --shape 64,1024,14,14 --compare-shaders my-shaders/
//! ```
//!
//! The modules, in the order a run uses them: [`cli`] (options and settings), [`case`] (what
//! one case is, and the list of them), [`suite`] (the shapes, and the GPU state a case runs
//! on), [`chain`] (a network's batch norms as one training step, `--chain`), [`runner`] (one
//! adapter's run), [`compare`] (`--compare-shaders`), [`roofline`] (the stream kernel),
//! [`timing`] (timestamps, wall clock, host latency), [`breakdown`] (each dispatch's time,
//! `--breakdown`), [`check`] (the CPU reference), [`report`] (the results and their formats).
//! `benches/batch_norm.rs` shares `case`, `suite` and `timing`; `tests/bnbench_outputs.rs` runs
//! [`run`] itself. That test includes this file as a module, so the modules name each other
//! with `super::` and `self::`, never `crate::`.

mod breakdown;
pub mod case;
pub mod chain;
mod check;
pub mod cli;
mod compare;
pub mod report;
mod roofline;
mod runner;
mod suite;
pub mod timing;

use std::process::ExitCode;

use clap::Parser;
use wgpu_batchnorm::gpu::list_adapters;
use wgpu_batchnorm::{AdapterSummary, BatchNormError, GpuContext};

use self::cli::Cli;
use self::report::Report;
use self::runner::Progress;
use self::timing::BenchResult;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(Some(report)) if report.failures() > 0 => {
            eprintln!(
                "bnbench: {} case(s) failed their check or could not run (see above)",
                report.failures()
            );
            ExitCode::FAILURE
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bnbench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Lists the adapters, runs the suite on the chosen ones, prints the tables and writes the
/// files asked for. Returns the report, or `None` for `--list`.
pub fn run(cli: &Cli) -> BenchResult<Option<Report>> {
    check_output_folders(cli)?;
    let options = cli.adapter_options();
    let adapters = list_adapters(&options);
    let chosen = if cli.all { adapters.len() } else { 1 };
    println!("Adapters (best first; * runs):");
    for (index, adapter) in adapters.iter().enumerate() {
        let features = adapter.features();
        let timestamps = features.contains(wgpu::Features::TIMESTAMP_QUERY);
        let inside_passes = features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);
        println!(
            "  {} {}  timestamps: {}, inside passes: {}",
            if index < chosen && !cli.list {
                "*"
            } else {
                " "
            },
            AdapterSummary::from(adapter.get_info()),
            if timestamps { "yes" } else { "no" },
            if timestamps && inside_passes {
                "yes"
            } else {
                "no"
            }
        );
    }
    if cli.list {
        return Ok(None);
    }
    if adapters.is_empty() {
        return Err(BatchNormError::NoAdapter {
            filter: options.describe(),
        }
        .into());
    }
    let settings = cli.settings();
    let (cases, items_per_adapter) = match settings.chain {
        Some(_) => (Vec::new(), settings.layouts.len()),
        None => {
            let cases = case::cases(&case::Selection {
                shapes: &settings.shapes,
                layouts: &settings.layouts,
                dtypes: &settings.dtypes,
                epilogues: &settings.epilogues,
                ops: &settings.ops,
            });
            let count = cases.len();
            (cases, count)
        }
    };
    if let Some(directory) = &cli.compare_shaders {
        let progress = Progress::new(2 * cli.rounds as usize * items_per_adapter);
        let compared = compare::run_comparison(
            &adapters[0],
            &settings,
            &cases,
            directory,
            cli.rounds,
            &progress,
        )?;
        progress.finish();
        println!(
            "\nGPU median time of each round, built-in kernels against {} (ratio above 1: the \
             directory's kernels are faster)\n",
            directory.display()
        );
        print!("{}", compare::table(&compared, directory).text());
        return Ok(Some(Report::new(settings, compare::into_runs(compared))));
    }
    let progress = Progress::new(chosen * items_per_adapter);
    let mut runs = Vec::new();
    for adapter in adapters.iter().take(chosen) {
        let ctx = GpuContext::from_adapter(adapter)?;
        progress.note(&format!("Running on {}", ctx.adapter()));
        let stream = runner::measure_stream(&ctx, &settings, &progress)?;
        let mut run = runner::run_adapter(&ctx, &settings, &cases, &stream, &progress)?;
        if let Some(later) = runner::measure_stream_again(&ctx, &settings, &progress) {
            run.take_faster_stream(&later);
        }
        runs.push(run);
    }
    progress.finish();
    let report = Report::new(settings, runs);
    print!("{}", report::terminal(&report));
    if let Some(path) = &cli.json {
        report::write_json(&report, path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &cli.csv {
        report::write_csv(&report, path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &cli.markdown {
        std::fs::write(path, report::markdown(&report))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &cli.svg {
        report::write_svg(&report, path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Some(report))
}

/// Refuses, before any GPU work, an output file whose folder does not exist.
fn check_output_folders(cli: &Cli) -> BenchResult<()> {
    for path in [&cli.json, &cli.csv, &cli.markdown, &cli.svg]
        .into_iter()
        .flatten()
    {
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
        if folder.is_some_and(|folder| !folder.is_dir()) {
            return Err(format!("{}: its folder does not exist", path.display()).into());
        }
    }
    Ok(())
}
