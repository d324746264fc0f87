//! `tutti selftest`: runs the correctness suite (`tutti::check`) on the world this process belongs
//! to, normally under `tutti launch -n N -- tutti selftest`. Every collective, every algorithm,
//! every dtype and op, counts 0, 1, a prime and more; then a large pass of 1M elements. Exit 0
//! only if every case matched the sequential reference on every rank.

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use tutti::check::{self, CheckOptions};
use tutti::{Communicator, DType, ReduceOp};
use tutti_core::model::Op as ModelOp;

/// Options of `tutti selftest`.
#[derive(Args, Debug)]
pub struct SelftestArgs {
    /// Element counts per rank for the full pass (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,1,13,1009")]
    counts: Vec<usize>,
    /// Element count of the large pass (0 skips it).
    #[arg(long, default_value_t = 1 << 20)]
    large: usize,
    /// Seed of the inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Instead of the suite: run this many f32 sum all-reduces of `--bytes` each and print a
    /// digest of their results (`tutti::check::all_reduce_digest`), which equals that of any
    /// clean run of the same algorithm (force one with `TUTTI_ALGO`).
    #[arg(long, default_value_t = 0)]
    all_reduces: usize,
    /// Bytes per rank of each `--all-reduces` call (a multiple of 4).
    #[arg(long, default_value_t = 4 << 20)]
    bytes: usize,
}

/// Runs the suite; prints one line per rank.
pub fn run(args: SelftestArgs) -> ExitCode {
    let comm = match Communicator::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tutti selftest: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.all_reduces > 0 {
        return digest(&comm, &args);
    }
    let started = Instant::now();
    let mut passes = vec![CheckOptions {
        counts: args.counts,
        seed: args.seed,
        ..CheckOptions::full()
    }];
    if args.large > 0 {
        passes.push(CheckOptions {
            counts: vec![args.large],
            dtypes: vec![DType::F32, DType::BF16, DType::I64, DType::U8],
            ops: vec![ReduceOp::Sum, ReduceOp::Max, ReduceOp::Avg],
            algorithms: check::every_algorithm().into_iter().take(3).collect(),
            seed: args.seed + 1,
        });
    }
    let mut cases = 0;
    for opts in &passes {
        match check::run(&comm, opts) {
            Ok(report) => cases += report.cases,
            Err(e) => {
                eprintln!("tutti selftest: FAILED on rank {}: {e}", comm.rank());
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "selftest: rank {} of {}: {cases} cases passed in {:.1?}",
        comm.rank(),
        comm.size(),
        started.elapsed()
    );
    ExitCode::SUCCESS
}

/// `--all-reduces N`: runs them and prints one line per rank:
/// `all-reduce digest: rank R of W: N x B B by ALGO: DIGEST; slowest call S s, total T s`.
fn digest(comm: &Communicator, args: &SelftestArgs) -> ExitCode {
    let plan = comm.plan_of(ModelOp::AllReduce, Some(DType::F32), args.bytes);
    match check::all_reduce_digest(comm, args.all_reduces, args.bytes / 4, args.seed) {
        Ok(run) => {
            println!(
                "all-reduce digest: rank {} of {}: {} x {} B by {}: {:016x}; slowest call {:.3} s, \
                 total {:.1} s (deadline {:.0} s)",
                comm.rank(),
                comm.size(),
                args.all_reduces,
                args.bytes,
                plan.algorithm.name(),
                run.digest,
                run.slowest.as_secs_f64(),
                run.total.as_secs_f64(),
                comm.timeout().as_secs_f64(),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "tutti selftest: all-reduces FAILED on rank {}: {e}",
                comm.rank()
            );
            ExitCode::FAILURE
        }
    }
}
