//! Ctrl-C during a blocked call. The GIL is released while a call waits on its peers, so
//! Python's SIGINT handler only sets a flag that nobody looks at until the call returns. At
//! `init_process_group` the Python side points `signal.set_wakeup_fd` at a pipe (unless
//! something else, e.g. asyncio, already uses it) and hands us the read end: a thread here
//! reads the signal numbers Python writes there, and when SIGINT arrives while a call is
//! blocked it revokes the process group (`Communicator::shutdown` on the world: the blocked
//! call fails at once, the peers see this rank leave). The call then raises
//! KeyboardInterrupt (Python's handler runs as soon as we check for signals), and every later
//! call raises a `tutti.Error` naming the cause.

use pyo3::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use tutti::Communicator;

static BLOCKED: AtomicUsize = AtomicUsize::new(0);
/// Weak: the world lives as long as Python holds it, not for the rest of the process.
static WORLD: Mutex<Option<Weak<Communicator>>> = Mutex::new(None);
static REVOKED: OnceLock<String> = OnceLock::new();

/// Marks the current call as blocked (waiting on peers) while alive.
pub struct Blocked(());

impl Blocked {
    pub fn enter() -> Blocked {
        BLOCKED.fetch_add(1, Ordering::SeqCst);
        Blocked(())
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        BLOCKED.fetch_sub(1, Ordering::SeqCst);
    }
}

fn world() -> std::sync::MutexGuard<'static, Option<Weak<Communicator>>> {
    WORLD.lock().unwrap_or_else(|e| e.into_inner())
}

/// The world to shut down on Ctrl-C (None: forget it).
pub fn set_world(comm: Option<&Arc<Communicator>>) {
    *world() = comm.map(Arc::downgrade);
}

/// Why the process group was revoked, if it was.
pub fn revoked() -> Option<&'static str> {
    REVOKED.get().map(String::as_str)
}

fn revoke(cause: String) {
    let _ = REVOKED.set(cause);
    let alive = world().as_ref().and_then(Weak::upgrade);
    if let Some(w) = alive {
        w.shutdown();
    }
}

/// Starts the thread that reads the signal numbers Python writes to its wakeup fd (`fd`, the
/// read end of the pipe; this thread owns it from now on).
#[pyfunction]
pub fn watch_signals(fd: i32) -> PyResult<()> {
    std::thread::Builder::new()
        .name("tutti-signals".to_string())
        .spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                // SAFETY: `buf` is a valid, writable buffer of its length; `fd` is ours.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                let Ok(n @ 1..) = usize::try_from(n) else {
                    return; // closed or failed: no more Ctrl-C handling
                };
                let sigint = buf[..n].contains(&(libc::SIGINT as u8));
                if sigint && BLOCKED.load(Ordering::SeqCst) > 0 {
                    revoke(
                        "Ctrl-C (SIGINT) interrupted a blocked call; this rank left the group"
                            .to_string(),
                    );
                }
            }
        })?;
    Ok(())
}
