//! The alpha-beta-gamma cost model: every algorithm's cost as code, link profiles, and the
//! choice of the algorithm with the least predicted time.
//!
//! For `n` ranks and `m` bytes an algorithm's [`Cost`] counts what lies on its critical path:
//! `alpha` messages, `beta` bytes sent and `gamma` bytes reduced. A [`Model`] prices them (seconds
//! per message, per byte sent, per byte reduced), so a prediction is
//! `alpha * alpha_s + beta * beta_s_per_byte + gamma * gamma_s_per_byte`. The formulas are those
//! of the algorithms' module docs (see [`cost`]); [`select`] returns the argmin of the
//! predictions over the algorithms of one collective and a few segment sizes, and [`choose`]
//! is what the communicator runs per call (forced algorithm, hierarchy, model, or fixed
//! defaults). A measured model is read and written as text by [`file`].
//!
//! Notation in the formulas: `L = ceil(log2 n)`; `p` the largest power of two `<= n` and
//! `l = log2 p` (so `l = L` when `n` is a power of two, else `l = L - 1`); `S = ceil(m / seg)`
//! segments of the whole buffer; `c = ceil(m / n)` the largest even chunk and
//! `Sc = ceil(c / seg)` its segments.
//!
//! Sizes: `m` is the all-reduce, broadcast, reduce, reduce-scatter and all-gather buffer, the
//! root's whole buffer of a gather or scatter, and what each rank sends in an all-to-all (whole
//! blocks of `m / n`, rounded down). A barrier ignores `m`.
//!
//! ## Against recorded plans
//! The tests record every algorithm's schedule ([`crate::plan`]) and replay its critical path:
//! a message of `b` bytes occupies its sender's outgoing and its receiver's incoming link for
//! `alpha + b beta`, and a combine on receipt adds `b gamma`. With equal chunks (`m` a multiple
//! of `n`, segments that divide them) the recorded messages and bytes equal these formulas for
//! every `n` from 1 to 8, except where noted here; `testdata/plans/counts.txt` lists both for
//! uneven sizes too. The differences:
//! - uneven chunks: the critical path carries the larger chunks, so it exceeds `(n-1)/n m` by up
//!   to `n - 1` bytes per step (ring all-reduce of 64 bytes on 3 ranks: 88 bytes, not 85.3);
//! - binomial trees, segmented: `S L` messages of `m/S` (the code's count); the module docs of
//!   broadcast and reduce estimate `(S + L - 1) L`, which is `L^2` for one segment, against their
//!   own unsegmented `L`;
//! - recursive doubling, Rabenseifner and recursive halving combine after a plain receive, which
//!   a plan cannot see: their recorded `gamma` is below the formula's (zero for recursive
//!   doubling on a power of two);
//! - Rabenseifner (all-reduce, reduce) and recursive halving when `n` is not a power of two: the
//!   fold leaves the virtual ranks uneven groups of chunks, so the halving moves more than
//!   `(p-1)/p m` (reduce-scatter of 64 bytes on 3 ranks: 128 bytes on the path, the formula
//!   117.3); the formulas are exact for powers of two;
//! - Bruck's all-to-all when `n` is not a power of two: fewer than `n/2` blocks per step (63
//!   bytes on 3 ranks: 42 bytes on the path, the formula 63);
//! - scatter-allgather, segmented: the scatter is segmented too (the formula here counts it;
//!   the module doc gives the unsegmented cost), exact for powers of two;
//! - double binary tree: the module doc's formula bounds the messages, but not the bytes when
//!   there are few segments per half (64 bytes on 4 ranks in segments of 8: 248 bytes on the
//!   path, the formula 160; it assumes `S >> log2 n`).

use crate::algo::{
    Algorithms, AllGatherAlgo, AllReduceAlgo, AllToAllAlgo, BarrierAlgo, BroadcastAlgo, GatherAlgo,
    ReduceAlgo, ReduceScatterAlgo, ScatterAlgo,
};
use std::fmt;

pub mod file;
pub use file::{ModelFileError, Tuning};

/// A collective operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    AllReduce,
    Broadcast,
    Reduce,
    AllGather,
    ReduceScatter,
    AllToAll,
    Gather,
    Scatter,
    Barrier,
}

impl Op {
    /// Every collective, in the order of `algo/mod.rs`.
    pub const ALL: [Op; 9] = [
        Op::AllReduce,
        Op::Broadcast,
        Op::Reduce,
        Op::AllGather,
        Op::ReduceScatter,
        Op::AllToAll,
        Op::Gather,
        Op::Scatter,
        Op::Barrier,
    ];

