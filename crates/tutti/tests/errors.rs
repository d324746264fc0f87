//! Bad input and misbehaving peers give clear errors that name the op and the rank, before any
//! traffic where the problem can be seen locally; nothing hangs.

mod common;

use common::{on_world, quick};
use std::time::{Duration, Instant};
use tutti::{Communicator, Config, Error, Op, ReduceOp};

fn expect_invalid(e: Error, op: Op, needle: &str) {
    match &e {
        Error::InvalidArgument { op: o, what, .. } => {
            assert_eq!(*o, op, "{e}");
            assert!(what.contains(needle), "{e:?} lacks {needle:?}");
        }
        other => panic!("expected InvalidArgument for {op}, got {other}"),
    }
}

#[test]
fn local_argument_errors_come_before_any_traffic() {
    // A world of 3 in which only rank 0 makes calls: if any of them sent a message or waited for
    // one, it would fail with a transport error or time out instead of InvalidArgument.
    let mut comms = Communicator::in_process(3, quick(2)).unwrap();
    let c = comms.remove(0);
    let mut buf = vec![0f32; 8];
    let mut small = vec![0f32; 5];
    expect_invalid(
        c.broadcast(&mut buf, 3).unwrap_err(),
        Op::Broadcast,
        "root 3 is out of range for 3 ranks",
    );
    expect_invalid(
        c.reduce(&buf, None, ReduceOp::Sum, 0).unwrap_err(),
        Op::Reduce,
        "receive buffer",
    );
    expect_invalid(
        c.reduce(&buf, Some(&mut small), ReduceOp::Sum, 0)
            .unwrap_err(),
        Op::Reduce,
        "recv has 5 elements, expected 8",
    );
    expect_invalid(
        c.all_gather(&buf, &mut small).unwrap_err(),
        Op::AllGather,
        "expected 24",
    );
    expect_invalid(
        c.reduce_scatter(&buf, &mut small, ReduceOp::Sum)
            .unwrap_err(),
        Op::ReduceScatter,
        "send has 8 elements, expected 15",
    );
    expect_invalid(
        c.all_to_all(&buf, &mut buf.clone()).unwrap_err(),
        Op::AllToAll,
        "does not split into 3",
    );
    expect_invalid(
        c.send(&buf, 7, 0).unwrap_err(),
        Op::Send,
        "peer 7 is out of range",
    );
    expect_invalid(
        c.recv(&mut buf, 3, 0).unwrap_err(),
        Op::Recv,
        "peer 3 is out of range for 3 ranks",
    );
    expect_invalid(
        c.all_reduce(&mut buf, ReduceOp::BXor).unwrap_err(),
        Op::AllReduce,
        "bxor is not defined on f32",
    );
    expect_invalid(
        c.all_gather_v(&buf, &mut buf.clone(), &[8, 1]).unwrap_err(),
        Op::AllGatherV,
        "counts has 2 elements, expected 3",
    );
    let e = c.scatter(None::<&[f32]>, &mut buf, 0).unwrap_err();
    assert!(
        e.to_string()
            .contains("scatter on rank 0: invalid argument"),
        "{e}"
    );
}

#[test]
fn a_world_of_zero_is_refused() {
    let e = Communicator::in_process(0, Config::default()).unwrap_err();
    assert!(e.to_string().contains("at least one rank"), "{e}");
}

#[test]
fn mismatched_receive_length_and_type_are_reported() {
    let out = on_world(2, quick(5), |c| {
        if c.rank() == 0 {
            c.send(&[1f32, 2.0, 3.0], 1, 9).unwrap();
            c.send(&[1i32, 2, 3], 1, 9).unwrap();
            None
        } else {
            let mut four = [0f32; 4];
            let e1 = c.recv(&mut four, 0, 9).unwrap_err();
            let mut three = [0f32; 3];
            let e2 = c.recv(&mut three, 0, 9).unwrap_err();
            Some((e1.to_string(), e2.to_string()))
        }
    });
    let (e1, e2) = out[1].clone().unwrap();
    assert!(
        e1.contains("recv on rank 1: mismatched call with rank 0"),
        "{e1}"
    );
    assert!(e1.contains("12 bytes") && e1.contains("4 x f32"), "{e1}");
    assert!(e2.contains("i32") && e2.contains("3 x f32"), "{e2}");
}

