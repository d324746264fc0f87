//! Reduce: after the call the root's `buf` holds the reduction of every rank's `buf`.
//!
//! Terms: `n` ranks, `m = buf.len()` bytes, *segment* = the pipelining unit of at most `seg`
//! bytes, cut at whole elements by [`layout::segments`], `S = ceil(m / seg)` segments. Relative
//! rank `v = (rank - root) mod n`.
//!
//! ## Binomial tree ([`binomial`])
//! The tree of [`broadcast::binomial`](super::broadcast), run upward: the children of `v` are
//! `v + 2^j` for `2^j` below the lowest set bit of `v` (any `2^j < n` for the root) and
//! `v + 2^j < n`; the parent of `v` is `v` with its lowest set bit cleared. For each segment, in
//! order, a rank receives its children's partial results smallest subtree first (they finish
//! first), combines each into its own buffer, and sends the result to its parent, so the upper
//! levels reduce segment `i` while the leaves already send segment `i + 1`.
//!
//! **Combine order** (fixed, whatever the timing): with `x_v` the input of relative rank `v`,
//! `R(v) = (((x_v op R(v+1)) op R(v+2)) op R(v+4)) ...` over `v`'s children, and the root gets
//! `R(0)`. By associativity alone this is `x_0 op x_1 op ... op x_(n-1)` in relative-rank order,
//! bracketed as a binomial tree; the bits of a float result depend only on `n` and `root`.
//!
//! Bytes on the wire: every non-root sends `m`; a rank with `c` children receives and combines
//! `c * m` (the root `ceil(log2 n) * m`). Cost: unsegmented
//! `ceil(log2 n) * (alpha + m beta + m gamma)`; segmented about
//! `(S + ceil(log2 n) - 1) * ceil(log2 n) * (alpha + (m/S)(beta + gamma))`.
//!
//! ## Rabenseifner ([`rabenseifner`])
//! Recursive-halving reduce-scatter among the ranks (after folding a world that is not a power
//! of two onto one that is), then a binomial gather of the reduced blocks to the root; the root
//! gets the bits of [`allreduce::rabenseifner`](super::allreduce::rabenseifner). Unsegmented.
//! Cost, `n` a power of two: `2 log2(n) alpha + 2(n-1)/n m beta + (n-1)/n m gamma`. The
//! halving's exchanges are `send_recv`s; every plain send is the contract's exception (schedule,
//! combine order and flow control in `rabenseifner.rs`).
//!
//! ## Flow control
//! The binomial tree is acyclic: data flows only toward the root, and no rank sends to a child.
//! There is no cycle of senders, so plain sends are safe at any size and window (the channel
//! contract's rule): a child's send waits at most until its parent posts the receive from it, and
//! the parent posts its receives in a fixed order (children ascending, segment by segment), waiting
//! only on its children, which wait only on theirs, down to the leaves, which only send.

use super::broadcast::BinomialTree;
use crate::channel::Channel;
use crate::layout;
use crate::reduce::Reducer;

/// Binomial-tree reduce to `root` (see the module doc for the schedule and the combine order).
///
/// On return the root's `buf` holds the reduction; every other rank's `buf` holds a partial result
/// (scratch). `Avg` is combined as a sum: the caller divides afterwards.
///
/// Preconditions (checked by the communicator): every rank passes the same `root < size`, `seg`,
/// reducer and a `buf` of the same length, a whole number of elements.
pub fn binomial<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    root: usize,
    red: &Reducer,
    seg: usize,
) -> Result<(), C::Error> {
    let elem = red.dtype().size();
    debug_assert_eq!(buf.len() % elem, 0, "reduce: partial element");
    let tree = BinomialTree::new(ch.rank(), ch.size(), root);
    for s in layout::segments(0..buf.len(), seg, elem) {
        for &child in &tree.children {
            ch.recv_reduce(child, &mut buf[s.clone()], red)?;
        }
        if let Some(parent) = tree.parent {
            ch.send(parent, &buf[s])?;
        }
    }
    Ok(())
}

