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
//! (= `WORLD_SIZE` on one machine), `MASTER_ADDR`, `MASTER_PORT`, `TUTTI_LAUNCHER=1` and
//! `TUTTI_USE_AGENT_STORE=1`. Standard input is `/dev/null` (see process groups below).
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

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::Duration;

use clap::Args;
use tutti::rendezvous::TcpStoreServer;
use tutti::Deadline;

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

/// How long SIGKILLed ranks get to be reaped before the launcher gives up on them.
const REAP_AFTER_KILL: Duration = Duration::from_secs(10);

/// Safety net: children are also polled this often, in case a SIGCHLD event is lost.
const POLL: Duration = Duration::from_millis(500);

/// Exit code of a job stopped by `--timeout` (as `timeout(1)`).
const EXIT_TIMEOUT: u8 = 124;

/// Runs `tutti launch` to completion and returns the launcher's exit code.
///
/// Must be called while the process has a single thread: it blocks the forwarded signals
/// first, and only threads started afterwards inherit that mask.
pub fn run(args: LaunchArgs) -> ExitCode {
    match launch(&args) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("tutti launch: {}", err.message);
            ExitCode::from(err.exit)
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
    let store = host_store(&args.master_addr, args.master_port)?;
    let port = store.local_addr().port();
    tracing::info!(addr = %store.local_addr(), world = args.world, "rendezvous store up");

    let (output_done, output_drained) = mpsc::channel();
    let mut supervisor = Supervisor::new(args);
    for rank in 0..args.world {
        let group = supervisor.live.first().map(|r| r.child.id());
        match spawn_rank(args, rank, port, group, &output_done) {
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

/// Binds the rendezvous store to `addr:port` (port 0: any free port).
fn host_store(addr: &str, port: u16) -> Result<TcpStoreServer, LaunchError> {
    let fail = |message| LaunchError { message, exit: 1 };
    let sockaddr: SocketAddr = (addr, port)
        .to_socket_addrs()
        .map_err(|err| fail(format!("cannot resolve --master-addr {addr:?}: {err}")))?
        .next()
        .ok_or_else(|| fail(format!("--master-addr {addr:?} resolves to no address")))?;
    // The store's error names the address and why (e.g. "port 29500 is already in use").
    TcpStoreServer::bind(sockaddr).map_err(|err| {
        let hint = match port {
            0 => "",
            _ => "; choose another --master-port, or 0 to let the kernel pick one",
        };
        fail(format!("{err}{hint}"))
    })
}

/// One started rank, not yet reaped.
#[derive(Debug)]
struct Rank {
    rank: usize,
    child: Child,
}

/// Starts rank `rank`; `group` is rank 0's PID (the job's process group), `None` for rank 0.
fn spawn_rank(
    args: &LaunchArgs,
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
        .envs(rank_env(args, rank, port))
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
    if let Some(out) = child.stdout.take() {
        output::forward(rank, out, output::Sink::Stdout, output_done.clone());
    }
    if let Some(err) = child.stderr.take() {
        output::forward(rank, err, output::Sink::Stderr, output_done.clone());
    }
    Ok(child)
}

/// The variables that tell rank `rank` who it is and where the store is.
fn rank_env(args: &LaunchArgs, rank: usize, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", args.world.to_string()),
        ("LOCAL_RANK", rank.to_string()),
        ("LOCAL_WORLD_SIZE", args.world.to_string()),
        ("MASTER_ADDR", args.master_addr.clone()),
        ("MASTER_PORT", port.to_string()),
        ("TUTTI_LAUNCHER", "1".to_string()),
        ("TUTTI_USE_AGENT_STORE", "1".to_string()),
    ]
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

/// Why the job is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopReason {
    /// A rank failed (or could not start); the launcher exits with this code.
    Failed(u8),
    /// The launcher received this signal.
    Signal(libc::c_int),
    /// `--timeout` expired.
    TimedOut,
}

impl StopReason {
    fn exit_code(self) -> u8 {
        match self {
            StopReason::Failed(code) => code,
            StopReason::Signal(sig) => exit_code_for_signal(sig),
            StopReason::TimedOut => EXIT_TIMEOUT,
        }
    }
}

/// A stop in progress: SIGKILL at `kill_at`, give up reaping at `give_up` (set once killed).
#[derive(Clone, Copy, Debug)]
struct Stopping {
    reason: StopReason,
    kill_at: Deadline,
    give_up: Option<Deadline>,
}

/// Owns the ranks until all are reaped. Invariant: every [`Rank`] in `live` is unreaped, so
/// its PID still names the process we started.
#[derive(Debug)]
struct Supervisor {
    live: Vec<Rank>,
    grace: Duration,
    timeout: Option<(Deadline, Duration)>,
    stopping: Option<Stopping>,
}

impl Supervisor {
    fn new(args: &LaunchArgs) -> Supervisor {
        Supervisor {
            live: Vec::with_capacity(args.world),
            grace: args.grace,
            timeout: args.timeout.map(|t| (Deadline::after(t), t)),
            stopping: None,
        }
    }

    /// Reaps ranks and reacts to events until every rank is reaped; returns the exit code.
    fn supervise(&mut self, events: &Receiver<signals::Event>) -> u8 {
        loop {
            self.reap();
            if self.live.is_empty() || self.gave_up() {
                break;
            }
            let wait = self.next_wake().remaining();
            match events.recv_timeout(wait) {
                Ok(signals::Event::Signal(sig)) => self.on_signal(sig),
                Ok(signals::Event::ChildExited) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => thread::sleep(wait),
            }
            self.check_deadlines();
        }
        self.stopping.map_or(0, |s| s.reason.exit_code())
    }

    /// Collects the status of every rank that has exited.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.live.len() {
            match self.live[i].child.try_wait() {
                Ok(None) => i += 1,
                Ok(Some(status)) => {
                    let rank = self.live.remove(i);
                    self.on_exit(&rank, status);
                }
                Err(err) => {
                    // Not waitable (cannot happen unless someone else reaped it): forget it,
                    // never signal it again, and count it as a failure.
                    let rank = self.live.remove(i);
                    tracing::error!(rank = rank.rank, pid = rank.child.id(), %err, "cannot wait for rank");
                    if self.stopping.is_none() {
                        self.begin_stop(StopReason::Failed(1), libc::SIGTERM);
                    }
                }
            }
        }
    }

    /// A rank was reaped: the first failure stops the job.
    fn on_exit(&mut self, rank: &Rank, status: ExitStatus) {
        let pid = rank.child.id();
        if status.success() || self.stopping.is_some() {
            tracing::debug!(rank = rank.rank, pid, %status, "rank exited");
            return;
        }
        let others = stopping_others(self.live.len());
        eprintln!(
            "tutti launch: rank {} (pid {pid}) {}; {others}",
            rank.rank,
            describe(status)
        );
        self.begin_stop(StopReason::Failed(exit_code_of(status)), libc::SIGTERM);
    }

    /// The launcher got `sig`: forward it, or escalate to SIGKILL if already stopping.
    fn on_signal(&mut self, sig: libc::c_int) {
        let name = signal_name(sig);
        let live = ranks(self.live.len());
        if self.stopping.is_some() {
            eprintln!("tutti launch: received {name} while stopping; killing the {live} left");
            self.kill_all();
        } else {
            eprintln!("tutti launch: received {name}; forwarding it to {live}");
            self.begin_stop(StopReason::Signal(sig), sig);
        }
    }

    /// Fires the timeout and the SIGKILL escalation when due.
    fn check_deadlines(&mut self) {
        match self.stopping {
            None => {
                if let Some((deadline, timeout)) = self.timeout {
                    if deadline.expired() {
                        let live = ranks(self.live.len());
                        eprintln!("tutti launch: timed out after {timeout:?}; stopping {live}");
                        self.begin_stop(StopReason::TimedOut, libc::SIGTERM);
                    }
                }
            }
            Some(stop) if stop.give_up.is_none() && stop.kill_at.expired() => {
                let live = ranks(self.live.len());
                eprintln!(
                    "tutti launch: {live} still running after {:?}; sending SIGKILL",
                    self.grace
                );
                self.kill_all();
            }
            Some(_) => {}
        }
    }

    /// Records why the job stops and sends `sig` to every live rank.
    fn begin_stop(&mut self, reason: StopReason, sig: libc::c_int) {
        self.stopping = Some(Stopping {
            reason,
            kill_at: Deadline::after(self.grace),
            give_up: None,
        });
        self.signal_all(sig);
    }

    /// SIGKILLs every live rank and starts the bounded wait for their reaping.
    fn kill_all(&mut self) {
        self.signal_all(libc::SIGKILL);
        if let Some(stop) = &mut self.stopping {
            stop.give_up.get_or_insert(Deadline::after(REAP_AFTER_KILL));
        }
    }

    fn signal_all(&self, sig: libc::c_int) {
        for rank in &self.live {
            let pid = rank.child.id();
            if let Err(err) = signals::send(pid, sig) {
                tracing::warn!(rank = rank.rank, pid, %err, "cannot send {}", signal_name(sig));
            }
        }
    }

    /// True (after saying so) when SIGKILLed ranks could not be reaped in time.
    fn gave_up(&self) -> bool {
        let expired = self
            .stopping
            .and_then(|s| s.give_up)
            .is_some_and(|d| d.expired());
        if expired {
            let pids: Vec<u32> = self.live.iter().map(|r| r.child.id()).collect();
            eprintln!(
                "tutti launch: pids {pids:?} survived SIGKILL for {REAP_AFTER_KILL:?}; giving up"
            );
        }
        expired
    }

    /// The next moment the loop must wake up even without an event.
    fn next_wake(&self) -> Deadline {
        let mut wake = Deadline::after(POLL);
        match self.stopping {
            None => {
                if let Some((deadline, _)) = self.timeout {
                    wake = wake.min(deadline);
                }
            }
            Some(stop) => wake = wake.min(stop.give_up.unwrap_or(stop.kill_at)),
        }
        wake
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

/// `stopping the other 3 ranks`, or nothing to stop.
fn stopping_others(others: usize) -> String {
    match others {
        0 => "no other rank is running".to_string(),
        n => format!("stopping the other {}", ranks(n)),
    }
}

/// `1 rank`, `3 ranks`.
fn ranks(n: usize) -> String {
    if n == 1 {
        "1 rank".to_string()
    } else {
        format!("{n} ranks")
    }
}

/// `exited with status 3`, `was killed by signal SIGSEGV (core dumped)`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => {
            let core = if status.core_dumped() {
                " (core dumped)"
            } else {
                ""
            };
            format!("was killed by signal {}{core}", signal_name(sig))
        }
        (None, None) => format!("ended with {status}"),
    }
}

