//! Hierarchical all-reduce and broadcast: ranks that share a host talk among themselves first,
//! and only one rank per host (its *leader*) talks over the network, as in Open MPI's HAN and
//! NCCL's trees.
//!
//! Terms: `n` ranks on `h` hosts ([`Hosts`]), `l` ranks on the largest host, `m = buf.len()`
//! bytes, `S = ceil(m / seg)` segments. The *leader* of a host is its lowest rank. Network links
//! cost `alpha` per message and `beta` per byte, intra-host links (shared memory, or loopback)
//! `alpha_l` and `beta_l`; `gamma` is the per-byte reduction time; `L_l = ceil(log2 l)`,
//! `L_h = ceil(log2 h)`. Every phase runs an existing algorithm of this crate, unchanged, over a
//! [`SubChannel`]: a *host view* (sub-rank `i` is the host's `i`-th rank, ascending; the leader
//! is sub-rank 0) or the *network view* (sub-rank `g` is host `g`'s leader, or for the broadcast
//! its *head*, see below).
//!
//! ## All-reduce ([`all_reduce`])
//! 1. **Intra-host reduce**: [`reduce::binomial`] to the leader over each host view, segmented.
//! 2. **Inter-host all-reduce**: the leaders run `inter` (ring for large buffers, recursive
//!    doubling for small: [`Algorithms::inter_host_all_reduce_for`]) over the network view.
//! 3. **Intra-host broadcast**: [`broadcast::binomial`] from the leader over each host view.
//!
//! *Why reduce to the leader, not reduce-scatter within the host.* A reduce-scatter would let
//! all `l` ranks of a host take part in the network phase (each all-reducing one chunk with its
//! counterparts on the other hosts), which pays off when one rank cannot fill the host's
//! network link. It needs the same number of ranks on every host, though, and tutti's hosts may
//! be uneven; the leader's reduce works for every layout, and its intra-host traffic is cheap
//! next to the network's. Phase 2 is where the time goes, and it moves `m` bytes per host, not
//! per rank.
//!
//! **Combine order** (fixed by the layout alone, the same on every rank): with `x_r` the input of
//! rank `r` and `H_g` host `g`'s partial result, `H_g = x_(g,0) op x_(g,1) op ... op x_(g,k)`
//! over the host's ranks in ascending order, bracketed as [`reduce::binomial`]'s tree rooted at
//! the leader; the result is `H_0 op H_1 op ... op H_(h-1)` over hosts in order of their leaders,
//! bracketed as `inter` brackets its `h` inputs (in rank order for naive, tree and recursive
//! doubling; for the ring, per chunk, starting after the chunk's owner: see their docs). Phase
//! 2 gives every leader the same bits (a property of every `inter`), and phase 3 copies them:
//! every rank holds bit-identical results. `Avg` is combined as a sum; the caller divides by `n`.
//!
//! **Cost**, unsegmented intra-host phases: `2 L_l alpha_l + 2 L_l m beta_l + L_l m gamma`, plus
//! phase 2: with the ring `2(h-1) alpha + 2(h-1)/h m beta + (h-1)/h m gamma`, with recursive
//! doubling `L_h (alpha + m beta + m gamma)` (one step more when `h` is not a power of two).
//! Segmented, the intra-host phases take about `(S + L_l - 1) L_l (alpha_l + (m/S) beta_l)`
//! each, plus `(m/S) gamma` per step for the reduce. Against a flat algorithm over all `n = h l`
//! ranks, the network carries `2(h-1)` ring steps instead of `2(n-1)` (or `L_h` doubling steps
//! instead of `ceil(log2 n)`), and each host's link one stream of `2(h-1)/h m` bytes however its
//! ranks are numbered (a flat ring over ranks that alternate hosts crosses the network at every
//! step).
//!
//! ## Broadcast ([`broadcast()`])
//! The root's host goes first: each host's *head* is its leader, except that the root is the
//! head of its own host. 1. **Inter-host**: [`broadcast::chain`] from the root over the heads (the
//! network view, hosts in order), segmented. 2. **Intra-host**: [`broadcast::binomial`] from the
//! head over each host view. Cost: `(h + S - 2)(alpha + (m/S) beta)` (bandwidth-optimal over the
//! network: every host's link carries `m` once) plus `(S + L_l - 1) L_l (alpha_l + (m/S) beta_l)`
//! (unsegmented `L_l (alpha_l + m beta_l)`). Every rank but the root receives the root's bytes
//! once, from exactly one rank: bit-identical copies.
//!
//! ## Flat layouts
//! With one host, the all-reduce is [`allreduce::tree`] and the broadcast
//! [`broadcast::binomial`]; with every rank alone, the all-reduce is `inter` over all ranks and
//! the broadcast [`broadcast::chain`]. So forcing `hierarchical` without a topology works: the
//! communicator passes [`Hosts::one_per_rank`] and gets the flat algorithm
//! ([`Algorithms::all_reduce_for_hosts`] never picks it under `auto` for a flat layout).
//!
//! ## Why the phases cannot cross-match or deadlock
//! All phases use the same channel in sequence, so what matters is which *directed pairs*
//! (sender, receiver) each phase uses:
//! - Phases 1 and 3 (and the broadcast's phase 2) connect only ranks of one host; the network
//!   phase connects only heads (leaders) of different hosts. A host has exactly one leader (one
//!   head), so two ranks of one host are never both in the network phase, and two ranks of
//!   different hosts never meet in a host phase.
//! - Between a leader and a member, or two members, of one host: the reduce sends only toward
//!   the leader (to the parent, whose sub-rank is lower: `v` with its lowest bit cleared), and
//!   the broadcast only away from it (to children, `v + 2^j`, higher). As sub-ranks ascend with
//!   ranks, phase 1 sends from the higher rank to the lower, phase 3 from the lower to the
//!   higher.
//!
//! So every directed pair carries the messages of one phase only. *No cross-matching*: a
//! receive of one phase can only take a message of the same phase, and each phase's algorithm
//! matches its own sends and receives (order and sizes per pair, contract 2 and 3). *No
//! deadlock*: each phase has the whole window of every pair it uses to itself (no bytes of
//! another phase are ever unreceived there), so it keeps the channel contract's rule as its own
//! module doc shows; and the phases wait on each other in one direction only. Each host's
//! phase 1 involves only its own ranks, all of which start there, and is acyclic: it completes.
//! Then every leader enters phase 2; a rank that is not a leader meanwhile only waits to receive
//! (phase 3), which holds up no sender. Phase 2 completes (its algorithm's argument, on the
//! leaders alone), then each leader runs phase 3, acyclic, which completes. The broadcast is
//! acyclic as a whole: every rank but the root receives from exactly one rank, in one phase.

