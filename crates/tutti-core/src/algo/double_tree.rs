//! The double binary tree all-reduce
//! ([`allreduce::double_binary_tree`](super::allreduce::double_binary_tree)), after NCCL's.
//!
//! Terms: `n` ranks, `m = buf.len()` bytes, split into two *halves* of near-equal whole elements
//! ([`layout::even_chunks`] into 2); a *segment* is the pipelining unit of at most `seg` bytes,
//! cut at whole elements by [`layout::segments`]; `S = ceil(m / (2 seg))` segments per half.
//!
//! ## The trees
//! **Tree A** is an in-order binary tree over *positions* `0..n` (a node's left subtree holds
//! smaller positions, its right subtree larger ones). Position `i > 0` with lowest set bit `b`
//! sits at height `log2 b`: its children are `i - b/2` (left, when `b >= 2`) and `i + b'` (right)
//! with `b'` the largest power of two `<= b/2` such that `i + b' < n`; its parent is
//! `(i XOR b) OR 2b` (clear `b`, set `2b`) if that is `< n`, else `i - b`. Position 0 is the root,
//! with the single child `P`, the largest power of two `< n`. So the odd positions are the
//! leaves, and the depth is `D = ceil(log2 n)`. Tree A puts rank `r` at position `r`.
//!
//! **Tree B** is the same shape over other positions: rank `r` sits at position `n - 1 - r` (the
//! mirror) when `n` is even, at `r - 1 mod n` (a shift) when `n` is odd. Its leaves are then the
//! even ranks (but rank 0 for odd `n`), the leaves of A the odd ranks: each rank is a leaf in one
//! tree and interior in the other (for odd `n`, rank 0 is interior in both), so the two trees
//! share the sending and combining load evenly.
//!
//! ## Schedule
//! Half 0 is all-reduced over tree A, half 1 over tree B, each as a **reduce** to its tree's root
//! then a **broadcast** from it. Four phases, one after another on each rank: reduce A, reduce B,
//! broadcast A, broadcast B; a rank that finishes a phase early (a leaf) goes on to the next
//! while the other tree is still busy. Each phase is pipelined by segments: in a reduce, for each
//! segment in order, a rank receives and combines its children's partial results (left first)
//! and sends the result to its parent; in a broadcast, it receives each segment from its parent
//! and sends it to its children (left first).
//!
//! **Combine order.** At the node of position `i` with input `x_i`:
//! `R(i) = (x_i op R(left)) op R(right)` (missing children skipped); the root's `R` is the
//! result, which the broadcast copies to every rank: every rank holds the same bits, whatever
//! the operands. The bracketing depends only on `n` (not on the segment size or the timing).
//! `Avg` is combined as a sum; the caller divides once at the end.
//!
//! ## Bytes and cost
//! A rank with two children in one tree and none in the other sends `m/2` (up) `+ m` (down) in
//! the first and `m/2` (up) in the second, `2m` in all, receives as much, and combines `m` bytes
//! (the ring sends and receives `2(n-1)/n m`). Each phase is a pipeline of `D + S - 1` rounds in
//! which a rank moves at most two segments, so, the four phases one after another:
//! `T <= 8(D + S - 1) alpha + 4(D + S - 1) m/(2S) beta + 2(D + S - 1) m/(2S) gamma`, which for
//! `S >> D` is about `8 S alpha + 2 m beta + m gamma` (with full-duplex links; the phases of
//! different ranks overlap, which this bound ignores), and unsegmented (`S = 1`)
//! `8 D alpha + 2 D m beta + D m gamma`. Unlike NCCL, the two trees do not run concurrently on
//! one rank: the reduce and broadcast of a tree do not overlap either.
//!
//! ## Flow control
//! Each phase is acyclic: in a reduce data flows only toward the root, in a broadcast only away
//! from it, so plain sends are safe at any size and window (the channel contract's rule: trees
//! need no pairing). A sequence of acyclic phases cannot deadlock either: take the earliest
//! phase any waiting rank is in; a rank waits there only for a peer's matching operation of the
//! same phase (a peer in a later phase has done all of its operations of that phase, including
//! the matching one), so the waiting would be a cycle within one acyclic phase. A send may wait
//! on bytes of an earlier phase still unreceived in the window; they are received by a rank that
//! is in that earlier phase, which never waits for the later one.

use crate::channel::Channel;
use crate::layout;
use crate::reduce::Reducer;
use std::ops::Range;

