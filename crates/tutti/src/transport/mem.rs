//! The in-process transport: ranks are threads of one process. A send matches the message
//! against the receiver's posted receives right away, on the sending thread, and writes it
//! straight into the receiver's buffer when its receive is posted (one copy, as shared memory
//! will); otherwise the message waits in the receiver's [`Matcher`] as unexpected.
//!
//! Its window is unbounded: a send never waits (every schedule that keeps the windowed contract
//! also runs here; `tutti_core`'s test channel checks the contract under small windows).
//! Every other part of the contract is the TCP transport's: per-key FIFO, posted receives,
//! any-source receives and probes, deadlines, and peers reported lost after their last message.
//!
//! A collective receive that has waited [`ANNOUNCE_AFTER`] announces its call (comm, sequence,
//! fingerprint) in every other rank's matcher, as a TCP heartbeat would: a rank blocked in the
//! same call with another fingerprint fails with a mismatch naming both calls, even when the
//! two calls exchange nothing (see [`Matcher::announce`]). Ranks are threads, so none can be
//! frozen alone: there is no heartbeat.

use super::matcher::{into_message, Matcher, Outcome, Post, Sink};
use super::{
    recv_timeout, Completion, Envelope, MsgKey, RecvInto, RequestId, Source, Transport,
    TransportError, SEND_REQUEST,
};
use crate::deadline::Deadline;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a collective receive waits before it announces its call to the other ranks.
pub const ANNOUNCE_AFTER: Duration = Duration::from_millis(100);

/// One rank's receiving side: its matcher and a condition variable for its waiters.
struct Inbox {
    matcher: Mutex<Matcher>,
    changed: Condvar,
    /// Keys of the receives posted with `irecv`, by request id (an owned message needs its key).
    keys: Mutex<HashMap<u64, (MsgKey, Source)>>,
}

/// One rank's end of an in-process world.
pub struct MemTransport {
    rank: usize,
    /// Every rank's inbox, indexed by rank.
    inboxes: Arc<Vec<Inbox>>,
    closed: AtomicBool,
    /// Why this rank closed (set once, before `closed`): later calls say it.
    closed_why: std::sync::OnceLock<String>,
    /// Finished owned sends (their buffers), by request id.
    sent: Mutex<HashMap<u64, Vec<u8>>>,
    next_send: AtomicU64,
}

impl MemTransport {
    /// A world of `size` ranks; element `r` is rank `r`'s transport.
    pub fn world(size: usize) -> Vec<Arc<MemTransport>> {
        let inboxes = Arc::new(
            (0..size)
                .map(|_| Inbox {
                    matcher: Mutex::new(Matcher::new(size)),
                    changed: Condvar::new(),
                    keys: Mutex::new(HashMap::new()),
                })
                .collect::<Vec<_>>(),
        );
        (0..size)
            .map(|rank| {
                Arc::new(MemTransport {
                    rank,
                    inboxes: inboxes.clone(),
                    closed: AtomicBool::new(false),
                    closed_why: std::sync::OnceLock::new(),
                    sent: Mutex::new(HashMap::new()),
                    next_send: AtomicU64::new(0),
                })
            })
            .collect()
    }

    fn check_peer(&self, peer: usize) -> Result<(), TransportError> {
        if peer >= self.inboxes.len() {
            return Err(TransportError::NoSuchPeer {
                peer,
                size: self.inboxes.len(),
            });
        }
        self.check_open()
    }

    fn check_source(&self, from: Source) -> Result<(), TransportError> {
        match from {
            Source::Rank(p) => self.check_peer(p),
            Source::Any => self.check_open(),
        }
    }

    fn check_open(&self) -> Result<(), TransportError> {
        if self.closed.load(Ordering::Acquire) {
            let why = self.closed_why.get().map_or("", String::as_str);
            return Err(TransportError::Closed {
                reason: format!("this rank shut its transport down ({why})"),
            });
        }
        Ok(())
    }

    fn own(&self) -> &Inbox {
        &self.inboxes[self.rank]
    }

