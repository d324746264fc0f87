//! Gather: the root collects one chunk from every rank into its output buffer.
//!
//! Terms: `n` ranks; the root's output `recv` of `m` bytes is split into `n` *chunks* by the
//! caller (equal for gather, per-rank counts for gather-v; empty chunks are fine); rank `p`
//! contributes `send`, which is exactly `chunks[p]` long.
//!
//! ## Linear ([`linear`])
//! Every rank but the root sends its `send` as one message to the root, even when it is empty (so
//! a rank and the root that disagree on a count fail with a size mismatch instead of hanging); the
//! root copies its own chunk locally and receives the others in relative-rank order
//! `root+1, root+2, ...` (mod n). One step, unsegmented: there is nothing to overlap.
//!
//! Bytes on the wire: rank `p` sends `|chunk p|`; the root receives `m - |chunk root|`
//! (`(n-1)/n m` for equal chunks). Cost, bounded by the root's link:
//! `(n-1) alpha + (n-1)/n m beta`.
//!
//! **Flow control.** Only the root receives and it sends nothing, so there is no cycle of
//! senders: plain sends are safe at any size and window (the channel contract's rule). A rank's
//! send waits at most until the root reaches it in its receive order.
//!
//! ## Binomial tree ([`binomial`])
//! Ranks are renumbered relative to the root, `v = (rank - root) mod n`, and form the binomial
//! tree of [`broadcast::binomial`](super::broadcast::binomial): the parent of `v > 0` is `v`
//! with its lowest set bit cleared, and the subtree under `v` holds the relative ranks
//! `v..v + lowbit(v)` (up to `n`; all of them under the root). Every rank collects its subtree's
//! chunks, laid end to end in relative-rank order ([`Subtree`]): its own, then the subtree of
//! each child as one message from that child, nearest child (smallest subtree) first; then it
//! sends the whole to its parent as one message, even when empty. A leaf sends its `send` as it
//! is. The root, whose subtree is everyone, then copies each chunk to its place in `recv` (a
//! local rotation by the root's position).
//!
//! Bytes on the wire: each non-root sends its subtree once; the root receives `m - |chunk root|`
//! in `ceil(log2 n)` messages at most. Cost with equal chunks: `ceil(log2 n) alpha + (n-1)/n m
//! beta` (the critical path halves the bytes at every level below the root), plus a local copy
//! of `m` at the root and of each subtree at the inner ranks.
//!
//! **Flow control.** A tree: a rank receives only from its children and sends only to its
//! parent, so there is no cycle of senders and plain sends are safe at any size and window (the
//! contract's rule). A send waits at most until the parent posts its receive, and the parent
//! receives from its children before it sends, down to the leaves, which only send.

use super::allgather;
use super::broadcast::BinomialTree;
use crate::channel::Channel;
use std::ops::Range;

/// Linear gather to `root` (see the module doc).
///
/// At the root, `recv` is the whole output and `chunks` index into it; elsewhere `recv` is ignored
/// (it may be empty).
///
/// Preconditions (checked by the communicator): `chunks.len() == size`, every rank passes the
/// same `root < size` and `chunks`, `send.len() == chunks[rank].len()`, and at the root every
/// chunk lies in `recv`.
pub fn linear<C: Channel>(
    ch: &mut C,
    send: &[u8],
    recv: &mut [u8],
    chunks: &[Range<usize>],
    root: usize,
) -> Result<(), C::Error> {
    let (rank, n) = (ch.rank(), ch.size());
    debug_assert_eq!(chunks.len(), n, "gather: one chunk per rank");
    debug_assert_eq!(send.len(), chunks[rank].len(), "gather: send length");
    if rank != root {
        return ch.send(root, send);
    }
    recv[chunks[root].clone()].copy_from_slice(send);
    for peer in (1..n).map(|k| (root + k) % n) {
        ch.recv(peer, &mut recv[chunks[peer].clone()])?;
    }
    Ok(())
}

/// Binomial-tree gather to `root` (see the module doc). Cost
/// `ceil(log2 n) alpha + (n-1)/n m beta`.
///
/// Flow control: a tree, acyclic (a rank receives only from its children and sends only to its
/// parent), so plain sends at any size and window.
///
/// Buffers and preconditions as for [`linear`].
pub fn binomial<C: Channel>(
    ch: &mut C,
    send: &[u8],
    recv: &mut [u8],
    chunks: &[Range<usize>],
    root: usize,
) -> Result<(), C::Error> {
    let (rank, n) = (ch.rank(), ch.size());
    debug_assert_eq!(chunks.len(), n, "gather: one chunk per rank");
    debug_assert_eq!(send.len(), chunks[rank].len(), "gather: send length");
    let tree = BinomialTree::new(rank, n, root);
    if let (Some(parent), true) = (tree.parent, tree.children.is_empty()) {
        return ch.send(parent, send);
    }
    let subtree = Subtree::new(rank, n, root, chunks);
    let mut held = vec![0u8; subtree.len()];
    held[subtree.part_of(rank)].copy_from_slice(send);
    for &child in &tree.children {
        ch.recv(child, &mut held[subtree.part_below(child)])?;
    }
    match tree.parent {
        Some(parent) => ch.send(parent, &held),
        None => {
            for peer in 0..n {
                recv[chunks[peer].clone()].copy_from_slice(&held[subtree.part_of(peer)]);
            }
            Ok(())
        }
    }
}

/// The chunks of the ranks in a binomial subtree, laid end to end in relative-rank order: what a
/// rank of [`binomial`] gathers or scatters holds.
pub(crate) struct Subtree {
    /// The relative rank of the subtree's top.
    top: usize,
    /// The relative rank just past the subtree's last.
    end: usize,
    n: usize,
    root: usize,
    /// Where the chunk of relative rank `top + i` starts, and the total at `end - top`.
    at: Vec<usize>,
}

