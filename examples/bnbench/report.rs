//! The results of a run and every way they are written: a terminal table per adapter (and a
//! side-by-side summary when several ran), JSON (serde_json), CSV (csv), Markdown, and an SVG
//! chart (plotters).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use plotters::prelude::*;
use serde::Serialize;
use wgpu_batchnorm::AdapterSummary;

use super::breakdown::{Breakdown, BreakdownStatus};
use super::case::{Case, DTypeChoice, EpilogueChoice, LayoutChoice, Op};
use super::chain::ChainResult;
use super::check::Check;
use super::cli::Settings;
use super::roofline::Roofline;
use super::runner::{BACK_TO_BACK_CALLS, BACK_TO_BACK_SUBMISSIONS};
use super::suite::Workload;
use super::timing::{noted_copy_spread, BenchResult, TimeSummary, TimingMethod};

/// Everything one `bnbench` run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Always `bnbench`.
    pub tool: &'static str,
    /// The crate version measured.
    pub version: &'static str,
    /// When the run ended, UTC, ISO 8601.
    pub date_utc: String,
    /// What the run did.
    pub settings: Settings,
    /// One entry per adapter, in the order they ran.
    pub runs: Vec<AdapterRun>,
}

impl Report {
    /// A report dated now.
    pub fn new(settings: Settings, runs: Vec<AdapterRun>) -> Self {
        Report {
            tool: "bnbench",
            version: env!("CARGO_PKG_VERSION"),
            date_utc: utc_now(),
            settings,
            runs,
        }
    }

    /// Cases that failed their check or could not run (skips for size are not failures), a
    /// case counted once an adapter however many of its runs failed (`--compare-shaders` runs
    /// each case 2 x --rounds times on one adapter; adapters of the same name and backend count
    /// as one, so two identical GPUs under `--all` too); and chains that failed their sample.
    pub fn failures(&self) -> usize {
        let mut failed_cases = HashSet::new();
        let mut failed_chains = 0;
        for run in &self.runs {
            let adapter = (&run.adapter.name, &run.adapter.backend);
            let failed = run
                .cases
                .iter()
                .filter(|c| !c.check.passed())
                .map(CaseResult::label);
            let not_run = run.skipped.iter().filter(|s| s.failure).map(Skipped::label);
            failed_cases.extend(failed.chain(not_run).map(|label| (adapter, label)));
            failed_chains += run.chains.iter().filter(|c| !c.passed()).count();
        }
        failed_cases.len() + failed_chains
    }
}

/// The adapter a run used.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterInfo {
    /// Adapter name.
    pub name: String,
    /// Backend (Vulkan, Metal, Dx12, Gl).
    pub backend: String,
    /// Discrete, integrated, virtual or CPU.
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
}

impl From<&AdapterSummary> for AdapterInfo {
    fn from(summary: &AdapterSummary) -> Self {
        AdapterInfo {
            name: summary.name.clone(),
            backend: format!("{:?}", summary.backend),
            device_type: format!("{:?}", summary.device_type),
            driver: summary.driver.clone(),
        }
    }
}

impl AdapterInfo {
    /// `name (Backend)`, for column headers and legends.
    pub fn short(&self) -> String {
        format!("{} ({})", self.name, self.backend)
    }
}

/// One adapter's results.
#[derive(Debug, Serialize)]
pub struct AdapterRun {
    /// The adapter.
    pub adapter: AdapterInfo,
    /// How GPU times were measured.
    pub timing_method: TimingMethod,
    /// Whether each case's dispatches were timed too (`--breakdown`).
    pub breakdown: BreakdownStatus,
    /// The streaming kernel's bandwidth (the roofline): the faster of its measurements.
    pub stream: Roofline,
    /// Each measurement of the stream kernel's bandwidth, in order (before the cases, after
    /// them), GB/s.
    pub stream_measurements_gbps: Vec<f64>,
    /// The cases that ran, in suite order.
    pub cases: Vec<CaseResult>,
    /// The cases that did not run, with why.
    pub skipped: Vec<Skipped>,
    /// The chain's results, one per layout (`--chain`; the suite's cases do not run then).
    pub chains: Vec<ChainResult>,
}

