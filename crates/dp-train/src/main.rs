//! `dp_train`: data-parallel SGD on the UCI handwritten digits, the lecture's case study for tutti.
//!
//! ```text
//! tutti launch -n 4 -- dp_train            # 4 ranks, global batch 64 = 4 x 16
//! dp_train                                 # WORLD_SIZE unset: one worker
//! ```
//!
//! Every rank loads the same data and initialises the same weights from the same seed; per step,
//! each computes the gradient SUM over its slice of the global batch, one all-reduce adds the
//! slices up, and every rank applies `theta -= lr * grad / B` ([`train`]). Rank 0 prints the
//! global loss every `--log-every` steps and the test accuracy at the end.
//!
//! Two checks close the run (`--no-check` skips them):
//! 1. replicas: rank 0's parameters are broadcast and every rank compares them bit for bit with
//!    its own; the mismatch counts are all-reduced, so every rank fails if any replica drifted.
//! 2. equivalence: rank 0 re-runs the same training in-process as a single worker (same init,
//!    same batch order, the whole global batch on one rank) and requires
//!    `max |theta_dp - theta_1| <= TOLERANCE`; the verdict is broadcast so all ranks exit alike.

mod data;
mod model;
mod train;

use clap::Parser;
use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use train::{max_abs_diff, train, SingleWorker, StepLog, TrainConfig, Trained};
use tutti::{Communicator, ReduceOp};

/// The largest `|theta_dp - theta_1|` the equivalence check accepts.
///
/// Why not 0: data-parallel and single-worker runs add the same per-sample f32 gradients in a
/// different order (per rank sequentially, then across ranks in the all-reduce's order, vs one
/// sequential sum of B terms). f32 addition is not associative: each reordered sum of B = 64
/// terms differs by up to about B * 2^-24 (~4e-6) relative to the sum of |terms|, and the
/// difference enters theta scaled by lr / B, i.e. ~1e-8 absolute per step for gradients of
/// order 1. Over ~600 steps these round-off differences add up (and SGD can amplify them a
/// little) to a few ulps of the largest weights: 7.2e-7 measured at the defaults with 2, 3 and 4
/// ranks over TCP (3 ulps of a weight in [2, 4)). Why not larger: a real bug moves theta by
/// the size of a whole update: a wrong slice, a missing or doubled rank, a missing `/B` or a
/// stale gradient differ by ~lr * |g| >= 1e-3 already in the first step. 1e-4 sits two orders
/// of magnitude above the round-off and one below any such bug.
const TOLERANCE: f32 = 1e-4;

/// Data-parallel training of a 64-32-10 perceptron on the UCI digits (1,500 train / 297 test).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Passes over the 1,500 training samples (23 steps each at --batch 64).
    #[arg(long, default_value_t = 26)]
    epochs: usize,
    /// Global batch size B, split evenly over the ranks (must be divisible by WORLD_SIZE).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.2)]
    lr: f32,
    /// Hidden units.
    #[arg(long, default_value_t = 32)]
    hidden: usize,
    /// Seed of the weight init and of the batch order (must be equal on all ranks).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the global loss every this many steps (and at the last step).
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Check at the end that all replicas are identical and that the result equals a
    /// single-worker run (the default).
    #[arg(long, overrides_with = "no_check")]
    check: bool,
    /// Skip the end-of-run checks.
    #[arg(long, overrides_with = "check")]
    no_check: bool,
    /// Read the data from this gzip'd CSV instead of the copy embedded in the binary.
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// Overlap the gradient all-reduce with the backward pass, as PyTorch's DDP does: the
    /// output layer's gradient and then `--buckets` blocks of the hidden layer's are each
    /// all-reduced asynchronously as soon as they are computed.
    #[arg(long)]
    overlap: bool,
    /// Buckets of the hidden layer's gradient under `--overlap`.
    #[arg(long, default_value_t = 4)]
    buckets: usize,
    /// Rank 0 writes the final parameters here (little-endian f32, in the flat layout).
    #[arg(long, value_name = "PATH")]
    save_params: Option<PathBuf>,
}