/// The launcher's exit code for a failed rank: its status, or 128 + its signal (as a shell).
fn exit_code_of(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).ok().filter(|&c| c != 0).unwrap_or(1),
        (None, Some(sig)) => exit_code_for_signal(sig),
        (None, None) => 1,
    }
}

/// 128 + `sig`, as a shell reports death by a signal.
fn exit_code_for_signal(sig: libc::c_int) -> u8 {
    u8::try_from(128 + sig).unwrap_or(1)
}

/// `SIGTERM`, or `signal 42` for one without a well-known name.
fn signal_name(sig: libc::c_int) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
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

/// Forwarding of rank output with a `[rank R] ` prefix per line.
mod output {
    use super::*;

    /// Where a rank's stream goes.
    #[derive(Clone, Copy, Debug)]
    pub(super) enum Sink {
        Stdout,
        Stderr,
    }

    impl Sink {
        /// Writes one whole line under the stream's lock (no interleaving between ranks).
        fn write_line(self, line: &[u8]) -> io::Result<()> {
            match self {
                Sink::Stdout => write_flush(&mut io::stdout().lock(), line),
                Sink::Stderr => write_flush(&mut io::stderr().lock(), line),
            }
        }
    }

    fn write_flush(out: &mut impl Write, line: &[u8]) -> io::Result<()> {
        out.write_all(line)?;
        out.flush()
    }

