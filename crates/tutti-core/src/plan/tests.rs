//! Tests of [`super`] (plan.rs).

use super::*;
use crate::model::{cost, Cost};
use std::path::PathBuf;

/// `testdata/plans/<name>`.
fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/plans")
        .join(name)
}

/// Compares `text` with the golden file `name`, or rewrites it under `UPDATE_GOLDEN=1`.
fn check_golden(name: &str, text: &str) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(
        want == text,
        "{} differs from the recorded plan (UPDATE_GOLDEN=1 rewrites it):\n{text}",
        path.display()
    );
}

/// The algorithms whose plans are recorded: every one but the `auto`s, which only name a choice
/// (the all-reduce's `auto` stays: its plan is that of its size's default, and it predates the
/// others).
fn recorded_algorithms() -> Vec<Algorithm> {
    Algorithm::all()
        .into_iter()
        .filter(|a| !a.is_auto() || a.op() == crate::model::Op::AllReduce)
        .collect()
}

/// The recorded critical path as a [`Cost`].
fn recorded_cost(plan: &Plan) -> Cost {
    let path = |w| plan.critical_path(w).expect("a recorded plan replays");
    Cost {
        alpha: path(Weights::MESSAGES),
        beta: path(Weights::BYTES),
        gamma: path(Weights::COMBINED),
    }
}

/// Every algorithm's recorded critical path next to its formula, for uneven chunks and
/// worlds that are not powers of two too: where the two differ, `counts.txt` documents by
/// how much, and a change of either shows as a diff.
#[test]
fn counts_against_the_formulas() {
    let mut text = String::from(
        "# collective:algorithm n m seg: recorded alpha beta gamma (messages, bytes and \
         bytes combined on receipt, on the critical path) formula alpha beta gamma\n",
    );
    for algo in recorded_algorithms() {
        for n in [1, 2, 3, 4, 5, 7, 8] {
            for (m, seg) in [
                (0, 1 << 20),
                (1, 1 << 20),
                (13, 1 << 20),
                (64, 1 << 20),
                (64, 8),
            ] {
                let plan = record_algorithm(algo, n, m, seg).unwrap();
                let got = recorded_cost(&plan);
                let want = cost(algo, n, m, seg);
                let _ = writeln!(
                    text,
                    "{algo} n={n} m={m} seg={seg}: recorded {} {} {} formula {} {} {}",
                    got.alpha, got.beta, got.gamma, want.alpha, want.beta, want.gamma
                );
            }
        }
    }
    check_golden("counts.txt", &text);
}

/// How far a formula of [`cost`] matches the recorded critical path (with equal chunks:
/// `m` a multiple of `n`, segments that divide them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exact {
    /// For every `n`.
    EveryN,
    /// For `n` a power of two (the fold or uneven halves make it an estimate otherwise).
    PowersOfTwo,
    /// The double binary tree's formula is an upper bound on messages (see `counts.txt`
    /// for the bytes, which it does not bound for few segments).
    MessagesBound,
}

fn exactness(algo: Algorithm) -> Exact {
    match algo {
        Algorithm::AllReduce(AllReduceAlgo::DoubleBinaryTree) => Exact::MessagesBound,
        Algorithm::ReduceScatter(ReduceScatterAlgo::RecursiveHalving)
        | Algorithm::AllReduce(AllReduceAlgo::Rabenseifner)
        | Algorithm::Reduce(ReduceAlgo::Rabenseifner)
        | Algorithm::AllToAll(AllToAllAlgo::Bruck)
        | Algorithm::Broadcast(BroadcastAlgo::ScatterAllgather) => Exact::PowersOfTwo,
        _ => Exact::EveryN,
    }
}

