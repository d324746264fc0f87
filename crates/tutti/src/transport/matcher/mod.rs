//! Matching arriving messages with posted receives, as MPI does: one [`Matcher`] per rank.
//!
//! Two queues per source peer: **posted receives** (their destination is known, so a message
//! that finds one moves straight into it) and **unexpected messages** (arrived before their
//! receive; buffered, and copied out when the receive is posted). A message is matched by its
//! first bytes' envelope (key, fingerprint, length); its payload may then arrive in pieces
//! ([`Matcher::bytes`]), so a large message flows into a posted buffer as it is read from the
//! socket, and a receive posted while a message is half-buffered takes over the rest in place.
//!
//! Order: a message goes to the earliest-posted matching receive (naming its source or
//! [`Source::Any`]); a receive takes the earliest-arrived matching message. Per (source, key)
//! that is FIFO, the guarantee of the transport contract.
//!
//! The matcher does no I/O and holds no lock: its owner (the TCP engine, or a rank of the
//! in-process transport) keeps it behind one mutex, and every write into a posted destination
//! happens under that mutex. That is what makes the raw destinations sound:
//!
//! SAFETY (the invariant every poster keeps): a receive posted with a borrowed destination
//! ([`Sink::copy`], [`Sink::combine`]) keeps that memory alive and touches it not, until the
//! receive has completed ([`Matcher::take_done`] returned it) or been cancelled
//! ([`Matcher::cancel`]), both under the owner's mutex. The blocking receives of the transports
//! are the only posters of borrowed destinations and they keep it by construction: they do not
//! return before one of the two.
//!
//! Accounting: `buffered` counts the unexpected bytes held per peer (plus [`MESSAGE_COST`] per
//! message), and `to_credit` the bytes that left the buffer or never entered it, which the TCP
//! transport returns to the sender as credit.

use super::pool::BufferPool;
use super::{Envelope, Lane, Message, MsgKey, Source, TransportError};
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::mem::MaybeUninit;

mod sink;
pub(crate) use sink::Sink;

/// What one message costs in the window beyond its payload (its envelope and bookkeeping), so
/// that a flood of empty messages is bounded too.
pub const MESSAGE_COST: usize = 64;

/// How many announced calls are kept per peer (older ones are forgotten; a peer blocks in a
/// handful of calls at most, one per communicator it waits on).
pub const MAX_ANNOUNCED: usize = 16;

/// A posted receive.
struct Posted {
    source: Source,
    key: MsgKey,
    /// The fingerprint a message must carry to be written (0: any).
    expect: u128,
    sink: Sink,
}

/// A message that arrived before its receive was posted.
struct Unexpected {
    /// Arrival order (shared counter with post ids).
    order: u64,
    key: MsgKey,
    fingerprint: u128,
    len: usize,
    data: Vec<u8>,
}

/// Where the message arriving from a peer goes.
enum Dest {
    /// Into posted receive `id`; `write`: its length and fingerprint fit.
    Posted { id: u64, write: bool },
    /// Into the unexpected message with this order number.
    Unexpected(u64),
}

/// The message whose bytes are arriving from one peer.
struct Inbound {
    dest: Dest,
    peer: usize,
    fingerprint: u128,
    len: usize,
    got: usize,
}

#[derive(Default)]
struct PeerState {
    posted: VecDeque<u64>,
    unexpected: VecDeque<Unexpected>,
    inbound: Option<Inbound>,
    buffered: usize,
    /// The most `buffered` has ever been.
    peak: usize,
    to_credit: usize,
    closed: Option<String>,
    /// Collective calls the peer announced it is blocked in (key, fingerprint), newest last,
    /// at most [`MAX_ANNOUNCED`]: a receive of the same call expecting another fingerprint can
    /// never be matched as meant, even if the two calls exchange nothing.
    announced: VecDeque<(MsgKey, u128)>,
}

impl PeerState {
    fn buffer(&mut self, n: usize) {
        self.buffered += n;
        self.peak = self.peak.max(self.buffered);
    }
}

/// A finished receive.
pub(crate) type Outcome = Result<(Envelope, Option<Vec<u8>>), TransportError>;

/// The receives and unexpected messages of one rank (see the module doc).
pub(crate) struct Matcher {
    peers: Vec<PeerState>,
    /// Buffers of unexpected messages, reused once their receive has copied them out.
    pool: BufferPool,
    posts: HashMap<u64, Posted>,
    /// Posted receives from any source, in posting order.
    any: VecDeque<u64>,
    done: HashMap<u64, Outcome>,
    next: u64,
    /// A receive finished since [`Matcher::take_progress`] last looked.
    progressed: bool,
}