    /// Starts a thread that forwards `src` to `sink`; it drops `done` when `src` is at EOF.
    pub(super) fn forward<R: Read + Send + 'static>(
        rank: usize,
        src: R,
        sink: Sink,
        done: Sender<()>,
    ) {
        let name = format!("tutti-rank{rank}-{sink:?}").to_lowercase();
        let spawned = thread::Builder::new().name(name).spawn(move || {
            let prefix = format!("[rank {rank}] ");
            let mut broken = false;
            let result = pump(src, prefix.as_bytes(), |line| {
                // Once our stream is gone (EPIPE), keep draining so the rank never blocks.
                if !broken {
                    if let Err(err) = sink.write_line(line) {
                        tracing::warn!(rank, ?sink, %err, "cannot forward rank output; dropping it");
                        broken = true;
                    }
                }
            });
            if let Err(err) = result {
                tracing::warn!(rank, ?sink, %err, "cannot read rank output");
            }
            drop(done);
        });
        if let Err(err) = spawned {
            tracing::error!(rank, ?sink, %err, "cannot start an output thread; the rank's pipe is closed");
        }
    }

    /// Reads `src` to EOF and calls `emit` with each line, `prefix` first and `\n` last.
    ///
    /// Lines longer than [`MAX_LINE`] are emitted in pieces of `MAX_LINE` bytes; a last line
    /// without a newline gets one. Bytes are not decoded.
    pub(super) fn pump(
        src: impl Read,
        prefix: &[u8],
        mut emit: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        let mut reader = BufReader::with_capacity(MAX_LINE, src);
        let mut line = Vec::with_capacity(prefix.len() + 256);
        loop {
            line.clear();
            line.extend_from_slice(prefix);
            let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX);
            if (&mut reader).take(limit).read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            emit(&line);
        }
    }
}

/// Signals: the launcher's own (taken by one thread with `sigwait`) and those sent to ranks.
mod signals {
    use super::*;
    use std::mem::MaybeUninit;
    use std::ptr;

