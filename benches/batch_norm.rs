//! Criterion benches over `bnbench`'s cases, timed with GPU time: `iter_custom` returns the sum
//! of the timestamp-measured durations of the operations' compute passes (wall clock of awaited
//! calls where the adapter has no timestamps), with inputs rotating as in `bnbench`.
//!
//! ```text
//! cargo bench                                   # the full suite, on the best adapter
//! BNBENCH_QUICK=1 cargo bench                   # bnbench --quick's shapes and rotation
//! cargo bench -- backward/64x256x56x56          # criterion's filter: one group or case
//! WGPU_BACKEND=gl cargo bench                   # another backend
//! ```
//!
//! The cases, their data and the timer are `bnbench`'s own (`examples/bnbench/suite.rs` and
//! `timing.rs`), so both time exactly the same work. Correctness is `bnbench`'s job: it checks
//! every timed result against the CPU reference.

// Both modules also serve the bnbench program; these benches use part of them.
#[allow(dead_code)]
#[path = "../examples/bnbench/suite.rs"]
mod suite;
#[allow(dead_code)]
#[path = "../examples/bnbench/timing.rs"]
mod timing;

#[allow(dead_code)]
#[path = "../examples/bnbench/case.rs"]
mod case;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgpu_batchnorm::GpuContext;

use case::{Case, DTypeChoice, EpilogueChoice, LayoutChoice, Op, Selection};
use suite::{Workload, FULL_SHAPES, QUICK_SHAPES};
use timing::{awaited_calls, GpuTimer};

/// The rotation `bnbench` uses: 128 MiB, or 16 MiB for the quick suite.
fn rotate_bytes(quick: bool) -> u64 {
    if quick {
        16 << 20
    } else {
        128 << 20
    }
}

fn batch_norm(c: &mut Criterion) {
    let ctx = GpuContext::new().unwrap_or_else(|e| panic!("no GPU to benchmark on: {e}"));
    let timer = GpuTimer::new(&ctx);
    let quick = std::env::var_os("BNBENCH_QUICK").is_some();
    eprintln!(
        "benchmarking on {}, {}",
        ctx.adapter(),
        if timer.is_some() {
            "GPU timestamps"
        } else {
            "WALL CLOCK (no timestamp queries on this adapter)"
        }
    );
    let shapes: Vec<Vec<usize>> = if quick {
        &QUICK_SHAPES[..]
    } else {
        &FULL_SHAPES[..]
    }
    .iter()
    .map(|shape| shape.to_vec())
    .collect();
    let selection = Selection {
        shapes: &shapes,
        layouts: &LayoutChoice::ALL,
        dtypes: &[DTypeChoice::F32],
        epilogues: &[EpilogueChoice::None],
        ops: &Op::ALL,
    };
    for case in case::cases(&selection) {
        bench_case(c, &ctx, timer.as_ref(), &case, rotate_bytes(quick));
    }
}

fn bench_case(
    c: &mut Criterion,
    ctx: &GpuContext,
    timer: Option<&GpuTimer>,
    case: &Case,
    rotate_bytes: u64,
) {
    let mut group = c.benchmark_group(case.op.name());
    group.throughput(Throughput::Bytes(case.min_bytes()));
    let id = BenchmarkId::from_parameter(format!("{}/{}", case.shape_text(), case.format()));
    // Set up only when criterion's filter selects the case: the large ones take seconds.
    let mut workload: Option<Workload> = None;
    group.bench_function(id, |b| {
        let workload = workload.get_or_insert_with(|| {
            Workload::new(ctx, case, rotate_bytes)
                .unwrap_or_else(|e| panic!("{}: cannot set up: {e}", case.label()))
        });
        b.iter_custom(|iterations| {
            let runs = iterations as usize;
            let seconds = match timer {
                Some(timer) => timer.time(ctx, runs, |encoder, run, timestamps| {
                    workload.record(encoder, run, Some(timestamps))?;
                    Ok(())
                }),
                None => awaited_calls(runs, |run| {
                    workload.call_and_wait(run)?;
                    Ok(())
                }),
            }
            .unwrap_or_else(|e| panic!("{}: {e}", case.label()));
            Duration::from_secs_f64(seconds.iter().sum())
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // GPU runs are long and steady next to what criterion's defaults expect.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = batch_norm
}
criterion_main!(benches);
