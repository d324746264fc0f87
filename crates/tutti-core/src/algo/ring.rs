//! The forwarding ring shared by [`reduce_scatter::ring`](super::reduce_scatter::ring),
//! [`allgather::ring`](super::allgather::ring) and [`allreduce::ring`](super::allreduce::ring).
//!
//! Terms: ranks form a ring `r -> r+1 (right)`, receiving from `r-1 (left)`, all mod n; a *step*
//! is one round in which every rank passes one chunk to its right; a chunk travels as
//! *segments* cut by [`layout::segments`]; `F` is the number of segments of the first chunk.
//!
//! ## Why one schedule
//! In every ring step after the first, the chunk a rank sends is exactly the chunk it received
//! (and, in a reduce-scatter, combined into) in the step before. So there is no need to finish a
//! step before starting the next: each segment is forwarded the moment it has been received.
//! The schedule keeps a queue of segments to send to the right, in wire order, starting with the
//! segments of the first chunk (its data is ready):
//!
//! 1. **Burst.** The first `B` queued segments go out with plain sends before anything is
//!    received, `B = min(SEGMENTS_IN_FLIGHT - 1, F, window / largest)` with `largest` the largest
//!    segment this rank sends, so that any `B` consecutive messages to the right fit in the
//!    window. When not even one segment fits, `B = 0`: nothing goes ahead.
//! 2. **Steady state.** For each step `t` and each segment `s` of the chunk received in step `t`,
//!    in order: if the queue is not empty, its head is sent while `s` is received from the left,
//!    combined or copied as the step says, in one `send_recv`; if it is empty, `s` is just
//!    received. Then `s` joins the queue unless `t` is the last step.
//! 3. **Rest.** Whatever is still queued after the last receive (a first chunk with more segments
//!    than the last step's) goes out with plain sends.
//!
//! The messages to the right are thus the segments of the first chunk, then of step 0, then of
//! step 1, ..., in order; the left neighbour's schedule produces exactly the segments this rank
//! expects in that order, because every rank cuts the same chunks into the same segments. Each
//! receive is paired with one send, so while a rank waits for a segment it has up to `B + 1`
//! (at most [`SEGMENTS_IN_FLIGHT`]) segments in flight to the right: `B` that fit in the right
//! neighbour's window, and one for its posted receive. A queued segment is sent
//! `max(F - B, 1)` receives after it was received. Unbounded (`window() = usize::MAX`) this is,
//! operation for operation when `send_recv` sends and then receives, the schedule of the
//! sends-never-wait contract before: `min(8, F)` segments ahead, then one send per receive.
//!
//! **Receiving into a segment still queued.** Only the all-reduce receives into a range twice:
//! a chunk's partial result in the reduce-scatter, then its final value in the all-gather, `T`
//! receives later (`T`: segments of the whole buffer; `T - F` receives into the first chunk,
//! which is sent before anything is received). A queued segment waits `max(F - B, 1)` receives,
//! so it is still queued when due again only if `T = 1`, or `T = F` and `B = 0`: the buffer is
//! one segment, or lies wholly in this rank's first chunk and no segment fits in the window
//! (with even chunks: a count of one element). It is then the head of the queue, and goes out
//! first, with a plain send: the message about to arrive is the final value computed from it, so
//! it cannot come, and no rank can be waiting for this one, before the right neighbour has
//! received it.
//!
//! ## Why it cannot deadlock under flow control
//! Plain sends are the burst (at most `window()` bytes, so they never wait), the rest (sent after
//! this rank's last receive: no one waits for it any more) and the case above; every other send
//! is paired with the receive this rank needs next (the channel contract's rule). A send waits
//! only while its receiver has not posted the matching receive and holds `B` or more unreceived
//! segments from it; such a receiver is not waiting for a message from this rank (it has one),
//! so it is itself waiting in a send, with a receive posted and filled, to a neighbour further
//! behind in the ring. Going around the ring would put a rank behind itself: some rank can
//! always go on.
//!
//! ## Why in flight
//! Compared with alternating "send segment i, receive segment i" step by step, the link never
//! waits for a round trip: up to `B + 1` segments travel while this rank waits, and no step waits
//! for the previous one to end, so the pipeline fills once per call instead of once per segment.
//! That is what a long-delay link needs: a stop-and-wait sender moves one segment per one-way
//! delay (measured on an 80 ms round trip: a 64 MiB all-reduce of 2 ranks went from 3.6-4.1 s to
//! 0.95 s). The bound keeps what waits in the receiver's buffers small (a few segments, still in
//! cache) on fast links, and within the window. The bytes, messages and combine order do not
//! depend on `B` or on the window.

