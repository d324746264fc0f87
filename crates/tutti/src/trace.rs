//! Flight-recorder dumps: what each communicator of this process did last, written to a file
//! when something goes wrong, so that `tutti trace DIR` can merge the files of all ranks and
//! say who is behind and on which op.
//!
//! Every communicator keeps a ring of its last `TUTTI_TRACE_OPS` calls (default
//! [`DEFAULT_TRACE_OPS`]; 0 records nothing; see `comm::recorder` for its cost: no lock,
//! allocation or system call per call). The rings of one world rank are written to `DIR/tutti-trace-rank{R}-pid{P}.json`
//! ([`TraceFile`]):
//! - when a call fails (anything but an invalid argument: a timeout, a lost peer, a mismatch),
//!   by the failing thread, at most once per [`ERROR_DUMP_GAP`] per communicator, and on
//!   [`abort`](crate::Communicator::abort);
//! - when the process receives `TUTTI_TRACE_SIGNAL` (default `USR2`; `USR1` or `off`), by a
//!   watcher thread (the signal handler itself only wakes it; Slurm and Lightning use SIGUSR1
//!   to requeue, hence the default). With the signal on, the process no longer dies of it;
//! - on demand, by [`crate::Communicator::dump_trace`].
//!
//! `DIR` is `TUTTI_TRACE_DIR`; unset, [`default_dir`] (`$TMPDIR/tutti-trace-UID`, as
//! `/tmp/tutti-trace-1000`: one per user, so that users of one host neither share nor block
//! each other's), so that a hung job can be inspected without having been prepared; `off` writes no file on errors or
//! signals (an explicit [`dump_trace`](crate::Communicator::dump_trace) still can).
//!
//! A dump is bounded in time: the file is written by a helper thread and the caller waits at
//! most [`DUMP_WAIT`] for it (a file system that hangs delays nobody longer); it is written to
//! a temporary name and renamed, so a reader never sees half a file; it never panics (a failure
//! is logged).

use crate::comm::recorder::Recorder;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// Ring size when `TUTTI_TRACE_OPS` is unset.
pub const DEFAULT_TRACE_OPS: usize = 64;
/// The largest ring accepted (a dump copies it whole).
pub const MAX_TRACE_OPS: usize = 1 << 16;
/// How long a failing call waits for its dump to be written.
pub const DUMP_WAIT: Duration = Duration::from_secs(2);
/// The least time between two dumps of one communicator after errors.
pub const ERROR_DUMP_GAP: Duration = Duration::from_secs(1);
/// The version of [`TraceFile`]'s format.
pub const FORMAT_VERSION: u32 = 1;

/// Where, how much and on which signal the recorder dumps (from `TUTTI_TRACE_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceSettings {
    /// Where dumps on errors and signals go (`None`: nowhere).
    pub dir: Option<PathBuf>,
    /// Calls kept per communicator.
    pub ops: usize,
    /// The signal that makes every rank of this process dump (`None`: none).
    pub signal: Option<i32>,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            dir: Some(default_dir()),
            ops: DEFAULT_TRACE_OPS,
            signal: Some(libc::SIGUSR2),
        }
    }
}

impl TraceSettings {
    /// No recording, no dump on its own, no signal watched.
    pub fn off() -> TraceSettings {
        TraceSettings {
            dir: None,
            ops: 0,
            signal: None,
        }
    }

    /// The defaults with `TUTTI_TRACE_DIR` (a directory, or `off`), `TUTTI_TRACE_OPS` (0 to
    /// [`MAX_TRACE_OPS`]; 0: no recording) and `TUTTI_TRACE_SIGNAL` (`USR2`, `USR1` or `off`) read through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<TraceSettings, String> {
        let mut t = TraceSettings::default();
        if let Some(v) = get("TUTTI_TRACE_DIR") {
            t.dir = match v.trim() {
                "" => return Err("TUTTI_TRACE_DIR is empty (a directory, or off)".into()),
                "off" => None,
                d => Some(PathBuf::from(d)),
            };
        }
        if let Some(v) = get("TUTTI_TRACE_OPS") {
            t.ops = v
                .trim()
                .parse()
                .ok()
                .filter(|n| *n <= MAX_TRACE_OPS)
                .ok_or_else(|| {
                    format!(
                        "TUTTI_TRACE_OPS={v:?} is not a number of calls from 0 to {MAX_TRACE_OPS} \
                         (kept per communicator by the flight recorder; 0: none)"
                    )
                })?;
        }
        if let Some(v) = get("TUTTI_TRACE_SIGNAL") {
            t.signal = match v.trim().to_ascii_uppercase().trim_start_matches("SIG") {
                "USR2" => Some(libc::SIGUSR2),
                "USR1" => Some(libc::SIGUSR1),
                "OFF" => None,
                _ => {
                    return Err(format!(
                        "TUTTI_TRACE_SIGNAL={v:?} is not a signal; valid: USR2 (the default), \
                         USR1, off"
                    ))
                }
            };
        }
        Ok(t)
    }
}