    /// The name as `tutti bench` spells it (`all_reduce`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Op::AllReduce => "all_reduce",
            Op::Broadcast => "broadcast",
            Op::Reduce => "reduce",
            Op::AllGather => "all_gather",
            Op::ReduceScatter => "reduce_scatter",
            Op::AllToAll => "all_to_all",
            Op::Gather => "gather",
            Op::Scatter => "scatter",
            Op::Barrier => "barrier",
        }
    }

    /// Parses a name, ignoring case, `_` and `-` (`all_reduce`, `allreduce`, `all-reduce`).
    pub fn parse(s: &str) -> Option<Op> {
        let key = |t: &str| t.to_ascii_lowercase().replace(['_', '-'], "");
        Op::ALL.into_iter().find(|op| key(op.name()) == key(s))
    }

    /// Every algorithm of this collective, as in its `*Algo::ALL`.
    pub fn algorithms(self) -> Vec<Algorithm> {
        match self {
            Op::AllReduce => AllReduceAlgo::ALL
                .iter()
                .map(|&a| Algorithm::AllReduce(a))
                .collect(),
            Op::Broadcast => BroadcastAlgo::ALL
                .iter()
                .map(|&a| Algorithm::Broadcast(a))
                .collect(),
            Op::Reduce => ReduceAlgo::ALL
                .iter()
                .map(|&a| Algorithm::Reduce(a))
                .collect(),
            Op::AllGather => AllGatherAlgo::ALL
                .iter()
                .map(|&a| Algorithm::AllGather(a))
                .collect(),
            Op::ReduceScatter => ReduceScatterAlgo::ALL
                .iter()
                .map(|&a| Algorithm::ReduceScatter(a))
                .collect(),
            Op::AllToAll => AllToAllAlgo::ALL
                .iter()
                .map(|&a| Algorithm::AllToAll(a))
                .collect(),
            Op::Gather => GatherAlgo::ALL
                .iter()
                .map(|&a| Algorithm::Gather(a))
                .collect(),
            Op::Scatter => ScatterAlgo::ALL
                .iter()
                .map(|&a| Algorithm::Scatter(a))
                .collect(),
            Op::Barrier => BarrierAlgo::ALL
                .iter()
                .map(|&a| Algorithm::Barrier(a))
                .collect(),
        }
    }

    /// The algorithms [`select`] chooses among: all but the all-reduce's `auto` (itself a
    /// choice) and `hierarchical` (which needs a topology).
    pub fn selectable(self) -> Vec<Algorithm> {
        self.algorithms()
            .into_iter()
            .filter(|a| a.is_selectable())
            .collect()
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One algorithm of one collective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    AllReduce(AllReduceAlgo),
    Broadcast(BroadcastAlgo),
    Reduce(ReduceAlgo),
    AllGather(AllGatherAlgo),
    ReduceScatter(ReduceScatterAlgo),
    AllToAll(AllToAllAlgo),
    Gather(GatherAlgo),
    Scatter(ScatterAlgo),
    Barrier(BarrierAlgo),
}

impl Algorithm {
    /// Every algorithm of every collective.
    pub fn all() -> Vec<Algorithm> {
        Op::ALL.into_iter().flat_map(Op::algorithms).collect()
    }

    /// Its collective.
    pub fn op(self) -> Op {
        match self {
            Algorithm::AllReduce(_) => Op::AllReduce,
            Algorithm::Broadcast(_) => Op::Broadcast,
            Algorithm::Reduce(_) => Op::Reduce,
            Algorithm::AllGather(_) => Op::AllGather,
            Algorithm::ReduceScatter(_) => Op::ReduceScatter,
            Algorithm::AllToAll(_) => Op::AllToAll,
            Algorithm::Gather(_) => Op::Gather,
            Algorithm::Scatter(_) => Op::Scatter,
            Algorithm::Barrier(_) => Op::Barrier,
        }
    }

