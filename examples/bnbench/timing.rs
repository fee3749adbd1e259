//! How the benchmark measures time: GPU timestamp queries written at the beginning and end of an
//! operation's compute pass (so every dispatch of the operation is inside), or around many calls
//! recorded into one submission; wall-clock time of awaited calls where the adapter has no
//! timestamps; and host latency. `breakdown.rs` times the dispatches inside a pass.
//!
//! Shared by the `bnbench` program and the criterion benches.

use std::time::{Duration, Instant};

use cpu_time::ThreadTime;
use serde::Serialize;
use wgpu_batchnorm::{GpuContext, PassTimestamps};

/// The benchmark's result type: the library's errors, wgpu's, and its own, as messages.
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Runs whose timestamps one query set holds (wgpu allows at most 4096 queries in a set).
const RUNS_PER_QUERY_SET: usize = 1024;

/// How GPU time was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimingMethod {
    /// Timestamp queries at the beginning and end of the operation's compute pass.
    GpuTimestamps,
    /// Wall time of each call submitted and awaited, host overhead included (the adapter has
    /// no timestamp queries, or `bnbench --wall-clock`).
    WallClock,
}

impl TimingMethod {
    /// How reports describe the method.
    pub fn describe(self) -> &'static str {
        match self {
            TimingMethod::GpuTimestamps => {
                "GPU timestamps at the beginning and end of each operation's compute pass"
            }
            TimingMethod::WallClock => {
                "WALL CLOCK, not GPU timestamps: each call submitted and awaited, host overhead \
                 included"
            }
        }
    }
}

/// Median and minimum of a set of times, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeSummary {
    /// The median (the upper one for an even count).
    pub median: f64,
    /// The minimum.
    pub min: f64,
}

impl TimeSummary {
    /// Summarizes `seconds`; `None` when it is empty.
    pub fn of(seconds: &[f64]) -> Option<Self> {
        let mut sorted = seconds.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(TimeSummary {
            median: *sorted.get(sorted.len() / 2)?,
            min: *sorted.first()?,
        })
    }
}

/// Timed runs each input copy needs before the report gives that copy's own median.
pub const MIN_RUNS_PER_COPY: usize = 3;

/// The median of each input copy's runs, where run `k` read copy `k % copies`; `None` with one
/// copy, or where some copy ran fewer than [`MIN_RUNS_PER_COPY`] times. The copies hold the
/// same values and run the same dispatches, so a spread between their medians is not the
/// kernels' (docs/performance.md, section 50).
pub fn copy_medians(seconds: &[f64], copies: usize) -> Option<Vec<f64>> {
    if copies < 2 || seconds.len() < copies * MIN_RUNS_PER_COPY {
        return None;
    }
    (0..copies)
        .map(|copy| {
            let runs: Vec<f64> = seconds.iter().skip(copy).step_by(copies).copied().collect();
            TimeSummary::of(&runs).map(|summary| summary.median)
        })
        .collect()
}

/// A slowest copy's median at least this many times the fastest's is reported: the case's
/// median then depends on which copies it read.
pub const COPY_SPREAD_NOTED: f64 = 1.2;

/// The fastest and the slowest input copy by their medians, as `(copy, median)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CopySpread {
    pub fastest: (usize, f64),
    pub slowest: (usize, f64),
}

impl CopySpread {
    /// The slowest copy's median over the fastest's.
    pub fn ratio(&self) -> f64 {
        self.slowest.1 / self.fastest.1
    }
}

/// The fastest and slowest of `medians` where the slowest is [`COPY_SPREAD_NOTED`] times the
/// fastest or more; `None` otherwise, and where a median is not a positive time.
pub fn noted_copy_spread(medians: &[f64]) -> Option<CopySpread> {
    if !medians
        .iter()
        .all(|&median| median > 0.0 && median.is_finite())
    {
        return None;
    }
    let by_median = |a: &(usize, &f64), b: &(usize, &f64)| a.1.total_cmp(b.1);
    let (fastest, &low) = medians.iter().enumerate().min_by(by_median)?;
    let (slowest, &high) = medians.iter().enumerate().max_by(by_median)?;
    let spread = CopySpread {
        fastest: (fastest, low),
        slowest: (slowest, high),
    };
    (spread.ratio() >= COPY_SPREAD_NOTED).then_some(spread)
}

/// Times operations with timestamp queries around their compute passes.
pub struct GpuTimer {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    nanoseconds_per_tick: f64,
}

