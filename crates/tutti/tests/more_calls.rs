//! `sendrecv`, sending to oneself, the `_v` forms of gather, scatter and reduce-scatter, and the
//! scans: results over the in-process transport (and `sendrecv` over TCP links with a small
//! window), and argument errors that name the op and the rank before any traffic. (Every
//! algorithm, dtype and op is covered by the correctness suite, `tutti::check`.)

mod common;

use common::{on_world, quick};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tutti::transport::shm::ShmMode;
use tutti::transport::tcp::{TcpMeshListener, TcpOptions, TcpTransport};
use tutti::{Communicator, Deadline, Error, Op, ReduceOp};

fn expect_invalid<T: std::fmt::Debug>(r: tutti::Result<T>, op: Op, needle: &str) {
    match r {
        Err(Error::InvalidArgument { op: o, rank, what }) => {
            assert_eq!(o, op, "{what}");
            assert!(
                what.contains(needle),
                "{op} on rank {rank}: {what:?} lacks {needle:?}"
            );
        }
        other => panic!("expected InvalidArgument for {op} with {needle:?}, got {other:?}"),
    }
}

#[test]
fn sendrecv_towards_each_other_and_around_a_ring() {
    let out = on_world(5, quick(10), |c| {
        let (r, n) = (c.rank(), c.size());
        // Pairs 0<->1, 2<->3; rank 4 talks to itself.
        let partner = if r == 4 { 4 } else { r ^ 1 };
        let mut got = vec![0u32; 1000];
        c.sendrecv(&vec![r as u32; 1000], partner, 3, &mut got, partner, 3)?;
        assert_eq!(got, vec![partner as u32; 1000], "rank {r}");
        // A ring, with a tag and a length per sender.
        let (right, left) = ((r + 1) % n, (r + n - 1) % n);
        let mut from_left = vec![0u8; 3 + left];
        c.sendrecv(
            &vec![r as u8; 3 + r],
            right,
            10 + r as u32,
            &mut from_left,
            left,
            10 + left as u32,
        )?;
        assert_eq!(from_left, vec![left as u8; 3 + left], "rank {r}");
        // Empty on both sides.
        c.sendrecv::<f64, f64>(&[], right, 0, &mut [], left, 0)?;
        Ok::<_, Error>(())
    });
    for (rank, r) in out.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("rank {rank}: {e}"));
    }
}

#[test]
fn sendrecv_matches_plain_sends_and_receives_and_reports_mismatches() {
    let out = on_world(2, quick(5), |c| {
        if c.rank() == 0 {
            c.send(&[1i64, 2, 3], 1, 4)?;
            let mut back = [0i64; 2];
            c.recv(&mut back, 1, 5)?;
            assert_eq!(back, [7, 8]);
            c.send(&[1f32; 3], 1, 6)?;
            Ok::<_, Error>(String::new())
        } else {
            let mut got = [0i64; 3];
            c.sendrecv(&[7i64, 8], 0, 5, &mut got, 0, 4)?;
            assert_eq!(got, [1, 2, 3]);
            let mut wrong = [0f32; 2];
            let e = c
                .sendrecv::<u8, f32>(&[], 1, 9, &mut wrong, 0, 6)
                .unwrap_err();
            // Take the empty message rank 1 sent itself, so nothing is left over.
            c.recv::<u8>(&mut [], 1, 9)?;
            Ok(e.to_string())
        }
    });
    let e = out[1].as_ref().unwrap();
    assert!(
        e.contains("sendrecv on rank 1: mismatched call with rank 0"),
        "{e}"
    );
    assert!(e.contains("2 x f32"), "{e}");
}