#[test]
fn mismatched_collectives_are_reported_not_hung() {
    let out = on_world(2, quick(5), |c| {
        let mut buf = vec![1f32; 16];
        let started = Instant::now();
        let r = if c.rank() == 0 {
            c.all_reduce(&mut buf, ReduceOp::Sum)
        } else {
            let r = c.broadcast(&mut buf, 1);
            // Stay in the world: rank 0 must be told about the mismatch, not that rank 1 left.
            std::thread::sleep(Duration::from_millis(500));
            r
        };
        (r.err().map(|e| e.to_string()), started.elapsed())
    });
    // Rank 1 is broadcast's root: it only sends. Rank 0 receives a broadcast message while in
    // all_reduce and must say so.
    let (e0, took) = &out[0];
    let e0 = e0.as_deref().expect("rank 0 must fail");
    assert!(
        e0.contains("all_reduce #1 on rank 0: mismatched call with rank 1"),
        "{e0}"
    );
    assert!(
        e0.contains("rank 1 called broadcast(f32, root 1, count 16)"),
        "{e0}"
    );
    assert!(*took < Duration::from_secs(4), "took {took:?}");
}

#[test]
fn calls_that_exchange_nothing_still_fail_with_the_mismatch_on_every_rank() {
    // Rank 0 broadcasts from root 1 and rank 1 from root 0: both only receive, no message of
    // the call ever moves. The receives announce their calls; both ranks fail within about a
    // second (the timeout is 60 s), each error naming both calls.
    let out = on_world(2, quick(60), |c| {
        let mut buf = vec![1f32; 16];
        let started = Instant::now();
        let e = c.broadcast(&mut buf, 1 - c.rank()).unwrap_err();
        (e.to_string(), started.elapsed())
    });
    for (rank, (e, took)) in out.iter().enumerate() {
        eprintln!("rank {rank}: failed after {took:.2?}: {e}");
        assert!(e.contains("mismatched call"), "rank {rank}: {e}");
        assert!(
            e.contains("broadcast(f32, root 0, count 16)"),
            "rank {rank}: {e}"
        );
        assert!(
            e.contains("broadcast(f32, root 1, count 16)"),
            "rank {rank}: {e}"
        );
        assert!(*took < Duration::from_secs(2), "rank {rank} took {took:?}");
    }
}

#[test]
fn mismatched_counts_are_reported() {
    let out = on_world(3, quick(5), |c| {
        let mut buf = vec![1u64; 100 + c.rank()];
        c.all_reduce(&mut buf, ReduceOp::Sum)
            .err()
            .map(|e| e.to_string())
    });
    let errors: Vec<String> = out.into_iter().flatten().collect();
    assert!(!errors.is_empty());
    assert!(
        errors
            .iter()
            .any(|e| e.contains("mismatched call") && e.contains("all_reduce(u64, sum, count 10")),
        "{errors:?}"
    );
}

