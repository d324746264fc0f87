//! All-gather: every rank contributes one chunk; afterwards every rank holds all of them.
//!
//! Terms: `n` ranks; the output buffer `buf` of `m` bytes is split into `n` *chunks* by the caller
//! (equal for all-gather, per-rank counts for all-gather-v; empty chunks are fine) and rank `r`
//! owns `chunks[r]`; a chunk travels as *segments* of at most `seg` bytes ([`layout::segments`]
//! at byte granularity: nothing is combined, so element boundaries do not matter); a *step* is one
//! round of the ring.
//!
//! ## Ring ([`ring`])
//! Ranks form a ring `r -> r+1 (right)`, receiving from `r-1 (left)`, all mod n. In step
//! `k = 0..n-2`, rank `r` sends chunk `(r-k) mod n` to the right and receives chunk
//! `(r-k-1) mod n` from the left into its place. Step 0 sends the rank's own chunk; the chunk
//! received in step `k` is the one forwarded in step `k+1`, segment by segment as it arrives
//! ([`ring::forward`]); after `n-1` steps every chunk has gone around the ring once. An empty chunk has no segments, hence no messages, on both ends.
//!
//! Bytes on the wire per rank: sends every chunk but its right neighbour's (`m - |chunk r+1|`),
//! receives every chunk but its own (`m - |chunk r|`): `(n-1)/n * m` each for equal chunks.
//! Cost with equal chunks: `(n-1) alpha + (n-1)/n m beta` (segmented: `(n-1) * ceil(m/(n seg))`
//! messages per rank).
//!
//! **Flow control.** The ring is a cycle of senders: `ring::forward` sends at most the window's
//! worth of segments ahead and pairs every later send with the receive it needs next (its module
//! doc says why that cannot deadlock).

use super::ring;
use crate::channel::Channel;
use std::ops::Range;

/// Ring all-gather over `chunks` (see the module doc).
///
/// On entry `buf[chunks[rank]]` holds this rank's contribution (the rest is ignored); on return
/// every `buf[chunks[p]]` holds rank `p`'s contribution.
///
/// Preconditions (checked by the communicator): `chunks.len() == size`, every range lies in `buf`,
/// and every rank passes the same `chunks` and `seg`.
pub fn ring<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    chunks: &[Range<usize>],
    seg: usize,
) -> Result<(), C::Error> {
    let (first, steps) = steps(ch.rank(), chunks);
    ring::forward(ch, buf, first, &steps, seg, 1)
}

/// The chunk rank `rank` sends first (its own) and the `n - 1` chunks it receives, in step order.
pub(crate) fn steps(
    rank: usize,
    chunks: &[Range<usize>],
) -> (Range<usize>, Vec<ring::Step<'static>>) {
    let n = chunks.len();
    debug_assert!(rank < n, "allgather: one chunk per rank");
    let steps = (0..n.saturating_sub(1))
        .map(|k| ring::Step {
            recv: chunks[(rank + 2 * n - k - 1) % n].clone(),
            how: ring::Receive::Copy,
        })
        .collect();
    (chunks[rank].clone(), steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{
        counts, run_cluster_with_window, seg_bytes, window, Rng, UNBOUNDED,
    };
    use crate::layout;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_rank_gets_every_chunk(
            (n, cs) in (1usize..=9).prop_flat_map(|n| (Just(n), counts(n))),
            elem in prop::sample::select(vec![1usize, 4, 8]),
            seg in seg_bytes(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let chunks = layout::chunks_from_counts(&cs, elem);
            let expect = Rng::new(seed).bytes(chunks[n - 1].end);
            let out = run_cluster_with_window(n, window, |ch| {
                // Garbage everywhere except the rank's own chunk.
                let mut buf = Rng::new(!seed ^ ch.rank() as u64).bytes(expect.len());
                let own = chunks[ch.rank()].clone();
                buf[own.clone()].copy_from_slice(&expect[own]);
                ring(ch, &mut buf, &chunks, seg).map(|()| buf)
            });
            for (rank, got) in out.into_iter().enumerate() {
                prop_assert!(got.map_err(TestCaseError::fail)? == expect, "rank {} of {}", rank, n);
            }
        }
    }

    #[test]
    fn bytes_on_the_wire_are_n_minus_1_chunks() {
        let n = 4;
        let chunks = layout::chunks_from_counts(&[10, 0, 30, 20], 1);
        for window in [UNBOUNDED, 0, 25] {
            let stats = run_cluster_with_window(n, window, |ch| {
                let mut buf = vec![0u8; 60];
                ring(ch, &mut buf, &chunks, 1 << 20).map(|()| ch.stats())
            });
            for (rank, s) in stats.into_iter().enumerate() {
                let s = s.unwrap();
                let right = &chunks[(rank + 1) % n];
                assert_eq!(s.bytes_sent, 60 - right.len(), "rank {rank}");
                // One message per non-empty chunk sent.
                let nonempty = chunks
                    .iter()
                    .filter(|c| !c.is_empty() && *c != right)
                    .count();
                assert_eq!(s.messages_sent, nonempty, "rank {rank}");
            }
        }
    }
}