impl Cli {
    fn config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            hidden: self.hidden,
            seed: self.seed,
            log_every: self.log_every,
            overlap_buckets: if self.overlap { self.buckets.max(1) } else { 0 },
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // With no launcher variables set (no RANK/WORLD_SIZE, Open MPI, Slurm or PMI), from_env
    // gives a world of one and the run is a plain single-worker run.
    let outcome = match Communicator::from_env() {
        Ok(comm) => run(&cli, &comm),
        Err(e) => Err(format!("cannot join the group: {e}").into()),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dp_train: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Trains over `comm`'s group, reports on rank 0, then runs the checks (all collective).
fn run(cli: &Cli, comm: &Communicator) -> Result<ExitCode, Box<dyn Error>> {
    let rank = comm.rank();
    let (train_set, test_set, source) = load(cli)?;
    let cfg = cli.config();
    train::check_config(&cfg, train_set.len(), comm.size())?;
    if rank == 0 {
        print_header(cli, comm.size(), (train_set.len(), test_set.len()), &source);
    }
    let run = train(&cfg, &train_set, comm, |log| {
        if rank == 0 {
            print_step(log);
        }
    })?;
    if rank == 0 {
        print_test_accuracy(&run, &test_set);
        print_timing(cli, &run);
        if let Some(path) = &cli.save_params {
            let bytes: Vec<u8> = run.params.iter().flat_map(|p| p.to_le_bytes()).collect();
            std::fs::write(path, bytes)
                .map_err(|e| format!("--save-params {}: {e}", path.display()))?;
        }
    }
    if cli.no_check {
        return Ok(ExitCode::SUCCESS);
    }
    check_replicas(comm, &run.params)?;
    let passed = rank != 0 || check_against_single_worker(&cfg, &train_set, &run)?;
    // Rank 0's verdict becomes every rank's, so the whole job exits alike.
    let mut verdict = [u8::from(passed)];
    comm.broadcast(&mut verdict, 0)?;
    Ok(if verdict[0] == 1 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Loads the data (`--data` or the embedded copy) and splits off the test set.
fn load(cli: &Cli) -> Result<(data::Dataset, data::Dataset, String), data::DataError> {
    let (all, source) = match &cli.data {
        Some(path) => (data::load_path(path)?, path.display().to_string()),
        None => (data::load_embedded()?, "embedded digits.csv.gz".to_owned()),
    };
    let (train_set, test_set) = all.split_tail(data::DEFAULT_TEST_LEN)?;
    Ok((train_set, test_set, source))
}

fn print_header(cli: &Cli, world: usize, (train_len, test_len): (usize, usize), source: &str) {
    println!(
        "dp_train: {world} rank(s), {train_len} train / {test_len} test samples ({source}), \
         MLP {}-{}-{}, global batch {} ({} per rank), lr {}, {} epochs, seed {}",
        data::FEATURES,
        cli.hidden,
        data::CLASSES,
        cli.batch,
        cli.batch / world,
        cli.lr,
        cli.epochs,
        cli.seed
    );
}

fn print_test_accuracy(run: &Trained, test_set: &data::Dataset) {
    let acc = run.mlp.accuracy(&run.params, test_set);
    let hits = (acc * test_set.len() as f64).round();
    println!(
        "test accuracy {acc:.3} ({hits}/{}) after {} steps (last train loss {:.4})",
        test_set.len(),
        run.steps,
        run.last.loss
    );
}

/// Time per step and the share of it spent waiting for the gradient's all-reduce (rank 0's
/// clock).
fn print_timing(cli: &Cli, run: &Trained) {
    let how = if cli.overlap {
        format!(
            "overlapped with the backward pass in {} buckets",
            cli.buckets.max(1) + 1
        )
    } else {
        "one all-reduce after the backward pass".to_string()
    };
    println!(
        "time per step {:.3} ms, {:.0}% of it waiting for the gradient ({how})",
        run.step_secs * 1e3,
        100.0 * run.comm_wait_secs / run.step_secs.max(1e-12)
    );
}

fn print_step(log: &StepLog) {
    println!(
        "step {}/{}  loss {:.4}  acc {:.3}  samples/s {:.0}",
        log.step, log.total, log.loss, log.accuracy, log.samples_per_sec
    );
}

/// Fails unless every rank holds bit-for-bit rank 0's parameters. Collective: rank 0 broadcasts
/// its parameters, each rank counts the elements whose bits differ from its own, and a sum
/// all-reduce of the per-rank counts tells every rank which replicas drifted.
fn check_replicas(comm: &Communicator, params: &[f32]) -> Result<(), Box<dyn Error>> {
    let mut reference = params.to_vec();
    comm.broadcast(&mut reference, 0)?;
    let differing = params
        .iter()
        .zip(&reference)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let mut counts = vec![0u64; comm.size()];
    counts[comm.rank()] = differing as u64;
    comm.all_reduce(&mut counts, ReduceOp::Sum)?;
    let drifted: Vec<String> = (0..counts.len())
        .filter(|&r| counts[r] != 0)
        .map(|r| format!("rank {r} ({} of {} values)", counts[r], params.len()))
        .collect();
    if !drifted.is_empty() {
        return Err(format!(
            "replica check FAILED: parameters differ from rank 0's on {}",
            drifted.join(", ")
        )
        .into());
    }
    if comm.rank() == 0 && comm.size() > 1 {
        println!(
            "replicas: all {} ranks hold bit-identical parameters ({} values)",
            comm.size(),
            params.len()
        );
    }
    Ok(())
}

/// Re-runs the training in-process on one worker and compares the final parameters; prints the
/// verdict and returns whether it passed.
fn check_against_single_worker(
    cfg: &TrainConfig,
    train_set: &data::Dataset,
    run: &Trained,
) -> Result<bool, Box<dyn Error>> {
    let single = train(cfg, train_set, &SingleWorker, |_| {})?;
    let diff = max_abs_diff(&run.params, &single.params);
    let passed = diff <= TOLERANCE;
    println!(
        "max |theta_dp - theta_1| = {diff:.1e} (tolerance {TOLERANCE:e}): {}",
        if passed { "OK" } else { "FAILED" }
    );
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `world` tutti ranks on threads over the in-memory transport; runs `body` on each and
    /// returns the results in rank order.
    fn on_ranks<T: Send>(world: usize, body: impl Fn(&Communicator) -> T + Sync) -> Vec<T> {
        let config = tutti::Config {
            timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let comms = Communicator::in_process(world, config).unwrap();
        std::thread::scope(|s| {
            let handles: Vec<_> = comms.iter().map(|c| s.spawn(|| body(c))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn small_config() -> TrainConfig {
        TrainConfig {
            epochs: 2,
            batch: 64,
            lr: 0.2,
            hidden: 32,
            seed: 5,
            log_every: 10,
            overlap_buckets: 0,
        }
    }

    fn train_set() -> data::Dataset {
        data::load_embedded()
            .unwrap()
            .split_tail(data::DEFAULT_TEST_LEN)
            .unwrap()
            .0
    }

    /// The case study end to end in one process: 4 tutti ranks train, hold bit-identical
    /// replicas, and land within TOLERANCE of the single-worker run.
    #[test]
    fn four_tutti_ranks_match_a_single_worker() {
        let (cfg, data) = (small_config(), train_set());
        let runs = on_ranks(4, |comm| {
            let run = train(&cfg, &data, comm, |_| {}).map_err(|e| e.to_string())?;
            check_replicas(comm, &run.params).map_err(|e| e.to_string())?;
            Ok::<_, String>(run.params)
        });
        let runs: Vec<Vec<f32>> = runs.into_iter().map(Result::unwrap).collect();
        assert!(runs.iter().all(|p| p == &runs[0]));
        let single = train(&cfg, &data, &SingleWorker, |_| {}).unwrap();
        let diff = max_abs_diff(&runs[0], &single.params);
        assert!(diff <= TOLERANCE, "max |theta_dp - theta_1| = {diff:e}");
        assert_ne!(
            runs[0],
            small_config_init(&cfg),
            "training moved the parameters"
        );
    }

    fn small_config_init(cfg: &TrainConfig) -> Vec<f32> {
        model::Mlp::new(data::FEATURES, cfg.hidden, data::CLASSES)
            .unwrap()
            .init(cfg.seed)
    }

    /// A replica that drifted by one ulp in one value is caught on every rank, and named.
    #[test]
    fn replica_check_names_the_drifted_rank() {
        let verdicts = on_ranks(3, |comm| {
            let mut params = vec![0.5f32; 100];
            if comm.rank() == 2 {
                params[37] = f32::from_bits(params[37].to_bits() + 1);
            }
            check_replicas(comm, &params).map_err(|e| e.to_string())
        });
        for verdict in verdicts {
            let err = verdict.unwrap_err();
            assert!(err.contains("rank 2 (1 of 100 values)"), "{err}");
            assert!(!err.contains("rank 1"), "{err}");
        }
    }

    #[test]
    fn uneven_batch_is_a_clear_error() {
        let data = train_set();
        let cfg = TrainConfig {
            batch: 30,
            ..small_config()
        };
        let errors = on_ranks(4, |comm| {
            train(&cfg, &data, comm, |_| {})
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        for err in errors {
            assert!(err
                .unwrap_err()
                .contains("--batch 30 is not divisible by the world size 4"));
        }
    }

    #[test]
    fn cli_defaults_and_check_flags() {
        let cli = Cli::try_parse_from(["dp_train"]).unwrap();
        assert_eq!((cli.batch, cli.hidden, cli.log_every), (64, 32, 10));
        assert!(!cli.no_check);
        // 26 epochs of 1,500 / 64 = 23 steps: about 600 steps.
        assert_eq!(cli.epochs * (1500 / cli.batch), 598);
        assert!(
            Cli::try_parse_from(["dp_train", "--no-check"])
                .unwrap()
                .no_check
        );
        let last_wins = Cli::try_parse_from(["dp_train", "--no-check", "--check"]).unwrap();
        assert!(!last_wins.no_check);
        assert!(Cli::try_parse_from(["dp_train", "--batch", "x"]).is_err());
    }
}