/// Double binary tree all-reduce of `buf`, segments of at most `seg` bytes (see the module doc).
/// `Avg` is combined as a sum.
///
/// Preconditions: every rank passes the same reducer, `seg` and a `buf` of the same length, a
/// whole number of elements.
pub(crate) fn all_reduce<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    red: &Reducer,
    seg: usize,
) -> Result<(), C::Error> {
    let elem = red.dtype().size();
    debug_assert_eq!(buf.len() % elem, 0, "double_binary_tree: partial element");
    let halves = layout::even_chunks(buf.len() / elem, 2, elem);
    let (rank, n) = (ch.rank(), ch.size());
    let trees = [TreeNode::in_tree_a(rank, n), TreeNode::in_tree_b(rank, n)];
    let pipe = |half: usize| Pipe {
        range: halves[half].clone(),
        seg,
        elem,
    };
    for (half, tree) in trees.iter().enumerate() {
        reduce_up(ch, buf, tree, &pipe(half), red)?;
    }
    for (half, tree) in trees.iter().enumerate() {
        broadcast_down(ch, buf, tree, &pipe(half))?;
    }
    Ok(())
}

/// The part of the buffer one tree handles, and how it is cut into segments.
struct Pipe {
    range: Range<usize>,
    seg: usize,
    elem: usize,
}

impl Pipe {
    fn segments(&self) -> impl Iterator<Item = Range<usize>> {
        layout::segments(self.range.clone(), self.seg, self.elem)
    }
}

/// Reduces `pipe`'s bytes toward the root of `tree`, segment by segment.
fn reduce_up<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    tree: &TreeNode,
    pipe: &Pipe,
    red: &Reducer,
) -> Result<(), C::Error> {
    for s in pipe.segments() {
        for &child in &tree.children {
            ch.recv_reduce(child, &mut buf[s.clone()], red)?; // x_i op R(left), then op R(right)
        }
        if let Some(parent) = tree.parent {
            ch.send(parent, &buf[s])?;
        }
    }
    Ok(())
}

/// Copies `pipe`'s bytes from the root of `tree` down to every rank, segment by segment.
fn broadcast_down<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    tree: &TreeNode,
    pipe: &Pipe,
) -> Result<(), C::Error> {
    for s in pipe.segments() {
        if let Some(parent) = tree.parent {
            ch.recv(parent, &mut buf[s.clone()])?;
        }
        for &child in &tree.children {
            ch.send(child, &buf[s.clone()])?;
        }
    }
    Ok(())
}

/// One rank's place in one of the two trees: ranks, children left first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TreeNode {
    pub(crate) parent: Option<usize>,
    pub(crate) children: Vec<usize>,
}

impl TreeNode {
    /// Rank `rank`'s place in tree A (position = rank).
    pub(crate) fn in_tree_a(rank: usize, n: usize) -> TreeNode {
        TreeNode::at_position(rank, n, |p| p)
    }

    /// Rank `rank`'s place in tree B (mirrored for even `n`, shifted by one for odd `n`).
    pub(crate) fn in_tree_b(rank: usize, n: usize) -> TreeNode {
        if n.is_multiple_of(2) {
            TreeNode::at_position(n - 1 - rank, n, |p| n - 1 - p)
        } else {
            TreeNode::at_position((rank + n - 1) % n, n, |p| (p + 1) % n)
        }
    }

    /// The node at `position` of the in-order tree over `n` positions, named by `rank_at`.
    fn at_position(position: usize, n: usize, rank_at: impl Fn(usize) -> usize) -> TreeNode {
        TreeNode {
            parent: parent_position(position, n).map(&rank_at),
            children: child_positions(position, n).map(&rank_at).collect(),
        }
    }
}

/// The parent of position `i` in the in-order tree over `n` positions (see the module doc).
fn parent_position(i: usize, n: usize) -> Option<usize> {
    if i == 0 {
        return None;
    }
    let low = i & i.wrapping_neg();
    let up = (i ^ low) | (low << 1);
    Some(if up < n { up } else { i - low })
}