#[test]
fn a_rank_that_never_arrives_times_out_naming_its_peer() {
    let out = on_world(2, quick(1), |c| {
        if c.rank() == 1 {
            // Keep the communicator alive past rank 0's deadline without joining the call.
            std::thread::sleep(Duration::from_millis(1500));
            return None;
        }
        let started = Instant::now();
        let e = c.barrier().unwrap_err();
        Some((e.to_string(), e.peer(), started.elapsed()))
    });
    let (msg, peer, took) = out[0].clone().unwrap();
    assert!(msg.contains("barrier #1 on rank 0: timed out"), "{msg}");
    assert!(msg.contains("rank 1"), "{msg}");
    assert_eq!(peer, Some(1));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn a_timeout_aborts_the_world_so_every_rank_learns_who_was_missing() {
    // Ring of 3: rank 0 waits for rank 2 (which never joins), rank 1 waits for rank 0. Rank 1's
    // own timeout is long: it must fail as soon as rank 0 gives up, naming rank 2 through
    // rank 0's abort, and later calls must fail at once.
    let out = on_world(3, quick(1), |mut c| {
        if c.rank() == 2 {
            std::thread::sleep(Duration::from_millis(2500));
            return None;
        }
        if c.rank() == 1 {
            c.set_timeout(Duration::from_secs(30));
        }
        let started = Instant::now();
        let mut x = vec![1.0f32; 3 * 1024];
        let e = c.all_reduce(&mut x, ReduceOp::Sum).unwrap_err();
        let took = started.elapsed();
        let later = c.barrier().unwrap_err().to_string();
        Some((e.to_string(), took, later))
    });
    let (msg0, took0, _) = out[0].clone().unwrap();
    assert!(
        msg0.contains("all_reduce #1 on rank 0: timed out") && msg0.contains("from rank 2"),
        "{msg0}"
    );
    assert!(took0 < Duration::from_secs(3), "{took0:?}");
    let (msg1, took1, later1) = out[1].clone().unwrap();
    assert!(
        msg1.contains("all_reduce #1 on rank 1: rank 0 is gone: rank 0 aborted: all_reduce #1 on rank 0: timed out")
            && msg1.contains("from rank 2"),
        "{msg1}"
    );
    assert!(took1 < Duration::from_secs(5), "rank 1 waited {took1:?}");
    assert!(later1.contains("barrier #2 on rank 1"), "{later1}");
}

#[test]
fn errors_in_a_sub_communicator_say_which_ranks_are_world_ranks() {
    // Odd world ranks {1, 3} form a sub-communicator; its rank 0 (world 1) waits for a message
    // its rank 1 (world 3) never sends.
    let out = on_world(4, quick(1), |c| {
        let sub = c.split(Some((c.rank() % 2) as u32), 0).unwrap().unwrap();
        let got = (c.rank() == 1).then(|| {
            let mut buf = [0u8; 4];
            let e = sub.recv(&mut buf, 1, 5).unwrap_err();
            (e.to_string(), e.peer())
        });
        std::thread::sleep(Duration::from_millis(1500)); // keep world rank 3 alive meanwhile
        got
    });
    let (msg, peer) = out[1].clone().unwrap();
    assert!(
        msg.starts_with(
            "recv on rank 0 (world rank 1 of a sub-communicator; peers below are world ranks): \
             timed out"
        ) && msg.contains("from rank 3"),
        "{msg}"
    );
    assert_eq!(peer, Some(3));
}

#[test]
fn a_rank_that_leaves_is_named() {
    let out = on_world(2, quick(5), |c| {
        if c.rank() == 1 {
            c.shutdown();
            return None;
        }
        let mut buf = [0u8; 4];
        Some(c.recv(&mut buf, 1, 0).unwrap_err().to_string())
    });
    let msg = out[0].clone().unwrap();
    assert!(
        msg.contains("recv") && msg.contains("rank 1 is gone"),
        "{msg}"
    );
}

#[test]
fn unknown_environment_values_are_refused() {
    let e = Config::from_vars(|k| (k == "TUTTI_ALGO").then(|| "allreduce:magic".to_string()))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("unknown allreduce algorithm \"magic\"; valid: naive, ring, tree"),
        "{e}"
    );
    let e = Config::from_vars(|k| (k == "TUTTI_TIMEOUT").then(|| "soon".to_string())).unwrap_err();
    assert!(e.to_string().contains("TUTTI_TIMEOUT=\"soon\""), "{e}");
    let e =
        Config::from_vars(|k| (k == "TUTTI_SEGMENT_BYTES").then(|| "0".to_string())).unwrap_err();
    assert!(e.to_string().contains("TUTTI_SEGMENT_BYTES"), "{e}");
}

/// Ranks that run different algorithms (or segment sizes) for the same call fail with a
/// mismatch naming both plans: the choice is part of every message's fingerprint, and a
/// message of the same call that disagrees fails a receive of that call whichever peer it waits
/// for (two schedules may wait on different peers).
#[test]
fn ranks_that_disagree_on_the_algorithm_or_segment_fail_with_a_mismatch() {
    use tutti::algo::{Algorithms, AllReduceAlgo};
    for (odd, what) in [
        (
            Algorithms {
                all_reduce: AllReduceAlgo::Ring,
                ..Algorithms::default()
            },
            "by ring",
        ),
        (
            Algorithms {
                all_reduce: AllReduceAlgo::RecursiveDoubling,
                segment_bytes: 4096,
                ..Algorithms::default()
            },
            "in segments of 4096 B",
        ),
    ] {
        for n in [2, 3, 4] {
            let out = on_world(n, quick(5), move |c| {
                if c.rank() == 1 {
                    c.set_algorithms(odd);
                } else {
                    c.set_algorithms(Algorithms {
                        all_reduce: AllReduceAlgo::RecursiveDoubling,
                        ..Algorithms::default()
                    });
                }
                let mut buf = vec![1f32; 64];
                let started = Instant::now();
                let r = c.all_reduce(&mut buf, ReduceOp::Sum);
                (r.err().map(|e| e.to_string()), started.elapsed())
            });
            for (rank, (e, took)) in out.iter().enumerate() {
                let e = e
                    .as_deref()
                    .unwrap_or_else(|| panic!("rank {rank} must fail"));
                assert!(*took < Duration::from_secs(4), "rank {rank} took {took:?}");
                assert!(
                    e.contains("mismatched call") || e.contains("aborted"),
                    "{e}"
                );
            }
            let all: String = out.iter().filter_map(|(e, _)| e.clone()).collect();
            assert!(all.contains(what), "{what:?} not named in {all}");
        }
    }
}

