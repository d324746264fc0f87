//! All-reduce: every rank's `buf` ends with the reduction of all ranks' `buf`, bit-identical on
//! every rank.
//!
//! Terms: `n` ranks, `m = buf.len()` bytes; *chunk* = one of `n` near-equal parts of the buffer
//! ([`layout::even_chunks`] over elements); *segment* = the pipelining unit of at most `seg` bytes,
//! cut at whole elements by [`layout::segments`]. These kernels only combine: for `Avg` they sum,
//! and the caller divides by `n` afterwards ([`finish_avg`](crate::reduce::finish_avg)).
//!
//! ## Naive ([`naive`]): the baseline
//! Every rank `p > 0` sends its whole buffer to rank 0; rank 0 receives from ranks `1, 2, ...,
//! n-1` in that order, combining each into its buffer (`((x_0 op x_1) op x_2) ...`), then sends
//! the result to every rank. One message each way per rank, `2(n-1)` in all, unsegmented. Rank 0
//! receives and sends `(n-1) m` bytes; every other rank sends and receives `m`. Cost (rank 0's
//! link serialises everything): `2(n-1)(alpha + m beta) + (n-1) m gamma`.
//!
//! Flow control: rank 0 and every other rank send to each other, but neither send can be part
//! of a waiting cycle (the channel contract's two exceptions): rank `p`'s next receive is the
//! result computed from what it sends, and rank 0 sends only after its last receive. So plain
//! sends are safe at any size and window; rank `p`'s send waits at most until rank 0 reaches it
//! in its receive order.
//!
//! ## Ring ([`ring`]): bandwidth-optimal
//! [`reduce_scatter::ring`] over the even chunks (rank `r` ends with chunk `r` fully reduced),
//! then [`allgather::ring`] over the same chunks (every rank gets every reduced chunk), run as
//! one forwarding ring ([`ring::forward`]): a segment of the rank's own chunk leaves for the
//! all-gather as soon as its last combine is done. Each
//! chunk is reduced once, on its owner, and copied everywhere else, so all ranks hold the same
//! bits; the combine order per chunk is the one documented in [`reduce_scatter`]. Bytes on the
//! wire per rank: `2(n-1)/n m` sent and received. Cost:
//! `2(n-1) alpha + 2(n-1)/n m beta + (n-1)/n m gamma`, with `2(n-1) ceil(m/(n seg))` messages per
//! rank when segmented. Flow control: `ring::forward` keeps at most the window's worth of
//! segments ahead and pairs every later send with a receive; its module doc says why that cannot
//! deadlock, and why the one segment whose final value comes straight back (a count of one
//! element) goes first.
//!
//! ## Tree ([`tree`]): latency-optimal
//! [`reduce::binomial`] to rank 0 (combine order documented there), then [`broadcast::binomial`]
//! from rank 0, both segmented. Rank 0 sends and receives `ceil(log2 n) m` bytes, a leaf `m`.
//! Cost unsegmented: `ceil(log2 n)(2 alpha + 2 m beta + m gamma)`: fewer messages than the ring
//! (`2 ceil(log2 n)` against `2(n-1)`) but `log2 n` times its bytes through the root.
//! Flow control: each phase is acyclic (see [`reduce`] and [`broadcast`]), and a rank starts the
//! broadcast only after its last receive of the reduce, when its children have sent it
//! everything, so no send of one phase waits for a rank still in the other.
//!
//! ## Recursive doubling ([`recursive_doubling`]): the fewest steps
//! In step `k`, rank `r` exchanges its whole buffer with rank `r XOR 2^k` in one `send_recv`,
//! and both compute `lower op upper`; a world that is not a power of two first folds its first
//! `2(n - p)` ranks in pairs onto the largest power of two `p <= n`, and unfolds at the end.
//! Schedule, combine order (a balanced tree in rank order, bit-identical on every rank), fold and
//! flow control are in `recursive_doubling.rs`. Each rank sends `ceil(log2 n) m` bytes (a power of
//! two). Cost: `ceil(log2 n)(alpha + m beta + m gamma)` for a power of two; otherwise
//! `(ceil(log2 n) + 1)(alpha + m beta) + ceil(log2 n) m gamma` (the fold's two steps). One
//! message per step: an all-reduce of 2 ranks is one exchange, against two steps for the ring
//! and the tree. Flow control: the exchanges are `send_recv`s; the fold's one-way sends are the
//! channel contract's exceptions (the extra's next receive is computed from what it sends; the
//! proxy sends the result after its last receive).
//!
//! ## Rabenseifner ([`rabenseifner`]): the ring's bytes in logarithmic steps
//! After the same fold, recursive halving: in step `k`, partners `p / 2^(k+1)` apart swap the
//! halves of their current range of blocks that the other keeps and combine `lower op upper`;
//! then recursive doubling swaps the reduced blocks back. Schedule, combine order (a balanced
//! tree over the virtual ranks in bit-reversed order, bit-identical everywhere: each block is
//! combined once and copied), fold and flow control are in `rabenseifner.rs`. Cost, `n` a power
//! of two: `2 log2(n) alpha + 2(n-1)/n m beta + (n-1)/n m gamma`. Flow control: every exchange is
//! a `send_recv` with one partner; the fold's plain sends are the contract's exceptions.
//!
//! ## Double binary tree ([`double_binary_tree`])
//! Half the buffer is reduced to the root and broadcast back over a binary tree whose leaves are
//! the odd ranks, the other half over a mirrored (even `n`) or shifted (odd `n`) copy whose
//! leaves are the even ranks, segment by segment, so every rank sends and receives about `2m`
//! whatever `n`, with a pipeline `ceil(log2 n)` deep. Trees, combine order, phases and flow
//! control (four acyclic phases in sequence: no pairing needed) are in `double_tree.rs`. Cost:
//! about `8 S alpha + 2 m beta + m gamma` for `S = ceil(m / (2 seg)) >> log2 n` segments per half.

