//! `bnbench --breakdown`: the GPU time of each dispatch of an operation, from timestamps the
//! library writes between the dispatches of the operation's compute pass
//! (`PassTimestamps::after_each_dispatch`), where the adapter has
//! `TIMESTAMP_QUERY_INSIDE_PASSES`. Where it has not, the run says so and measures nothing.

use std::cell::RefCell;

use serde::Serialize;
use wgpu_batchnorm::{DispatchInfo, DispatchTimestamps, GpuContext, PassTimestamps};

use super::timing::{BenchResult, GpuTimer, TimeSummary};

/// Whether a run broke its operations down per dispatch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakdownStatus {
    /// `--breakdown` was not given.
    NotAsked,
    /// Every case that ran has its breakdown.
    Measured,
    /// Asked for, but the adapter cannot write timestamps between dispatches: nothing measured.
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl BreakdownStatus {
    /// What `--breakdown` can do on `ctx`'s adapter with `timer` (`None`: no timestamps, or
    /// `--wall-clock`).
    pub fn on(ctx: &GpuContext, timer: Option<&GpuTimer>, asked: bool) -> Self {
        let reason = match (asked, timer) {
            (false, _) => return BreakdownStatus::NotAsked,
            (true, None) => {
                "no GPU timestamps (the adapter has no timestamp queries, or \
                             --wall-clock)"
            }
            (true, Some(_)) if !ctx.has_timestamps_inside_passes() => {
                "the adapter does not offer TIMESTAMP_QUERY_INSIDE_PASSES (timestamps between \
                 the dispatches of a pass)"
            }
            (true, Some(_)) => return BreakdownStatus::Measured,
        };
        BreakdownStatus::Unavailable {
            reason: reason.to_string(),
        }
    }
}

/// One dispatch's median GPU time.
#[derive(Clone, Debug, Serialize)]
pub struct DispatchTime {
    /// What it computes ("statistics partials", "normalize", "dx", ...).
    pub part: &'static str,
    /// The kernel's entry point.
    pub entry: &'static str,
    /// Workgroups dispatched.
    pub workgroups: u32,
    /// Median GPU time from the end of the previous dispatch (or the beginning of the pass)
    /// to the end of this one, microseconds.
    pub gpu_median_us: f64,
}

/// One case's dispatches, timed inside its pass.
#[derive(Clone, Debug, Serialize)]
pub struct Breakdown {
    /// Median GPU time of the whole pass with the timestamps between dispatches written,
    /// microseconds (each such timestamp adds a wait of its own, so this is above the case's
    /// time without them, and the parts need not sum to either).
    pub pass_median_us: f64,
    /// The dispatches, in the order the pass runs them.
    pub dispatches: Vec<DispatchTime>,
}

/// Hands out the queries after the pass's own two, one per dispatch, and remembers which
/// dispatch each follows.
#[derive(Debug)]
struct DispatchQueries {
    limit: u32,
    seen: RefCell<Vec<DispatchInfo>>,
}

/// The pass's own queries: its beginning and its end.
const PASS_QUERIES: u32 = 2;

impl DispatchTimestamps for DispatchQueries {
    fn query_after(&self, dispatch: &DispatchInfo) -> Option<u32> {
        let mut seen = self.seen.borrow_mut();
        let query = PASS_QUERIES + seen.len() as u32;
        seen.push(*dispatch);
        (query < self.limit).then_some(query)
    }
}

/// Times each dispatch of `runs` runs, each its own submission, awaited before the next.
/// `record(encoder, run, timestamps)` records run `run` with `timestamps` on its pass.
pub fn measure(
    ctx: &GpuContext,
    timer: &GpuTimer,
    runs: usize,
    mut record: impl FnMut(&mut wgpu::CommandEncoder, usize, PassTimestamps<'_>) -> BenchResult<()>,
) -> BenchResult<Breakdown> {
    let mut dispatches: Vec<DispatchInfo> = Vec::new();
    let mut pass = Vec::with_capacity(runs);
    let mut parts: Vec<Vec<f64>> = Vec::new();
    for run in 0..runs {
        let queries = DispatchQueries {
            limit: timer.queries(),
            seen: RefCell::new(Vec::new()),
        };
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        let timestamps = PassTimestamps {
            after_each_dispatch: Some(&queries),
            ..timer.pass(Some(0), Some(1))
        };
        record(&mut encoder, run, timestamps)?;
        ctx.queue().submit([encoder.finish()]);
        let seen = queries.seen.into_inner();
        let written = PASS_QUERIES + seen.len() as u32;
        if written > timer.queries() {
            return Err(format!(
                "{} dispatches: more than the breakdown's {} queries",
                seen.len(),
                timer.queries() - PASS_QUERIES
            )
            .into());
        }
        if run == 0 {
            parts = vec![Vec::with_capacity(runs); seen.len()];
            dispatches = seen;
        } else if seen != dispatches {
            return Err("the runs of one case recorded different dispatches".into());
        }
        let ticks = timer.read_ticks(ctx, written)?;
        pass.push(timer.elapsed(ticks[0], ticks[1])?);
        let mut previous = ticks[0];
        for (k, &after) in ticks[PASS_QUERIES as usize..].iter().enumerate() {
            parts[k].push(timer.elapsed(previous, after)?);
            previous = after;
        }
    }
    let median_us = |seconds: &[f64]| -> BenchResult<f64> {
        Ok(TimeSummary::of(seconds).ok_or("no timed run")?.median * 1e6)
    };
    Ok(Breakdown {
        pass_median_us: median_us(&pass)?,
        dispatches: dispatches
            .iter()
            .zip(&parts)
            .map(|(info, seconds)| {
                Ok(DispatchTime {
                    part: info.part.name(),
                    entry: info.entry,
                    workgroups: info.workgroups,
                    gpu_median_us: median_us(seconds)?,
                })
            })
            .collect::<BenchResult<_>>()?,
    })
}
