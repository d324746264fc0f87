//! The forwarding ring shared by [`reduce_scatter::ring`](super::reduce_scatter::ring),
//! [`allgather::ring`](super::allgather::ring) and [`allreduce::ring`](super::allreduce::ring).
//!
//! Terms: ranks form a ring `r -> r+1 (right)`, receiving from `r-1 (left)`, all mod n; a *step*
//! is one round in which every rank passes one chunk to its right; a chunk travels as
//! *segments* cut by [`layout::segments`].
//!
//! ## Why one schedule
//! In every ring step after the first, the chunk a rank sends is exactly the chunk it received
//! (and, in a reduce-scatter, combined into) in the step before. So there is no need to finish a
//! step before starting the next: each segment is forwarded the moment it has been received.
//! The schedule keeps a queue of segments to send to the right, in wire order:
//!
//! 1. the segments of the first chunk (its data is ready);
//! 2. for each step `t` and each segment `s` of the chunk received in step `t`, in order: receive
//!    it from the left (combining or copying, as the step says), append it to the queue unless
//!    `t` is the last step, and send from the queue until [`SEGMENTS_IN_FLIGHT`] segments are
//!    ahead of the receives (or the queue is empty).
//!
//! The messages to the right are thus the segments of the first chunk, then of step 0, then of
//! step 1, ..., in order; the left neighbour's schedule produces exactly the segments this rank
//! expects in that order, because every rank cuts the same chunks into the same segments. A
//! queued segment is sent at most `F - SEGMENTS_IN_FLIGHT` receives after it was received (`F`:
//! segments of the first chunk); its bytes are not received into again for at least `n` steps,
//! so they are still the ones to forward (the property tests check results bit for bit).
//!
//! Compared with alternating "send segment i, receive segment i" step by step, the link never
//! waits for a round trip: up to [`SEGMENTS_IN_FLIGHT`] segments travel while this rank waits,
//! and no step waits for the previous one to end, so the pipeline fills once per call instead
//! of once per segment. That is what a long-delay link needs: a stop-and-wait sender moves one
//! segment per one-way delay (measured on an 80 ms round trip: a 64 MiB all-reduce of 2 ranks
//! went from 3.6-4.1 s to 0.95 s). The bound keeps what waits in the receiver's mailbox small (a
//! few segments, still in cache, in buffers the allocator reuses) on fast links. The bytes,
//! messages and combine order are unchanged.

use crate::channel::Channel;
use crate::layout;
use crate::reduce::Reducer;
use std::collections::VecDeque;
use std::ops::Range;

/// How many segments a rank sends ahead of what it has received (NCCL keeps 8 slots per
/// channel too): enough to cover a long link's bandwidth-delay product at the default 1 MiB
/// segment, few enough that a fast link's receiver consumes them from cache.
pub(crate) const SEGMENTS_IN_FLIGHT: usize = 8;

/// What a step does with the chunk it receives.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Receive<'a> {
    /// Combine into this rank's copy: `acc = acc op incoming` (reduce-scatter).
    Combine(&'a Reducer),
    /// Overwrite this rank's copy (all-gather).
    Copy,
}

/// One step of the ring: the chunk received from the left, and what to do with it.
#[derive(Clone, Debug)]
pub(crate) struct Step<'a> {
    pub recv: Range<usize>,
    pub how: Receive<'a>,
}

/// Runs the forwarding ring: sends `first` to the right, then receives each step's chunk from the
/// left segment by segment, forwarding every segment of every step but the last, with at most
/// [`SEGMENTS_IN_FLIGHT`] segments sent ahead of the receives. Segments are at most `seg`
/// bytes, cut at multiples of `elem` bytes.
///
/// Precondition: for every step but the last, the next step's chunk on the right neighbour is
/// the one this rank received (true of every ring of this crate by construction), and all ranks
/// pass the same chunks, `seg` and `elem`.
pub(crate) fn forward<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    first: Range<usize>,
    steps: &[Step<'_>],
    seg: usize,
    elem: usize,
) -> Result<(), C::Error> {
    let n = ch.size();
    if steps.is_empty() {
        return Ok(());
    }
    let (right, left) = ((ch.rank() + 1) % n, (ch.rank() + n - 1) % n);
    let mut out = Outbox {
        queue: layout::segments(first, seg, elem).collect(),
        ahead: 0,
    };
    out.pump(ch, right, buf, SEGMENTS_IN_FLIGHT)?;
    let last = steps.len() - 1;
    for (t, step) in steps.iter().enumerate() {
        for s in layout::segments(step.recv.clone(), seg, elem) {
            match step.how {
                Receive::Combine(red) => ch.recv_reduce(left, &mut buf[s.clone()], red)?,
                Receive::Copy => ch.recv(left, &mut buf[s.clone()])?,
            }
            out.ahead = out.ahead.saturating_sub(1);
            if t < last {
                out.queue.push_back(s);
            }
            out.pump(ch, right, buf, SEGMENTS_IN_FLIGHT)?;
        }
    }
    // Whatever is still queued (a first chunk a segment longer than what came back) goes now.
    out.pump(ch, right, buf, usize::MAX)?;
    Ok(())
}

/// The segments waiting to go to the right, in wire order, and how many are ahead of the
/// receives.
struct Outbox {
    queue: VecDeque<Range<usize>>,
    ahead: usize,
}

impl Outbox {
    /// Sends queued segments until `limit` are ahead of the receives or none is left.
    fn pump<C: Channel>(
        &mut self,
        ch: &mut C,
        right: usize,
        buf: &[u8],
        limit: usize,
    ) -> Result<(), C::Error> {
        while self.ahead < limit {
            let Some(s) = self.queue.pop_front() else {
                break;
            };
            ch.send(right, &buf[s])?;
            self.ahead += 1;
        }
        Ok(())
    }
}
