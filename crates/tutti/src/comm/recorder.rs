//! The flight recorder of one communicator: a fixed ring of its last N calls (see
//! [`crate::trace`] for the files it is dumped to and when).
//!
//! Each slot is a small seqlock of atomics, so that recording costs no lock, no allocation and
//! no system call on the latency path: a call's start is one `fetch_add` on the ring's head and
//! a dozen relaxed stores; its end is one clock read, a load and three stores (a failure also takes
//! the slot's error lock and formats the error once). Reading (a dump, on another thread) never
//! blocks a writer: it copies a slot and retries, a bounded number of times, if the slot
//! changed meanwhile.
//!
//! The start time is the call's deadline's start (no clock read of its own).
//!
//! Invariants: a slot's `state` is `id << 2 | phase`, where `id` (1, 2, ...) counts the calls
//! started on this communicator and `phase` is [`WRITING`] while its fields change, else
//! [`STARTED`], [`DONE`] or [`FAILED`]. Call `id` lives in slot `(id - 1) % N` until call
//! `id + N` starts; an end whose slot was taken meanwhile (more than N calls in flight at once)
//! is dropped (or, in a narrow race, loses the later call's record instead).

use crate::error::{Error, Op};
use crate::exec::Fingerprint;
use crate::trace::{OpRecord, TraceSettings};
use std::sync::atomic::{fence, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tutti_core::model::Algorithm;
use tutti_core::DType;

const WRITING: u64 = 0;
const STARTED: u64 = 1;
const DONE: u64 = 2;
const FAILED: u64 = 3;
/// `peer` of a call without a root or peer.
const NONE: u64 = u64::MAX;
/// How many times a reader copies a slot that keeps changing before it skips it.
const READ_TRIES: usize = 8;

/// What a call is, as recorded when it starts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallInfo {
    pub op: Op,
    /// The collective's sequence number (0 for point-to-point calls).
    pub seq: u64,
    pub dtype: Option<DType>,
    /// Elements per rank (as in the call's fingerprint: this rank's count).
    pub count: usize,
    /// The root of a rooted collective, or the peer of a point-to-point call (communicator rank).
    pub peer: Option<usize>,
    /// The algorithm's [`Algorithm::code`] (0: none chosen).
    pub algorithm: u8,
}

impl CallInfo {
    /// A collective call, described by its fingerprint (whose layout is documented on
    /// [`Fingerprint`]: root in bits 24..40, this rank's count modulo 2^24 in bits 0..24) and by
    /// `bytes`, the size every rank agrees on (`None`: sizes differ; the count is then 0).
    pub fn collective(op: Op, seq: u64, f: Fingerprint, bytes: Option<usize>, code: u8) -> Self {
        let bits = f.call();
        let root = (bits >> 24) & 0xffff;
        let dtype = f.dtype();
        let count = match (bytes, dtype) {
            (Some(b), Some(d)) => b / d.size(),
            _ => (bits & 0xff_ffff) as usize,
        };
        CallInfo {
            op,
            seq,
            dtype,
            count,
            peer: (root != 0xffff).then_some(root as usize),
            algorithm: code,
        }
    }

    /// A point-to-point call.
    pub fn p2p(op: Op, peer: Option<usize>, dtype: Option<DType>, count: usize) -> Self {
        CallInfo {
            op,
            seq: 0,
            dtype,
            count,
            peer,
            algorithm: 0,
        }
    }
}

#[derive(Default)]
struct Slot {
    state: AtomicU64,
    op: AtomicU8,
    dtype: AtomicU8,
    algorithm: AtomicU8,
    seq: AtomicU64,
    count: AtomicU64,
    bytes: AtomicU64,
    peer: AtomicU64,
    start_ns: AtomicU64,
    end_ns: AtomicU64,
    /// The error of the call whose id is the first field (only failures write it).
    error: Mutex<(u64, String)>,
}

