//! Collective algorithms, one module per family, each a schedule over a [`Channel`].
//!
//! All functions work on bytes: the communicator checks argument lengths and types before it
//! calls them, and hands them byte ranges that are whole elements. Every function is correct for
//! every world size `n >= 1` (powers of two or not) and every length, including zero.
//!
//! Each module opens with its schedule in prose and its cost in the alpha-beta-gamma model, for
//! `n` ranks and `m` bytes: `alpha` is the per-message latency, `beta` the per-byte transfer time,
//! `gamma` the per-byte reduction time; and says why it cannot deadlock under flow control (a
//! send may wait while the peer's window is full: the [`Channel`] contract and its rule). Every
//! property test runs under several windows, down to none at all.
//!
//! The `*Algo` enums name the algorithms a user may force per collective (see
//! [`Algorithms::parse`]); each has an `auto` (the default), which the communicator resolves per
//! call with [`crate::model::choose`]: by the cost model it measured when the world formed, or
//! without one by fixed rules (the large-message algorithm; the all-reduce by size and
//! topology, [`Algorithms::all_reduce_for_hosts`]). [`hierarchical`] runs the existing algorithms on
//! subsets of the ranks (the ranks of one host, one rank per host) through [`SubChannel`].

use std::fmt;

pub mod allgather;
pub mod allreduce;
pub mod alltoall;
pub mod barrier;
pub mod broadcast;
mod double_tree;
pub mod gather;
pub mod hierarchical;
mod rabenseifner;
mod recursive_doubling;
pub mod reduce;
pub mod reduce_scatter;
mod ring;
pub mod scan;
pub mod scatter;
mod scatter_allgather;
pub mod sub;

#[cfg(test)]
mod test_cluster;

pub use crate::channel::Channel;
pub use hierarchical::Hosts;
pub use sub::SubChannel;

macro_rules! algo_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal),* $(,)? } default $d:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $v),* }

        impl $name {
            /// Every algorithm of this collective.
            pub const ALL: &'static [$name] = &[$($name::$v),*];
            /// The name used in `TUTTI_ALGO` and in logs.
            pub const fn name(self) -> &'static str {
                match self { $($name::$v => $s),* }
            }
            /// Parses a name as printed by `name()`.
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|a| a.name() == s)
            }
            /// The names of all algorithms, comma-separated (for error messages).
            pub fn names() -> String {
                Self::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
            }
        }

        impl Default for $name {
            fn default() -> Self { $name::$d }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.name()) }
        }
    };
}

algo_enum!(
    /// All-reduce algorithms.
    AllReduceAlgo {
        /// Everyone sends to rank 0, which reduces and sends the result back: the baseline.
        Naive => "naive",
        /// Ring reduce-scatter then ring all-gather, segmented: bandwidth-optimal.
        Ring => "ring",
        /// Binomial-tree reduce to rank 0 then binomial-tree broadcast: log-depth.
        Tree => "tree",
        /// Pairwise exchanges of the whole buffer with rank XOR 2^k: one message per step,
        /// `ceil(log2 n)` steps (plus two for a world that is not a power of two).
        RecursiveDoubling => "recursive_doubling",
        /// Chosen per call: hierarchical when the topology is hierarchical (see
        /// [`Algorithms::all_reduce_for_hosts`]), else the least predicted time of the cost
        /// model (see `crate::model::choose`), or without a model recursive doubling up to
        /// [`Algorithms::small_all_reduce_bytes`] and the ring above.
        Auto => "auto",
        /// Reduce within each host to its leader, all-reduce among the leaders (recursive
        /// doubling or ring by size: [`Algorithms::inter_host_all_reduce_for`]), broadcast
        /// within each host; the inter-host algorithm alone without a topology (see
        /// [`hierarchical`]).
        Hierarchical => "hierarchical",
        /// Recursive-halving reduce-scatter then recursive-doubling all-gather (Rabenseifner):
        /// the ring's bytes in `2 log2 n` steps (plus two for a world that is not a power of two).
        Rabenseifner => "rabenseifner",
        /// Two binary trees, each rank a leaf in one and interior in the other (as in NCCL), each
        /// reducing then broadcasting half the buffer, segmented.
        DoubleBinaryTree => "double_binary_tree",
    } default Auto
);

