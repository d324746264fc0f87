//! The [`Channel`] trait: all an algorithm may use to talk to its peers.
//!
//! An algorithm is a schedule written against this trait, so the same code runs over the
//! in-process transport in unit tests, over TCP between processes, and (later) over shared memory,
//! or against a recording channel that turns it into a plan for the cost model.
//!
//! ## The contract an implementation keeps, and the rule an algorithm follows
//! 1. **Flow control: a send may wait for its receiver.** A peer buffers at most
//!    [`window()`](Channel::window) bytes of this call's messages from this rank whose receive
//!    it has not posted yet; a message beyond that moves only into a posted receive.
//!    [`send`](Channel::send) returns once its bytes are handed off (copied, queued, written to
//!    the kernel, or placed in a posted receive), and while the peer's window is full it waits
//!    until the peer posts receives. [`send_recv`](Channel::send_recv) posts its receive before
//!    its send may wait, so the two progress together. The window counts payload bytes (an empty
//!    message fits in any window) and belongs to the call: traffic the peer may receive later
//!    than this call's (point-to-point messages, other communicators) must not use it up, or
//!    `window()` must report less.
//!
//!    **The rule algorithms follow:** an algorithm may send ahead of its receives (a plain `send`
//!    not paired with the receive it needs next) at most `window()` bytes per peer per call;
//!    every further send to a peer that may itself be sending to this rank (any cycle of senders)
//!    is paired with the receive it needs next via `send_recv`. Under that rule no schedule
//!    deadlocks at any message size. Two kinds of send cannot be part of a waiting cycle, however
//!    large, and need no pair: sends after this rank's last receive of the call (no one waits
//!    for a rank that has nothing left to receive), and a send from whose bytes the next message
//!    this rank receives is computed (the all-reduce's result coming back: that message cannot
//!    exist before the send has been received). Acyclic schedules (trees, chains, a root and its
//!    leaves) need no pairing at all. Each algorithm's module doc says which case it is in.
//! 2. **Order.** Messages from one peer to another within one collective call arrive in the order
//!    they were sent (`send` and the send half of `send_recv` alike).
//! 3. **Exact sizes.** `recv`, `recv_reduce` and the receive half of `send_recv` fail if the next
//!    message from that peer does not have exactly the length of the buffer (a mismatched call,
//!    not silently truncated data).
//! 4. Every call is bounded by the deadline of the collective call it belongs to.

use crate::reduce::Reducer;

/// Where a received message goes.
pub enum RecvInto<'a> {
    /// Overwrite `buf` (exactly the message's length).
    Copy(&'a mut [u8]),
    /// `acc = acc op message` (exactly the message's length).
    Combine(&'a mut [u8], &'a Reducer),
}

impl RecvInto<'_> {
    /// The length the message must have.
    pub fn len(&self) -> usize {
        match self {
            RecvInto::Copy(buf) | RecvInto::Combine(buf, _) => buf.len(),
        }
    }

    /// Whether the message must be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts `message` (exactly [`len`](RecvInto::len) bytes) where it belongs.
    ///
    /// # Panics
    /// If `message` has another length: the implementation must check sizes first (contract 3).
    pub fn store(self, message: &[u8]) {
        match self {
            RecvInto::Copy(buf) => buf.copy_from_slice(message),
            RecvInto::Combine(acc, reducer) => reducer.combine(acc, message),
        }
    }
}

/// One rank's view of a communicator, as seen by an algorithm.
pub trait Channel {
    /// The error the transport reports (it names the peer and why).
    type Error;

    /// This rank, in `0..size()`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn size(&self) -> usize;

    /// Sends one message; returns once the bytes are handed off. May wait while `peer`'s window is
    /// full (until it receives; see contract 1).
    fn send(&mut self, peer: usize, data: &[u8]) -> Result<(), Self::Error>;

    /// Receives the next message from `peer` into `buf` (see contract 3).
    fn recv(&mut self, peer: usize, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Receives the next message from `peer` and combines it into `acc`: `acc = acc op message`.
    fn recv_reduce(
        &mut self,
        peer: usize,
        acc: &mut [u8],
        reducer: &Reducer,
    ) -> Result<(), Self::Error>;

    /// Sends `data` to `to` while receiving the next message from `from` into `into`; both
    /// progress together (the receive is posted before the send may wait), so ranks that send to
    /// each other in a cycle never deadlock under flow control. `to` and `from` may be equal.
    fn send_recv(
        &mut self,
        to: usize,
        data: &[u8],
        from: usize,
        into: RecvInto<'_>,
    ) -> Result<(), Self::Error>;

    /// Bytes this rank may send to one peer ahead of that peer's receives without any send
    /// waiting (the flow-control window; `usize::MAX` when unbounded).
    fn window(&self) -> usize;
}
