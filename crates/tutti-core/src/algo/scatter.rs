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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{counts, run_cluster_with_window, window, Rng};
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
}
