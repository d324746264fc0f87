//! A correctness suite that runs every collective (the `_v` forms and the scans included) and checks the result against a sequential
//! reference. `tutti selftest` runs it across processes (over TCP, under `tutti launch`); the
//! test suite runs it in-process over many world sizes.
//!
//! Inputs are deterministic functions of (case, rank, index), so every rank can compute every
//! other rank's input and therefore the exact expected output, with no extra communication.
//! Values are chosen so that every reduction is exact in every element type whatever the order of
//! combination (small integers for floats, products of ±1 and ±2; full-range values with wrapping
//! arithmetic for integers), which lets every algorithm be checked bit for bit. The reference
//! is independent of the kernels it checks: it folds the ranks' inputs in rank order with
//! plain per-element scalar arithmetic written out here ([`Sample::fold`], [`Sample::divide`]:
//! wrapping for integers, IEEE for f32/f64, through f32 for f16/bf16 via `half`), never with
//! `Reducer::combine` or `finish_avg`.

use crate::algo::{
    Algorithms, AllGatherAlgo, AllReduceAlgo, AllToAllAlgo, BroadcastAlgo, GatherAlgo, ReduceAlgo,
    ReduceScatterAlgo, ScatterAlgo,
};
use crate::comm::Communicator;
use crate::error::Error;
use tutti_core::{DType, Element, ReduceOp, Reducer};

/// What to run.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Element counts per rank to try (0, 1 and a prime are always worth including).
    pub counts: Vec<usize>,
    /// Element types to try.
    pub dtypes: Vec<DType>,
    /// Reduce ops to try (each only on the types it is defined on).
    pub ops: Vec<ReduceOp>,
    /// Algorithm sets to try: each is applied with `set_algorithms` before its round of cases.
    pub algorithms: Vec<Algorithms>,
    /// Varies the inputs between runs.
    pub seed: u64,
}

impl CheckOptions {
    /// Every dtype and op, counts {0, 1, 13, 1009}, every algorithm with a large and a tiny
    /// segment size.
    pub fn full() -> CheckOptions {
        CheckOptions {
            counts: vec![0, 1, 13, 1009],
            dtypes: DType::ALL.to_vec(),
            ops: ReduceOp::ALL.to_vec(),
            algorithms: every_algorithm(),
            seed: 1,
        }
    }
}

/// One `Algorithms` per algorithm of the all-reduce, broadcast, reduce and reduce-scatter
/// (paired up, so the list is as long as the longest family), each with the default and with a
/// tiny (64-byte) segment size.
///
/// The `auto` all-reduce runs with a bound of [`AUTO_SMALL_BYTES`] instead of the default (which
/// would send every count of the suite to recursive doubling, already covered on its own), so
/// the suite's counts take both of its branches: 0, 1 and 13 elements of most types go to
/// recursive doubling, 13 of 8-byte types and 1009 of any to the ring.
pub fn every_algorithm() -> Vec<Algorithms> {
    let mut out = Vec::new();
    let d = Algorithms::default();
    let longest = [
        AllReduceAlgo::ALL.len(),
        BroadcastAlgo::ALL.len(),
        AllGatherAlgo::ALL.len(),
        AllToAllAlgo::ALL.len(),
        GatherAlgo::ALL.len(),
        ScatterAlgo::ALL.len(),
        ReduceAlgo::ALL.len(),
        ReduceScatterAlgo::ALL.len(),
    ]
    .into_iter()
    .max()
    .unwrap_or(1);
    for seg in [d.segment_bytes, 64] {
        for i in 0..longest {
            let mut a = d;
            a.segment_bytes = seg;
            a.all_reduce = AllReduceAlgo::ALL[i % AllReduceAlgo::ALL.len()];
            a.broadcast = BroadcastAlgo::ALL[i % BroadcastAlgo::ALL.len()];
            a.all_gather = AllGatherAlgo::ALL[i % AllGatherAlgo::ALL.len()];
            a.all_to_all = AllToAllAlgo::ALL[i % AllToAllAlgo::ALL.len()];
            a.gather = GatherAlgo::ALL[i % GatherAlgo::ALL.len()];
            a.scatter = ScatterAlgo::ALL[i % ScatterAlgo::ALL.len()];
            a.reduce = ReduceAlgo::ALL[i % ReduceAlgo::ALL.len()];
            a.reduce_scatter = ReduceScatterAlgo::ALL[i % ReduceScatterAlgo::ALL.len()];
            if a.all_reduce == AllReduceAlgo::Auto {
                a.small_all_reduce_bytes = AUTO_SMALL_BYTES;
            }
            out.push(a);
        }
    }
    out
}

