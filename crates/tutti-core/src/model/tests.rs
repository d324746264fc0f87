//! Tests of [`super`] (model.rs).

use super::*;

const WORLDS: [usize; 9] = [1, 2, 3, 4, 5, 8, 13, 1000, 1_000_000];
const SIZES: [usize; 8] = [0, 1, 7, 8, 4096, 100_003, 1 << 20, 1 << 30];

/// The least predicted time over every selectable algorithm and segment, computed here
/// without [`candidates`].
fn brute_force_least(op: Op, bytes: usize, n: usize, model: &Model) -> f64 {
    let mut least = f64::INFINITY;
    for algo in op.algorithms() {
        if matches!(
            algo,
            Algorithm::AllReduce(AllReduceAlgo::Auto | AllReduceAlgo::Hierarchical)
                | Algorithm::Broadcast(BroadcastAlgo::Hierarchical)
        ) {
            continue;
        }
        for seg in segment_candidates() {
            least = least.min(model.predict(cost(algo, n, bytes, seg)));
        }
    }
    least
}

#[test]
fn select_is_the_argmin_of_the_predictions() {
    for (_, model) in Model::PROFILES {
        for op in Op::ALL {
            for n in WORLDS {
                for bytes in SIZES {
                    let choice = select(op, bytes, n, &model);
                    let c = cost(choice.algorithm, n, bytes, choice.segment);
                    assert_eq!(choice.seconds, model.predict(c));
                    assert_eq!(choice.algorithm.op(), op);
                    assert!(choice.algorithm.is_selectable(), "{}", choice.algorithm);
                    let least = brute_force_least(op, bytes, n, &model);
                    assert_eq!(choice.seconds, least, "{op} n={n} m={bytes} {model:?}");
                    assert!(!choice.reason.is_empty());
                }
            }
        }
    }
}

#[test]
fn select_picks_few_messages_on_long_links_and_few_bytes_on_fast_ones() {
    let wan = Model::profile("wan").unwrap();
    let small = select(Op::AllReduce, 8, 64, &wan);
    assert_eq!(
        small.algorithm,
        Algorithm::AllReduce(AllReduceAlgo::RecursiveDoubling)
    );
    let barrier = select(Op::Barrier, 0, 64, &wan);
    assert_eq!(
        barrier.algorithm,
        Algorithm::Barrier(BarrierAlgo::Dissemination)
    );
    let fast = Model::profile("100gbe").unwrap();
    let big = select(Op::Broadcast, 1 << 30, 4, &fast);
    assert_eq!(big.algorithm, Algorithm::Broadcast(BroadcastAlgo::Chain));
}

#[test]
fn every_algorithm_has_a_finite_cost_and_one_rank_costs_nothing() {
    for algo in Algorithm::all() {
        assert_eq!(cost(algo, 1, 1 << 20, 4096), Cost::ZERO, "{algo}");
        for n in WORLDS {
            for m in SIZES {
                let c = cost(algo, n, m, 1 << 20);
                let parts = [c.alpha, c.beta, c.gamma];
                assert!(
                    parts.iter().all(|x| x.is_finite() && *x >= 0.0),
                    "{algo} {c:?}"
                );
            }
        }
    }
    assert_eq!(Algorithm::all().len(), 33);
    let autos = Algorithm::all().into_iter().filter(|a| a.is_auto()).count();
    assert_eq!(autos, 8, "every collective but the barrier has an auto");
    for a in Algorithm::all() {
        assert_eq!(Algorithm::from_code(a.code()), Some(a));
    }
    assert_eq!(Algorithm::from_code(0), None);
}

#[test]
fn the_formulas_of_the_module_docs() {
    let ring = cost(Algorithm::AllReduce(AllReduceAlgo::Ring), 4, 4096, 1 << 20);
    assert_eq!(ring, Cost::new(6.0, 6144.0, 3072.0));
    let rd = cost(
        Algorithm::AllReduce(AllReduceAlgo::RecursiveDoubling),
        5,
        100,
        1,
    );
    assert_eq!(rd, Cost::new(4.0, 400.0, 600.0));
    let chain = cost(Algorithm::Broadcast(BroadcastAlgo::Chain), 4, 1000, 100);
    assert_eq!(chain, Cost::new(12.0, 1200.0, 0.0));
    let barrier = cost(Algorithm::Barrier(BarrierAlgo::Dissemination), 5, 0, 1);
    assert_eq!(barrier, Cost::new(3.0, 0.0, 0.0));
}