    /// Its name within its collective (as in `TUTTI_ALGO`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::AllReduce(a) => a.name(),
            Algorithm::Broadcast(a) => a.name(),
            Algorithm::Reduce(a) => a.name(),
            Algorithm::AllGather(a) => a.name(),
            Algorithm::ReduceScatter(a) => a.name(),
            Algorithm::AllToAll(a) => a.name(),
            Algorithm::Gather(a) => a.name(),
            Algorithm::Scatter(a) => a.name(),
            Algorithm::Barrier(a) => a.name(),
        }
    }

    /// Whether [`select`] considers it (see [`Op::selectable`]).
    pub fn is_selectable(self) -> bool {
        !self.is_auto()
            && !matches!(
                self,
                Algorithm::AllReduce(AllReduceAlgo::Hierarchical)
                    | Algorithm::Broadcast(BroadcastAlgo::Hierarchical)
            )
    }

    /// Whether it is a collective's `auto` (a choice, not an algorithm).
    pub fn is_auto(self) -> bool {
        matches!(
            self,
            Algorithm::AllReduce(AllReduceAlgo::Auto)
                | Algorithm::Broadcast(BroadcastAlgo::Auto)
                | Algorithm::Reduce(ReduceAlgo::Auto)
                | Algorithm::AllGather(AllGatherAlgo::Auto)
                | Algorithm::ReduceScatter(ReduceScatterAlgo::Auto)
                | Algorithm::AllToAll(AllToAllAlgo::Auto)
                | Algorithm::Gather(GatherAlgo::Auto)
                | Algorithm::Scatter(ScatterAlgo::Auto)
        )
    }

    /// The algorithm `algos` sets for `op` (perhaps its `auto`).
    pub fn configured(op: Op, algos: &Algorithms) -> Algorithm {
        match op {
            Op::AllReduce => Algorithm::AllReduce(algos.all_reduce),
            Op::Broadcast => Algorithm::Broadcast(algos.broadcast),
            Op::Reduce => Algorithm::Reduce(algos.reduce),
            Op::AllGather => Algorithm::AllGather(algos.all_gather),
            Op::ReduceScatter => Algorithm::ReduceScatter(algos.reduce_scatter),
            Op::AllToAll => Algorithm::AllToAll(algos.all_to_all),
            Op::Gather => Algorithm::Gather(algos.gather),
            Op::Scatter => Algorithm::Scatter(algos.scatter),
            Op::Barrier => Algorithm::Barrier(algos.barrier),
        }
    }

    /// `algos` with this algorithm set for its collective.
    pub fn set_in(self, algos: &Algorithms) -> Algorithms {
        let mut a = *algos;
        match self {
            Algorithm::AllReduce(x) => a.all_reduce = x,
            Algorithm::Broadcast(x) => a.broadcast = x,
            Algorithm::Reduce(x) => a.reduce = x,
            Algorithm::AllGather(x) => a.all_gather = x,
            Algorithm::ReduceScatter(x) => a.reduce_scatter = x,
            Algorithm::AllToAll(x) => a.all_to_all = x,
            Algorithm::Gather(x) => a.gather = x,
            Algorithm::Scatter(x) => a.scatter = x,
            Algorithm::Barrier(x) => a.barrier = x,
        }
        a
    }

    /// A number for the wire (call fingerprints), unique over [`Algorithm::all`] and never 0.
    pub fn code(self) -> u8 {
        let i = Algorithm::all()
            .iter()
            .position(|&a| a == self)
            .unwrap_or_default();
        (i + 1) as u8
    }

    /// The algorithm of `code` (see [`code`](Algorithm::code)).
    pub fn from_code(code: u8) -> Option<Algorithm> {
        Algorithm::all()
            .get(usize::from(code).checked_sub(1)?)
            .copied()
    }

    /// `auto` resolved where there is no model: the all-reduce by size (see
    /// [`Algorithms::all_reduce_for`]), the others to their large-message algorithm.
    fn without_model(self, algos: &Algorithms, bytes: usize) -> Algorithm {
        match self {
            Algorithm::AllReduce(AllReduceAlgo::Auto) => {
                Algorithm::AllReduce(algos.inter_host_all_reduce_for(bytes))
            }
            Algorithm::Broadcast(a) => Algorithm::Broadcast(a.or_fallback()),
            Algorithm::Reduce(a) => Algorithm::Reduce(a.or_fallback()),
            Algorithm::AllGather(a) => Algorithm::AllGather(a.or_fallback()),
            Algorithm::ReduceScatter(a) => Algorithm::ReduceScatter(a.or_fallback()),
            Algorithm::AllToAll(a) => Algorithm::AllToAll(a.or_fallback()),
            Algorithm::Gather(a) => Algorithm::Gather(a.or_fallback()),
            Algorithm::Scatter(a) => Algorithm::Scatter(a.or_fallback()),
            a => a,
        }
    }

    /// Whether its cost depends on the segment size.
    pub fn is_segmented(self) -> bool {
        matches!(
            self,
            Algorithm::AllReduce(
                AllReduceAlgo::Ring | AllReduceAlgo::Tree | AllReduceAlgo::DoubleBinaryTree
            ) | Algorithm::Broadcast(_)
                | Algorithm::Reduce(ReduceAlgo::Binomial)
                | Algorithm::AllGather(AllGatherAlgo::Ring)
                | Algorithm::ReduceScatter(ReduceScatterAlgo::Ring)
        )
    }
}

impl fmt::Display for Algorithm {
    /// `collective:algorithm`, e.g. `all_reduce:ring`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.op(), self.name())
    }
}

/// What lies on an algorithm's critical path: messages, bytes sent, bytes reduced.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// Messages (each costs the latency `alpha`).
    pub alpha: f64,
    /// Bytes sent (each costs `beta`).
    pub beta: f64,
    /// Bytes reduced (each costs `gamma`).
    pub gamma: f64,
}

impl Cost {
    /// Nothing at all (one rank).
    pub const ZERO: Cost = Cost {
        alpha: 0.0,
        beta: 0.0,
        gamma: 0.0,
    };

    fn new(alpha: f64, beta: f64, gamma: f64) -> Cost {
        Cost { alpha, beta, gamma }
    }

    /// `k` times a message of `bytes` bytes, `reduced` of which are combined.
    fn steps(k: f64, bytes: f64, reduced: f64) -> Cost {
        Cost::new(k, k * bytes, k * reduced)
    }

    fn plus(self, o: Cost) -> Cost {
        Cost::new(
            self.alpha + o.alpha,
            self.beta + o.beta,
            self.gamma + o.gamma,
        )
    }
}

