//! An in-process cluster for testing algorithms: `n` threads, each holding a [`TestChannel`].
//!
//! [`TestChannel`] implements [`Channel`] over shared queues with the flow control of the channel
//! contract, for a window of `W` bytes chosen per cluster ([`run_cluster_with_window`];
//! [`run_cluster`] is unbounded):
//!
//! - a receive (`recv`, `recv_reduce`, or the receive half of `send_recv`, which is posted before
//!   its send starts) takes the oldest unreceived message from its peer, or else is *posted* and
//!   waits for the peer's next message;
//! - a `send` of `len` bytes to a peer completes at once into the peer's posted receive from us,
//!   if there is one (then nothing older from us is unreceived there), or else into the peer's
//!   unreceived queue if our unreceived bytes there plus `len` fit in `W`; otherwise it waits. So
//!   a message beyond the window moves only into a posted receive, as with a credit-based
//!   transport.
//!
//! Messages between two ranks stay in order, and a receive fails (with an error naming both
//! ranks) when the next message has the wrong length. A wrong schedule fails fast instead of
//! hanging the suite: all state lives under one lock, and when every rank still running waits
//! (to send, or to receive) and none of the waits can ever end, every waiting call fails at once
//! with "deadlock" and what each rank waits for ([`WAIT_TIMEOUT`] is only a backstop).
//! [`run_cluster_with_window`] panics if any message is left unreceived when every rank has
//! returned (a send without a matching receive).
//!
//! Also here: a small deterministic PRNG, value generators whose reductions are exact in every
//! order, the reference reductions, and the proptest strategies the algorithm tests share.

use crate::channel::{Channel, RecvInto};
use crate::dtype::DType;
use crate::reduce::{ReduceOp, Reducer};
use proptest::prelude::*;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// A window that never fills: sends never wait.
pub(crate) const UNBOUNDED: usize = usize::MAX;

/// How long one wait may last before it fails as stuck (deadlocks are detected at once; this is
/// only a backstop).
pub(crate) const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a rank waits for.
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// To hand `len` bytes to `to` (in `send`, or the send half of `send_recv`).
    Send { to: usize, len: usize },
    /// For the message that fills its posted receive from `from`.
    Recv { from: usize },
}

/// The whole cluster's message state, under one lock.
///
/// Invariants: `inbox[dst][src]` holds, in order, the messages `src` sent `dst` that no receive
/// has taken yet, and `unreceived[src][dst]` their total length (what counts against `src`'s
/// window to `dst`); `posted[r] == Some(p)` means rank `r` has a posted receive from `p` that
/// no message has filled yet, which implies `inbox[r][p]` is empty; `delivered[r]` holds the
/// message (and its sender) that filled rank `r`'s posted receive, until `r` takes it;
/// `blocked[r]` is what rank `r` waits for while it waits; `deadlocked[r]` is set for every
/// waiting rank when no wait can ever end, with what everyone waits for.
#[derive(Debug)]
struct Cluster {
    window: usize,
    running: Vec<bool>,
    inbox: Vec<Vec<VecDeque<Vec<u8>>>>,
    unreceived: Vec<Vec<usize>>,
    posted: Vec<Option<usize>>,
    delivered: Vec<Option<(usize, Vec<u8>)>>,
    blocked: Vec<Option<Wait>>,
    deadlocked: Vec<Option<String>>,
}

impl Cluster {
    fn new(n: usize, window: usize) -> Cluster {
        Cluster {
            window,
            running: vec![false; n],
            inbox: (0..n)
                .map(|_| (0..n).map(|_| VecDeque::new()).collect())
                .collect(),
            unreceived: vec![vec![0; n]; n],
            posted: vec![None; n],
            delivered: vec![None; n],
            blocked: vec![None; n],
            deadlocked: vec![None; n],
        }
    }

    /// Whether `len` bytes from `from` can be handed to `to` now.
    fn can_send(&self, from: usize, to: usize, len: usize) -> bool {
        self.posted[to] == Some(from)
            || self.unreceived[from][to].saturating_add(len) <= self.window
    }

    /// Whether rank `r`'s wait `w` can end now.
    fn ready(&self, r: usize, w: Wait) -> bool {
        match w {
            Wait::Send { to, len } => self.can_send(r, to, len),
            Wait::Recv { .. } => self.delivered[r].is_some(),
        }
    }