/// Who the recorder belongs to (written into dumps).
#[derive(Clone, Debug)]
pub(crate) struct Owner {
    pub comm_id: u64,
    pub rank: usize,
    /// World rank of each member.
    pub members: Arc<[usize]>,
    pub world_size: usize,
}

impl Owner {
    pub fn of(group: &crate::exec::Group, world_size: usize) -> Owner {
        Owner {
            comm_id: group.comm_id,
            rank: group.rank,
            members: group.members.clone(),
            world_size,
        }
    }
}

/// The ring of one communicator; shared by its handles (progress thread included).
pub(crate) struct Recorder {
    slots: Box<[Slot]>,
    /// Calls started so far (the id of the latest).
    head: AtomicU64,
    /// When this communicator last dumped after an error (unix ns; 0: never).
    last_dump_ns: AtomicU64,
    pub owner: Owner,
    pub settings: Arc<TraceSettings>,
}

/// Nanoseconds since the Unix epoch, now (one vDSO clock read: no system call).
pub(crate) fn now_ns() -> u64 {
    unix_ns(Instant::now())
}

/// `at` in nanoseconds since the Unix epoch: the wall clock read once per process, plus the
/// monotonic time since (so a call's start costs no clock read of its own: it is its
/// deadline's start). The times of one process are consistent with each other; between
/// processes they agree as well as the hosts' wall clocks did when each process started.
pub(crate) fn unix_ns(at: Instant) -> u64 {
    static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();
    let (wall, mono) = *ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (wall, Instant::now())
    });
    match at.checked_duration_since(mono) {
        Some(d) => wall.saturating_add(d.as_nanos() as u64),
        None => wall.saturating_sub(mono.duration_since(at).as_nanos() as u64),
    }
}

impl Recorder {
    /// A ring of `settings.ops` slots (0: recording off). Allocates once, here.
    pub fn new(owner: Owner, settings: Arc<TraceSettings>) -> Recorder {
        let n = settings.ops;
        Recorder {
            slots: (0..n).map(|_| Slot::default()).collect(),
            head: AtomicU64::new(0),
            last_dump_ns: AtomicU64::new(0),
            owner,
            settings,
        }
    }

    /// The world rank of this recorder's owner.
    pub fn world_rank(&self) -> usize {
        self.owner
            .members
            .get(self.owner.rank)
            .copied()
            .unwrap_or(self.owner.rank)
    }

    /// The slot of call `id` (`None` when recording is off).
    fn slot(&self, id: u64) -> Option<&Slot> {
        let n = self.slots.len() as u64;
        self.slots.get((id.checked_sub(1)? % n.max(1)) as usize)
    }

    /// Records the start of a call at `at`; returns its id for [`done`](Self::done) or
    /// [`failed`](Self::failed) (0 when recording is off).
    pub fn start(&self, c: &CallInfo, at: Instant) -> u64 {
        if self.slots.is_empty() {
            return 0;
        }
        let id = self.head.fetch_add(1, Relaxed) + 1;
        let Some(s) = self.slot(id) else { return 0 };
        s.state.store(id << 2 | WRITING, Relaxed);
        fence(Release);
        s.op.store(c.op.code(), Relaxed);
        s.dtype.store(c.dtype.map_or(0, |d| d.code()), Relaxed);
        s.algorithm.store(c.algorithm, Relaxed);
        s.seq.store(c.seq, Relaxed);
        s.count.store(c.count as u64, Relaxed);
        let size = c.dtype.map_or(1, |d| d.size());
        s.bytes
            .store((c.count as u64).saturating_mul(size as u64), Relaxed);
        s.peer.store(c.peer.map_or(NONE, |p| p as u64), Relaxed);
        s.start_ns.store(unix_ns(at), Relaxed);
        s.end_ns.store(0, Relaxed);
        s.state.store(id << 2 | STARTED, Release);
        id
    }

    /// Records that call `id` returned successfully.
    pub fn done(&self, id: u64) {
        self.finish(id, DONE);
    }