/// `ceil(log2 n)` for `n >= 1`.
fn ceil_log2(n: usize) -> f64 {
    n.next_power_of_two().trailing_zeros() as f64
}

/// `log2 p` for `p` the largest power of two `<= n`, `n >= 1`.
fn floor_log2(n: usize) -> f64 {
    n.ilog2() as f64
}

/// The largest power of two `<= n`, `n >= 1`.
fn floor_pow2(n: usize) -> f64 {
    (1usize << n.ilog2()) as f64
}

/// `ceil(bytes / seg)`: the segments of `bytes` (none when empty).
fn segments(bytes: usize, seg: usize) -> f64 {
    bytes.div_ceil(seg.max(1)) as f64
}

/// The cost of `algo` on `n` ranks and `m` bytes with segments of `seg` bytes, as its module
/// doc states it (each formula is on the function that computes it). One rank costs nothing.
pub fn cost(algo: Algorithm, n: usize, m: usize, seg: usize) -> Cost {
    if n <= 1 {
        return Cost::ZERO;
    }
    match algo {
        Algorithm::AllReduce(a) => all_reduce(a, n, m, seg),
        Algorithm::Broadcast(a) => broadcast(a, n, m, seg),
        Algorithm::Reduce(a) => reduce(a, n, m, seg),
        Algorithm::AllGather(a) => all_gather(a, n, m, seg),
        Algorithm::ReduceScatter(a) => reduce_scatter(a, n, m, seg),
        Algorithm::AllToAll(a) => all_to_all(a, n, m),
        Algorithm::Gather(GatherAlgo::Auto) => {
            cost(Algorithm::Gather(GatherAlgo::Linear), n, m, seg)
        }
        Algorithm::Scatter(ScatterAlgo::Auto) => {
            cost(Algorithm::Scatter(ScatterAlgo::Linear), n, m, seg)
        }
        Algorithm::Gather(GatherAlgo::Linear) | Algorithm::Scatter(ScatterAlgo::Linear) => {
            linear_root(n, m)
        }
        Algorithm::Gather(GatherAlgo::Binomial) | Algorithm::Scatter(ScatterAlgo::Binomial) => {
            binomial_chunks(n, m)
        }
        Algorithm::Barrier(BarrierAlgo::Dissemination) => Cost::new(ceil_log2(n), 0.0, 0.0),
    }
}

/// All-reduce (module doc of [`crate::algo::allreduce`]):
/// - naive: `2(n-1) alpha + 2(n-1) m beta + (n-1) m gamma`;
/// - ring: `2(n-1) Sc alpha + 2(n-1)/n m beta + (n-1)/n m gamma`;
/// - tree: a binomial reduce then a binomial broadcast (see [`reduce`] and [`broadcast`]),
///   `L(2 alpha + 2 m beta + m gamma)` unsegmented;
/// - recursive doubling: `L(alpha + m beta + 2 m gamma)` for a power of two, else
///   `(L + 1)(alpha + m beta) + 2 L m gamma` (each combine twice: a copy into scratch and
///   the combine, see [`recursive_doubling`]);
/// - Rabenseifner: `2l alpha + 2(p-1)/p m beta + 2 (p-1)/p m gamma`, plus
///   `2 alpha + 2 m beta + 2 m gamma` (the fold) when `n` is not a power of two;
/// - double binary tree, with `D = L` and `S2 = ceil(m / (2 seg))`: at most
///   `8(D + S2 - 1) alpha + 2(D + S2 - 1) m/S2 beta + (D + S2 - 1) m/S2 gamma`;
/// - auto: the algorithm `Algorithms::default()` runs for `m` bytes; hierarchical without a
///   topology: the inter-host algorithm alone.
fn all_reduce(a: AllReduceAlgo, n: usize, m: usize, seg: usize) -> Cost {
    let (nf, mf) = (n as f64, m as f64);
    let share = (nf - 1.0) / nf * mf;
    match a {
        AllReduceAlgo::Naive => Cost::new(2.0 * (nf - 1.0), 2.0 * (nf - 1.0) * mf, (nf - 1.0) * mf),
        AllReduceAlgo::Ring => {
            let sc = segments(m.div_ceil(n), seg);
            Cost::new(2.0 * (nf - 1.0) * sc, 2.0 * share, share)
        }
        AllReduceAlgo::Tree => binomial_tree(n, m, seg, true).plus(binomial_tree(n, m, seg, false)),
        AllReduceAlgo::RecursiveDoubling => recursive_doubling(n, m),
        AllReduceAlgo::Rabenseifner => rabenseifner(n, m, true),
        AllReduceAlgo::DoubleBinaryTree => double_binary_tree(n, m, seg),
        AllReduceAlgo::Auto => all_reduce(Algorithms::default().all_reduce_for(m), n, m, seg),
        AllReduceAlgo::Hierarchical => all_reduce(
            Algorithms::default().inter_host_all_reduce_for(m),
            n,
            m,
            seg,
        ),
    }
}