impl AdapterRun {
    /// Adds `later`, the stream kernel measured again after the cases, and takes the faster of
    /// the measurements as the roofline of every case's "% of stream". A busy machine's speed
    /// drifts (on a CPU adapter the stream kernel measured 2.6 GB/s before the cases of a small
    /// run and 4.2 after them, seconds apart), and a slow measurement would flatter every case.
    pub fn take_faster_stream(&mut self, later: &Roofline) {
        self.stream_measurements_gbps.push(later.gbps);
        if later.gbps > self.stream.gbps {
            self.stream = later.clone();
            for case in &mut self.cases {
                case.percent_of_stream = percent_of_stream(case.gbps, later.gbps);
            }
        }
    }
}

/// `gbps` as a percentage of the stream kernel's `stream_gbps`.
fn percent_of_stream(gbps: f64, stream_gbps: f64) -> f64 {
    100.0 * gbps / stream_gbps
}

/// Whether a case's result matched the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckStatus {
    /// Every error within its bound.
    Passed,
    /// Some error beyond its bound: the time is of a wrong result.
    Failed,
}

impl CheckStatus {
    /// True for [`CheckStatus::Passed`].
    pub fn passed(self) -> bool {
        self == CheckStatus::Passed
    }
}

impl std::fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckStatus::Passed => "ok",
            CheckStatus::Failed => "FAILED",
        })
    }
}

/// A case's GPU measurements (see the fields of [`CaseResult`]).
pub struct GpuTimes {
    /// One call per submission, in seconds.
    pub single: TimeSummary,
    /// The median of each input copy's calls, in seconds, where every copy ran at least
    /// `MIN_RUNS_PER_COPY` times (`timing::copy_medians`); `None` otherwise, or with one copy.
    pub copy_medians: Option<Vec<f64>>,
    /// Per call of calls recorded into one submission, in seconds (`None`:
    /// `--no-back-to-back`).
    pub back_to_back: Option<f64>,
    /// Each dispatch's time (`--breakdown`).
    pub breakdown: Option<Breakdown>,
}

/// A case's host measurements, in seconds (see the fields of [`CaseResult`]).
pub struct HostTimes {
    /// Wall time per call of calls submitted back to back.
    pub back_to_back: f64,
    /// Wall time of one call submitted and awaited.
    pub single: f64,
    /// Thread CPU time to record one call of the layer.
    pub record: f64,
    /// Thread CPU time to finish and submit it.
    pub submit: f64,
    /// Thread CPU time to record one functional call.
    pub record_unprepared: f64,
}

/// One case's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// The operation.
    pub op: Op,
    /// Memory order.
    pub layout: LayoutChoice,
    /// Storage type.
    pub dtype: DTypeChoice,
    /// Epilogue.
    pub epilogue: EpilogueChoice,
    /// The memory order as NCHW, NHWC, NC...
    pub format: String,
    /// Logical shape `[N, C, ...]`.
    pub shape: Vec<usize>,
    /// Number of elements.
    pub elements: usize,
    /// Least bytes moved (each input read once, each output written once).
    pub min_bytes: u64,
    /// Copies of the input that rotated.
    pub copies: usize,
    /// Bytes the rotating copies held together, MiB.
    pub rotation_mib: f64,
    /// Median GPU time of one operation, microseconds.
    pub gpu_median_us: f64,
    /// Minimum GPU time, microseconds.
    pub gpu_min_us: f64,
    /// The median time of each input copy's runs (run k reads copy k mod `copies`; GPU time, or
    /// wall time as `gpu_median_us`), microseconds, where there are two copies or more and
    /// each ran at least `MIN_RUNS_PER_COPY` times. The copies hold the same values and run the
    /// same dispatches: a spread is not the kernels' (docs/performance.md, section 50).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_copy_medians_us: Option<Vec<f64>>,
    /// GPU time of `BACK_TO_BACK_CALLS` identical calls recorded into one submission (from the
    /// beginning of the first call's pass to the end of the last's) over their number,
    /// microseconds (median of a few submissions): the kernels' time without the per-call
    /// floor of a submission of its own. Absent with `--no-back-to-back`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_back_to_back_us: Option<f64>,
    /// `min_bytes` over the median GPU time, GB/s.
    pub gbps: f64,
    /// `gbps` as a percentage of the stream kernel's.
    pub percent_of_stream: f64,
    /// Wall time per call of the layer's calls submitted back to back, microseconds.
    pub host_back_to_back_us: f64,
    /// Median wall time of one call submitted and awaited, microseconds.
    pub host_single_us: f64,
    /// Median thread CPU time to record one call of the layer (dispatches prepared),
    /// microseconds.
    pub host_record_us: f64,
    /// Median thread CPU time to finish and submit that call's encoder, microseconds.
    pub host_submit_us: f64,
    /// Median thread CPU time to record one functional call, which prepares its dispatches
    /// (uniforms, bind groups, outputs) every time, microseconds.
    pub host_record_unprepared_us: f64,
    /// Time of the CPU reference (f64), milliseconds.
    pub reference_ms: f64,
    /// Largest |GPU - reference| of y (forwards) or dx (backward).
    pub max_abs_error: f64,
    /// The bound `max_abs_error` was held to.
    pub error_bound: f64,
    /// Largest |GPU - reference| of dgamma and dbeta (backward only).
    pub params_max_abs_error: Option<f64>,
    /// The bound `params_max_abs_error` was held to (backward only).
    pub params_error_bound: Option<f64>,
    /// Whether the result matched the reference.
    pub check: CheckStatus,
    /// Each dispatch's GPU time (`--breakdown`, where the adapter can).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<Breakdown>,
}

