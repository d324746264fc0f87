//! Measuring the cost model on the machine and links a communicator really has.
//!
//! [`measure_gammas`] times the reduction kernels here; [`agree`], run by
//! [`Communicator::init`](crate::Communicator::init), adds the links' latency and bandwidth and
//! makes every rank hold the same model; `tutti probe` measures the matrix of every pair.
//! Every measurement is bounded in count and time.
//!
//! ## What `agree` measures, and how the ranks agree
//! Rank 0's setting decides (`TUTTI_TUNE`, see [`TuneSetting`]); rank 0 broadcasts it, with the
//! model when it comes from a file, so ranks with different settings still agree. To measure:
//! 1. every rank at once sends to its right neighbour and receives from its left one (a ring
//!    step, every link busy as in a collective), rounds of 8 bytes and of [`BETA_BYTES`]: a
//!    first estimate of the links;
//! 2. each rank times the reduction kernels of every dtype on [`GAMMA_BYTES`] (`gamma`);
//! 3. `alpha`: 8-byte all-reduces by recursive doubling, divided by their messages on the
//!    critical path (at least the rounds' latency);
//! 4. `beta`: a ring all-reduce of about 10 ms (sized by step 1), less its modelled latency and
//!    combines, divided by its bytes on the critical path.
//!
//! Steps 3 and 4 fit the model to real collectives, not to bare links: on this 2-core machine,
//! with 4 ranks, the bare rounds gave 1.3 us and 1.3 ns/B where the collectives paid about
//! 5 us per message and 0.4 ns/B, and the model chose Rabenseifner at 4 KiB to 64 MiB, up to
//! 2.3 times slower than the ring (`docs/validation/`). The kernels are timed last: 8-byte
//! all-reduces right after them took 26-30 us against 1.5-2.3 us before, on 2 ranks here
//! (cause not found). The ranks take the maximum of every value (the slowest link and rank
//! bound a collective), round it to a half-octave ([`Tuning::bucketed`]) so that the same
//! machine gives the same choices run after run, and use that. It runs on a
//! communicator id of its own, so the world's first call is still `#1`.

use crate::comm::Communicator;
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tutti_core::algo::{Algorithms, AllReduceAlgo};
use tutti_core::model::{cost, Algorithm, Model, Tuning};
use tutti_core::{DType, ReduceOp, Reducer};

/// How a communicator gets its cost model (`TUTTI_TUNE`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum TuneSetting {
    /// Measure at creation (`TUTTI_TUNE` unset, `1` or `on`): well under a second on one host.
    #[default]
    Measure,
    /// No model (`0` or `off`): every `auto` runs its fixed default (see
    /// [`tutti_core::model::choose`]).
    Off,
    /// A model file (any other value): read it if it exists (pinned: the same choices every
    /// run), else measure and write it there (a cache).
    File(PathBuf),
}

impl TuneSetting {
    /// Parses a `TUTTI_TUNE` value.
    pub fn parse(v: &str) -> TuneSetting {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "1" | "on" | "true" | "measure" => TuneSetting::Measure,
            "0" | "off" | "false" => TuneSetting::Off,
            _ => TuneSetting::File(PathBuf::from(v.trim())),
        }
    }
}

/// The message size of the bandwidth rounds.
pub const BETA_BYTES: usize = 1 << 20;
/// Time allowed to each of the two kinds of rounds (after a first round that sizes them).
const ROUND_BUDGET: Duration = Duration::from_millis(150);
/// Bounds on the rounds of each kind.
const MIN_ROUNDS: usize = 3;
const MAX_ROUNDS: usize = 40;
/// Tags of the tuning's point-to-point messages (on the tuning's own communicator id).
const TAG_SMALL: u32 = 1;
const TAG_BIG: u32 = 2;

/// Runs the tuning protocol on `comm` (every rank calls it, as part of creating the world) and
/// returns the model every rank agreed on, or `None` when rank 0's setting is [`TuneSetting::Off`].
pub fn agree(comm: &Communicator, setting: &TuneSetting) -> Result<Option<Tuning>> {
    let wrap =
        |e: Error| Error::bootstrap(Some(comm.rank()), format!("tuning the cost model: {e}"));
    let fail = |what: String| {
        Error::bootstrap(Some(comm.rank()), format!("tuning the cost model: {what}"))
    };
    // Rank 0's decision: 0 off, 1 measure, 2 the values that follow (from a file).
    let mut head = [0f64; HEAD_LEN];
    if comm.rank() == 0 {
        head = decide(setting).map_err(fail)?;
    }
    comm.broadcast(&mut head, 0).map_err(wrap)?;
    let tuning = match head[0] as u8 {
        0 => return Ok(None),
        2 => from_array(&head),
        _ => {
            let measured = measure(comm).map_err(wrap)?;
            let mut values = to_array(&measured);
            comm.all_reduce(&mut values, ReduceOp::Max).map_err(wrap)?;
            let agreed = from_array(&values).bucketed();
            if comm.rank() == 0 {
                if let TuneSetting::File(path) = setting {
                    write_cache(path, &agreed, comm.size()).map_err(fail)?;
                }
            }
            agreed
        }
    };
    tracing::debug!(rank = comm.rank(), ?tuning, "cost model");
    Ok(Some(tuning))
}