/// The `auto` all-reduce's bound in [`every_algorithm`] (bytes per rank).
pub const AUTO_SMALL_BYTES: usize = 64;

/// The largest count per rank at which the suite runs `gather_v`, `scatter_v`,
/// `reduce_scatter_v`, `scan` and `exscan`. Above it they would double the time of a
/// large-count run (the million-element test in `tests/collectives.rs` took 526 s with them,
/// 254 s without, on a busy 2-core machine), for little: the `_v` forms run the algorithms of
/// their even forms (checked at every count) over other chunk lists, and the scan is a latency
/// algorithm for small buffers.
pub const LARGEST_EXTRA_COUNT: usize = 1 << 16;

/// A result that differs from the reference, or a call that failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    #[error("{case}: wrong result on rank {rank}: first difference at element {index}: got {got}, expected {expected}")]
    Wrong {
        case: String,
        rank: usize,
        index: usize,
        got: String,
        expected: String,
    },
    #[error("{case}: {source}")]
    Failed {
        case: String,
        #[source]
        source: Error,
    },
}

/// How many cases passed.
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckReport {
    pub cases: usize,
}

/// Element types the suite can generate exact values for.
pub trait Sample: Element {
    /// A deterministic value from a hash; `small` keeps it in -8..=8 (or -2..=2 without 0, for
    /// products) so float reductions are exact.
    fn sample(h: u64, kind: ValueKind) -> Self;
    /// `a op b` for the reference, one element at a time (`Avg` sums; see [`divide`]).
    /// Integers wrap; floats are IEEE (f16 and bf16 through f32, as the library promises).
    /// Panics on a bitwise op of a float type: the suite runs an op only on types it is
    /// defined on.
    ///
    /// [`divide`]: Sample::divide
    fn fold(a: Self, b: Self, op: ReduceOp) -> Self;
    /// `Avg`'s last step: `sum / n` (integers: truncated toward zero).
    fn divide(sum: Self, n: usize) -> Self;
    fn show(&self) -> String {
        format!("{self:?}")
    }
}

/// Which values a case needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// Anything (integers: full range; floats: small integers).
    General,
    /// Values whose products stay exact and small: ±1, ±2.
    Product,
}

fn small(h: u64, kind: ValueKind) -> i64 {
    match kind {
        ValueKind::General => (h % 17) as i64 - 8,
        ValueKind::Product => [1, -1, 2, -2][(h % 4) as usize],
    }
}

macro_rules! sample_int {
    ($($t:ty),*) => {$(
        impl Sample for $t {
            fn sample(h: u64, kind: ValueKind) -> Self {
                match kind {
                    ValueKind::General => h as $t,
                    ValueKind::Product => small(h, kind) as $t,
                }
            }
            fn fold(a: Self, b: Self, op: ReduceOp) -> Self {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => a.wrapping_add(b),
                    ReduceOp::Prod => a.wrapping_mul(b),
                    ReduceOp::Min => if b < a { b } else { a },
                    ReduceOp::Max => if b > a { b } else { a },
                    ReduceOp::BAnd => a & b,
                    ReduceOp::BOr => a | b,
                    ReduceOp::BXor => a ^ b,
                    other => panic!("reference: no arithmetic for {other}"),
                }
            }
            fn divide(sum: Self, n: usize) -> Self {
                (i128::from(sum) / n as i128) as $t
            }
        }
    )*};
}
sample_int!(i8, u8, i32, u32, i64, u64);

/// The reference's float arithmetic on `f32`/`f64` values.
macro_rules! float_fold {
    ($a:expr, $b:expr, $op:expr) => {{
        let (a, b) = ($a, $b);
        match $op {
            ReduceOp::Sum | ReduceOp::Avg => a + b,
            ReduceOp::Prod => a * b,
            ReduceOp::Min => {
                if b < a {
                    b
                } else {
                    a
                }
            }
            ReduceOp::Max => {
                if b > a {
                    b
                } else {
                    a
                }
            }
            other => panic!("reference: {other} is not defined on floats"),
        }
    }};
}

