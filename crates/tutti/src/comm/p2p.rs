//! Point-to-point messages: `send`/`recv` with a user tag, blocking and non-blocking, receives
//! from any source, and probes.
//!
//! Messages between a pair with the same tag arrive in the order they were sent. A receive must
//! name a buffer of exactly the length sent, and the same element type: anything else is an
//! [`Error::Mismatch`] naming both sides, never silent truncation. A message of unknown size
//! or source is received with [`Communicator::probe`] then a receive, or in one call with
//! [`Communicator::recv_vec`].
//!
//! A blocking `send` returns once the buffer may be reused; it waits only while the peer
//! already holds a window of unreceived messages from this rank (see the transport's window).
//! [`Communicator::sendrecv`] sends and receives in one call that cannot deadlock against the
//! same call on its peer (its receive is posted before its send may wait).
//!
//! A rank may send to itself: the message goes straight to its own queue of unexpected
//! messages (a send to oneself never waits) and a receive from itself takes it, as between two
//! ranks. A blocking receive from oneself with nothing sent waits out the timeout, as with any
//! peer that never sends.

use super::{bytes, bytes_mut, Communicator};
use crate::deadline::Deadline;
use crate::error::{Error, Op, Result};
use crate::exec::Fingerprint;
use crate::transport::{
    Completion, Envelope, Lane, MsgKey, RecvInto, RequestId, Source, Transport,
};
use std::sync::Arc;
use tutti_core::{DType, Element};

/// What a probe or an any-source receive learned of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The sender's rank in this communicator.
    pub source: usize,
    /// The element type it sent, if it said.
    pub dtype: Option<DType>,
    /// The message's length in bytes.
    pub bytes: usize,
}

impl Status {
    /// The number of elements of `T` in the message (`None` if it is not a whole number).
    pub fn count<T: Element>(&self) -> Option<usize> {
        let size = std::mem::size_of::<T>();
        self.bytes.is_multiple_of(size).then_some(self.bytes / size)
    }
}

impl Communicator {
    fn p2p_key(&self, tag: u32) -> MsgKey {
        MsgKey {
            comm_id: self.group.comm_id,
            lane: Lane::P2p,
            tag: tag as u64,
        }
    }

    /// Checks `peer` (this rank itself included) and returns its world rank.
    fn p2p_peer(&self, op: Op, peer: usize) -> Result<usize> {
        self.p2p_rank(op, "peer", peer)
    }

    /// As [`p2p_peer`](Self::p2p_peer), naming the argument `role` in the error.
    fn p2p_rank(&self, op: Op, role: &str, peer: usize) -> Result<usize> {
        if peer >= self.size() {
            return Err(self.invalid(
                op,
                format!("{role} {peer} is out of range for {} ranks", self.size()),
            ));
        }
        Ok(self.group.members[peer])
    }

    /// The transport's source for `peer` (`None`: any rank of this communicator).
    fn p2p_source(&self, op: Op, peer: Option<usize>) -> Result<Source> {
        match peer {
            Some(p) => self.p2p_peer(op, p).map(Source::Rank),
            None => Ok(Source::Any),
        }
    }

    /// This communicator's rank of world rank `world`.
    fn comm_rank(&self, world: usize) -> usize {
        self.group
            .members
            .iter()
            .position(|&w| w == world)
            .unwrap_or(world)
    }

    fn p2p_error(&self, op: Op, source: crate::transport::TransportError) -> Error {
        p2p_error(op, self.rank(), self.group.world_rank_if_sub(), source)
    }

    /// Sends `buf` to `peer` with `tag`. Returns once the buffer may be reused.
    pub fn send<T: Element>(&self, buf: &[T], peer: usize, tag: u32) -> Result<()> {
        let world = self.p2p_peer(Op::Send, peer)?;
        let f = p2p_fingerprint::<T>(buf.len());
        let deadline = self.deadline();
        let call = self.start_p2p(Op::Send, Some(peer), (T::DTYPE, buf.len()), &deadline);
        let result = self
            .transport
            .send(world, self.p2p_key(tag), f.0, bytes(buf), deadline)
            .map_err(|e| self.p2p_error(Op::Send, e));
        self.end_call(call, result)
    }

