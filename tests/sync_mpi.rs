//! Synchronized batch norm over MPI: one binary (`harness = false`, since MPI initializes once
//! per process) that, run by `cargo test --features mpi --test sync_mpi`, launches itself under
//! `mpirun -np 2` and `mpirun -np 3` on localhost and checks their exit codes; and under
//! `mpirun`, runs every case in sequence on its rank: k-way synchronized batch norm checked as
//! one batch by `common::sync` (equal shards; uneven shards in mixed layouts with an empty one
//! and momentum `None`), bitwise repeatability, and refusals on every rank (disagreeing
//! channels, too few values over all ranks). It also runs `mpirun -np 2` with a rank that exits
//! mid-step, and checks that the job ends (with an error) instead of hanging.

mod common;

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use common::sync::{check_group, gather_runs, rank_context, run_rank, Shard, SyncCase};
use common::{context, filled_on, normal_data, upload_to, Planned};
use wgpu_batchnorm::sync::{Exchange, HeaderField, MpiExchange, SyncBatchNorm, SyncError};
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, Layout};

const CF: Layout = Layout::ChannelsFirst;
const CL: Layout = Layout::ChannelsLast;

/// What mpirun needs in a container as root on a small machine: root allowed, no rsh agent
/// for a localhost-only job, no ptrace-based single copy, ranks that yield when idle (so that
/// busy-polling ranks do not starve the software GPU of the two cores).
const MPI_ENVIRONMENT: [(&str, &str); 5] = [
    ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
    ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
    ("OMPI_MCA_plm_rsh_agent", ""),
    ("OMPI_MCA_btl_vader_single_copy_mechanism", "none"),
    ("OMPI_MCA_mpi_yield_when_idle", "1"),
];

