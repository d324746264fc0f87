//! Non-blocking collectives: queued calls run in call order, hand their buffers back with the
//! results of the blocking calls, and report errors at `wait`.

mod common;

use common::{on_world, quick};
use std::time::{Duration, Instant};
use tutti::{Op, ReduceOp};

#[test]
fn queued_calls_run_in_order_and_give_back_the_blocking_results() {
    for n in [1, 2, 3, 4] {
        let out = on_world(n, quick(20), move |c| {
            let r = c.rank() as f32;
            // Several calls in flight at once, then a blocking one that must wait its turn.
            let a = c.all_reduce_async(vec![r + 1.0; 1000], ReduceOp::Sum);
            let mut root_buf = vec![0u32; 7];
            if c.rank() == n - 1 {
                root_buf = (0..7).collect();
            }
            let b = c.broadcast_async(root_buf, n - 1);
            let g = c.all_gather_async(vec![c.rank() as u64; 3], vec![0u64; 3 * n]);
            let mut big = vec![1.0f64; (1 << 18) + 3];
            c.all_reduce(&mut big, ReduceOp::Max).unwrap();
            let barrier = c.barrier_async();
            let mut w = c.all_reduce_async(vec![1i64; 5], ReduceOp::Sum);
            let a = a.wait().unwrap();
            let b = b.wait().unwrap();
            let (_, g) = g.wait().unwrap();
            barrier.wait().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !w.test() {
                assert!(Instant::now() < deadline, "test() never became true");
                std::thread::yield_now();
            }
            (a, b, g, big[0], w.wait().unwrap())
        });
        let sum: f32 = (1..=n).map(|x| x as f32).sum();
        for (a, b, g, big, w) in out {
            assert!(a.iter().all(|&x| x == sum), "n={n}");
            assert_eq!(b, (0..7).collect::<Vec<u32>>());
            let want: Vec<u64> = (0..n as u64).flat_map(|r| [r; 3]).collect();
            assert_eq!(g, want);
            assert_eq!(big, 1.0);
            assert_eq!(w, vec![n as i64; 5]);
        }
    }
}

#[test]
fn a_queued_call_that_fails_reports_at_wait_on_every_rank() {
    let out = on_world(3, quick(5), |c| {
        let len = if c.rank() == 1 { 200 } else { 100 };
        let started = Instant::now();
        let w = c.all_reduce_async(vec![1f32; len], ReduceOp::Sum);
        let e = w.wait().err().map(|e| (e.op(), e.to_string()));
        (e, started.elapsed())
    });
    for (rank, (e, took)) in out.into_iter().enumerate() {
        let (op, msg) = e.unwrap_or_else(|| panic!("rank {rank} must fail"));
        assert_eq!(op, Op::AllReduce, "{msg}");
        assert!(
            took < Duration::from_secs(4),
            "rank {rank} took {took:?}: {msg}"
        );
    }
}

#[test]
fn a_blocking_call_behind_a_stuck_queued_call_gives_up_at_its_own_deadline() {
    // Rank 0 queues an all-reduce (bounded by 20 s) that rank 1 joins only later; rank 0's
    // blocking barrier, bounded by 1 s, must not wait for it past that: `Busy`, naming the
    // queue, and nothing sent, so the world goes on once rank 1 comes.
    let mut comms = tutti::Communicator::in_process(2, quick(20)).unwrap();
    let one = comms.pop().unwrap();
    let mut zero = comms.pop().unwrap();
    let queued = zero.all_reduce_async(vec![1u32; 4], ReduceOp::Sum);
    zero.set_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let e = zero.barrier().unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            e,
            tutti::Error::Busy {
                op: Op::Barrier,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("waiting behind the calls queued before this one"),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let mut y = [2u32; 4];
    one.all_reduce(&mut y, ReduceOp::Sum).unwrap();
    assert_eq!(queued.wait().unwrap(), [3; 4]);
    std::thread::scope(|s| {
        let b = s.spawn(|| one.barrier());
        zero.barrier().unwrap();
        b.join().unwrap().unwrap();
    });
}
