//! The scatter-allgather broadcast ([`broadcast::scatter_allgather`](super::broadcast)), after
//! van de Geijn: bandwidth-optimal like the chain, with a pipeline that does not need many
//! segments to fill.
//!
//! Terms: `n` ranks, `m = buf.len()` bytes, cut into `n` *chunks* of near-equal bytes
//! ([`layout::even_chunks`] at byte granularity: a broadcast moves bytes without looking at
//! them); relative rank `u = (rank - root) mod n`; chunk `u` is the *own* chunk of relative rank
//! `u`; a *segment* is at most `seg` bytes of a message ([`layout::segments`]).
//!
//! ## Schedule
//! 1. **Binomial scatter.** Over the binomial tree of [`broadcast::binomial`](super::broadcast)
//!    (children of `u` are `u + 2^j` for `2^j` below the lowest set bit of `u`), the subtree of
//!    `u` holds the relative ranks `u .. u + lowbit(u)` (capped at `n`; the root's is all), whose
//!    chunks are contiguous in `buf`. A rank receives its subtree's chunks from its parent, then
//!    sends each child its subtree's chunks, largest subtree first, segment by segment.
//!    Afterwards every rank holds its own chunk.
//! 2. **Ring all-gather** ([`allgather::ring`](super::allgather::ring)) of the own chunks, over
//!    the ring of absolute ranks `r -> r + 1`.
//!
//! ## Cost
//! The root sends `(n-1)/n m` bytes in the scatter (half to its largest child, a quarter to the
//! next, ...), and every rank sends and receives `(n-1)/n m` in the ring. Unsegmented:
//! `(ceil(log2 n) + n - 1) alpha + 2(n-1)/n m beta` (against the chain's
//! `(n + S - 2)(alpha + m/S beta)` and the binomial tree's `ceil(log2 n)(alpha + m beta)`);
//! segmented, each message of the scatter and each chunk of the ring becomes
//! `ceil(bytes / seg)` messages.
//!
//! ## Flow control
//! The scatter is a tree: data flows only away from the root, so plain sends are safe at any
//! size and window (the channel contract's rule for acyclic schedules). The ring all-gather is a
//! cycle of senders, handled by [`ring::forward`](super::ring): at most the window's worth of
//! segments ahead, every later send paired with the receive it needs next. The two phases follow
//! one another on every rank, so a rank waits only for a peer in the same phase or an earlier
//! one (a peer in a later phase has finished its part of the earlier one): a ring send that
//! finds the window still holding scatter bytes waits for a receiver that is still scattering,
//! which never waits for the ring.

use super::allgather;
use super::broadcast::BinomialTree;
use crate::channel::Channel;
use crate::layout;
use std::ops::Range;

/// Scatter-allgather broadcast from `root` (see the module doc).
///
/// Preconditions: every rank passes the same `root < size`, the same `seg` and a `buf` of the same
/// length.
pub(crate) fn broadcast<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    root: usize,
    seg: usize,
) -> Result<(), C::Error> {
    let n = ch.size();
    if n == 1 {
        return Ok(());
    }
    let chunks = layout::even_chunks(buf.len(), n, 1);
    scatter(ch, buf, root, &chunks, seg)?;
    // The all-gather names chunks by absolute rank: rank r owns chunk (r - root) mod n.
    let by_rank: Vec<Range<usize>> = (0..n).map(|r| chunks[(r + n - root) % n].clone()).collect();
    allgather::ring(ch, buf, &by_rank, seg)
}

/// Binomial scatter of the chunks (indexed by relative rank) from `root`.
fn scatter<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    root: usize,
    chunks: &[Range<usize>],
    seg: usize,
) -> Result<(), C::Error> {
    let (rank, n) = (ch.rank(), ch.size());
    let relative = |r: usize| (r + n - root) % n;
    let tree = BinomialTree::new(rank, n, root);
    if let Some(parent) = tree.parent {
        for s in layout::segments(subtree_bytes(chunks, relative(rank)), seg, 1) {
            ch.recv(parent, &mut buf[s])?;
        }
    }
    // Largest subtree first: it has the longest way to go.
    for &child in tree.children.iter().rev() {
        for s in layout::segments(subtree_bytes(chunks, relative(child)), seg, 1) {
            ch.send(child, &buf[s])?;
        }
    }
    Ok(())
}

/// The bytes of the chunks of the subtree of relative rank `u`: `u .. u + lowbit(u)`, capped at
/// `n` (all of them for the root).
fn subtree_bytes(chunks: &[Range<usize>], u: usize) -> Range<usize> {
    let n = chunks.len();
    let end = if u == 0 {
        n
    } else {
        n.min(u + (u & u.wrapping_neg()))
    };
    chunks[u].start..chunks[end - 1].end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{
        byte_len, run_cluster_with_window, seg_bytes, window, Rng, Stats, UNBOUNDED,
    };
    use proptest::prelude::*;

    fn run(
        n: usize,
        len: usize,
        root: usize,
        seg: usize,
        window: usize,
        seed: u64,
    ) -> Vec<Vec<u8>> {
        run_cluster_with_window(n, window, |ch| {
            let mut buf = if ch.rank() == root {
                Rng::new(seed).bytes(len)
            } else {
                Rng::new(seed ^ (ch.rank() as u64 + 1)).bytes(len)
            };
            broadcast(ch, &mut buf, root, seg).map(|()| buf)
        })
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn every_rank_gets_the_roots_bytes(
            n in 1usize..=17,
            len in byte_len(),
            root in any::<prop::sample::Index>(),
            seg in seg_bytes(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let root = root.index(n);
            let expect = Rng::new(seed).bytes(len);
            for (rank, got) in run(n, len, root, seg, window, seed).into_iter().enumerate() {
                prop_assert!(got == expect, "rank {} of {} (root {}) differs", rank, n, root);
            }
        }
    }

    #[test]
    fn the_root_sends_each_byte_once_in_the_scatter() {
        // 8 ranks, 8000 bytes, chunks of 1000: the root scatters 7000 bytes in 3 messages, then
        // sends 7 chunks around the ring; a leaf of the scatter sends only in the ring.
        let (n, len, root) = (8, 8000, 5);
        for window in [UNBOUNDED, 0] {
            let stats: Vec<Stats> = run_cluster_with_window(n, window, |ch| {
                let mut buf = vec![ch.rank() as u8; len];
                broadcast(ch, &mut buf, root, 1 << 20).map(|()| ch.stats())
            })
            .into_iter()
            .map(|s| s.unwrap())
            .collect();
            assert_eq!(stats[root].bytes_sent, 7000 + 7000, "window {window}");
            assert_eq!(stats[root].messages_sent, 3 + 7, "window {window}");
            let leaf = (root + 1) % n;
            assert_eq!(stats[leaf].bytes_sent, 7000, "window {window}");
            assert_eq!(stats[leaf].messages_sent, 7, "window {window}");
        }
    }
}
