//! `tutti selftest`: runs the correctness suite (`tutti::check`) on the world this process belongs
//! to, normally under `tutti launch -n N -- tutti selftest`. Every collective, every algorithm,
//! every dtype and op, counts 0, 1, a prime and more; then a large pass of 1M elements. Exit 0
//! only if every case matched the sequential reference on every rank.

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use tutti::check::{self, CheckOptions};
use tutti::{Communicator, DType, ReduceOp};

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
