//! The [`Channel`] trait: all an algorithm may use to talk to its peers.
//!
//! An algorithm is a schedule written against this trait, so the same code runs over the
//! in-process transport in unit tests, over TCP between processes, and (later) over shared memory,
//! or against a recording channel that turns it into a plan for the cost model.
//!
//! ## The contract an implementation keeps
//! 1. **`send` never waits for the peer to post a receive.** It returns once the bytes are handed
//!    off (copied, queued, or written to the kernel); the peer's side drains its links in the
//!    background. Algorithms may therefore send before they receive in every step without risking
//!    deadlock, whatever the message size (full duplex).
//! 2. **Order.** Messages from one peer to another within one collective call arrive in the order
//!    they were sent.
//! 3. **Exact sizes.** `recv` and `recv_reduce` fail if the next message from that peer does not
//!    have exactly the length of the buffer (a mismatched call, not silently truncated data).
//! 4. Every call is bounded by the deadline of the collective call it belongs to.

use crate::reduce::Reducer;

/// Where a received message goes.
pub enum RecvInto<'a> {
    /// Overwrite `buf` (exactly the message's length).
    Copy(&'a mut [u8]),
    /// `acc = acc op message` (exactly the message's length).
    Combine(&'a mut [u8], &'a Reducer),
}

/// One rank's view of a communicator, as seen by an algorithm.
pub trait Channel {
    /// The error the transport reports (it names the peer and why).
    type Error;

    /// This rank, in `0..size()`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn size(&self) -> usize;

    /// Sends `data` as one message to `peer` (see contract 1).
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
    /// progress together (the receive is posted before the send may wait), so ranks that send
    /// to each other in a cycle never deadlock under flow control. `to` and `from` may be equal.
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
