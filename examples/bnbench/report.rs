//! The results of a run, as data: per adapter, each case's times, check and roofline figures,
//! the cases skipped, and the chains. How they are written: `report/text.rs` (the terminal
//! tables and Markdown) and `report/files.rs` (JSON, CSV and the SVG chart).

mod files;
mod text;

pub use files::{write_csv, write_json, write_svg};
pub use text::{copy_spread_line, digits3, markdown, terminal, Table};

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use wgpu_batchnorm::AdapterSummary;

use super::breakdown::{Breakdown, BreakdownStatus};
use super::case::{Case, DTypeChoice, EpilogueChoice, LayoutChoice, Op};
use super::chain::ChainResult;
use super::check::Check;
use super::cli::Settings;
use super::roofline::Roofline;
use super::suite::Workload;
use super::timing::{TimeSummary, TimingMethod};

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
