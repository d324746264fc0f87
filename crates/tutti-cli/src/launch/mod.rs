//! `tutti launch`: start N ranks of one program on this machine and supervise them, like
//! `torchrun --standalone` or `mpirun` on a single host.
//!
//! ```text
//! tutti launch -n 4 [--master-addr 127.0.0.1] [--master-port 0] [--timeout SECS] -- python train.py
//! ```
//!
//! # Rendezvous
//! The launcher hosts the rendezvous key-value store itself (torchrun's "agent store"): it binds
//! a [`TcpStoreServer`] *before* starting any rank and hands its real port to every rank in
//! `MASTER_PORT`, with `TUTTI_USE_AGENT_STORE=1` telling rank 0 not to host one. Nobody races
//! for the port; `--master-port 0` (the default) lets the kernel pick a free one.
//!
//! # Environment of a rank
//! The launcher's own environment, plus `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`
//! (= `WORLD_SIZE` on one machine), `MASTER_ADDR`, `MASTER_PORT`, `TUTTI_LAUNCHER=1`,
//! `TUTTI_USE_AGENT_STORE=1` and `TUTTI_JOB_ID` (a random 64-bit id unless set). Standard input
//! is `/dev/null` (see process groups below).
//!
//! # The job secret
//! The store and every link of the job are authenticated with a secret (see `tutti::auth`):
//! `TUTTI_SECRET` or `TUTTI_SECRET_FILE` from the launcher's environment when set (the ranks
//! inherit it), else 32 random bytes drawn here and handed to the ranks in `TUTTI_SECRET`. So a
//! job started with `tutti launch` is always authenticated; to join ranks started elsewhere,
//! give every process the same secret.
//!
//! # Output
//! Unless `--no-prefix`, every line a rank writes to stdout (stderr) is written to our stdout
//! (stderr) as `[rank R] line`, one whole line per write under the stream's lock, so lines of
//! different ranks never interleave. Two reader threads per rank; bytes pass through as they
//! are (no UTF-8 decoding). A final line without a newline gets one; a line longer than
//! [`MAX_LINE`] bytes is forwarded in pieces of that size, each prefixed (bounded memory).
//!
//! # Supervision
//! One loop on the main thread owns every [`Child`]; it alone reaps them (`try_wait`) and
//! signals them, by PID and only while not yet reaped, so a PID can never have been recycled
//! for another process. A dedicated thread turns SIGINT, SIGTERM, SIGHUP and SIGCHLD into
//! events (the signals are blocked in every thread and taken with `sigwait`). The job stops
//! for the first of:
//! - a rank exits non-zero or dies by a signal: one line names it (`rank 2 (pid 1234) exited
//!   with status 3; stopping the other 3 ranks`), the others get SIGTERM; exit code = the
//!   rank's status, or 128 + its signal;
//! - SIGINT/SIGTERM/SIGHUP to the launcher: forwarded to every rank; exit code 128 + signal;
//! - `--timeout` expires: the ranks get SIGTERM; exit code 124 (as `timeout(1)`).
//!
//! Ranks still alive `--grace` seconds (default 5) after that get SIGKILL; a second signal to
//! the launcher while stopping sends SIGKILL at once. All ranks exiting 0 gives exit code 0.
//! A rank that cannot be started: 127 if the program was not found, 126 if not executable.
//!
//! # No orphans, and process groups
//! Each rank is started with `PR_SET_PDEATHSIG = SIGKILL`, so it dies if the launcher dies,
//! even by SIGKILL. (The kernel fires it when the *thread* that forked the rank exits: ranks
//! are forked by the main thread, which lives until the launcher exits.)
//!
//! All ranks are put in one new process group (led by rank 0), apart from the launcher's.
//! Ctrl-C in a terminal signals the terminal's foreground group: were the ranks in ours, each
//! would get SIGINT twice, once from the terminal and once forwarded by us, and a program that
//! treats a second Ctrl-C as "abort now" would skip its clean shutdown. In their own group
//! they get it exactly once, from us; and `kill -- -PGID` still stops the job from outside.
//! The cost: a background group may not read the terminal (it would stop on SIGTTIN), hence
//! stdin is `/dev/null`. Grandchildren (e.g. what a `sh -c` rank starts without `exec`) are
//! the rank's to stop: the launcher signals only processes it started.
//!
//! # Files
//! This file parses the arguments, hosts the store and starts the ranks; `supervise.rs` holds
//! the supervision loop, `output.rs` the output forwarding and `signals.rs` the signal handling.

mod output;
mod signals;
mod supervise;

use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use clap::Args;
use tutti::auth::Secret;
use tutti::rendezvous::{ServerOptions, TcpStoreServer};
use tutti::Deadline;

mod bind;

use supervise::{stopping_others, Rank, StopReason, Supervisor};

