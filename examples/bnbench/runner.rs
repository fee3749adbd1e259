//! Runs the suite on one adapter: the stream kernel ([`measure_stream`]), each case in turn
//! (set up, warm up, time, check against the reference, measure host latency), then the stream
//! kernel again ([`measure_stream_again`]), with a progress bar.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use wgpu_batchnorm::{BatchNormError, GpuContext, Tensor};

use super::breakdown::{self, BreakdownStatus};
use super::case::Case;
use super::chain::run_chain;
use super::check;
use super::cli::Settings;
use super::report::{AdapterInfo, AdapterRun, CaseResult, GpuTimes, HostTimes, Skipped};
use super::roofline::{self, Roofline};
use super::suite::{Workload, LAYER_COPIES};
use super::timing::{
    awaited_calls, back_to_back, copy_medians, host_cost, one_submission_wall, warm_up,
    BenchResult, GpuTimer, TimeSummary, TimingMethod,
};

/// Identical calls recorded into one submission for the GPU back-to-back column (as many as
/// `scripts/torch_bench.py` captures in its CUDA graph).
pub const BACK_TO_BACK_CALLS: usize = 100;
/// Submissions of [`BACK_TO_BACK_CALLS`] calls per case; the column is their median.
pub const BACK_TO_BACK_SUBMISSIONS: usize = 3;