algo_enum!(
    /// Broadcast algorithms.
    BroadcastAlgo {
        /// Binomial tree, segmented.
        Binomial => "binomial",
        /// Pipelined chain root -> root+1 -> ...: bandwidth-optimal for large buffers.
        Chain => "chain",
        /// Chain over one rank per host (the root for its own host), then a binomial tree within
        /// each host; a chain without a topology (see [`hierarchical`]).
        Hierarchical => "hierarchical",
        /// Binomial scatter of `n` chunks from the root, then a ring all-gather (van de Geijn):
        /// about twice the bytes of a chunk in the root's link, in `log2 n + n - 1` steps.
        ScatterAllgather => "scatter_allgather",
        /// Chosen per call by the cost model when the communicator has one (see
        /// [`crate::model::plan_call`]), else `chain`.
        Auto => "auto",
    } default Auto
);

algo_enum!(
    /// Reduce algorithms.
    ReduceAlgo {
        /// Binomial tree, segmented.
        Binomial => "binomial",
        /// Recursive-halving reduce-scatter then a binomial gather to the root (Rabenseifner).
        Rabenseifner => "rabenseifner",
        /// Chosen per call by the cost model when the communicator has one (see
        /// [`crate::model::plan_call`]), else `binomial`.
        Auto => "auto",
    } default Auto
);

algo_enum!(
    /// All-gather algorithms (also used by all-gather-v).
    AllGatherAlgo {
        /// Ring, segmented.
        Ring => "ring",
        /// Exchanges with rank XOR 2^k of everything held: `log2 n` steps for a power of two,
        /// two more (the fold) otherwise. Unsegmented.
        RecursiveDoubling => "recursive_doubling",
        /// Bruck: `ceil(log2 n)` steps for any `n`, then a local rotation. Unsegmented.
        Bruck => "bruck",
        /// Chosen per call by the cost model when the communicator has one (see
        /// [`crate::model::plan_call`]), else `ring`.
        Auto => "auto",
    } default Auto
);

algo_enum!(
    /// Reduce-scatter algorithms.
    ReduceScatterAlgo {
        /// Ring, segmented.
        Ring => "ring",
        /// Recursive halving: pairwise exchanges of halves, `log2 n` steps (plus two for a world
        /// that is not a power of two).
        RecursiveHalving => "recursive_halving",
        /// Chosen per call by the cost model when the communicator has one (see
        /// [`crate::model::plan_call`]), else `ring`.
        Auto => "auto",
    } default Auto
);

algo_enum!(
    /// All-to-all algorithms (also used by all-to-all-v).
    AllToAllAlgo {
        /// Pairwise exchange: in step k, send to rank+k and receive from rank-k.
        Pairwise => "pairwise",
        /// Bruck, for small chunks: `ceil(log2 n)` steps of packed chunks between local
        /// rotations (all-to-all-v first all-gathers the sizes).
        Bruck => "bruck",
        /// Chosen per call by the cost model when the communicator has one (see
        /// [`crate::model::plan_call`]), else `pairwise`.
        Auto => "auto",
    } default Auto
);

algo_enum!(
    /// Barrier algorithms.
    BarrierAlgo {
        /// Dissemination: ceil(log2 n) rounds of zero-byte messages.
        Dissemination => "dissemination",
    } default Dissemination
);

algo_enum!(
    /// Gather algorithms.
    GatherAlgo {
        /// Every rank sends its chunk straight to the root.
        Linear => "linear",
        /// Binomial tree: each rank sends its subtree's chunks to its parent in one message.
        Binomial => "binomial",
        /// Chosen per call by the cost model when the communicator has one (see
        /// [`crate::model::plan_call`]), else `linear`.
        Auto => "auto",
    } default Auto
);

