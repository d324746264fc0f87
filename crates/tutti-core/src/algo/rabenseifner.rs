//! Recursive halving and its relatives: the reduce-scatter
//! ([`reduce_scatter::recursive_halving`](super::reduce_scatter::recursive_halving)),
//! Rabenseifner's all-reduce ([`allreduce::rabenseifner`](super::allreduce::rabenseifner)) and
//! reduce ([`reduce::rabenseifner`](super::reduce::rabenseifner)).
//!
//! Terms: `n` ranks, `m = buf.len()` bytes, `p` the largest power of two `<= n`, `e = n - p`
//! *extra* ranks, folded onto the `p` *base* ranks exactly as in `recursive_doubling.rs`
//! ([`Fold`]: extra `2i + 1` hands its buffer to its *proxy* `2i`; base ranks have *virtual
//! ranks* `v` in `0..p`, in rank order). The buffer is cut into `p` *blocks*, contiguous and in
//! order, block `v` belonging to virtual rank `v`: for the all-reduce and the reduce the even
//! split of [`layout::even_chunks`] into `p` parts; for the reduce-scatter the caller's `n`
//! per-rank chunks grouped by virtual rank (a proxy's block is its own chunk and its extra's, a
//! base rank's without an extra is its own chunk). A *group* of size `d` is an aligned run of
//! virtual ranks `[g, g + d)` with `g` a multiple of `d`, and its *span* the bytes of its blocks.
//!
//! ## Schedule
//! 1. **Fold** (only if `e > 0`). Each extra sends its whole buffer to its proxy, which combines
//!    it: `x_proxy op x_extra`.
//! 2. **Recursive halving** (reduce-scatter among the base ranks). For `d = p/2, p/4, ..., 1`,
//!    base rank `v` and its partner `v XOR d` each hold the partial results of the group of size
//!    `2d` containing them; each keeps the half (the group of size `d`) containing itself and
//!    hands the partner the other half, in one `send_recv`, and both combine `lower op upper`
//!    (the partial result of the lower virtual rank on the left). Afterwards base rank `v` holds
//!    block `v` reduced over every rank.
//! 3. The three collectives end differently:
//!    - **reduce-scatter**: each proxy sends its extra the extra's chunk;
//!    - **all-reduce**: **recursive doubling all-gather**: for `d = 1, 2, ..., p/2`, `v` and
//!      `v XOR d` swap the spans of their groups of size `d` (one `send_recv`), so every base rank
//!      ends with every block; then each proxy sends its extra the whole result;
//!    - **reduce**: **binomial gather** to the root's virtual rank `w` (the root's, or its proxy's
//!      when the root is an extra): for `d = 1, 2, ..., p/2`, a rank whose `v XOR w` has bit `d`
//!      set sends the span of its group of size `d` to `v XOR d` and stops; the others receive
//!      that span. The proxy of an extra root then sends it the whole result.
//!
//! **Combine order.** With `y_v` the base value of virtual rank `v` (`x_(2v) op x_(2v+1)` for a
//! proxy, `x_(v+e)` otherwise), every element ends as the balanced binary tree over the `y_v` in
//! *bit-reversed* order of `v` (for `p = 4`: `(y_0 op y_2) op (y_1 op y_3)`): the first halving
//! step pairs virtual ranks `p/2` apart, the last adjacent ones, each `lower op upper`. Each block
//! is combined once, on its owner, and only copied from there, so every rank of the all-reduce
//! holds the same bits, and the reduce's root the same bits as the all-reduce, whatever the
//! operands (NaN payloads, signed zeros, f16/bf16 rounding). `Avg` is combined as a sum; the
//! caller divides once at the end.
//!
//! ## Cost
//! For `n` a power of two and even blocks, a base rank sends and receives `(p-1)/p m` bytes in
//! `log2 p` messages in the halving, and combines them; the doubling all-gather and the gather
//! move the same bytes back. Reduce-scatter:
//! `log2(n) alpha + (n-1)/n m beta + (n-1)/n m gamma`; all-reduce and reduce:
//! `2 log2(n) alpha + 2(n-1)/n m beta + (n-1)/n m gamma`. Otherwise, with `L = floor(log2 n)`, the
//! fold adds `alpha + m beta + m gamma` before and `alpha + m beta` (the reduce-scatter: one
//! chunk, `m/n beta`) after, and the halving runs over `p` blocks: `2L` becomes `2L + 2`, the
//! `(n-1)/n` factors `(p-1)/p`, plus the fold's `m`. Unsegmented: one message per step; the upper
//! partner of a halving step receives into a scratch copy of up to `m/2` bytes (to combine
//! `lower op upper`).
//!
//! ## Flow control
//! Every halving and doubling exchange is a `send_recv` with the same peer on both sides: the
//! receive is posted before the send may wait, so the partners of a step (who depend only on
//! each other once both have finished the step before) move any size through any window. The
//! other sends are the channel contract's exceptions and need no pairing: an extra's send of its
//! buffer is the one from whose bytes the next message it receives is computed (or it receives
//! nothing at all: the reduce's extras that are not the root); a proxy's send to its extra, and
//! every send of the gather, come after the sender's last receive of the call (a gathering rank
//! sends once and stops). Between two ranks the messages of one call are in the same order on
//! both ends: a fold pair exchanges only the fold's messages, and a base pair exchanges at most
//! one message each way per phase, phases in the same order on both.