impl CaseResult {
    /// Gathers one case's measurements.
    pub fn new(
        workload: &Workload,
        gpu: GpuTimes,
        stream_gbps: f64,
        host: HostTimes,
        check: Check,
    ) -> Self {
        let case = workload.case();
        let GpuTimes {
            single: gpu,
            copy_medians,
            back_to_back,
            breakdown,
        } = gpu;
        let gbps = case.min_bytes() as f64 / gpu.median / 1e9;
        CaseResult {
            op: case.op,
            layout: case.layout,
            dtype: case.dtype,
            epilogue: case.epilogue,
            format: case.format(),
            shape: case.shape.clone(),
            elements: case.elements(),
            min_bytes: case.min_bytes(),
            copies: workload.copies(),
            rotation_mib: workload.rotation_bytes() as f64 / (1 << 20) as f64,
            gpu_median_us: gpu.median * 1e6,
            gpu_min_us: gpu.min * 1e6,
            gpu_copy_medians_us: copy_medians
                .map(|medians| medians.iter().map(|seconds| seconds * 1e6).collect()),
            gpu_back_to_back_us: back_to_back.map(|seconds| seconds * 1e6),
            gbps,
            percent_of_stream: percent_of_stream(gbps, stream_gbps),
            host_back_to_back_us: host.back_to_back * 1e6,
            host_single_us: host.single * 1e6,
            host_record_us: host.record * 1e6,
            host_submit_us: host.submit * 1e6,
            host_record_unprepared_us: host.record_unprepared * 1e6,
            reference_ms: check.reference_ms,
            max_abs_error: check.max_abs_error,
            error_bound: check.bound,
            params_max_abs_error: check.params_max_abs_error,
            params_error_bound: check.params_bound,
            check: if check.passed {
                CheckStatus::Passed
            } else {
                CheckStatus::Failed
            },
            breakdown,
        }
    }

    /// `train-forward 64x64x112x112 NCHW`, as [`Case::label`].
    pub fn label(&self) -> String {
        case_label(self.op, self.layout, &self.shape, self.dtype, self.epilogue)
    }
}

/// The label of the case of these fields, as [`Case::label`] (a result and a skip keep the
/// case's fields, not the case).
fn case_label(
    op: Op,
    layout: LayoutChoice,
    shape: &[usize],
    dtype: DTypeChoice,
    epilogue: EpilogueChoice,
) -> String {
    Case {
        op,
        layout,
        shape: shape.to_vec(),
        dtype,
        epilogue,
    }
    .label()
}

/// A case that did not run.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    /// The operation.
    pub op: Op,
    /// Memory order.
    pub layout: LayoutChoice,
    /// Logical shape.
    pub shape: Vec<usize>,
    /// Storage type.
    pub dtype: DTypeChoice,
    /// Epilogue.
    pub epilogue: EpilogueChoice,
    /// Why it did not run.
    pub reason: String,
    /// True when this is an error, not a choice (`--max-elements`) or a device too small.
    pub failure: bool,
}

impl Skipped {
    /// Records `case` as not run.
    pub fn new(case: &Case, reason: String, failure: bool) -> Self {
        Skipped {
            op: case.op,
            layout: case.layout,
            shape: case.shape.clone(),
            dtype: case.dtype,
            epilogue: case.epilogue,
            reason,
            failure,
        }
    }

    /// `train-forward 64x64x112x112 NCHW`, as [`Case::label`].
    pub fn label(&self) -> String {
        case_label(self.op, self.layout, &self.shape, self.dtype, self.epilogue)
    }
}

