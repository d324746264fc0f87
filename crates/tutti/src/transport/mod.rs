//! Transports: how bytes move between ranks, behind one small trait.
//!
//! - [`mem`]: ranks as threads of one process (unit tests, and any in-process use);
//! - [`tcp`]: one TCP connection per pair of ranks, with a reader thread per link so that a
//!   sender never waits for its receiver (full duplex, no deadlock whatever the size);
//! - later: shared memory between ranks on one host, several sockets per peer.
//!
//! A message is addressed by a [`MsgKey`] (communicator, lane, tag): messages from one peer with the
//! same key are delivered in the order they were sent; messages with different keys never block
//! each other, so sub-communicators and point-to-point traffic share links safely.

pub mod frame;
pub mod mailbox;
pub mod mem;
pub mod pool;
pub mod tcp;

use crate::deadline::Deadline;
use std::sync::mpsc;
use std::time::Duration;

/// Which traffic a message belongs to: user point-to-point or a collective's internal messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// `send`/`recv` and their non-blocking forms; the tag is the user's.
    P2p,
    /// Messages inside a collective; the tag is the collective's sequence number.
    Collective,
}

/// The address of a message within a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsgKey {
    /// The communicator (0 for the world; split communicators derive theirs).
    pub comm_id: u64,
    pub lane: Lane,
    pub tag: u64,
}

/// A received message.
#[derive(Debug)]
pub struct Message {
    pub key: MsgKey,
    /// The sender's call fingerprint (0: none), compared by the receiver to its own.
    pub fingerprint: u64,
    pub payload: Vec<u8>,
}

/// What went wrong on a link. Each variant names the peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("timed out after {waited:.1?} waiting to {what} rank {peer}")]
    Timeout {
        peer: usize,
        what: &'static str,
        waited: Duration,
    },
    #[error("rank {peer} is gone: {reason}")]
    PeerLost { peer: usize, reason: String },
    #[error("I/O error with rank {peer}: {source}")]
    Io {
        peer: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("rank {peer} is out of range for a world of {size}")]
    NoSuchPeer { peer: usize, size: usize },
    #[error("transport shut down: {reason}")]
    Closed { reason: String },
}

impl TransportError {
    /// The peer this error names, if any.
    pub fn peer(&self) -> Option<usize> {
        match self {
            TransportError::Timeout { peer, .. }
            | TransportError::PeerLost { peer, .. }
            | TransportError::Io { peer, .. }
            | TransportError::NoSuchPeer { peer, .. } => Some(*peer),
            TransportError::Closed { .. } => None,
        }
    }
}

/// Completion of a send that was queued with [`Transport::send_owned`].
#[must_use = "a send ticket must be waited on to learn whether the send succeeded"]
pub struct SendTicket {
    state: TicketState,
}

enum TicketState {
    Done(Option<Result<(), TransportError>>),
    Pending {
        peer: usize,
        rx: mpsc::Receiver<Result<(), TransportError>>,
    },
}

impl SendTicket {
    /// A ticket for a send that has already completed.
    pub fn done(result: Result<(), TransportError>) -> SendTicket {
        SendTicket {
            state: TicketState::Done(Some(result)),
        }
    }

    /// A ticket completed by whoever holds the sender of `rx`'s channel.
    pub fn pending(peer: usize, rx: mpsc::Receiver<Result<(), TransportError>>) -> SendTicket {
        SendTicket {
            state: TicketState::Pending { peer, rx },
        }
    }

    /// Waits for the send to complete, until `deadline`.
    pub fn wait(&mut self, deadline: Deadline) -> Result<(), TransportError> {
        match &mut self.state {
            TicketState::Done(r) => r.take().unwrap_or(Ok(())),
            TicketState::Pending { peer, rx } => {
                let peer = *peer;
                let r = match rx.recv_timeout(deadline.remaining()) {
                    Ok(r) => r,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        return Err(TransportError::Timeout {
                            peer,
                            what: "send to",
                            waited: deadline.elapsed(),
                        })
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => Err(TransportError::Closed {
                        reason: "the link's writer stopped before finishing the send".into(),
                    }),
                };
                self.state = TicketState::Done(None);
                r
            }
        }
    }

    /// True once the send has completed (successfully or not); `wait` then returns at once.
    pub fn is_done(&mut self) -> bool {
        match &mut self.state {
            TicketState::Done(_) => true,
            TicketState::Pending { rx, .. } => match rx.try_recv() {
                Ok(r) => {
                    self.state = TicketState::Done(Some(r));
                    true
                }
                Err(mpsc::TryRecvError::Empty) => false,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.state = TicketState::Done(Some(Err(TransportError::Closed {
                        reason: "the link's writer stopped before finishing the send".into(),
                    })));
                    true
                }
            },
        }
    }
}

/// Moves messages between the ranks of one world.
///
/// Contract (what algorithms rely on, see `tutti_core::channel`):
/// 1. `send`/`send_owned` never wait for the receiver to ask for the message: the receiving side
///    drains every link in the background into its mailbox.
/// 2. Messages from one peer with the same [`MsgKey`] are received in the order they were sent.
/// 3. Every blocking call returns by its deadline; a peer that disappears makes pending and later
///    receives from it fail with [`TransportError::PeerLost`] (messages it sent before are still
///    delivered first).
pub trait Transport: Send + Sync + 'static {
    /// This process's rank in the world, `0..size()`.
    fn rank(&self) -> usize;

    /// The number of ranks in the world.
    fn size(&self) -> usize;

    /// Sends one message; returns once `payload` is no longer needed by the transport.
    fn send(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u64,
        payload: &[u8],
        deadline: Deadline,
    ) -> Result<(), TransportError>;

    /// Queues one message and returns at once; the ticket says when it is sent.
    fn send_owned(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u64,
        payload: Vec<u8>,
    ) -> Result<SendTicket, TransportError>;

    /// Takes the next message from `peer` with this key, waiting until `deadline`.
    fn recv(&self, peer: usize, key: MsgKey, deadline: Deadline)
        -> Result<Message, TransportError>;

    /// Takes the next message from `peer` with this key if it has arrived.
    fn try_recv(&self, peer: usize, key: MsgKey) -> Result<Option<Message>, TransportError>;

    /// Closes every link: pending and later calls fail with [`TransportError::Closed`]; peers see
    /// this rank leave with `reason`.
    fn shutdown(&self, reason: &str);

    /// Hands back the payload of a message received from `peer` once its bytes have been used,
    /// so the transport can reuse the buffer (the default frees it).
    fn recycle(&self, peer: usize, payload: Vec<u8>) {
        let _ = (peer, payload);
    }

    /// As [`shutdown`](Transport::shutdown), after a failed call: peers see this rank abort,
    /// with `reason` (the error that made it give up), so they fail at once and can say why.
    fn abort(&self, reason: &str) {
        self.shutdown(reason);
    }
}