    /// Posts rank `r`'s receive from `from`: it takes the oldest unreceived message at once, if
    /// there is one.
    fn post(&mut self, r: usize, from: usize) {
        debug_assert!(self.posted[r].is_none() && self.delivered[r].is_none());
        match self.inbox[r][from].pop_front() {
            Some(msg) => {
                self.unreceived[from][r] -= msg.len();
                self.delivered[r] = Some((from, msg));
            }
            None => self.posted[r] = Some(from),
        }
    }

    /// Withdraws rank `r`'s receive after a failure; a message that filled it goes back in front.
    fn cancel(&mut self, r: usize) {
        self.posted[r] = None;
        if let Some((from, msg)) = self.delivered[r].take() {
            self.unreceived[from][r] += msg.len();
            self.inbox[r][from].push_front(msg);
        }
    }

    /// Hands `msg` from `from` to `to` (the caller has checked `can_send`).
    fn deliver(&mut self, from: usize, to: usize, msg: Vec<u8>) {
        if self.posted[to] == Some(from) {
            debug_assert!(self.inbox[to][from].is_empty());
            self.posted[to] = None;
            self.delivered[to] = Some((from, msg));
        } else {
            self.unreceived[from][to] += msg.len();
            self.inbox[to][from].push_back(msg);
        }
    }

    /// If some rank runs and none of the running ranks can ever go on (each waits, and no wait
    /// can end: only a running rank that is not waiting could change that), what each waits for.
    fn deadlock(&self) -> Option<String> {
        let n = self.running.len();
        // A rank already told of a deadlock is about to wake and act: not stuck.
        let stuck = |r: usize| {
            !self.running[r]
                || (self.deadlocked[r].is_none()
                    && self.blocked[r].is_some_and(|w| !self.ready(r, w)))
        };
        if !self.running.iter().any(|&r| r) || !(0..n).all(stuck) {
            return None;
        }
        let window = match self.window {
            UNBOUNDED => "unbounded".to_string(),
            w => format!("{w} bytes"),
        };
        let mut why = format!("deadlock (window {window}):");
        for r in 0..n {
            let sep = if r == 0 { " " } else { "; " };
            let _ = match self.blocked[r] {
                _ if !self.running[r] => write!(why, "{sep}rank {r} has returned"),
                Some(Wait::Send { to, len }) => {
                    let held = self.unreceived[r][to];
                    let recv = match (self.posted[r], &self.delivered[r]) {
                        (Some(p), _) => format!(", its receive from rank {p} posted"),
                        (None, Some((p, _))) => format!(", its receive from rank {p} filled"),
                        (None, None) => String::new(),
                    };
                    write!(
                        why,
                        "{sep}rank {r} waits to send {len} bytes to rank {to} ({held} bytes \
                         unreceived there{recv})"
                    )
                }
                Some(Wait::Recv { from }) => {
                    write!(why, "{sep}rank {r} waits to receive from rank {from}")
                }
                None => unreachable!("a running rank that does not wait is not stuck"),
            };
        }
        Some(why)
    }

    /// Fails every waiting rank if the cluster is deadlocked; returns whether it was.
    fn check_deadlock(&mut self) -> bool {
        let Some(why) = self.deadlock() else {
            return false;
        };
        for r in 0..self.running.len() {
            if self.running[r] {
                self.deadlocked[r] = Some(why.clone());
            }
        }
        true
    }

    /// Messages left unreceived, as `(from, to, length)`.
    fn leftovers(&self) -> Vec<(usize, usize, usize)> {
        let queued = self.inbox.iter().enumerate().flat_map(|(dst, from)| {
            from.iter()
                .enumerate()
                .flat_map(move |(src, q)| q.iter().map(move |m| (src, dst, m.len())))
        });
        let filled = self
            .delivered
            .iter()
            .enumerate()
            .filter_map(|(dst, d)| d.as_ref().map(|(src, m)| (*src, dst, m.len())));
        queued.chain(filled).collect()
    }
}

