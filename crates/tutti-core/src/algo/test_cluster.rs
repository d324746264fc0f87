//! An in-process cluster for testing algorithms: `n` threads, each holding a [`TestChannel`].
//!
//! [`TestChannel`] implements [`Channel`] over `std::sync::mpsc` with one unbounded queue per
//! ordered pair of ranks, so it keeps the channel contract exactly: `send` never waits for the
//! receiver, messages between two ranks stay in order, and `recv`/`recv_reduce` fail (with an error
//! naming both ranks) when the next message has the wrong length. A wrong schedule fails fast
//! instead of hanging the suite: when every rank still running waits in a receive from a peer
//! that has nothing queued for it, nothing can ever arrive, and the waiting receives fail with
//! "deadlock" within milliseconds ([`RECV_TIMEOUT`] is only a backstop). [`run_cluster`] panics
//! if any message is left unreceived when every rank has returned (a send without a matching
//! receive).
//!
//! Also here: a small deterministic PRNG, value generators whose reductions are exact in every
//! order, the reference reductions, and the proptest strategies the algorithm tests share.

use crate::channel::Channel;
use crate::dtype::DType;
use crate::reduce::{ReduceOp, Reducer};
use proptest::prelude::*;
use std::ops::Range;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// How long a receive waits before it reports the peer as stuck.
pub(crate) const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a waiting receive checks for a global deadlock.
const DEADLOCK_POLL: Duration = Duration::from_millis(5);

/// What the ranks of one cluster are doing, for deadlock detection.
///
/// Invariants (all updated under one lock): `queued[src][dst]` counts messages enqueued from `src`
/// to `dst` and not yet taken by a receive; `waiting_on[r]` is the peer rank `r` is blocked on.
/// A rank that is not running never sends again, so if every running rank waits on a peer with
/// nothing queued for it, no message can ever arrive: a deadlock.
#[derive(Debug)]
struct Activity {
    running: Vec<bool>,
    waiting_on: Vec<Option<usize>>,
    queued: Vec<Vec<usize>>,
}

#[derive(Clone, Debug)]
struct SharedActivity(Arc<Mutex<Activity>>);