/// Where dumps go when `TUTTI_TRACE_DIR` is unset: `$TMPDIR/tutti-trace-UID`.
pub fn default_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("tutti-trace-{uid}"))
}

/// One dump: the rings of every communicator of one world rank in one process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceFile {
    pub version: u32,
    /// World rank.
    pub rank: usize,
    pub world_size: usize,
    pub host: String,
    pub pid: u32,
    /// The job: `TUTTI_JOB_ID`, else `SLURM_JOB_ID`, else `TORCHELASTIC_RUN_ID` (`None`: none
    /// set), so that `tutti trace` can leave out files of other jobs in a shared directory.
    #[serde(default)]
    pub job: Option<String>,
    /// Why it was written (the error, the signal, or the caller's words).
    pub reason: String,
    /// When, in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub communicators: Vec<CommTrace>,
}

/// The ring of one communicator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommTrace {
    /// 0 for the world; the same on every member of a split communicator.
    pub comm_id: u64,
    /// This rank in the communicator.
    pub rank: usize,
    pub size: usize,
    /// World rank of each member.
    pub world_ranks: Vec<usize>,
    /// Calls started on it so far (the ring holds the last of them).
    pub calls: u64,
    /// Oldest first.
    pub ops: Vec<OpRecord>,
}

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    /// Its number among the calls started on this communicator by this rank (1, 2, ...).
    pub call: u64,
    /// The operation (`all_reduce`, `send`, ...).
    pub op: String,
    /// The collective's sequence number, the same on every rank (0: point-to-point).
    pub seq: u64,
    pub dtype: Option<String>,
    /// Elements in this rank's buffer.
    pub count: u64,
    pub bytes: u64,
    /// The root of a rooted collective or the peer of a point-to-point call.
    pub peer: Option<u64>,
    /// The algorithm chosen, for a collective that has a choice.
    pub algorithm: Option<String>,
    /// `started` (still running when dumped), `done` or `failed`.
    pub state: String,
    pub error: Option<String>,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
}

/// The recorders of this process's live communicators.
static REGISTRY: Mutex<Vec<Weak<Recorder>>> = Mutex::new(Vec::new());

/// Signals whose watcher thread runs.
static WATCHED: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Adds a communicator's recorder to the process's list (and forgets dead ones); starts the
/// signal watcher of its settings once per process.
pub(crate) fn register(rec: &Arc<Recorder>) {
    {
        let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        reg.retain(|w| w.strong_count() > 0);
        reg.push(Arc::downgrade(rec));
    }
    if let Some(sig) = rec.settings.signal {
        watch(sig);
    }
}

/// Starts the thread that dumps every rank of this process when `sig` arrives (once per sig).
fn watch(sig: i32) {
    let mut watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
    if watched.contains(&sig) {
        return;
    }
    let signals = match signal_hook::iterator::Signals::new([sig]) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(signal = sig, error = %e, "cannot watch the trace signal");
            return;
        }
    };
    watched.push(sig);
    let spawned = std::thread::Builder::new()
        .name("tutti-trace-signal".into())
        .spawn(move || {
            let mut signals = signals;
            for s in signals.forever() {
                let reason = format!("signal {}", signal_name(s));
                for path in dump_all(&reason) {
                    tracing::info!(path = %path.display(), %reason, "flight recorder dumped");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the trace signal thread");
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

/// The live recorders of this process.
fn live() -> Vec<Arc<Recorder>> {
    let reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    reg.iter().filter_map(Weak::upgrade).collect()
}

/// Writes one file per (directory, world rank) of this process's communicators that dump to a
/// directory; returns the paths written.
pub fn dump_all(reason: &str) -> Vec<PathBuf> {
    let recs = live();
    let mut keys: Vec<(PathBuf, usize)> = recs
        .iter()
        .filter_map(|r| Some((r.settings.dir.clone()?, r.world_rank())))
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|(dir, rank)| write_rank(&dir, rank, reason, &recs).ok())
        .collect()
}

/// Dumps the world rank of `rec` to its settings' directory after a failed call, waiting at
/// most [`DUMP_WAIT`]. Does nothing when dumps are off, or (unless `always`) when this
/// communicator dumped less than [`ERROR_DUMP_GAP`] ago: a loop of retried receives that time
/// out does not rewrite the file at every turn, and the first failure's file stays.
pub(crate) fn dump_on_error(rec: &Recorder, reason: String, always: bool) {
    let Some(dir) = rec.settings.dir.clone() else {
        return;
    };
    if !rec.may_dump(ERROR_DUMP_GAP, always) {
        tracing::debug!(%reason, "trace dump skipped: one was written less than a second ago");
        return;
    }
    let _ = dump_bounded(dir, rec.world_rank(), reason);
}

/// Writes the file of world rank `rank` into `dir` on a helper thread; waits at most
/// [`DUMP_WAIT`] for it.
pub(crate) fn dump_bounded(dir: PathBuf, rank: usize, reason: String) -> std::io::Result<PathBuf> {
    let (tx, rx) = mpsc::channel();
    let place = format!("the trace of rank {rank} into {}", dir.display());
    std::thread::Builder::new()
        .name("tutti-trace-dump".into())
        .spawn(move || {
            let _ = tx.send(write_rank(&dir, rank, &reason, &live()));
        })?;
    let written = rx.recv_timeout(DUMP_WAIT).unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("took more than {DUMP_WAIT:?}"),
        ))
    });
    written.map_err(|e| std::io::Error::new(e.kind(), format!("writing {place}: {e}")))
}

