//! The report as text: a table per adapter for the terminal (and a side-by-side summary when
//! several ran), the same as Markdown, and the lines under each table (input copies that
//! differ, cases skipped).

use std::fmt::Write as _;

use super::super::breakdown::BreakdownStatus;
use super::super::cli::Settings;
use super::super::runner::{BACK_TO_BACK_CALLS, BACK_TO_BACK_SUBMISSIONS};
use super::super::timing::{noted_copy_spread, TimingMethod};
use super::{AdapterRun, Report};

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
pub(super) fn case_labels(report: &Report) -> Vec<String> {
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
