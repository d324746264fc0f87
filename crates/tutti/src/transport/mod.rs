//! Transports: how bytes move between ranks, behind one small trait.
//!
//! - [`mem`]: ranks as threads of one process (unit tests, and any in-process use);
//! - [`tcp`]: one TCP connection per pair of ranks, driven by the threads that wait on it;
//! - [`faulty`]: a wrapper for tests that delays and reorders messages;
//! - [`shm`]: shared memory between ranks on one host, as the byte pipe of a TCP link whose two
//!   ends share a host (chosen per link; the link keeps its socket for doorbells and liveness);
//! - later: several sockets per peer.
//!
//! A message is addressed by a [`MsgKey`] (communicator, lane, tag): messages from one peer with
//! the same key are matched in the order they were sent.
//!
//! ## Posted receives and the window (the contract of v2)
//! A receive names its destination before the bytes arrive ([`RecvInto`]: a slice to overwrite
//! or an accumulator to combine into); a message that finds its receive posted moves straight
//! into it. Only a message that arrives before its receive is buffered ("unexpected"), and each
//! peer may have at most [`Transport::window`] bytes buffered so at any time: a send beyond that
//! waits, within its deadline, until the receiver posts receives. So
//! - `send` returns once the bytes are handed off, and may wait while the peer's window is full;
//! - `send_recv` posts its receive before its send may wait, so ranks that send to each other in
//!   a cycle never deadlock (the rule algorithms follow, see `tutti_core::channel`);
//! - matching is MPI's: a receive from [`Source::Any`] takes the earliest message of that key
//!   from any peer, and [`Transport::probe`] tells the source and size of the next one.

pub mod faulty;
pub mod frame;
pub mod matcher;
pub mod mem;
pub mod pool;
pub mod shm;
pub mod tcp;

use crate::deadline::Deadline;
use std::time::Duration;
pub use tutti_core::channel::RecvInto;

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

/// Whom a receive takes its message from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Only this (world) rank.
    Rank(usize),
    /// The earliest matching message from any rank (MPI's `ANY_SOURCE`).
    Any,
}

/// What a receive matched: the sender, its call fingerprint and the message's length. The
/// payload was written into the receive's destination only if `written` (the length equals the
/// destination's, and the fingerprint is the one expected or 0); otherwise it was consumed and
/// dropped, and the caller reports the mismatch from these fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub peer: usize,
    pub fingerprint: u128,
    pub len: usize,
    pub written: bool,
}

/// A received message with its own buffer (a receive of unknown size).
#[derive(Debug)]
pub struct Message {
    /// The sender (world rank).
    pub peer: usize,
    pub key: MsgKey,
    /// The sender's call fingerprint (0: none), compared by the receiver to its own.
    pub fingerprint: u128,
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
    #[error("timed out after {waited:.1?} waiting to {what} any rank")]
    TimeoutAny {
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
    #[error("request {0} is unknown (already completed or cancelled)")]
    NoSuchRequest(u64),
}

impl TransportError {
    /// The peer this error names, if any.
    pub fn peer(&self) -> Option<usize> {
        match self {
            TransportError::Timeout { peer, .. }
            | TransportError::PeerLost { peer, .. }
            | TransportError::Io { peer, .. }
            | TransportError::NoSuchPeer { peer, .. } => Some(*peer),
            TransportError::Closed { .. }
            | TransportError::TimeoutAny { .. }
            | TransportError::NoSuchRequest(_) => None,
        }
    }
}

/// The timeout error of a receive from `from`.
pub(crate) fn recv_timeout(from: Source, deadline: Deadline) -> TransportError {
    match from {
        Source::Rank(peer) => TransportError::Timeout {
            peer,
            what: "receive from",
            waited: deadline.elapsed(),
        },
        Source::Any => TransportError::TimeoutAny {
            what: "receive from",
            waited: deadline.elapsed(),
        },
    }
}

/// Request ids of sends have this bit set; those of receives are the matcher's ids.
pub(crate) const SEND_REQUEST: u64 = 1 << 63;

/// A non-blocking send or receive in flight: completed by [`Transport::wait`] or
/// [`Transport::test`], abandoned by [`Transport::cancel`] (dropping the id leaks nothing the
/// transport holds beyond the request's own buffer, freed at shutdown).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// The outcome of a finished request: a send gives its buffer back, a receive its message.
#[derive(Debug)]
pub enum Completion {
    Sent(Vec<u8>),
    Received(Message),
}

/// Moves messages between the ranks of one world.
///
/// Contract (what algorithms rely on, see the module doc and `tutti_core::channel`):
/// 1. A message from one peer with one [`MsgKey`] is matched by that key's receives in the order
///    it was sent; receives write into their destination in place.
/// 2. At most [`window`](Transport::window) bytes per peer wait unreceived; a send beyond waits.
/// 3. Every blocking call returns by its deadline; a peer that disappears makes pending and later
///    receives from it fail with [`TransportError::PeerLost`] (messages it sent before are still
///    delivered first).
pub trait Transport: Send + Sync + 'static {
    /// This process's rank in the world, `0..size()`.
    fn rank(&self) -> usize;