/// Two ranks over TCP links (no shared memory) whose window is 16 KiB.
fn tcp_pair_with_small_window() -> Vec<Communicator> {
    let mut opts = TcpOptions {
        window_bytes: 16 << 10,
        ..TcpOptions::default()
    };
    opts.shm.mode = ShmMode::Off;
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let listeners: Vec<_> = (0..2)
        .map(|_| TcpMeshListener::bind(local).expect("bind on loopback"))
        .collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect();
    let joins: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let (addrs, opts) = (addrs.clone(), opts.clone());
            let deadline = Deadline::after(Duration::from_secs(20));
            std::thread::spawn(move || l.connect_mesh(rank, &addrs, 0x5e4d, &opts, deadline))
        })
        .collect();
    joins
        .into_iter()
        .map(|h| {
            let t: Arc<TcpTransport> = h.join().expect("mesh thread").expect("mesh");
            Communicator::with_transport(t, quick(20))
        })
        .collect()
}

#[test]
fn sendrecv_of_megabytes_towards_each_other_does_not_deadlock_under_a_small_window() {
    // Two blocking sends of 2 MiB towards each other would both wait for a receive that is
    // never posted; sendrecv posts its receive first.
    let comms = tcp_pair_with_small_window();
    let len = 1 << 19; // f32: 2 MiB
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let peer = 1 - c.rank();
                    let mine: Vec<f32> = (0..len).map(|i| (i + c.rank()) as f32).collect();
                    let mut got = vec![0f32; len];
                    c.sendrecv(&mine, peer, 1, &mut got, peer, 1)?;
                    let want: Vec<f32> = (0..len).map(|i| (i + peer) as f32).collect();
                    Ok::<_, Error>(got == want)
                })
            })
            .collect();
        for (rank, h) in handles.into_iter().enumerate() {
            let ok = h
                .join()
                .expect("rank thread")
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(ok, "rank {rank} received wrong data");
        }
    });
}

#[test]
fn a_rank_sends_to_itself_blocking_and_nonblocking() {
    let out = on_world(2, quick(5), |c| {
        let me = c.rank();
        c.send(&[me as u32, 1, 2], me, 8)?;
        c.send::<u32>(&[], me, 8)?;
        let status = c.probe(Some(me), 8)?;
        assert_eq!((status.source, status.bytes), (me, 12));
        let mut three = [0u32; 3];
        c.recv(&mut three, me, 8)?;
        assert_eq!(three, [me as u32, 1, 2]);
        let status = c.recv_from::<u32>(&mut [], None, 8)?;
        assert_eq!(status.source, me);
        // Non-blocking, the receive posted before and after the send.
        let early = c.irecv(vec![0f64; 4], me, 9)?;
        let sent = c.isend(vec![1.5f64; 4], me, 9)?;
        assert_eq!(early.wait()?, vec![1.5; 4]);
        assert_eq!(sent.wait()?, vec![1.5; 4]);
        c.isend(vec![me as i8; 2], me, 10)?.wait()?;
        assert_eq!(c.irecv(vec![0i8; 2], me, 10)?.wait()?, vec![me as i8; 2]);
        c.send(&[5i8], me, 11)?;
        let (v, status) = c.recv_vec::<i8>(Some(me), 11)?;
        assert_eq!((v, status.source), (vec![5], me));
        Ok::<_, Error>(())
    });
    for (rank, r) in out.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("rank {rank}: {e}"));
    }
}

#[test]
fn v_forms_with_empty_and_uneven_blocks() {
    let counts = [3usize, 0, 5, 1];
    let out = on_world(4, quick(10), move |c| {
        let r = c.rank();
        let start: usize = counts[..r].iter().sum();
        let total: usize = counts.iter().sum();
        let mine: Vec<i32> = (start..start + counts[r]).map(|i| i as i32).collect();
        let everything: Vec<i32> = (0..total as i32).collect();

        let mut gathered = vec![0i32; total];
        let root = 2;
        let recv = (r == root).then_some(&mut gathered[..]);
        c.gather_v(&mine, recv, &counts, root)?;
        if r == root {
            assert_eq!(gathered, everything);
        }

        let mut part = vec![-1i32; counts[r]];
        let send = (r == 1).then_some(&everything[..]);
        c.scatter_v(send, &mut part, &counts, 1)?;
        assert_eq!(part, mine);

        // Every rank contributes `everything` scaled by its rank + 1: block r of the sum is
        // block r of `everything` times 1 + 2 + 3 + 4.
        let contribution: Vec<i32> = everything.iter().map(|x| x * (r as i32 + 1)).collect();
        let mut block = vec![0i32; counts[r]];
        c.reduce_scatter_v(&contribution, &mut block, &counts, ReduceOp::Sum)?;
        assert_eq!(block, mine.iter().map(|x| x * 10).collect::<Vec<_>>());
        let mut avg = vec![0i32; counts[r]];
        c.reduce_scatter_v(&contribution, &mut avg, &counts, ReduceOp::Avg)?;
        assert_eq!(avg, mine.iter().map(|x| x * 10 / 4).collect::<Vec<_>>());
        Ok::<_, Error>(())
    });
    for (rank, r) in out.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("rank {rank}: {e}"));
    }
}