/// A progress bar over every case of the run. Where stderr is no terminal the bar is hidden and
/// its notes go to stderr as plain lines, so logs still show progress.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar over `cases` cases.
    pub fn new(cases: usize) -> Self {
        let bar = ProgressBar::new(cases as u64);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        Progress { bar }
    }

    /// Prints `line` above the bar.
    pub fn note(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Measures the stream kernel on `ctx`'s adapter, timed as the cases are: the roofline each
/// case's "% of stream" is taken against, measured before the cases and again after them
/// ([`AdapterRun::take_faster_stream`]).
pub fn measure_stream(
    ctx: &GpuContext,
    settings: &Settings,
    progress: &Progress,
) -> BenchResult<Roofline> {
    let timer = GpuTimer::new(ctx).filter(|_| !settings.wall_clock);
    progress
        .bar
        .set_message(format!("{}: stream kernel", ctx.adapter().name));
    let stream = roofline::measure(
        ctx,
        timer.as_ref(),
        settings.rotate_bytes,
        settings.warmup,
        Duration::from_millis(settings.warmup_ms),
        settings.case_reps(),
    )?;
    progress.note(&format!(
        "  stream kernel: {:.1} GB/s ({} workgroups)",
        stream.gbps, stream.workgroups
    ));
    Ok(stream)
}

/// The stream kernel measured again after the cases, for [`AdapterRun::take_faster_stream`];
/// `None`, with a note, where that fails: the cases measured stand on the first measurement.
pub fn measure_stream_again(
    ctx: &GpuContext,
    settings: &Settings,
    progress: &Progress,
) -> Option<Roofline> {
    progress.note("  after the cases:");
    measure_stream(ctx, settings, progress)
        .map_err(|error| {
            progress.note(&format!(
                "  stream kernel after the cases: not measured ({error}); the first measurement stands"
            ))
        })
        .ok()
}

/// Runs `cases` on `ctx`'s adapter against `stream`, that adapter's stream kernel
/// ([`measure_stream`]). A case that fails is recorded as skipped with its error (and counts
/// as a failure, unless the device is merely too small for it); the run goes on.
pub fn run_adapter(
    ctx: &GpuContext,
    settings: &Settings,
    cases: &[Case],
    stream: &Roofline,
    progress: &Progress,
) -> BenchResult<AdapterRun> {
    let adapter = ctx.adapter();
    let timer = GpuTimer::new(ctx).filter(|_| !settings.wall_clock);
    let timing_method = match timer {
        Some(_) => TimingMethod::GpuTimestamps,
        None => TimingMethod::WallClock,
    };
    let breakdown = BreakdownStatus::on(ctx, timer.as_ref(), settings.breakdown);
    if let BreakdownStatus::Unavailable { reason } = &breakdown {
        progress.note(&format!("  --breakdown: not measured: {reason}"));
    }
    if timing_method == TimingMethod::WallClock {
        progress.note(if settings.wall_clock {
            "  --wall-clock: GPU times are wall clock"
        } else {
            "  no timestamp queries on this adapter: GPU times are wall clock"
        });
    }
    let mut chains = Vec::new();
    if let Some(chain) = settings.chain {
        let (steps, batch) = settings.chain_steps_and_batch(adapter.device_type);
        for &layout in &settings.layouts {
            progress.bar.set_message(format!(
                "{}: {} {} batch {batch}",
                adapter.name,
                chain.name(),
                layout.name()
            ));
            let result = run_chain(ctx, timer.as_ref(), chain, layout, batch, steps)?;
            progress.note(&format!(
                "  {} {} batch {batch}: host {:.0} us per step (record {:.0}, submit {:.0}), GPU {:.0} us per step, {}",
                chain.name(),
                layout.name(),
                result.host_us(),
                result.host_record_us,
                result.host_submit_us,
                result.gpu_step_us,
                if result.passed() { "sample ok" } else { "sample FAILED" },
            ));
            chains.push(result);
            progress.bar.inc(1);
        }
    }
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    for case in cases {
        progress
            .bar
            .set_message(format!("{}: {}", adapter.name, case.label()));
        let outcome = match settings.max_elements {
            Some(max) if case.elements() > max => Err(Skipped::new(
                case,
                format!("more than --max-elements {max} elements"),
                false,
            )),
            _ => run_case(ctx, timer.as_ref(), settings, &breakdown, case, stream.gbps).map_err(
                |error| {
                    let too_large = matches!(
                        error.downcast_ref::<BatchNormError>(),
                        Some(BatchNormError::TensorTooLarge { .. })
                    );
                    Skipped::new(case, error.to_string(), !too_large)
                },
            ),
        };
        match outcome {
            Ok(result) => {
                // No "% of stream" yet: the stream kernel is measured again after the cases.
                progress.note(&format!(
                    "  {}: {:.1} us median, {:.1} GB/s, max error {:.1e} {}",
                    case.label(),
                    result.gpu_median_us,
                    result.gbps,
                    result.max_abs_error,
                    result.check,
                ));
                results.push(result);
            }
            Err(skip) => {
                progress.note(&format!(
                    "  {}: {} ({})",
                    case.label(),
                    if skip.failure { "FAILED" } else { "skipped" },
                    skip.reason
                ));
                skipped.push(skip);
            }
        }
        progress.bar.inc(1);
    }
    Ok(AdapterRun {
        adapter: AdapterInfo::from(adapter),
        timing_method,
        breakdown,
        stream: stream.clone(),
        stream_measurements_gbps: vec![stream.gbps],
        cases: results,
        skipped,
        chains,
    })
}

/// Sets up, warms up, times (one call per submission, then many in one where the settings
/// say so, then each dispatch where `breakdown` says so), measures the host latency of, and
/// last checks, one case.
fn run_case(
    ctx: &GpuContext,
    timer: Option<&GpuTimer>,
    settings: &Settings,
    breakdown: &BreakdownStatus,
    case: &Case,
    stream_gbps: f64,
) -> BenchResult<CaseResult> {
    let mut workload = Workload::new(ctx, case, settings.rotate_bytes)?;
    warm_up(
        ctx,
        settings.warmup,
        Duration::from_millis(settings.warmup_ms),
        |run| {
            workload.call_and_wait(run)?;
            Ok(())
        },
        |encoder, run| {
            workload.record(encoder, run, None)?;
            Ok(())
        },
    )?;
    // An element that no timed run wrote stays NaN and fails the check.
    workload.output().fill(f32::NAN)?;
    let mut params = None;
    let seconds = match timer {
        Some(timer) => timer.time(ctx, settings.case_reps(), |encoder, run, timestamps| {
            params = workload.record(encoder, run, Some(timestamps))?;
            Ok(())
        })?,
        None => awaited_calls(settings.case_reps(), |run| {
            params = workload.call_and_wait(run)?;
            Ok(())
        })?,
    };
    let gpu = TimeSummary::of(&seconds).ok_or("no timed run")?;
    let copy_medians = copy_medians(&seconds, workload.copies());
    let output = workload.output().to_vec()?;
    let params = params.map(|pair| pair.read()).transpose()?;
    let shortcut_grad = workload.shortcut_grad().map(Tensor::to_vec).transpose()?;
    let gpu_back_to_back = settings
        .back_to_back
        .then(|| one_submission(ctx, timer, &workload))
        .transpose()?;
    let breakdown = match (breakdown, timer) {
        (BreakdownStatus::Measured, Some(timer)) => Some(breakdown::measure(
            ctx,
            timer,
            settings.case_reps(),
            |encoder, run, timestamps| {
                workload.record(encoder, run, Some(timestamps))?;
                Ok(())
            },
        )?),
        _ => None,
    };
    let host = measure_host(ctx, settings.case_reps(), &mut workload)?;
    // The check comes after every measurement: its f64 reference takes seconds on the big
    // cases, and an H200 left idle that long lowered its clocks, so the measurements after it
    // ran up to 3.6 times slower (docs/performance.md, section 44).
    let check = check::check(
        case,
        workload.host(),
        &output,
        params.as_ref(),
        shortcut_grad.as_deref(),
    );
    let gpu = GpuTimes {
        single: gpu,
        copy_medians,
        back_to_back: gpu_back_to_back,
        breakdown,
    };
    Ok(CaseResult::new(&workload, gpu, stream_gbps, host, check))
}

/// The GPU back-to-back column: the median over [`BACK_TO_BACK_SUBMISSIONS`] of the GPU time
/// of [`BACK_TO_BACK_CALLS`] identical calls (the same input copy) in one submission, per
/// call; wall time of the awaited submission where there are no timestamps.
fn one_submission(
    ctx: &GpuContext,
    timer: Option<&GpuTimer>,
    workload: &Workload,
) -> BenchResult<f64> {
    let seconds = (0..BACK_TO_BACK_SUBMISSIONS)
        .map(|_| match timer {
            Some(timer) => {
                timer.time_one_submission(ctx, BACK_TO_BACK_CALLS, |encoder, timestamps| {
                    workload.record(encoder, 0, timestamps)?;
                    Ok(())
                })
            }
            None => one_submission_wall(ctx, BACK_TO_BACK_CALLS, |encoder| {
                workload.record(encoder, 0, None)?;
                Ok(())
            }),
        })
        .collect::<BenchResult<Vec<f64>>>()?;
    Ok(TimeSummary::of(&seconds).ok_or("no submission")?.median)
}

/// The host columns of a case, each over `calls` calls: the layer's calls (prepared on their
/// first use, reused after) back to back, and their thread CPU time to record and to submit;
/// the functional call's time to record (it prepares its dispatches every time); the
/// convenience call's latency.
fn measure_host(ctx: &GpuContext, calls: usize, workload: &mut Workload) -> BenchResult<HostTimes> {
    // The layer's first call on each input it rotates over prepares that input's dispatches.
    for run in 0..LAYER_COPIES {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        workload.record_layer(&mut encoder, run)?;
        ctx.queue().submit([encoder.finish()]);
    }
    let back_to_back = back_to_back(ctx, calls, |encoder, run| {
        workload.record_layer(encoder, run)?;
        Ok(())
    })?;
    let layer = host_cost(ctx, calls, |encoder, run| {
        workload.record_layer(encoder, run)?;
        Ok(())
    })?;
    let functional = host_cost(ctx, calls, |encoder, run| {
        workload.record(encoder, run, None)?;
        Ok(())
    })?;
    let single = awaited_calls(calls, |run| {
        workload.call_and_wait(run)?;
        Ok(())
    })?;
    let median = |seconds: &[f64]| {
        TimeSummary::of(seconds)
            .map(|t| t.median)
            .ok_or("no host call")
    };
    Ok(HostTimes {
        back_to_back,
        single: median(&single)?,
        record: median(&layer.record)?,
        submit: median(&layer.submit)?,
        record_unprepared: median(&functional.record)?,
    })
}