/// Writes `DIR/tutti-trace-rank{rank}-pid{P}.json` from the recorders of world rank `rank`.
fn write_rank(
    dir: &Path,
    rank: usize,
    reason: &str,
    recs: &[Arc<Recorder>],
) -> std::io::Result<PathBuf> {
    let mine: Vec<&Arc<Recorder>> = recs
        .iter()
        .filter(|r| r.world_rank() == rank && r.settings.dir.as_deref() == Some(dir))
        .collect();
    let file = TraceFile {
        version: FORMAT_VERSION,
        rank,
        world_size: mine.first().map_or(0, |r| r.owner.world_size),
        host: hostname(),
        pid: std::process::id(),
        job: job(),
        reason: reason.to_string(),
        time_ns: crate::comm::recorder::now_ns(),
        communicators: mine.iter().map(|r| comm_trace(r)).collect(),
    };
    let result = write_file(dir, &file);
    if let Err(e) = &result {
        tracing::warn!(dir = %dir.display(), rank, error = %e, "cannot write the trace dump");
    }
    result
}

fn comm_trace(r: &Recorder) -> CommTrace {
    CommTrace {
        comm_id: r.owner.comm_id,
        rank: r.owner.rank,
        size: r.owner.members.len(),
        world_ranks: r.owner.members.to_vec(),
        calls: r.calls(),
        ops: r.snapshot(),
    }
}

/// Writes `file` under its final name through a temporary one.
pub fn write_file(dir: &Path, file: &TraceFile) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = format!("tutti-trace-rank{}-pid{}.json", file.rank, file.pid);
    let path = dir.join(&name);
    // A name of its own per write: two threads dumping one rank never share a half-written file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{n}.tmp"));
    let json = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    let written = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| path)
}

/// This process's job id, from the launcher's variables (read once).
fn job() -> Option<String> {
    static JOB: OnceLock<Option<String>> = OnceLock::new();
    JOB.get_or_init(|| {
        ["TUTTI_JOB_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    })
    .clone()
}

/// This machine's host name ("" if unknown).
fn hostname() -> String {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is writable for its length; gethostname writes at most that.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return String::new();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_vars as vars;

    #[test]
    fn settings_come_from_the_environment() {
        let d = TraceSettings::from_vars(vars(&[])).unwrap();
        assert_eq!(d, TraceSettings::default());
        assert_eq!(d.signal, Some(libc::SIGUSR2));
        let t = TraceSettings::from_vars(vars(&[
            ("TUTTI_TRACE_DIR", "/x/y"),
            ("TUTTI_TRACE_OPS", " 8 "),
            ("TUTTI_TRACE_SIGNAL", "sigusr1"),
        ]))
        .unwrap();
        assert_eq!(
            (t.dir.as_deref(), t.ops, t.signal),
            (Some(Path::new("/x/y")), 8, Some(libc::SIGUSR1))
        );
        let t = TraceSettings::from_vars(vars(&[
            ("TUTTI_TRACE_DIR", "off"),
            ("TUTTI_TRACE_SIGNAL", "off"),
        ]))
        .unwrap();
        assert_eq!((t.dir, t.signal), (None, None));
        for (var, bad) in [
            ("TUTTI_TRACE_OPS", "-1"),
            ("TUTTI_TRACE_OPS", "65537"),
            ("TUTTI_TRACE_OPS", "many"),
            ("TUTTI_TRACE_SIGNAL", "TERM"),
            ("TUTTI_TRACE_DIR", " "),
        ] {
            let e = TraceSettings::from_vars(vars(&[(var, bad)])).unwrap_err();
            assert!(e.contains(var), "{e}");
        }
    }
}