/// Recursive doubling's all-reduce: `L(alpha + m beta + 2 m gamma)` for a power of two, else
/// `(L + 1)(alpha + m beta) + 2 L m gamma` (the fold's two steps, one with a combine).
///
/// `2 gamma`: recursive doubling, Rabenseifner and recursive halving receive each block whole
/// into scratch and combine it afterwards, two passes over the received bytes where a
/// pipelined schedule combines straight from the link (one pass). Measured on shared memory
/// here, the second pass is what sets them apart at large sizes: a 64 MiB all-reduce of 4
/// ranks took 97 ms with Rabenseifner and 52 ms with the ring, which move the same bytes in
/// the same number of steps per byte (`docs/validation/`).
fn recursive_doubling(n: usize, m: usize) -> Cost {
    let (l, mf) = (ceil_log2(n), m as f64);
    if n.is_power_of_two() {
        Cost::steps(l, mf, 2.0 * mf)
    } else {
        Cost::new(l + 1.0, (l + 1.0) * mf, 2.0 * l * mf)
    }
}

/// Rabenseifner's all-reduce (`both`) or reduce: halving and doubling (all-reduce) or a binomial
/// gather (reduce) among `p` ranks, `2l alpha + 2(p-1)/p m beta + 2 (p-1)/p m gamma`; the fold
/// adds `2 alpha + 2 m beta + 2 m gamma` to the all-reduce (the buffer to the proxy, the result
/// back) and `alpha + m beta + 2 m gamma` to the reduce (the result stays at the root). Each
/// combine counts twice: see [`recursive_doubling`].
fn rabenseifner(n: usize, m: usize, both: bool) -> Cost {
    let (p, l, mf) = (floor_pow2(n), floor_log2(n), m as f64);
    let core = Cost::new(2.0 * l, 2.0 * (p - 1.0) / p * mf, 2.0 * (p - 1.0) / p * mf);
    match (n.is_power_of_two(), both) {
        (true, _) => core,
        (false, true) => core.plus(Cost::new(2.0, 2.0 * mf, 2.0 * mf)),
        (false, false) => core.plus(Cost::new(1.0, mf, 2.0 * mf)),
    }
}

/// The double binary tree's bound (see [`all_reduce`]).
fn double_binary_tree(n: usize, m: usize, seg: usize) -> Cost {
    if m == 0 {
        return Cost::ZERO; // no segments, no messages
    }
    let s2 = segments(m.div_ceil(2), seg);
    let depth = ceil_log2(n) + s2 - 1.0;
    let per_seg = m as f64 / s2;
    Cost::new(8.0 * depth, 2.0 * depth * per_seg, depth * per_seg)
}

/// A segmented binomial tree, down (broadcast) or up (`reducing`): the root's link carries `L`
/// copies of every segment, `S L (alpha + m/S beta [+ m/S gamma])`, which is
/// `L(alpha + m beta [+ m gamma])` unsegmented (`S = 1`). (The module docs' segmented estimate,
/// `(S + L - 1) L (...)`, adds a pipeline fill of `L - 1` rounds of `L` messages; it is `L^2`
/// for `S = 1`, against their own unsegmented `L`.)
fn binomial_tree(n: usize, m: usize, seg: usize, reducing: bool) -> Cost {
    let (l, s) = (ceil_log2(n), segments(m, seg));
    if s == 0.0 {
        return Cost::ZERO;
    }
    let per_seg = m as f64 / s;
    let reduced = if reducing { per_seg } else { 0.0 };
    Cost::steps(s * l, per_seg, reduced)
}

/// Broadcast (module doc of [`crate::algo::broadcast`]):
/// - binomial: see [`binomial_tree`];
/// - chain: `(n + S - 2)(alpha + m/S beta)`;
/// - scatter-allgather: `(max(L, ceil((n-1) c / seg)) + (n-1) Sc) alpha + 2(n-1)/n m beta`:
///   the root sends `(n-1)/n m` in segments, then the ring; `(L + n - 1) alpha` unsegmented, as
///   the module doc says;
/// - hierarchical without a topology: the chain.
fn broadcast(a: BroadcastAlgo, n: usize, m: usize, seg: usize) -> Cost {
    let (nf, mf) = (n as f64, m as f64);
    match a {
        BroadcastAlgo::Auto => broadcast(a.or_fallback(), n, m, seg),
        BroadcastAlgo::Binomial => binomial_tree(n, m, seg, false),
        BroadcastAlgo::Chain | BroadcastAlgo::Hierarchical => {
            let s = segments(m, seg);
            if s == 0.0 {
                return Cost::ZERO;
            }
            Cost::steps(nf + s - 2.0, mf / s, 0.0)
        }
        BroadcastAlgo::ScatterAllgather if m == 0 => Cost::ZERO,
        BroadcastAlgo::ScatterAllgather => {
            let c = m.div_ceil(n);
            let scatter = ceil_log2(n).max(segments((n - 1) * c, seg));
            let ring = (nf - 1.0) * segments(c, seg);
            Cost::new(scatter + ring, 2.0 * (nf - 1.0) / nf * mf, 0.0)
        }
    }
}