    /// Records that call `id` failed with `e`.
    pub fn failed(&self, id: u64, e: &Error) {
        let Some(s) = self.slot(id) else { return };
        {
            let mut err = s.error.lock().unwrap_or_else(|p| p.into_inner());
            err.0 = id;
            err.1.clear();
            use std::fmt::Write;
            let _ = write!(err.1, "{e}");
        }
        self.finish(id, FAILED);
    }

    /// Records that call `id` failed before its end was recorded (an early return).
    pub fn failed_early(&self, id: u64) {
        let Some(s) = self.slot(id) else { return };
        {
            let mut err = s.error.lock().unwrap_or_else(|p| p.into_inner());
            err.0 = id;
            err.1.clear();
            err.1
                .push_str("returned early with an error (given to the caller)");
        }
        self.finish(id, FAILED);
    }

    fn finish(&self, id: u64, phase: u64) {
        let Some(s) = self.slot(id) else { return };
        // A load and stores, not a compare-and-swap (a locked instruction on the latency path):
        // only a call N starts later, in flight at the same time, can take the slot between
        // them, and then one of the two records is lost (readers skip a slot whose id changed).
        if s.state.load(Acquire) != id << 2 | STARTED {
            return; // the slot was taken by a later call
        }
        s.state.store(id << 2 | WRITING, Relaxed);
        fence(Release);
        s.end_ns.store(now_ns(), Relaxed);
        s.state.store(id << 2 | phase, Release);
    }

    /// Whether a dump after an error may be written now: none was in the last `gap` (or
    /// `always`); if so, now is taken as the last.
    pub fn may_dump(&self, gap: std::time::Duration, always: bool) -> bool {
        let now = now_ns();
        let last = self.last_dump_ns.swap(now, Relaxed);
        if always || last == 0 || now.saturating_sub(last) >= gap.as_nanos() as u64 {
            return true;
        }
        self.last_dump_ns.store(last, Relaxed); // keep the earlier dump's time
        false
    }

    /// The number of calls started so far.
    pub fn calls(&self) -> u64 {
        self.head.load(Acquire)
    }

    /// The recorded calls, oldest first (at most N; a slot being rewritten is left out).
    pub fn snapshot(&self) -> Vec<OpRecord> {
        let head = self.calls();
        let first = head.saturating_sub(self.slots.len() as u64) + 1;
        (first..=head).filter_map(|id| self.read(id)).collect()
    }

    fn read(&self, id: u64) -> Option<OpRecord> {
        let s = self.slot(id)?;
        for _ in 0..READ_TRIES {
            let before = s.state.load(Acquire);
            if before >> 2 != id {
                return None; // not written yet, or already reused
            }
            if before & 3 == WRITING {
                std::hint::spin_loop();
                continue;
            }
            let rec = copy(s, id, before & 3);
            fence(Acquire);
            if s.state.load(Relaxed) == before {
                return Some(rec);
            }
        }
        None
    }
}

/// A slot's fields as a record (checked by the caller against the slot's state).
fn copy(s: &Slot, id: u64, phase: u64) -> OpRecord {
    let end = s.end_ns.load(Relaxed);
    let peer = s.peer.load(Relaxed);
    let error = if phase == FAILED {
        let e = s.error.lock().unwrap_or_else(|p| p.into_inner());
        (e.0 == id).then(|| e.1.clone())
    } else {
        None
    };
    OpRecord {
        call: id,
        op: op_name(s.op.load(Relaxed)).to_string(),
        seq: s.seq.load(Relaxed),
        dtype: dtype_name(s.dtype.load(Relaxed)).map(str::to_string),
        count: s.count.load(Relaxed),
        bytes: s.bytes.load(Relaxed),
        peer: (peer != NONE).then_some(peer),
        algorithm: Algorithm::from_code(s.algorithm.load(Relaxed)).map(|a| a.name().to_string()),
        state: match phase {
            STARTED => "started",
            DONE => "done",
            _ => "failed",
        }
        .to_string(),
        error,
        start_ns: s.start_ns.load(Relaxed),
        end_ns: (end != 0).then_some(end),
    }
}