/// Rows of text cells under a header, rendered aligned for the terminal or as Markdown.
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns padded to their widest cell; the first column left-aligned, the others right.
    pub fn text(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|col| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|row| row[col].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (col, cell) in row.iter().enumerate() {
                if col == 0 {
                    let _ = write!(out, "{cell:<w$}", w = widths[col]);
                } else {
                    let _ = write!(out, "  {cell:>w$}", w = widths[col]);
                }
            }
            out.push('\n');
        }
        out
    }

    fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut out = line(&self.header);
        let rule: Vec<String> = (0..self.header.len())
            .map(|col| if col == 0 { "---" } else { "---:" }.to_string())
            .collect();
        out += &line(&rule);
        for row in &self.rows {
            out += &line(row);
        }
        out
    }
}

/// A number with at least three significant digits (all of its integer digits).
pub fn digits3(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The per-case table of one adapter.
fn case_table(run: &AdapterRun) -> Table {
    let header = [
        "case",
        "GPU median us",
        "GPU min us",
        "GPU b2b us",
        "GB/s",
        "% stream",
        "host b2b us",
        "host 1 call us",
        "record us",
        "submit us",
        "record unprep. us",
        "reference ms",
        "max error",
        "check",
    ];
    let rows = run
        .cases
        .iter()
        .map(|case| {
            let error = match case.params_max_abs_error {
                Some(params) => format!("{:.1e} (dγ,dβ {:.1e})", case.max_abs_error, params),
                None => format!("{:.1e}", case.max_abs_error),
            };
            vec![
                case.label(),
                digits3(case.gpu_median_us),
                digits3(case.gpu_min_us),
                case.gpu_back_to_back_us.map_or("-".to_string(), digits3),
                digits3(case.gbps),
                format!("{:.0}%", case.percent_of_stream),
                digits3(case.host_back_to_back_us),
                digits3(case.host_single_us),
                digits3(case.host_record_us),
                digits3(case.host_submit_us),
                digits3(case.host_record_unprepared_us),
                format!("{:.1}", case.reference_ms),
                error,
                case.check.to_string(),
            ]
        })
        .collect();
    Table {
        header: header.iter().map(|h| h.to_string()).collect(),
        rows,
    }
}

/// Every case label of the report, in the order they first ran.
fn case_labels(report: &Report) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for run in &report.runs {
        for case in &run.cases {
            let label = case.label();
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
    }
    labels
}

/// The side-by-side summary: GPU median time and percent of stream per case and adapter.
fn summary_table(report: &Report) -> Table {
    let labels = case_labels(report);
    let mut header = vec!["case".to_string()];
    header.extend(
        report
            .runs
            .iter()
            .map(|run| format!("{} us (% stream)", run.adapter.short())),
    );
    let rows = labels
        .iter()
        .map(|label| {
            let mut row = vec![label.clone()];
            row.extend(report.runs.iter().map(|run| {
                run.cases.iter().find(|case| &case.label() == label).map_or(
                    "-".to_string(),
                    |case| {
                        format!(
                            "{} ({:.0}%)",
                            digits3(case.gpu_median_us),
                            case.percent_of_stream
                        )
                    },
                )
            }));
            row
        })
        .collect();
    Table { header, rows }
}

/// What a run's heading says: adapter, timing, roofline.
fn run_heading(run: &AdapterRun, settings: &Settings) -> Vec<String> {
    let a = &run.adapter;
    let rotation = if settings.quick {
        format!(
            "{} MiB (--quick; the full suite rotates 128 MiB)",
            settings.rotate_bytes >> 20
        )
    } else {
        format!("{} MiB", settings.rotate_bytes >> 20)
    };
    let adapter = format!(
        "Adapter: {} ({}, {}, driver {})",
        a.name, a.backend, a.device_type, a.driver
    );
    let measurements: Vec<String> = run
        .stream_measurements_gbps
        .iter()
        .map(|gbps| format!("{gbps:.1}"))
        .collect();
    let stream = format!(
        "Stream kernel (vec4 read one, write one): {:.1} GB/s, the fastest of its measurements \
         before and after the run ({} GB/s), best of {} launch shapes ({} workgroups), 2 x {:.0} MiB",
        run.stream.gbps,
        measurements.join(", "),
        run.stream.launches.len(),
        run.stream.workgroups,
        run.stream.buffer_bytes as f64 / (1 << 20) as f64
    );
    if let Some(chain) = run.chains.first() {
        return vec![
            adapter,
            format!(
                "Chain: {}'s {} batch norms at batch {}, forwards then backwards recorded into one \
                 encoder per step and submitted once; {} steps per measurement after 2 awaited steps",
                chain.chain.name(),
                chain.layers,
                chain.batch,
                chain.steps
            ),
            format!(
                "GPU per step: {}, from the first forward's pass to the last backward's",
                run.timing_method.describe()
            ),
            stream,
            "host record, submit: thread CPU time to record a step (each layer's calls prepared \
             by earlier steps) and to finish and submit it (medians); b2b wall: wall time per \
             step of steps submitted back to back; sample: the last layer's forward and the \
             first layer's backward of the last step, against the f64 CPU reference"
                .to_string(),
        ];
    }
    vec![
        adapter,
        format!(
            "Timing: {}; {} runs after {} warm-up runs and {} ms of back-to-back runs; inputs rotate over at least {}",
            run.timing_method.describe(),
            settings.case_reps(),
            settings.warmup,
            settings.warmup_ms,
            rotation
        ),
        stream,
        if settings.back_to_back {
            format!(
                "GPU b2b: {BACK_TO_BACK_CALLS} identical calls recorded into one submission, {}, \
                 divided by {BACK_TO_BACK_CALLS} (median of {BACK_TO_BACK_SUBMISSIONS} submissions): \
                 the kernels without the per-call floor of a submission of their own",
                match run.timing_method {
                    TimingMethod::GpuTimestamps => {
                        "GPU time from the beginning of the first call's pass to the end of the last's"
                    }
                    TimingMethod::WallClock => "WALL time of the awaited submission",
                }
            )
        } else {
            "GPU b2b: not measured (--no-back-to-back)".to_string()
        },
        "GB/s at the minimum bytes (each tensor read or written once at its storage size: 8 per \
         element forward, 12 backward in f32; the shortcut, dz and the backward's mask add theirs) \
         over the median GPU time; \
         host b2b: wall time per call of a layer's calls submitted back to back; host 1 call: \
         one call submitted and awaited (median); record, submit: thread CPU time to record one \
         call of a layer (its dispatches prepared by earlier calls) and to submit it; record \
         unprep.: to record a functional call, which prepares its dispatches every time \
         (medians); max error: against the f64 CPU reference"
            .to_string(),
    ]
}

/// The `--breakdown` section of one adapter: what it measured, and a table with each case's
/// whole pass and its dispatches; `None` when not asked for.
fn breakdown_section(run: &AdapterRun, settings: &Settings) -> Option<(String, Option<Table>)> {
    let note = match &run.breakdown {
        BreakdownStatus::NotAsked => return None,
        BreakdownStatus::Unavailable { reason } => {
            return Some((
                format!("Per-dispatch GPU time (--breakdown): NOT MEASURED: {reason}"),
                None,
            ));
        }
        BreakdownStatus::Measured => format!(
            "Per-dispatch GPU time (--breakdown): timestamps written between the dispatches of \
             each case's pass; a dispatch's time runs from the end of the previous one (or the \
             pass's beginning) to its own end; medians of {} runs, each its own submission. The \
             timestamps between dispatches add waits of their own: the parts need not sum to \
             the whole pass, with or without them",
            settings.case_reps()
        ),
    };
    let mut rows = Vec::new();
    for case in &run.cases {
        let Some(breakdown) = &case.breakdown else {
            continue;
        };
        let whole = |what: &str, us: f64| {
            vec![
                String::new(),
                what.to_string(),
                String::new(),
                String::new(),
                digits3(us),
            ]
        };
        let mut first = whole("whole pass, no inner timestamps", case.gpu_median_us);
        first[0] = case.label();
        rows.push(first);
        rows.push(whole("whole pass, with them", breakdown.pass_median_us));
        for (k, dispatch) in breakdown.dispatches.iter().enumerate() {
            rows.push(vec![
                String::new(),
                format!("{k}: {}", dispatch.part),
                dispatch.entry.to_string(),
                dispatch.workgroups.to_string(),
                digits3(dispatch.gpu_median_us),
            ]);
        }
    }
    let header = [
        "case",
        "dispatch",
        "entry point",
        "workgroups",
        "GPU median us",
    ];
    let table = Table {
        header: header.iter().map(|h| h.to_string()).collect(),
        rows,
    };
    Some((note, Some(table)))
}

/// The chain's table of one adapter: a row per layout.
fn chain_table(run: &AdapterRun) -> Table {
    let header = [
        "chain",
        "host record us",
        "host submit us",
        "GPU us",
        "host / GPU",
        "b2b wall us",
        "sample max error",
        "check",
    ];
    let rows = run
        .chains
        .iter()
        .map(|chain| {
            let error = chain
                .checks
                .iter()
                .map(|sample| sample.check.max_abs_error)
                .fold(0.0_f64, f64::max);
            vec![
                format!(
                    "{} {} batch {}",
                    chain.chain.name(),
                    chain.layout.name(),
                    chain.batch
                ),
                digits3(chain.host_record_us),
                digits3(chain.host_submit_us),
                digits3(chain.gpu_step_us),
                format!("{:.2}", chain.host_us() / chain.gpu_step_us),
                digits3(chain.back_to_back_us),
                format!("{error:.1e}"),
                if chain.passed() { "ok" } else { "FAILED" }.to_string(),
            ]
        })
        .collect();
    Table {
        header: header.iter().map(|h| h.to_string()).collect(),
        rows,
    }
}

/// The table of one adapter's run: the chain's or the cases'.
fn run_table(run: &AdapterRun) -> Table {
    if run.chains.is_empty() {
        case_table(run)
    } else {
        chain_table(run)
    }
}

/// A line for each case whose slowest input copy's median is `COPY_SPREAD_NOTED` times the
/// fastest's or more.
fn copy_spread_lines(run: &AdapterRun) -> Vec<String> {
    run.cases
        .iter()
        .filter_map(|case| copy_spread_line(&case.label(), case.gpu_copy_medians_us.as_deref()?))
        .collect()
}

/// The line for the case labelled `label` whose input copies' medians (microseconds) are
/// `medians`, where [`noted_copy_spread`] notes them.
pub fn copy_spread_line(label: &str, medians: &[f64]) -> Option<String> {
    let spread = noted_copy_spread(medians)?;
    let ((fast, fast_us), (slow, slow_us)) = (spread.fastest, spread.slowest);
    Some(format!(
        "input copies differ: {label}: copy {slow}'s median {} us, copy {fast}'s {} us \
         ({:.2}x, {} copies): the same values and dispatches, so not the kernels \
         (docs/performance.md, section 50)",
        digits3(slow_us),
        digits3(fast_us),
        spread.ratio(),
        medians.len(),
    ))
}

/// The lines under a run's table: input copies that differ, then cases that did not run.
fn note_lines(run: &AdapterRun) -> Vec<String> {
    let mut lines = copy_spread_lines(run);
    lines.extend(skipped_lines(run));
    lines
}

fn skipped_lines(run: &AdapterRun) -> Vec<String> {
    run.skipped
        .iter()
        .map(|s| {
            let what = if s.failure { "FAILED" } else { "skipped" };
            format!("{what}: {}: {}", s.label(), s.reason)
        })
        .collect()
}

/// The terminal report: a table per adapter, then the summary when several adapters ran.
pub fn terminal(report: &Report) -> String {
    let mut out = String::new();
    for run in &report.runs {
        out.push('\n');
        for line in run_heading(run, &report.settings) {
            out += &line;
            out.push('\n');
        }
        out.push('\n');
        out += &run_table(run).text();
        for line in note_lines(run) {
            out += &line;
            out.push('\n');
        }
        if let Some((note, table)) = breakdown_section(run, &report.settings) {
            out += &format!("\n{note}\n");
            if let Some(table) = table {
                out.push('\n');
                out += &table.text();
            }
        }
    }
    if report.runs.len() > 1 && report.settings.chain.is_none() {
        out += "\nSide by side (GPU median time):\n";
        out += &summary_table(report).text();
    }
    out
}

/// The Markdown report: the same tables.
pub fn markdown(report: &Report) -> String {
    let mut out = format!("# bnbench {} ({})\n", report.version, report.date_utc);
    for run in &report.runs {
        out += &format!("\n## {}\n\n", run.adapter.short());
        for line in run_heading(run, &report.settings) {
            out += &format!("- {line}\n");
        }
        out.push('\n');
        out += &run_table(run).markdown();
        let notes = note_lines(run);
        if !notes.is_empty() {
            out.push('\n');
            for line in notes {
                out += &format!("- {line}\n");
            }
        }
        if let Some((note, table)) = breakdown_section(run, &report.settings) {
            out += &format!("\n### Per dispatch\n\n{note}\n");
            if let Some(table) = table {
                out.push('\n');
                out += &table.markdown();
            }
        }
    }
    if report.runs.len() > 1 && report.settings.chain.is_none() {
        out += "\n## Side by side (GPU median time)\n\n";
        out += &summary_table(report).markdown();
    }
    out
}

/// Writes the report as pretty JSON.
pub fn write_json(report: &Report, path: &Path) -> BenchResult<()> {
    let file = std::fs::File::create(path)?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(file), report)?;
    Ok(())
}