use super::sub::SubChannel;
#[cfg(doc)]
use super::Algorithms;
use super::{allreduce, broadcast, reduce, AllReduceAlgo};
use crate::channel::Channel;
use crate::reduce::Reducer;
use std::collections::HashMap;
use std::hash::Hash;

/// Which ranks share a host.
///
/// Invariants: hosts are numbered `0..num_hosts()` in order of their lowest rank; each host's
/// [`members`](Hosts::members) are ascending, non-empty, and every rank `0..size()` is a member
/// of exactly one host; host `g`'s leader is `members(g)[0]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hosts {
    /// `host_of[r]`: rank `r`'s host.
    host_of: Vec<usize>,
    /// The members of host 0, then of host 1, ... (each ascending).
    ranks: Vec<usize>,
    /// Host `g`'s members are `ranks[starts[g]..starts[g + 1]]`.
    starts: Vec<usize>,
    /// `leaders[g] = ranks[starts[g]]`.
    leaders: Vec<usize>,
}

impl Hosts {
    /// Groups ranks by equal key: `keys[r]` names rank `r`'s host (a host index, a host name,
    /// an address). Every rank must build it from the same keys.
    pub fn from_keys<K: Eq + Hash>(keys: impl IntoIterator<Item = K>) -> Hosts {
        // Numbering keys by first occurrence numbers hosts by their lowest rank.
        let mut index: HashMap<K, usize> = HashMap::new();
        let host_of: Vec<usize> = keys
            .into_iter()
            .map(|k| {
                let next = index.len();
                *index.entry(k).or_insert(next)
            })
            .collect();
        let mut starts = vec![0; index.len() + 1];
        for &g in &host_of {
            starts[g + 1] += 1;
        }
        for g in 0..index.len() {
            starts[g + 1] += starts[g];
        }
        let mut fill = starts.clone();
        let mut ranks = vec![0; host_of.len()];
        for (r, &g) in host_of.iter().enumerate() {
            ranks[fill[g]] = r;
            fill[g] += 1;
        }
        let leaders = starts[..index.len()].iter().map(|&s| ranks[s]).collect();
        Hosts {
            host_of,
            ranks,
            starts,
            leaders,
        }
    }