use super::recursive_doubling::{Fold, Role};
use crate::channel::{Channel, RecvInto};
use crate::layout;
use crate::reduce::Reducer;
use std::ops::Range;

/// Recursive-halving reduce-scatter over the per-rank `chunks` (see the module doc): on return
/// `buf[chunks[rank]]` holds that chunk reduced over every rank; the rest of `buf` is scratch.
///
/// Preconditions: `chunks.len() == size`, the chunks are contiguous and in order (as
/// [`layout::even_chunks`] and [`layout::chunks_from_counts`] cut them), whole elements, and
/// every rank passes the same chunks and reducer.
pub(crate) fn reduce_scatter<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    chunks: &[Range<usize>],
    red: &Reducer,
) -> Result<(), C::Error> {
    debug_assert_eq!(
        chunks.len(),
        ch.size(),
        "reduce_scatter: one chunk per rank"
    );
    debug_assert!(contiguous(chunks), "reduce_scatter: chunks out of order");
    let fold = Fold::new(ch.size());
    match fold.role(ch.rank()) {
        Role::Extra { proxy } => {
            ch.send(proxy, buf)?; // our chunk, which we receive next, is computed from it
            ch.recv(proxy, &mut buf[chunks[ch.rank()].clone()])
        }
        Role::Base { v, extra } => {
            fold_in(ch, buf, red, extra)?;
            halve(ch, buf, &blocks_of_chunks(chunks, &fold), red, &fold, v)?;
            match extra {
                // After our last receive.
                Some(extra) => ch.send(extra, &buf[chunks[extra].clone()]),
                None => Ok(()),
            }
        }
    }
}

/// Rabenseifner's all-reduce of `buf` (see the module doc). `Avg` is combined as a sum.
///
/// Preconditions: every rank passes the same reducer and a `buf` of the same length, a whole
/// number of elements.
pub(crate) fn all_reduce<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    red: &Reducer,
) -> Result<(), C::Error> {
    let fold = Fold::new(ch.size());
    match fold.role(ch.rank()) {
        Role::Extra { proxy } => {
            ch.send(proxy, buf)?; // the result we receive next is computed from it
            ch.recv(proxy, buf)
        }
        Role::Base { v, extra } => {
            fold_in(ch, buf, red, extra)?;
            let blocks = even_blocks(buf.len(), red, fold.p);
            halve(ch, buf, &blocks, red, &fold, v)?;
            double(ch, buf, &blocks, &fold, v)?;
            match extra {
                Some(extra) => ch.send(extra, buf), // after our last receive
                None => Ok(()),
            }
        }
    }
}