impl Sample for f32 {
    fn sample(h: u64, kind: ValueKind) -> Self {
        small(h, kind) as f32
    }
    fn fold(a: Self, b: Self, op: ReduceOp) -> Self {
        float_fold!(a, b, op)
    }
    fn divide(sum: Self, n: usize) -> Self {
        sum / n as f32
    }
}
impl Sample for f64 {
    fn sample(h: u64, kind: ValueKind) -> Self {
        small(h, kind) as f64
    }
    fn fold(a: Self, b: Self, op: ReduceOp) -> Self {
        float_fold!(a, b, op)
    }
    fn divide(sum: Self, n: usize) -> Self {
        sum / n as f64
    }
}
impl Sample for half::f16 {
    fn sample(h: u64, kind: ValueKind) -> Self {
        half::f16::from_f32(small(h, kind) as f32)
    }
    fn fold(a: Self, b: Self, op: ReduceOp) -> Self {
        half::f16::from_f32(float_fold!(a.to_f32(), b.to_f32(), op))
    }
    fn divide(sum: Self, n: usize) -> Self {
        half::f16::from_f32(sum.to_f32() / n as f32)
    }
}
impl Sample for half::bf16 {
    fn sample(h: u64, kind: ValueKind) -> Self {
        half::bf16::from_f32(small(h, kind) as f32)
    }
    fn fold(a: Self, b: Self, op: ReduceOp) -> Self {
        half::bf16::from_f32(float_fold!(a.to_f32(), b.to_f32(), op))
    }
    fn divide(sum: Self, n: usize) -> Self {
        half::bf16::from_f32(sum.to_f32() / n as f32)
    }
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Rank `rank`'s input of `len` elements for case `case`.
pub fn input<T: Sample>(case: u64, rank: usize, len: usize, kind: ValueKind) -> Vec<T> {
    let base = mix(case ^ mix(rank as u64 + 1));
    (0..len)
        .map(|i| T::sample(mix(base ^ i as u64), kind))
        .collect()
}

/// The reduction of `inputs` (one per rank, all of one length) in rank order, element by
/// element with [`Sample::fold`] and, for `Avg`, [`Sample::divide`] by the number of inputs:
/// independent of the library's kernels. Empty without inputs. O(ranks x length).
pub fn reference_reduce<T: Sample>(inputs: &[Vec<T>], op: ReduceOp) -> Vec<T> {
    let Some((first, rest)) = inputs.split_first() else {
        return Vec::new();
    };
    let mut acc = first.clone();
    for x in rest {
        for (a, &b) in acc.iter_mut().zip(x) {
            *a = T::fold(*a, b, op);
        }
    }
    if op == ReduceOp::Avg && inputs.len() > 1 {
        for a in &mut acc {
            *a = T::divide(*a, inputs.len());
        }
    }
    acc
}

/// What [`all_reduce_digest`] measured on one rank.
#[derive(Clone, Copy, Debug)]
pub struct DigestRun {
    /// FNV-1a over the bits of every call's result, call after call.
    pub digest: u64,
    /// The longest single call.
    pub slowest: std::time::Duration,
    /// All calls, input generation included.
    pub total: std::time::Duration,
}

/// Runs `calls` f32 sum all-reduces of `elems` elements on `comm` and digests the results.
/// Rank r's input to call c is a function of (`seed`, r, c) with values whose sum depends on
/// the order of the additions, so two runs give the same digest exactly when they computed
/// bit-identical results, which the same algorithm does over any transport, whatever the
/// delays, losses or reordering on the way. Every rank must call it with the same arguments.
/// Cost: `calls` all-reduces, and generating and hashing `elems` values per call.
pub fn all_reduce_digest(
    comm: &Communicator,
    calls: usize,
    elems: usize,
    seed: u64,
) -> Result<DigestRun, Error> {
    let started = std::time::Instant::now();
    let mut digest = 0xcbf2_9ce4_8422_2325u64;
    let mut slowest = std::time::Duration::ZERO;
    for call in 0..calls {
        let mut z = mix(seed ^ mix((comm.rank() as u64) << 32 | call as u64));
        let mut x: Vec<f32> = (0..elems)
            .map(|_| {
                z = z
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                // 24 significant bits around +-8000: sums round, so their order shows.
                ((z >> 40) as f32) * 1e-3 - 8000.0
            })
            .collect();
        let t = std::time::Instant::now();
        comm.all_reduce(&mut x, ReduceOp::Sum)?;
        slowest = slowest.max(t.elapsed());
        digest = x.iter().fold(digest, |h, v| {
            (h ^ u64::from(v.to_bits())).wrapping_mul(0x100_0000_01b3)
        });
    }
    Ok(DigestRun {
        digest,
        slowest,
        total: started.elapsed(),
    })
}

/// Runs the whole suite on `comm` (every rank must call it with the same options).
pub fn run(comm: &Communicator, opts: &CheckOptions) -> Result<CheckReport, CheckFailure> {
    let mut report = CheckReport::default();
    let saved = comm.algorithms();
    let result = (|| {
        for (ai, algos) in opts.algorithms.iter().enumerate() {
            comm.set_algorithms(*algos);
            for &dtype in &opts.dtypes {
                let mut s = Suite {
                    comm,
                    opts,
                    report: &mut report,
                    case_base: opts.seed.wrapping_mul(1_000_003) ^ (ai as u64) << 40,
                    algos: *algos,
                };
                s.run_dtype(dtype)?;
            }
        }
        Ok(())
    })();
    comm.set_algorithms(saved);
    result.map(|()| report)
}

struct Suite<'a> {
    comm: &'a Communicator,
    opts: &'a CheckOptions,
    report: &'a mut CheckReport,
    case_base: u64,
    algos: Algorithms,
}