/// Whether `algo` combines after a plain receive, where the plan cannot see it (see the
/// module doc): its recorded `gamma` is then at most the formula's.
fn combines_out_of_sight(algo: Algorithm, m: usize) -> bool {
    let d = Algorithms::default();
    match algo {
        Algorithm::AllReduce(AllReduceAlgo::Auto) => {
            combines_out_of_sight(Algorithm::AllReduce(d.all_reduce_for(m)), m)
        }
        Algorithm::AllReduce(AllReduceAlgo::Hierarchical) => {
            combines_out_of_sight(Algorithm::AllReduce(d.inter_host_all_reduce_for(m)), m)
        }
        Algorithm::AllReduce(AllReduceAlgo::RecursiveDoubling | AllReduceAlgo::Rabenseifner)
        | Algorithm::Reduce(ReduceAlgo::Rabenseifner)
        | Algorithm::ReduceScatter(ReduceScatterAlgo::RecursiveHalving) => true,
        _ => false,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// `(m, seg)` with equal chunks of `k` bytes per rank and segments that divide them.
fn even_cases(n: usize) -> Vec<(usize, usize)> {
    let big = 1 << 20;
    vec![
        (0, big),
        (n, big),
        (4 * n, big),
        (8 * n, big),
        (4 * n, 4),
        (8 * n, 4),
    ]
}

/// What of `got` contradicts `want` for `algo` (empty if nothing).
fn mismatches(algo: Algorithm, n: usize, m: usize, got: Cost, want: Cost) -> Vec<&'static str> {
    let exact = match exactness(algo) {
        Exact::PowersOfTwo => n.is_power_of_two(),
        Exact::EveryN => true,
        Exact::MessagesBound => false,
    };
    let mut wrong = Vec::new();
    if exact && !close(got.alpha, want.alpha) {
        wrong.push("messages");
    }
    if exactness(algo) == Exact::MessagesBound && got.alpha > want.alpha {
        wrong.push("messages above the bound");
    }
    if exact && !close(got.beta, want.beta) {
        wrong.push("bytes");
    }
    let hidden = combines_out_of_sight(algo, m);
    if exact && hidden && got.gamma > want.gamma + 1e-9 {
        wrong.push("reduced bytes above the formula");
    }
    if exact && !hidden && !close(got.gamma, want.gamma) {
        wrong.push("reduced bytes");
    }
    wrong
}

#[test]
fn recorded_counts_equal_the_formulas_where_they_are_exact() {
    let mut failures = Vec::new();
    for algo in recorded_algorithms() {
        for n in 1usize..=8 {
            for (m, seg) in even_cases(n) {
                let plan = record_algorithm(algo, n, m, seg).unwrap();
                let (got, want) = (recorded_cost(&plan), cost(algo, n, m, seg));
                let wrong = mismatches(algo, n, m, got, want);
                if !wrong.is_empty() {
                    failures.push(format!(
                        "{algo} n={n} m={m} seg={seg}: {wrong:?}: {got:?} against {want:?}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn one_rank_sends_nothing_and_costs_nothing() {
    for algo in recorded_algorithms() {
        for m in [0, 1, 13, 64] {
            let plan = record_algorithm(algo, 1, m, 4).unwrap();
            assert_eq!((plan.messages(), plan.steps()), (0, 0), "{algo} m={m}");
            assert_eq!(cost(algo, 1, m, 4), Cost::ZERO, "{algo}");
        }
    }
}

#[test]
fn totals_add_up_the_events() {
    // All-gather ring over 3 ranks and 7 bytes (chunks 3, 2, 2): each rank sends all but its
    // right neighbour's chunk, one message per chunk.
    let algo = Algorithm::AllGather(AllGatherAlgo::Ring);
    let plan = record_algorithm(algo, 3, 7, 1 << 20).unwrap();
    assert_eq!(plan.messages(), 6);
    assert_eq!(plan.bytes_sent(), (7 - 2) + (7 - 2) + (7 - 3));
    assert_eq!(plan.bytes_combined(), 0);
    assert_eq!((plan.max_rank_messages(), plan.steps()), (2, 2));
    // Naive all-reduce: rank 0 combines two whole buffers.
    let naive = record_algorithm(Algorithm::AllReduce(AllReduceAlgo::Naive), 3, 5, 4);
    let naive = naive.unwrap();
    assert_eq!((naive.messages(), naive.bytes_sent()), (4, 20));
    assert_eq!(naive.bytes_combined(), 10);
}

#[test]
fn a_receive_without_a_send_is_an_error() {
    let e = record(2, |ch| {
        if ch.rank() == 0 {
            let mut buf = [0u8; 1];
            ch.recv(1, &mut buf)
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    assert!(e.0.contains("returned without sending"), "{e}");
    let e = record(2, |ch| match ch.rank() {
        0 => ch.send(1, &[1, 2]),
        _ => ch.recv(0, &mut [0u8; 3]),
    })
    .unwrap_err();
    assert!(e.0.contains("expected 3 bytes, got 2"), "{e}");
}

/// Small plans of every algorithm as golden tables: a schedule change shows as a diff of
/// `testdata/plans/<collective>.<algorithm>.txt` (`UPDATE_GOLDEN=1` rewrites them).
#[test]
fn small_plans_match_the_golden_tables() {
    let (m, seg) = (10, 4);
    for algo in recorded_algorithms() {
        let mut text = String::new();
        for n in 2..=5 {
            let plan = record_algorithm(algo, n, m, seg).unwrap();
            let _ = writeln!(text, "== {algo}, {n} ranks, {m} bytes, segments of {seg}");
            text.push_str(&plan.render());
        }
        check_golden(&format!("{}.{}.txt", algo.op(), algo.name()), &text);
    }
}