/// Reduce (module doc of [`crate::algo::reduce`]): binomial, see [`binomial_tree`];
/// Rabenseifner, see [`rabenseifner`].
fn reduce(a: ReduceAlgo, n: usize, m: usize, seg: usize) -> Cost {
    match a {
        ReduceAlgo::Auto => reduce(a.or_fallback(), n, m, seg),
        ReduceAlgo::Binomial => binomial_tree(n, m, seg, true),
        ReduceAlgo::Rabenseifner => rabenseifner(n, m, false),
    }
}

/// All-gather (module doc of [`crate::algo::allgather`]):
/// - ring: `(n-1) Sc alpha + (n-1)/n m beta`;
/// - recursive doubling: `l alpha + (n-1)/n m beta` for a power of two, else
///   `(l + 2) alpha + (1 + (p + s)/n) m beta` with `s = sum over k < l of min(2^k, n - p)`;
/// - Bruck: `L alpha + (n-1)/n m beta`.
fn all_gather(a: AllGatherAlgo, n: usize, m: usize, seg: usize) -> Cost {
    let (nf, mf) = (n as f64, m as f64);
    let share = (nf - 1.0) / nf * mf;
    match a {
        AllGatherAlgo::Auto => all_gather(a.or_fallback(), n, m, seg),
        AllGatherAlgo::Ring => Cost::new((nf - 1.0) * segments(m.div_ceil(n), seg), share, 0.0),
        AllGatherAlgo::RecursiveDoubling if n.is_power_of_two() => {
            Cost::new(floor_log2(n), share, 0.0)
        }
        AllGatherAlgo::RecursiveDoubling => {
            let (p, l) = (floor_pow2(n), n.ilog2());
            let extra = n - (1 << l);
            let s: usize = (0..l).map(|k| (1usize << k).min(extra)).sum();
            let beta = (1.0 + (p + s as f64) / nf) * mf;
            Cost::new(l as f64 + 2.0, beta, 0.0)
        }
        AllGatherAlgo::Bruck => Cost::new(ceil_log2(n), share, 0.0),
    }
}

/// Reduce-scatter (module doc of [`crate::algo::reduce_scatter`]):
/// - ring: `(n-1) Sc alpha + (n-1)/n m (beta + gamma)`;
/// - recursive halving: `l alpha + (p-1)/p m (beta + 2 gamma)`, plus, when `n` is not a power
///   of two, the fold: `2 alpha + (m + m/n) beta + 2 m gamma` (the buffer to the proxy, the
///   chunk back; each combine twice, see [`recursive_doubling`]).
fn reduce_scatter(a: ReduceScatterAlgo, n: usize, m: usize, seg: usize) -> Cost {
    let (nf, mf) = (n as f64, m as f64);
    match a {
        ReduceScatterAlgo::Auto => reduce_scatter(a.or_fallback(), n, m, seg),
        ReduceScatterAlgo::Ring => {
            let share = (nf - 1.0) / nf * mf;
            Cost::new((nf - 1.0) * segments(m.div_ceil(n), seg), share, share)
        }
        // Each combine counts twice: see [`recursive_doubling`].
        ReduceScatterAlgo::RecursiveHalving => {
            let p = floor_pow2(n);
            let share = (p - 1.0) / p * mf;
            let core = Cost::new(floor_log2(n), share, 2.0 * share);
            if n.is_power_of_two() {
                core
            } else {
                core.plus(Cost::new(2.0, mf + mf / nf, 2.0 * mf))
            }
        }
    }
}

/// All-to-all of `m` bytes per rank (module doc of [`crate::algo::alltoall`]):
/// - pairwise: `(n-1) alpha + (n-1)/n m beta`;
/// - Bruck: `L alpha + L m/2 beta`.
fn all_to_all(a: AllToAllAlgo, n: usize, m: usize) -> Cost {
    let (nf, mf) = (n as f64, (m / n * n) as f64);
    match a {
        AllToAllAlgo::Auto => all_to_all(a.or_fallback(), n, m),
        AllToAllAlgo::Pairwise => Cost::new(nf - 1.0, (nf - 1.0) / nf * mf, 0.0),
        AllToAllAlgo::Bruck => Cost::new(ceil_log2(n), ceil_log2(n) * mf / 2.0, 0.0),
    }
}

/// Linear gather or scatter of a root buffer of `m` bytes: `(n-1) alpha + (n-1)/n m beta`.
fn linear_root(n: usize, m: usize) -> Cost {
    let nf = n as f64;
    Cost::new(nf - 1.0, (nf - 1.0) / nf * m as f64, 0.0)
}

/// Binomial gather or scatter: `L alpha + (n-1)/n m beta`.
fn binomial_chunks(n: usize, m: usize) -> Cost {
    let nf = n as f64;
    Cost::new(ceil_log2(n), (nf - 1.0) / nf * m as f64, 0.0)
}