impl Suite<'_> {
    fn run_dtype(&mut self, dtype: DType) -> Result<(), CheckFailure> {
        match dtype {
            DType::F32 => self.run_type::<f32>(),
            DType::F64 => self.run_type::<f64>(),
            DType::F16 => self.run_type::<half::f16>(),
            DType::BF16 => self.run_type::<half::bf16>(),
            DType::I8 => self.run_type::<i8>(),
            DType::U8 => self.run_type::<u8>(),
            DType::I32 => self.run_type::<i32>(),
            DType::U32 => self.run_type::<u32>(),
            DType::I64 => self.run_type::<i64>(),
            DType::U64 => self.run_type::<u64>(),
            _ => Ok(()),
        }
    }

    fn run_type<T: Sample>(&mut self) -> Result<(), CheckFailure> {
        for &count in &self.opts.counts.clone() {
            for &op in &self.opts.ops.clone() {
                if Reducer::new(T::DTYPE, op).is_ok() {
                    self.reductions::<T>(count, op)?;
                }
            }
            self.movements::<T>(count)?;
        }
        Ok(())
    }

    fn name(&self, what: &str, dtype: DType, count: usize) -> String {
        let a = &self.algos;
        let all_reduce = match a.all_reduce {
            AllReduceAlgo::Auto => format!(
                "auto -> {} (bound {} B)",
                a.all_reduce_for(count * dtype.size()),
                a.small_all_reduce_bytes
            ),
            forced => forced.to_string(),
        };
        format!(
            "{what} {dtype} count {count} on {} ranks (allreduce {all_reduce}, broadcast {}, \
             allgather {}, alltoall {}, gather {}, scatter {}, reduce {}, reduce_scatter {}, \
             segment {} B)",
            self.comm.size(),
            a.broadcast,
            a.all_gather,
            a.all_to_all,
            a.gather,
            a.scatter,
            a.reduce,
            a.reduce_scatter,
            a.segment_bytes
        )
    }

    fn next_case(&mut self) -> u64 {
        self.report.cases += 1;
        mix(self.case_base ^ self.report.cases as u64)
    }

    fn all_inputs<T: Sample>(&self, case: u64, len: usize, kind: ValueKind) -> Vec<Vec<T>> {
        (0..self.comm.size())
            .map(|r| input(case, r, len, kind))
            .collect()
    }

    fn verify<T: Sample>(&self, case: &str, got: &[T], expected: &[T]) -> Result<(), CheckFailure> {
        if got.len() != expected.len() {
            return Err(CheckFailure::Wrong {
                case: case.into(),
                rank: self.comm.rank(),
                index: got.len().min(expected.len()),
                got: format!("{} elements", got.len()),
                expected: format!("{} elements", expected.len()),
            });
        }
        // Compare bit patterns: exact, and NaN-safe.
        let gb: &[u8] = bytemuck::cast_slice(got);
        let eb: &[u8] = bytemuck::cast_slice(expected);
        let es = T::DTYPE.size();
        match gb
            .chunks_exact(es)
            .zip(eb.chunks_exact(es))
            .position(|(a, b)| a != b)
        {
            None => Ok(()),
            Some(index) => Err(CheckFailure::Wrong {
                case: case.into(),
                rank: self.comm.rank(),
                index,
                got: got[index].show(),
                expected: expected[index].show(),
            }),
        }
    }

    fn reductions<T: Sample>(&mut self, count: usize, op: ReduceOp) -> Result<(), CheckFailure> {
        let (n, rank) = (self.comm.size(), self.comm.rank());
        let kind = if op == ReduceOp::Prod {
            ValueKind::Product
        } else {
            ValueKind::General
        };
        let dt = T::DTYPE;

        // all_reduce (in place) and all_reduce_into
        let case = self.next_case();
        let inputs = self.all_inputs::<T>(case, count, kind);
        let expected = reference_reduce(&inputs, op);
        let label = self.name(&format!("all_reduce {op}"), dt, count);
        let mut buf = inputs[rank].clone();
        self.comm
            .all_reduce(&mut buf, op)
            .map_err(|source| CheckFailure::Failed {
                case: label.clone(),
                source,
            })?;
        self.verify(&label, &buf, &expected)?;
        let mut out = vec![T::zeroed(); count];
        self.comm
            .all_reduce_into(&inputs[rank], &mut out, op)
            .map_err(|source| CheckFailure::Failed {
                case: label.clone(),
                source,
            })?;
        self.verify(&label, &out, &expected)?;

        // reduce to a root that moves with the case
        let root = (case as usize) % n;
        let label = self.name(&format!("reduce {op} root {root}"), dt, count);
        let mut mine = inputs[rank].clone();
        self.comm
            .reduce_in_place(&mut mine, op, root)
            .map_err(|source| CheckFailure::Failed {
                case: label.clone(),
                source,
            })?;
        if rank == root {
            self.verify(&label, &mine, &expected)?;
        } else {
            self.verify(&label, &mine, &inputs[rank])?; // non-roots' buffers are untouched
        }

        // reduce_scatter: every rank contributes n * count, gets block `rank`
        let case = self.next_case();
        let inputs = self.all_inputs::<T>(case, n * count, kind);
        let full = reference_reduce(&inputs, op);
        let label = self.name(&format!("reduce_scatter {op}"), dt, count);
        let mut out = vec![T::zeroed(); count];
        self.comm
            .reduce_scatter(&inputs[rank], &mut out, op)
            .map_err(|source| CheckFailure::Failed {
                case: label.clone(),
                source,
            })?;
        self.verify(&label, &out, &full[rank * count..(rank + 1) * count])?;
        if count > LARGEST_EXTRA_COUNT {
            return Ok(());
        }
        self.reduce_scatter_v::<T>(count, op, kind)?;
        self.scans::<T>(count, op, kind)
    }

    /// reduce_scatter_v: rank r's block has `count + (r + count) % 3` elements.
    fn reduce_scatter_v<T: Sample>(
        &mut self,
        count: usize,
        op: ReduceOp,
        kind: ValueKind,
    ) -> Result<(), CheckFailure> {
        let (n, rank) = (self.comm.size(), self.comm.rank());
        let counts: Vec<usize> = (0..n).map(|r| count + (r + count) % 3).collect();
        let start: usize = counts[..rank].iter().sum();
        let case = self.next_case();
        let inputs = self.all_inputs::<T>(case, counts.iter().sum(), kind);
        let full = reference_reduce(&inputs, op);
        let label = self.name(&format!("reduce_scatter_v {op}"), T::DTYPE, count);
        let mut out = vec![T::zeroed(); counts[rank]];
        self.comm
            .reduce_scatter_v(&inputs[rank], &mut out, &counts, op)
            .map_err(|source| CheckFailure::Failed {
                case: label.clone(),
                source,
            })?;
        self.verify(&label, &out, &full[start..start + counts[rank]])
    }

    /// scan and exscan: the reference folds the ranks before (and with) this one in rank order.
    fn scans<T: Sample>(
        &mut self,
        count: usize,
        op: ReduceOp,
        kind: ValueKind,
    ) -> Result<(), CheckFailure> {
        let rank = self.comm.rank();
        let case = self.next_case();
        let inputs = self.all_inputs::<T>(case, count, kind);
        let label = self.name(&format!("scan {op}"), T::DTYPE, count);
        let mut buf = inputs[rank].clone();
        self.comm
            .scan(&mut buf, op)
            .map_err(|source| CheckFailure::Failed {
                case: label.clone(),
                source,
            })?;
        self.verify(&label, &buf, &reference_reduce(&inputs[..=rank], op))?;

        let label = self.name(&format!("exscan {op}"), T::DTYPE, count);
        let mut buf = inputs[rank].clone();
        self.comm
            .exscan(&mut buf, op)
            .map_err(|source| CheckFailure::Failed {
                case: label.clone(),
                source,
            })?;
        let expected = match rank {
            0 => inputs[0].clone(), // rank 0's buffer is left as it was
            _ => reference_reduce(&inputs[..rank], op),
        };
        self.verify(&label, &buf, &expected)
    }

    fn movements<T: Sample>(&mut self, count: usize) -> Result<(), CheckFailure> {
        let (n, rank) = (self.comm.size(), self.comm.rank());
        let dt = T::DTYPE;
        let fail = |label: &String| {
            let label = label.clone();
            move |source| CheckFailure::Failed {
                case: label,
                source,
            }
        };
        let kind = ValueKind::General;

        // broadcast
        let case = self.next_case();
        let root = (case as usize) % n;
        let inputs = self.all_inputs::<T>(case, count, kind);
        let label = self.name(&format!("broadcast root {root}"), dt, count);
        let mut buf = inputs[rank].clone();
        self.comm.broadcast(&mut buf, root).map_err(fail(&label))?;
        self.verify(&label, &buf, &inputs[root])?;

        // gather and all_gather
        let concat: Vec<T> = inputs.concat();
        let label = self.name(&format!("gather root {root}"), dt, count);
        let mut out = vec![T::zeroed(); n * count];
        let recv = (rank == root).then_some(&mut out[..]);
        self.comm
            .gather(&inputs[rank], recv, root)
            .map_err(fail(&label))?;
        if rank == root {
            self.verify(&label, &out, &concat)?;
        }
        let label = self.name("all_gather", dt, count);
        let mut out = vec![T::zeroed(); n * count];
        self.comm
            .all_gather(&inputs[rank], &mut out)
            .map_err(fail(&label))?;
        self.verify(&label, &out, &concat)?;

        // scatter: the root's buffer is the concatenation
        let label = self.name(&format!("scatter root {root}"), dt, count);
        let mut out = vec![T::zeroed(); count];
        let send = (rank == root).then_some(&concat[..]);
        self.comm
            .scatter(send, &mut out, root)
            .map_err(fail(&label))?;
        self.verify(&label, &out, &concat[rank * count..(rank + 1) * count])?;

        // all_to_all: block j of rank i's input goes to rank j
        let case = self.next_case();
        let inputs = self.all_inputs::<T>(case, n * count, kind);
        let label = self.name("all_to_all", dt, count);
        let mut out = vec![T::zeroed(); n * count];
        self.comm
            .all_to_all(&inputs[rank], &mut out)
            .map_err(fail(&label))?;
        let expected: Vec<T> = (0..n)
            .flat_map(|j| inputs[j][rank * count..(rank + 1) * count].to_vec())
            .collect();
        self.verify(&label, &out, &expected)?;

        // the _v forms: rank r contributes (count + r) % 5 + count elements
        let case = self.next_case();
        let counts: Vec<usize> = (0..n).map(|r| count + (r + count) % 5).collect();
        let inputs: Vec<Vec<T>> = (0..n).map(|r| input(case, r, counts[r], kind)).collect();
        let label = self.name("all_gather_v", dt, count);
        let mut out = vec![T::zeroed(); counts.iter().sum()];
        self.comm
            .all_gather_v(&inputs[rank], &mut out, &counts)
            .map_err(fail(&label))?;
        self.verify(&label, &out, &inputs.concat())?;
        if count <= LARGEST_EXTRA_COUNT {
            self.gather_scatter_v::<T>(count, &counts, &inputs)?;
        }

        // all_to_all_v: rank i sends (i + j + count) % 4 elements to rank j
        let case = self.next_case();
        let amount = |i: usize, j: usize| (i + j + count) % 4 + count / 2;
        let send_counts: Vec<usize> = (0..n).map(|j| amount(rank, j)).collect();
        let recv_counts: Vec<usize> = (0..n).map(|j| amount(j, rank)).collect();
        let block = |i: usize, j: usize| input::<T>(case ^ (j as u64) << 32, i, amount(i, j), kind);
        let send: Vec<T> = (0..n).flat_map(|j| block(rank, j)).collect();
        let expected: Vec<T> = (0..n).flat_map(|j| block(j, rank)).collect();
        let label = self.name("all_to_all_v", dt, count);
        let mut out = vec![T::zeroed(); expected.len()];
        self.comm
            .all_to_all_v(&send, &send_counts, &mut out, &recv_counts)
            .map_err(fail(&label))?;
        self.verify(&label, &out, &expected)?;

        let label = self.name("barrier", dt, count);
        self.comm.barrier().map_err(fail(&label))?;
        self.report.cases += 1;
        Ok(())
    }

    /// gather_v and scatter_v with the per-rank `counts` and `inputs` of the all_gather_v case,
    /// to and from a root that moves with the count.
    fn gather_scatter_v<T: Sample>(
        &mut self,
        count: usize,
        counts: &[usize],
        inputs: &[Vec<T>],
    ) -> Result<(), CheckFailure> {
        let (n, rank) = (self.comm.size(), self.comm.rank());
        let root = (count + 1) % n;
        let concat = inputs.concat();
        let fail = |label: &String| {
            let label = label.clone();
            move |source| CheckFailure::Failed {
                case: label,
                source,
            }
        };
        let label = self.name(&format!("gather_v root {root}"), T::DTYPE, count);
        let mut out = vec![T::zeroed(); concat.len()];
        let recv = (rank == root).then_some(&mut out[..]);
        self.comm
            .gather_v(&inputs[rank], recv, counts, root)
            .map_err(fail(&label))?;
        if rank == root {
            self.verify(&label, &out, &concat)?;
        }
        let label = self.name(&format!("scatter_v root {root}"), T::DTYPE, count);
        let mut out = vec![T::zeroed(); counts[rank]];
        let send = (rank == root).then_some(&concat[..]);
        self.comm
            .scatter_v(send, &mut out, counts, root)
            .map_err(fail(&label))?;
        self.verify(&label, &out, &inputs[rank])?;
        self.report.cases += 2;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_computes_by_hand_what_it_should() {
        let ints = vec![vec![i8::MAX, -3, 7], vec![2, -5, 7], vec![1, 4, -1]];
        // 127 + 2 + 1 wraps to -126; -3 - 5 + 4 = -4; 7 + 7 - 1 = 13.
        assert_eq!(reference_reduce(&ints, ReduceOp::Sum), [-126, -4, 13]);
        assert_eq!(reference_reduce(&ints, ReduceOp::Avg), [-42, -1, 4]);
        assert_eq!(reference_reduce(&ints, ReduceOp::Min), [1, -5, -1]);
        assert_eq!(reference_reduce(&ints, ReduceOp::Max), [127, 4, 7]);
        assert_eq!(
            reference_reduce(&ints, ReduceOp::Prod),
            [(127i32 * 2) as i8, 60, -49]
        );
        assert_eq!(
            reference_reduce(&ints, ReduceOp::BXor),
            [127 ^ 2 ^ 1, -3 ^ -5 ^ 4, -1]
        );
        let u = vec![vec![u64::MAX, 6], vec![3, 6]];
        assert_eq!(reference_reduce(&u, ReduceOp::Sum), [2, 12]);
        assert_eq!(reference_reduce(&u, ReduceOp::Avg), [1, 6]);
        assert_eq!(reference_reduce(&u, ReduceOp::BAnd), [3, 6]);
        let f = vec![vec![1.5f32, -2.0], vec![0.5, 8.0], vec![1.0, -3.0]];
        assert_eq!(reference_reduce(&f, ReduceOp::Sum), [3.0, 3.0]);
        assert_eq!(reference_reduce(&f, ReduceOp::Avg), [1.0, 1.0]);
        assert_eq!(reference_reduce(&f, ReduceOp::Prod), [0.75, 48.0]);
        let h: Vec<Vec<half::bf16>> = [[2.0f32, -8.0], [-6.0, 2.0]]
            .iter()
            .map(|r| r.iter().map(|&v| half::bf16::from_f32(v)).collect())
            .collect();
        let avg: Vec<f32> = reference_reduce(&h, ReduceOp::Avg)
            .iter()
            .map(|v| v.to_f32())
            .collect();
        assert_eq!(avg, [-2.0, -3.0]);
        assert!(reference_reduce::<f64>(&[], ReduceOp::Sum).is_empty());
    }
}