/// One CSV row: a case on an adapter.
#[derive(Serialize)]
struct CsvRow<'a> {
    adapter: &'a str,
    backend: &'a str,
    timing_method: TimingMethod,
    stream_gbps: f64,
    op: Op,
    layout: LayoutChoice,
    dtype: DTypeChoice,
    epilogue: EpilogueChoice,
    format: &'a str,
    shape: String,
    elements: usize,
    gpu_median_us: f64,
    gpu_min_us: f64,
    gpu_back_to_back_us: Option<f64>,
    gbps: f64,
    percent_of_stream: f64,
    host_back_to_back_us: f64,
    host_single_us: f64,
    host_record_us: f64,
    host_submit_us: f64,
    host_record_unprepared_us: f64,
    reference_ms: f64,
    max_abs_error: f64,
    params_max_abs_error: Option<f64>,
    check: CheckStatus,
}

/// One CSV row of a chain run: a layout on an adapter.
#[derive(Serialize)]
struct ChainCsvRow<'a> {
    adapter: &'a str,
    backend: &'a str,
    timing_method: TimingMethod,
    chain: &'a str,
    layout: LayoutChoice,
    batch: usize,
    layers: usize,
    steps: usize,
    host_record_us: f64,
    host_submit_us: f64,
    gpu_step_us: f64,
    back_to_back_us: f64,
    passed: bool,
}