/// Recursive-halving reduce-scatter then binomial gather to `root` (see the module doc). On
/// return the root's `buf` holds the reduction; every other rank's `buf` is scratch.
///
/// Preconditions: as for [`all_reduce`], plus the same `root < size` on every rank.
pub(crate) fn reduce<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    root: usize,
    red: &Reducer,
) -> Result<(), C::Error> {
    let fold = Fold::new(ch.size());
    let (root_v, root_is_extra) = match fold.role(root) {
        Role::Base { v, .. } => (v, false),
        Role::Extra { proxy } => (proxy / 2, true), // proxy 2v has virtual rank v
    };
    match fold.role(ch.rank()) {
        Role::Extra { proxy } => {
            // If we are the root, the result we receive next is computed from it.
            ch.send(proxy, buf)?;
            if root_is_extra && ch.rank() == root {
                ch.recv(proxy, buf)?;
            }
            Ok(())
        }
        Role::Base { v, extra } => {
            fold_in(ch, buf, red, extra)?;
            let blocks = even_blocks(buf.len(), red, fold.p);
            halve(ch, buf, &blocks, red, &fold, v)?;
            gather(ch, buf, &blocks, &fold, v, root_v)?;
            match extra {
                Some(extra) if extra == root => ch.send(extra, buf), // after our last receive
                _ => Ok(()),
            }
        }
    }
}

/// The fold's receive on a proxy: `x_proxy op x_extra` (the lower rank on the left).
fn fold_in<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    red: &Reducer,
    extra: Option<usize>,
) -> Result<(), C::Error> {
    match extra {
        Some(extra) => ch.recv_reduce(extra, buf, red),
        None => Ok(()),
    }
}

/// Recursive halving among the base ranks, from virtual rank `v`: afterwards `buf[blocks[v]]`
/// holds block `v` reduced over every rank.
fn halve<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    blocks: &[Range<usize>],
    red: &Reducer,
    fold: &Fold,
    v: usize,
) -> Result<(), C::Error> {
    let mut scratch = Vec::new();
    let mut dist = fold.p / 2;
    while dist >= 1 {
        let partner_v = v ^ dist;
        let partner = fold.rank_of(partner_v);
        let keep = span(blocks, group(v, dist));
        let give = span(blocks, group(partner_v, dist));
        if v < partner_v {
            let (data, acc) = layout::split_read_write(buf, give, keep);
            // acc = acc op incoming: lower op upper.
            ch.send_recv(partner, data, partner, RecvInto::Combine(acc, red))?;
        } else {
            scratch.resize(keep.len(), 0);
            ch.send_recv(partner, &buf[give], partner, RecvInto::Copy(&mut scratch))?;
            // incoming op own: lower op upper.
            red.combine(&mut scratch, &buf[keep.clone()]);
            buf[keep].copy_from_slice(&scratch);
        }
        dist /= 2;
    }
    Ok(())
}

/// Recursive-doubling all-gather among the base ranks, from virtual rank `v`, which holds block
/// `v`: afterwards it holds every block.
fn double<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    blocks: &[Range<usize>],
    fold: &Fold,
    v: usize,
) -> Result<(), C::Error> {
    let mut dist = 1;
    while dist < fold.p {
        let partner_v = v ^ dist;
        let mine = span(blocks, group(v, dist));
        let theirs = span(blocks, group(partner_v, dist));
        let (data, into) = layout::split_read_write(buf, mine, theirs);
        ch.send_recv(
            fold.rank_of(partner_v),
            data,
            fold.rank_of(partner_v),
            RecvInto::Copy(into),
        )?;
        dist *= 2;
    }
    Ok(())
}

/// Binomial gather of the blocks among the base ranks to virtual rank `root_v`, from virtual
/// rank `v`, which holds block `v`.
fn gather<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    blocks: &[Range<usize>],
    fold: &Fold,
    v: usize,
    root_v: usize,
) -> Result<(), C::Error> {
    let relative = v ^ root_v;
    let mut dist = 1;
    while dist < fold.p {
        let partner = fold.rank_of(v ^ dist);
        if relative & dist != 0 {
            // Our last message of the call: nothing is received after it.
            return ch.send(partner, &buf[span(blocks, group(v, dist))]);
        }
        ch.recv(partner, &mut buf[span(blocks, group(v ^ dist, dist))])?;
        dist *= 2;
    }
    Ok(())
}

/// The aligned group of `size` virtual ranks containing `v` (`size` a power of two).
fn group(v: usize, size: usize) -> Range<usize> {
    let start = v & !(size - 1);
    start..start + size
}

/// The bytes of the blocks of a non-empty `group` (the blocks are contiguous and in order).
fn span(blocks: &[Range<usize>], group: Range<usize>) -> Range<usize> {
    blocks[group.start].start..blocks[group.end - 1].end
}