/// Mode, alpha, beta, gamma, then one gamma per dtype of [`DType::ALL`] (NaN: none).
const HEAD_LEN: usize = 4 + DType::ALL.len();

fn decide(setting: &TuneSetting) -> std::result::Result<[f64; HEAD_LEN], String> {
    let mut head = [0f64; HEAD_LEN];
    match setting {
        TuneSetting::Off => {}
        TuneSetting::Measure => head[0] = 1.0,
        TuneSetting::File(path) if !path.exists() => head[0] = 1.0,
        TuneSetting::File(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("TUTTI_TUNE={}: {e}", path.display()))?;
            let t =
                Tuning::parse(&text).map_err(|e| format!("TUTTI_TUNE={}: {e}", path.display()))?;
            head = to_array(&t);
            head[0] = 2.0;
        }
    }
    Ok(head)
}

fn to_array(t: &Tuning) -> [f64; HEAD_LEN] {
    let mut a = [f64::NAN; HEAD_LEN];
    a[0] = 1.0;
    a[1] = t.model.alpha_s;
    a[2] = t.model.beta_s_per_byte;
    a[3] = t.model.gamma_s_per_byte;
    for (i, d) in DType::ALL.iter().enumerate() {
        if let Some(&(_, g)) = t.gamma_by_dtype.iter().find(|(x, _)| x == d) {
            a[4 + i] = g;
        }
    }
    a
}

fn from_array(a: &[f64; HEAD_LEN]) -> Tuning {
    Tuning {
        model: Model {
            alpha_s: a[1],
            beta_s_per_byte: a[2],
            gamma_s_per_byte: a[3],
        },
        gamma_by_dtype: DType::ALL
            .iter()
            .enumerate()
            .filter(|&(i, _)| a[4 + i].is_finite())
            .map(|(i, &d)| (d, a[4 + i]))
            .collect(),
    }
}

/// This rank's measurements (see the module doc): the links' raw ring rounds, then `alpha`
/// and `beta` fitted to real collectives on them, and the kernels' `gamma`s.
fn measure(comm: &Communicator) -> Result<Tuning> {
    let started = Instant::now();
    let n = comm.size();
    // The links alone: a first estimate, which sizes the collectives below.
    let round_alpha = median(&mut ring_rounds(comm, 8, TAG_SMALL)?);
    let big = median(&mut ring_rounds(comm, BETA_BYTES, TAG_BIG)?);
    let mut raw = [
        round_alpha,
        ((big - round_alpha) / BETA_BYTES as f64).max(1e-12),
    ];
    comm.all_reduce(&mut raw, ReduceOp::Max)?;
    // alpha: an 8-byte all-reduce by recursive doubling is its messages' latencies and
    // nothing else, waking and scheduling included (several ranks per core pay that on
    // every message, which the rounds above hide).
    let rd = Algorithm::AllReduce(AllReduceAlgo::RecursiveDoubling);
    let small = timed_all_reduce(comm, AllReduceAlgo::RecursiveDoubling, 2)?;
    let alpha = small / cost(rd, n, 8, 1).alpha.max(1.0);
    // beta: a pipelined ring all-reduce of about RING_SECONDS, less its modelled latency and
    // combines, per byte it moves on its critical path.
    let bytes = ring_bytes(n, raw[1]);
    let seg = comm.algorithms().segment_bytes;
    let ring = cost(Algorithm::AllReduce(AllReduceAlgo::Ring), n, bytes, seg);
    let t = timed_all_reduce(comm, AllReduceAlgo::Ring, bytes / 4)?;
    // Last: the kernels' timing leaves the links slow for a while (8-byte all-reduces took
    // 26-30 us right after it against 1.5-2.3 us before, on 2 ranks here; cause not found).
    let gammas = measure_gammas();
    let f32_gamma = gammas
        .iter()
        .find(|(d, _)| *d == DType::F32)
        .map_or(0.0, |&(_, g)| g);
    let fitted = (t - ring.alpha * alpha - ring.gamma * f32_gamma) / ring.beta.max(1.0);
    let beta = if fitted > 0.0 { fitted } else { raw[1] };
    tracing::debug!(
        rank = comm.rank(),
        round_alpha,
        raw_beta = raw[1],
        alpha,
        beta,
        ring_bytes = bytes,
        took = ?started.elapsed(),
        "measured the links"
    );
    Ok(Tuning {
        model: Model {
            alpha_s: alpha.max(round_alpha),
            beta_s_per_byte: beta,
            gamma_s_per_byte: f32_gamma,
        },
        gamma_by_dtype: gammas,
    })
}

/// How long the ring all-reduce that fits `beta` should take.
const RING_SECONDS: f64 = 0.01;

/// The bytes of that ring all-reduce on `n` ranks with `beta` seconds per byte (the links'
/// raw estimate): between 64 KiB and 16 MiB, a multiple of `4 n` (whole f32 chunks).
fn ring_bytes(n: usize, beta: f64) -> usize {
    let path = 2.0 * (n as f64 - 1.0) / n as f64;
    let want = (RING_SECONDS / (beta * path.max(1.0))) as usize;
    let b = want.clamp(64 << 10, 16 << 20);
    b / (4 * n) * (4 * n)
}

