//! Reduce-scatter: rank `r` ends with the reduction, over all ranks, of chunk `r` of the buffer.
//!
//! Terms: `n` ranks, `m = buf.len()` bytes; the buffer is split into `n` *chunks* (given by the
//! caller: [`layout::even_chunks`] for all-reduce, per-rank counts for reduce-scatter-v; unequal
//! and empty chunks are fine); a chunk travels as *segments* of at most `seg` bytes, cut at whole
//! elements by [`layout::segments`]; a *step* is one round of the ring.
//!
//! ## Ring ([`ring`])
//! Ranks form a ring `r -> r+1 (right)`, receiving from `r-1 (left)`, all mod n. In step
//! `k = 0..n-2`, rank `r` sends chunk `(r-k-1) mod n` to the right and receives chunk
//! `(r-k-2) mod n` from the left, combining it into its own copy (`recv_reduce`). The chunk
//! received in step `k` is the one sent in step `k+1`, and each of its segments is forwarded as
//! soon as it is combined ([`ring::forward`]: no step waits for the previous one to end). The last
//! chunk received (step `n-2`) is chunk `r`, now combined over all `n` ranks. An empty chunk has
//! no segments, hence no messages, and both ends agree because they compute the same chunks.
//!
//! **Combine order.** Chunk `c` starts at rank `c+1`, which sends its own data; each rank on the
//! way combines with `acc = own op incoming`, so the owner `c` ends with
//! `x_c op (x_(c-1) op ( ... op (x_(c+2) op x_(c+1))))` (ranks mod n). The result is fixed by
//! `n` alone (not by timing or segment size). For sum and product, whose IEEE operations are
//! commutative bit for bit, it equals the left fold
//! `acc = x_(c+1); acc = acc op x_(c+2); ...; acc = acc op x_(c+n)`, which is how the tests check
//! it.
//!
//! Bytes on the wire per rank: it sends every chunk but its own (`m - |chunk r|`) and receives and
//! combines every chunk but its left neighbour's (`m - |chunk r-1|`): `(n-1)/n * m` each for even
//! chunks. Cost with even chunks:
//! `(n-1) alpha + (n-1)/n m beta + (n-1)/n m gamma` (segmented: `(n-1) * ceil(m/(n seg))`
//! messages per rank instead of `n-1`).
//!
//! **Flow control.** The ring is a cycle of senders: `ring::forward` sends at most the window's
//! worth of segments ahead and pairs every later send with the receive it needs next (its module
//! doc says why that cannot deadlock). Neither affects the combine order.

//!
//! ## Recursive halving ([`recursive_halving`])
//! After folding a world that is not a power of two onto the largest power of two `p <= n`
//! (an extra rank hands its buffer to its proxy and gets its chunk back), partners `p/2, p/4,
//! ..., 1` apart swap the halves of their current range of chunks that the other keeps and
//! combine `lower op upper`, so rank `r` ends with `buf[chunks[r]]` reduced, as with the ring.
//! Cost, `n` a power of two and equal chunks: `log2(n) alpha + (n-1)/n m beta + (n-1)/n m gamma`.
//! Every exchange is a `send_recv` with one partner; the fold's plain sends are the contract's
//! exceptions (schedule, combine order and flow control in `rabenseifner.rs`).

use super::ring;
use crate::channel::Channel;
use crate::reduce::Reducer;
use std::ops::Range;

/// Ring reduce-scatter over `chunks` (see the module doc).
///
/// On return `buf[chunks[rank]]` holds that chunk reduced over every rank; the rest of `buf` is
/// scratch. `Avg` is combined as a sum: the caller divides afterwards.
///
/// Preconditions (checked by the communicator): `chunks.len() == size`, every range lies in `buf`
/// and is a whole number of elements, and every rank passes the same `chunks`, `seg` and reducer.
pub fn ring<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    chunks: &[Range<usize>],
    red: &Reducer,
    seg: usize,
) -> Result<(), C::Error> {
    let (first, steps) = steps(ch.rank(), chunks, red);
    ring::forward(ch, buf, first, &steps, seg, red.dtype().size())
}

/// Recursive-halving reduce-scatter over `chunks`, with the fold for a world that is not a power
/// of two (schedule, combine order and flow control in `rabenseifner.rs`). Rank `r` ends with
/// `buf[chunks[r]]` reduced over every rank, as with [`ring`]; the rest of `buf` is scratch.
/// Unsegmented: one message per step.
///
/// Cost, `n` a power of two and equal chunks: `log2(n) alpha + (n-1)/n m beta + (n-1)/n m gamma`
/// (the ring's bytes in `log2 n` steps instead of `n - 1`); otherwise, with `p` the largest power
/// of two below `n`, about
/// `(log2(p) + 2) alpha + ((p-1)/p + 1 + 1/n) m beta + ((p-1)/p + 1) m gamma`: the fold hands an
/// extra's buffer to its proxy, and its chunk back (a proxy's block is two chunks, so the
/// halving's messages are not all equal). Window rule: the halving exchanges are `send_recv`s
/// with one partner; the fold's two plain sends are the contract's exceptions (the extra's next
/// receive is computed from what it sends; the proxy sends after its last receive).
///
/// Preconditions: as for [`ring`], plus the chunks are contiguous and in order (as
/// [`layout::even_chunks`] and [`layout::chunks_from_counts`] cut them).
pub fn recursive_halving<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    chunks: &[Range<usize>],
    red: &Reducer,
) -> Result<(), C::Error> {
    super::rabenseifner::reduce_scatter(ch, buf, chunks, red)
}