    /// Sleeps on our inbox until something arrives or `left` has passed.
    fn sleep<'a>(&'a self, m: MutexGuard<'a, Matcher>, left: Duration) -> MutexGuard<'a, Matcher> {
        self.own()
            .changed
            .wait_timeout(m, left)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// Waits on our own inbox until receive `id` finishes or `deadline` passes (then cancels it).
    fn wait_receive<'a>(
        &'a self,
        mut m: MutexGuard<'a, Matcher>,
        id: u64,
        from: Source,
        deadline: Deadline,
    ) -> Outcome {
        let mut announce_at = Some(Instant::now() + ANNOUNCE_AFTER);
        loop {
            if let Some(out) = m.take_done(id) {
                return out;
            }
            let left = deadline.remaining();
            if left.is_zero() {
                m.cancel(id);
                return Err(recv_timeout(from, deadline));
            }
            let now = Instant::now();
            if announce_at.is_some_and(|at| now >= at) {
                announce_at = None;
                if let Some((key, fingerprint)) = m.pending_call(id) {
                    // Not holding our own matcher while locking the others' (two ranks may
                    // announce to each other at once); the receive stays posted meanwhile.
                    drop(m);
                    self.announce(key, fingerprint);
                    m = lock(&self.own().matcher);
                    continue;
                }
            }
            let slice = announce_at.map_or(left, |at| left.min(at - now));
            m = self.sleep(m, slice);
        }
    }