/// One rank of three passes another counts vector to a v-form (consistent with its own
/// buffers): no rank hangs or returns garbage. The ranks that exchange with it fail at once with
/// `Mismatch` naming it (its fingerprint carries a digest of its counts, or its message sizes
/// differ); the world is then aborted, so every rank's call fails, or, where a rank's part of
/// the call was only to send, its next call does, naming the mismatch.
#[test]
fn a_rank_with_other_counts_fails_every_v_form_on_every_rank() {
    for form in [
        "all_gather_v",
        "reduce_scatter_v",
        "gather_v",
        "scatter_v",
        "all_to_all_v",
    ] {
        let out = on_world(3, quick(10), move |c| {
            let odd = c.rank() == 2;
            let counts: Vec<usize> = if odd { vec![2, 3, 3] } else { vec![3, 2, 3] };
            let total: usize = counts.iter().sum();
            let mine = counts[c.rank()];
            let started = Instant::now();
            let r = match form {
                "all_gather_v" => c.all_gather_v(&vec![1u32; mine], &mut vec![0; total], &counts),
                "reduce_scatter_v" => c.reduce_scatter_v(
                    &vec![1u32; total],
                    &mut vec![0; mine],
                    &counts,
                    ReduceOp::Sum,
                ),
                "gather_v" => {
                    let mut recv = vec![0u32; total];
                    let recv = (c.rank() == 0).then_some(&mut recv[..]);
                    c.gather_v(&vec![1u32; mine], recv, &counts, 0)
                }
                "scatter_v" => {
                    let send = vec![1u32; total];
                    let send = (c.rank() == 0).then_some(&send[..]);
                    c.scatter_v(send, &mut vec![0; mine], &counts, 0)
                }
                _ => {
                    // Rank r sends counts[j] elements to every j and expects counts[r] from each:
                    // rank 2's counts disagree with the others' on what 0 and 1 send.
                    let send_counts = counts.clone();
                    let recv_counts = vec![mine; 3];
                    c.all_to_all_v(
                        &vec![1u32; total],
                        &send_counts,
                        &mut vec![0; 3 * mine],
                        &recv_counts,
                    )
                }
            };
            let took = started.elapsed();
            let call = r
                .err()
                .map(|e| (matches!(e, Error::Mismatch { .. }), e.to_string()));
            let next = c.barrier().err().map(|e| e.to_string());
            (call, took, next)
        });
        let mut mismatches = 0;
        for (rank, (call, took, next)) in out.iter().enumerate() {
            assert!(
                *took < Duration::from_secs(5),
                "{form} rank {rank}: took {took:?}"
            );
            let next = next.as_deref();
            assert!(
                next.is_some(),
                "{form} rank {rank}: the world must be aborted"
            );
            // The call's own error or, where it only sent, the next call's names the mismatch.
            let said = call
                .as_ref()
                .map_or(next.unwrap_or(""), |(_, e)| e.as_str());
            assert!(
                said.contains("mismatched call with rank"),
                "{form} rank {rank}: {said}"
            );
            if let Some((true, e)) = call {
                mismatches += 1;
                assert!(e.contains(&format!("{form} #1 on rank {rank}")), "{e}");
                let about_rank_2 = rank == 2 || e.contains("with rank 2");
                assert!(about_rank_2 || e.contains("counts digest"), "{e}");
            }
        }
        assert!(mismatches >= 1, "{form}: {out:?}");
    }
}