algo_enum!(
    /// Scatter algorithms.
    ScatterAlgo {
        /// The root sends every rank its chunk directly.
        Linear => "linear",
        /// Binomial tree: each rank gets its subtree's chunks from its parent in one message.
        Binomial => "binomial",
        /// Chosen per call by the cost model when the communicator has one (see
        /// [`crate::model::plan_call`]), else `linear`.
        Auto => "auto",
    } default Auto
);

macro_rules! fallback {
    ($($name:ident => $v:ident),* $(,)?) => {
        $(impl $name {
            /// What `auto` runs where there is no cost model (`TUTTI_TUNE=0`, in-process
            /// worlds): the large-message algorithm. Any other algorithm is itself.
            pub const fn or_fallback(self) -> Self {
                match self {
                    $name::Auto => $name::$v,
                    a => a,
                }
            }
        })*
    };
}

fallback!(
    BroadcastAlgo => Chain,
    ReduceAlgo => Binomial,
    AllGatherAlgo => Ring,
    ReduceScatterAlgo => Ring,
    AllToAllAlgo => Pairwise,
    GatherAlgo => Linear,
    ScatterAlgo => Linear,
);

/// The algorithm chosen for each collective, and the segment size of pipelined schedules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Algorithms {
    pub all_reduce: AllReduceAlgo,
    pub broadcast: BroadcastAlgo,
    pub reduce: ReduceAlgo,
    pub all_gather: AllGatherAlgo,
    pub reduce_scatter: ReduceScatterAlgo,
    pub all_to_all: AllToAllAlgo,
    pub barrier: BarrierAlgo,
    pub gather: GatherAlgo,
    pub scatter: ScatterAlgo,
    /// Pipelining unit in bytes (every rank must use the same value).
    pub segment_bytes: usize,
    /// Whether `segment_bytes` was set on purpose (`TUTTI_SEGMENT_BYTES`): the cost model then
    /// keeps it instead of choosing a segment per call.
    pub fixed_segment: bool,
    /// Under [`AllReduceAlgo::Auto`], all-reduces of at most this many bytes (per rank) run
    /// recursive doubling, larger ones the ring (every rank must use the same value; see
    /// [`DEFAULT_SMALL_ALL_REDUCE_BYTES`]).
    pub small_all_reduce_bytes: usize,
}

/// Default pipelining unit: large enough to amortise per-message cost, small enough that a ring
/// step overlaps sending, receiving and reducing.
pub const DEFAULT_SEGMENT_BYTES: usize = 1 << 20;

