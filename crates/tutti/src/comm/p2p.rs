//! Point-to-point messages: `send`/`recv` with a user tag, blocking and non-blocking.
//!
//! Messages between a pair with the same tag arrive in the order they were sent. A receive must
//! name a buffer of exactly the length sent, and the same element type: anything else is an
//! [`Error::Mismatch`] naming both sides, never silent truncation.

use super::{bytes, bytes_mut, Communicator};
use crate::deadline::Deadline;
use crate::error::{Error, Op, Result};
use crate::exec::Fingerprint;
use crate::transport::{Lane, Message, MsgKey, SendTicket, Transport};
use std::sync::Arc;
use tutti_core::Element;

impl Communicator {
    fn p2p_key(&self, tag: u32) -> MsgKey {
        MsgKey {
            comm_id: self.group.comm_id,
            lane: Lane::P2p,
            tag: tag as u64,
        }
    }

    /// Checks `peer` and returns its world rank.
    fn p2p_peer(&self, op: Op, peer: usize) -> Result<usize> {
        if peer >= self.size() {
            return Err(self.invalid(
                op,
                format!("peer {peer} is out of range for {} ranks", self.size()),
            ));
        }
        if peer == self.rank() {
            return Err(self.invalid(
                op,
                format!("peer {peer} is this rank: sending to oneself is not supported"),
            ));
        }
        Ok(self.group.members[peer])
    }

    fn p2p_error(&self, op: Op, source: crate::transport::TransportError) -> Error {
        Error::Transport {
            op,
            seq: 0,
            rank: self.rank(),
            world_rank: self.group.world_rank_if_sub(),
            source,
        }
    }

    /// Sends `buf` to `peer` with `tag`. Returns once the buffer may be reused; does not wait for
    /// the peer to receive.
    pub fn send<T: Element>(&self, buf: &[T], peer: usize, tag: u32) -> Result<()> {
        let world = self.p2p_peer(Op::Send, peer)?;
        let f = p2p_fingerprint::<T>(buf.len());
        self.transport
            .send(world, self.p2p_key(tag), f.0, bytes(buf), self.deadline())
            .map_err(|e| self.p2p_error(Op::Send, e))
    }

    /// Receives the next message from `peer` with `tag` into `buf`, which must have exactly the
    /// length that was sent.
    pub fn recv<T: Element>(&self, buf: &mut [T], peer: usize, tag: u32) -> Result<()> {
        let world = self.p2p_peer(Op::Recv, peer)?;
        let msg = self
            .transport
            .recv(world, self.p2p_key(tag), self.deadline())
            .map_err(|e| self.p2p_error(Op::Recv, e))?;
        let payload = finish_recv(msg, buf, self.rank(), peer)?;
        self.transport.recycle(world, payload);
        Ok(())
    }

    /// Starts sending `buf` to `peer` with `tag` and returns at once; [`SendRequest::wait`] gives
    /// the buffer back when the send is complete. (The payload is copied once into the transport's
    /// queue.)
    pub fn isend<T: Element>(&self, buf: Vec<T>, peer: usize, tag: u32) -> Result<SendRequest<T>> {
        let world = self.p2p_peer(Op::Send, peer)?;
        let f = p2p_fingerprint::<T>(buf.len());
        let ticket = self
            .transport
            .send_owned(world, self.p2p_key(tag), f.0, bytes(&buf).to_vec())
            .map_err(|e| self.p2p_error(Op::Send, e))?;
        Ok(SendRequest {
            buf,
            ticket,
            rank: self.rank(),
            world_rank: self.group.world_rank_if_sub(),
            timeout: self.timeout,
        })
    }

    /// Posts a receive of the next message from `peer` with `tag` into `buf`; the data arrives in
    /// the background and [`RecvRequest::wait`] hands the filled buffer back. Requests for the
    /// same peer and tag must be completed in the order they were posted.
    pub fn irecv<T: Element>(&self, buf: Vec<T>, peer: usize, tag: u32) -> Result<RecvRequest<T>> {
        let world = self.p2p_peer(Op::Recv, peer)?;
        Ok(RecvRequest {
            buf,
            transport: self.transport.clone(),
            world_peer: world,
            peer,
            key: self.p2p_key(tag),
            rank: self.rank(),
            world_rank: self.group.world_rank_if_sub(),
            timeout: self.timeout,
        })
    }
}