impl GpuTimer {
    /// A timer for `ctx`'s device; `None` when the device has no timestamp queries.
    pub fn new(ctx: &GpuContext) -> Option<Self> {
        if !ctx.has_timestamps() {
            return None;
        }
        let device = ctx.device();
        let queries = 2 * RUNS_PER_QUERY_SET as u32;
        let bytes = u64::from(queries) * 8;
        Some(GpuTimer {
            query_set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bnbench timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: queries,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bnbench timestamp resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bnbench timestamp readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            nanoseconds_per_tick: f64::from(ctx.queue().get_timestamp_period()),
        })
    }

    /// GPU seconds of each of `runs` runs. `record(encoder, run, timestamps)` records run `run`
    /// into a fresh encoder with `timestamps` on its compute pass; each run is its own
    /// submission, and the runs are submitted back to back.
    pub fn time(
        &self,
        ctx: &GpuContext,
        runs: usize,
        mut record: impl FnMut(&mut wgpu::CommandEncoder, usize, PassTimestamps<'_>) -> BenchResult<()>,
    ) -> BenchResult<Vec<f64>> {
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut seconds = Vec::with_capacity(runs);
        let mut done = 0;
        while done < runs {
            let batch = (runs - done).min(RUNS_PER_QUERY_SET);
            for slot in 0..batch as u32 {
                let mut encoder = device.create_command_encoder(&Default::default());
                let timestamps = self.pass(Some(2 * slot), Some(2 * slot + 1));
                record(&mut encoder, done + slot as usize, timestamps)?;
                queue.submit([encoder.finish()]);
            }
            let ticks = self.read_ticks(ctx, 2 * batch as u32)?;
            for pair in ticks.chunks_exact(2) {
                seconds.push(self.elapsed(pair[0], pair[1])?);
            }
            done += batch;
        }
        Ok(seconds)
    }

    /// GPU seconds per call of `calls` calls recorded into one encoder and submitted once,
    /// from the beginning of the first call's pass to the end of the last's.
    /// `record(encoder, timestamps)` records one call, with `timestamps` on its pass where
    /// given.
    pub fn time_one_submission(
        &self,
        ctx: &GpuContext,
        calls: usize,
        mut record: impl FnMut(&mut wgpu::CommandEncoder, Option<PassTimestamps<'_>>) -> BenchResult<()>,
    ) -> BenchResult<f64> {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        for call in 0..calls {
            let (first, last) = (call == 0, call + 1 == calls);
            let timestamps =
                (first || last).then(|| self.pass(first.then_some(0), last.then_some(1)));
            record(&mut encoder, timestamps)?;
        }
        ctx.queue().submit([encoder.finish()]);
        let ticks = self.read_ticks(ctx, 2)?;
        Ok(self.elapsed(ticks[0], ticks[1])? / calls.max(1) as f64)
    }

    /// Timestamps of this timer's query set at `begin` and `end`.
    pub fn pass(&self, begin: Option<u32>, end: Option<u32>) -> PassTimestamps<'_> {
        PassTimestamps {
            query_set: &self.query_set,
            begin,
            end,
            after_each_dispatch: None,
        }
    }

    /// Queries this timer's set holds.
    pub fn queries(&self) -> u32 {
        2 * RUNS_PER_QUERY_SET as u32
    }

    /// The first `queries` timestamps of the set, once the GPU has written them.
    pub fn read_ticks(&self, ctx: &GpuContext, queries: u32) -> BenchResult<Vec<u64>> {
        let bytes = u64::from(queries) * 8;
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        encoder.resolve_query_set(&self.query_set, 0..queries, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, bytes);
        ctx.queue().submit([encoder.finish()]);
        read_mapped(ctx, &self.readback, bytes)
    }

    /// Seconds from timestamp `begin` to `end`; an error where they did not advance.
    pub fn elapsed(&self, begin: u64, end: u64) -> BenchResult<f64> {
        let ticks = end.checked_sub(begin).filter(|&t| t > 0).ok_or(
            "the adapter's timestamps did not advance over an operation: they cannot time it",
        )?;
        Ok(ticks as f64 * self.nanoseconds_per_tick * 1e-9)
    }
}

/// Wall seconds per call of `calls` calls recorded into one encoder, submitted once and
/// awaited: [`GpuTimer::time_one_submission`] where the adapter has no timestamps.
pub fn one_submission_wall(
    ctx: &GpuContext,
    calls: usize,
    mut record: impl FnMut(&mut wgpu::CommandEncoder) -> BenchResult<()>,
) -> BenchResult<f64> {
    let start = Instant::now();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    for _ in 0..calls {
        record(&mut encoder)?;
    }
    let index = ctx.queue().submit([encoder.finish()]);
    ctx.device().poll(wgpu::PollType::Wait {
        submission_index: Some(index),
        timeout: None,
    })?;
    Ok(start.elapsed().as_secs_f64() / calls.max(1) as f64)
}

/// Wall seconds of each of `calls` calls, each submitted and awaited by `call(index)`.
pub fn awaited_calls(
    calls: usize,
    mut call: impl FnMut(usize) -> BenchResult<()>,
) -> BenchResult<Vec<f64>> {
    (0..calls)
        .map(|index| {
            let start = Instant::now();
            call(index)?;
            Ok(start.elapsed().as_secs_f64())
        })
        .collect()
}

/// Wall seconds per call of `calls` calls recorded and submitted back to back (each its own
/// encoder and submission), with one wait at the end: the host cost of a call when the GPU
/// keeps up, or the GPU's pace when it does not.
pub fn back_to_back(
    ctx: &GpuContext,
    calls: usize,
    mut record: impl FnMut(&mut wgpu::CommandEncoder, usize) -> BenchResult<()>,
) -> BenchResult<f64> {
    let start = Instant::now();
    let mut last = None;
    for index in 0..calls {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        record(&mut encoder, index)?;
        last = Some(ctx.queue().submit([encoder.finish()]));
    }
    ctx.device().poll(wgpu::PollType::Wait {
        submission_index: last,
        timeout: None,
    })?;
    Ok(start.elapsed().as_secs_f64() / calls.max(1) as f64)
}

/// Thread CPU seconds of host work per call, from [`host_cost`].
pub struct HostCost {
    /// Recording one operation into an encoder.
    pub record: Vec<f64>,
    /// Finishing that encoder and submitting it.
    pub submit: Vec<f64>,
}

/// The thread CPU time of each of `calls` calls: `record(encoder, call)` into a fresh encoder,
/// then, separately, finishing and submitting it. Thread CPU time, not wall time, so that
/// neither waiting nor other threads count. Each call is awaited, untimed, before the next one
/// starts, so that a software adapter's workers do not share the cores with the recording.
pub fn host_cost(
    ctx: &GpuContext,
    calls: usize,
    mut record: impl FnMut(&mut wgpu::CommandEncoder, usize) -> BenchResult<()>,
) -> BenchResult<HostCost> {
    let mut cost = HostCost {
        record: Vec::with_capacity(calls),
        submit: Vec::with_capacity(calls),
    };
    for call in 0..calls {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        let start = ThreadTime::try_now()?;
        record(&mut encoder, call)?;
        cost.record.push(start.try_elapsed()?.as_secs_f64());
        let start = ThreadTime::try_now()?;
        let index = ctx.queue().submit([encoder.finish()]);
        cost.submit.push(start.try_elapsed()?.as_secs_f64());
        ctx.device().poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        })?;
    }
    Ok(cost)
}