/// The cluster's state and the condition every wait sleeps on.
#[derive(Debug)]
struct Shared {
    state: Mutex<Cluster>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Cluster> {
        // A rank that panicked while holding the lock has left consistent state behind.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until rank `me`'s wait `w` can end (the guard is handed back) or the cluster is
    /// deadlocked (the error says what every rank waits for).
    fn wait_until<'a>(
        &'a self,
        mut st: MutexGuard<'a, Cluster>,
        me: usize,
        w: Wait,
    ) -> Result<MutexGuard<'a, Cluster>, String> {
        let start = Instant::now();
        loop {
            if let Some(why) = st.deadlocked[me].take() {
                st.blocked[me] = None;
                return Err(why);
            }
            if st.ready(me, w) {
                st.blocked[me] = None;
                return Ok(st);
            }
            st.blocked[me] = Some(w);
            if st.check_deadlock() {
                self.wake.notify_all();
                continue;
            }
            let Some(left) = WAIT_TIMEOUT.checked_sub(start.elapsed()) else {
                st.blocked[me] = None;
                return Err(format!("no progress within {WAIT_TIMEOUT:?}"));
            };
            st = self
                .wake
                .wait_timeout(st, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }
}

/// Marks one rank as running for as long as it lives (also when the rank panics); when it
/// ends, the ranks still waiting may be deadlocked.
struct Running(Arc<Shared>, usize);

impl Running {
    fn start(shared: &Arc<Shared>, rank: usize) -> Running {
        shared.lock().running[rank] = true;
        Running(Arc::clone(shared), rank)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.running[self.1] = false;
        if st.check_deadlock() {
            self.0.wake.notify_all();
        }
    }
}

/// What one rank put on the wire during a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    pub(crate) messages_sent: usize,
    pub(crate) bytes_sent: usize,
    /// Messages sent with a plain `send`, not paired with a receive by `send_recv`.
    pub(crate) plain_sends: usize,
}

/// One rank's end of the cluster.
pub(crate) struct TestChannel {
    rank: usize,
    size: usize,
    window: usize,
    shared: Arc<Shared>,
    stats: Stats,
}

impl TestChannel {
    /// What this rank has sent so far.
    pub(crate) fn stats(&self) -> Stats {
        self.stats
    }

    fn check_peer(&self, peer: usize, what: &str) -> Result<(), String> {
        if peer >= self.size {
            return Err(format!(
                "rank {}: {what} peer {peer} out of range",
                self.rank
            ));
        }
        if peer == self.rank {
            return Err(format!("rank {}: {what} itself", self.rank));
        }
        Ok(())
    }

    /// Waits until `data` can go to `to`, then hands it over (the caller names the call in
    /// errors).
    fn hand_over(&mut self, to: usize, data: &[u8]) -> Result<(), String> {
        let shared = Arc::clone(&self.shared);
        let st = shared.lock();
        let wait = Wait::Send {
            to,
            len: data.len(),
        };
        let mut st = shared.wait_until(st, self.rank, wait)?;
        st.deliver(self.rank, to, data.to_vec());
        drop(st);
        shared.wake.notify_all();
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += data.len();
        Ok(())
    }

    /// Posts a receive from `from` (see the module doc).
    fn post(&self, from: usize) {
        self.shared.lock().post(self.rank, from);
        self.shared.wake.notify_all();
    }

    /// Waits for the message that fills the posted receive from `from` and stores it into `into`.
    fn finish_receive(&mut self, from: usize, into: RecvInto<'_>) -> Result<(), String> {
        let me = self.rank;
        let fail = |why: String| format!("rank {me}: recv from peer {from}: {why}");
        let shared = Arc::clone(&self.shared);
        let st = shared.lock();
        let msg = match shared.wait_until(st, me, Wait::Recv { from }) {
            Ok(mut st) => st.delivered[me].take().map(|(_, m)| m),
            Err(why) => {
                shared.lock().cancel(me);
                return Err(fail(why));
            }
        };
        let msg = msg.expect("a finished receive holds its message");
        if msg.len() != into.len() {
            return Err(fail(format!(
                "expected {} bytes, got {}",
                into.len(),
                msg.len()
            )));
        }
        into.store(&msg);
        Ok(())
    }

    fn receive(&mut self, from: usize, into: RecvInto<'_>) -> Result<(), String> {
        self.check_peer(from, "recv from")?;
        self.post(from);
        self.finish_receive(from, into)
    }
}

impl Channel for TestChannel {
    type Error = String;

    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn send(&mut self, peer: usize, data: &[u8]) -> Result<(), String> {
        self.check_peer(peer, "send to")?;
        self.hand_over(peer, data)
            .map_err(|why| format!("rank {}: send to peer {peer}: {why}", self.rank))?;
        self.stats.plain_sends += 1;
        Ok(())
    }