/// The median time of all-reduces of `count` f32 by `algo` (forced on this communicator for
/// the duration): one untimed call, then as many as fit [`ROUND_BUDGET`] by the slowest
/// rank's first timed call, within [`MIN_ROUNDS`]..=[`MAX_ROUNDS`].
fn timed_all_reduce(comm: &Communicator, algo: AllReduceAlgo, count: usize) -> Result<f64> {
    let before = comm.algorithms();
    comm.set_algorithms(Algorithms {
        all_reduce: algo,
        ..before
    });
    let mut buf = vec![1f32; count];
    let mut call = || -> Result<f64> {
        let t = Instant::now();
        comm.all_reduce(&mut buf, ReduceOp::Sum)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let result = (|| {
        call()?;
        let mut first = [call()?];
        comm.all_reduce(&mut first, ReduceOp::Max)?;
        let fit = (ROUND_BUDGET.as_secs_f64() / first[0].max(1e-9)) as usize;
        let mut times = (0..fit.clamp(MIN_ROUNDS, MAX_ROUNDS))
            .map(|_| call())
            .collect::<Result<Vec<f64>>>()?;
        tracing::trace!(?algo, count, ?times, "timed all-reduces");
        Ok(median(&mut times))
    })();
    comm.set_algorithms(before);
    result
}

/// Times ring steps of `bytes` bytes (send right, receive left, every rank at once): one
/// untimed round, then as many as fit [`ROUND_BUDGET`] by the slowest rank's first timed
/// round (all ranks agree on the count), within [`MIN_ROUNDS`]..=[`MAX_ROUNDS`].
fn ring_rounds(comm: &Communicator, bytes: usize, tag: u32) -> Result<Vec<f64>> {
    let (n, r) = (comm.size(), comm.rank());
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    let send = vec![0u8; bytes];
    let mut recv = vec![0u8; bytes];
    let mut round = || -> Result<f64> {
        let t = Instant::now();
        comm.sendrecv(&send, right, tag, &mut recv, left, tag)?;
        Ok(t.elapsed().as_secs_f64())
    };
    round()?; // warm the links and the pages
    let mut first = [round()?];
    comm.all_reduce(&mut first, ReduceOp::Max)?;
    let fit = (ROUND_BUDGET.as_secs_f64() / first[0].max(1e-9)) as usize;
    let rounds = fit.clamp(MIN_ROUNDS, MAX_ROUNDS);
    (0..rounds).map(|_| round()).collect()
}

/// Writes the agreed model to `path` (the cache of `TUTTI_TUNE=FILE`).
fn write_cache(path: &std::path::Path, t: &Tuning, n: usize) -> std::result::Result<(), String> {
    let comment = vec![format!(
        "measured by a world of {n} ranks at creation (TUTTI_TUNE={}); delete to measure again",
        path.display()
    )];
    std::fs::write(path, t.to_text(&comment))
        .map_err(|e| format!("writing TUTTI_TUNE={}: {e}", path.display()))
}

/// Bytes reduced per timing of a kernel: beyond the second-level cache, as the combines of a
/// large collective are (at 256 KiB, in the cache, the f32 sum measured 0.04 ns per byte here,
/// a quarter of what large all-reduces see); a few milliseconds per dtype.
const GAMMA_BYTES: usize = 4 << 20;
/// Timings per dtype; the median counts.
const GAMMA_REPS: usize = 3;

/// Seconds per byte of an in-place sum of each dtype (median of a few timings of
/// [`GAMMA_BYTES`]), in the order of [`DType::ALL`]. Tens of milliseconds in all here.
pub fn measure_gammas() -> Vec<(DType, f64)> {
    DType::ALL
        .iter()
        .filter_map(|&d| Some((d, measure_gamma(d)?)))
        .collect()
}

/// Seconds per byte of an in-place sum of `dtype`, or `None` if it has no sum.
pub fn measure_gamma(dtype: DType) -> Option<f64> {
    let reducer = Reducer::new(dtype, ReduceOp::Sum).ok()?;
    let mut acc = vec![0u8; GAMMA_BYTES];
    let src = vec![0u8; GAMMA_BYTES];
    reducer.combine(&mut acc, &src); // warm the pages and the caches
    let mut times: Vec<f64> = (0..GAMMA_REPS)
        .map(|_| {
            let t = Instant::now();
            reducer.combine(&mut acc, &src);
            t.elapsed().as_secs_f64()
        })
        .collect();
    std::hint::black_box(&acc);
    Some(median(&mut times) / GAMMA_BYTES as f64)
}

/// The median of `v` (the upper one of an even count); 0 for an empty slice.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_has_a_positive_finite_reduction_speed() {
        let g = measure_gammas();
        assert_eq!(g.len(), DType::ALL.len());
        for (d, s) in g {
            assert!(s.is_finite() && s > 0.0 && s < 1e-6, "{d:?}: {s}");
        }
    }
}