    /// The number of ranks in the world.
    fn size(&self) -> usize;

    /// Bytes of unreceived messages one peer may have buffered here (`usize::MAX`: unbounded).
    fn window(&self) -> usize;

    /// Sends one message; returns once `payload` is no longer needed by the transport.
    fn send(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u128,
        payload: &[u8],
        deadline: Deadline,
    ) -> Result<(), TransportError>;

    /// Receives the next message with `key` from `from` into `into`, if its length is `into`'s
    /// and its fingerprint is `expect` (or either is 0); see [`Envelope`].
    fn recv(
        &self,
        from: Source,
        key: MsgKey,
        expect: u128,
        into: RecvInto<'_>,
        deadline: Deadline,
    ) -> Result<Envelope, TransportError>;

    /// Sends to `to` while receiving from `from` with the same key: the receive is posted
    /// before the send may wait, so a cycle of ranks doing this never deadlocks.
    #[allow(clippy::too_many_arguments)]
    fn send_recv(
        &self,
        to: usize,
        key: MsgKey,
        fingerprint: u128,
        payload: &[u8],
        from: usize,
        into: RecvInto<'_>,
        deadline: Deadline,
    ) -> Result<Envelope, TransportError>;

    /// Starts sending an owned buffer and returns at once.
    fn isend(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u128,
        payload: Vec<u8>,
    ) -> Result<RequestId, TransportError>;

    /// Posts a receive of unknown size (the transport allocates the buffer) and returns at once.
    fn irecv(&self, from: Source, key: MsgKey) -> Result<RequestId, TransportError>;

    /// Waits for a request until `deadline` (it stays pending if the deadline passes).
    fn wait(&self, req: RequestId, deadline: Deadline) -> Result<Completion, TransportError>;

    /// The request's outcome if it has finished (driving progress once), else `None`.
    fn test(&self, req: RequestId) -> Result<Option<Completion>, TransportError>;

    /// Abandons a request; afterwards the transport holds nothing of it. A send already partly
    /// on the wire is finished first (a link cannot carry half a message).
    fn cancel(&self, req: RequestId);

    /// The envelope (source, fingerprint, length) of the next message with `key` from `from`
    /// without receiving it: waits until `deadline`, or with `None` only looks.
    fn probe(
        &self,
        from: Source,
        key: MsgKey,
        deadline: Option<Deadline>,
    ) -> Result<Option<Envelope>, TransportError>;

    /// The peers (world ranks) whose link runs over shared memory, ascending; the others
    /// (but this rank) are reached over the network.
    fn shm_peers(&self) -> Vec<usize> {
        Vec::new()
    }

    /// Closes every link: pending and later calls fail with [`TransportError::Closed`]; peers see
    /// this rank leave with `reason`.
    fn shutdown(&self, reason: &str);

    /// As [`shutdown`](Transport::shutdown), after a failed call: peers see this rank abort,
    /// with `reason` (the error that made it give up), so they fail at once and can say why.
    fn abort(&self, reason: &str) {
        self.shutdown(reason);
    }

    /// Receives the next message with `key` from `from` into a buffer of its own size.
    fn recv_owned(
        &self,
        from: Source,
        key: MsgKey,
        deadline: Deadline,
    ) -> Result<Message, TransportError> {
        let req = self.irecv(from, key)?;
        match self.wait(req, deadline) {
            Ok(Completion::Received(m)) => Ok(m),
            Ok(Completion::Sent(_)) => unreachable!("a receive completes as a receive"),
            Err(e) => {
                self.cancel(req);
                Err(e)
            }
        }
    }
}