    fn recv(&mut self, peer: usize, buf: &mut [u8]) -> Result<(), String> {
        self.receive(peer, RecvInto::Copy(buf))
    }

    fn recv_reduce(&mut self, peer: usize, acc: &mut [u8], red: &Reducer) -> Result<(), String> {
        self.receive(peer, RecvInto::Combine(acc, red))
    }

    fn send_recv(
        &mut self,
        to: usize,
        data: &[u8],
        from: usize,
        into: RecvInto<'_>,
    ) -> Result<(), String> {
        self.check_peer(to, "send to")?;
        self.check_peer(from, "recv from")?;
        // The receive is posted first, so a peer's message beyond the window can land in it
        // while our own send waits.
        self.post(from);
        if let Err(why) = self.hand_over(to, data) {
            self.shared.lock().cancel(self.rank);
            return Err(format!(
                "rank {}: send to peer {to} (while receiving from peer {from}): {why}",
                self.rank
            ));
        }
        self.finish_receive(from, into)
    }

    fn window(&self) -> usize {
        self.window
    }
}

/// Runs `f` on `n` ranks, one thread each, with sends that never wait; returns the results in
/// rank order.
///
/// # Panics
/// If a rank panics, or if any message is still unreceived after every rank has returned.
pub(crate) fn run_cluster<R: Send>(n: usize, f: impl Fn(&mut TestChannel) -> R + Sync) -> Vec<R> {
    run_cluster_with_window(n, UNBOUNDED, f)
}

/// Runs `f` on `n` ranks whose peers buffer at most `window` unreceived bytes from each rank
/// (see the module doc); returns the results in rank order.
///
/// # Panics
/// As [`run_cluster`].
pub(crate) fn run_cluster_with_window<R: Send>(
    n: usize,
    window: usize,
    f: impl Fn(&mut TestChannel) -> R + Sync,
) -> Vec<R> {
    let (out, leftovers) = run_mesh(n, window, f);
    assert!(
        leftovers.is_empty(),
        "unreceived messages (from, to, bytes): {leftovers:?}"
    );
    out
}