    /// Receives the next message from `peer` with `tag` into `buf`, which must have exactly the
    /// length that was sent. The payload lands in `buf` itself when the receive is posted first.
    pub fn recv<T: Element>(&self, buf: &mut [T], peer: usize, tag: u32) -> Result<()> {
        self.recv_from(buf, Some(peer), tag).map(drop)
    }

    /// Receives the next message with `tag` from any rank (`peer: None`) or from `peer` into
    /// `buf`, which must have the message's exact length; returns who sent it.
    pub fn recv_from<T: Element>(
        &self,
        buf: &mut [T],
        peer: Option<usize>,
        tag: u32,
    ) -> Result<Status> {
        let from = self.p2p_source(Op::Recv, peer)?;
        let f = p2p_fingerprint::<T>(buf.len());
        let count = buf.len();
        let deadline = self.deadline();
        let call = self.start_p2p(Op::Recv, peer, (T::DTYPE, count), &deadline);
        let result = self
            .transport
            .recv(
                from,
                self.p2p_key(tag),
                f.0,
                RecvInto::Copy(bytes_mut(buf)),
                deadline,
            )
            .map_err(|e| self.p2p_error(Op::Recv, e))
            .and_then(|env| {
                let source = self.comm_rank(env.peer);
                check_p2p::<T>(Op::Recv, &env, count, self.rank(), source)?;
                Ok(status(&env, source))
            });
        self.end_call(call, result)
    }

    /// Receives the next message with `tag` from `peer` (or any rank), whatever its length,
    /// into a new vector; returns it and who sent it.
    pub fn recv_vec<T: Element>(&self, peer: Option<usize>, tag: u32) -> Result<(Vec<T>, Status)> {
        let from = self.p2p_source(Op::Recv, peer)?;
        let msg = self
            .transport
            .recv_owned(from, self.p2p_key(tag), self.deadline())
            .map_err(|e| self.p2p_error(Op::Recv, e))?;
        let source = self.comm_rank(msg.peer);
        let env = Envelope {
            peer: msg.peer,
            fingerprint: msg.fingerprint,
            len: msg.payload.len(),
            written: true,
        };
        let st = status(&env, source);
        let count = st.count::<T>().unwrap_or(usize::MAX);
        check_p2p::<T>(Op::Recv, &env, count, self.rank(), source)?;
        let mut out = vec![T::zeroed(); count];
        bytes_mut(&mut out).copy_from_slice(&msg.payload);
        Ok((out, st))
    }

    /// Waits (at most the communicator's timeout) until a message with `tag` from `peer` (or
    /// any rank) has arrived, and tells its source, type and size without receiving it.
    pub fn probe(&self, peer: Option<usize>, tag: u32) -> Result<Status> {
        let from = self.p2p_source(Op::Recv, peer)?;
        let env = self
            .transport
            .probe(from, self.p2p_key(tag), Some(self.deadline()))
            .map_err(|e| self.p2p_error(Op::Recv, e))?
            .expect("a probe with a deadline finds a message or fails");
        Ok(status(&env, self.comm_rank(env.peer)))
    }

    /// As [`Communicator::probe`], without waiting: `None` if no such message is here yet.
    pub fn iprobe(&self, peer: Option<usize>, tag: u32) -> Result<Option<Status>> {
        let from = self.p2p_source(Op::Recv, peer)?;
        let env = self
            .transport
            .probe(from, self.p2p_key(tag), None)
            .map_err(|e| self.p2p_error(Op::Recv, e))?;
        Ok(env.map(|env| status(&env, self.comm_rank(env.peer))))
    }

    /// Starts sending `buf` to `peer` with `tag` and returns at once; [`SendRequest::wait`] gives
    /// the buffer back when the send is complete. (The payload is copied once into the
    /// transport's queue; the send progresses while this rank computes.)
    pub fn isend<T: Element>(&self, buf: Vec<T>, peer: usize, tag: u32) -> Result<SendRequest<T>> {
        let world = self.p2p_peer(Op::Send, peer)?;
        let f = p2p_fingerprint::<T>(buf.len());
        let id = self
            .transport
            .isend(world, self.p2p_key(tag), f.0, bytes(&buf).to_vec())
            .map_err(|e| self.p2p_error(Op::Send, e))?;
        Ok(SendRequest {
            buf: Some(buf),
            pending: Pending::new(self, id),
        })
    }

