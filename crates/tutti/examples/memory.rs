//! Peak memory of the transport, measured from `/proc/self/status` (VmHWM) on every rank:
//!
//! ```sh
//! cargo build --release --examples
//! # A sender that outruns its receiver: 2,000 sends of 1 MiB, each receive posted 1 ms late.
//! tutti launch -n 2 -- target/release/examples/memory flood 2000 1048576 1000
//! # A 64 MiB f32 all-reduce, 5 times.
//! tutti launch -n 2 -- target/release/examples/memory all_reduce 67108864 5
//! ```
//! Each rank prints its peak resident memory after forming the world and at the end, so the
//! growth is what the workload cost (buffers plus what the transport held).

use std::time::{Duration, Instant};
use tutti::{Communicator, ReduceOp};

/// Peak resident set size of this process, in bytes (Linux), or 0 where unknown.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(b: usize) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn arg(args: &[String], i: usize, default: usize) -> usize {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn main() -> tutti::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let comm = Communicator::from_env()?;
    let start = peak_rss();
    let t0 = Instant::now();
    let what = match args.get(1).map(String::as_str) {
        Some("flood") => flood(
            &comm,
            arg(&args, 2, 2000),
            arg(&args, 3, 1 << 20),
            arg(&args, 4, 1000),
        )?,
        Some("all_reduce") => all_reduce(&comm, arg(&args, 2, 64 << 20), arg(&args, 3, 5))?,
        _ => {
            eprintln!("usage: memory flood COUNT BYTES LATE_US | memory all_reduce BYTES ITERS");
            std::process::exit(2);
        }
    };
    let end = peak_rss();
    println!(
        "rank {}: {what} in {:.2?}: peak RSS {:.1} MiB after init, {:.1} MiB at the end (+{:.1} MiB)",
        comm.rank(),
        t0.elapsed(),
        mib(start),
        mib(end),
        mib(end.saturating_sub(start)),
    );
    Ok(())
}

/// Rank 0 sends `count` messages of `bytes` to rank 1, which posts each receive `late_us` late.
fn flood(comm: &Communicator, count: usize, bytes: usize, late_us: usize) -> tutti::Result<String> {
    let mut buf = vec![comm.rank() as u8; bytes];
    match comm.rank() {
        0 => (0..count).try_for_each(|_| comm.send(&buf, 1, 1))?,
        1 => {
            for _ in 0..count {
                std::thread::sleep(Duration::from_micros(late_us as u64));
                comm.recv(&mut buf, 0, 1)?;
            }
        }
        _ => {}
    }
    comm.barrier()?;
    Ok(format!(
        "{count} messages of {bytes} B, receives {late_us} us late"
    ))
}

/// `iters` all-reduces of `bytes` of f32.
fn all_reduce(comm: &Communicator, bytes: usize, iters: usize) -> tutti::Result<String> {
    let mut v = vec![1.0f32; bytes / 4];
    for _ in 0..iters {
        comm.all_reduce(&mut v, ReduceOp::Sum)?;
    }
    Ok(format!("{iters} all-reduces of {bytes} B"))
}
