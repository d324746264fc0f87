//! The supervision loop: the one owner of every started rank, which reaps them, reacts to
//! signals and deadlines, and stops the job (see the [module doc](super) for the rules).

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use tutti::Deadline;

use super::{signals, LaunchArgs};

/// How long SIGKILLed ranks get to be reaped before the launcher gives up on them.
const REAP_AFTER_KILL: Duration = Duration::from_secs(10);

/// Safety net: children are also polled this often, in case a SIGCHLD event is lost.
const POLL: Duration = Duration::from_millis(500);

/// Exit code of a job stopped by `--timeout` (as `timeout(1)`).
const EXIT_TIMEOUT: u8 = 124;

/// One started rank, not yet reaped.
#[derive(Debug)]
pub(super) struct Rank {
    pub(super) rank: usize,
    pub(super) child: Child,
}

/// Why the job is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StopReason {
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
    /// The signal sent to every rank when the stop began.
    signal: libc::c_int,
    kill_at: Deadline,
    give_up: Option<Deadline>,
}

/// Owns the ranks until all are reaped. Invariant: every [`Rank`] in `live` is unreaped, so
/// its PID still names the process we started.
#[derive(Debug)]
pub(super) struct Supervisor {
    pub(super) live: Vec<Rank>,
    grace: Duration,
    timeout: Option<(Deadline, Duration)>,
    stopping: Option<Stopping>,
}

impl Supervisor {
    pub(super) fn new(args: &LaunchArgs) -> Supervisor {
        Supervisor {
            live: Vec::with_capacity(args.world),
            grace: args.grace,
            timeout: args.timeout.map(|t| (Deadline::after(t), t)),
            stopping: None,
        }
    }

    /// Reaps ranks and reacts to events until every rank is reaped; returns the exit code.
    pub(super) fn supervise(&mut self, events: &Receiver<signals::Event>) -> u8 {
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

    /// A rank was reaped: the first failure stops the job. Later failures are reported too
    /// (a rank that fails on its own while the job stops may be the root cause: two ranks can
    /// end within one reaping pass), but not deaths by the signals the launcher itself sent.
    fn on_exit(&mut self, rank: &Rank, status: ExitStatus) {
        let pid = rank.child.id();
        if status.success() {
            tracing::debug!(rank = rank.rank, pid, %status, "rank exited");
            return;
        }
        if let Some(stop) = self.stopping {
            let sent_by_us = status
                .signal()
                .is_some_and(|sig| sig == libc::SIGKILL || sig == stop.signal);
            if sent_by_us {
                tracing::debug!(rank = rank.rank, pid, %status, "rank stopped");
            } else {
                eprintln!(
                    "tutti launch: rank {} (pid {pid}) {} while the job was stopping",
                    rank.rank,
                    describe(status)
                );
            }
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
    /// SIGUSR2 is only forwarded: the ranks dump their flight recorders and go on.
    fn on_signal(&mut self, sig: libc::c_int) {
        let name = signal_name(sig);
        let live = ranks(self.live.len());
        if sig == libc::SIGUSR2 {
            eprintln!("tutti launch: received {name}; forwarding it to {live} (trace dump)");
            self.signal_all(sig);
        } else if self.stopping.is_some() {
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
    pub(super) fn begin_stop(&mut self, reason: StopReason, sig: libc::c_int) {
        self.stopping = Some(Stopping {
            reason,
            signal: sig,
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

/// `stopping the other 3 ranks`, or nothing to stop.
pub(super) fn stopping_others(others: usize) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