use super::{
    allgather, broadcast, double_tree, rabenseifner, recursive_doubling as rd, reduce,
    reduce_scatter, ring,
};
use crate::channel::Channel;
use crate::layout;
use crate::reduce::Reducer;

/// Reduce at rank 0 and send the result back (see the module doc).
///
/// Preconditions (checked by the communicator): every rank passes the same reducer and a `buf` of
/// the same length, a whole number of elements.
pub fn naive<C: Channel>(ch: &mut C, buf: &mut [u8], red: &Reducer) -> Result<(), C::Error> {
    let n = ch.size();
    if ch.rank() == 0 {
        for peer in 1..n {
            ch.recv_reduce(peer, buf, red)?;
        }
        for peer in 1..n {
            ch.send(peer, buf)?;
        }
    } else {
        ch.send(0, buf)?;
        ch.recv(0, buf)?;
    }
    Ok(())
}

/// Ring reduce-scatter then ring all-gather over even chunks (see the module doc).
///
/// Preconditions: as for [`naive`], plus the same `seg` on every rank.
pub fn ring<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    red: &Reducer,
    seg: usize,
) -> Result<(), C::Error> {
    let elem = red.dtype().size();
    debug_assert_eq!(buf.len() % elem, 0, "allreduce: partial element");
    let chunks = layout::even_chunks(buf.len() / elem, ch.size(), elem);
    let (first, mut steps) = reduce_scatter::steps(ch.rank(), &chunks, red);
    // The all-gather's first chunk (this rank's own, fully reduced) is the reduce-scatter's last
    // received one, so the two phases are one forwarding ring of 2(n-1) steps: each reduced
    // segment leaves for the right as soon as it is final.
    steps.extend(allgather::steps(ch.rank(), &chunks).1);
    ring::forward(ch, buf, first, &steps, seg, elem)
}

/// Binomial reduce to rank 0 then binomial broadcast from rank 0 (see the module doc).
///
/// Preconditions: as for [`ring`].
pub fn tree<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    red: &Reducer,
    seg: usize,
) -> Result<(), C::Error> {
    reduce::binomial(ch, buf, 0, red, seg)?;
    broadcast::binomial(ch, buf, 0, seg)
}

/// Double binary tree (after NCCL): half the buffer is reduced and broadcast over a binary tree
/// in which every odd rank is a leaf, the other half over its mirror (or shift, for odd `n`), in
/// which the even ranks are leaves, segment by segment (trees, combine order and flow control in
/// `double_tree.rs`). Every rank holds the bits its tree's root computed.
///
/// Cost, with `D = ceil(log2 n)` and `S = ceil(m / (2 seg))` segments per half: at most
/// `8(D + S - 1) alpha + 2(D + S - 1) m/S beta + (D + S - 1) m/S gamma` (four pipelined phases
/// one after another), about `8 S alpha + 2 m beta + m gamma` for `S >> D`. Window rule: each
/// phase is a tree (acyclic: no pairing needed at any size), and the phases follow one another.
///
/// Preconditions: as for [`ring`].
pub fn double_binary_tree<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    red: &Reducer,
    seg: usize,
) -> Result<(), C::Error> {
    double_tree::all_reduce(ch, buf, red, seg)
}