/// The chunk rank `rank` sends first and the `n - 1` chunks it receives and combines, in step
/// order (shared with the all-reduce ring, which continues with the all-gather's steps).
pub(crate) fn steps<'a>(
    rank: usize,
    chunks: &[Range<usize>],
    red: &'a Reducer,
) -> (Range<usize>, Vec<ring::Step<'a>>) {
    let n = chunks.len();
    debug_assert!(rank < n, "reduce_scatter: one chunk per rank");
    let first = chunks[ring_back(rank, 1, n)].clone();
    let steps = (0..n.saturating_sub(1))
        .map(|k| ring::Step {
            recv: chunks[ring_back(rank, k + 2, n)].clone(),
            how: ring::Receive::Combine(red),
        })
        .collect();
    (first, steps)
}

/// `(rank - back) mod n` without underflow.
fn ring_back(rank: usize, back: usize, n: usize) -> usize {
    (rank + n - back % n) % n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{
        counts, exact_reducer, fold_in_rank_order, ring_order, run_cluster_with_window, seg_bytes,
        window, Rng, UNBOUNDED,
    };
    use crate::dtype::DType;
    use crate::layout;
    use crate::reduce::ReduceOp;
    use proptest::prelude::*;

    /// Runs the ring and returns every rank's own chunk.
    fn run(
        red: Reducer,
        inputs: &[Vec<u8>],
        chunks: &[Range<usize>],
        seg: usize,
        window: usize,
    ) -> Vec<Vec<u8>> {
        run_cluster_with_window(inputs.len(), window, |ch| {
            let mut buf = inputs[ch.rank()].clone();
            ring(ch, &mut buf, chunks, &red, seg).map(|()| buf[chunks[ch.rank()].clone()].to_vec())
        })
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn each_rank_gets_its_reduced_chunk(
            (n, cs) in (1usize..=9).prop_flat_map(|n| (Just(n), counts(n))),
            red in exact_reducer(),
            seg in seg_bytes(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let chunks = layout::chunks_from_counts(&cs, red.dtype().size());
            let total: usize = cs.iter().sum();
            let mut rng = Rng::new(seed);
            let inputs: Vec<_> = (0..n).map(|_| rng.exact_elems(&red, total)).collect();
            let expect = fold_in_rank_order(&red, &inputs);
            for (rank, got) in run(red, &inputs, &chunks, seg, window).into_iter().enumerate() {
                prop_assert_eq!(got, &expect[chunks[rank].clone()], "rank {}", rank);
            }
        }

        #[test]
        fn float_sum_follows_the_documented_order(
            (n, cs) in (1usize..=9).prop_flat_map(|n| (Just(n), counts(n))),
            seg in seg_bytes(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let red = Reducer::new(DType::F32, ReduceOp::Sum).unwrap();
            let chunks = layout::chunks_from_counts(&cs, 4);
            let mut rng = Rng::new(seed);
            let inputs: Vec<_> = (0..n).map(|_| rng.rough_f32(cs.iter().sum())).collect();
            for (rank, got) in run(red, &inputs, &chunks, seg, window).into_iter().enumerate() {
                let expect = ring_order(&red, &inputs, rank, chunks[rank].clone());
                prop_assert_eq!(got, expect, "rank {}", rank);
            }
        }
    }

    #[test]
    fn ring_order_differs_from_rank_order_on_floats() {
        // Guards the test above: the reference must be sensitive to the order it encodes.
        let red = Reducer::new(DType::F32, ReduceOp::Sum).unwrap();
        let mut rng = Rng::new(11);
        let inputs: Vec<_> = (0..5).map(|_| rng.rough_f32(5 * 1000)).collect();
        let chunks = layout::even_chunks(5000, 5, 4);
        let got = run(red, &inputs, &chunks, 512, UNBOUNDED);
        let rank_order = fold_in_rank_order(&red, &inputs);
        for (rank, got) in got.iter().enumerate() {
            assert_eq!(got, &ring_order(&red, &inputs, rank, chunks[rank].clone()));
        }
        // Chunk 4 is folded from rank 0 in both orders: compare a chunk that is not.
        assert_ne!(got[1], rank_order[chunks[1].clone()]);
    }

    #[test]
    fn bytes_on_the_wire_are_n_minus_1_chunks() {
        let (n, count) = (6, 6 * 100);
        let red = Reducer::new(DType::I32, ReduceOp::Sum).unwrap();
        let chunks = layout::even_chunks(count, n, 4);
        for window in [UNBOUNDED, 0, 300] {
            let stats = run_cluster_with_window(n, window, |ch| {
                let mut buf = vec![1u8; count * 4];
                ring(ch, &mut buf, &chunks, &red, 128).map(|()| ch.stats())
            });
            for s in stats {
                let s = s.unwrap();
                assert_eq!(s.bytes_sent, (n - 1) * count * 4 / n);
                assert_eq!(s.messages_sent, (n - 1) * 400usize.div_ceil(128));
            }
        }
    }
}