/// Arguments of `tutti launch`.
#[derive(Args, Debug, Clone)]
pub struct LaunchArgs {
    /// Number of ranks to start on this machine (the world size).
    #[arg(short = 'n', long = "nproc", alias = "nproc-per-node", value_name = "N",
          value_parser = parse_world)]
    pub world: usize,

    /// Address the rendezvous store listens on and ranks connect to (MASTER_ADDR).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub master_addr: String,

    /// Port of the rendezvous store (MASTER_PORT); 0 lets the kernel pick a free one.
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub master_port: u16,

    /// Stop the whole job after this many seconds (exit code 124).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// Seconds ranks get to exit after SIGTERM (or a forwarded signal) before SIGKILL.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "5")]
    pub grace: Duration,

    /// Pin each rank to a core of its own (`core`, the default when there are at least as many
    /// allowed cores as ranks, as mpirun does), or leave placement to the kernel (`none`).
    #[arg(long, value_name = "POLICY", default_value = "core", value_parser = ["core", "none"])]
    pub bind_to: String,

    /// Pass the ranks' output through untouched instead of prefixing lines with `[rank R] `.
    #[arg(long)]
    pub no_prefix: bool,

    /// The program to run, and its arguments (after `--`).
    #[arg(
        value_name = "PROGRAM",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}

/// Longest line forwarded in one piece; bounds the memory a rank's output can take.
pub const MAX_LINE: usize = 64 * 1024;

/// How long to wait, once every rank is reaped, for output still in their pipes.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// Runs `tutti launch` to completion and returns the launcher's exit code.
///
/// Must be called while the process has a single thread: it blocks the forwarded signals
/// first, and only threads started afterwards inherit that mask.
pub fn run(args: LaunchArgs) -> ExitCode {
    ExitCode::from(exit_code(&args))
}

/// As [`run`], returning the exit code as a number (for the Python binding's
/// `python -m tutti.launch`, which runs the launcher inside the interpreter's process). The
/// same condition holds: no other thread may exist yet.
pub fn exit_code(args: &LaunchArgs) -> u8 {
    match launch(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tutti launch: {}", err.message);
            err.exit
        }
    }
}

/// An error that stops the launcher before any rank runs: a message and an exit code.
#[derive(Debug)]
struct LaunchError {
    message: String,
    exit: u8,
}

/// Hosts the store, starts the ranks, supervises them, and returns the exit code.
fn launch(args: &LaunchArgs) -> Result<u8, LaunchError> {
    let events = signals::install().map_err(|err| LaunchError {
        message: format!("cannot set up signal handling: {err}"),
        exit: 1,
    })?;
    let job = JobAuth::from_env()?;
    let opts = ServerOptions::for_job(args.world, Some(job.secret.clone()), job.id);
    let store = host_store(&args.master_addr, args.master_port, opts)?;
    let port = store.local_addr().port();
    tracing::info!(addr = %store.local_addr(), world = args.world, "rendezvous store up");

    let (output_done, output_drained) = mpsc::channel();
    let mut supervisor = Supervisor::new(args);
    for rank in 0..args.world {
        let group = supervisor.live.first().map(|r| r.child.id());
        match spawn_rank(args, &job, rank, port, group, &output_done) {
            Ok(child) => supervisor.live.push(Rank { rank, child }),
            Err(err) if supervisor.live.is_empty() => return Err(spawn_error(args, rank, &err)),
            Err(err) => {
                let err = spawn_error(args, rank, &err);
                let others = supervisor.live.len();
                eprintln!("tutti launch: {}; {}", err.message, stopping_others(others));
                supervisor.begin_stop(StopReason::Failed(err.exit), libc::SIGTERM);
                break;
            }
        }
    }
    drop(output_done);
    let code = supervisor.supervise(&events);
    drop(store);
    wait_for_output(&output_drained);
    Ok(code)
}

/// The job's secret and id, and what the ranks must be told of them.
struct JobAuth {
    secret: Secret,
    id: u64,
    /// `TUTTI_SECRET` for the ranks when the secret was drawn here (else they inherit ours).
    generated: Option<String>,
}

impl JobAuth {
    fn from_env() -> Result<JobAuth, LaunchError> {
        let fail = |message| LaunchError { message, exit: 1 };
        let (secret, generated) = match Secret::from_vars(|k| std::env::var(k).ok()) {
            Ok(Some(s)) => (s, None),
            Ok(None) => {
                let hex = Secret::generate_hex()
                    .map_err(|e| fail(format!("cannot draw a random job secret: {e}")))?;
                let secret = Secret::new(hex.clone().into_bytes()).map_err(fail)?;
                (secret, Some(hex))
            }
            Err(e) => return Err(fail(e)),
        };
        let id = match std::env::var("TUTTI_JOB_ID") {
            Ok(v) => parse_job_id(&v)
                .ok_or_else(|| fail(format!("TUTTI_JOB_ID={v:?} is not a 64-bit number")))?,
            Err(_) => tutti::auth::random_bytes::<8>()
                .map(u64::from_le_bytes)
                .map_err(|e| fail(format!("cannot draw a random job id: {e}")))?,
        };
        Ok(JobAuth {
            secret,
            id,
            generated,
        })
    }
}