#[test]
fn scans_give_each_rank_its_prefix_and_exscan_leaves_rank_0_alone() {
    for n in [1, 2, 3, 5, 8, 9] {
        let out = on_world(n, quick(10), |c| {
            let r = c.rank() as i64;
            let x = |rank: i64| vec![rank + 1, -rank, 7];
            let mut inclusive = x(r);
            c.scan(&mut inclusive, ReduceOp::Sum)?;
            let mut exclusive = x(r);
            c.exscan(&mut exclusive, ReduceOp::Sum)?;
            let mut max = vec![(r * 5) % 7];
            c.scan(&mut max, ReduceOp::Max)?;
            let mut avg = vec![(r + 1) as f64 * 2.0];
            c.scan(&mut avg, ReduceOp::Avg)?;
            let mut ex_avg = vec![(r + 1) as f64 * 2.0, -1.0];
            c.exscan(&mut ex_avg, ReduceOp::Avg)?;
            let mut empty: [f32; 0] = [];
            c.exscan(&mut empty, ReduceOp::Prod)?;
            Ok::<_, Error>((inclusive, exclusive, max, avg, ex_avg))
        });
        for (rank, res) in out.into_iter().enumerate() {
            let (inclusive, exclusive, max, avg, ex_avg) =
                res.unwrap_or_else(|e| panic!("n={n} rank {rank}: {e}"));
            let r = rank as i64;
            let tri = |k: i64| k * (k + 1) / 2; // 1 + 2 + ... + k
            assert_eq!(
                inclusive,
                vec![tri(r + 1), -tri(r), 7 * (r + 1)],
                "n={n} rank {rank}"
            );
            let want_exclusive = match r {
                0 => vec![1, 0, 7],
                _ => vec![tri(r), -tri(r - 1), 7 * r],
            };
            assert_eq!(exclusive, want_exclusive, "n={n} rank {rank}");
            assert_eq!(max, vec![(0..=r).map(|k| (k * 5) % 7).max().unwrap()]);
            // The mean of 2, 4, ..., 2(r+1) is r + 2; of the ranks before, r + 1.
            assert_eq!(avg, vec![(r + 2) as f64], "n={n} rank {rank}");
            let want_ex_avg = match r {
                0 => vec![2.0, -1.0],
                _ => vec![(r + 1) as f64, -1.0],
            };
            assert_eq!(ex_avg, want_ex_avg, "n={n} rank {rank}");
        }
    }
}

#[test]
fn a_scan_against_an_exscan_is_a_mismatch_not_a_hang() {
    // Rank 0 only sends (to rank 1): rank 1 receives its exscan message while in scan.
    let out = on_world(2, quick(5), |c| {
        let mut buf = [1u32; 4];
        if c.rank() == 0 {
            let r = c.exscan(&mut buf, ReduceOp::Sum);
            // Stay in the world until rank 1 has read the message.
            std::thread::sleep(Duration::from_millis(300));
            r.err().map(|e| e.to_string())
        } else {
            c.scan(&mut buf, ReduceOp::Sum).err().map(|e| e.to_string())
        }
    });
    assert_eq!(out[0], None);
    let e = out[1].as_deref().expect("rank 1 must fail");
    assert!(
        e.contains("scan #1 on rank 1: mismatched call with rank 0"),
        "{e}"
    );
    assert!(e.contains("rank 0 called exscan(u32, sum, count 4)"), "{e}");
}