/// Untimed runs: `awaited` runs, each submitted and awaited (first uses: pipelines, lazy
/// initialization), then batches submitted back to back until at least `busy` has passed. The
/// second part is for GPUs that lower their clocks when idle: an H200 that idled for a second
/// while the host prepared a case ran the case's first hundred runs up to 4x slower.
pub fn warm_up(
    ctx: &GpuContext,
    awaited: usize,
    busy: Duration,
    mut call: impl FnMut(usize) -> BenchResult<()>,
    mut record: impl FnMut(&mut wgpu::CommandEncoder, usize) -> BenchResult<()>,
) -> BenchResult<()> {
    const BATCH: usize = 16;
    awaited_calls(awaited, &mut call)?;
    let start = Instant::now();
    let mut run = awaited;
    while start.elapsed() < busy {
        back_to_back(ctx, BATCH, |encoder, index| record(encoder, run + index))?;
        run += BATCH;
    }
    Ok(())
}

/// Waits for the GPU, then copies the first `bytes` of a `MAP_READ` buffer to the host.
pub fn read_mapped<T: bytemuck::Pod>(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    bytes: u64,
) -> BenchResult<Vec<T>> {
    let slice = buffer.slice(..bytes);
    let (sender, receiver) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |result| {
        // The receiver waits below, so it outlives this callback.
        let _ = sender.send(result);
    });
    ctx.device().poll(wgpu::PollType::wait_indefinitely())?;
    receiver.recv()??;
    let values = {
        let mapped = slice.get_mapped_range()?;
        bytemuck::cast_slice::<u8, T>(&mapped).to_vec()
    };
    buffer.unmap();
    Ok(values)
}
