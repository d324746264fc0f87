//! The flight recorder (its content, its dump on a failed call) and `Communicator::abort`, in
//! process and over TCP loopback.

mod common;

use common::quick;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};
use tutti::rendezvous::Bootstrap;
use tutti::trace::{OpRecord, TraceFile};
use tutti::{Communicator, Config, ReduceOp};

/// A fresh directory for one test's dumps (removed at the start, not at the end: left for a
/// failing test's reader).
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tutti-trace-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A config of `secs`-second calls whose recorder dumps into `dir` and watches no signal.
fn traced(secs: u64, dir: &Path) -> Config {
    let mut c = quick(secs);
    c.trace.dir = Some(dir.to_path_buf());
    c.trace.signal = None;
    c
}

fn read(path: &Path) -> TraceFile {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

/// The ring of the world communicator (id 0) in `f`.
fn world_ops(f: &TraceFile) -> &[OpRecord] {
    &f.communicators
        .iter()
        .find(|c| c.comm_id == 0)
        .expect("the world's ring")
        .ops
}

#[test]
fn the_recorder_holds_the_last_calls_with_sizes_peers_and_states() {
    let d = dir("content");
    let mut config = traced(10, &d);
    config.trace.ops = 4;
    let comms = Communicator::in_process(2, config).unwrap();
    thread::scope(|s| {
        for c in &comms {
            s.spawn(move || {
                let mut x = vec![1.0f32; 1000];
                c.all_reduce(&mut x, ReduceOp::Sum).unwrap();
                c.broadcast(&mut x[..10], 1).unwrap();
                let mut y = [0u64; 3];
                if c.rank() == 0 {
                    c.send(&[7u64; 3], 1, 5).unwrap();
                } else {
                    c.recv(&mut y, 0, 5).unwrap();
                }
                c.barrier().unwrap();
                c.all_reduce(&mut x[..2], ReduceOp::Max).unwrap();
            });
        }
    });
    let path = comms[1].dump_trace(None, "on demand").unwrap();
    assert_eq!(
        path,
        d.join(format!("tutti-trace-rank1-pid{}.json", std::process::id()))
    );
    let f = read(&path);
    assert_eq!(
        (f.rank, f.world_size, f.reason.as_str()),
        (1, 2, "on demand")
    );
    assert_eq!(f.pid, std::process::id());
    let ops = world_ops(&f);
    // A ring of 4: the first all-reduce is gone.
    let names: Vec<&str> = ops.iter().map(|o| o.op.as_str()).collect();
    assert_eq!(names, ["broadcast", "recv", "barrier", "all_reduce"]);
    assert_eq!(ops.iter().map(|o| o.call).collect::<Vec<_>>(), [2, 3, 4, 5]);
    assert_eq!(ops.iter().map(|o| o.seq).collect::<Vec<_>>(), [2, 0, 3, 4]);
    let (b, r, a) = (&ops[0], &ops[1], &ops[3]);
    assert_eq!((b.peer, b.count, b.bytes), (Some(1), 10, 40));
    assert_eq!(b.dtype.as_deref(), Some("f32"));
    assert!(b.algorithm.is_some(), "{b:?}");
    assert_eq!((r.peer, r.count, r.bytes), (Some(0), 3, 24));
    assert_eq!(r.dtype.as_deref(), Some("u64"));
    assert_eq!((a.count, a.bytes), (2, 8));
    for o in ops {
        assert_eq!(o.state, "done", "{o:?}");
        let end = o.end_ns.expect("an end time");
        assert!(
            o.start_ns > 1_600_000_000_000_000_000 && end >= o.start_ns,
            "{o:?}"
        );
    }
}

#[test]
fn a_timed_out_call_dumps_the_ring_with_that_call_failed() {
    let d = dir("timeout");
    let comms = Communicator::in_process(2, traced(1, &d)).unwrap();
    let t0 = Instant::now();
    let mut x = [1i32; 4];
    comms[0].all_reduce(&mut x, ReduceOp::Sum).unwrap_err();
    let took = t0.elapsed();
    // The call's bound plus at most the dump's.
    assert!(
        took < Duration::from_secs(1) + tutti::trace::DUMP_WAIT,
        "{took:?}"
    );
    let f = read(&d.join(format!("tutti-trace-rank0-pid{}.json", std::process::id())));
    assert!(f.reason.contains("timed out"), "{}", f.reason);
    let last = world_ops(&f).last().expect("one call").clone();
    assert_eq!(
        (last.op.as_str(), last.seq, last.state.as_str()),
        ("all_reduce", 1, "failed")
    );
    let err = last.error.expect("the error text");
    assert!(
        err.contains("all_reduce #1 on rank 0") && err.contains("rank 1"),
        "{err}"
    );
    assert!(last.end_ns.is_some());
}

#[test]
fn abort_fails_blocked_and_later_calls_at_once_with_the_cause() {
    // Ranks 0 and 1 wait in an all-reduce for rank 2; rank 2 has a thread blocked in a
    // receive and aborts from another. Every call must fail long before the 30 s timeout.
    let d = dir("abort");
    let comms = Communicator::in_process(3, traced(30, &d)).unwrap();
    let t0 = Instant::now();
    let (errors, blocked_recv) = thread::scope(|s| {
        let waiting: Vec<_> = comms[..2]
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let mut x = [1u8; 8];
                    let e = c.all_reduce(&mut x, ReduceOp::Sum).unwrap_err();
                    (e.to_string(), t0.elapsed())
                })
            })
            .collect();
        let c2 = &comms[2];
        let recv = s.spawn(move || {
            let mut y = [0u8; 1];
            let e = c2.recv(&mut y, 0, 99).unwrap_err();
            (e.to_string(), t0.elapsed())
        });
        thread::sleep(Duration::from_millis(300));
        c2.abort("the job was cancelled");
        let errors: Vec<_> = waiting.into_iter().map(|h| h.join().unwrap()).collect();
        (errors, recv.join().unwrap())
    });
    for (rank, (e, at)) in errors.iter().enumerate() {
        eprintln!("rank {rank} failed after {at:?}: {e}");
        assert!(*at < Duration::from_secs(3), "rank {rank}: {at:?}");
        assert!(
            e.contains("rank 2 aborted") && e.contains("the job was cancelled"),
            "rank {rank}: {e}"
        );
    }
    let (e, at) = blocked_recv;
    eprintln!("rank 2's blocked receive failed after {at:?}: {e}");
    assert!(
        at < Duration::from_secs(3) && e.contains("the job was cancelled"),
        "{e}"
    );
    let t1 = Instant::now();
    let e = comms[2].barrier().unwrap_err().to_string();
    assert!(
        t1.elapsed() < Duration::from_millis(500),
        "{:?}",
        t1.elapsed()
    );
    assert!(
        e.contains("abort() on rank 2: the job was cancelled"),
        "{e}"
    );
    // The aborting rank dumped its ring, with the reason.
    let f = read(&d.join(format!("tutti-trace-rank2-pid{}.json", std::process::id())));
    assert!(f.reason.contains("the job was cancelled"), "{}", f.reason);
}