    /// What the signal thread reports to the supervisor.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Event {
        /// SIGINT, SIGTERM or SIGHUP: to forward to the ranks.
        Signal(libc::c_int),
        /// SIGCHLD: some rank may have exited.
        ChildExited,
    }

    /// Signals the launcher takes over; all others keep their default action.
    const TAKEN: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGCHLD];

    /// Blocks [`TAKEN`] in the calling thread (hence in every thread it starts later) and starts
    /// the thread that receives them. Call before any other thread exists: a thread that does
    /// not block them would take SIGTERM with its default action and kill the launcher.
    pub(super) fn install() -> io::Result<Receiver<Event>> {
        let set = sigset(&TAKEN)?;
        // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let (events, received) = mpsc::channel();
        thread::Builder::new()
            .name("tutti-signals".to_string())
            .spawn(move || loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is initialised and `sig` is a valid out-pointer.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc != 0 {
                    tracing::error!(err = %io::Error::from_raw_os_error(rc), "sigwait failed");
                    return; // the supervisor falls back to polling
                }
                let event = if sig == libc::SIGCHLD {
                    Event::ChildExited
                } else {
                    Event::Signal(sig)
                };
                if events.send(event).is_err() {
                    return;
                }
            })?;
        Ok(received)
    }

    /// Makes `command`'s child die with SIGKILL when the launcher dies, and clears the signal
    /// mask the child would inherit from us.
    pub(super) fn die_with_launcher(command: &mut Command) -> io::Result<()> {
        let launcher = std::process::id();
        let empty = sigset(&[])?;
        // SAFETY: the closure runs in the forked child before exec, and only calls functions
        // that are async-signal-safe (prctl, getppid, sigprocmask) on values prepared before
        // the fork; it allocates nothing and takes no lock.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The launcher may have died between fork and prctl: then nobody would kill us.
                if u32::try_from(libc::getppid()).ok() != Some(launcher) {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                if libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Sends `sig` to the process `pid`. Callers pass only PIDs of children not yet reaped.
    pub(super) fn send(pid: u32, sig: libc::c_int) -> io::Result<()> {
        // Never 0 or negative: those would signal whole process groups, even every process.
        let pid = libc::pid_t::try_from(pid)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad pid {pid}")))?;
        // SAFETY: kill has no memory-safety preconditions; pid > 0 names exactly one process.
        if unsafe { libc::kill(pid, sig) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// A sigset_t holding exactly `signals`.
    fn sigset(signals: &[libc::c_int]) -> io::Result<libc::sigset_t> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set it is given; sigaddset then edits it.
        unsafe {
            if libc::sigemptyset(set.as_mut_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            for &sig in signals {
                if libc::sigaddset(set.as_mut_ptr(), sig) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(set.assume_init())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pumped(input: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        output::pump(input, b"[rank 7] ", |l| lines.push(l.to_vec())).unwrap();
        lines
    }

    #[test]
    fn pump_prefixes_every_line_and_ends_partial_lines() {
        let lines = pumped(b"one\ntwo\n\nlast");
        assert_eq!(
            lines,
            vec![
                b"[rank 7] one\n".to_vec(),
                b"[rank 7] two\n".to_vec(),
                b"[rank 7] \n".to_vec(),
                b"[rank 7] last\n".to_vec(),
            ]
        );
        assert!(pumped(b"").is_empty());
    }

    #[test]
    fn pump_passes_bytes_through_and_splits_long_lines() {
        assert_eq!(
            pumped(b"\xff\xfe\x00\n"),
            vec![b"[rank 7] \xff\xfe\x00\n".to_vec()]
        );
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let lines = pumped(&long);
        let sizes: Vec<usize> = lines
            .iter()
            .map(|l| l.len() - b"[rank 7] \n".len())
            .collect();
        assert_eq!(sizes, vec![MAX_LINE, MAX_LINE, 5]);
    }

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

    #[test]
    fn describes_statuses_and_exit_codes() {
        let exited = ExitStatus::from_raw(3 << 8);
        assert_eq!(describe(exited), "exited with status 3");
        assert_eq!(exit_code_of(exited), 3);
        let segv = ExitStatus::from_raw(libc::SIGSEGV);
        assert_eq!(describe(segv), "was killed by signal SIGSEGV");
        assert_eq!(exit_code_of(segv), 128 + 11);
        assert_eq!(StopReason::Signal(libc::SIGTERM).exit_code(), 143);
        assert_eq!(StopReason::TimedOut.exit_code(), 124);
        assert_eq!(signal_name(60), "signal 60");
        assert_eq!(stopping_others(1), "stopping the other 1 rank");
        assert_eq!(stopping_others(3), "stopping the other 3 ranks");
    }
}