/// Seconds per message, per byte sent and per byte reduced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Model {
    pub alpha_s: f64,
    pub beta_s_per_byte: f64,
    pub gamma_s_per_byte: f64,
}

/// Seconds per byte of a link of `bits_per_s`.
fn per_byte(bits_per_s: f64) -> f64 {
    8.0 / bits_per_s
}

/// The reduction's time per byte in every profile: an f32 sum at about 0.1 ns per byte (the
/// figure measured here, see [`crate::algo::DEFAULT_SMALL_ALL_REDUCE_BYTES`]).
const GAMMA_S_PER_BYTE: f64 = 0.1e-9;

impl Model {
    /// The named profiles: `loopback` (7 us one way, about 3 GB/s, as measured here over
    /// loopback TCP), `1gbe` (25 us, 1 Gbit/s), `10gbe` (10 us, 10 Gbit/s), `100gbe` (3 us,
    /// 100 Gbit/s), `wan` (25 ms one way: a 50 ms round trip, 100 Mbit/s).
    pub const PROFILES: [(&'static str, Model); 5] = [
        ("loopback", Model::link(7e-6, 0.3e-9)),
        ("1gbe", Model::link(25e-6, 8e-9)),
        ("10gbe", Model::link(10e-6, 0.8e-9)),
        ("100gbe", Model::link(3e-6, 0.08e-9)),
        ("wan", Model::link(25e-3, 80e-9)),
    ];

    /// A link of latency `alpha_s` and `beta_s_per_byte`, with the profiles' reduction speed.
    pub const fn link(alpha_s: f64, beta_s_per_byte: f64) -> Model {
        Model {
            alpha_s,
            beta_s_per_byte,
            gamma_s_per_byte: GAMMA_S_PER_BYTE,
        }
    }

    /// The profile named `name` (see [`PROFILES`](Model::PROFILES)).
    pub fn profile(name: &str) -> Option<Model> {
        let name = name.trim().to_ascii_lowercase();
        Model::PROFILES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, m)| m)
    }

    /// The names of the profiles, comma-separated.
    pub fn profile_names() -> String {
        Model::PROFILES.map(|(n, _)| n).join(", ")
    }

    /// A link of `bits_per_s` with a one-way latency of `alpha_s`.
    pub fn from_bandwidth(alpha_s: f64, bits_per_s: f64) -> Model {
        Model::link(alpha_s, per_byte(bits_per_s))
    }

    /// Predicted seconds: `alpha alpha_s + beta beta_s_per_byte + gamma gamma_s_per_byte`.
    pub fn predict(&self, c: Cost) -> f64 {
        c.alpha * self.alpha_s + c.beta * self.beta_s_per_byte + c.gamma * self.gamma_s_per_byte
    }
}

/// What [`select`] picked, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub algorithm: Algorithm,
    /// The segment size the prediction assumed (the default for unsegmented algorithms).
    pub segment: usize,
    /// The predicted seconds.
    pub seconds: f64,
    /// The winner's cost and the runner-up, in words.
    pub reason: String,
}

/// The segment sizes [`select`] tries for a segmented algorithm: 4 KiB to 64 MiB by factors
/// of 4, and the default.
pub fn segment_candidates() -> Vec<usize> {
    let mut segs: Vec<usize> = (0..=7).map(|k| (4 << 10) << (2 * k)).collect();
    segs.push(crate::algo::DEFAULT_SEGMENT_BYTES);
    segs.sort_unstable();
    segs.dedup();
    segs
}

/// Every `(algorithm, segment)` pair [`select`] weighs for `op`, with its predicted seconds:
/// each selectable algorithm, at every segment size of [`segment_candidates`] if its cost
/// depends on it.
pub fn candidates(op: Op, bytes: usize, n: usize, model: &Model) -> Vec<(Algorithm, usize, f64)> {
    candidates_among(op, bytes, n, model, &segment_candidates())
}

/// As [`candidates`], with the segment sizes `segs` (non-empty).
pub fn candidates_among(
    op: Op,
    bytes: usize,
    n: usize,
    model: &Model,
    segs: &[usize],
) -> Vec<(Algorithm, usize, f64)> {
    let mut out = Vec::new();
    for algo in op.selectable() {
        let own: &[usize] = if algo.is_segmented() {
            segs
        } else {
            &[crate::algo::DEFAULT_SEGMENT_BYTES]
        };
        for &seg in own {
            out.push((algo, seg, model.predict(cost(algo, n, bytes, seg))));
        }
    }
    out
}

/// The algorithm and segment of least predicted time for `op` on `n` ranks and `bytes` bytes
/// (the first of equals, in the order of [`candidates`], except that the fixed default wins a
/// tie). Pure: it runs nothing.
pub fn select(op: Op, bytes: usize, n: usize, model: &Model) -> Choice {
    select_among(op, bytes, n, model, &segment_candidates())
}