impl Subtree {
    /// The subtree of the binomial tree of `n` ranks rooted at `root` whose top is `rank`: its
    /// relative ranks are `v..v + lowest set bit of v` (all of them for the root), up to `n`.
    pub(crate) fn new(rank: usize, n: usize, root: usize, chunks: &[Range<usize>]) -> Subtree {
        let top = (rank + n - root) % n;
        let end = Self::end_below(top, n);
        let at = allgather::offsets((top..end).map(|v| chunks[(v + root) % n].len()));
        Subtree {
            top,
            end,
            n,
            root,
            at,
        }
    }

    /// The relative rank just past the subtree under relative rank `v`.
    fn end_below(v: usize, n: usize) -> usize {
        match v {
            0 => n,
            v => (v + (v & v.wrapping_neg())).min(n),
        }
    }

    /// The bytes the subtree holds.
    pub(crate) fn len(&self) -> usize {
        self.at[self.end - self.top]
    }

    /// Where the chunk of `rank` (in the subtree) lies.
    pub(crate) fn part_of(&self, rank: usize) -> Range<usize> {
        let i = (rank + self.n - self.root) % self.n - self.top;
        self.at[i]..self.at[i + 1]
    }

    /// Where the chunks of the subtree under `child` (a child of the top) lie.
    pub(crate) fn part_below(&self, child: usize) -> Range<usize> {
        let v = (child + self.n - self.root) % self.n;
        let end = Self::end_below(v, self.n);
        self.at[v - self.top]..self.at[end - self.top]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{
        counts, run_cluster, run_cluster_with_window, window, Rng, Stats, UNBOUNDED,
    };
    use crate::layout;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn root_gets_every_chunk(
            (n, cs) in (1usize..=9).prop_flat_map(|n| (Just(n), counts(n))),
            root in any::<prop::sample::Index>(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let root = root.index(n);
            let chunks = layout::chunks_from_counts(&cs, 4);
            let expect = Rng::new(seed).bytes(chunks[n - 1].end);
            let out = run_cluster_with_window(n, window, |ch| {
                let mine = &expect[chunks[ch.rank()].clone()];
                let mut recv = if ch.rank() == root { vec![0xAA; expect.len()] } else { vec![] };
                linear(ch, mine, &mut recv, &chunks, root).map(|()| recv)
            });
            let got = out.into_iter().nth(root).unwrap().map_err(TestCaseError::fail)?;
            prop_assert!(got == expect, "root {} of {}", root, n);
        }
    }

    /// Runs [`binomial`] with `chunks`, `root` and `window`; returns what the root got and each
    /// rank's stats.
    fn run_binomial(
        chunks: &[Range<usize>],
        root: usize,
        window: usize,
        expect: &[u8],
    ) -> Result<(Vec<u8>, Vec<Stats>), String> {
        let n = chunks.len();
        let out = run_cluster_with_window(n, window, |ch| {
            let mine = &expect[chunks[ch.rank()].clone()];
            let mut recv = if ch.rank() == root {
                vec![0xAA; expect.len()]
            } else {
                vec![]
            };
            binomial(ch, mine, &mut recv, chunks, root).map(|()| (recv, ch.stats()))
        });
        let out: Vec<(Vec<u8>, Stats)> = out.into_iter().collect::<Result<_, _>>()?;
        let stats = out.iter().map(|(_, s)| *s).collect();
        Ok((
            out.into_iter()
                .nth(root)
                .map(|(recv, _)| recv)
                .unwrap_or_default(),
            stats,
        ))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn binomial_root_gets_every_chunk(
            (n, cs) in (1usize..=17).prop_flat_map(|n| (Just(n), counts(n))),
            root in any::<prop::sample::Index>(),
            elem in prop::sample::select(vec![1usize, 4]),
            window in window(),
            seed in any::<u64>(),
        ) {
            let root = root.index(n);
            let chunks = layout::chunks_from_counts(&cs, elem);
            let expect = Rng::new(seed).bytes(chunks[n - 1].end);
            let (got, _) = run_binomial(&chunks, root, window, &expect)
                .map_err(TestCaseError::fail)?;
            prop_assert!(got == expect, "root {} of {}", root, n);
        }
    }

    #[test]
    fn binomial_works_from_every_root_with_one_message_per_rank() {
        for n in 1..=17 {
            // Odd counts, one of them zero.
            let cs: Vec<usize> = (0..n).map(|p| (2 * p + 1) % 7).collect();
            let chunks = layout::chunks_from_counts(&cs, 1);
            let expect = Rng::new(n as u64).bytes(chunks[n - 1].end);
            for root in 0..n {
                for window in [UNBOUNDED, 0] {
                    let (got, stats) = run_binomial(&chunks, root, window, &expect).unwrap();
                    assert!(got == expect, "root {root} of {n}, window {window}");
                    for (rank, s) in stats.iter().enumerate() {
                        assert_eq!(s.messages_sent, usize::from(rank != root), "rank {rank}");
                        assert_eq!(s.plain_sends, s.messages_sent, "rank {rank}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_count_mismatch_is_an_error_not_a_hang() {
        // Rank 1 believes its count is 0; the root expects 4 bytes from it.
        let out = run_cluster(2, |ch| {
            let mut recv = vec![0u8; 8];
            let chunks = if ch.rank() == 0 {
                [0..4, 4..8]
            } else {
                [0..4, 4..4]
            };
            let send = vec![1u8; chunks[ch.rank()].len()];
            linear(ch, &send, &mut recv, &chunks, 0)
        });
        let e = out[0].as_ref().unwrap_err();
        assert!(e.contains("expected 4 bytes, got 0"), "{e}");
    }
}
