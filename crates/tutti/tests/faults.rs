//! Collectives through the fault-injecting transport (`tutti::transport::faulty`): every message
//! held back 0-20 ms at random (seeded), messages of different keys reordered. 4 in-process
//! ranks, 100 all-reduces of 4 MiB of f32 each, must give results bit-identical to a clean run
//! of the same algorithm, every call within its deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tutti::transport::faulty::FaultyTransport;
use tutti::transport::mem::MemTransport;
use tutti::transport::Transport;
use tutti::{Algorithms, Communicator, Config, DType, ReduceOp};
use tutti_core::algo::AllReduceAlgo;
use tutti_core::model::{Model, Op as ModelOp, Tuning};

const RANKS: usize = 4;
const CALLS: usize = 100;
/// 4 MiB of f32.
const ELEMS: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);

/// Rank `rank`'s input to call `call`: values whose sum depends on the order of additions, so
/// only the same schedule gives the same bits.
fn input(rank: usize, call: usize) -> Vec<f32> {
    let mut z = (rank as u64) << 32 | call as u64;
    (0..ELEMS)
        .map(|_| {
            z = z
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((z >> 40) as f32) * 1e-3 - 8000.0
        })
        .collect()
}

/// FNV-1a over the bits of the result.
fn digest(x: &[f32]) -> u64 {
    x.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        (h ^ u64::from(v.to_bits())).wrapping_mul(0x100_0000_01b3)
    })
}

/// What one run gives: each rank's digests, per call, and the longest call.
struct Run {
    digests: Vec<Vec<u64>>,
    slowest: Duration,
    wall: Duration,
    plan: String,
}

fn run(transports: Vec<Arc<dyn Transport>>, algorithms: Algorithms, tuning: Option<Tuning>) -> Run {
    let started = Instant::now();
    let config = Config {
        timeout: TIMEOUT,
        algorithms,
        ..Config::default()
    };
    let handles: Vec<_> = transports
        .into_iter()
        .map(|t| {
            let (config, tuning) = (config.clone(), tuning.clone());
            std::thread::spawn(move || {
                let comm = Communicator::with_transport(t, config);
                comm.set_tuning(tuning);
                let rank = comm.rank();
                let plan = comm.plan_of(ModelOp::AllReduce, Some(DType::F32), ELEMS * 4);
                let mut slowest = Duration::ZERO;
                let digests: Vec<u64> = (0..CALLS)
                    .map(|call| {
                        let mut x = input(rank, call);
                        let t = Instant::now();
                        comm.all_reduce(&mut x, ReduceOp::Sum)
                            .unwrap_or_else(|e| panic!("rank {rank}, call {call}: {e}"));
                        slowest = slowest.max(t.elapsed());
                        digest(&x)
                    })
                    .collect();
                (
                    digests,
                    slowest,
                    format!(
                        "{} in segments of {} B",
                        plan.algorithm.name(),
                        plan.segment
                    ),
                )
            })
        })
        .collect();
    let mut out = Run {
        digests: Vec::new(),
        slowest: Duration::ZERO,
        wall: Duration::ZERO,
        plan: String::new(),
    };
    for (r, h) in handles.into_iter().enumerate() {
        let (d, s, plan) = h.join().unwrap_or_else(|_| panic!("rank {r} panicked"));
        out.digests.push(d);
        out.slowest = out.slowest.max(s);
        out.plan = plan;
    }
    out.wall = started.elapsed();
    out
}

fn clean() -> Vec<Arc<dyn Transport>> {
    MemTransport::world(RANKS)
        .into_iter()
        .map(|t| t as Arc<dyn Transport>)
        .collect()
}

fn faulty(seed: u64) -> Vec<Arc<dyn Transport>> {
    FaultyTransport::world(RANKS, seed, Duration::from_millis(20))
        .expect("courier threads")
        .into_iter()
        .map(|t| t as Arc<dyn Transport>)
        .collect()
}

fn check(name: &str, algorithms: Algorithms, tuning: Option<Tuning>, seed: u64) {
    let reference = run(clean(), algorithms, tuning.clone());
    let delayed = run(faulty(seed), algorithms, tuning);
    eprintln!(
        "{name} ({}): clean {:.1?} (slowest call {:.1?}), delayed and reordered {:.1?} (slowest \
         call {:.1?}, deadline {TIMEOUT:?})",
        delayed.plan, reference.wall, reference.slowest, delayed.wall, delayed.slowest
    );
    for r in 1..RANKS {
        assert_eq!(
            reference.digests[r], reference.digests[0],
            "{name}: clean rank {r}"
        );
    }
    for r in 0..RANKS {
        assert_eq!(delayed.digests[r], reference.digests[0], "{name}: rank {r}");
    }
    assert!(delayed.slowest < TIMEOUT, "{name}: {:?}", delayed.slowest);
}

#[test]
fn all_reduces_through_delays_and_reordering_are_bit_identical_to_a_clean_run() {
    let ring = Algorithms {
        all_reduce: AllReduceAlgo::Ring,
        ..Algorithms::default()
    };
    check("forced ring", ring, None, 1);
    // `auto` choosing by a model of a long, slow link (as netlab's lossy WAN).
    let wan = Tuning::of(Model::profile("wan").expect("the wan profile"));
    check("auto (wan model)", Algorithms::default(), Some(wan), 2);
}

/// The correctness suite (every collective, the v-forms and scans included, every algorithm;
/// fewer types, ops and counts than `tests/collectives.rs`) on 3 ranks whose messages are held
/// back 0-2 ms at random and reordered between keys: every result as the reference says.
#[test]
fn the_correctness_suite_passes_through_delays_and_reordering() {
    let started = Instant::now();
    let opts = tutti::check::CheckOptions {
        counts: vec![0, 13, 1009],
        dtypes: vec![DType::F32, DType::I64, DType::BF16],
        ops: vec![ReduceOp::Sum, ReduceOp::Max, ReduceOp::Avg],
        algorithms: tutti::check::every_algorithm(),
        seed: 3,
    };
    let handles: Vec<_> = FaultyTransport::world(3, 9, Duration::from_millis(2))
        .expect("courier threads")
        .into_iter()
        .map(|t| {
            let opts = opts.clone();
            std::thread::spawn(move || {
                let comm = Communicator::with_transport(t, Config::default());
                tutti::check::run(&comm, &opts).map(|r| r.cases)
            })
        })
        .collect();
    for (r, h) in handles.into_iter().enumerate() {
        let cases = h
            .join()
            .unwrap_or_else(|_| panic!("rank {r} panicked"))
            .unwrap_or_else(|e| panic!("rank {r}: {e}"));
        assert!(cases > 100, "rank {r}: only {cases} cases");
        eprintln!("rank {r}: {cases} cases passed");
    }
    eprintln!("the suite through delays: {:.1?}", started.elapsed());
}