/// As [`select`], with the segment sizes `segs` (non-empty).
pub fn select_among(op: Op, bytes: usize, n: usize, model: &Model, segs: &[usize]) -> Choice {
    let all = candidates_among(op, bytes, n, model, segs);
    let defaults = Algorithms::default();
    let preferred = Algorithm::configured(op, &defaults).without_model(&defaults, bytes);
    let (algorithm, segment, seconds) = all[argmin(&all, preferred)];
    let c = cost(algorithm, n, bytes, segment);
    let mut reason = format!(
        "{seconds:.3e} s = {} messages x {:.3e} s + {} B x {:.3e} s/B + {} B reduced x {:.3e} s/B",
        c.alpha, model.alpha_s, c.beta, model.beta_s_per_byte, c.gamma, model.gamma_s_per_byte
    );
    let runner_up = all
        .iter()
        .filter(|(a, ..)| *a != algorithm)
        .min_by(|x, y| x.2.total_cmp(&y.2));
    if let Some((a, _, t)) = runner_up {
        reason.push_str(&format!("; next best {} at {t:.3e} s", a.name()));
    }
    Choice {
        algorithm,
        segment,
        seconds,
        reason,
    }
}

/// How one call runs: the algorithm `algos` forces for `op`, or else the hierarchical
/// all-reduce on a hierarchical topology, or else [`select`]'s choice under `model` (among the
/// segment sizes of [`segment_candidates`] and `algos.segment_bytes`, or only the latter when
/// [`Algorithms::fixed_segment`]), or without a model the fixed defaults (see
/// [`Algorithms::all_reduce_for`] and the `or_fallback` of each `*Algo`). Never returns an
/// `auto`. Pure: every rank that passes the same values gets the same choice.
pub fn choose(
    algos: &Algorithms,
    op: Op,
    bytes: usize,
    n: usize,
    model: Option<&Model>,
    hierarchical: bool,
) -> Choice {
    let configured = Algorithm::configured(op, algos);
    let fixed = |algorithm: Algorithm, reason: &str| Choice {
        algorithm,
        segment: algos.segment_bytes,
        seconds: model.map_or(f64::NAN, |m| {
            m.predict(cost(algorithm, n, bytes, algos.segment_bytes))
        }),
        reason: reason.to_string(),
    };
    if op.algorithms().len() == 1 {
        return fixed(configured, "the only algorithm");
    }
    if !configured.is_auto() {
        return fixed(configured, "forced (TUTTI_ALGO or set_algorithms)");
    }
    if op == Op::AllReduce && hierarchical {
        let h = Algorithm::AllReduce(AllReduceAlgo::Hierarchical);
        return fixed(h, "several hosts with several ranks each: hierarchical");
    }
    match model {
        Some(m) => {
            let mut segs = if algos.fixed_segment {
                Vec::new()
            } else {
                segment_candidates()
            };
            segs.push(algos.segment_bytes);
            segs.sort_unstable();
            segs.dedup();
            select_among(op, bytes, n, m, &segs)
        }
        None => fixed(
            configured.without_model(algos, bytes),
            "no cost model (TUTTI_TUNE=0 or an in-process world): the fixed default",
        ),
    }
}

/// The index of the least time: the first of equals, except that the fixed default
/// `preferred` wins a tie (the model cannot tell them apart, so nothing changes; on 2 ranks
/// the binomial broadcast and the chain are the same single message, and the chain measured
/// 0.2-0.4 us faster at small sizes here).
fn argmin(all: &[(Algorithm, usize, f64)], preferred: Algorithm) -> usize {
    let mut best = 0;
    for (i, c) in all.iter().enumerate() {
        let (t, b) = (c.2, all[best].2);
        let tie = (t - b).abs() <= 1e-9 * t.abs().max(b.abs());
        if (t < b && !tie) || (tie && c.0 == preferred && all[best].0 != preferred) {
            best = i;
        }
    }
    best
}

/// A sender on a link of round trip `rtt_s` and `bits_per_s` that keeps `window` packets of
/// `packet_bytes` in flight: one window per round trip, or the link's rate once the window holds
/// the bandwidth-delay product. Each round trip lasts `rtt_s` plus one packet's transmission.
///
/// Stop-and-wait is a window of one: 1250-byte packets (10 kbit) over 50 ms and 100 Mbit/s take
/// 50.1 ms each, about 200 kbit/s.
pub fn windowed_throughput(window: usize, packet_bytes: usize, rtt_s: f64, bits_per_s: f64) -> f64 {
    let packet_bits = packet_bytes as f64 * 8.0;
    let round = rtt_s + packet_bits / bits_per_s;
    (window as f64 * packet_bits / round).min(bits_per_s)
}

/// The bandwidth-delay product in packets: the window that fills the link,
/// `ceil(bits_per_s rtt_s / packet_bits) + 1` (the `+ 1` covers the packet on the wire).
pub fn window_to_fill(packet_bytes: usize, rtt_s: f64, bits_per_s: f64) -> usize {
    let in_flight = bits_per_s * rtt_s / (packet_bytes as f64 * 8.0);
    // Rounding in `rtt_s` must not turn an exact 500 into 501.
    (in_flight * (1.0 - 1e-12)).ceil() as usize + 1
}

#[cfg(test)]
mod tests;