/// Writes one CSV row per adapter and case (or per adapter and layout of a chain), under a
/// header.
pub fn write_csv(report: &Report, path: &Path) -> BenchResult<()> {
    let mut writer = csv::Writer::from_path(path)?;
    for run in &report.runs {
        for chain in &run.chains {
            writer.serialize(ChainCsvRow {
                adapter: &run.adapter.name,
                backend: &run.adapter.backend,
                timing_method: run.timing_method,
                chain: chain.chain.name(),
                layout: chain.layout,
                batch: chain.batch,
                layers: chain.layers,
                steps: chain.steps,
                host_record_us: chain.host_record_us,
                host_submit_us: chain.host_submit_us,
                gpu_step_us: chain.gpu_step_us,
                back_to_back_us: chain.back_to_back_us,
                passed: chain.passed(),
            })?;
        }
        for case in &run.cases {
            writer.serialize(CsvRow {
                adapter: &run.adapter.name,
                backend: &run.adapter.backend,
                timing_method: run.timing_method,
                stream_gbps: run.stream.gbps,
                op: case.op,
                layout: case.layout,
                dtype: case.dtype,
                epilogue: case.epilogue,
                format: &case.format,
                shape: case
                    .shape
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join("x"),
                elements: case.elements,
                gpu_median_us: case.gpu_median_us,
                gpu_min_us: case.gpu_min_us,
                gpu_back_to_back_us: case.gpu_back_to_back_us,
                gbps: case.gbps,
                percent_of_stream: case.percent_of_stream,
                host_back_to_back_us: case.host_back_to_back_us,
                host_single_us: case.host_single_us,
                host_record_us: case.host_record_us,
                host_submit_us: case.host_submit_us,
                host_record_unprepared_us: case.host_record_unprepared_us,
                reference_ms: case.reference_ms,
                max_abs_error: case.max_abs_error,
                params_max_abs_error: case.params_max_abs_error,
                check: case.check,
            })?;
        }
    }
    writer.flush()?;
    Ok(())
}