/// The children of position `i`, left first (see the module doc).
fn child_positions(i: usize, n: usize) -> impl Iterator<Item = usize> {
    // The root acts as if its lowest set bit were the power of two >= n.
    let low = if i == 0 {
        n.next_power_of_two()
    } else {
        i & i.wrapping_neg()
    };
    let left = (i > 0 && low >= 2).then(|| i - low / 2);
    let mut reach = low / 2;
    while reach > 0 && i + reach >= n {
        reach /= 2;
    }
    let right = (reach > 0).then_some(i + reach);
    left.into_iter().chain(right)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{
        any_reducer, fold_in_rank_order, run_cluster_with_window, seg_bytes, window, Rng, Stats,
        UNBOUNDED,
    };
    use crate::dtype::DType;
    use crate::reduce::ReduceOp;
    use proptest::prelude::*;

    fn trees(n: usize) -> [Vec<TreeNode>; 2] {
        [
            (0..n).map(|r| TreeNode::in_tree_a(r, n)).collect(),
            (0..n).map(|r| TreeNode::in_tree_b(r, n)).collect(),
        ]
    }

    /// The documented combine order over one tree: `R(i) = (x_i op R(left)) op R(right)`.
    fn tree_order(red: &Reducer, inputs: &[Vec<u8>], tree: &[TreeNode], rank: usize) -> Vec<u8> {
        let mut acc = inputs[rank].clone();
        for &child in &tree[rank].children {
            red.combine(&mut acc, &tree_order(red, inputs, tree, child));
        }
        acc
    }

    /// Half 0 in tree A's order, half 1 in tree B's.
    fn documented_order(red: &Reducer, inputs: &[Vec<u8>]) -> Vec<u8> {
        let elem = red.dtype().size();
        let halves = layout::even_chunks(inputs[0].len() / elem, 2, elem);
        let mut out = Vec::new();
        for (tree, half) in trees(inputs.len()).iter().zip(halves) {
            let root = tree.iter().position(|t| t.parent.is_none()).unwrap();
            out.extend_from_slice(&tree_order(red, inputs, tree, root)[half]);
        }
        out
    }

    fn run(red: Reducer, inputs: &[Vec<u8>], seg: usize, window: usize) -> Vec<(Vec<u8>, Stats)> {
        run_cluster_with_window(inputs.len(), window, |ch| {
            let mut buf = inputs[ch.rank()].clone();
            all_reduce(ch, &mut buf, &red, seg).map(|()| (buf, ch.stats()))
        })
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
    }

    #[test]
    fn both_trees_are_trees_and_split_the_leaves() {
        for n in 1..=40 {
            let [a, b] = trees(n);
            for tree in [&a, &b] {
                let roots: Vec<usize> = (0..n).filter(|&r| tree[r].parent.is_none()).collect();
                assert_eq!(roots.len(), 1, "n={n}");
                for (r, node) in tree.iter().enumerate() {
                    assert!(node.children.len() <= 2, "n={n} rank {r}");
                    for &c in &node.children {
                        assert_eq!(tree[c].parent, Some(r), "n={n}: {c} under {r}");
                    }
                    // Every rank reaches the root within ceil(log2 n) hops.
                    let (mut at, mut hops) = (r, 0);
                    while let Some(p) = tree[at].parent {
                        at = p;
                        hops += 1;
                        assert!(hops <= n.next_power_of_two().trailing_zeros(), "n={n}");
                    }
                    assert_eq!(at, roots[0]);
                }
            }
            for r in 0..n {
                if n == 1 {
                    break;
                }
                assert_eq!(a[r].children.is_empty(), r % 2 == 1, "n={n} rank {r} in A");
                let leaf_in_b = b[r].children.is_empty();
                if !(r == 0 && n % 2 == 1) {
                    assert_ne!(a[r].children.is_empty(), leaf_in_b, "n={n} rank {r}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn every_rank_holds_the_bits_of_the_documented_order(
            n in 1usize..=17,
            count in prop_oneof![Just(0usize), Just(1), 2usize..40, Just(1009)],
            red in any_reducer(),
            seg in seg_bytes(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let inputs: Vec<_> = (0..n).map(|_| rng.bytes(count * red.dtype().size())).collect();
            let expect = documented_order(&red, &inputs);
            for (rank, (got, _)) in run(red, &inputs, seg, window).into_iter().enumerate() {
                prop_assert_eq!(&got, &expect, "{} rank {} of {}", red.op(), rank, n);
            }
        }
    }

    #[test]
    fn documented_order_differs_from_rank_order_on_floats() {
        // Guards the test above: the reference must be sensitive to the order it encodes.
        let red = Reducer::new(DType::F32, ReduceOp::Sum).unwrap();
        let mut rng = Rng::new(3);
        let inputs: Vec<_> = (0..7).map(|_| rng.rough_f32(4096)).collect();
        let got = run(red, &inputs, 1000, 0);
        assert_eq!(got[0].0, documented_order(&red, &inputs));
        assert_ne!(got[0].0, fold_in_rank_order(&red, &inputs));
    }

    #[test]
    fn a_rank_sends_twice_its_buffer_when_interior_in_one_tree() {
        // 8 ranks: in tree A rank 2 has children 1 and 3, in tree B (mirrored) it is a leaf.
        let (n, count) = (8, 1000);
        let m = count * 4;
        let red = Reducer::new(DType::I32, ReduceOp::Sum).unwrap();
        let inputs: Vec<_> = (0..n)
            .map(|r| Rng::new(r).exact_elems(&red, count))
            .collect();
        for window in [UNBOUNDED, 0] {
            let out = run(red, &inputs, 500, window);
            let s = out[2].1;
            assert_eq!(s.bytes_sent, 2 * m, "window {window}");
            // Up A and B: 4 segments each; down A to two children: 8.
            assert_eq!(s.messages_sent, 4 + 4 + 8, "window {window}");
        }
    }
}
