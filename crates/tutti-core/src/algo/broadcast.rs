//! Broadcast: after the call every rank's `buf` holds the root's `buf`.
//!
//! Terms: `n` ranks, `m = buf.len()` bytes, *segment* = the pipelining unit of at most `seg`
//! bytes ([`layout::segments`]; broadcast moves bytes without looking at them, so segments are cut
//! at byte granularity), `S = ceil(m / seg)` segments. Ranks are renumbered relative to the root,
//! `v = (rank - root) mod n`, so the root is `v = 0` whatever its absolute rank.
//!
//! ## Binomial tree ([`binomial`])
//! The parent of `v > 0` is `v` with its lowest set bit cleared; the children of `v` are
//! `v + 2^j` for every `2^j` below the lowest set bit of `v` (for the root: every `2^j < n`),
//! when `v + 2^j < n`. The tree has depth `ceil(log2 n)`. For each segment, in order, a rank
//! receives it from its parent (the root has it already) and at once forwards it to its children,
//! largest subtree first, so segment `i + 1` travels down the upper levels while segment `i` is
//! still on its way to the leaves.
//!
//! Bytes on the wire: every non-root receives `m`; a rank with `c` children sends `c * m` (the root
//! `ceil(log2 n) * m`). Cost: unsegmented `ceil(log2 n) * (alpha + m beta)`; segmented, the root's
//! link carries `ceil(log2 n)` copies of every segment, so about
//! `(S + ceil(log2 n) - 1) * ceil(log2 n) * (alpha + (m/S) beta)`: good for small and medium `m`.
//!
//! ## Pipelined chain ([`chain`])
//! `root -> root+1 -> ... -> root-1` (mod n): for each segment, rank `v > 0` receives it from
//! `v - 1` and, unless it is last (`v = n - 1`), forwards it to `v + 1` before taking the next one.
//!
//! Bytes on the wire: every rank but the last sends `m`, every rank but the root receives `m`.
//! Cost: `(n + S - 2) * (alpha + (m/S) beta)`; for `S >> n` this approaches `m beta`, independent
//! of `n` (bandwidth-optimal), at the price of `n - 1` segments of pipeline fill latency.
//!
//! ## Scatter-allgather ([`scatter_allgather`])
//! Van de Geijn's: a binomial scatter of `n` near-equal chunks from the root (each rank gets its
//! subtree's chunks from its parent), then the ring all-gather of
//! [`allgather::ring`](super::allgather::ring).
//! Bytes on the wire: the root sends `(n-1)/n m` in the scatter; every rank sends and receives
//! `(n-1)/n m` in the ring. Cost, unsegmented: `(ceil(log2 n) + n - 1) alpha + 2(n-1)/n m beta`.
//! The scatter is a tree (acyclic) and the ring keeps to the window rule (`ring.rs`); the
//! schedule and why the two phases in sequence cannot deadlock are in `scatter_allgather.rs`.
//!
//! ## Flow control
//! The binomial and chain schedules are acyclic: data flows only away from the root (to children,
//! or to the next rank of the chain, which never reaches the root again), and no rank sends to the
//! rank it receives from. There is no cycle of senders, so plain sends are safe at any size and
//! window (the channel contract's rule): a send waits at most until its receiver posts the receive,
//! and a receiver waits only for its own receivers, down to the leaves (the chain's last rank),
//! which only receive. A small window makes a sender wait for its child to take earlier segments;
//! the segments still pipeline down the tree or chain.

use crate::channel::Channel;
use crate::layout;

/// Binomial-tree broadcast from `root`, segment by segment (see the module doc).
///
/// Preconditions (checked by the communicator): every rank passes the same `root < size`, the same
/// `seg` and a `buf` of the same length.
pub fn binomial<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    root: usize,
    seg: usize,
) -> Result<(), C::Error> {
    let tree = BinomialTree::new(ch.rank(), ch.size(), root);
    for s in layout::segments(0..buf.len(), seg, 1) {
        if let Some(parent) = tree.parent {
            ch.recv(parent, &mut buf[s.clone()])?;
        }
        // Largest subtree first: it has the longest way to go.
        for &child in tree.children.iter().rev() {
            ch.send(child, &buf[s.clone()])?;
        }
    }
    Ok(())
}

/// Pipelined chain broadcast from `root` along increasing ranks (see the module doc).
///
/// Preconditions: as for [`binomial`].
pub fn chain<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    root: usize,
    seg: usize,
) -> Result<(), C::Error> {
    let (rank, n) = (ch.rank(), ch.size());
    let v = (rank + n - root) % n;
    let prev = (rank + n - 1) % n;
    let next = (rank + 1) % n;
    for s in layout::segments(0..buf.len(), seg, 1) {
        if v > 0 {
            ch.recv(prev, &mut buf[s.clone()])?;
        }
        if v + 1 < n {
            ch.send(next, &buf[s])?;
        }
    }
    Ok(())
}

/// Scatter-allgather broadcast from `root` (van de Geijn): a binomial scatter of `n` near-equal
/// chunks of `buf`, then a ring all-gather of them (schedule and flow control in
/// `scatter_allgather.rs`).
///
/// Cost, unsegmented: `(ceil(log2 n) + n - 1) alpha + 2(n-1)/n m beta`: about twice the chain's
/// bytes per link at most, but its pipeline is full from the first step, whatever `m / seg`.
/// Window rule: the scatter is a tree (acyclic: no pairing needed); the ring all-gather keeps at
/// most the window's worth of segments ahead and pairs every later send with a receive.
///
/// Preconditions: as for [`binomial`].
pub fn scatter_allgather<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    root: usize,
    seg: usize,
) -> Result<(), C::Error> {
    super::scatter_allgather::broadcast(ch, buf, root, seg)
}