/// Runs `f` as [`run_cluster_with_window`] does, but returns the unreceived messages
/// (`(from, to, bytes)`) instead of panicking on them.
pub(crate) fn run_mesh<R: Send>(
    n: usize,
    window: usize,
    f: impl Fn(&mut TestChannel) -> R + Sync,
) -> (Vec<R>, Vec<(usize, usize, usize)>) {
    let f = &f;
    let shared = Arc::new(Shared {
        state: Mutex::new(Cluster::new(n, window)),
        wake: Condvar::new(),
    });
    // Every rank counts as running before any starts, so none sees a premature deadlock.
    let running: Vec<Running> = (0..n).map(|r| Running::start(&shared, r)).collect();
    let out = thread::scope(|s| {
        let handles: Vec<_> = running
            .into_iter()
            .enumerate()
            .map(|(rank, running)| {
                let mut ch = TestChannel {
                    rank,
                    size: n,
                    window,
                    shared: Arc::clone(&shared),
                    stats: Stats::default(),
                };
                s.spawn(move || {
                    let result = f(&mut ch);
                    drop(running);
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let leftovers = shared.lock().leftovers();
    (out, leftovers)
}

/// SplitMix64: a tiny deterministic generator, so tests derive every rank's data from one seed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// `count` elements of the reducer's dtype whose reduction over at most 9 ranks is exact in
    /// any order: arbitrary bits for integers (they wrap), small integers for floats.
    pub(crate) fn exact_elems(&mut self, red: &Reducer, count: usize) -> Vec<u8> {
        let (lo, hi) = match red.op() {
            ReduceOp::Prod => (-2, 2), // |product| <= 2^9: exact in every float type
            _ => (-100, 100),          // |sum| <= 900: exact in every float type
        };
        let mut out = Vec::with_capacity(count * red.dtype().size());
        for _ in 0..count {
            let bits = self.next_u64();
            let small = self.range(lo, hi);
            match red.dtype() {
                DType::F32 => out.extend_from_slice(&(small as f32).to_le_bytes()),
                DType::F64 => out.extend_from_slice(&(small as f64).to_le_bytes()),
                d => out.extend_from_slice(&bits.to_le_bytes()[..d.size()]),
            }
        }
        out
    }

    /// `count` random f32 with varied exponents, so that the order of a sum shows in its bits.
    pub(crate) fn rough_f32(&mut self, count: usize) -> Vec<u8> {
        (0..count)
            .flat_map(|_| {
                let mantissa = self.range(-1_000_000, 1_000_000) as f32;
                let scale = 2f32.powi(self.range(-20, 0) as i32);
                (mantissa * scale).to_le_bytes()
            })
            .collect()
    }
}

/// Reduces `inputs` in rank order: `((x0 op x1) op x2) ...`.
pub(crate) fn fold_in_rank_order(red: &Reducer, inputs: &[Vec<u8>]) -> Vec<u8> {
    let mut acc = inputs[0].clone();
    for x in &inputs[1..] {
        red.combine(&mut acc, x);
    }
    acc
}

/// The combine order documented in `reduce_scatter`, for chunk `c` (bytes `r`) of `n` ranks:
/// `acc = x_(c+1); acc = acc op x_(c+2); ...; acc = acc op x_(c+n)`, ranks mod n.
pub(crate) fn ring_order(red: &Reducer, inputs: &[Vec<u8>], c: usize, r: Range<usize>) -> Vec<u8> {
    let n = inputs.len();
    let mut acc = inputs[(c + 1) % n][r.clone()].to_vec();
    for j in 2..=n {
        red.combine(&mut acc, &inputs[(c + j) % n][r.clone()]);
    }
    acc
}

/// Every valid reducer over the dtypes whose test data reduce exactly.
pub(crate) fn exact_reducer() -> impl Strategy<Value = Reducer> {
    let dtypes = [
        DType::I32,
        DType::U8,
        DType::I64,
        DType::U32,
        DType::F32,
        DType::F64,
    ];
    let all: Vec<Reducer> = dtypes
        .into_iter()
        .flat_map(|d| {
            ReduceOp::ALL
                .into_iter()
                .filter_map(move |op| Reducer::new(d, op).ok())
        })
        .collect();
    prop::sample::select(all)
}

/// Every valid reducer over every dtype, f16 and bf16 included (for tests that compare bits
/// against a documented combine order, with arbitrary inputs).
pub(crate) fn any_reducer() -> impl Strategy<Value = Reducer> {
    let all: Vec<Reducer> = DType::ALL
        .iter()
        .flat_map(|&d| {
            ReduceOp::ALL
                .into_iter()
                .filter_map(move |op| Reducer::new(d, op).ok())
        })
        .collect();
    prop::sample::select(all)
}

/// Element counts: the edge cases 0 and 1, primes, and small random counts.
pub(crate) fn elem_count() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), Just(1), Just(13), Just(1009), 0usize..200]
}

/// Byte lengths for algorithms that do not look at elements.
pub(crate) fn byte_len() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), Just(1), Just(4099), 0usize..700]
}

/// Segment sizes: tiny (many segments, below one element for wide types), medium, and large.
pub(crate) fn seg_bytes() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..=16, 17usize..=600, Just(1 << 20)]
}

/// Per-rank element counts for the `_v` collectives: uneven, with zeros.
pub(crate) fn counts(n: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![Just(0usize), 0usize..40], n)
}

