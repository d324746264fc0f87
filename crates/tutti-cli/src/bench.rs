//! `tutti bench`: times a collective over a range of sizes and prints an nccl-tests-style table,
//! run on every rank under `tutti launch -n N -- tutti bench ...`.
//!
//! For each size: `warmup` untimed calls, then `iters` timed calls between barriers. `time` is the
//! mean per call in microseconds, averaged over ranks; `algbw = bytes / time` (GB = 1e9);
//! `busbw = algbw x factor` with the nccl-tests factors: all-reduce `2(n-1)/n`; all-gather,
//! reduce-scatter, all-to-all `(n-1)/n`; broadcast and reduce 1. `#wrong` counts elements that
//! differ from the exact expected result of a checked call made after the timed ones.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use tutti::{Communicator, ReduceOp};

/// The collectives `tutti bench` can time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchOp {
    AllReduce,
    Broadcast,
    Reduce,
    AllGather,
    ReduceScatter,
    AllToAll,
}

/// Options of `tutti bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The collective to time.
    #[arg(long, value_enum, default_value = "all-reduce")]
    op: BenchOp,
    /// Smallest message in bytes (suffixes K, M, G: powers of 1024).
    #[arg(long, default_value = "1K", value_parser = parse_size)]
    min_bytes: usize,
    /// Largest message in bytes.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    max_bytes: usize,
    /// Size multiplier between rows.
    #[arg(long, default_value_t = 4)]
    factor: usize,
    /// Timed calls per size.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed calls per size.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Algorithm overrides, as TUTTI_ALGO (e.g. allreduce:naive).
    #[arg(long)]
    algo: Option<String>,
}

/// Parses `64M`, `1K`, `123`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1usize << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a size like 4096, 64K, 64M or 1G"))
}

/// Runs the benchmark; rank 0 prints the table.
pub fn run(args: BenchArgs) -> ExitCode {
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tutti bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let comm = Communicator::from_env()?;
    if let Some(spec) = &args.algo {
        comm.set_algorithms(comm.algorithms().parse(spec)?);
    }
    if args.factor < 2 || args.min_bytes > args.max_bytes || args.iters == 0 {
        return Err("need --factor >= 2, --min-bytes <= --max-bytes and --iters >= 1".into());
    }
    let n = comm.size();
    let a = comm.algorithms();
    if comm.rank() == 0 {
        println!(
            "# tutti bench: {:?} on {n} ranks, f32, sum; allreduce {}, broadcast {}, segment {} B; {} iters, {} warmup",
            args.op, a.all_reduce, a.broadcast, a.segment_bytes, args.iters, args.warmup
        );
        println!(
            "{:>12} {:>12} {:>6} {:>6} {:>12} {:>10} {:>10} {:>8}",
            "size(B)", "count", "type", "redop", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong"
        );
    }
    let mut bytes = args.min_bytes.max(4 * n);
    while bytes <= args.max_bytes {
        let row = bench_size(&comm, args, bytes / 4 / n * n)?;
        if comm.rank() == 0 {
            println!("{row}");
        }
        bytes *= args.factor;
    }
    Ok(())
}

fn bench_size(comm: &Communicator, args: &BenchArgs, count: usize) -> tutti::Result<String> {
    let n = comm.size();
    let mut buf: Vec<f32> = vec![1.0; count];
    let mut out: Vec<f32> = vec![0.0; count];
    let mut call = |buf: &mut Vec<f32>, out: &mut Vec<f32>| -> tutti::Result<()> {
        match args.op {
            BenchOp::AllReduce => comm.all_reduce(buf, ReduceOp::Sum),
            BenchOp::Broadcast => comm.broadcast(buf, 0),
            BenchOp::Reduce => comm.reduce_in_place(buf, ReduceOp::Sum, 0),
            BenchOp::AllGather => comm.all_gather_in_place(buf),
            BenchOp::ReduceScatter => {
                comm.reduce_scatter(buf, &mut out[..count / n], ReduceOp::Sum)
            }
            BenchOp::AllToAll => comm.all_to_all(buf, out),
        }
    };
    for _ in 0..args.warmup {
        call(&mut buf, &mut out)?;
    }
    comm.barrier()?;
    let started = Instant::now();
    for _ in 0..args.iters {
        call(&mut buf, &mut out)?;
    }
    let mut secs = [started.elapsed().as_secs_f64() / args.iters as f64];
    comm.all_reduce(&mut secs, ReduceOp::Avg)?;
    let wrong = check_once(comm, args.op, count, &mut call)?;
    let size = count * 4;
    let algbw = size as f64 / secs[0] / 1e9;
    let nf = n as f64;
    let factor = match args.op {
        BenchOp::AllReduce => 2.0 * (nf - 1.0) / nf,
        BenchOp::AllGather | BenchOp::ReduceScatter | BenchOp::AllToAll => (nf - 1.0) / nf,
        BenchOp::Broadcast | BenchOp::Reduce => 1.0,
    };
    Ok(format!(
        "{size:>12} {count:>12} {:>6} {:>6} {:>12.1} {:>10.3} {:>10.3} {wrong:>8}",
        "f32",
        "sum",
        secs[0] * 1e6,
        algbw,
        algbw * factor
    ))
}

/// One more call on known data; returns the number of wrong elements summed over ranks.
fn check_once(
    comm: &Communicator,
    op: BenchOp,
    count: usize,
    call: &mut impl FnMut(&mut Vec<f32>, &mut Vec<f32>) -> tutti::Result<()>,
) -> tutti::Result<u64> {
    let (n, rank) = (comm.size(), comm.rank());
    let value = |r: usize, i: usize| ((r * 7 + i) % 13) as f32;
    let mut buf: Vec<f32> = (0..count).map(|i| value(rank, i)).collect();
    let mut out = vec![0f32; count];
    call(&mut buf, &mut out)?;
    let expect_sum = |i: usize| (0..n).map(|r| value(r, i)).sum::<f32>();
    let block = count / n;
    let wrong = match op {
        BenchOp::AllReduce => (0..count).filter(|&i| buf[i] != expect_sum(i)).count(),
        BenchOp::Broadcast => (0..count).filter(|&i| buf[i] != value(0, i)).count(),
        BenchOp::Reduce if rank == 0 => (0..count).filter(|&i| buf[i] != expect_sum(i)).count(),
        BenchOp::Reduce => 0,
        BenchOp::AllGather => (0..count)
            .filter(|&i| {
                let owner = i / block.max(1);
                // Blocks of other ranks were filled in; this rank's own block is its input.
                owner < n && buf[i] != value(owner, i)
            })
            .count(),
        BenchOp::ReduceScatter => (0..block)
            .filter(|&i| out[i] != expect_sum(rank * block + i))
            .count(),
        BenchOp::AllToAll => (0..count)
            .filter(|&i| {
                let (src, j) = (i / block, i % block);
                out[i] != value(src, rank * block + j)
            })
            .count(),
    };
    let mut total = [wrong as u64];
    comm.all_reduce(&mut total, ReduceOp::Sum)?;
    Ok(total[0])
}