impl SharedActivity {
    fn new(n: usize) -> SharedActivity {
        SharedActivity(Arc::new(Mutex::new(Activity {
            running: vec![false; n],
            waiting_on: vec![None; n],
            queued: vec![vec![0; n]; n],
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Activity> {
        // A rank that panicked while holding the lock has left consistent counters behind.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_deadlocked(&self) -> bool {
        let a = self.lock();
        (0..a.running.len())
            .filter(|&r| a.running[r])
            .all(|r| match a.waiting_on[r] {
                Some(peer) => a.queued[peer][r] == 0,
                None => false,
            })
    }
}

/// Marks one rank as running for as long as it lives (also when the rank panics).
struct Running(SharedActivity, usize);

impl Running {
    fn start(activity: &SharedActivity, rank: usize) -> Running {
        activity.lock().running[rank] = true;
        Running(activity.clone(), rank)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.lock().running[self.1] = false;
    }
}

/// What one rank put on the wire during a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    pub(crate) messages_sent: usize,
    pub(crate) bytes_sent: usize,
}

/// One rank's end of a full mesh of in-process queues.
pub(crate) struct TestChannel {
    rank: usize,
    /// `to[p]` carries our messages to peer `p` (`to[rank]` is never used).
    to: Vec<Sender<Vec<u8>>>,
    /// `from[p]` holds the messages peer `p` sent us.
    from: Vec<Receiver<Vec<u8>>>,
    activity: SharedActivity,
    stats: Stats,
}

impl TestChannel {
    /// A full mesh of `n` channels, one per rank, in rank order.
    pub(crate) fn mesh(n: usize) -> Vec<TestChannel> {
        let mut to: Vec<Vec<Sender<Vec<u8>>>> = (0..n).map(|_| Vec::with_capacity(n)).collect();
        let activity = SharedActivity::new(n);
        let mut from: Vec<Vec<Option<Receiver<Vec<u8>>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        for (src, senders) in to.iter_mut().enumerate() {
            for dst_from in from.iter_mut() {
                let (tx, rx) = mpsc::channel();
                senders.push(tx);
                dst_from[src] = Some(rx);
            }
        }
        to.into_iter()
            .zip(from)
            .enumerate()
            .map(|(rank, (to, from))| TestChannel {
                rank,
                to,
                from: from
                    .into_iter()
                    .map(|rx| rx.expect("mesh is full"))
                    .collect(),
                activity: activity.clone(),
                stats: Stats::default(),
            })
            .collect()
    }

    /// What this rank has sent so far.
    pub(crate) fn stats(&self) -> Stats {
        self.stats
    }

    fn check_peer(&self, peer: usize, what: &str) -> Result<(), String> {
        if peer >= self.to.len() {
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

    /// The next message from `peer`, which must be exactly `len` bytes long.
    fn next_message(&mut self, peer: usize, len: usize) -> Result<Vec<u8>, String> {
        self.check_peer(peer, "recv from")?;
        self.activity.lock().waiting_on[self.rank] = Some(peer);
        let got = self.wait_for(peer);
        let mut a = self.activity.lock();
        a.waiting_on[self.rank] = None;
        a.queued[peer][self.rank] -= usize::from(got.is_ok());
        drop(a);
        let msg = got.map_err(|why| format!("rank {}: recv from peer {peer}: {why}", self.rank))?;
        if msg.len() != len {
            return Err(format!(
                "rank {}: recv from peer {peer}: expected {len} bytes, got {}",
                self.rank,
                msg.len()
            ));
        }
        Ok(msg)
    }

    /// Waits for the next message from `peer` (counted as waiting by the caller).
    fn wait_for(&self, peer: usize) -> Result<Vec<u8>, String> {
        let start = Instant::now();
        loop {
            match self.from[peer].recv_timeout(DEADLOCK_POLL) {
                Ok(msg) => return Ok(msg),
                Err(RecvTimeoutError::Disconnected) => return Err("peer is gone".into()),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.activity.is_deadlocked() {
                return Err(
                    "deadlock: every running rank waits on a peer with nothing queued".into(),
                );
            }
            if start.elapsed() >= RECV_TIMEOUT {
                return Err(format!("no message within {RECV_TIMEOUT:?}"));
            }
        }
    }

    /// Messages left unreceived, as `(from, to, length)`.
    fn leftovers(&self) -> Vec<(usize, usize, usize)> {
        self.from
            .iter()
            .enumerate()
            .flat_map(|(src, rx)| rx.try_iter().map(move |m| (src, m.len())))
            .map(|(src, len)| (src, self.rank, len))
            .collect()
    }
}

impl Channel for TestChannel {
    type Error = String;

    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.to.len()
    }

    fn send(&mut self, peer: usize, data: &[u8]) -> Result<(), String> {
        self.check_peer(peer, "send to")?;
        // Enqueue under the lock, so that the deadlock check never sees a queued message uncounted.
        let mut a = self.activity.lock();
        self.to[peer]
            .send(data.to_vec())
            .map_err(|_| format!("rank {}: send to peer {peer}: peer is gone", self.rank))?;
        a.queued[self.rank][peer] += 1;
        drop(a);
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += data.len();
        Ok(())
    }

    fn recv(&mut self, peer: usize, buf: &mut [u8]) -> Result<(), String> {
        let msg = self.next_message(peer, buf.len())?;
        buf.copy_from_slice(&msg);
        Ok(())
    }

    fn recv_reduce(&mut self, peer: usize, acc: &mut [u8], red: &Reducer) -> Result<(), String> {
        let msg = self.next_message(peer, acc.len())?;
        red.combine(acc, &msg);
        Ok(())
    }

    fn send_recv(
        &mut self,
        to: usize,
        data: &[u8],
        from: usize,
        into: crate::channel::RecvInto<'_>,
    ) -> Result<(), String> {
        self.send(to, data)?;
        match into {
            crate::channel::RecvInto::Copy(buf) => self.recv(from, buf),
            crate::channel::RecvInto::Combine(acc, red) => self.recv_reduce(from, acc, red),
        }
    }

    fn window(&self) -> usize {
        usize::MAX
    }
}

/// Runs `f` on `n` ranks, one thread each, and returns the results in rank order.
///
/// # Panics
/// If a rank panics, or if any message is still queued after every rank has returned.
pub(crate) fn run_cluster<R: Send>(n: usize, f: impl Fn(&mut TestChannel) -> R + Sync) -> Vec<R> {
    let f = &f;
    let done: Vec<(R, TestChannel)> = thread::scope(|s| {
        let mesh = TestChannel::mesh(n);
        // Every rank counts as running before any starts, so none sees a premature deadlock.
        let running: Vec<Running> = mesh
            .iter()
            .map(|ch| Running::start(&ch.activity, ch.rank))
            .collect();
        let handles: Vec<_> = mesh
            .into_iter()
            .zip(running)
            .map(|(mut ch, running)| {
                s.spawn(move || {
                    let result = f(&mut ch);
                    drop(running);
                    (result, ch)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let leftovers: Vec<_> = done.iter().flat_map(|(_, ch)| ch.leftovers()).collect();
    assert!(
        leftovers.is_empty(),
        "unreceived messages (from, to, bytes): {leftovers:?}"
    );
    done.into_iter().map(|(r, _)| r).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_in_order_and_sizes_are_checked() {
        let out = run_cluster(2, |ch| -> Result<Vec<u8>, String> {
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
            "{msg}"
        );
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
        }
        assert!(
            start.elapsed() < RECV_TIMEOUT / 2,
            "took {:?}",
            start.elapsed()
        );
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
        assert!(out[0].as_ref().unwrap_err().contains("deadlock"));
        assert!(start.elapsed() < RECV_TIMEOUT / 2);
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
        assert!(start.elapsed() < RECV_TIMEOUT / 2);
    }

    #[test]
    fn sending_to_itself_is_an_error() {
        let out = run_cluster(1, |ch| ch.send(0, &[1]));
        assert!(out[0].as_ref().unwrap_err().contains("itself"));
    }
}