    /// From a per-rank host index (any numbering: ranks with equal values share a host).
    pub fn from_host_ids(ids: &[u32]) -> Hosts {
        Hosts::from_keys(ids.iter().copied())
    }

    /// All `n` ranks on one host.
    pub fn single_host(n: usize) -> Hosts {
        Hosts::from_keys(std::iter::repeat_n((), n))
    }

    /// Every one of `n` ranks alone on its host (no topology known).
    pub fn one_per_rank(n: usize) -> Hosts {
        Hosts::from_keys(0..n)
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.host_of.len()
    }

    /// The number of hosts.
    pub fn num_hosts(&self) -> usize {
        self.leaders.len()
    }

    /// The host of `rank`.
    ///
    /// # Panics
    /// If `rank >= size()`.
    pub fn host_of(&self, rank: usize) -> usize {
        self.host_of[rank]
    }

    /// The ranks of `host`, ascending (the first is its leader).
    ///
    /// # Panics
    /// If `host >= num_hosts()`.
    pub fn members(&self, host: usize) -> &[usize] {
        &self.ranks[self.starts[host]..self.starts[host + 1]]
    }

    /// Every host's leader (its lowest rank), in host order, which is ascending.
    pub fn leaders(&self) -> &[usize] {
        &self.leaders
    }

    /// Whether a hierarchical algorithm differs from a flat one: more than one host, and at
    /// least one host with more than one rank.
    pub fn is_hierarchical(&self) -> bool {
        1 < self.num_hosts() && self.num_hosts() < self.size()
    }
}

/// Hierarchical all-reduce: reduce within each host to its leader, `inter` among the leaders,
/// broadcast within each host (see the module doc for the schedule, cost and combine order).
/// `Avg` is combined as a sum: the caller divides afterwards.
///
/// Preconditions (checked by the communicator): every rank passes the same reducer, `seg`,
/// `inter`, equal `hosts` with `hosts.size() == ch.size()`, and a `buf` of the same length, a
/// whole number of elements.
///
/// # Panics
/// If `hosts` does not have `ch.size()` ranks, or if `inter` is `Auto` or `Hierarchical`
/// (resolve it first: [`Algorithms::inter_host_all_reduce_for`]). Every rank panics alike,
/// before it sends anything.
pub fn all_reduce<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    red: &Reducer,
    hosts: &Hosts,
    seg: usize,
    inter: AllReduceAlgo,
) -> Result<(), C::Error> {
    assert_eq!(
        hosts.size(),
        ch.size(),
        "hierarchical: hosts of another world"
    );
    assert!(
        !matches!(inter, AllReduceAlgo::Auto | AllReduceAlgo::Hierarchical),
        "hierarchical: the inter-host algorithm {inter} is not resolved"
    );
    let me = ch.rank();
    let members = hosts.members(hosts.host_of(me));
    reduce::binomial(&mut host_view(ch, members), buf, 0, red, seg)?;
    if members[0] == me {
        let net = &mut SubChannel::new(&mut *ch, hosts.leaders()).expect("a leader leads");
        match inter {
            AllReduceAlgo::Naive => allreduce::naive(net, buf, red)?,
            AllReduceAlgo::Ring => allreduce::ring(net, buf, red, seg)?,
            AllReduceAlgo::Tree => allreduce::tree(net, buf, red, seg)?,
            AllReduceAlgo::RecursiveDoubling => allreduce::recursive_doubling(net, buf, red)?,
            AllReduceAlgo::Rabenseifner => allreduce::rabenseifner(net, buf, red)?,
            AllReduceAlgo::DoubleBinaryTree => allreduce::double_binary_tree(net, buf, red, seg)?,
            AllReduceAlgo::Auto | AllReduceAlgo::Hierarchical => unreachable!("checked above"),
        }
    }
    broadcast::binomial(&mut host_view(ch, members), buf, 0, seg)
}

