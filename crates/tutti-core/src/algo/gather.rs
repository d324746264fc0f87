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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{counts, run_cluster, run_cluster_with_window, window, Rng};
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
