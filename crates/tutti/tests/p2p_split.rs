//! Point-to-point messages (blocking and not), and sub-communicators running concurrently with
//! their parent.

mod common;

use common::{on_world, quick};
use tutti::ReduceOp;

#[test]
fn same_tag_messages_arrive_in_order_and_tags_do_not_block_each_other() {
    let out = on_world(2, quick(10), |c| {
        if c.rank() == 0 {
            for i in 0..50u32 {
                c.send(&[i], 1, 7).unwrap();
            }
            c.send(&[] as &[u64], 1, 8).unwrap();
            c.send(&[99u32], 1, 9).unwrap();
            vec![]
        } else {
            let mut got = vec![];
            // tag 9 first although it was sent last
            let mut x = [0u32];
            c.recv(&mut x, 0, 9).unwrap();
            got.push(x[0]);
            let mut empty: [u64; 0] = [];
            c.recv(&mut empty, 0, 8).unwrap();
            for _ in 0..50 {
                c.recv(&mut x, 0, 7).unwrap();
                got.push(x[0]);
            }
            got
        }
    });
    let mut expect = vec![99];
    expect.extend(0..50);
    assert_eq!(out[1], expect);
}

#[test]
fn nonblocking_send_and_receive_exchange_both_ways() {
    let out = on_world(3, quick(10), |c| {
        let (r, n) = (c.rank(), c.size());
        let right = (r + 1) % n;
        let left = (r + n - 1) % n;
        let data: Vec<f64> = (0..100_000).map(|i| (i * (r + 1)) as f64).collect();
        let recv = c.irecv(vec![0f64; 100_000], left, 3).unwrap();
        let send = c.isend(data.clone(), right, 3).unwrap();
        let got = recv.wait().unwrap();
        assert_eq!(send.wait().unwrap(), data);
        got
    });
    for (r, got) in out.iter().enumerate() {
        let left = (r + 2) % 3;
        assert_eq!(got[99_999], (99_999 * (left + 1)) as f64);
    }
}

#[test]
fn test_polls_without_blocking() {
    let out = on_world(2, quick(10), |c| {
        if c.rank() == 0 {
            let req = c.irecv(vec![0u8; 3], 1, 1).unwrap();
            let req = match req.test().unwrap() {
                Ok(_) => panic!("nothing was sent yet"),
                Err(req) => req,
            };
            c.send(&[1u8], 1, 2).unwrap(); // tell rank 1 to send
            req.wait().unwrap()
        } else {
            let mut go = [0u8];
            c.recv(&mut go, 0, 2).unwrap();
            c.send(&[4u8, 5, 6], 0, 1).unwrap();
            vec![]
        }
    });
    assert_eq!(out[0], vec![4, 5, 6]);
}

#[test]
fn split_into_even_and_odd_runs_concurrently_with_the_parent() {
    let out = on_world(7, quick(20), |c| {
        let color = (c.rank() % 2) as u32;
        // key reverses the order inside each half
        let sub = c
            .split(Some(color), -(c.rank() as i64))
            .unwrap()
            .expect("member");
        let expected_size = if color == 0 { 4 } else { 3 };
        assert_eq!(sub.size(), expected_size);
        // Use the child from another thread while the parent runs its own collectives.
        let child = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let mut v = vec![c.rank() as i64; 1000];
                for _ in 0..20 {
                    sub.all_reduce(&mut v, ReduceOp::Max).unwrap();
                }
                (sub.rank(), v[0])
            });
            let mut w = vec![1u32; 333];
            for _ in 0..20 {
                c.all_reduce(&mut w, ReduceOp::Sum).unwrap();
                w.iter_mut().for_each(|x| *x = 1);
            }
            h.join().unwrap()
        });
        let none = c
            .split(if c.rank() == 0 { None } else { Some(5) }, 0)
            .unwrap();
        (child, none.map(|s| s.size()))
    });
    for (r, ((sub_rank, max), none)) in out.into_iter().enumerate() {
        let (members, top) = if r % 2 == 0 {
            (vec![6, 4, 2, 0], 6)
        } else {
            (vec![5, 3, 1], 5)
        };
        assert_eq!(
            sub_rank,
            members.iter().position(|&m| m == r).unwrap(),
            "rank {r}"
        );
        assert_eq!(max, top);
        assert_eq!(none, if r == 0 { None } else { Some(6) });
    }
}

#[test]
fn any_source_receives_probes_and_messages_of_unknown_size() {
    let out = on_world(4, quick(10), |c| {
        let me = c.rank();
        if me == 0 {
            let mut got = Vec::new();
            // Three senders, one tag: a probe names each before its receive takes it.
            for _ in 0..3 {
                let st = c.probe(None, 5).unwrap();
                assert_eq!(st.dtype, Some(tutti::DType::U32));
                let (v, from) = c.recv_vec::<u32>(Some(st.source), 5).unwrap();
                assert_eq!(
                    (from.source, from.count::<u32>()),
                    (st.source, Some(v.len()))
                );
                assert_eq!(v, vec![st.source as u32; st.source * 10]);
                got.push(st.source);
            }
            assert_eq!(c.iprobe(None, 5).unwrap(), None);
            // An any-source receive of a known size says who sent it.
            let mut x = [0u64; 2];
            let st = c.recv_from(&mut x, None, 6).unwrap();
            assert_eq!(x, [st.source as u64; 2]);
            // The wrong type is a mismatch naming the sender, not a silent reinterpretation.
            let mut wrong = [0f32; 2];
            let e = c.recv_from(&mut wrong, None, 7).unwrap_err().to_string();
            assert!(e.contains("mismatch") && e.contains("rank 3"), "{e}");
            got.sort();
            got
        } else {
            c.send(&vec![me as u32; me * 10], 0, 5).unwrap();
            if me == 2 {
                c.send(&[2u64; 2], 0, 6).unwrap();
            }
            if me == 3 {
                c.send(&[3u64; 2], 0, 7).unwrap();
            }
            vec![]
        }
    });
    assert_eq!(out[0], vec![1, 2, 3]);
}