/// Runs this binary under `mpirun -np ranks` with `args`, and returns its exit status and
/// time, or `None` when it ran past `limit` (then it is killed).
fn launch(ranks: usize, args: &[&str], limit: Duration) -> Option<(bool, Duration)> {
    let exe = std::env::current_exe().expect("this binary's path");
    let mut command = Command::new("mpirun");
    command
        .args(["-np", &ranks.to_string(), "--oversubscribe"])
        .arg(exe)
        .args(args);
    for (name, value) in MPI_ENVIRONMENT {
        if std::env::var_os(name).is_none() {
            command.env(name, value);
        }
    }
    let start = Instant::now();
    let mut child = command
        .spawn()
        .expect("mpirun (Debian: apt-get install openmpi-bin, or bash .ci/install-mpi.sh)");
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("wait for mpirun") {
            return Some((status.success(), start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn launcher() -> ExitCode {
    let mut failed = 0;
    for ranks in [2, 3] {
        match launch(ranks, &[], Duration::from_secs(600)) {
            Some((true, took)) => println!("mpirun -np {ranks}: ok in {:.1} s", took.as_secs_f64()),
            other => {
                println!("mpirun -np {ranks}: FAILED ({other:?})");
                failed += 1;
            }
        }
    }
    // A rank that dies mid-step: mpirun must end the job, with an error, not hang.
    match launch(2, &["die"], Duration::from_secs(120)) {
        Some((false, took)) => println!(
            "mpirun -np 2 with a rank that exits mid-step: the job ended with an error in {:.1} s",
            took.as_secs_f64()
        ),
        other => {
            println!("mpirun -np 2 with a rank that exits mid-step: FAILED ({other:?})");
            failed += 1;
        }
    }
    println!("sync_mpi: {} passed, {failed} failed", 3 - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn config(momentum: Option<f64>) -> BatchNormConfig {
    BatchNormConfig {
        momentum,
        ..BatchNormConfig::default()
    }
}

/// The k-way cases for `ranks` ranks.
fn cases(ranks: usize) -> Vec<(&'static str, SyncCase)> {
    let uneven = [
        Shard::new(&[3, 6, 7, 5], CF, Planned::Cpu),
        Shard::new(&[0, 6, 3], CF, Planned::Cpu),
        Shard::new(&[5, 4, 4, 6], CL, Planned::SmallBindings),
    ];
    vec![
        (
            "equal shards",
            SyncCase {
                seed: 21,
                channels: 6,
                config: config(Some(0.1)),
                shards: vec![Shard::new(&[4, 6, 5, 5], CF, Planned::Cpu); ranks],
                steps: 3,
            },
        ),
        (
            "uneven shards, mixed layouts, an empty one, momentum None",
            SyncCase {
                seed: 22,
                channels: 6,
                config: config(None),
                shards: uneven[..ranks].to_vec(),
                steps: 3,
            },
        ),
    ]
}

/// This rank's forward with `channels` channels on `shape`, refused as `want` says, its
/// layer's state unchanged.
fn refused(
    exchange: &dyn Exchange,
    channels: usize,
    shape: &[usize],
    want: impl Fn(&SyncError) -> bool,
) {
    let ctx = rank_context(exchange.rank(), Planned::Cpu);
    let len = shape.iter().product();
    let (x, _) = upload_to(&ctx, &normal_data(len, 3, 0.0, 1.0), shape, CF);
    let y = filled_on(&ctx, shape, CF, f32::NAN);
    let mut layer = SyncBatchNorm::new(BatchNorm::new(&ctx, channels).expect("layer"));
    let before = layer.layer().running_statistics().expect("tracked");
    match layer.forward_into(&x, &y, exchange) {
        Err(error) => assert!(want(&error), "rank {}: {error}", exchange.rank()),
        Ok(_) => panic!("rank {} accepted the call", exchange.rank()),
    }
    assert_eq!(layer.layer().running_statistics().unwrap(), before);
    assert_eq!(layer.layer().num_batches_tracked(), 0);
}

fn rank_main(die: bool) -> ExitCode {
    let universe = mpi::initialize().expect("MPI initializes once");
    let exchange = MpiExchange::new(universe.world());
    let (rank, ranks) = (exchange.rank(), exchange.ranks());
    if die {
        let case = &cases(ranks)[0].1;
        let ctx = rank_context(rank, Planned::Cpu);
        if rank == 1 {
            // Leave before the first exchange of the step, as a crashed rank would.
            std::process::exit(3);
        }
        run_rank(case, rank, &ctx, &exchange);
        return ExitCode::SUCCESS;
    }
    for (name, case) in cases(ranks) {
        let shard = &case.shards[rank];
        let ctx = rank_context(rank, shard.planned);
        let run = run_rank(&case, rank, &ctx, &exchange);
        let again = run_rank(&case, rank, &ctx, &exchange);
        assert!(run == again, "rank {rank}, {name}: a second run differs");
        let runs = gather_runs(&exchange, &run);
        if rank == 0 {
            check_group(&case, &runs, &context());
            println!("{ranks} ranks, {name}: ok");
        }
    }
    let last = ranks - 1;
    refused(
        &exchange,
        if rank == last { 5 } else { 6 },
        &[4, 6, 3],
        |e| {
            matches!(
                e,
                SyncError::Disagreement {
                    field: HeaderField::Channels,
                    ..
                }
            ) || (rank == last && matches!(e, SyncError::Local(_)))
        },
    );
    let shape: &[usize] = if rank == 0 { &[1, 4] } else { &[0, 4] };
    refused(
        &exchange,
        4,
        shape,
        |e| matches!(e, SyncError::TooFewValues { counts } if counts.iter().sum::<u64>() == 1),
    );
    if rank == 0 {
        println!("{ranks} ranks, refusals on every rank: ok");
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    // mpirun sets the world's size in the environment of every rank it starts.
    if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_none() && std::env::var_os("PMI_SIZE").is_none()
    {
        return launcher();
    }
    rank_main(std::env::args().any(|a| a == "die"))
}
