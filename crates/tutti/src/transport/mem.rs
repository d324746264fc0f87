//! The in-process transport: ranks are threads of one process and a send moves the message
//! straight into the receiver's mailbox. It keeps the same contract as TCP (a send never waits for
//! the receiver; per-key FIFO; deadlines), so every algorithm and every communicator call can be
//! tested without sockets.

use super::mailbox::Mailbox;
use super::{Message, MsgKey, SendTicket, Transport, TransportError};
use crate::deadline::Deadline;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One rank's end of an in-process world.
pub struct MemTransport {
    rank: usize,
    /// Every rank's mailbox, indexed by rank.
    boxes: Arc<Vec<Mailbox>>,
    closed: AtomicBool,
}

impl MemTransport {
    /// A world of `size` ranks; element `r` is rank `r`'s transport.
    pub fn world(size: usize) -> Vec<Arc<MemTransport>> {
        let boxes = Arc::new((0..size).map(|_| Mailbox::new(size)).collect::<Vec<_>>());
        (0..size)
            .map(|rank| {
                Arc::new(MemTransport {
                    rank,
                    boxes: boxes.clone(),
                    closed: AtomicBool::new(false),
                })
            })
            .collect()
    }

    fn check_peer(&self, peer: usize) -> Result<(), TransportError> {
        if peer >= self.boxes.len() {
            return Err(TransportError::NoSuchPeer {
                peer,
                size: self.boxes.len(),
            });
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed {
                reason: "this rank shut its transport down".into(),
            });
        }
        Ok(())
    }
}

impl Transport for MemTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.boxes.len()
    }

    fn send(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u64,
        payload: &[u8],
        _deadline: Deadline,
    ) -> Result<(), TransportError> {
        self.send_owned(peer, key, fingerprint, payload.to_vec())?
            .wait(_deadline)
    }

    fn send_owned(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u64,
        payload: Vec<u8>,
    ) -> Result<SendTicket, TransportError> {
        self.check_peer(peer)?;
        if let Some(reason) = self.boxes[peer].closed_reason(self.rank) {
            return Err(TransportError::PeerLost { peer, reason });
        }
        self.boxes[peer].deliver(
            self.rank,
            Message {
                key,
                fingerprint,
                payload,
            },
        );
        Ok(SendTicket::done(Ok(())))
    }

    fn recv(
        &self,
        peer: usize,
        key: MsgKey,
        deadline: Deadline,
    ) -> Result<Message, TransportError> {
        self.check_peer(peer)?;
        self.boxes[self.rank].take(peer, key, deadline)
    }

    fn try_recv(&self, peer: usize, key: MsgKey) -> Result<Option<Message>, TransportError> {
        self.check_peer(peer)?;
        self.boxes[self.rank].try_take(peer, key)
    }

    fn shutdown(&self, reason: &str) {
        self.close(&format!("rank {} left: {reason}", self.rank));
    }

    fn abort(&self, reason: &str) {
        self.close(&format!("rank {} aborted: {reason}", self.rank));
    }
}

impl MemTransport {
    /// Closes this rank's mailbox and its slot in every peer's, once, with `why`.
    fn close(&self, why: &str) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for (peer, mailbox) in self.boxes.iter().enumerate() {
            if peer != self.rank {
                mailbox.close(self.rank, why);
            }
        }
        // Read by senders to this rank (and by receives pending here): say who left, and why.
        self.boxes[self.rank].close_all(why);
    }
}

impl Drop for MemTransport {
    fn drop(&mut self) {
        self.shutdown("dropped");
    }
}