/// Rabenseifner: recursive-halving reduce-scatter then recursive-doubling all-gather, with the
/// fold for a world that is not a power of two (schedule, combine order and flow control in
/// `rabenseifner.rs`). Unsegmented: one message per step.
///
/// Cost, `n` a power of two: `2 log2(n) alpha + 2(n-1)/n m beta + (n-1)/n m gamma`; otherwise,
/// with `p` the largest power of two below `n`, `(2 log2(p) + 2) alpha + (2(p-1)/p + 2) m beta +
/// ((p-1)/p + 1) m gamma` (the fold hands an extra's buffer to its proxy and the result back).
/// Window rule: the halving and doubling exchanges are `send_recv`s with one partner; the fold's
/// two plain sends are the contract's exceptions (the extra's next receive is computed from what
/// it sends; the proxy sends after its last receive).
///
/// Preconditions: as for [`naive`].
pub fn rabenseifner<C: Channel>(ch: &mut C, buf: &mut [u8], red: &Reducer) -> Result<(), C::Error> {
    rabenseifner::all_reduce(ch, buf, red)
}

/// Recursive doubling, with the fold for a world that is not a power of two (see the module doc
/// and `recursive_doubling.rs`). Unsegmented: one message of the whole buffer per step, and a
/// scratch copy of `buf` for the call.
///
/// Preconditions: as for [`naive`].
pub fn recursive_doubling<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    red: &Reducer,
) -> Result<(), C::Error> {
    rd::all_reduce(ch, buf, red)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{
        elem_count, exact_reducer, fold_in_rank_order, ring_order, run_cluster_with_window,
        seg_bytes, window, Rng, Stats, TestChannel, UNBOUNDED,
    };
    use crate::algo::{Algorithms, AllReduceAlgo};
    use crate::dtype::DType;
    use crate::reduce::ReduceOp;
    use proptest::prelude::*;

    fn run_algo(
        algo: AllReduceAlgo,
        ch: &mut TestChannel,
        buf: &mut [u8],
        red: &Reducer,
        seg: usize,
    ) -> Result<(), String> {
        match algo {
            AllReduceAlgo::Naive => naive(ch, buf, red),
            AllReduceAlgo::Ring => ring(ch, buf, red, seg),
            AllReduceAlgo::Tree => tree(ch, buf, red, seg),
            AllReduceAlgo::RecursiveDoubling => recursive_doubling(ch, buf, red),
            AllReduceAlgo::Rabenseifner => rabenseifner(ch, buf, red),
            AllReduceAlgo::DoubleBinaryTree => double_binary_tree(ch, buf, red, seg),
            // With a bound of 64 bytes the tests' counts take both branches.
            AllReduceAlgo::Auto => {
                let a = Algorithms {
                    small_all_reduce_bytes: 64,
                    ..Algorithms::default()
                };
                run_algo(a.all_reduce_for(buf.len()), ch, buf, red, seg)
            }
            // Hosts of ranks r mod 3 (non-contiguous; flat for n <= 3); see hierarchical.rs.
            AllReduceAlgo::Hierarchical => {
                let a = Algorithms {
                    small_all_reduce_bytes: 64,
                    ..Algorithms::default()
                };
                let hosts = crate::algo::Hosts::from_keys((0..ch.size()).map(|r| r % 3));
                let inter = a.inter_host_all_reduce_for(buf.len());
                crate::algo::hierarchical::all_reduce(ch, buf, red, &hosts, seg, inter)
            }
        }
    }

    /// Runs `algo` on one input per rank; returns every rank's result and what it sent.
    fn run(
        algo: AllReduceAlgo,
        red: Reducer,
        inputs: &[Vec<u8>],
        seg: usize,
        window: usize,
    ) -> Vec<(Vec<u8>, Stats)> {
        run_cluster_with_window(inputs.len(), window, |ch| {
            let mut buf = inputs[ch.rank()].clone();
            run_algo(algo, ch, &mut buf, &red, seg).map(|()| (buf, ch.stats()))
        })
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
    }

    fn algos() -> impl Strategy<Value = AllReduceAlgo> {
        prop::sample::select(AllReduceAlgo::ALL.to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_rank_gets_the_reduction(
            algo in algos(),
            n in 1usize..=9,
            count in elem_count(),
            red in exact_reducer(),
            seg in seg_bytes(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let inputs: Vec<_> = (0..n).map(|_| rng.exact_elems(&red, count)).collect();
            let expect = fold_in_rank_order(&red, &inputs);
            for (rank, (got, _)) in run(algo, red, &inputs, seg, window).into_iter().enumerate() {
                prop_assert_eq!(&got, &expect, "{} rank {} of {}", algo, rank, n);
            }
        }

        #[test]
        fn float_results_are_bit_identical_on_every_rank(
            algo in algos(),
            n in 1usize..=9,
            count in elem_count(),
            seg in seg_bytes(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let red = Reducer::new(DType::F32, ReduceOp::Sum).unwrap();
            let mut rng = Rng::new(seed);
            let inputs: Vec<_> = (0..n).map(|_| rng.rough_f32(count)).collect();
            let out = run(algo, red, &inputs, seg, window);
            for (rank, (got, _)) in out.iter().enumerate() {
                prop_assert!(got == &out[0].0, "{} rank {} differs from rank 0", algo, rank);
            }
            if algo == AllReduceAlgo::Ring {
                for (c, r) in layout::even_chunks(count, n, 4).into_iter().enumerate() {
                    let expect = ring_order(&red, &inputs, c, r.clone());
                    prop_assert_eq!(&out[0].0[r], &expect[..], "chunk {}", c);
                }
            }
            if algo == AllReduceAlgo::Naive {
                prop_assert_eq!(&out[0].0, &fold_in_rank_order(&red, &inputs));
            }
        }
    }

    #[test]
    fn nothing_is_sent_on_one_rank() {
        let red = Reducer::new(DType::I64, ReduceOp::Max).unwrap();
        for algo in AllReduceAlgo::ALL.iter().copied() {
            let input = Rng::new(3).exact_elems(&red, 100);
            let out = run(algo, red, std::slice::from_ref(&input), 64, 0);
            assert_eq!(out[0], (input, Stats::default()), "{algo}");
        }
    }

    #[test]
    fn bytes_on_the_wire_match_the_docs() {
        let (n, count) = (5, 5 * 1000);
        let m = count * 4;
        let red = Reducer::new(DType::U32, ReduceOp::BXor).unwrap();
        let inputs: Vec<_> = (0..n)
            .map(|r| Rng::new(r as u64).exact_elems(&red, count))
            .collect();
        // Chunks of 4000 bytes, 4 segments of 1000 each: as many go ahead as fit in the window,
        // all 4 unbounded, and every other send is paired with a receive.
        for (window, ahead) in [
            (UNBOUNDED, 4),
            (4000, 4),
            (2500, 2),
            (1000, 1),
            (999, 0),
            (0, 0),
        ] {
            let out = run(AllReduceAlgo::Ring, red, &inputs, 1000, window);
            for (rank, (_, s)) in out.iter().enumerate() {
                let at = format!("ring rank {rank}, window {window}");
                assert_eq!(s.bytes_sent, 2 * (n - 1) * m / n, "{at}");
                assert_eq!(s.messages_sent, 2 * (n - 1) * 4, "{at}");
                assert_eq!(s.plain_sends, ahead, "{at}");
            }
        }
        // Segments of 400 bytes, 10 per chunk: 7 go ahead, and with the send paired with the
        // first receive 8 are in flight, when the window allows.
        for (window, ahead) in [(UNBOUNDED, 7), (2000, 5), (0, 0)] {
            let out = run(AllReduceAlgo::Ring, red, &inputs, 400, window);
            for (rank, (_, s)) in out.iter().enumerate() {
                let at = format!("ring rank {rank}, window {window}");
                assert_eq!(s.bytes_sent, 2 * (n - 1) * m / n, "{at}");
                assert_eq!(s.messages_sent, 2 * (n - 1) * 10, "{at}");
                assert_eq!(s.plain_sends, ahead, "{at}");
            }
        }
        for window in [UNBOUNDED, 0] {
            let out = run(AllReduceAlgo::Naive, red, &inputs, 1000, window);
            for (rank, (_, s)) in out.iter().enumerate() {
                let (bytes, msgs) = if rank == 0 {
                    ((n - 1) * m, n - 1)
                } else {
                    (m, 1)
                };
                assert_eq!(
                    (s.bytes_sent, s.messages_sent),
                    (bytes, msgs),
                    "naive rank {rank}, window {window}"
                );
            }
            let tree = run(AllReduceAlgo::Tree, red, &inputs, 1 << 20, window);
            // Rank 0 broadcasts to its ceil(log2 5) = 3 children; rank 4 is a leaf.
            assert_eq!(tree[0].1.bytes_sent, 3 * m);
            assert_eq!(tree[4].1.bytes_sent, m);
        }
    }

    #[test]
    fn a_one_element_all_reduce_sends_the_segment_that_comes_back_first() {
        // One element: the buffer is one segment, in one rank's first chunk, and its final value
        // comes straight back to where it was sent from (see ring.rs).
        let red = Reducer::new(DType::I64, ReduceOp::Sum).unwrap();
        for (n, window) in (2..=9).flat_map(|n| [(n, UNBOUNDED), (n, 0), (n, 8)]) {
            let inputs: Vec<_> = (0..n as i64)
                .map(|r| (r + 1).to_le_bytes().to_vec())
                .collect();
            let sum = (n * (n + 1) / 2) as i64;
            for (rank, (got, _)) in run(AllReduceAlgo::Ring, red, &inputs, 1, window)
                .into_iter()
                .enumerate()
            {
                assert_eq!(got, sum.to_le_bytes(), "n={n} rank {rank} window {window}");
            }
        }
    }

    /// 2^20 + 3 small-integer f32 per rank: every algorithm must reproduce the exact sum.
    fn one_million(algo: AllReduceAlgo, n: usize, window: usize) {
        let count = (1 << 20) + 3;
        let red = Reducer::new(DType::F32, ReduceOp::Sum).unwrap();
        let value = |rank: usize, i: usize| ((i * 31 + rank * 17) % 257) as f32 - 128.0;
        let inputs: Vec<Vec<u8>> = (0..n)
            .map(|r| (0..count).flat_map(|i| value(r, i).to_le_bytes()).collect())
            .collect();
        let out = run(algo, red, &inputs, 256 * 1024, window);
        for (rank, (got, _)) in out.iter().enumerate() {
            assert_eq!(got.len(), count * 4);
            for (i, g) in got.chunks_exact(4).enumerate() {
                let g = f32::from_le_bytes([g[0], g[1], g[2], g[3]]);
                let expect: f32 = (0..n).map(|r| value(r, i)).sum();
                assert!(
                    g == expect,
                    "{algo} n={n} window {window} rank {rank} elem {i}: {g} != {expect}"
                );
            }
        }
    }

    #[test]
    fn one_million_elements_naive() {
        one_million(AllReduceAlgo::Naive, 4, UNBOUNDED);
        one_million(AllReduceAlgo::Naive, 5, 600 * 1024);
        one_million(AllReduceAlgo::Naive, 4, 0);
    }

    #[test]
    fn one_million_elements_ring() {
        one_million(AllReduceAlgo::Ring, 4, UNBOUNDED);
        one_million(AllReduceAlgo::Ring, 5, 600 * 1024);
        one_million(AllReduceAlgo::Ring, 4, 0);
    }

    #[test]
    fn one_million_elements_tree() {
        one_million(AllReduceAlgo::Tree, 4, UNBOUNDED);
        one_million(AllReduceAlgo::Tree, 5, 600 * 1024);
        one_million(AllReduceAlgo::Tree, 4, 0);
    }

    #[test]
    fn one_million_elements_recursive_doubling() {
        one_million(AllReduceAlgo::RecursiveDoubling, 4, UNBOUNDED);
        one_million(AllReduceAlgo::RecursiveDoubling, 5, 600 * 1024);
        one_million(AllReduceAlgo::RecursiveDoubling, 6, 0);
    }

    #[test]
    fn one_million_elements_rabenseifner() {
        one_million(AllReduceAlgo::Rabenseifner, 4, UNBOUNDED);
        one_million(AllReduceAlgo::Rabenseifner, 5, 600 * 1024);
        one_million(AllReduceAlgo::Rabenseifner, 6, 0);
    }

    #[test]
    fn one_million_elements_double_binary_tree() {
        one_million(AllReduceAlgo::DoubleBinaryTree, 4, UNBOUNDED);
        one_million(AllReduceAlgo::DoubleBinaryTree, 5, 600 * 1024);
        one_million(AllReduceAlgo::DoubleBinaryTree, 6, 0);
    }
}