/// Writes the chart: for each case, GB/s (left) and percent of the stream kernel (right), one
/// bar per adapter.
pub fn write_svg(report: &Report, path: &Path) -> BenchResult<()> {
    let labels = case_labels(report);
    // One series per adapter: a value per case label, `None` where the case did not run.
    let series = |value: fn(&CaseResult) -> f64| -> Vec<Vec<Option<f64>>> {
        report
            .runs
            .iter()
            .map(|run| {
                labels
                    .iter()
                    .map(|label| run.cases.iter().find(|c| &c.label() == label).map(value))
                    .collect()
            })
            .collect()
    };
    let row_height = 12 + 12 * report.runs.len() as u32;
    let width = 1400;
    let legend_height = 16 + 20 * report.runs.len() as u32;
    let height = 130 + legend_height + row_height * labels.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("bnbench {}: batch norm, f32", report.date_utc),
        ("sans-serif", 20),
    )?;
    let (panels, legend) = root.split_vertically(root.dim_in_pixel().1 - legend_height);
    let (left, right) = panels.split_horizontally(width * 62 / 100);
    draw_panel(
        &left,
        "GB/s at the minimum bytes (median GPU time)",
        &labels,
        &series(|c| c.gbps),
        true,
    )?;
    draw_panel(
        &right,
        "% of the stream kernel on the same adapter",
        &labels,
        &series(|c| c.percent_of_stream),
        false,
    )?;
    draw_legend(&legend, &report.runs)?;
    root.present()?;
    Ok(())
}