/// Default bound of a "small" all-reduce ([`Algorithms::small_all_reduce_bytes`]): 32 KiB,
/// measured: on loopback TCP here (`tutti bench all_reduce -b 8K -e 512K -f 2 -n 100 --algo
/// allreduce:ring` against `--algo allreduce:recursive_doubling`, two rounds), recursive
/// doubling was faster up to 32 KiB on 2 ranks (37 against 43-47 us at 32 KiB) and on 4 ranks
/// (126-157 against 244-344 us), and slower from 64 KiB on 2 ranks (66-87 against 52-57 us);
/// on 4 ranks 64 KiB was a tie and 128 KiB went to the ring.
///
/// The model: for `n` ranks and `m` bytes, `L = ceil(log2 n)` (a power of two; the fold adds
/// steps otherwise), recursive doubling takes `L (alpha + m beta + m gamma)` and the ring
/// `2(n-1) alpha + 2(n-1)/n m beta + (n-1)/n m gamma`, so recursive doubling is faster while
/// `(2(n-1) - L) alpha > m ((L - 2(n-1)/n) beta + (L - (n-1)/n) gamma)`.
/// - On 2 ranks both move `m` bytes and the bound is `m < 2 alpha / gamma`. With the one-way
///   latency of loopback TCP here (7 us, half a 14 us round trip) and the combine measured here
///   (f32 sum about 0.1 ns per byte, bf16 about 1.1: it converts each element to f32 and back),
///   that is about 140 KB for f32 and 13 KB for bf16.
/// - With more ranks the ring's latency term grows linearly and recursive doubling's bytes
///   logarithmically: on 8 ranks, 7 us and an assumed 0.3 ns per byte of transfer (about
///   3 GB/s), about 130 KB for f32. On a network alpha is larger (the bound grows), but so is
///   beta: on 1 Gbit/s (8 ns per byte) with 25 us, 8 ranks, about 27 KB.
///
/// The model's estimates are larger than the measurement (the combine is not the only cost
/// that grows with `m`: recursive doubling also copies into its scratch buffer). 32 KiB covers
/// the all-reduces that need latency rather than bandwidth: gradients of small models
/// (`dp_train`'s 9.6 KB), losses, counters. Override with `TUTTI_SMALL_ALLREDUCE_BYTES` (every
/// rank the same).
pub const DEFAULT_SMALL_ALL_REDUCE_BYTES: usize = 32 << 10;

impl Default for Algorithms {
    fn default() -> Self {
        Algorithms {
            all_reduce: AllReduceAlgo::default(),
            broadcast: BroadcastAlgo::default(),
            reduce: ReduceAlgo::default(),
            all_gather: AllGatherAlgo::default(),
            reduce_scatter: ReduceScatterAlgo::default(),
            all_to_all: AllToAllAlgo::default(),
            barrier: BarrierAlgo::default(),
            gather: GatherAlgo::default(),
            scatter: ScatterAlgo::default(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            fixed_segment: false,
            small_all_reduce_bytes: DEFAULT_SMALL_ALL_REDUCE_BYTES,
        }
    }
}

/// A `TUTTI_ALGO` value that names an unknown collective or algorithm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownAlgorithm(pub String);

impl Algorithms {
    /// The all-reduce algorithm that runs for a buffer of `bytes` bytes per rank: the forced one,
    /// or for [`AllReduceAlgo::Auto`] recursive doubling if `bytes <= small_all_reduce_bytes`
    /// and the ring otherwise. Never returns `Auto`. Every rank passes the same byte count and
    /// holds the same `Algorithms`, so all ranks choose the same.
    ///
    /// The same as [`all_reduce_for_hosts`](Algorithms::all_reduce_for_hosts) without a
    /// topology: `Auto` never picks [`AllReduceAlgo::Hierarchical`] here, but a forced
    /// `Hierarchical` is returned as it is (run it over [`Hosts::one_per_rank`]: it is then the
    /// algorithm `Auto` would pick).
    pub fn all_reduce_for(&self, bytes: usize) -> AllReduceAlgo {
        self.all_reduce_for_hosts(bytes, None)
    }

    /// The all-reduce algorithm that runs for `bytes` bytes per rank on the topology `hosts`
    /// (`None`: unknown): the forced one, or for [`AllReduceAlgo::Auto`]
    /// [`Hierarchical`](AllReduceAlgo::Hierarchical) if the topology
    /// [`is_hierarchical`](Hosts::is_hierarchical) (it takes fewer network steps at every size:
    /// see [`hierarchical`]), else the flat choice by size
    /// ([`inter_host_all_reduce_for`](Algorithms::inter_host_all_reduce_for)). Never returns
    /// `Auto`. Every rank passes the same byte count and equal topologies and holds the same
    /// `Algorithms`, so all ranks choose the same.
    pub fn all_reduce_for_hosts(&self, bytes: usize, hosts: Option<&Hosts>) -> AllReduceAlgo {
        match self.all_reduce {
            AllReduceAlgo::Auto if hosts.is_some_and(Hosts::is_hierarchical) => {
                AllReduceAlgo::Hierarchical
            }
            AllReduceAlgo::Auto => self.inter_host_all_reduce_for(bytes),
            forced => forced,
        }
    }