#[test]
fn abort_over_tcp_fails_the_peers_blocked_calls_naming_the_rank_and_cause() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir("abort-tcp");
    let n = 3;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|rank| {
            let d = d.clone();
            thread::spawn(move || -> Result<(String, Duration), String> {
                let vars = tcp_vars(rank, n, port, &d);
                let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                let boot = Bootstrap::from_vars(get).map_err(|e| e.to_string())?;
                let config = Config::from_vars(get).map_err(|e| e.to_string())?;
                let comm = Communicator::init(boot, config).map_err(|e| e.to_string())?;
                let mut x = vec![1.0f64; 1 << 10];
                comm.all_reduce(&mut x, ReduceOp::Sum)
                    .map_err(|e| e.to_string())?;
                let started = Instant::now();
                if rank == 1 {
                    thread::sleep(Duration::from_millis(500));
                    comm.abort("loss is NaN");
                    let e = comm.barrier().unwrap_err();
                    return Ok((e.to_string(), started.elapsed()));
                }
                let e = comm.all_reduce(&mut x, ReduceOp::Sum).unwrap_err();
                Ok((e.to_string(), started.elapsed()))
            })
        })
        .collect();
    for (rank, h) in handles.into_iter().enumerate() {
        let (e, took) = h
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        eprintln!("rank {rank}: failed after {took:?}: {e}");
        assert!(
            e.contains("abort() on rank 1: loss is NaN"),
            "rank {rank}: {e}"
        );
        if rank != 1 {
            assert!(e.contains("rank 1 aborted"), "rank {rank}: {e}");
            // Blocked from the start; rank 1 aborts after 0.5 s; the timeout is 30 s.
            assert!(took < Duration::from_secs(3), "rank {rank}: {took:?}");
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

fn tcp_vars(rank: usize, n: usize, port: u16, dir: &Path) -> Vec<(String, String)> {
    [
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", n.to_string()),
        ("MASTER_ADDR", "127.0.0.1".to_string()),
        ("MASTER_PORT", port.to_string()),
        ("TUTTI_INIT_TIMEOUT", "30".to_string()),
        ("TUTTI_TIMEOUT", "30".to_string()),
        ("TUTTI_TUNE", "0".to_string()),
        ("TUTTI_TRANSPORT", "tcp".to_string()),
        ("TUTTI_TRACE_DIR", dir.display().to_string()),
        ("TUTTI_TRACE_SIGNAL", "off".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[test]
fn sub_communicators_and_queued_calls_are_recorded_and_abort_names_the_sub_communicator() {
    // 4 ranks split into evens and odds; each rank runs an async all-reduce on its half, then
    // rank 3 aborts its half while rank 1 waits in a barrier of that half.
    let d = dir("sub");
    let comms = Communicator::in_process(4, traced(30, &d)).unwrap();
    let t0 = Instant::now();
    let errors: Vec<Option<String>> = thread::scope(|s| {
        let hs: Vec<_> = comms
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let half = c.split(Some(c.rank() as u32 % 2), 0).unwrap().unwrap();
                    let w = half.all_reduce_async(vec![1u32; 16], ReduceOp::Sum);
                    assert_eq!(w.wait().unwrap(), vec![2u32; 16]);
                    let path = half.dump_trace(None, "after the async call").unwrap();
                    let f = read(&path);
                    let sub = f
                        .communicators
                        .iter()
                        .find(|t| t.comm_id != 0 && t.calls > 0)
                        .expect("the half's ring");
                    assert_eq!(sub.size, 2);
                    let last = sub.ops.last().unwrap();
                    assert_eq!(
                        (last.op.as_str(), last.seq, last.state.as_str()),
                        ("all_reduce", 1, "done")
                    );
                    match c.rank() {
                        3 => {
                            thread::sleep(Duration::from_millis(300));
                            half.abort("rank 3 gives up");
                            None
                        }
                        1 => Some(half.barrier().unwrap_err().to_string()),
                        _ => None,
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let e = errors[1].as_deref().expect("rank 1's error");
    eprintln!("rank 1 failed after {:?}: {e}", t0.elapsed());
    assert!(
        e.contains("rank 3 aborted: abort() on rank 1 of sub-communicator")
            && e.contains("(world rank 3): rank 3 gives up"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[test]
fn sendrecv_is_recorded_done_and_failed() {
    let d = dir("sendrecv");
    let comms = Communicator::in_process(2, traced(5, &d)).unwrap();
    thread::scope(|s| {
        for c in &comms {
            s.spawn(move || {
                let peer = 1 - c.rank();
                let mut got = [0i64; 5];
                c.sendrecv(&[c.rank() as i64; 5], peer, 1, &mut got, peer, 1)
                    .unwrap();
                assert_eq!(got, [peer as i64; 5]);
            });
        }
    });
    comms[0].shutdown();
    let mut got = [0i64; 5];
    let e = comms[0]
        .sendrecv(&[0i64; 5], 1, 2, &mut got, 1, 2)
        .unwrap_err();
    let f = read(&comms[0].dump_trace(None, "test").unwrap());
    let ops = world_ops(&f);
    let names: Vec<(&str, &str)> = ops
        .iter()
        .map(|o| (o.op.as_str(), o.state.as_str()))
        .collect();
    assert_eq!(names, [("sendrecv", "done"), ("sendrecv", "failed")], "{e}");
    assert_eq!((ops[0].peer, ops[0].count, ops[0].bytes), (Some(1), 5, 40));
    assert!(
        ops[1].error.as_deref().unwrap().contains("returned early"),
        "{:?}",
        ops[1]
    );
}