fn p2p_fingerprint<T: Element>(count: usize) -> Fingerprint {
    Fingerprint::new(Op::Send, Some(T::DTYPE), None, None, count)
}

/// Checks `msg` against the receive and copies it into `buf`; returns the emptied payload buffer
/// for the transport to recycle.
fn finish_recv<T: Element>(
    msg: Message,
    buf: &mut [T],
    rank: usize,
    peer: usize,
) -> Result<Vec<u8>> {
    let want = std::mem::size_of_val(buf);
    if msg.fingerprint != p2p_fingerprint::<T>(buf.len()).0 || msg.payload.len() != want {
        return Err(Error::Mismatch {
            op: Op::Recv,
            seq: 0,
            rank,
            peer,
            what: format!(
                "rank {peer} sent {} ({} bytes), this rank receives {} x {} ({want} bytes)",
                Fingerprint(msg.fingerprint).describe(),
                msg.payload.len(),
                buf.len(),
                T::DTYPE,
            ),
        });
    }
    bytes_mut(buf).copy_from_slice(&msg.payload);
    Ok(msg.payload)
}

/// A send in flight. Wait on it to learn the outcome and get the buffer back.
#[must_use = "a send request must be waited on"]
pub struct SendRequest<T: Element> {
    buf: Vec<T>,
    ticket: SendTicket,
    rank: usize,
    world_rank: Option<usize>,
    timeout: std::time::Duration,
}

impl<T: Element> SendRequest<T> {
    /// Waits (at most the communicator's timeout) for the send to complete.
    pub fn wait(mut self) -> Result<Vec<T>> {
        self.ticket
            .wait(Deadline::after(self.timeout))
            .map_err(|source| Error::Transport {
                op: Op::Send,
                seq: 0,
                rank: self.rank,
                world_rank: self.world_rank,
                source,
            })?;
        Ok(self.buf)
    }

    /// True once the send has completed; `wait` then returns at once.
    pub fn test(&mut self) -> bool {
        self.ticket.is_done()
    }
}

/// A receive in flight. Wait on it to get the filled buffer.
#[must_use = "a receive request must be waited on"]
pub struct RecvRequest<T: Element> {
    buf: Vec<T>,
    transport: Arc<dyn Transport>,
    world_peer: usize,
    peer: usize,
    key: MsgKey,
    rank: usize,
    world_rank: Option<usize>,
    timeout: std::time::Duration,
}

impl<T: Element> RecvRequest<T> {
    /// Waits (at most the communicator's timeout) for the message and returns the filled buffer.
    pub fn wait(mut self) -> Result<Vec<T>> {
        let msg = self
            .transport
            .recv(self.world_peer, self.key, Deadline::after(self.timeout))
            .map_err(|source| self.error(source))?;
        let payload = finish_recv(msg, &mut self.buf, self.rank, self.peer)?;
        self.transport.recycle(self.world_peer, payload);
        Ok(self.buf)
    }

    /// Returns the filled buffer if the message has arrived, or the request back if not.
    pub fn test(mut self) -> Result<std::result::Result<Vec<T>, RecvRequest<T>>> {
        match self
            .transport
            .try_recv(self.world_peer, self.key)
            .map_err(|source| self.error(source))?
        {
            Some(msg) => {
                let payload = finish_recv(msg, &mut self.buf, self.rank, self.peer)?;
                self.transport.recycle(self.world_peer, payload);
                Ok(Ok(self.buf))
            }
            None => Ok(Err(self)),
        }
    }

    fn error(&self, source: crate::transport::TransportError) -> Error {
        Error::Transport {
            op: Op::Recv,
            seq: 0,
            rank: self.rank,
            world_rank: self.world_rank,
            source,
        }
    }
}