/// Horizontal bars: cases top to bottom, one bar per series in each case's band.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    labels: &[String],
    series: &[Vec<Option<f64>>],
    with_labels: bool,
) -> BenchResult<()>
where
    DB::ErrorType: 'static,
{
    let rows = labels.len();
    if rows == 0 {
        area.draw(&Text::new(
            format!("{caption}: no case ran"),
            (20, 40),
            ("sans-serif", 16),
        ))?;
        return Ok(());
    }
    let largest = series
        .iter()
        .flat_map(|values| values.iter().flatten())
        .fold(0.0_f64, |m, &v| m.max(v));
    let x_max = if largest > 0.0 { largest * 1.2 } else { 1.0 };
    // Row i (from the top) spans y in [(rows - 1 - i) * ROW, (rows - i) * ROW); integer
    // coordinates, since plotters formats custom key points only on those.
    const ROW: i32 = 100;
    let rows_i32 = i32::try_from(rows).map_err(|_| "too many cases to chart")?;
    let centers: Vec<i32> = (0..rows_i32).map(|i| i * ROW + ROW / 2).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(if with_labels { 270 } else { 8 })
        .build_cartesian_2d(0.0..x_max, (0..rows_i32 * ROW).with_key_points(centers))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_label_formatter(&|y| {
            let from_top = usize::try_from(rows_i32 - 1 - y.div_euclid(ROW)).ok();
            match from_top.filter(|_| with_labels) {
                Some(i) => labels.get(i).cloned().unwrap_or_default(),
                None => String::new(),
            }
        })
        .label_style(("sans-serif", 12))
        .max_light_lines(1)
        .draw()?;
    let count = i32::try_from(series.len().max(1)).map_err(|_| "too many adapters to chart")?;
    let band = (ROW * 8 / 10 / count).max(1);
    let text_style = TextStyle::from(("sans-serif", 11).into_font()).pos(
        plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Left,
            plotters::style::text_anchor::VPos::Center,
        ),
    );
    for (k, values) in (0..).zip(series) {
        let color = Palette99::pick(k as usize).to_rgba();
        // Series k's bar in row i (from the top): first series on top.
        let bottom = |i: usize| (rows_i32 - 1 - i as i32) * ROW + ROW * 9 / 10 - band * (k + 1);
        chart.draw_series(values.iter().enumerate().filter_map(|(i, v)| {
            v.map(|v| Rectangle::new([(0.0, bottom(i)), (v, bottom(i) + band)], color.filled()))
        }))?;
        chart.draw_series(values.iter().enumerate().filter_map(|(i, v)| {
            v.map(|v| {
                Text::new(
                    format!(" {}", digits3(v)),
                    (v, bottom(i) + band / 2),
                    text_style.clone(),
                )
            })
        }))?;
    }
    Ok(())
}

/// The legend strip under the panels: each adapter's color, name, roofline and timing method.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    runs: &[AdapterRun],
) -> BenchResult<()>
where
    DB::ErrorType: 'static,
{
    for (k, run) in (0..).zip(runs) {
        let y = 8 + 20 * k;
        let color = Palette99::pick(k as usize).to_rgba();
        area.draw(&Rectangle::new([(20, y), (34, y + 12)], color.filled()))?;
        area.draw(&Text::new(
            format!(
                "{}: stream kernel {:.1} GB/s; {}",
                run.adapter.short(),
                run.stream.gbps,
                run.timing_method.describe()
            ),
            (42, y),
            ("sans-serif", 13),
        ))?;
    }
    Ok(())
}

/// Now, UTC, as `2026-11-26T12:34:56Z`.
fn utc_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, time) = (seconds / 86_400, seconds % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}