/// Flow-control windows: unbounded (sends never wait), none at all (every message but an empty
/// one waits for its posted receive), one byte (less than any segment of a wide type), and
/// windows of a few bytes to several segments.
pub(crate) fn window() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(UNBOUNDED),
        Just(0usize),
        Just(1),
        2usize..=64,
        65usize..=8192
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn messages_arrive_in_order_and_sizes_are_checked() {
        for window in [UNBOUNDED, 0, 2] {
            let out = run_cluster_with_window(2, window, |ch| -> Result<Vec<u8>, String> {
                if ch.rank() == 0 {
                    ch.send(1, &[1, 2, 3])?;
                    ch.send(1, &[4])?;
                    ch.send(1, &[5, 6])?;
                    Ok(vec![])
                } else {
                    let (mut a, mut b) = ([0u8; 3], [0u8; 1]);
                    ch.recv(0, &mut a)?;
                    ch.recv(0, &mut b)?;
                    let mut wrong = [0u8; 3];
                    let e = ch.recv(0, &mut wrong).unwrap_err();
                    Ok([&a[..], &b[..], e.as_bytes()].concat())
                }
            });
            let got = out[1].clone().unwrap();
            assert_eq!(&got[..4], &[1, 2, 3, 4]);
            let msg = String::from_utf8_lossy(&got[4..]).into_owned();
            assert!(
                msg.contains("rank 1: recv from peer 0: expected 3 bytes, got 2"),
                "window {window}: {msg}"
            );
        }
    }

    /// Spins until `flag` is set; fails (instead of hanging) if it never is.
    fn await_flag(flag: &AtomicBool) -> Result<(), String> {
        let start = Instant::now();
        while !flag.load(Ordering::SeqCst) {
            if start.elapsed() > WAIT_TIMEOUT {
                return Err("the flag was never set".into());
            }
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    #[test]
    fn a_send_waits_only_beyond_the_window() {
        // 4 bytes fit in the window: that send returns while rank 1 is not receiving. The next
        // 10 do not fit, even once the first 4 are received: they can only go into rank 1's
        // posted receive, which rank 1 posts after raising `posting`.
        let (sent_ahead, posting) = (AtomicBool::new(false), AtomicBool::new(false));
        let out = run_cluster_with_window(2, 4, |ch| -> Result<bool, String> {
            if ch.rank() == 0 {
                ch.send(1, &[1; 4])?;
                sent_ahead.store(true, Ordering::SeqCst);
                ch.send(1, &[2; 10])?;
                assert_eq!(ch.stats().plain_sends, 2);
                Ok(posting.load(Ordering::SeqCst))
            } else {
                await_flag(&sent_ahead)?;
                posting.store(true, Ordering::SeqCst);
                ch.recv(0, &mut [0; 4])?;
                let mut buf = [0; 10];
                ch.recv(0, &mut buf)?;
                Ok(buf == [2; 10])
            }
        });
        assert_eq!(out, vec![Ok(true), Ok(true)]);
    }

    #[test]
    fn empty_messages_fit_in_a_window_of_zero_bytes() {
        let out = run_cluster_with_window(2, 0, |ch| {
            if ch.rank() == 0 {
                (0..5).try_for_each(|_| ch.send(1, &[]))
            } else {
                (0..5).try_for_each(|_| ch.recv(0, &mut []))
            }
        });
        assert!(out.iter().all(Result::is_ok), "{out:?}");
    }

    #[test]
    fn send_recv_in_a_cycle_moves_any_size_through_no_window() {
        for n in 2..=5 {
            let out = run_cluster_with_window(n, 0, |ch| -> Result<Stats, String> {
                let (r, n) = (ch.rank(), ch.size());
                let (right, left) = ((r + 1) % n, (r + n - 1) % n);
                let mut got = vec![0u8; 3000];
                for round in 0..3u8 {
                    ch.send_recv(
                        right,
                        &[r as u8 ^ round; 3000],
                        left,
                        RecvInto::Copy(&mut got),
                    )?;
                    assert!(got.iter().all(|&b| b == left as u8 ^ round));
                }
                // And with the same peer on both sides.
                let peer = r ^ 1;
                if peer < n {
                    let red = Reducer::new(DType::U8, ReduceOp::Max).unwrap();
                    let mut acc = vec![r as u8; 3000];
                    ch.send_recv(
                        peer,
                        &vec![r as u8; 3000],
                        peer,
                        RecvInto::Combine(&mut acc, &red),
                    )?;
                    assert!(acc.iter().all(|&b| b == r.max(peer) as u8));
                }
                Ok(ch.stats())
            });
            for (r, stats) in out.into_iter().enumerate() {
                let stats = stats.unwrap();
                assert_eq!(stats.plain_sends, 0, "n={n} rank {r}");
                assert_eq!(
                    stats.bytes_sent,
                    stats.messages_sent * 3000,
                    "n={n} rank {r}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "unreceived messages")]
    fn an_unmatched_send_is_reported() {
        run_cluster(2, |ch| {
            if ch.rank() == 0 {
                ch.send(1, &[9])
            } else {
                Ok(())
            }
        });
    }

    #[test]
    fn a_deadlock_fails_fast() {
        let start = Instant::now();
        let out = run_cluster(3, |ch| {
            // Everyone receives first, from a peer that never sends: no message can ever arrive.
            let peer = (ch.rank() + 1) % 3;
            ch.recv(peer, &mut [0u8; 4])?;
            ch.send(peer, &[0u8; 4])
        });
        for (rank, r) in out.iter().enumerate() {
            let e = r.as_ref().unwrap_err();
            assert!(e.contains(&format!("rank {rank}: recv from peer")), "{e}");
            assert!(e.contains("deadlock"), "{e}");
            assert!(e.contains("rank 2 waits to receive from rank 0"), "{e}");
        }
        assert!(
            start.elapsed() < WAIT_TIMEOUT / 2,
            "took {:?}",
            start.elapsed()
        );
    }

    /// Sends every chunk, then receives every chunk: the all-to-all schedule of the old contract
    /// (sends never wait), which needs the window to hold a chunk.
    fn send_all_then_receive(ch: &mut TestChannel, chunk: usize) -> Result<(), String> {
        let (r, n) = (ch.rank(), ch.size());
        for k in 1..n {
            ch.send((r + k) % n, &vec![r as u8; chunk])?;
        }
        for k in 1..n {
            ch.recv((r + n - k) % n, &mut vec![0; chunk])?;
        }
        Ok(())
    }

    #[test]
    fn the_old_all_to_all_deadlocks_when_a_chunk_exceeds_the_window() {
        for window in [UNBOUNDED, 64] {
            let out = run_cluster_with_window(4, window, |ch| send_all_then_receive(ch, 64));
            assert!(out.iter().all(Result::is_ok), "window {window}: {out:?}");
        }
        let start = Instant::now();
        let (out, leftovers) = run_mesh(4, 63, |ch| send_all_then_receive(ch, 64));
        for (rank, r) in out.iter().enumerate() {
            let e = r.as_ref().unwrap_err();
            assert!(
                e.contains(&format!(
                    "rank {rank}: send to peer {}: deadlock",
                    (rank + 1) % 4
                )),
                "{e}"
            );
            assert!(e.contains("(window 63 bytes)"), "{e}");
            assert!(
                e.contains("rank 3 waits to send 64 bytes to rank 0 (0 bytes unreceived there)"),
                "{e}"
            );
        }
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(start.elapsed() < WAIT_TIMEOUT / 2);
    }

    #[test]
    fn a_rank_that_returned_early_is_not_waited_for() {
        // Rank 1 forgets to send; rank 0 must fail without waiting for the full timeout.
        let start = Instant::now();
        let out = run_cluster(2, |ch| {
            if ch.rank() == 0 {
                ch.recv(1, &mut [0u8; 1])
            } else {
                Ok(())
            }
        });
        let e = out[0].as_ref().unwrap_err();
        assert!(
            e.contains("deadlock") && e.contains("rank 1 has returned"),
            "{e}"
        );
        assert!(start.elapsed() < WAIT_TIMEOUT / 2);
    }

    #[test]
    fn waiting_on_the_wrong_peer_is_a_deadlock() {
        // A message from rank 0 to rank 1 is in flight, but rank 1 waits on rank 2 and rank 2 on
        // rank 0, which has returned. (Rank 1 takes the message afterwards, to leave none behind.)
        let start = Instant::now();
        let out = run_cluster(3, |ch| match ch.rank() {
            0 => ch.send(1, &[1]),
            1 => {
                let waited = ch.recv(2, &mut [0u8; 1]);
                ch.recv(0, &mut [0u8; 1])?;
                waited
            }
            _ => ch.recv(0, &mut [0u8; 1]),
        });
        for r in [1, 2] {
            assert!(
                out[r].as_ref().unwrap_err().contains("deadlock"),
                "{:?}",
                out[r]
            );
        }
        assert!(start.elapsed() < WAIT_TIMEOUT / 2);
    }

    #[test]
    fn a_failed_send_recv_leaves_its_message_for_the_next_receive() {
        // Rank 1's send to rank 0 cannot go (no window, rank 0 never receives from it), but
        // rank 0's message lands in its posted receive meanwhile; after the deadlock the message
        // is still there for a plain receive.
        let out = run_cluster_with_window(2, 0, |ch| -> Result<Vec<u8>, String> {
            if ch.rank() == 0 {
                ch.send(1, &[7])?;
                Ok(vec![])
            } else {
                let mut buf = [0u8; 1];
                let e = ch
                    .send_recv(0, &[1], 0, RecvInto::Copy(&mut buf))
                    .unwrap_err();
                assert!(e.contains("rank 0 has returned"), "{e}");
                ch.recv(0, &mut buf)?;
                Ok(buf.to_vec())
            }
        });
        assert_eq!(out[1], Ok(vec![7]));
    }

    #[test]
    fn sending_to_itself_is_an_error() {
        let out = run_cluster(1, |ch| ch.send(0, &[1]));
        assert!(out[0].as_ref().unwrap_err().contains("itself"));
    }
}