#[test]
fn profiles_and_names_parse() {
    let wan = Model::profile("WAN").unwrap();
    assert_eq!(wan.alpha_s, 25e-3);
    assert!((wan.beta_s_per_byte - 8.0 / 100e6).abs() < 1e-18);
    assert!(Model::profile("token-ring").is_none());
    assert!(Model::profile_names().contains("1gbe"));
    for op in Op::ALL {
        assert_eq!(Op::parse(op.name()), Some(op));
    }
    assert_eq!(Op::parse("All-Reduce"), Some(Op::AllReduce));
    assert_eq!(Op::parse("allsum"), None);
    let c = Cost::new(2.0, 1000.0, 10.0);
    let m = Model::link(1e-3, 1e-6);
    assert!((m.predict(c) - (2e-3 + 1e-3 + 10.0 * GAMMA_S_PER_BYTE)).abs() < 1e-15);
}

#[test]
fn stop_and_wait_gets_one_packet_per_round_trip() {
    // 10 kbit per 50 ms + 0.1 ms of transmission: about 200 kbit/s.
    let sw = windowed_throughput(1, 1250, 0.05, 100e6);
    assert!((sw - 10_000.0 / 0.0501).abs() < 1e-6, "{sw}");
    assert!((windowed_throughput(10, 1250, 0.05, 100e6) - 10.0 * sw).abs() < 1e-6);
    assert_eq!(window_to_fill(1250, 0.05, 100e6), 501);
    assert!(windowed_throughput(501, 1250, 0.05, 100e6) > 100e6 * (1.0 - 1e-9));
    assert!(windowed_throughput(500, 1250, 0.05, 100e6) < 100e6);
}

#[test]
fn choose_forced_then_hierarchy_then_the_model_then_the_defaults() {
    let d = Algorithms::default();
    let lo = Model::profile("loopback").unwrap();
    for op in Op::ALL {
        for n in [2, 3, 4, 8] {
            for m in [0, 8, 9_600, 1 << 20, 64 << 20] {
                let c = choose(&d, op, m, n, Some(&lo), false);
                assert!(!c.algorithm.is_auto(), "{op} {n} {m}");
                assert_eq!(c.algorithm.op(), op);
                if op == Op::Barrier {
                    continue; // one algorithm, nothing to choose
                }
                let mut segs = segment_candidates();
                segs.push(d.segment_bytes);
                assert_eq!(c, select_among(op, m, n, &lo, &segs), "{op} {n} {m}");
                let none = choose(&d, op, m, n, None, false);
                assert!(!none.algorithm.is_auto(), "{op}");
                assert_eq!(none.segment, d.segment_bytes);
            }
        }
    }
    // Without a model: the size rule of the all-reduce, the large-message algorithm elsewhere.
    let small = choose(&d, Op::AllReduce, 8, 4, None, false);
    assert_eq!(
        small.algorithm,
        Algorithm::AllReduce(AllReduceAlgo::RecursiveDoubling)
    );
    let bc = choose(&d, Op::Broadcast, 8, 4, None, false);
    assert_eq!(bc.algorithm, Algorithm::Broadcast(BroadcastAlgo::Chain));
    // A hierarchy wins over the model for the all-reduce only; forcing wins over both.
    let h = choose(&d, Op::AllReduce, 8, 4, Some(&lo), true);
    assert_eq!(
        h.algorithm,
        Algorithm::AllReduce(AllReduceAlgo::Hierarchical)
    );
    let forced = d.parse("allreduce:naive,broadcast:binomial").unwrap();
    for (op, want) in [
        (Op::AllReduce, Algorithm::AllReduce(AllReduceAlgo::Naive)),
        (Op::Broadcast, Algorithm::Broadcast(BroadcastAlgo::Binomial)),
    ] {
        let c = choose(&forced, op, 1 << 20, 4, Some(&lo), true);
        assert_eq!((c.algorithm, c.segment), (want, forced.segment_bytes));
        assert!(c.reason.contains("forced"), "{}", c.reason);
    }
    // A fixed segment is the only one the model may use.
    let fixed = Algorithms {
        segment_bytes: 12_345,
        fixed_segment: true,
        ..d
    };
    for m in [8, 1 << 20, 64 << 20] {
        assert_eq!(
            choose(&fixed, Op::Broadcast, m, 4, Some(&lo), false).segment,
            12_345
        );
    }
}
