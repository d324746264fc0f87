//! A fault-injecting [`Transport`] for tests: wraps another transport (in practice a
//! [`MemTransport`]) and holds every message back for a random delay before handing it on, so
//! messages of different keys overtake each other, as they may on real links.
//!
//! What it keeps of the contract (module [`super`]): messages from one peer with one key are
//! delivered in the order they were sent (a message's due time is never before that of the
//! previous message with its key to the same peer); every call returns by its deadline (a send
//! only queues a copy and never waits); a delivery that fails (the peer left) fails this
//! rank's later sends with the same error. What it changes: a message arrives 0 to `max_delay`
//! after its send returned (uniform, from a seeded splitmix64 per rank, so a run is
//! reproducible up to thread scheduling), and messages of different keys (another collective's
//! sequence number, another tag, another communicator) may arrive in another order than sent.
//!
//! Costs: one copy of each payload, and one courier thread per rank that delivers the due
//! messages in due order. The window is the inner transport's; the queue itself is unbounded
//! (for tests only). [`shutdown`](Transport::shutdown) first delivers what is queued, for at
//! most [`FLUSH_BOUND`]; [`abort`](Transport::abort) drops it (a crashed rank's messages are
//! lost too).

use super::mem::MemTransport;
use super::{
    Completion, Envelope, MsgKey, RecvInto, RequestId, Source, Transport, TransportError,
    SEND_REQUEST,
};
use crate::deadline::Deadline;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long [`shutdown`](Transport::shutdown) waits for queued messages to be delivered.
pub const FLUSH_BOUND: Duration = Duration::from_secs(2);

/// A message waiting for its due time.
struct Pending {
    peer: usize,
    key: MsgKey,
    fingerprint: u128,
    payload: Vec<u8>,
    deadline: Deadline,
}