    /// Posts a receive of the next message from `peer` with `tag` into `buf`; the data arrives in
    /// the background and [`RecvRequest::wait`] hands the filled buffer back. Requests for the
    /// same peer and tag complete in the order they were posted.
    pub fn irecv<T: Element>(&self, buf: Vec<T>, peer: usize, tag: u32) -> Result<RecvRequest<T>> {
        let world = self.p2p_peer(Op::Recv, peer)?;
        let id = self
            .transport
            .irecv(Source::Rank(world), self.p2p_key(tag))
            .map_err(|e| self.p2p_error(Op::Recv, e))?;
        Ok(RecvRequest {
            buf: Some(buf),
            peer,
            pending: Pending::new(self, id),
        })
    }

    /// Sends `send_buf` to `dest` with `send_tag` and receives the next message from `source`
    /// with `recv_tag` into `recv_buf` (exactly the length and element type sent); returns once
    /// both are done. The receive is posted before the send may wait, so two ranks that call it
    /// towards each other, or a ring of ranks, never deadlock at any size. The two halves match
    /// plain sends and receives on the peers (a `sendrecv` is a `send` and a `recv` that
    /// progress together); `dest` and `source` may differ, and either may be this rank. The
    /// received payload is copied once, from the transport's buffer into `recv_buf`. The whole
    /// call is bounded by one timeout.
    pub fn sendrecv<T: Element, U: Element>(
        &self,
        send_buf: &[T],
        dest: usize,
        send_tag: u32,
        recv_buf: &mut [U],
        source: usize,
        recv_tag: u32,
    ) -> Result<()> {
        let op = Op::SendRecv;
        let world_dest = self.p2p_rank(op, "dest", dest)?;
        let world_source = self.p2p_rank(op, "source", source)?;
        let deadline = self.deadline();
        let call = self.traced_p2p(op, Some(source), (U::DTYPE, recv_buf.len()), &deadline);
        let id = self
            .transport
            .irecv(Source::Rank(world_source), self.p2p_key(recv_tag))
            .map_err(|e| self.p2p_error(op, e))?;
        // Dropped on an early return: the posted receive is cancelled.
        let mut receive = Pending::new(self, id);
        let f = p2p_fingerprint::<T>(send_buf.len());
        self.transport
            .send(
                world_dest,
                self.p2p_key(send_tag),
                f.0,
                bytes(send_buf),
                deadline,
            )
            .map_err(|e| self.p2p_error(op, e))?;
        let done = receive.wait_until(op, deadline);
        call.finish(done.and_then(|done| fill_from(op, done, recv_buf, self.rank(), source)))
    }
}

fn p2p_fingerprint<T: Element>(count: usize) -> Fingerprint {
    Fingerprint::new(Op::Send, Some(T::DTYPE), None, None, count)
}

fn p2p_error(
    op: Op,
    rank: usize,
    world_rank: Option<usize>,
    source: crate::transport::TransportError,
) -> Error {
    Error::Transport {
        op,
        seq: 0,
        rank,
        world_rank,
        source,
        waiting_for: Box::default(),
    }
}

fn status(env: &Envelope, source: usize) -> Status {
    Status {
        source,
        dtype: DType::ALL
            .iter()
            .copied()
            .find(|d| d.code() as u128 == (env.fingerprint >> 48) & 0xff && env.fingerprint != 0),
        bytes: env.len,
    }
}

/// Checks what a receive of `count` elements of `T` (in `op`) matched.
fn check_p2p<T: Element>(
    op: Op,
    env: &Envelope,
    count: usize,
    rank: usize,
    peer: usize,
) -> Result<()> {
    let want = count.saturating_mul(std::mem::size_of::<T>());
    if env.fingerprint != p2p_fingerprint::<T>(count).0 || env.len != want || !env.written {
        return Err(Error::Mismatch {
            op,
            seq: 0,
            rank,
            peer,
            what: format!(
                "rank {peer} sent {} ({} bytes), this rank receives {} x {} ({want} bytes)",
                Fingerprint(env.fingerprint).describe(),
                env.len,
                count,
                T::DTYPE,
            ),
        });
    }
    Ok(())
}