#[test]
fn argument_errors_of_the_new_calls_come_before_any_traffic() {
    // Only rank 0 of 3 calls: any message or wait would fail otherwise than InvalidArgument.
    let mut comms = Communicator::in_process(3, quick(2)).unwrap();
    let c = comms.remove(0);
    let mut buf = vec![0f32; 4];
    let mut out = vec![0f32; 9];

    expect_invalid(
        c.sendrecv(&buf, 3, 0, &mut out, 0, 0),
        Op::SendRecv,
        "dest 3 is out of range for 3 ranks",
    );
    expect_invalid(
        c.sendrecv(&buf, 0, 0, &mut out, 5, 0),
        Op::SendRecv,
        "source 5 is out of range for 3 ranks",
    );

    let counts = [4usize, 2, 3];
    expect_invalid(
        c.gather_v(&buf, Some(&mut out), &counts, 3),
        Op::GatherV,
        "root 3 is out of range for 3 ranks",
    );
    expect_invalid(
        c.gather_v(&buf, Some(&mut out), &[4, 2], 0),
        Op::GatherV,
        "counts has 2 elements, expected 3",
    );
    expect_invalid(
        c.gather_v(&buf[..3], Some(&mut out), &counts, 0),
        Op::GatherV,
        "send has 3 elements, expected 4",
    );
    expect_invalid(
        c.gather_v(&buf, Some(&mut out[..8]), &counts, 0),
        Op::GatherV,
        "recv has 8 elements, expected 9",
    );
    expect_invalid(
        c.gather_v(&buf, None, &counts, 0),
        Op::GatherV,
        "the root must pass a receive buffer",
    );
    expect_invalid(
        c.gather_v(&buf, None, &[usize::MAX, 1, 0], 1),
        Op::GatherV,
        "sum to more elements than fit in memory",
    );

    expect_invalid(
        c.scatter_v(Some(&out), &mut buf, &counts, 7),
        Op::ScatterV,
        "root 7 is out of range",
    );
    expect_invalid(
        c.scatter_v(Some(&out[..5]), &mut buf, &counts, 0),
        Op::ScatterV,
        "send has 5 elements, expected 9",
    );
    expect_invalid(
        c.scatter_v(Some(&out), &mut buf[..1], &counts, 0),
        Op::ScatterV,
        "recv has 1 elements, expected 4",
    );
    expect_invalid(
        c.scatter_v(None, &mut buf, &counts, 0),
        Op::ScatterV,
        "the root must pass a send buffer",
    );

    expect_invalid(
        c.reduce_scatter_v(&out[..8], &mut buf, &counts, ReduceOp::Sum),
        Op::ReduceScatterV,
        "send has 8 elements, expected 9",
    );
    expect_invalid(
        c.reduce_scatter_v(&out, &mut buf, &[4, 2, 3, 0], ReduceOp::Sum),
        Op::ReduceScatterV,
        "counts has 4 elements, expected 3",
    );
    expect_invalid(
        c.reduce_scatter_v(&out, &mut buf[..2], &counts, ReduceOp::Max),
        Op::ReduceScatterV,
        "recv has 2 elements, expected 4",
    );
    expect_invalid(
        c.reduce_scatter_v(&out, &mut buf, &counts, ReduceOp::BAnd),
        Op::ReduceScatterV,
        "band is not defined on f32",
    );

    expect_invalid(
        c.scan(&mut buf, ReduceOp::BOr),
        Op::Scan,
        "bor is not defined on f32",
    );
    let e = c.exscan(&mut buf, ReduceOp::BXor).unwrap_err();
    assert!(
        e.to_string().contains("exscan on rank 0: invalid argument"),
        "{e}"
    );
}