    /// Tells every other rank that this one waits in collective call `key` with `fingerprint`.
    fn announce(&self, key: MsgKey, fingerprint: u128) {
        if key.lane != super::Lane::Collective || fingerprint == 0 {
            return;
        }
        for (peer, inbox) in self.inboxes.iter().enumerate() {
            if peer != self.rank {
                lock(&inbox.matcher).announce(self.rank, key, fingerprint);
                inbox.changed.notify_all();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its state consistent before anything can panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Transport for MemTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.inboxes.len()
    }

    fn window(&self) -> usize {
        usize::MAX
    }

    fn send(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u128,
        payload: &[u8],
        _deadline: Deadline,
    ) -> Result<(), TransportError> {
        self.check_peer(peer)?;
        let inbox = &self.inboxes[peer];
        let mut m = lock(&inbox.matcher);
        if let Some(reason) = m.closed_reason(self.rank) {
            return Err(TransportError::PeerLost {
                peer,
                reason: reason.to_string(),
            });
        }
        m.begin(self.rank, key, fingerprint, payload.len());
        m.bytes(self.rank, payload);
        drop(m);
        inbox.changed.notify_all();
        Ok(())
    }

    fn recv(
        &self,
        from: Source,
        key: MsgKey,
        expect: u128,
        into: RecvInto<'_>,
        deadline: Deadline,
    ) -> Result<Envelope, TransportError> {
        self.check_source(from)?;
        let mut m = lock(&self.own().matcher);
        // SAFETY (the matcher's invariant): this function returns only after the receive has
        // finished or been cancelled, so `into` outlives every write into it.
        match m.post(from, key, expect, Sink::borrowed(into))? {
            Post::Done(out) => out.map(|(e, _)| e),
            Post::Pending(id) => self.wait_receive(m, id, from, deadline).map(|(e, _)| e),
        }
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
        // Sends never wait here, so the order of the two halves does not matter.
        self.send(to, key, fingerprint, payload, deadline)?;
        self.recv(Source::Rank(from), key, fingerprint, into, deadline)
    }

    fn isend(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u128,
        payload: Vec<u8>,
    ) -> Result<RequestId, TransportError> {
        self.send(
            peer,
            key,
            fingerprint,
            &payload,
            Deadline::after(Default::default()),
        )?;
        let id = SEND_REQUEST | self.next_send.fetch_add(1, Ordering::Relaxed);
        lock(&self.sent).insert(id, payload);
        Ok(RequestId(id))
    }

    fn irecv(&self, from: Source, key: MsgKey) -> Result<RequestId, TransportError> {
        self.check_source(from)?;
        let mut m = lock(&self.own().matcher);
        let id = match m.post(from, key, 0, Sink::Owned(Vec::new()))? {
            Post::Pending(id) => id,
            // Finished at once: file the outcome under a fresh id, as if it had waited.
            Post::Done(out) => m.file_done(out),
        };
        lock(&self.own().keys).insert(id, (key, from));
        Ok(RequestId(id))
    }

    fn wait(&self, req: RequestId, deadline: Deadline) -> Result<Completion, TransportError> {
        if req.0 & SEND_REQUEST != 0 {
            return lock(&self.sent)
                .remove(&req.0)
                .map(Completion::Sent)
                .ok_or(TransportError::NoSuchRequest(req.0));
        }
        let (key, from) = lock(&self.own().keys)
            .get(&req.0)
            .copied()
            .ok_or(TransportError::NoSuchRequest(req.0))?;
        let mut m = lock(&self.own().matcher);
        loop {
            if let Some(out) = m.take_done(req.0) {
                lock(&self.own().keys).remove(&req.0);
                let (env, data) = out?;
                return Ok(Completion::Received(into_message(key, env, data)));
            }
            if !m.is_pending(req.0) {
                return Err(TransportError::NoSuchRequest(req.0));
            }
            let left = deadline.remaining();
            if left.is_zero() {
                return Err(recv_timeout(from, deadline));
            }
            m = self.sleep(m, left);
        }
    }

    fn test(&self, req: RequestId) -> Result<Option<Completion>, TransportError> {
        if req.0 & SEND_REQUEST != 0 {
            return self
                .wait(req, Deadline::after(Default::default()))
                .map(Some);
        }
        let done = lock(&self.own().matcher).has_done(req.0);
        if done {
            self.wait(req, Deadline::after(Default::default()))
                .map(Some)
        } else {
            Ok(None)
        }
    }

    fn cancel(&self, req: RequestId) {
        if req.0 & SEND_REQUEST != 0 {
            lock(&self.sent).remove(&req.0);
            return;
        }
        lock(&self.own().matcher).cancel(req.0);
        lock(&self.own().keys).remove(&req.0);
    }

    fn probe(
        &self,
        from: Source,
        key: MsgKey,
        deadline: Option<Deadline>,
    ) -> Result<Option<Envelope>, TransportError> {
        self.check_source(from)?;
        let mut m = lock(&self.own().matcher);
        loop {
            if let Some(env) = m.peek(from, key) {
                return Ok(Some(env));
            }
            if let Some(e) = m.unreachable(from) {
                return Err(e);
            }
            let Some(d) = deadline else {
                return Ok(None);
            };
            let left = d.remaining();
            if left.is_zero() {
                return Err(recv_timeout(from, d));
            }
            m = self.sleep(m, left);
        }
    }

    fn shutdown(&self, reason: &str) {
        self.close(&format!("rank {} left: {reason}", self.rank));
    }

    /// As over TCP, an abort ends the world: every rank's pending and later receives fail at
    /// once with this rank's reason, also those that wait for a third rank (which may be
    /// waiting for them in turn: a mismatch of schedules).
    fn abort(&self, reason: &str) {
        let why = format!("rank {} aborted: {reason}", self.rank);
        self.close(&why);
        let shut = format!("transport shut down: {why}");
        for (peer, inbox) in self.inboxes.iter().enumerate() {
            if peer != self.rank {
                lock(&inbox.matcher).close_all(&shut);
                inbox.changed.notify_all();
            }
        }
    }
}

impl MemTransport {
    /// Closes this rank's inbox and its slot in every peer's, once, with `why`.
    fn close(&self, why: &str) {
        let _ = self.closed_why.set(why.to_string());
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for (peer, inbox) in self.inboxes.iter().enumerate() {
            if peer != self.rank {
                lock(&inbox.matcher).close(self.rank, why);
                inbox.changed.notify_all();
            }
        }
        // Read by senders to this rank (and by receives pending here): say who left, and why.
        lock(&self.own().matcher).close_all(why);
        self.own().changed.notify_all();
    }
}

impl Drop for MemTransport {
    fn drop(&mut self) {
        self.shutdown("dropped");
    }
}