/// `p` blocks of near-equal whole elements covering a buffer of `len` bytes.
fn even_blocks(len: usize, red: &Reducer, p: usize) -> Vec<Range<usize>> {
    let elem = red.dtype().size();
    debug_assert_eq!(len % elem, 0, "rabenseifner: partial element");
    layout::even_chunks(len / elem, p, elem)
}

/// The reduce-scatter's blocks: virtual rank `v`'s block is the chunks of the ranks from
/// `rank_of(v)` to `rank_of(v + 1)` (a proxy's and its extra's, or one base rank's).
fn blocks_of_chunks(chunks: &[Range<usize>], fold: &Fold) -> Vec<Range<usize>> {
    let first_rank = |v: usize| {
        if v < fold.p {
            fold.rank_of(v)
        } else {
            chunks.len()
        }
    };
    (0..fold.p)
        .map(|v| chunks[first_rank(v)].start..chunks[first_rank(v + 1) - 1].end)
        .collect()
}

/// Whether the ranges follow each other without gaps, in order.
fn contiguous(chunks: &[Range<usize>]) -> bool {
    chunks.windows(2).all(|w| w[0].end == w[1].start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{
        any_reducer, counts, run_cluster_with_window, window, Rng, Stats, UNBOUNDED,
    };
    use crate::dtype::DType;
    use crate::reduce::ReduceOp;
    use proptest::prelude::*;

    /// The combine order of the module doc, computed sequentially: the fold's pairs, then the
    /// balanced tree over the base values in bit-reversed virtual-rank order.
    pub(crate) fn halving_order(red: &Reducer, inputs: &[Vec<u8>]) -> Vec<u8> {
        let fold = Fold::new(inputs.len());
        let bits = fold.p.trailing_zeros();
        let base_value = |v: usize| {
            let r = fold.rank_of(v);
            let mut y = inputs[r].clone();
            if v < fold.extra {
                red.combine(&mut y, &inputs[r + 1]);
            }
            y
        };
        let mut level: Vec<Vec<u8>> = (0..fold.p)
            .map(|k| base_value(bit_reverse(k, bits)))
            .collect();
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|pair| {
                    let mut a = pair[0].clone();
                    red.combine(&mut a, &pair[1]);
                    a
                })
                .collect();
        }
        level.pop().unwrap_or_default()
    }

    /// `k` with its lowest `bits` bits in reverse order.
    fn bit_reverse(k: usize, bits: u32) -> usize {
        if bits == 0 {
            0
        } else {
            k.reverse_bits() >> (usize::BITS - bits)
        }
    }

    /// Random inputs of `count` elements per rank, arbitrary bits (NaNs, infinities included).
    fn random_inputs(red: &Reducer, n: usize, count: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| rng.bytes(count * red.dtype().size()))
            .collect()
    }

    fn run_all_reduce(red: Reducer, inputs: &[Vec<u8>], window: usize) -> Vec<(Vec<u8>, Stats)> {
        run_cluster_with_window(inputs.len(), window, |ch| {
            let mut buf = inputs[ch.rank()].clone();
            all_reduce(ch, &mut buf, &red).map(|()| (buf, ch.stats()))
        })
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
    }

    fn element_count() -> impl Strategy<Value = usize> {
        prop_oneof![Just(0usize), Just(1), 2usize..40, Just(1009)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn all_reduce_gives_every_rank_the_bits_of_the_documented_order(
            n in 1usize..=17,
            count in element_count(),
            red in any_reducer(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let inputs = random_inputs(&red, n, count, seed);
            let expect = halving_order(&red, &inputs);
            for (rank, (got, _)) in run_all_reduce(red, &inputs, window).into_iter().enumerate() {
                prop_assert_eq!(&got, &expect, "{} rank {} of {}", red.op(), rank, n);
            }
        }

        #[test]
        fn reduce_gives_the_root_the_bits_of_the_documented_order(
            n in 1usize..=17,
            count in element_count(),
            red in any_reducer(),
            root in any::<prop::sample::Index>(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let inputs = random_inputs(&red, n, count, seed);
            let root = root.index(n);
            let out = run_cluster_with_window(n, window, |ch| {
                let mut buf = inputs[ch.rank()].clone();
                reduce(ch, &mut buf, root, &red).map(|()| buf)
            });
            let got = out[root].clone().map_err(TestCaseError::fail)?;
            prop_assert_eq!(got, halving_order(&red, &inputs), "root {} of {}", root, n);
        }

        #[test]
        fn reduce_scatter_gives_each_rank_its_chunk_of_the_documented_order(
            (n, cs) in (1usize..=17).prop_flat_map(|n| (Just(n), counts(n))),
            even in any::<bool>(),
            red in any_reducer(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let elem = red.dtype().size();
            let total: usize = cs.iter().sum();
            let chunks = if even {
                layout::even_chunks(total, n, elem)
            } else {
                layout::chunks_from_counts(&cs, elem)
            };
            let inputs = random_inputs(&red, n, total, seed);
            let expect = halving_order(&red, &inputs);
            let out = run_cluster_with_window(n, window, |ch| {
                let mut buf = inputs[ch.rank()].clone();
                reduce_scatter(ch, &mut buf, &chunks, &red)
                    .map(|()| buf[chunks[ch.rank()].clone()].to_vec())
            });
            for (rank, got) in out.into_iter().enumerate() {
                let got = got.map_err(TestCaseError::fail)?;
                prop_assert_eq!(&got[..], &expect[chunks[rank].clone()], "rank {} of {}", rank, n);
            }
        }
    }

    #[test]
    fn halving_order_differs_from_rank_order_on_floats() {
        // Guards the tests above: the reference must be sensitive to the order it encodes.
        let red = Reducer::new(DType::F32, ReduceOp::Sum).unwrap();
        let mut rng = Rng::new(5);
        let inputs: Vec<_> = (0..8).map(|_| rng.rough_f32(4096)).collect();
        let got = run_all_reduce(red, &inputs, 0);
        assert_eq!(got[0].0, halving_order(&red, &inputs));
        let in_rank_order = crate::algo::test_cluster::fold_in_rank_order(&red, &inputs);
        assert_ne!(got[0].0, in_rank_order);
    }

    #[test]
    fn bytes_and_messages_match_the_docs() {
        // A power of two: (p-1)/p m each way per phase, log2 p messages, all paired.
        let (n, count) = (8, 8 * 100);
        let m = count * 4;
        let red = Reducer::new(DType::U32, ReduceOp::Sum).unwrap();
        let inputs = random_inputs(&red, n, count, 9);
        for window in [UNBOUNDED, 0] {
            for (rank, (_, s)) in run_all_reduce(red, &inputs, window).into_iter().enumerate() {
                let want = Stats {
                    messages_sent: 6,
                    bytes_sent: 2 * 7 * m / 8,
                    plain_sends: 0,
                };
                assert_eq!(s, want, "rank {rank} window {window}");
            }
        }
        // Six ranks: p = 4, ranks 1 and 3 fold into 0 and 2.
        let inputs = random_inputs(&red, 6, count, 9);
        for (rank, (_, s)) in run_all_reduce(red, &inputs, 0).into_iter().enumerate() {
            let (messages, bytes, plain) = match rank {
                1 | 3 => (1, m, 1),
                0 | 2 => (5, 2 * 3 * m / 4 + m, 1),
                _ => (4, 2 * 3 * m / 4, 0),
            };
            let want = Stats {
                messages_sent: messages,
                bytes_sent: bytes,
                plain_sends: plain,
            };
            assert_eq!(s, want, "rank {rank} of 6");
        }
    }

    #[test]
    fn nothing_is_sent_on_one_rank() {
        let red = Reducer::new(DType::I64, ReduceOp::Max).unwrap();
        let input = Rng::new(3).exact_elems(&red, 100);
        let out = run_cluster_with_window(1, 0, |ch| {
            let mut a = input.clone();
            all_reduce(ch, &mut a, &red)?;
            let mut b = input.clone();
            reduce(ch, &mut b, 0, &red)?;
            let mut c = input.clone();
            let whole = layout::even_chunks(c.len() / 8, 1, 8);
            reduce_scatter(ch, &mut c, &whole, &red)?;
            Ok::<_, String>((a == input && b == input && c == input, ch.stats()))
        });
        assert_eq!(out[0], Ok((true, Stats::default())));
    }
}