/// Hierarchical broadcast from `root`: a chain over the hosts' heads (the root for its own host,
/// the leader for the others), then a binomial tree within each host from its head (see the
/// module doc).
///
/// Preconditions: every rank passes the same `root < size`, `seg`, equal `hosts` with
/// `hosts.size() == ch.size()`, and a `buf` of the same length.
///
/// # Panics
/// If `hosts` does not have `ch.size()` ranks.
pub fn broadcast<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    root: usize,
    hosts: &Hosts,
    seg: usize,
) -> Result<(), C::Error> {
    assert_eq!(
        hosts.size(),
        ch.size(),
        "hierarchical: hosts of another world"
    );
    let root_host = hosts.host_of(root);
    let mut heads = hosts.leaders().to_vec();
    heads[root_host] = root;
    let me = ch.rank();
    let host = hosts.host_of(me);
    let head = heads[host];
    if me == head {
        let net = &mut SubChannel::new(&mut *ch, &heads).expect("a head is a head");
        broadcast::chain(net, buf, root_host, seg)?;
    }
    let members = hosts.members(host);
    let local_root = members
        .iter()
        .position(|&r| r == head)
        .expect("a head is a member");
    broadcast::binomial(&mut host_view(ch, members), buf, local_root, seg)
}

/// This rank's host view.
fn host_view<'a, C: Channel>(ch: &'a mut C, members: &'a [usize]) -> SubChannel<'a, C> {
    SubChannel::new(ch, members).expect("a rank is a member of its host")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::broadcast::BinomialTree;
    use crate::algo::test_cluster::{
        byte_len, elem_count, exact_reducer, fold_in_rank_order, run_cluster_with_window,
        seg_bytes, window, Rng, Stats, UNBOUNDED,
    };
    use crate::dtype::DType;
    use crate::reduce::ReduceOp;
    use proptest::prelude::*;

    /// The inter-host algorithms `all_reduce` takes.
    const INTER: [AllReduceAlgo; 4] = [
        AllReduceAlgo::Naive,
        AllReduceAlgo::Ring,
        AllReduceAlgo::Tree,
        AllReduceAlgo::RecursiveDoubling,
    ];

    /// 1 to 12 ranks, each on one of up to 4 hosts at random (uneven, non-contiguous).
    fn layout() -> impl Strategy<Value = Hosts> {
        (1usize..=12)
            .prop_flat_map(|n| prop::collection::vec(0u32..4, n))
            .prop_map(|ids| Hosts::from_host_ids(&ids))
    }

    /// Runs the all-reduce on one input per rank; returns every rank's result and what it sent.
    fn run(
        red: Reducer,
        hosts: &Hosts,
        inputs: &[Vec<u8>],
        seg: usize,
        window: usize,
        inter: AllReduceAlgo,
    ) -> Vec<(Vec<u8>, Stats)> {
        run_cluster_with_window(inputs.len(), window, |ch| {
            let mut buf = inputs[ch.rank()].clone();
            all_reduce(ch, &mut buf, &red, hosts, seg, inter).map(|()| (buf, ch.stats()))
        })
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
    }

    /// The documented order within a host: `reduce::binomial`'s tree over its members, rooted
    /// at the leader (sub-rank 0).
    fn host_order(red: &Reducer, inputs: &[Vec<u8>], members: &[usize], v: usize) -> Vec<u8> {
        let mut acc = inputs[members[v]].clone();
        for &child in &BinomialTree::new(v, members.len(), 0).children {
            red.combine(&mut acc, &host_order(red, inputs, members, child));
        }
        acc
    }

    #[test]
    fn hosts_group_by_key_in_order_of_their_lowest_rank() {
        let h = Hosts::from_host_ids(&[0, 0, 1, 2, 2, 2, 1]);
        assert_eq!((h.size(), h.num_hosts()), (7, 3));
        assert_eq!(h.members(0), [0, 1]);
        assert_eq!(h.members(1), [2, 6]);
        assert_eq!(h.members(2), [3, 4, 5]);
        assert_eq!(h.leaders(), [0, 2, 3]);
        assert_eq!(h.host_of(6), 1);
        assert!(h.is_hierarchical());
        // Any key, any numbering: only equality counts.
        assert_eq!(Hosts::from_keys(["x", "x", "b", "q", "q", "q", "b"]), h);
        assert_eq!(Hosts::from_host_ids(&[9, 9, 4, 0, 0, 0, 4]), h);
        let alt = Hosts::from_host_ids(&[5, 1, 5, 1]);
        assert_eq!((alt.members(0), alt.members(1)), (&[0, 2][..], &[1, 3][..]));
        for flat in [
            Hosts::single_host(5),
            Hosts::one_per_rank(5),
            Hosts::from_host_ids(&[1]),
        ] {
            assert!(!flat.is_hierarchical(), "{flat:?}");
        }
        assert_eq!(Hosts::single_host(3).leaders(), [0]);
        assert_eq!(Hosts::one_per_rank(3).leaders(), [0, 1, 2]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_rank_gets_the_reduction(
            hosts in layout(),
            count in elem_count(),
            red in exact_reducer(),
            seg in seg_bytes(),
            window in window(),
            inter in prop::sample::select(INTER.to_vec()),
            seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let inputs: Vec<_> = (0..hosts.size()).map(|_| rng.exact_elems(&red, count)).collect();
            let expect = fold_in_rank_order(&red, &inputs);
            for (rank, (got, _)) in run(red, &hosts, &inputs, seg, window, inter)
                .into_iter()
                .enumerate()
            {
                prop_assert_eq!(&got, &expect, "{} rank {} of {:?}", inter, rank, hosts);
            }
        }

        #[test]
        fn float_results_are_bit_identical_and_follow_the_documented_order(
            hosts in layout(),
            count in elem_count(),
            seg in seg_bytes(),
            window in window(),
            inter in prop::sample::select(INTER.to_vec()),
            seed in any::<u64>(),
        ) {
            let red = Reducer::new(DType::F32, ReduceOp::Sum).unwrap();
            let mut rng = Rng::new(seed);
            let inputs: Vec<_> = (0..hosts.size()).map(|_| rng.rough_f32(count)).collect();
            let out = run(red, &hosts, &inputs, seg, window, inter);
            for (rank, (got, _)) in out.iter().enumerate() {
                prop_assert!(got == &out[0].0, "{} rank {} differs from rank 0", inter, rank);
            }
            // The naive inter-host all-reduce folds the hosts' results in host order.
            if inter == AllReduceAlgo::Naive {
                let per_host: Vec<_> = (0..hosts.num_hosts())
                    .map(|g| host_order(&red, &inputs, hosts.members(g), 0))
                    .collect();
                prop_assert_eq!(&out[0].0, &fold_in_rank_order(&red, &per_host));
            }
        }

        #[test]
        fn broadcast_delivers_the_roots_bytes_from_every_root(
            hosts in layout(),
            len in byte_len(),
            seg in seg_bytes(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let n = hosts.size();
            for root in 0..n {
                let expect = Rng::new(seed).bytes(len);
                let out = run_cluster_with_window(n, window, |ch| {
                    let mut buf = if ch.rank() == root {
                        expect.clone()
                    } else {
                        Rng::new(seed ^ (ch.rank() as u64 + 1)).bytes(len)
                    };
                    broadcast(ch, &mut buf, root, &hosts, seg).map(|()| buf)
                });
                for (rank, got) in out.into_iter().enumerate() {
                    let got = got.map_err(TestCaseError::fail)?;
                    prop_assert!(got == expect, "rank {} (root {}) of {:?}", rank, root, hosts);
                }
            }
        }
    }

    #[test]
    fn only_leaders_and_heads_cross_hosts() {
        // Hosts {0, 1, 4}, {2, 5}, {3}: ranks that lead nothing send only within their host.
        let hosts = Hosts::from_host_ids(&[0, 0, 1, 2, 0, 1]);
        let (count, red) = (100, Reducer::new(DType::I32, ReduceOp::Sum).unwrap());
        let m = count * 4;
        let inputs: Vec<_> = (0..6)
            .map(|r| Rng::new(r).exact_elems(&red, count))
            .collect();
        for window in [UNBOUNDED, 0] {
            let out = run(red, &hosts, &inputs, 1 << 20, window, AllReduceAlgo::Ring);
            // The members are leaves of their host's tree: they send their input once.
            for (rank, sent) in [(1, m), (4, m), (5, m)] {
                assert_eq!(out[rank].1.bytes_sent, sent, "rank {rank}, window {window}");
            }
            // Leader 0: the ring over 3 leaders (2 * 2/3 of m) and a broadcast to 2 children.
            let ring = 2 * (2 * m / 3);
            assert!(
                out[0].1.bytes_sent.abs_diff(ring + 2 * m) <= 8,
                "{:?}",
                out[0].1
            );
            assert!(out[3].1.bytes_sent.abs_diff(ring) <= 8, "{:?}", out[3].1);
        }
        // Broadcast from rank 4: it heads host 0 and starts the chain to heads 2 and 3.
        let sent = run_cluster_with_window(6, 0, |ch| {
            let mut buf = vec![ch.rank() as u8; 50];
            broadcast(ch, &mut buf, 4, &hosts, 1 << 20).map(|()| (buf, ch.stats()))
        });
        let bytes: Vec<_> = sent
            .iter()
            .map(|r| r.as_ref().unwrap().1.bytes_sent)
            .collect();
        // Chain 4 -> 2 -> 3; rank 4 is the root of the tree over [0, 1, 4] (sub-rank 2), with
        // children 0 and 1; rank 2 sends to rank 5 as well.
        assert_eq!(bytes, [0, 0, 100, 0, 150, 0]);
        assert!(sent.iter().all(|r| r.as_ref().unwrap().0 == [4; 50]));
    }

    #[test]
    fn flat_layouts_are_the_flat_algorithms() {
        let red = Reducer::new(DType::F32, ReduceOp::Sum).unwrap();
        let inputs: Vec<_> = (0..5).map(|r| Rng::new(r).rough_f32(333)).collect();
        let flat = |algo: AllReduceAlgo| {
            run_cluster_with_window(5, 0, |ch| {
                let mut buf = inputs[ch.rank()].clone();
                match algo {
                    AllReduceAlgo::Tree => allreduce::tree(ch, &mut buf, &red, 64),
                    _ => allreduce::ring(ch, &mut buf, &red, 64),
                }
                .map(|()| (buf, ch.stats()))
            })
            .into_iter()
            .map(|r| r.unwrap())
            .collect::<Vec<_>>()
        };
        let one_host = run(
            red,
            &Hosts::single_host(5),
            &inputs,
            64,
            0,
            AllReduceAlgo::Ring,
        );
        assert_eq!(one_host, flat(AllReduceAlgo::Tree));
        let alone = run(
            red,
            &Hosts::one_per_rank(5),
            &inputs,
            64,
            0,
            AllReduceAlgo::Ring,
        );
        assert_eq!(alone, flat(AllReduceAlgo::Ring));
    }
}