/// One rank's place in the binomial tree rooted at `root` (shared by broadcast and reduce).
///
/// Invariants: `parent` is `None` exactly for the root; `children` are absolute ranks ordered by
/// increasing relative rank, which is also increasing subtree size (child `v + 2^j` roots a
/// subtree of at most `2^j` ranks); every rank but the root is the child of exactly one rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BinomialTree {
    pub(crate) parent: Option<usize>,
    pub(crate) children: Vec<usize>,
}

impl BinomialTree {
    /// The tree of `size` ranks rooted at `root`, seen from `rank`.
    pub(crate) fn new(rank: usize, size: usize, root: usize) -> BinomialTree {
        let v = (rank + size - root) % size;
        let to_abs = |rel: usize| (rel + root) % size;
        let parent = (v != 0).then(|| to_abs(v & (v - 1)));
        // Children: v + 2^j for 2^j below v's lowest set bit (any 2^j for the root).
        let limit = if v == 0 { size } else { v & v.wrapping_neg() };
        let children = (0..usize::BITS)
            .map(|j| 1usize << j)
            .take_while(|&bit| bit < limit && v + bit < size)
            .map(|bit| to_abs(v + bit))
            .collect();
        BinomialTree { parent, children }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{run_cluster_with_window, window, Rng, TestChannel, UNBOUNDED};
    use proptest::prelude::*;

    /// Runs `algo` on `n` ranks where the root holds random bytes and the others garbage.
    fn check_broadcast(
        n: usize,
        len: usize,
        root: usize,
        seg: usize,
        seed: u64,
        window: usize,
        algo: fn(&mut TestChannel, &mut [u8], usize, usize) -> Result<(), String>,
    ) -> Result<(), TestCaseError> {
        let expect = Rng::new(seed).bytes(len);
        let out = run_cluster_with_window(n, window, |ch| {
            let mut buf = if ch.rank() == root {
                expect.clone()
            } else {
                Rng::new(seed ^ (ch.rank() as u64 + 1)).bytes(len)
            };
            algo(ch, &mut buf, root, seg).map(|()| buf)
        });
        for (rank, got) in out.into_iter().enumerate() {
            let got = got.map_err(TestCaseError::fail)?;
            prop_assert!(
                got == expect,
                "rank {} of {} (root {}) differs",
                rank,
                n,
                root
            );
        }
        Ok(())
    }

    #[test]
    fn tree_has_one_parent_per_nonroot_and_log_rounds() {
        for n in 1..=33 {
            for root in [0, n / 2, n - 1] {
                let trees: Vec<_> = (0..n).map(|r| BinomialTree::new(r, n, root)).collect();
                assert_eq!(trees[root].parent, None);
                for (r, t) in trees.iter().enumerate() {
                    if let Some(p) = t.parent {
                        assert_eq!(trees[p].children.iter().filter(|&&c| c == r).count(), 1);
                    } else {
                        assert_eq!(r, root);
                    }
                }
                let depth = |mut r: usize| {
                    let mut d = 0;
                    while let Some(p) = trees[r].parent {
                        r = p;
                        d += 1;
                    }
                    d
                };
                // Depth of relative rank v = its number of set bits; ceil(log2 n) rounds.
                let rounds = n.next_power_of_two().trailing_zeros() as usize;
                for r in 0..n {
                    let v = (r + n - root) % n;
                    assert_eq!(depth(r), v.count_ones() as usize, "n={n} rank {r}");
                }
                assert_eq!(trees[root].children.len(), rounds, "n={n}");
            }
        }
    }

    #[test]
    fn chain_sends_every_byte_once_per_link() {
        let (n, len, root) = (5, 1000, 3);
        for window in [UNBOUNDED, 0, 200] {
            let sent = run_cluster_with_window(n, window, |ch| {
                let mut buf = vec![7u8; len];
                chain(ch, &mut buf, root, 64).map(|()| ch.stats())
            });
            for (rank, s) in sent.into_iter().enumerate() {
                let s = s.unwrap();
                let last = (root + n - 1) % n;
                let expect = if rank == last { 0 } else { len };
                assert_eq!(s.bytes_sent, expect, "rank {rank}");
                assert_eq!(
                    s.messages_sent,
                    if rank == last { 0 } else { 16 },
                    "rank {rank}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn binomial_delivers_root_data(
            n in 1usize..=9,
            len in crate::algo::test_cluster::byte_len(),
            root in any::<prop::sample::Index>(),
            seg in crate::algo::test_cluster::seg_bytes(),
            window in window(),
            seed in any::<u64>(),
        ) {
            check_broadcast(n, len, root.index(n), seg, seed, window, binomial)?;
        }

        #[test]
        fn chain_delivers_root_data(
            n in 1usize..=9,
            len in crate::algo::test_cluster::byte_len(),
            root in any::<prop::sample::Index>(),
            seg in crate::algo::test_cluster::seg_bytes(),
            window in window(),
            seed in any::<u64>(),
        ) {
            check_broadcast(n, len, root.index(n), seg, seed, window, chain)?;
        }
    }
}
