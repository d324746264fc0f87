//! Scatter: the root sends each rank its chunk of the root's input buffer.
//!
//! Terms: `n` ranks; the root's input `send` of `m` bytes is split into `n` *chunks* by the caller
//! (equal for scatter, per-rank counts for scatter-v; empty chunks are fine); rank `p` receives
//! `chunks[p]` into `recv`, which is exactly that long. The mirror image of
//! [`gather`](super::gather).
//!
//! ## Linear ([`linear`])
//! The root sends every other rank its chunk as one message, in relative-rank order
//! `root+1, root+2, ...` (mod n), even when it is empty (so a disagreement on a count fails with a
//! size mismatch instead of hanging), and copies its own chunk locally; every other rank receives
//! one message from the root. One step, unsegmented.
//!
//! Bytes on the wire: the root sends `m - |chunk root|` (`(n-1)/n m` for equal chunks); rank `p`
//! receives `|chunk p|`. Cost, bounded by the root's link: `(n-1) alpha + (n-1)/n m beta`.
//!
//! **Flow control.** Only the root sends and it receives nothing, so there is no cycle of
//! senders: plain sends are safe at any size and window (the channel contract's rule). Every
//! other rank posts its one receive at once, so the root's sends wait at most for that.
//!
//! ## Binomial tree ([`binomial`])
//! The mirror of [`gather::binomial`](super::gather::binomial), on the same tree of relative
//! ranks `v = (rank - root) mod n`. The root lays its chunks end to end in relative-rank order (a
//! local rotation by its position); every other rank receives its subtree's chunks, in that
//! order, from its parent as one message (even when empty). Each then sends every child the part
//! under it as one message, largest subtree first, and keeps its own chunk. A leaf receives its
//! chunk straight into `recv`.
//!
//! Bytes on the wire: each non-root receives its subtree's chunks once; the root sends
//! `m - |chunk root|` in `ceil(log2 n)` messages at most. Cost with equal chunks:
//! `ceil(log2 n) alpha + (n-1)/n m beta`, plus a local copy of `m` at the root and of each
//! subtree at the inner ranks.
//!
//! **Flow control.** A tree: a rank receives only from its parent and sends only to its
//! children, so there is no cycle of senders and plain sends are safe at any size and window (the
//! contract's rule). A send waits at most until the child posts its receive, which it does first
//! thing.

use super::broadcast::BinomialTree;
use super::gather::Subtree;
use crate::channel::Channel;
use std::ops::Range;

/// Linear scatter from `root` (see the module doc).
///
/// At the root, `send` is the whole input and `chunks` index into it; elsewhere `send` is ignored
/// (it may be empty).
///
/// Preconditions (checked by the communicator): `chunks.len() == size`, every rank passes the
/// same `root < size` and `chunks`, `recv.len() == chunks[rank].len()`, and at the root every
/// chunk lies in `send`.
pub fn linear<C: Channel>(
    ch: &mut C,
    send: &[u8],
    recv: &mut [u8],
    chunks: &[Range<usize>],
    root: usize,
) -> Result<(), C::Error> {
    let (rank, n) = (ch.rank(), ch.size());
    debug_assert_eq!(chunks.len(), n, "scatter: one chunk per rank");
    debug_assert_eq!(recv.len(), chunks[rank].len(), "scatter: recv length");
    if rank != root {
        return ch.recv(root, recv);
    }
    for peer in (1..n).map(|k| (root + k) % n) {
        ch.send(peer, &send[chunks[peer].clone()])?;
    }
    recv.copy_from_slice(&send[chunks[root].clone()]);
    Ok(())
}