/// The courier's queue and what senders learn from it.
struct Queue {
    /// By due time, then by the order of sends (so equal due times keep the send order).
    due: BTreeMap<(Instant, u64), Pending>,
    /// The latest due time per peer and key (keeps one key's messages in order).
    last_due: HashMap<(usize, MsgKey), Instant>,
    next: u64,
    rng: u64,
    /// Messages queued or being handed on (a flush waits for 0).
    in_flight: usize,
    /// The first delivery error: the peer it names, if any, and why.
    failed: Option<(Option<usize>, String)>,
    /// Deliver what is queued, then stop.
    closing: bool,
    /// Drop what is queued and stop.
    aborted: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
    inner: Arc<dyn Transport>,
    max_delay: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every critical section leaves the queue consistent before anything can panic.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One rank's end of a world whose messages are delayed and reordered; see the module doc.
pub struct FaultyTransport {
    shared: Arc<Shared>,
    courier: Mutex<Option<JoinHandle<()>>>,
    /// Finished owned sends (their buffers), by request id.
    sent: Mutex<HashMap<u64, Vec<u8>>>,
    next_send: AtomicU64,
}

fn splitmix(z: &mut u64) -> u64 {
    *z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut x = *z;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl FaultyTransport {
    /// An in-process world of `size` ranks ([`MemTransport`]) whose messages are each delayed by
    /// 0 to `max_delay`, drawn from `seed` (mixed with the rank).
    /// Fails if a courier thread cannot be started.
    pub fn world(
        size: usize,
        seed: u64,
        max_delay: Duration,
    ) -> std::io::Result<Vec<Arc<FaultyTransport>>> {
        MemTransport::world(size)
            .into_iter()
            .map(|t| FaultyTransport::wrap(t, seed, max_delay))
            .collect()
    }

    /// Wraps `inner`; starts the courier thread (the error of a thread that cannot start).
    pub fn wrap(
        inner: Arc<dyn Transport>,
        seed: u64,
        max_delay: Duration,
    ) -> std::io::Result<Arc<FaultyTransport>> {
        let mut rng = seed ^ (inner.rank() as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
        splitmix(&mut rng);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                due: BTreeMap::new(),
                last_due: HashMap::new(),
                next: 0,
                rng,
                in_flight: 0,
                failed: None,
                closing: false,
                aborted: false,
            }),
            changed: Condvar::new(),
            inner,
            max_delay,
        });
        let s = shared.clone();
        let courier = std::thread::Builder::new()
            .name(format!("tutti-faulty-{}", shared.inner.rank()))
            .spawn(move || courier(&s))?;
        Ok(Arc::new(FaultyTransport {
            shared,
            courier: Mutex::new(Some(courier)),
            sent: Mutex::new(HashMap::new()),
            next_send: AtomicU64::new(0),
        }))
    }

    /// Queues a copy of the message, due after a random delay (and not before the previous one
    /// of its key to this peer).
    fn queue(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u128,
        payload: &[u8],
        deadline: Deadline,
    ) -> Result<(), TransportError> {
        let size = self.size();
        if peer >= size {
            return Err(TransportError::NoSuchPeer { peer, size });
        }
        let mut q = self.shared.lock();
        if let Some((who, reason)) = &q.failed {
            return Err(match who {
                Some(p) => TransportError::PeerLost {
                    peer: *p,
                    reason: reason.clone(),
                },
                None => TransportError::Closed {
                    reason: reason.clone(),
                },
            });
        }
        if q.closing || q.aborted {
            return Err(TransportError::Closed {
                reason: "this rank shut its transport down".into(),
            });
        }
        let span = self.shared.max_delay.as_micros() as u64 + 1;
        let delay = Duration::from_micros(splitmix(&mut q.rng) % span);
        let mut due = Instant::now() + delay;
        if let Some(&last) = q.last_due.get(&(peer, key)) {
            due = due.max(last);
        }
        q.last_due.insert((peer, key), due);
        let order = q.next;
        q.next += 1;
        q.in_flight += 1;
        q.due.insert(
            (due, order),
            Pending {
                peer,
                key,
                fingerprint,
                payload: payload.to_vec(),
                deadline,
            },
        );
        drop(q);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Stops the courier: with `flush`, after delivering what is queued (within
    /// [`FLUSH_BOUND`]); without, at once, dropping it.
    fn stop(&self, flush: bool) {
        let mut q = self.shared.lock();
        if flush {
            q.closing = true;
            let deadline = Deadline::after(FLUSH_BOUND);
            self.shared.changed.notify_all();
            while q.in_flight > 0 && !deadline.expired() {
                q = self
                    .shared
                    .changed
                    .wait_timeout(q, deadline.remaining())
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        q.aborted = true;
        q.in_flight -= q.due.len();
        q.due.clear();
        drop(q);
        self.shared.changed.notify_all();
        let handle = self
            .courier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            // The courier leaves within one delivery (an inner send to a MemTransport never
            // waits).
            let _ = h.join();
        }
    }
}

/// The courier thread: hands each message on at its due time, in due order.
fn courier(s: &Shared) {
    let mut q = s.lock();
    loop {
        if q.aborted {
            return;
        }
        let Some((&(due, order), _)) = q.due.first_key_value() else {
            if q.closing {
                return;
            }
            q = s
                .changed
                .wait_timeout(q, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        };
        let now = Instant::now();
        if due > now {
            q = s
                .changed
                .wait_timeout(q, due - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        let Some(m) = q.due.remove(&(due, order)) else {
            continue;
        };
        // A message of this key queued later is due at or after `due` (<= now), so a new one,
        // due from now on, cannot overtake it once the entry is gone.
        if q.last_due.get(&(m.peer, m.key)) == Some(&due) {
            q.last_due.remove(&(m.peer, m.key));
        }
        drop(q);
        let r = s
            .inner
            .send(m.peer, m.key, m.fingerprint, &m.payload, m.deadline);
        q = s.lock();
        q.in_flight -= 1;
        if let Err(e) = r {
            q.failed
                .get_or_insert_with(|| (e.peer(), format!("an earlier message failed: {e}")));
        }
        s.changed.notify_all();
    }
}

impl Transport for FaultyTransport {
    fn rank(&self) -> usize {
        self.shared.inner.rank()
    }

    fn size(&self) -> usize {
        self.shared.inner.size()
    }

    fn window(&self) -> usize {
        self.shared.inner.window()
    }

    fn send(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u128,
        payload: &[u8],
        deadline: Deadline,
    ) -> Result<(), TransportError> {
        self.queue(peer, key, fingerprint, payload, deadline)
    }

    fn recv(
        &self,
        from: Source,
        key: MsgKey,
        expect: u128,
        into: RecvInto<'_>,
        deadline: Deadline,
    ) -> Result<Envelope, TransportError> {
        self.shared.inner.recv(from, key, expect, into, deadline)
    }

    fn send_recv(
        &self,
        to: usize,
        key: MsgKey,
        fingerprint: u128,
        payload: &[u8],
        from: usize,
        into: RecvInto<'_>,
        deadline: Deadline,
    ) -> Result<Envelope, TransportError> {
        // The send only queues, so the receive is as good as posted first.
        self.queue(to, key, fingerprint, payload, deadline)?;
        self.recv(Source::Rank(from), key, fingerprint, into, deadline)
    }

    fn isend(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u128,
        payload: Vec<u8>,
    ) -> Result<RequestId, TransportError> {
        // Delivered by the courier whatever the caller's deadline: the request is done once
        // queued, as an owned send to a peer with room in its window is.
        let deadline = Deadline::after(Duration::from_secs(3600));
        self.queue(peer, key, fingerprint, &payload, deadline)?;
        let id = SEND_REQUEST | self.next_send.fetch_add(1, Ordering::Relaxed);
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, payload);
        Ok(RequestId(id))
    }

    fn irecv(&self, from: Source, key: MsgKey) -> Result<RequestId, TransportError> {
        self.shared.inner.irecv(from, key)
    }

    fn wait(&self, req: RequestId, deadline: Deadline) -> Result<Completion, TransportError> {
        if req.0 & SEND_REQUEST != 0 {
            return self
                .sent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.0)
                .map(Completion::Sent)
                .ok_or(TransportError::NoSuchRequest(req.0));
        }
        self.shared.inner.wait(req, deadline)
    }

    fn test(&self, req: RequestId) -> Result<Option<Completion>, TransportError> {
        if req.0 & SEND_REQUEST != 0 {
            return self.wait(req, Deadline::after(Duration::ZERO)).map(Some);
        }
        self.shared.inner.test(req)
    }

    fn cancel(&self, req: RequestId) {
        if req.0 & SEND_REQUEST != 0 {
            self.sent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.0);
            return;
        }
        self.shared.inner.cancel(req);
    }

    fn probe(
        &self,
        from: Source,
        key: MsgKey,
        deadline: Option<Deadline>,
    ) -> Result<Option<Envelope>, TransportError> {
        self.shared.inner.probe(from, key, deadline)
    }

    fn shutdown(&self, reason: &str) {
        self.stop(true);
        self.shared.inner.shutdown(reason);
    }

    fn abort(&self, reason: &str) {
        self.stop(false);
        self.shared.inner.abort(reason);
    }
}

impl Drop for FaultyTransport {
    fn drop(&mut self) {
        self.shutdown("dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Lane;

    fn key(tag: u64) -> MsgKey {
        MsgKey {
            comm_id: 0,
            lane: Lane::P2p,
            tag,
        }
    }

    #[test]
    fn one_keys_messages_stay_in_order_and_different_keys_overtake() {
        let w = FaultyTransport::world(2, 7, Duration::from_millis(20)).unwrap();
        let deadline = Deadline::after(Duration::from_secs(10));
        for i in 0..20u8 {
            w[0].send(1, key(1000), 0, &[i], deadline).unwrap();
            w[0].send(1, key(u64::from(i)), 0, &[i], deadline).unwrap();
        }
        // The 20 keys' messages: note the order in which they become visible.
        let mut arrived = Vec::new();
        let until = Deadline::after(Duration::from_secs(5));
        while arrived.len() < 20 && !until.expired() {
            for tag in 0..20u64 {
                let seen = arrived.contains(&tag);
                if !seen
                    && w[1]
                        .probe(Source::Rank(0), key(tag), None)
                        .unwrap()
                        .is_some()
                {
                    arrived.push(tag);
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        assert_eq!(arrived.len(), 20, "{arrived:?}");
        assert!(
            arrived.windows(2).any(|p| p[0] > p[1]),
            "20 keys sent in order arrived in order: {arrived:?}"
        );
        // The one key's 20 messages come in the order sent.
        for i in 0..20u8 {
            let mut b = [0u8];
            let env = w[1]
                .recv(
                    Source::Rank(0),
                    key(1000),
                    0,
                    RecvInto::Copy(&mut b),
                    deadline,
                )
                .unwrap();
            assert!(env.written);
            assert_eq!(b[0], i);
        }
    }
}