/// A request in the transport, cancelled if dropped before it finished.
struct Pending {
    transport: Arc<dyn Transport>,
    id: Option<RequestId>,
    rank: usize,
    world_rank: Option<usize>,
    timeout: std::time::Duration,
}

impl Pending {
    fn new(c: &Communicator, id: RequestId) -> Pending {
        Pending {
            transport: c.transport.clone(),
            id: Some(id),
            rank: c.rank(),
            world_rank: c.group.world_rank_if_sub(),
            timeout: c.timeout,
        }
    }

    fn wait(&mut self, op: Op) -> Result<Completion> {
        self.wait_until(op, Deadline::after(self.timeout))
    }

    fn wait_until(&mut self, op: Op, deadline: Deadline) -> Result<Completion> {
        let id = self.id.expect("a pending request has an id");
        let r = self
            .transport
            .wait(id, deadline)
            .map_err(|e| p2p_error(op, self.rank, self.world_rank, e));
        if r.is_ok() {
            self.id = None;
        }
        r
    }

    fn test(&mut self, op: Op) -> Result<Option<Completion>> {
        let id = self.id.expect("a pending request has an id");
        let r = self
            .transport
            .test(id)
            .map_err(|e| p2p_error(op, self.rank, self.world_rank, e))?;
        if r.is_some() {
            self.id = None;
        }
        Ok(r)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.transport.cancel(id);
        }
    }
}

/// A send in flight. Wait on it to learn the outcome and get the buffer back; dropped, it still
/// completes in the background.
#[must_use = "a send request must be waited on"]
pub struct SendRequest<T: Element> {
    buf: Option<Vec<T>>,
    pending: Pending,
}

impl<T: Element> SendRequest<T> {
    /// Waits (at most the communicator's timeout) for the send to complete.
    pub fn wait(mut self) -> Result<Vec<T>> {
        self.pending.wait(Op::Send)?;
        Ok(self.buf.take().unwrap_or_default())
    }

    /// True once the send has completed; `wait` then returns at once.
    pub fn test(&mut self) -> bool {
        !matches!(self.pending.test(Op::Send), Ok(None)) || self.pending.id.is_none()
    }
}

/// A receive in flight. Wait on it to get the filled buffer; dropped, it is cancelled.
#[must_use = "a receive request must be waited on"]
pub struct RecvRequest<T: Element> {
    buf: Option<Vec<T>>,
    peer: usize,
    pending: Pending,
}

impl<T: Element> RecvRequest<T> {
    /// Waits (at most the communicator's timeout) for the message and returns the filled buffer.
    pub fn wait(mut self) -> Result<Vec<T>> {
        let done = self.pending.wait(Op::Recv)?;
        self.fill(done)
    }

    /// Returns the filled buffer if the message has arrived, or the request back if not.
    pub fn test(mut self) -> Result<std::result::Result<Vec<T>, RecvRequest<T>>> {
        match self.pending.test(Op::Recv)? {
            Some(done) => self.fill(done).map(Ok),
            None => Ok(Err(self)),
        }
    }

    fn fill(&mut self, done: Completion) -> Result<Vec<T>> {
        let mut buf = self.buf.take().unwrap_or_default();
        fill_from(Op::Recv, done, &mut buf, self.pending.rank, self.peer)?;
        Ok(buf)
    }
}

/// Copies the message of a finished receive (in `op`, on `rank`, from `peer`) into `buf`, which
/// must have its exact length and element type.
fn fill_from<T: Element>(
    op: Op,
    done: Completion,
    buf: &mut [T],
    rank: usize,
    peer: usize,
) -> Result<()> {
    let Completion::Received(msg) = done else {
        unreachable!("a receive completes as a receive")
    };
    let env = Envelope {
        peer: msg.peer,
        fingerprint: msg.fingerprint,
        len: msg.payload.len(),
        written: true,
    };
    check_p2p::<T>(op, &env, buf.len(), rank, peer)?;
    bytes_mut(buf).copy_from_slice(&msg.payload);
    Ok(())
}