use crate::channel::{Channel, RecvInto};
use crate::layout;
use crate::reduce::Reducer;
use std::collections::VecDeque;
use std::ops::Range;

/// How many segments a rank has in flight ahead of what it has received, window permitting: the
/// burst and the send paired with the receive it waits for (NCCL keeps 8 slots per channel
/// too). Enough to cover a long link's bandwidth-delay product at the default 1 MiB segment, few
/// enough that a fast link's receiver consumes them from cache.
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
/// [`SEGMENTS_IN_FLIGHT`] segments in flight, at most the window's worth sent ahead of the
/// receives and every later send paired with a receive (see the module doc). Segments are at
/// most `seg` bytes, cut at multiples of `elem` bytes.
///
/// Precondition: for every step but the last, the next step's chunk on the right neighbour is
/// the one this rank received (true of every ring of this crate by construction), all ranks
/// pass the same chunks, `seg` and `elem`, and a step receives into a range that is still to be
/// forwarded only if what it receives is computed from that range (the all-reduce).
pub(crate) fn forward<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    first: Range<usize>,
    steps: &[Step<'_>],
    seg: usize,
    elem: usize,
) -> Result<(), C::Error> {
    let n = ch.size();
    let Some(last) = steps.len().checked_sub(1) else {
        return Ok(());
    };
    let (right, left) = ((ch.rank() + 1) % n, (ch.rank() + n - 1) % n);
    let mut queue: VecDeque<Range<usize>> = layout::segments(first.clone(), seg, elem).collect();
    let forwarded = steps[..last].iter().map(|s| &s.recv);
    let burst = burst_len(
        ch.window(),
        std::iter::once(&first).chain(forwarded),
        seg,
        elem,
    )
    .min(queue.len());
    for s in queue.drain(..burst) {
        ch.send(right, &buf[s])?;
    }
    for (t, step) in steps.iter().enumerate() {
        for s in layout::segments(step.recv.clone(), seg, elem) {
            if queue.front().is_some_and(|head| overlaps(head, &s)) {
                // The all-reduce's final value of this segment comes back (see the module doc).
                if let Some(head) = queue.pop_front() {
                    ch.send(right, &buf[head])?;
                }
            }
            debug_assert!(
                !queue.iter().any(|q| overlaps(q, &s)),
                "ring: receiving into {s:?}, which is still queued to go right"
            );
            match queue.pop_front() {
                Some(head) => {
                    let (data, dst) = layout::split_read_write(buf, head, s.clone());
                    let into = match step.how {
                        Receive::Combine(red) => RecvInto::Combine(dst, red),
                        Receive::Copy => RecvInto::Copy(dst),
                    };
                    ch.send_recv(right, data, left, into)?;
                }
                None => match step.how {
                    Receive::Combine(red) => ch.recv_reduce(left, &mut buf[s.clone()], red)?,
                    Receive::Copy => ch.recv(left, &mut buf[s.clone()])?,
                },
            }
            if t < last {
                queue.push_back(s);
            }
        }
    }
    // After the last receive no one waits for this rank: the rest may go with plain sends.
    for s in queue {
        ch.send(right, &buf[s])?;
    }
    Ok(())
}

/// How many segments may go out before the first receive: [`SEGMENTS_IN_FLIGHT`]` - 1` (the
/// send paired with the first receive makes it [`SEGMENTS_IN_FLIGHT`]), or fewer so that that
/// many of the largest segments cut from `sent` (the chunks this rank sends) fit in `window`
/// bytes; then any that many consecutive messages to the right fit too.
fn burst_len<'a>(
    window: usize,
    sent: impl Iterator<Item = &'a Range<usize>>,
    seg: usize,
    elem: usize,
) -> usize {
    let full = layout::segment_len(seg, elem);
    match sent.map(|c| c.len().min(full)).max() {
        Some(largest) if largest > 0 => (window / largest).min(SEGMENTS_IN_FLIGHT - 1),
        _ => 0, // nothing to send
    }
}

/// Whether two byte ranges share a byte.
fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}