/// What posting a receive did.
pub(crate) enum Post {
    /// Completed at once from an unexpected message (or failed: the peer is gone).
    Done(Outcome),
    /// Waiting (possibly with part of its message already copied in), under this id.
    Pending(u64),
}

impl Matcher {
    pub(crate) fn new(size: usize) -> Matcher {
        Matcher {
            peers: (0..size).map(|_| PeerState::default()).collect(),
            pool: BufferPool::default(),
            posts: HashMap::default(),
            any: VecDeque::new(),
            done: HashMap::default(),
            next: 1,
            progressed: false,
        }
    }

    fn ticket(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn peer_mut(&mut self, peer: usize) -> Result<&mut PeerState, TransportError> {
        let size = self.peers.len();
        self.peers
            .get_mut(peer)
            .ok_or(TransportError::NoSuchPeer { peer, size })
    }

    /// Posts a receive; a matching unexpected message is taken at once.
    pub(crate) fn post(
        &mut self,
        source: Source,
        key: MsgKey,
        expect: u128,
        mut sink: Sink,
    ) -> Result<Post, TransportError> {
        if let Source::Rank(p) = source {
            self.peer_mut(p)?;
        }
        let id = self.ticket();
        if let Some((peer, idx)) = self.earliest_unexpected(source, key) {
            let st = &mut self.peers[peer];
            let m = st.unexpected.remove(idx).expect("index from the search");
            st.buffered -= m.data.len() + MESSAGE_COST;
            st.to_credit += m.data.len() + MESSAGE_COST;
            let write = fits(&sink, expect, m.fingerprint, m.len);
            let complete = m.data.len() == m.len && !is_inbound(st, m.order);
            if let Sink::Owned(v) = &mut sink {
                *v = m.data;
            } else {
                if write {
                    sink.put(0, &m.data);
                }
                self.pool.give(m.data);
            }
            let envelope = Envelope {
                peer,
                fingerprint: m.fingerprint,
                len: m.len,
                written: write,
            };
            if complete {
                return Ok(Post::Done(Ok((envelope, owned(sink)))));
            }
            // The rest of this message is still arriving: it now flows into the receive.
            let inbound = st.inbound.as_mut().expect("a partial message is inbound");
            inbound.dest = Dest::Posted { id, write };
            self.posts.insert(
                id,
                Posted {
                    source: Source::Rank(peer),
                    key,
                    expect,
                    sink,
                },
            );
            return Ok(Post::Pending(id));
        }
        if let Some(envelope) = self.other_call_waiting(key, expect) {
            return Ok(Post::Done(Ok((envelope, owned(sink)))));
        }
        if let Some(reason) = self.closed_for(source) {
            return Ok(Post::Done(Err(reason)));
        }
        match source {
            Source::Rank(p) => self.peers[p].posted.push_back(id),
            Source::Any => self.any.push_back(id),
        }
        self.posts.insert(
            id,
            Posted {
                source,
                key,
                expect,
                sink,
            },
        );
        Ok(Post::Pending(id))
    }

    /// An unexpected collective message of the same call (`key`: communicator and sequence
    /// number) from any peer whose fingerprint differs from `expect`: that peer runs another
    /// call, or the same call another way, so a receive of this call can never be matched as
    /// meant, whichever peer it waits for. Returns the foreign message's envelope (not
    /// written), which the caller reports as a mismatch. Point-to-point tags are the user's, so
    /// this holds for the collective lane only.
    fn other_call_waiting(&self, key: MsgKey, expect: u128) -> Option<Envelope> {
        if key.lane != Lane::Collective || expect == 0 {
            return None;
        }
        let other = |k: &MsgKey, fp: u128| *k == key && fp != 0 && fp != expect;
        self.peers.iter().enumerate().find_map(|(peer, st)| {
            let message = st
                .unexpected
                .iter()
                .find(|m| other(&m.key, m.fingerprint))
                .map(|m| (m.fingerprint, m.len));
            let announced = || {
                st.announced
                    .iter()
                    .find(|(k, fp)| other(k, *fp))
                    .map(|&(_, fp)| (fp, 0))
            };
            message
                .or_else(announced)
                .map(|(fingerprint, len)| Envelope {
                    peer,
                    fingerprint,
                    len,
                    written: false,
                })
        })
    }

    /// `peer` says it is blocked in the collective call `key` (communicator and sequence
    /// number) with `fingerprint`: receives of that call here that expect another fingerprint
    /// complete now with an envelope naming the peer's call (not written, length 0), which the
    /// caller reports as a mismatch; later ones do so as they are posted. Found this way even
    /// when the two calls exchange nothing (a broadcast from root 1 on one rank, from root 0 on
    /// the other: both only receive). Cost: a scan of the posted receives.
    pub(crate) fn announce(&mut self, peer: usize, key: MsgKey, fingerprint: u128) {
        if key.lane != Lane::Collective || fingerprint == 0 {
            return;
        }
        let Some(st) = self.peers.get_mut(peer) else {
            return;
        };
        if !st.announced.contains(&(key, fingerprint)) {
            if st.announced.len() == MAX_ANNOUNCED {
                st.announced.pop_front();
            }
            st.announced.push_back((key, fingerprint));
        }
        self.fail_posts_of_other_calls(peer, key, fingerprint, 0);
    }

    /// The collective calls this rank's posted receives wait in (key, expected fingerprint),
    /// distinct, at most `max`, counting only receives posted before `watermark` (a value of
    /// [`Matcher::watermark`] taken earlier: so only receives that have waited since then).
    pub(crate) fn blocked_calls(&self, watermark: u64, max: usize) -> Vec<(MsgKey, u128)> {
        let mut calls: Vec<(MsgKey, u128)> = Vec::new();
        for (&id, p) in &self.posts {
            let call = (p.key, p.expect);
            let old = id <= watermark && p.key.lane == Lane::Collective && p.expect != 0;
            if old && !calls.contains(&call) {
                calls.push(call);
                if calls.len() == max {
                    break;
                }
            }
        }
        calls
    }

    /// The id of the latest receive posted so far (see [`Matcher::blocked_calls`]).
    pub(crate) fn watermark(&self) -> u64 {
        self.next
    }

    /// The call receive `id` waits in (key, expected fingerprint), if it is pending.
    pub(crate) fn pending_call(&self, id: u64) -> Option<(MsgKey, u128)> {
        self.posts.get(&id).map(|p| (p.key, p.expect))
    }

    /// A collective message from `peer` that no receive takes yet: every receive posted for the
    /// same call (same key, any source) that expects another fingerprint completes now with
    /// this message's envelope, not written (see [`Matcher::other_call_waiting`]).
    fn fail_posts_of_other_calls(
        &mut self,
        peer: usize,
        key: MsgKey,
        fingerprint: u128,
        len: usize,
    ) {
        if key.lane != Lane::Collective || fingerprint == 0 {
            return;
        }
        let failed: Vec<u64> = self
            .posts
            .iter()
            .filter(|(_, p)| p.key == key && p.expect != 0 && p.expect != fingerprint)
            .map(|(&id, _)| id)
            .collect();
        for id in failed {
            self.unlink_post(id);
            let Some(p) = self.posts.remove(&id) else {
                continue;
            };
            let envelope = Envelope {
                peer,
                fingerprint,
                len,
                written: false,
            };
            self.done.insert(id, Ok((envelope, owned(p.sink))));
            self.progressed = true;
        }
    }

    /// Why a receive from `source` can never be matched, if it can't.
    fn closed_for(&self, source: Source) -> Option<TransportError> {
        match source {
            Source::Rank(peer) => {
                self.peers[peer]
                    .closed
                    .as_ref()
                    .map(|reason| TransportError::PeerLost {
                        peer,
                        reason: reason.clone(),
                    })
            }
            Source::Any => {
                let open = self.peers.iter().any(|p| p.closed.is_none());
                (!open).then(|| {
                    let (peer, p) = self.peers.iter().enumerate().next_back().expect("a world");
                    TransportError::PeerLost {
                        peer,
                        reason: p.closed.clone().unwrap_or_default(),
                    }
                })
            }
        }
    }

    /// The earliest-arrived unexpected message matching (source, key): (peer, index).
    fn earliest_unexpected(&self, source: Source, key: MsgKey) -> Option<(usize, usize)> {
        let find = |p: usize| {
            self.peers[p]
                .unexpected
                .iter()
                .position(|m| m.key == key)
                .map(|i| (self.peers[p].unexpected[i].order, p, i))
        };
        match source {
            Source::Rank(p) => find(p).map(|(_, p, i)| (p, i)),
            Source::Any => (0..self.peers.len())
                .filter_map(find)
                .min()
                .map(|(_, p, i)| (p, i)),
        }
    }

    /// The envelope of the earliest unexpected message matching (source, key), if any.
    pub(crate) fn peek(&self, source: Source, key: MsgKey) -> Option<Envelope> {
        self.earliest_unexpected(source, key).map(|(p, i)| {
            let m = &self.peers[p].unexpected[i];
            Envelope {
                peer: p,
                fingerprint: m.fingerprint,
                len: m.len,
                written: false,
            }
        })
    }

    /// A message of `len` bytes with this envelope starts arriving from `peer`.
    ///
    /// Precondition: the previous message from `peer` has ended ([`Matcher::bytes`] delivered
    /// all its bytes). A zero-length message ends here.
    pub(crate) fn begin(&mut self, peer: usize, key: MsgKey, fingerprint: u128, len: usize) {
        let order = self.ticket();
        let dest = match self.earliest_post(peer, key) {
            Some(id) => {
                self.unlink_post(id);
                let p = &self.posts[&id];
                let write = fits(&p.sink, p.expect, fingerprint, len);
                if let Some(Posted {
                    sink: Sink::Owned(v),
                    ..
                }) = self.posts.get_mut(&id)
                {
                    let _ = v.try_reserve_exact(len);
                }
                self.peers[peer].to_credit += MESSAGE_COST;
                Dest::Posted { id, write }
            }
            None => {
                self.fail_posts_of_other_calls(peer, key, fingerprint, len);
                let st = &mut self.peers[peer];
                st.buffer(MESSAGE_COST);
                // Room for the whole message at once: its pages are touched only as its bytes
                // arrive (at most the window's worth), and growing by doubling instead would
                // leave the allocator's high-water mark well above what is held.
                let mut data = self.pool.take(len);
                let _ = data.try_reserve_exact(len);
                st.unexpected.push_back(Unexpected {
                    order,
                    key,
                    fingerprint,
                    len,
                    data,
                });
                Dest::Unexpected(order)
            }
        };
        self.peers[peer].inbound = Some(Inbound {
            dest,
            peer,
            fingerprint,
            len,
            got: 0,
        });
        self.maybe_end(peer);
    }

    /// The earliest-posted receive that takes a message with `key` from `peer`.
    fn earliest_post(&self, peer: usize, key: MsgKey) -> Option<u64> {
        let mine = self.peers[peer]
            .posted
            .iter()
            .copied()
            .find(|id| self.posts[id].key == key);
        let any = self
            .any
            .iter()
            .copied()
            .find(|id| self.posts[id].key == key);
        match (mine, any) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn unlink_post(&mut self, id: u64) {
        match self.posts[&id].source {
            Source::Rank(p) => self.peers[p].posted.retain(|&x| x != id),
            Source::Any => self.any.retain(|&x| x != id),
        }
    }

    /// Payload bytes of the message arriving from `peer`, in order.
    pub(crate) fn bytes(&mut self, peer: usize, data: &[u8]) {
        let st = &mut self.peers[peer];
        // No message in progress: the peer was closed mid-message (its bytes are dropped as
        // the link drains), or the frame was empty.
        let Some(inb) = st.inbound.as_mut() else {
            return;
        };
        let at = inb.got;
        inb.got += data.len();
        debug_assert!(inb.got <= inb.len);
        match inb.dest {
            Dest::Posted { id, write } => {
                st.to_credit += data.len();
                if write {
                    if let Some(p) = self.posts.get_mut(&id) {
                        p.sink.put(at, data);
                    }
                }
            }
            Dest::Unexpected(order) => {
                st.buffer(data.len());
                if let Some(m) = st.unexpected.iter_mut().find(|m| m.order == order) {
                    m.data.extend_from_slice(data);
                }
            }
        }
        self.maybe_end(peer);
    }

    /// The length of the message arriving from `peer` and the bytes of it still to come, if
    /// one is arriving.
    pub(crate) fn inbound(&self, peer: usize) -> Option<(usize, usize)> {
        self.peers[peer]
            .inbound
            .as_ref()
            .map(|i| (i.len, i.len - i.got))
    }

    /// Where the next `max` payload bytes from `peer` can be read to directly, without a copy:
    /// the posted buffer itself (a plain receive) or the unexpected message's spare capacity.
    /// After reading `n` bytes into it, call [`Matcher::commit_direct`]. `None`: use
    /// [`Matcher::bytes`] (a combining receive, or a dropped message).
    pub(crate) fn direct(&mut self, peer: usize, max: usize) -> Option<&mut [MaybeUninit<u8>]> {
        let st = &mut self.peers[peer];
        let inb = st.inbound.as_ref()?;
        let n = (inb.len - inb.got).min(max);
        let got = inb.got;
        match inb.dest {
            Dest::Posted { id, write: true } => match self.posts.get_mut(&id)?.sink {
                Sink::Copy { ptr, .. } => {
                    // SAFETY: in bounds of the posted buffer (len == message length), which is
                    // the poster's until completion (module doc); MaybeUninit<u8> has u8's
                    // layout and the reader only writes initialised bytes into it.
                    Some(unsafe {
                        std::slice::from_raw_parts_mut(ptr.add(got).cast::<MaybeUninit<u8>>(), n)
                    })
                }
                Sink::Owned(ref mut v) => spare(v, n),
                Sink::Combine { .. } => None,
            },
            Dest::Unexpected(order) => {
                let m = st.unexpected.iter_mut().find(|m| m.order == order)?;
                spare(&mut m.data, n)
            }
            Dest::Posted { write: false, .. } => None,
        }
    }

    /// `n` bytes were read into the slice [`Matcher::direct`] gave.
    pub(crate) fn commit_direct(&mut self, peer: usize, n: usize) {
        let st = &mut self.peers[peer];
        let Some(inb) = st.inbound.as_mut() else {
            return;
        };
        inb.got += n;
        match inb.dest {
            Dest::Posted { id, .. } => {
                st.to_credit += n;
                if let Some(Posted {
                    sink: Sink::Owned(v),
                    ..
                }) = self.posts.get_mut(&id)
                {
                    // SAFETY: `direct` handed out spare capacity and the reader initialised
                    // exactly `n` bytes of it.
                    unsafe { v.set_len(v.len() + n) }
                }
            }
            Dest::Unexpected(order) => {
                st.buffer(n);
                if let Some(m) = st.unexpected.iter_mut().find(|m| m.order == order) {
                    // SAFETY: as above.
                    unsafe { m.data.set_len(m.data.len() + n) }
                }
            }
        }
        self.maybe_end(peer);
    }

    /// Completes the inbound message of `peer` if all its bytes are in.
    fn maybe_end(&mut self, peer: usize) {
        let st = &mut self.peers[peer];
        let complete = st.inbound.as_ref().is_some_and(|i| i.got == i.len);
        if !complete {
            return;
        }
        let inb = st.inbound.take().expect("checked");
        if let Dest::Posted { id, write } = inb.dest {
            // A cancelled receive's message is dropped as it arrives: nobody waits for it.
            let Some(p) = self.posts.remove(&id) else {
                return;
            };
            let envelope = Envelope {
                peer: inb.peer,
                fingerprint: inb.fingerprint,
                len: inb.len,
                written: write,
            };
            self.done.insert(id, Ok((envelope, owned(p.sink))));
            self.progressed = true;
        }
    }

    /// True if a receive finished since the last call (waiters should look).
    pub(crate) fn take_progress(&mut self) -> bool {
        std::mem::take(&mut self.progressed)
    }

    /// The outcome of receive `id` if it has finished.
    pub(crate) fn take_done(&mut self, id: u64) -> Option<Outcome> {
        self.done.remove(&id)
    }

    /// Files an outcome under a fresh id (a request that finished as it was posted).
    pub(crate) fn file_done(&mut self, out: Outcome) -> u64 {
        let id = self.ticket();
        self.done.insert(id, out);
        id
    }

    /// True if receive `id` has finished and its outcome waits to be taken.
    pub(crate) fn has_done(&self, id: u64) -> bool {
        self.done.contains_key(&id)
    }

    /// Why nothing more can come from `source`, if nothing can.
    pub(crate) fn unreachable(&self, source: Source) -> Option<TransportError> {
        self.closed_for(source)
    }

    /// True if `id` is neither finished nor cancelled.
    pub(crate) fn is_pending(&self, id: u64) -> bool {
        self.posts.contains_key(&id)
    }

    /// Abandons receive `id`: afterwards nothing is written to its destination. A message half
    /// arrived into it is dropped as it keeps arriving.
    pub(crate) fn cancel(&mut self, id: u64) {
        self.done.remove(&id);
        if self.posts.contains_key(&id) {
            self.unlink_post(id);
            let p = self.posts.remove(&id).expect("checked");
            if let Source::Rank(peer) = p.source {
                if let Some(inb) = self.peers[peer].inbound.as_mut() {
                    if matches!(inb.dest, Dest::Posted { id: x, .. } if x == id) {
                        // Keep routing its bytes somewhere harmless: a dropped posted receive.
                        let orphan = self.next + 1;
                        self.next += 1;
                        inb.dest = Dest::Posted {
                            id: orphan,
                            write: false,
                        };
                    }
                }
            }
        }
    }

    /// Unexpected bytes held for `peer` (payload plus [`MESSAGE_COST`] per message).
    pub(crate) fn buffered(&self, peer: usize) -> usize {
        self.peers[peer].buffered
    }

    /// The most unexpected bytes any one peer has ever had buffered here.
    pub(crate) fn peak_buffered(&self) -> usize {
        self.peers.iter().map(|p| p.peak).max().unwrap_or(0)
    }

    /// Takes the bytes of `peer`'s window that have been freed since the last call.
    pub(crate) fn take_credit(&mut self, peer: usize) -> usize {
        std::mem::take(&mut self.peers[peer].to_credit)
    }

    /// Bytes of `peer`'s window freed and not yet taken.
    pub(crate) fn credit_due(&self, peer: usize) -> usize {
        self.peers[peer].to_credit
    }

    /// `peer` can send no more (the first reason sticks): its pending receives fail, and so do
    /// any-source receives once every peer is closed. Complete unexpected messages stay.
    pub(crate) fn close(&mut self, peer: usize, reason: &str) {
        let Some(st) = self.peers.get_mut(peer) else {
            return;
        };
        if st.closed.is_none() {
            st.closed = Some(reason.to_string());
        }
        let lost = || TransportError::PeerLost {
            peer,
            reason: reason.to_string(),
        };
        if let Some(inb) = st.inbound.take() {
            match inb.dest {
                Dest::Posted { id, .. } => {
                    if self.posts.remove(&id).is_some() {
                        self.done.insert(id, Err(lost()));
                        self.progressed = true;
                    }
                }
                Dest::Unexpected(order) => st.unexpected.retain(|m| m.order != order),
            }
        }
        let st = &mut self.peers[peer];
        for id in std::mem::take(&mut st.posted) {
            self.posts.remove(&id);
            self.done.insert(id, Err(lost()));
            self.progressed = true;
        }
        if let Some(e) = self.closed_for(Source::Any) {
            for id in std::mem::take(&mut self.any) {
                self.posts.remove(&id);
                let e = match &e {
                    TransportError::PeerLost { peer, reason } => TransportError::PeerLost {
                        peer: *peer,
                        reason: reason.clone(),
                    },
                    _ => lost(),
                };
                self.done.insert(id, Err(e));
            }
        }
    }

    /// Closes every peer.
    pub(crate) fn close_all(&mut self, reason: &str) {
        for p in 0..self.peers.len() {
            self.close(p, reason);
        }
    }

    /// The reason `peer` was closed, if it was.
    pub(crate) fn closed_reason(&self, peer: usize) -> Option<&str> {
        self.peers.get(peer).and_then(|p| p.closed.as_deref())
    }
}

/// True if the message with order number `order` is the one still arriving from its peer.
fn is_inbound(st: &PeerState, order: u64) -> bool {
    matches!(st.inbound, Some(Inbound { dest: Dest::Unexpected(o), .. }) if o == order)
}

/// Whether a message (fingerprint `fp`, `len` bytes) may be written into `sink`.
fn fits(sink: &Sink, expect: u128, fp: u128, len: usize) -> bool {
    sink.fixed_len().is_none_or(|l| l == len) && (expect == 0 || fp == 0 || fp == expect)
}

/// The owned buffer of a finished receive, if it had one.
fn owned(sink: Sink) -> Option<Vec<u8>> {
    match sink {
        Sink::Owned(v) => Some(v),
        _ => None,
    }
}

/// `n` bytes of `v`'s spare capacity (reserved if needed), or `None` if it cannot grow.
fn spare(v: &mut Vec<u8>, n: usize) -> Option<&mut [MaybeUninit<u8>]> {
    v.try_reserve(n).ok()?;
    Some(&mut v.spare_capacity_mut()[..n])
}

/// A received owned message, for [`super::Completion::Received`].
pub(crate) fn into_message(key: MsgKey, envelope: Envelope, data: Option<Vec<u8>>) -> Message {
    Message {
        peer: envelope.peer,
        key,
        fingerprint: envelope.fingerprint,
        payload: data.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