/// Rabenseifner's reduce: recursive-halving reduce-scatter among the ranks, then a binomial
/// gather of the reduced blocks to `root`, with the fold for a world that is not a power of two
/// (schedule, combine order and flow control in `rabenseifner.rs`; the root gets the same bits
/// as [`allreduce::rabenseifner`](super::allreduce::rabenseifner)). Unsegmented.
///
/// Cost, `n` a power of two: `2 log2(n) alpha + 2(n-1)/n m beta + (n-1)/n m gamma` (against the
/// binomial tree's `log2(n) (alpha + m beta + m gamma)`: the root receives and combines `(n-1)/n m`
/// bytes instead of `log2(n) m`); otherwise the fold adds `alpha + m beta + m gamma`, and
/// `alpha + m beta` when the root is an extra. Window rule: the halving exchanges are
/// `send_recv`s with one partner; the fold's and the gather's plain sends are the contract's
/// exceptions (each is the sender's last message after its last receive, or an extra's buffer
/// from which the result it receives next is computed).
///
/// Preconditions: as for [`binomial`] (`seg` aside).
pub fn rabenseifner<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    root: usize,
    red: &Reducer,
) -> Result<(), C::Error> {
    super::rabenseifner::reduce(ch, buf, root, red)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{
        elem_count, exact_reducer, fold_in_rank_order, run_cluster_with_window, seg_bytes, window,
        Rng, UNBOUNDED,
    };
    use crate::dtype::DType;
    use crate::reduce::ReduceOp;
    use proptest::prelude::*;

    /// The documented combine order: `R(v) = ((x_v op R(c1)) op R(c2)) ...`, children ascending.
    fn tree_order(red: &Reducer, inputs: &[Vec<u8>], rank: usize, root: usize) -> Vec<u8> {
        let mut acc = inputs[rank].clone();
        for &child in &BinomialTree::new(rank, inputs.len(), root).children {
            red.combine(&mut acc, &tree_order(red, inputs, child, root));
        }
        acc
    }

    /// Runs the reduce and returns the root's result.
    fn run(red: Reducer, inputs: &[Vec<u8>], root: usize, seg: usize, window: usize) -> Vec<u8> {
        let out = run_cluster_with_window(inputs.len(), window, |ch| {
            let mut buf = inputs[ch.rank()].clone();
            binomial(ch, &mut buf, root, &red, seg).map(|()| buf)
        });
        out.into_iter().nth(root).unwrap().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn root_gets_the_reduction(
            n in 1usize..=9,
            count in elem_count(),
            red in exact_reducer(),
            root in any::<prop::sample::Index>(),
            seg in seg_bytes(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let inputs: Vec<_> = (0..n).map(|_| rng.exact_elems(&red, count)).collect();
            let root = root.index(n);
            let got = run(red, &inputs, root, seg, window);
            prop_assert_eq!(got, fold_in_rank_order(&red, &inputs));
        }

        #[test]
        fn float_sum_follows_the_documented_order(
            n in 1usize..=9,
            count in elem_count(),
            root in any::<prop::sample::Index>(),
            seg in seg_bytes(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let red = Reducer::new(DType::F32, ReduceOp::Sum).unwrap();
            let mut rng = Rng::new(seed);
            let inputs: Vec<_> = (0..n).map(|_| rng.rough_f32(count)).collect();
            let root = root.index(n);
            let got = run(red, &inputs, root, seg, window);
            prop_assert_eq!(got, tree_order(&red, &inputs, root, root));
        }
    }

    #[test]
    fn tree_order_differs_from_rank_order_on_floats() {
        // Guards the test above: the reference must be sensitive to the order it encodes.
        let red = Reducer::new(DType::F32, ReduceOp::Sum).unwrap();
        let mut rng = Rng::new(7);
        let inputs: Vec<_> = (0..7).map(|_| rng.rough_f32(4096)).collect();
        let got = run(red, &inputs, 2, 1000, UNBOUNDED);
        assert_eq!(got, tree_order(&red, &inputs, 2, 2));
        assert_ne!(got, fold_in_rank_order(&red, &inputs));
    }
}
