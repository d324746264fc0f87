//! The `tutti` command: a thin layer over the library.
//!
//! Each subcommand lives in its own module, which owns its clap `Args` struct and a
//! `run(args) -> ExitCode` entry point; adding a subcommand is one [`Command`] variant plus one
//! match arm in [`main`].
//!
//! Logging goes to stderr through `tracing`; the filter comes from `TUTTI_LOG` (same syntax as
//! `RUST_LOG`, e.g. `TUTTI_LOG=debug` or `TUTTI_LOG=tutti=trace`) and defaults to `warn`.

mod bench;
mod model;
mod probe;
mod selftest;
mod trace;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tutti_cli::launch;

/// Collective communication for data-parallel training: launch, benchmark, self-test, probe.
#[derive(Parser, Debug)]
#[command(name = "tutti", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands, one module each.
#[derive(Subcommand, Debug)]
enum Command {
    /// Start N ranks of a program on this machine (like torchrun --standalone or mpirun).
    Launch(launch::LaunchArgs),
    /// Check every collective, algorithm, dtype and op against a sequential reference (run it
    /// under `tutti launch`).
    Selftest(selftest::SelftestArgs),
    /// Time a collective over a sweep of sizes with nccl-tests' flags and columns (run it under
    /// `tutti launch`).
    Bench(bench::BenchArgs),
    /// Predict every algorithm's time with the alpha-beta-gamma model and show the one it picks
    /// (runs nothing; `--stop-and-wait` works the windowing example).
    Model(model::ModelArgs),
    /// Measure the latency, jitter and bandwidth of every pair of ranks, one pair at a time, and
    /// name the bottleneck link and any slow rank (run it under `tutti launch`).
    Probe(probe::ProbeArgs),
    /// Merge the flight-recorder dumps of all ranks (TUTTI_TRACE_DIR) and say which ranks are
    /// behind and on which op, and which failed and why.
    Trace(trace::TraceArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Launch(args) => launch::run(args),
        Command::Selftest(args) => selftest::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Model(args) => model::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Trace(args) => trace::run(args),
    }
}

/// Installs the stderr `tracing` subscriber, filtered by `TUTTI_LOG` (default `warn`).
///
/// Starts no thread: `launch` relies on being the only thread when it blocks signals.
fn init_logging() {
    let filter = match std::env::var("TUTTI_LOG") {
        Ok(spec) => EnvFilter::try_new(&spec).unwrap_or_else(|err| {
            eprintln!("tutti: ignoring TUTTI_LOG={spec:?} ({err}); logging warnings only");
            EnvFilter::new("warn")
        }),
        Err(_) => EnvFilter::new("warn"),
    };
    // A second initialisation cannot happen here; if it ever did, keeping the first is right.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