/// Binomial-tree scatter from `root` (see the module doc). Cost
/// `ceil(log2 n) alpha + (n-1)/n m beta`.
///
/// Flow control: a tree, acyclic (a rank receives only from its parent and sends only to its
/// children), so plain sends at any size and window.
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
    debug_assert_eq!(chunks.len(), n, "scatter: one chunk per rank");
    debug_assert_eq!(recv.len(), chunks[rank].len(), "scatter: recv length");
    let tree = BinomialTree::new(rank, n, root);
    if let (Some(parent), true) = (tree.parent, tree.children.is_empty()) {
        return ch.recv(parent, recv);
    }
    let subtree = Subtree::new(rank, n, root, chunks);
    let mut held = vec![0u8; subtree.len()];
    match tree.parent {
        Some(parent) => ch.recv(parent, &mut held)?,
        None => {
            for peer in 0..n {
                held[subtree.part_of(peer)].copy_from_slice(&send[chunks[peer].clone()]);
            }
        }
    }
    // Largest subtree first: it has the longest way to go.
    for &child in tree.children.iter().rev() {
        ch.send(child, &held[subtree.part_below(child)])?;
    }
    recv.copy_from_slice(&held[subtree.part_of(rank)]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{
        counts, run_cluster_with_window, window, Rng, Stats, UNBOUNDED,
    };
    use crate::layout;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_rank_gets_its_chunk(
            (n, cs) in (1usize..=9).prop_flat_map(|n| (Just(n), counts(n))),
            root in any::<prop::sample::Index>(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let root = root.index(n);
            let chunks = layout::chunks_from_counts(&cs, 8);
            let input = Rng::new(seed).bytes(chunks[n - 1].end);
            let out = run_cluster_with_window(n, window, |ch| {
                let send = if ch.rank() == root { input.clone() } else { vec![] };
                let mut recv = vec![0x55; chunks[ch.rank()].len()];
                linear(ch, &send, &mut recv, &chunks, root).map(|()| recv)
            });
            for (rank, got) in out.into_iter().enumerate() {
                let got = got.map_err(TestCaseError::fail)?;
                let expect = &input[chunks[rank].clone()];
                prop_assert!(got == expect, "rank {} root {} of {}", rank, root, n);
            }
        }
    }

    /// Runs [`binomial`] from `root` under `window`; returns each rank's chunk and stats.
    fn run_binomial(
        chunks: &[Range<usize>],
        root: usize,
        window: usize,
        input: &[u8],
    ) -> Vec<Result<(Vec<u8>, Stats), String>> {
        run_cluster_with_window(chunks.len(), window, |ch| {
            let send = if ch.rank() == root {
                input.to_vec()
            } else {
                vec![]
            };
            let mut recv = vec![0x55; chunks[ch.rank()].len()];
            binomial(ch, &send, &mut recv, chunks, root).map(|()| (recv, ch.stats()))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn binomial_gives_every_rank_its_chunk(
            (n, cs) in (1usize..=17).prop_flat_map(|n| (Just(n), counts(n))),
            root in any::<prop::sample::Index>(),
            elem in prop::sample::select(vec![1usize, 8]),
            window in window(),
            seed in any::<u64>(),
        ) {
            let root = root.index(n);
            let chunks = layout::chunks_from_counts(&cs, elem);
            let input = Rng::new(seed).bytes(chunks[n - 1].end);
            let out = run_binomial(&chunks, root, window, &input);
            for (rank, got) in out.into_iter().enumerate() {
                let (got, _) = got.map_err(TestCaseError::fail)?;
                let expect = &input[chunks[rank].clone()];
                prop_assert!(got == expect, "rank {} root {} of {}", rank, root, n);
            }
        }
    }

    #[test]
    fn binomial_works_from_every_root_with_one_message_per_rank() {
        for n in 1..=17 {
            // Odd counts, one of them zero.
            let cs: Vec<usize> = (0..n).map(|p| (2 * p + 1) % 7).collect();
            let chunks = layout::chunks_from_counts(&cs, 1);
            let input = Rng::new(n as u64).bytes(chunks[n - 1].end);
            for root in 0..n {
                for window in [UNBOUNDED, 0] {
                    let out = run_binomial(&chunks, root, window, &input);
                    let mut received = 0;
                    for (rank, got) in out.into_iter().enumerate() {
                        let (got, stats) = got.unwrap();
                        assert!(
                            got == input[chunks[rank].clone()],
                            "rank {rank} root {root}"
                        );
                        assert_eq!(stats.plain_sends, stats.messages_sent, "rank {rank}");
                        received += stats.messages_sent;
                    }
                    assert_eq!(received, n - 1, "root {root} of {n}");
                }
            }
        }
    }
}
