//! Signals: the launcher's own (taken by one thread with `sigwait`) and those sent to ranks.

use std::io;
use std::mem::MaybeUninit;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::ptr;
use std::sync::mpsc::{self, Receiver};
use std::thread;

/// What the signal thread reports to the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// SIGINT, SIGTERM or SIGHUP: to forward to the ranks (which then stop); SIGUSR2: to
    /// forward only (it asks every rank for a flight-recorder dump, see `tutti::trace`).
    Signal(libc::c_int),
    /// SIGCHLD: some rank may have exited.
    ChildExited,
}

/// Signals the launcher takes over; all others keep their default action.
const TAKEN: [libc::c_int; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGCHLD,
    libc::SIGUSR2,
];

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