/// A job id: decimal, or hex after `0x` (as `tutti::rendezvous` reads `TUTTI_JOB_ID`).
fn parse_job_id(v: &str) -> Option<u64> {
    let v = v.trim();
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Binds the rendezvous store to `addr:port` (port 0: any free port).
fn host_store(addr: &str, port: u16, opts: ServerOptions) -> Result<TcpStoreServer, LaunchError> {
    let fail = |message| LaunchError { message, exit: 1 };
    let sockaddr: SocketAddr = (addr, port)
        .to_socket_addrs()
        .map_err(|err| fail(format!("cannot resolve --master-addr {addr:?}: {err}")))?
        .next()
        .ok_or_else(|| fail(format!("--master-addr {addr:?} resolves to no address")))?;
    // The store's error names the address and why (e.g. "port 29500 is already in use").
    TcpStoreServer::bind_with(sockaddr, opts).map_err(|err| {
        let hint = match port {
            0 => "",
            _ => "; choose another --master-port, or 0 to let the kernel pick one",
        };
        fail(format!("{err}{hint}"))
    })
}

/// Starts rank `rank`; `group` is rank 0's PID (the job's process group), `None` for rank 0.
fn spawn_rank(
    args: &LaunchArgs,
    job: &JobAuth,
    rank: usize,
    port: u16,
    group: Option<u32>,
    output_done: &Sender<()>,
) -> io::Result<Child> {
    let (program, program_args) = args
        .command
        .split_first()
        .ok_or(io::ErrorKind::InvalidInput)?;
    let mut command = Command::new(program);
    command
        .args(program_args)
        .envs(rank_env(args, job, rank, port))
        .stdin(Stdio::null())
        .process_group(
            group
                .and_then(|pid| libc::pid_t::try_from(pid).ok())
                .unwrap_or(0),
        );
    if !args.no_prefix {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    signals::die_with_launcher(&mut command)?;
    let mut child = command.spawn()?;
    tracing::debug!(rank, pid = child.id(), "rank started");
    if args.bind_to == "core" {
        bind::rank_to_core(child.id(), rank, args.world);
    }
    if let Some(out) = child.stdout.take() {
        output::forward(rank, out, output::Sink::Stdout, output_done.clone());
    }
    if let Some(err) = child.stderr.take() {
        output::forward(rank, err, output::Sink::Stderr, output_done.clone());
    }
    Ok(child)
}

/// The variables that tell rank `rank` who it is and where the store is.
fn rank_env(
    args: &LaunchArgs,
    job: &JobAuth,
    rank: usize,
    port: u16,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", args.world.to_string()),
        ("LOCAL_RANK", rank.to_string()),
        ("LOCAL_WORLD_SIZE", args.world.to_string()),
        ("MASTER_ADDR", args.master_addr.clone()),
        ("MASTER_PORT", port.to_string()),
        ("TUTTI_LAUNCHER", "1".to_string()),
        ("TUTTI_USE_AGENT_STORE", "1".to_string()),
        ("TUTTI_JOB_ID", format!("{:#x}", job.id)),
    ];
    if let Some(hex) = &job.generated {
        env.push(("TUTTI_SECRET", hex.clone()));
    }
    env
}

/// The message and exit code for a rank that could not be started (127: not found, as a shell).
fn spawn_error(args: &LaunchArgs, rank: usize, err: &io::Error) -> LaunchError {
    let program = args
        .command
        .first()
        .map(|p| p.to_string_lossy())
        .unwrap_or_default();
    let exit = match err.kind() {
        io::ErrorKind::NotFound => 127,
        io::ErrorKind::PermissionDenied => 126,
        _ => 1,
    };
    LaunchError {
        message: format!("cannot start rank {rank}: {program:?}: {err}"),
        exit,
    }
}

/// Waits (bounded) until every output thread has forwarded the last bytes of its rank.
///
/// A rank's grandchild may keep a pipe open long after the rank exited; we do not wait for it.
fn wait_for_output(drained: &Receiver<()>) {
    let deadline = Deadline::after(OUTPUT_DRAIN);
    while !deadline.expired() {
        match drained.recv_timeout(deadline.remaining()) {
            Ok(()) => {}
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => break,
        }
    }
    tracing::warn!("some rank output pipes are still open (grandchildren?); not waiting for them");
}

/// `-n`: a world size of at least 1.
fn parse_world(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("-n must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("-n takes a whole number of ranks, not {s:?}")),
    }
}

/// A non-negative, finite number of seconds (fractions allowed).
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a valid number of seconds"))
}

/// A positive number of seconds.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let timeout = parse_secs(s)?;
    if timeout.is_zero() {
        return Err("--timeout must be more than 0 seconds".to_string());
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arguments() {
        assert_eq!(parse_world("3"), Ok(3));
        assert_eq!(parse_world("0"), Err("-n must be at least 1".to_string()));
        assert!(parse_world("-1").is_err());
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_secs("0"), Ok(Duration::ZERO));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("inf").is_err());
        assert!(parse_timeout("0").is_err());
    }
}