    /// The flat all-reduce for `bytes` bytes per rank, as `Auto` picks it without a hierarchy:
    /// recursive doubling if `bytes <= small_all_reduce_bytes`, the ring otherwise. This is
    /// also the `inter` algorithm the leaders of [`hierarchical::all_reduce`] run (they
    /// all-reduce the whole buffer). Returns only those two.
    pub fn inter_host_all_reduce_for(&self, bytes: usize) -> AllReduceAlgo {
        if bytes <= self.small_all_reduce_bytes {
            AllReduceAlgo::RecursiveDoubling
        } else {
            AllReduceAlgo::Ring
        }
    }

    /// Applies overrides written as `collective:algorithm` pairs separated by commas, e.g.
    /// `allreduce:ring,broadcast:binomial`. An unknown collective or algorithm is an error that
    /// lists the valid names.
    pub fn parse(mut self, spec: &str) -> Result<Algorithms, UnknownAlgorithm> {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (coll, algo) = item.split_once(':').ok_or_else(|| {
                UnknownAlgorithm(format!(
                    "TUTTI_ALGO entry {item:?} is not of the form collective:algorithm"
                ))
            })?;
            let coll_key = coll.trim().to_ascii_lowercase().replace(['_', '-'], "");
            let algo = algo.trim();
            macro_rules! set {
                ($field:ident, $ty:ident, $label:literal) => {
                    self.$field = $ty::parse(algo).ok_or_else(|| {
                        UnknownAlgorithm(format!(
                            "unknown {} algorithm {algo:?}; valid: {}",
                            $label,
                            $ty::names()
                        ))
                    })?
                };
            }
            match coll_key.as_str() {
                "allreduce" => set!(all_reduce, AllReduceAlgo, "allreduce"),
                "broadcast" | "bcast" => set!(broadcast, BroadcastAlgo, "broadcast"),
                "reduce" => set!(reduce, ReduceAlgo, "reduce"),
                "allgather" => set!(all_gather, AllGatherAlgo, "allgather"),
                "reducescatter" => set!(reduce_scatter, ReduceScatterAlgo, "reduce_scatter"),
                "alltoall" => set!(all_to_all, AllToAllAlgo, "alltoall"),
                "barrier" => set!(barrier, BarrierAlgo, "barrier"),
                "gather" => set!(gather, GatherAlgo, "gather"),
                "scatter" => set!(scatter, ScatterAlgo, "scatter"),
                _ => {
                    return Err(UnknownAlgorithm(format!(
                        "unknown collective {coll:?} in TUTTI_ALGO; valid: allreduce, broadcast, \
                         reduce, allgather, reduce_scatter, alltoall, barrier, gather, scatter"
                    )))
                }
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_overrides_and_reject_unknown_names() {
        let a = Algorithms::default()
            .parse("allreduce:naive, broadcast:binomial,all_to_all:pairwise")
            .unwrap();
        assert_eq!(a.all_reduce, AllReduceAlgo::Naive);
        assert_eq!(a.broadcast, BroadcastAlgo::Binomial);
        let e = Algorithms::default().parse("allreduce:magic").unwrap_err();
        assert!(e.0.contains("naive, ring, tree"), "{e}");
        let e = Algorithms::default().parse("allsum:ring").unwrap_err();
        assert!(e.0.contains("unknown collective"), "{e}");
        assert!(Algorithms::default().parse("ring").is_err());
        let a = Algorithms::default()
            .parse("allreduce:recursive_doubling")
            .unwrap();
        assert_eq!(a.all_reduce, AllReduceAlgo::RecursiveDoubling);
        assert_eq!(
            a.parse("allreduce:auto").unwrap().all_reduce,
            AllReduceAlgo::Auto
        );
        let a = Algorithms::default()
            .parse("allreduce:hierarchical,bcast:hierarchical")
            .unwrap();
        assert_eq!(a.all_reduce, AllReduceAlgo::Hierarchical);
        assert_eq!(a.broadcast, BroadcastAlgo::Hierarchical);
        let e = Algorithms::default().parse("broadcast:magic").unwrap_err();
        assert!(e.0.contains("binomial, chain, hierarchical"), "{e}");
    }

    #[test]
    fn parse_the_latency_algorithms_of_the_data_movements_and_keep_the_defaults() {
        let d = Algorithms::default();
        assert_eq!(
            (d.all_gather, d.all_to_all, d.gather, d.scatter),
            (
                AllGatherAlgo::Auto,
                AllToAllAlgo::Auto,
                GatherAlgo::Auto,
                ScatterAlgo::Auto
            )
        );
        // Without a cost model, auto is the large-message algorithm.
        assert_eq!(
            (
                d.all_gather.or_fallback(),
                d.all_to_all.or_fallback(),
                d.gather.or_fallback(),
                d.scatter.or_fallback()
            ),
            (
                AllGatherAlgo::Ring,
                AllToAllAlgo::Pairwise,
                GatherAlgo::Linear,
                ScatterAlgo::Linear
            )
        );
        let a = d
            .parse("allgather:bruck,alltoall:bruck,gather:binomial,scatter:binomial")
            .unwrap();
        assert_eq!(a.all_gather, AllGatherAlgo::Bruck);
        assert_eq!(a.all_to_all, AllToAllAlgo::Bruck);
        assert_eq!(a.gather, GatherAlgo::Binomial);
        assert_eq!(a.scatter, ScatterAlgo::Binomial);
        let a = d.parse("all_gather:recursive_doubling").unwrap();
        assert_eq!(a.all_gather, AllGatherAlgo::RecursiveDoubling);
        let e = d.parse("allgather:magic").unwrap_err();
        assert!(e.0.contains("ring, recursive_doubling, bruck"), "{e}");
    }

    #[test]
    fn the_added_names_parse_and_the_defaults_stay() {
        let a = Algorithms::default()
            .parse(
                "allreduce:rabenseifner,broadcast:scatter_allgather,reduce:rabenseifner,\
                 reduce_scatter:recursive_halving",
            )
            .unwrap();
        assert_eq!(a.all_reduce, AllReduceAlgo::Rabenseifner);
        assert_eq!(a.broadcast, BroadcastAlgo::ScatterAllgather);
        assert_eq!(a.reduce, ReduceAlgo::Rabenseifner);
        assert_eq!(a.reduce_scatter, ReduceScatterAlgo::RecursiveHalving);
        let a = a.parse("allreduce:double_binary_tree").unwrap();
        assert_eq!(a.all_reduce, AllReduceAlgo::DoubleBinaryTree);
        for forced in [AllReduceAlgo::Rabenseifner, AllReduceAlgo::DoubleBinaryTree] {
            let a = Algorithms {
                all_reduce: forced,
                ..Algorithms::default()
            };
            assert_eq!(a.all_reduce_for(0), forced);
            assert_eq!(a.all_reduce_for(1 << 30), forced);
        }
        let d = Algorithms::default();
        assert_eq!(
            (d.all_reduce, d.broadcast, d.reduce, d.reduce_scatter),
            (
                AllReduceAlgo::Auto,
                BroadcastAlgo::Auto,
                ReduceAlgo::Auto,
                ReduceScatterAlgo::Auto
            )
        );
        assert_eq!(
            (
                d.broadcast.or_fallback(),
                d.reduce.or_fallback(),
                d.reduce_scatter.or_fallback()
            ),
            (
                BroadcastAlgo::Chain,
                ReduceAlgo::Binomial,
                ReduceScatterAlgo::Ring
            )
        );
        assert_eq!(
            d.parse("broadcast:auto,alltoall:bruck").unwrap().broadcast,
            BroadcastAlgo::Auto
        );
        let e = Algorithms::default()
            .parse("reduce_scatter:magic")
            .unwrap_err();
        assert!(e.0.contains("ring, recursive_halving"), "{e}");
    }

    #[test]
    fn auto_picks_hierarchical_only_for_hierarchical_layouts() {
        let d = Algorithms::default();
        let uneven = Hosts::from_host_ids(&[0, 0, 1, 2, 2, 2, 1]);
        let pairs = Hosts::from_keys(["a", "b", "a", "b"]);
        let flat = [
            Hosts::single_host(4),
            Hosts::one_per_rank(4),
            Hosts::from_host_ids(&[7]),
            Hosts::from_host_ids(&[3, 1, 2]),
        ];
        for bytes in [0, 8, 32 << 10, (32 << 10) + 1, 1 << 30] {
            let flat_choice = d.all_reduce_for(bytes);
            assert_eq!(flat_choice, d.inter_host_all_reduce_for(bytes));
            assert_eq!(d.all_reduce_for_hosts(bytes, None), flat_choice);
            for hosts in [&uneven, &pairs] {
                assert!(hosts.is_hierarchical());
                let got = d.all_reduce_for_hosts(bytes, Some(hosts));
                assert_eq!(got, AllReduceAlgo::Hierarchical, "{hosts:?}");
            }
            for hosts in &flat {
                assert!(!hosts.is_hierarchical(), "{hosts:?}");
                assert_eq!(d.all_reduce_for_hosts(bytes, Some(hosts)), flat_choice);
            }
            // Forcing wins over the topology, both ways.
            for &forced in AllReduceAlgo::ALL
                .iter()
                .filter(|&&a| a != AllReduceAlgo::Auto)
            {
                let a = Algorithms {
                    all_reduce: forced,
                    ..d
                };
                for hosts in [None, Some(&uneven), Some(&flat[0])] {
                    assert_eq!(a.all_reduce_for_hosts(bytes, hosts), forced);
                }
            }
        }
        assert_eq!(
            d.inter_host_all_reduce_for(32 << 10),
            AllReduceAlgo::RecursiveDoubling
        );
        assert_eq!(
            d.inter_host_all_reduce_for((32 << 10) + 1),
            AllReduceAlgo::Ring
        );
    }

    #[test]
    fn auto_picks_recursive_doubling_for_small_all_reduces_and_forcing_wins() {
        let d = Algorithms::default();
        assert_eq!(d.all_reduce, AllReduceAlgo::Auto);
        assert_eq!(d.small_all_reduce_bytes, 32 << 10);
        for (bytes, algo) in [
            (0, AllReduceAlgo::RecursiveDoubling),
            (8, AllReduceAlgo::RecursiveDoubling),
            (9_600, AllReduceAlgo::RecursiveDoubling),
            (32 << 10, AllReduceAlgo::RecursiveDoubling),
            ((32 << 10) + 1, AllReduceAlgo::Ring),
            (1 << 30, AllReduceAlgo::Ring),
        ] {
            assert_eq!(d.all_reduce_for(bytes), algo, "{bytes} bytes");
        }
        let never = Algorithms {
            small_all_reduce_bytes: 0,
            ..d
        };
        assert_eq!(never.all_reduce_for(0), AllReduceAlgo::RecursiveDoubling);
        assert_eq!(never.all_reduce_for(1), AllReduceAlgo::Ring);
        for &forced in AllReduceAlgo::ALL {
            let a = Algorithms {
                all_reduce: forced,
                ..d
            };
            for bytes in [0, 8, 1 << 30] {
                let got = a.all_reduce_for(bytes);
                assert_ne!(got, AllReduceAlgo::Auto);
                if forced != AllReduceAlgo::Auto {
                    assert_eq!(got, forced, "{forced} at {bytes} bytes");
                }
            }
        }
    }
}
