//! Every collective, every algorithm, every dtype and op, world sizes 1 to 9, over the in-process
//! transport, checked bit for bit against a sequential reference (`tutti::check`).

mod common;

use common::{on_hosts, on_world, quick};
use proptest::prelude::*;
use tutti::algo::{Algorithms, AllReduceAlgo, BroadcastAlgo};
use tutti::check::{self, CheckOptions};
use tutti::{DType, ReduceOp};

fn run_suite(n: usize, opts: CheckOptions) -> usize {
    let results = on_world(n, quick(60), move |c| {
        check::run(&c, &opts).map(|r| r.cases)
    });
    let errors: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(rank, r)| r.as_ref().err().map(|e| format!("rank {rank}: {e}")))
        .collect();
    assert!(errors.is_empty(), "world of {n}:\n{}", errors.join("\n"));
    results
        .into_iter()
        .map(|r| r.unwrap_or(0))
        .max()
        .unwrap_or(0)
}

#[test]
fn full_suite_on_world_sizes_1_to_9() {
    for n in 1..=9 {
        let cases = run_suite(
            n,
            CheckOptions {
                counts: vec![0, 1, 13],
                ..CheckOptions::full()
            },
        );
        assert!(cases > 1000, "world {n}: only {cases} cases ran");
    }
}

#[test]
fn a_million_elements_every_collective_on_world_sizes_1_to_9() {
    for n in 1..=9 {
        run_suite(
            n,
            CheckOptions {
                counts: vec![(1 << 20) + 3],
                dtypes: vec![DType::F32, DType::BF16, DType::I32],
                ops: vec![ReduceOp::Sum, ReduceOp::Max],
                algorithms: check::every_algorithm().into_iter().take(3).collect(),
                seed: n as u64,
            },
        );
    }
}

fn algorithm_strategy() -> impl Strategy<Value = Algorithms> {
    (
        prop::sample::select(AllReduceAlgo::ALL.to_vec()),
        prop::sample::select(BroadcastAlgo::ALL.to_vec()),
        prop::sample::select(vec![1usize, 8, 60, 4096, 1 << 20]),
    )
        .prop_map(|(ar, bc, seg)| Algorithms {
            all_reduce: ar,
            broadcast: bc,
            segment_bytes: seg,
            ..Algorithms::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn random_worlds_counts_types_and_algorithms(
        n in 1usize..=9,
        count in prop_oneof![Just(0usize), Just(1), Just(13), Just(1009), 0usize..300],
        dtype in prop::sample::select(DType::ALL.to_vec()),
        ops in prop::sample::subsequence(ReduceOp::ALL.to_vec(), 1..=3),
        algos in algorithm_strategy(),
        seed in any::<u64>(),
    ) {
        run_suite(n, CheckOptions { counts: vec![count], dtypes: vec![dtype], ops, algorithms: vec![algos], seed });
    }
}

#[test]
fn all_reduce_of_random_floats_is_bit_identical_on_every_rank() {
    for algo in AllReduceAlgo::ALL {
        for n in [3, 5, 8] {
            let results = on_world(n, quick(30), move |c| {
                c.set_algorithms(Algorithms {
                    all_reduce: *algo,
                    segment_bytes: 256,
                    ..Default::default()
                });
                let mut x: Vec<f32> = (0..10_007)
                    .map(|i| ((i * 7919 + c.rank() * 104_729) % 1000) as f32 * 1.0e-3 + 1.0 / 3.0)
                    .collect();
                c.all_reduce(&mut x, ReduceOp::Sum).expect("all_reduce");
                x
            });
            for r in 1..n {
                assert!(
                    results[r]
                        .iter()
                        .zip(&results[0])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{algo} on {n} ranks: rank {r} differs from rank 0"
                );
            }
            // and it is the sum, within f32 rounding of 10 terms
            let exact: f64 = (0..n)
                .map(|r| ((7919usize * 5 + r * 104_729) % 1000) as f64 * 1.0e-3 + 1.0 / 3.0)
                .sum();
            let got = results[0][5] as f64;
            assert!(
                (got - exact).abs() < 1e-5 * exact.abs().max(1.0),
                "{algo}: {got} vs {exact}"
            );
        }
    }
}

#[test]
fn worlds_spread_over_hosts_run_the_hierarchical_default_and_pass_the_suite() {
    for hosts in [
        vec![0, 0, 1, 1],
        vec![0, 1, 0, 1, 2],
        vec![3, 3, 3, 1, 1, 2, 3],
    ] {
        let layout = hosts.clone();
        let results = on_hosts(&hosts, quick(60), move |c| {
            assert!(c.hosts().is_hierarchical(), "{layout:?}");
            let choice = c
                .algorithms()
                .all_reduce_for_hosts(1 << 20, Some(c.hosts()));
            assert_eq!(choice, AllReduceAlgo::Hierarchical);
            let opts = CheckOptions {
                counts: vec![0, 13, 5000],
                algorithms: vec![Algorithms::default()],
                ..CheckOptions::full()
            };
            let cases = check::run(&c, &opts).map_err(|e| e.to_string())?.cases;
            // A split keeps the hosts of its members: the odd ranks of [0, 0, 1, 1] are one
            // rank on each of two hosts (not hierarchical).
            let odd = c
                .split(Some((c.rank() % 2) as u32), 0)
                .map_err(|e| e.to_string())?
                .expect("a color");
            let again = check::run(&odd, &opts).map_err(|e| e.to_string())?.cases;
            Ok::<_, String>((cases, again, odd.hosts().num_hosts()))
        });
        for (r, res) in results.into_iter().enumerate() {
            let (cases, again, _) = res.unwrap_or_else(|e| panic!("{hosts:?} rank {r}: {e}"));
            assert!(
                cases > 100 && again > 100,
                "{hosts:?}: {cases} and {again} cases"
            );
        }
    }
    let split_hosts = on_hosts(&[0, 0, 1, 1], quick(30), |c| {
        c.split(Some((c.rank() % 2) as u32), 0)
            .unwrap()
            .unwrap()
            .hosts()
            .num_hosts()
    });
    assert_eq!(split_hosts, vec![2, 2, 2, 2]);
}