fn op_name(code: u8) -> &'static str {
    Op::from_code(code).map_or("unknown", Op::name)
}

fn dtype_name(code: u8) -> Option<&'static str> {
    DType::ALL
        .iter()
        .find(|d| d.code() == code)
        .map(|d| d.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(n: usize) -> Recorder {
        let owner = Owner {
            comm_id: 0,
            rank: 0,
            members: vec![0, 1].into(),
            world_size: 2,
        };
        let settings = TraceSettings {
            ops: n,
            ..TraceSettings::default()
        };
        Recorder::new(owner, Arc::new(settings))
    }

    fn call_now(seq: u64) -> CallInfo {
        call(seq)
    }

    fn call(seq: u64) -> CallInfo {
        CallInfo {
            op: Op::AllReduce,
            seq,
            dtype: Some(DType::F32),
            count: 2,
            peer: None,
            algorithm: 0,
        }
    }

    /// Start times convert back to the wall clock. Also prints the cost of recording one call
    /// (start and end) against reading the clock twice (`--nocapture`); a figure to read, not a
    /// bound to assert (timings are for benchmarks).
    #[test]
    fn start_times_are_wall_clock_times_and_recording_costs_about_two_clock_reads() {
        let r = recorder(64);
        let c = call(1);
        let n = 200_000u32;
        let t = std::time::Instant::now();
        for _ in 0..n {
            let id = r.start(std::hint::black_box(&c), t);
            r.done(id);
        }
        let per_call = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(now_ns());
            std::hint::black_box(now_ns());
        }
        let clocks = t.elapsed() / n;
        eprintln!("start+done: {per_call:?} per call; two clock reads: {clocks:?}");
        // Start times come from the caller's instant: they convert back to the wall clock.
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(unix_ns(Instant::now()).abs_diff(wall) < 1_000_000_000);
    }

    #[test]
    fn the_ring_keeps_the_last_n_calls_with_their_states() {
        let r = recorder(3);
        for seq in 1..=4 {
            let id = r.start(&call_now(seq), Instant::now());
            r.done(id);
        }
        let id = r.start(&call_now(5), Instant::now());
        let e = Error::bootstrap(Some(0), "boom");
        r.failed(id, &e);
        let id = r.start(&call_now(6), Instant::now());
        let ops = r.snapshot();
        assert_eq!(ops.iter().map(|o| o.seq).collect::<Vec<_>>(), [4, 5, 6]);
        assert_eq!(ops[0].state, "done");
        assert!(ops[0].end_ns.unwrap() >= ops[0].start_ns);
        assert_eq!(ops[1].state, "failed");
        assert_eq!(ops[1].error.as_deref(), Some("init of rank 0: boom"));
        assert_eq!((ops[2].state.as_str(), ops[2].end_ns), ("started", None));
        assert_eq!(ops[2].op, "all_reduce");
        assert_eq!((ops[2].dtype.as_deref(), ops[2].bytes), (Some("f32"), 8));
        // An end for a call whose slot was reused is dropped, not written over the new call.
        r.done(id - 3);
        assert_eq!(r.snapshot()[2].state, "started");
        // A ring of 0: nothing recorded, nothing to fail on.
        let off = recorder(0);
        let id = off.start(&call(1), Instant::now());
        off.done(id);
        off.failed(id, &e);
        assert_eq!((id, off.snapshot().len()), (0, 0));
        // Dumps after errors are at least a gap apart, unless forced.
        let gap = std::time::Duration::from_secs(60);
        assert!(r.may_dump(gap, false));
        assert!(!r.may_dump(gap, false));
        assert!(r.may_dump(gap, true));
        assert!(r.may_dump(std::time::Duration::ZERO, false));
        for op in Op::ALL {
            assert_eq!(op_name(op.code()), op.name());
        }
    }
}
