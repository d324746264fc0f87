//! The mesh transport on loopback (TCP links, moved to shared memory unless `TUTTI_TRANSPORT=tcp`,
//! as CI runs it a second time): mesh formation (including strangers and missing ranks),
//! message exchange of every size, ordering, full duplex, deadlines, and how a peer's departure
//! is reported. Every wait is bounded: a bug fails a test instead of hanging it.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tutti::transport::frame::FrameHeader;
use tutti::transport::tcp::{MeshError, TcpMeshListener, TcpOptions, TcpTransport};
use tutti::transport::{Lane, Message, MsgKey, RecvInto, Source, Transport, TransportError};
use tutti::{Communicator, Config, Deadline, ReduceOp};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const MIB: usize = 1 << 20;

fn key(tag: u64) -> MsgKey {
    MsgKey {
        comm_id: 0,
        lane: Lane::P2p,
        tag,
    }
}

/// The default options, with `TUTTI_TRANSPORT` (`tcp` forces sockets; the default moves the
/// links of this one host to shared memory): CI runs this file both ways.
fn opts() -> TcpOptions {
    let mut o = TcpOptions::default();
    if let Some(mode) = std::env::var("TUTTI_TRANSPORT")
        .ok()
        .and_then(|v| tutti::transport::shm::ShmMode::parse(&v))
    {
        o.shm.mode = mode;
    }
    // These tests send messages of several MiB before their receive is posted, which the
    // 16 MiB window of TCP allows: give shared-memory links the same window.
    o.shm.window_bytes = o.window_bytes;
    o
}

fn secs(s: u64) -> Deadline {
    Deadline::after(Duration::from_secs(s))
}

/// Bytes that depend on who sent them to whom, so a misrouted message is caught.
fn pattern(from: usize, to: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (from * 7 + to * 13)) as u8)
        .collect()
}

/// A world of `n` ranks formed in threads, as separate processes would.
fn mesh(n: usize, session: u64) -> Vec<Arc<TcpTransport>> {
    mesh_with(n, session, &opts())
}

/// As [`mesh`], with socket options `opts`.
fn mesh_with(n: usize, session: u64, opts: &TcpOptions) -> Vec<Arc<TcpTransport>> {
    let listeners: Vec<_> = (0..n)
        .map(|_| TcpMeshListener::bind(LOCAL).unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect();
    let joins: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let (addrs, opts) = (addrs.clone(), opts.clone());
            thread::spawn(move || l.connect_mesh(rank, &addrs, session, &opts, secs(20)))
        })
        .collect();
    joins
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect()
}

/// A hello as the module docs describe it.
fn hello(session: u64, size: u32, from: u32, to: u32) -> Vec<u8> {
    let mut b = b"TUTTI-HELLO\0".to_vec();
    b.extend_from_slice(&tutti::transport::tcp::HELLO_VERSION.to_le_bytes());
    b.extend_from_slice(&session.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&from.to_le_bytes());
    b.extend_from_slice(&to.to_le_bytes());
    b.push(0); // flags: no job secret
    b.extend_from_slice(&[7; 32]); // nonce
    b
}

/// Sends `bytes` to `addr` and returns everything it answers before closing.
fn knock(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    reply
}

/// Rank 0 of a world of 2 whose rank 1 is a raw socket driven by the test.
fn with_fake_rank_1() -> (Arc<TcpTransport>, TcpStream) {
    let l0 = TcpMeshListener::bind(LOCAL).unwrap();
    let addrs = vec![l0.local_addr(), "127.0.0.1:9".parse().unwrap()];
    let a = addrs.clone();
    let rank0 = thread::spawn(move || l0.connect_mesh(0, &a, 5, &opts(), secs(20)));
    let mut fake = TcpStream::connect(addrs[0]).unwrap();
    fake.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    fake.write_all(&hello(5, 2, 1, 0)).unwrap();
    let mut answer = [9u8; 34];
    fake.read_exact(&mut answer).unwrap();
    assert_eq!(
        answer[..2],
        [0, 0],
        "the handshake must accept rank 1, unauthenticated"
    );
    tcp_only_link_setup(&mut fake);
    (rank0.join().unwrap().unwrap(), fake)
}

/// The link set-up after the hello (`transport::shm::setup`), as a rank that wants TCP: its
/// message (magic, mode 0, pid, no host identity), then the other side's is read and dropped.
fn tcp_only_link_setup(s: &mut TcpStream) {
    let mut m = b"TSHM".to_vec();
    m.push(0);
    m.extend_from_slice(&0u32.to_le_bytes());
    let mut framed = (m.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(&m);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut theirs = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut theirs).unwrap();
    assert_eq!(&theirs[..4], b"TSHM");
}

fn data_frame(k: MsgKey, payload: &[u8]) -> Vec<u8> {
    let mut b = FrameHeader::data(k, 0, payload.len()).encode().to_vec();
    b.extend_from_slice(payload);
    b
}

/// Receives of unknown size, as the old tests were written.
trait OwnedRecv {
    fn recv_msg(&self, peer: usize, k: MsgKey, d: Deadline) -> Result<Message, TransportError>;
    fn try_recv_msg(&self, peer: usize, k: MsgKey) -> Result<Option<Message>, TransportError>;
}

impl<T: Transport + ?Sized> OwnedRecv for T {
    fn recv_msg(&self, peer: usize, k: MsgKey, d: Deadline) -> Result<Message, TransportError> {
        self.recv_owned(Source::Rank(peer), k, d)
    }

    fn try_recv_msg(&self, peer: usize, k: MsgKey) -> Result<Option<Message>, TransportError> {
        match self.probe(Source::Rank(peer), k, None)? {
            Some(_) => self.recv_msg(peer, k, secs(5)).map(Some),
            None => Ok(None),
        }
    }
}

fn lost_reason(e: TransportError, peer: usize) -> String {
    match e {
        TransportError::PeerLost { peer: p, reason } if p == peer => reason,
        other => panic!("expected rank {peer} lost, got: {other}"),
    }
}

#[test]
fn a_world_of_one_talks_to_itself_only() {
    let t = mesh(1, 1).remove(0);
    assert_eq!((t.rank(), t.size()), (0, 1));
    t.send(0, key(1), 3, b"me", secs(5)).unwrap();
    let m = t.recv_msg(0, key(1), secs(5)).unwrap();
    assert_eq!((m.payload.as_slice(), m.fingerprint), (&b"me"[..], 3));
    let e = t.send(1, key(1), 0, b"x", secs(5)).unwrap_err();
    assert!(
        matches!(e, TransportError::NoSuchPeer { peer: 1, size: 1 }),
        "{e}"
    );
    let e = t.recv_msg(1, key(1), secs(5)).unwrap_err();
    assert!(
        matches!(e, TransportError::NoSuchPeer { peer: 1, size: 1 }),
        "{e}"
    );
}

#[test]
fn every_pair_exchanges_empty_tiny_and_large_messages() {
    let sizes = [0, 1, 5 * MIB];
    for n in [2, 4] {
        let world = mesh(n, 42);
        let joins: Vec<_> = world
            .into_iter()
            .map(|t| {
                thread::spawn(move || {
                    let me = t.rank();
                    let peers: Vec<usize> = (0..t.size()).filter(|&p| p != me).collect();
                    for &p in &peers {
                        for (tag, &len) in sizes.iter().enumerate() {
                            // Both halves of the fingerprint travel (the plan half in the header extension).
                            let fp = ((me * 100 + p) as u128) << 64 | (me * 100 + p) as u128;
                            t.send(p, key(tag as u64), fp, &pattern(me, p, len), secs(30))
                                .unwrap();
                        }
                    }
                    for &p in &peers {
                        for (tag, &len) in sizes.iter().enumerate() {
                            let m = t.recv_msg(p, key(tag as u64), secs(30)).unwrap();
                            assert_eq!(
                                m.fingerprint,
                                ((p * 100 + me) as u128) << 64 | (p * 100 + me) as u128
                            );
                            assert!(m.payload == pattern(p, me, len), "{p}->{me} {len} bytes");
                        }
                    }
                })
            })
            .collect();
        for j in joins {
            j.join().unwrap();
        }
    }
}

#[test]
fn messages_with_one_key_arrive_in_order_and_keys_do_not_block_each_other() {
    let w = mesh(2, 7);
    let coll = MsgKey {
        lane: Lane::Collective,
        ..key(1)
    };
    let keys = [key(1), key(2), coll];
    for i in 0u32..100 {
        w[0].send(1, keys[i as usize % 3], 0, &i.to_le_bytes(), secs(10))
            .unwrap();
    }
    // Drain the keys in another order than they were sent.
    for k in [coll, key(2), key(1)] {
        let want: Vec<u32> = (0..100).filter(|i| keys[*i as usize % 3] == k).collect();
        let got: Vec<u32> = want
            .iter()
            .map(|_| {
                let m = w[1].recv_msg(0, k, secs(10)).unwrap();
                u32::from_le_bytes(m.payload.try_into().unwrap())
            })
            .collect();
        assert_eq!(got, want, "{k:?}");
        assert!(w[1].try_recv_msg(0, k).unwrap().is_none());
    }
}

#[test]
fn both_sides_exchange_64_mib_with_send_recv_without_deadlock() {
    let len = 64 * MIB;
    let joins: Vec<_> = mesh(2, 9)
        .into_iter()
        .map(|t| {
            thread::spawn(move || {
                let (me, peer) = (t.rank(), 1 - t.rank());
                let mut got = vec![0u8; len];
                // Four times the window each way: the posted receives let both sends through.
                let env = t
                    .send_recv(
                        peer,
                        key(0),
                        7,
                        &pattern(me, peer, len),
                        peer,
                        RecvInto::Copy(&mut got),
                        secs(60),
                    )
                    .unwrap();
                assert!(env.written && env.len == len && env.peer == peer);
                assert!(got == pattern(peer, me, len));
            })
        })
        .collect();
    for j in joins {
        j.join().unwrap();
    }
}

#[test]
fn a_send_beyond_the_window_waits_for_the_receiver_and_no_longer() {
    let w = mesh(2, 10);
    let window = w[0].window();
    // Nobody receives: the window fills, then the send must stop at its deadline.
    let t0 = Instant::now();
    let e = w[0]
        .send(
            1,
            key(2),
            0,
            &vec![1u8; 2 * window],
            Deadline::after(Duration::from_millis(300)),
        )
        .unwrap_err();
    assert!(matches!(e, TransportError::Timeout { peer: 1, .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // The half-sent message still arrives whole (the link cannot carry half a message), and
    // a send that the receiver meets goes through at any size.
    let m = w[1].recv_msg(0, key(2), secs(30)).unwrap();
    assert_eq!(m.payload.len(), 2 * window);
    let receiver = {
        let t1 = w[1].clone();
        thread::spawn(move || t1.recv_msg(0, key(3), secs(30)).unwrap().payload.len())
    };
    w[0].send(1, key(3), 0, &vec![2u8; 3 * window], secs(30))
        .unwrap();
    assert_eq!(receiver.join().unwrap(), 3 * window);
}

#[test]
fn owned_and_blocking_sends_leave_in_call_order() {
    let w = mesh(2, 11);
    let mut tickets = Vec::new();
    let mut want = Vec::new();
    for i in 0u32..24 {
        let len = if i % 3 == 0 { 3 * MIB } else { 4 + i as usize };
        let mut payload = vec![i as u8; len];
        payload[..4].copy_from_slice(&i.to_le_bytes());
        want.push(payload);
    }
    // The receiver takes them as they come (the sends exceed the window in all).
    let t1 = w[1].clone();
    let expected = want.clone();
    let receiver = thread::spawn(move || {
        for (i, expected) in expected.iter().enumerate() {
            let m = t1.recv_msg(0, key(4), secs(30)).unwrap();
            assert!(&m.payload == expected, "message {i} out of order");
        }
    });
    for (i, payload) in want.into_iter().enumerate() {
        if i % 2 == 0 {
            tickets.push(w[0].isend(1, key(4), 0, payload).unwrap());
        } else {
            w[0].send(1, key(4), 0, &payload, secs(30)).unwrap();
        }
    }
    for t in tickets {
        w[0].wait(t, secs(30)).unwrap();
    }
    receiver.join().unwrap();
}

#[test]
fn strangers_are_rejected_and_the_mesh_still_forms() {
    let (l0, l1) = (
        TcpMeshListener::bind(LOCAL).unwrap(),
        TcpMeshListener::bind(LOCAL).unwrap(),
    );
    let addrs = vec![l0.local_addr(), l1.local_addr()];
    let a = addrs.clone();
    let rank0 = thread::spawn(move || l0.connect_mesh(0, &a, 77, &opts(), secs(20)));
    let silent = TcpStream::connect(addrs[0]).unwrap();

    let reply = knock(addrs[0], b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(reply.first(), Some(&1), "{reply:?}");
    assert!(
        String::from_utf8_lossy(&reply[3..]).contains("magic"),
        "{reply:?}"
    );

    let reply = knock(addrs[0], &hello(78, 2, 1, 0));
    assert_eq!(reply.first(), Some(&3), "{reply:?}");
    assert!(
        String::from_utf8_lossy(&reply[3..]).contains("session"),
        "{reply:?}"
    );

    let reply = knock(addrs[0], &hello(77, 3, 1, 0));
    assert_eq!(reply.first(), Some(&4), "{reply:?}");

    let t1 = l1.connect_mesh(1, &addrs, 77, &opts(), secs(20)).unwrap();
    let t0 = rank0.join().unwrap().unwrap();
    t1.send(0, key(1), 0, b"hi", secs(5)).unwrap();
    assert_eq!(t0.recv_msg(1, key(1), secs(5)).unwrap().payload, b"hi");
    t0.send(1, key(1), 0, b"ho", secs(5)).unwrap();
    assert_eq!(t1.recv_msg(0, key(1), secs(5)).unwrap().payload, b"ho");
    drop(silent);
}

#[test]
fn a_rank_of_another_session_fails_fast_and_is_named() {
    let (l0, l1) = (
        TcpMeshListener::bind(LOCAL).unwrap(),
        TcpMeshListener::bind(LOCAL).unwrap(),
    );
    let addrs = vec![l0.local_addr(), l1.local_addr()];
    let a = addrs.clone();
    let rank0 = thread::spawn(move || l0.connect_mesh(0, &a, 1, &opts(), secs(1)));
    let t = Instant::now();
    let e = l1
        .connect_mesh(1, &addrs, 2, &opts(), secs(20))
        .err()
        .expect("a wrong session must fail");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(e.failed_peers(), [0]);
    assert!(e.to_string().contains("wrong session"), "{e}");
    let e = rank0.join().unwrap().err().expect("rank 1 never joined");
    assert_eq!(e.failed_peers(), [1], "{e}");
}

#[test]
fn a_missing_rank_fails_the_mesh_in_time_and_is_named() {
    let listeners: Vec<_> = (0..3)
        .map(|_| TcpMeshListener::bind(LOCAL).unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect();
    let t = Instant::now();
    let joins: Vec<_> = listeners
        .into_iter()
        .take(2)
        .enumerate()
        .map(|(rank, l)| {
            let addrs = addrs.clone();
            thread::spawn(move || {
                let d = Deadline::after(Duration::from_millis(800));
                l.connect_mesh(rank, &addrs, 3, &opts(), d)
            })
        })
        .collect();
    for j in joins {
        let e: MeshError = j.join().unwrap().err().expect("rank 2 never came");
        assert_eq!(e.failed_peers(), [2], "{e}");
        let text = e.to_string();
        assert!(
            text.contains("rank 2 at") && text.contains("never connected"),
            "{text}"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

    // A missing lower rank: nothing listens at its address any more.
    let (gone, l1) = (
        TcpMeshListener::bind(LOCAL).unwrap(),
        TcpMeshListener::bind(LOCAL).unwrap(),
    );
    let addrs = vec![gone.local_addr(), l1.local_addr()];
    drop(gone);
    let d = Deadline::after(Duration::from_millis(500));
    let e = l1
        .connect_mesh(1, &addrs, 3, &opts(), d)
        .err()
        .expect("rank 0 is gone");
    assert_eq!(e.failed_peers(), [0], "{e}");
    assert!(e.to_string().contains("could not connect"), "{e}");
}

#[test]
fn a_peer_that_vanishes_without_goodbye_is_reported_lost_after_its_messages() {
    let (t0, mut fake) = with_fake_rank_1();
    fake.write_all(&data_frame(key(5), b"abc")).unwrap();
    drop(fake);
    assert_eq!(t0.recv_msg(1, key(5), secs(5)).unwrap().payload, b"abc");
    let reason = lost_reason(t0.recv_msg(1, key(5), secs(5)).unwrap_err(), 1);
    assert!(reason.contains("connection to rank 1 lost"), "{reason}");
    let e = t0.send(1, key(5), 0, b"x", secs(5)).unwrap_err();
    assert!(matches!(e, TransportError::PeerLost { peer: 1, .. }), "{e}");
    assert!(matches!(
        t0.isend(1, key(5), 0, vec![1]),
        Err(TransportError::PeerLost { peer: 1, .. })
    ));
}

#[test]
fn a_silent_peer_is_lost_at_the_liveness_bound_and_hears_heartbeats() {
    // The fake rank 1 says nothing after its handshake (a frozen process): rank 0 sends it
    // heartbeats (72-byte frames of kind 5) every 0.5 s, and a receive from it with a 30 s
    // deadline fails once the link has been silent for the 3 s bound.
    let (t0, mut fake) = with_fake_rank_1();
    let started = Instant::now();
    let reader = thread::spawn(move || {
        fake.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut heartbeats = 0;
        let mut header = [0u8; 72];
        for _ in 0..20 {
            if fake.read_exact(&mut header).is_err() {
                break;
            }
            let (h, _) = FrameHeader::decode(&header).expect("a frame header");
            if h.kind == tutti::transport::frame::FrameKind::Heartbeat {
                heartbeats += 1;
            }
            if heartbeats == 3 {
                break;
            }
        }
        (heartbeats, fake)
    });
    let e = t0.recv_msg(1, key(0), secs(30)).unwrap_err();
    let took = started.elapsed();
    let reason = lost_reason(e, 1);
    assert!(reason.contains("rank 1 silent for 3."), "{reason}");
    assert!(reason.contains("frozen, dead or cut off"), "{reason}");
    assert!(
        // The link was made (and its silence started) just before `started`.
        took >= Duration::from_millis(2500) && took < Duration::from_secs(5),
        "lost after {took:?}"
    );
    let (heartbeats, _fake) = reader.join().unwrap();
    assert_eq!(heartbeats, 3, "heartbeats heard by the silent peer");
}

#[test]
fn garbage_on_a_link_is_a_protocol_error() {
    let (t0, mut fake) = with_fake_rank_1();
    fake.write_all(&[b'Z'; 64]).unwrap();
    let reason = lost_reason(t0.recv_msg(1, key(0), secs(5)).unwrap_err(), 1);
    assert!(reason.contains("protocol error from rank 1"), "{reason}");
}

#[test]
fn a_stuck_peer_cannot_hold_a_send_past_its_deadline() {
    // The fake rank 1 grants a huge window, then never reads: the socket buffers fill and the
    // send must give up at its deadline, and so must every send queued behind it.
    let (t0, mut fake) = with_fake_rank_1();
    fake.write_all(&FrameHeader::credit(1 << 40).encode())
        .unwrap();
    let big = vec![0u8; 256 * MIB];
    for payload in [&big[..], b"x"] {
        let t = Instant::now();
        let e = t0
            .send(
                1,
                key(0),
                0,
                payload,
                Deadline::after(Duration::from_millis(300)),
            )
            .unwrap_err();
        assert!(matches!(e, TransportError::Timeout { peer: 1, .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
    // A peer that grants no window at all holds a send no longer either.
    let (t0, _silent) = with_fake_rank_1();
    let e = t0
        .send(
            1,
            key(0),
            0,
            b"y",
            Deadline::after(Duration::from_millis(100)),
        )
        .unwrap_err();
    assert!(matches!(e, TransportError::Timeout { peer: 1, .. }), "{e}");
}

#[test]
fn an_isend_to_a_peer_that_stops_reading_fails_its_wait_by_the_deadline() {
    // As above, for the owned send: `isend` returns at once, and `wait` on it gives up at the
    // wait's deadline (twice: the request stays pending and can be waited for again), naming
    // the peer; `test` says not done without blocking, and `cancel` lets it go.
    let (t0, mut fake) = with_fake_rank_1();
    fake.write_all(&FrameHeader::credit(1 << 40).encode())
        .unwrap();
    let t = Instant::now();
    let id = t0.isend(1, key(0), 0, vec![0u8; 256 * MIB]).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "isend blocked {:?}",
        t.elapsed()
    );
    for _ in 0..2 {
        let t = Instant::now();
        let e = t0
            .wait(id, Deadline::after(Duration::from_millis(300)))
            .unwrap_err();
        let took = t.elapsed();
        assert!(matches!(e, TransportError::Timeout { peer: 1, .. }), "{e}");
        assert!(e.to_string().contains("send to rank 1"), "{e}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
    assert!(t0.test(id).unwrap().is_none());
    t0.cancel(id);
}

#[test]
fn a_clean_shutdown_is_reported_as_such_after_earlier_messages() {
    let w = mesh(2, 13);
    w[1].send(0, key(3), 0, b"last", secs(5)).unwrap();
    w[1].shutdown("job done");
    w[1].shutdown("twice is fine");
    assert_eq!(w[0].recv_msg(1, key(3), secs(5)).unwrap().payload, b"last");
    let reason = lost_reason(w[0].recv_msg(1, key(3), secs(5)).unwrap_err(), 1);
    assert!(
        reason.contains("clean shutdown") && reason.contains("job done"),
        "{reason}"
    );
    let e = w[0].send(1, key(3), 0, b"x", secs(5)).unwrap_err();
    assert!(matches!(e, TransportError::PeerLost { peer: 1, .. }), "{e}");
    for e in [
        w[1].recv_msg(0, key(3), secs(5)).unwrap_err(),
        w[1].send(0, key(3), 0, b"x", secs(5)).unwrap_err(),
        w[1].isend(0, key(3), 0, vec![1]).err().unwrap(),
    ] {
        assert!(
            matches!(&e, TransportError::Closed { reason } if reason.contains("job done")),
            "{e}"
        );
    }
}

#[test]
fn dropping_a_transport_says_goodbye_without_blocking() {
    let mut w = mesh(2, 17);
    let t1 = w.pop().unwrap();
    let t = Instant::now();
    drop(t1);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    let reason = lost_reason(w[0].recv_msg(1, key(0), secs(5)).unwrap_err(), 1);
    assert!(reason.contains("clean shutdown"), "{reason}");
}

#[test]
fn a_receive_with_nothing_to_take_times_out_naming_the_peer() {
    let w = mesh(2, 19);
    assert!(w[0].try_recv_msg(1, key(0)).unwrap().is_none());
    let t = Instant::now();
    let e = w[0]
        .recv_msg(1, key(0), Deadline::after(Duration::from_millis(50)))
        .unwrap_err();
    let waited = t.elapsed();
    assert!(matches!(e, TransportError::Timeout { peer: 1, .. }), "{e}");
    assert!(e.to_string().contains("rank 1"), "{e}");
    assert!(
        waited >= Duration::from_millis(50) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

/// A world of `n` ranks with a flow-control window of `window` bytes.
fn mesh_with_window(n: usize, session: u64, window: usize) -> Vec<Arc<TcpTransport>> {
    let opts = TcpOptions {
        window_bytes: window,
        ..opts()
    };
    mesh_with(n, session, &opts)
}

#[test]
fn a_sender_that_outruns_its_receiver_is_held_to_the_window() {
    const WINDOW: usize = 1 << 20;
    let w = mesh_with_window(2, 31, WINDOW);
    let (count, len) = (64, 256 << 10);
    let t0 = w[0].clone();
    let sender = thread::spawn(move || {
        for i in 0..count {
            t0.send(1, key(6), i as u128, &pattern(i, 1, len), secs(30))
                .unwrap();
        }
    });
    let mut got = vec![0u8; len];
    for i in 0..count {
        // Each receive is posted late: the sender must wait for it, not fill our memory.
        thread::sleep(Duration::from_millis(1));
        let env = w[1]
            .recv(
                Source::Rank(0),
                key(6),
                0,
                RecvInto::Copy(&mut got),
                secs(30),
            )
            .unwrap();
        assert_eq!((env.fingerprint, env.written), (i as u128, true));
        assert!(got == pattern(i, 1, len), "message {i}");
    }
    sender.join().unwrap();
    let peak = w[1].peak_unexpected_bytes();
    assert!(peak > 0, "some messages arrived before their receive");
    assert!(peak <= WINDOW, "{peak} bytes buffered, window {WINDOW}");
}

#[test]
fn closing_one_link_leaves_the_others_working() {
    let w = mesh(3, 33);
    w[0].close_link(1, "replacing it");
    let e = w[0].send(1, key(1), 0, b"x", secs(5)).unwrap_err();
    assert!(
        matches!(&e, TransportError::PeerLost { peer: 1, reason } if reason.contains("replacing it")),
        "{e}"
    );
    let reason = lost_reason(w[1].recv_msg(0, key(1), secs(5)).unwrap_err(), 0);
    assert!(reason.contains("clean shutdown: replacing it"), "{reason}");
    // The other links carry on, both ways.
    for (a, b) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
        w[a].send(b, key(2), 0, &pattern(a, b, 1000), secs(5))
            .unwrap();
        let m = w[b].recv_msg(a, key(2), secs(5)).unwrap();
        assert!(m.payload == pattern(a, b, 1000), "{a} -> {b}");
    }
}

#[test]
fn any_source_receives_and_probes_see_every_sender() {
    let w = mesh(3, 35);
    assert!(w[0].probe(Source::Any, key(9), None).unwrap().is_none());
    w[2].send(0, key(9), 5, &pattern(2, 0, 300), secs(5))
        .unwrap();
    let env = w[0]
        .probe(Source::Any, key(9), Some(secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!((env.peer, env.len, env.fingerprint), (2, 300, 5));
    w[1].send(0, key(9), 6, &pattern(1, 0, 40), secs(5))
        .unwrap();
    let mut from = Vec::new();
    for _ in 0..2 {
        let m = w[0].recv_owned(Source::Any, key(9), secs(5)).unwrap();
        assert!(m.payload == pattern(m.peer, 0, m.payload.len()));
        from.push(m.peer);
    }
    assert_eq!(from, [2, 1], "in arrival order");
    let e = w[0]
        .recv_owned(
            Source::Any,
            key(9),
            Deadline::after(Duration::from_millis(50)),
        )
        .unwrap_err();
    assert!(e.to_string().contains("any rank"), "{e}");
}

#[test]
fn a_fragment_that_continues_no_message_is_a_protocol_error() {
    let (t0, mut fake) = with_fake_rank_1();
    let mut frame = FrameHeader::fragment(key(0), 0, 100, 50, 10, 0)
        .encode()
        .to_vec();
    frame.extend_from_slice(&[7; 10]);
    fake.write_all(&frame).unwrap();
    let reason = lost_reason(t0.recv_msg(1, key(0), secs(5)).unwrap_err(), 1);
    assert!(
        reason.contains("protocol error from rank 1") && reason.contains("offset 50"),
        "{reason}"
    );
}

#[test]
fn links_of_one_host_use_shared_memory_unless_tcp_is_forced() {
    let forced_tcp = opts().shm.mode == tutti::transport::shm::ShmMode::Off;
    let w = mesh(3, 0x5a5a);
    for (rank, t) in w.iter().enumerate() {
        let others: Vec<usize> = (0..3).filter(|&p| p != rank).collect();
        let expect = if forced_tcp { Vec::new() } else { others };
        assert_eq!(t.shm_peers(), expect, "rank {rank}");
    }
    // Whatever carries them, messages of every size arrive whole and in order.
    let k = key(3);
    for len in [0usize, 1, 4095, 1 << 20, (5 << 20) + 3] {
        w[0].send(2, k, 0, &pattern(0, 2, len), secs(20)).unwrap();
        let m = w[2].recv_msg(0, k, secs(20)).unwrap();
        assert_eq!(m.payload, pattern(0, 2, len), "{len} bytes");
    }
}

#[test]
fn a_peer_that_aborts_fails_a_send_blocked_on_a_third_rank_at_once() {
    // Rank 1 never receives, so rank 0's large send stalls at the window; only rank 2 knows
    // why (say it timed out on rank 1) and aborts. Rank 0 must fail now, with rank 2's reason,
    // not at its own deadline: the world is aborted.
    let w = mesh_with_window(3, 37, MIB);
    let t0 = w[0].clone();
    let started = Instant::now();
    let sender = thread::spawn(move || {
        let big = vec![7u8; 64 * MIB];
        let e = t0.send(1, key(4), 0, &big, secs(60)).unwrap_err();
        (e, started.elapsed())
    });
    thread::sleep(Duration::from_millis(300));
    w[2].abort("all_reduce #7 on rank 2: timed out waiting to receive from rank 1");
    let (e, took) = sender.join().unwrap();
    let text = e.to_string();
    assert!(
        text.contains("rank 2 aborted") && text.contains("from rank 1"),
        "{text}"
    );
    assert!(took < Duration::from_secs(10), "failed after {took:?}");
    // Later calls fail at once with the same reason; the frozen rank 1 hears of it too.
    let later = w[0].send(1, key(4), 0, b"x", secs(5)).unwrap_err();
    assert!(
        matches!(&later, TransportError::Closed { reason } if reason.contains("rank 2 aborted")),
        "{later}"
    );
    let heard = w[1].recv_msg(2, key(4), secs(5)).unwrap_err().to_string();
    assert!(heard.contains("rank 2 aborted"), "{heard}");
}

#[test]
fn frames_that_arrive_in_pieces_are_put_back_together() {
    // A frame split across reads (as on any real network) leaves part of it in the receive
    // buffer when the link reads again: the next read must append to it.
    let (t0, mut fake) = with_fake_rank_1();
    let mut frames = data_frame(key(8), &pattern(1, 0, 3000));
    frames.extend(data_frame(key(8), b"second"));
    for piece in frames.chunks(10) {
        fake.write_all(piece).unwrap();
        fake.flush().unwrap();
        thread::sleep(Duration::from_micros(300));
    }
    let first = t0.recv_msg(1, key(8), secs(10)).unwrap();
    assert!(first.payload == pattern(1, 0, 3000));
    assert_eq!(t0.recv_msg(1, key(8), secs(10)).unwrap().payload, b"second");
}

/// Communicators over a mesh of `n` ranks with `opts`, calls bounded by `timeout`.
fn comms_with(n: usize, session: u64, opts: &TcpOptions, timeout: Duration) -> Vec<Communicator> {
    let config = Config {
        timeout,
        ..Config::default()
    };
    mesh_with(n, session, opts)
        .into_iter()
        .map(|t| Communicator::with_transport(t, config.clone()))
        .collect()
}

#[test]
fn ranks_that_compute_between_calls_for_longer_than_the_liveness_bound_are_not_lost() {
    // Liveness 1 s, 8 s of "compute" (a sleep, no call) between two all-reduces: the helper
    // threads keep heartbeating, so nobody is declared silent.
    let opts = TcpOptions {
        liveness: Duration::from_secs(1),
        ..opts()
    };
    let comms = comms_with(3, 41, &opts, Duration::from_secs(30));
    let sums: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = comms
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let mut x = vec![1.0f32; 1 << 16];
                    c.all_reduce(&mut x, ReduceOp::Sum)?;
                    thread::sleep(Duration::from_secs(8));
                    c.all_reduce(&mut x, ReduceOp::Sum)?;
                    Ok::<f32, tutti::Error>(x[0])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, r) in sums.into_iter().enumerate() {
        assert_eq!(r.unwrap_or_else(|e| panic!("rank {rank}: {e}")), 9.0);
    }
}

#[test]
fn collective_calls_that_exchange_nothing_fail_with_the_mismatch_over_links() {
    // Rank 0 broadcasts from root 1, rank 1 from root 0: both wait to receive, nothing of the
    // call moves. The heartbeats announce the blocked calls: both fail with the mismatch,
    // naming both calls, in well under a second (the timeout is 60 s).
    let comms = comms_with(2, 43, &opts(), Duration::from_secs(60));
    let out: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = comms
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let started = Instant::now();
                    let mut x = vec![1u32; 10];
                    let e = c.broadcast(&mut x, 1 - c.rank()).unwrap_err();
                    (e.to_string(), started.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, (e, took)) in out.iter().enumerate() {
        eprintln!("rank {rank}: failed after {took:.2?}: {e}");
        assert!(e.contains("mismatched call"), "rank {rank}: {e}");
        assert!(
            e.contains("broadcast(u32, root 0, count 10)"),
            "rank {rank}: {e}"
        );
        assert!(
            e.contains("broadcast(u32, root 1, count 10)"),
            "rank {rank}: {e}"
        );
        assert!(*took < Duration::from_secs(2), "rank {rank} took {took:?}");
    }
}

/// Tiny rings and no spinning: the writer keeps filling its 4 KiB ring and blocking on it, the
/// reader frees room lazily (a quarter of the ring at a time, and before it blocks) and both
/// sleep between messages, so every doorbell path runs. A lost wake-up would cost a 100 ms poll
/// timeout; the whole exchange must take far less than that many of them.
#[test]
fn tiny_rings_without_spinning_lose_no_wake_up() {
    let mut o = opts();
    o.spin = Duration::ZERO;
    o.shm.spin = Duration::ZERO;
    o.shm.ring_bytes = Some(4096);
    let world = mesh_with(2, 31, &o);
    const MESSAGES: usize = 600;
    let size = |i: usize| (i * 397) % 9000;
    let start = Instant::now();
    let joins: Vec<_> = world
        .into_iter()
        .map(|t| {
            thread::spawn(move || {
                let (me, peer) = (t.rank(), 1 - t.rank());
                for i in 0..MESSAGES {
                    if me == 0 {
                        t.send(peer, key(1), 0, &pattern(me, i, size(i)), secs(30))
                            .unwrap();
                    } else {
                        let mut got = vec![0u8; size(i)];
                        let env = t
                            .recv(
                                Source::Rank(peer),
                                key(1),
                                0,
                                RecvInto::Copy(&mut got),
                                secs(30),
                            )
                            .unwrap();
                        assert!(env.written && env.len == size(i), "message {i}");
                        assert!(got == pattern(peer, i, size(i)), "message {i}");
                    }
                }
                // The answer travels the other way after the receiver's last read.
                let mut ack = [0u8; 1];
                if me == 1 {
                    t.send(peer, key(2), 0, &[9], secs(30)).unwrap();
                } else {
                    t.recv(
                        Source::Rank(peer),
                        key(2),
                        0,
                        RecvInto::Copy(&mut ack),
                        secs(30),
                    )
                    .unwrap();
                    assert_eq!(ack, [9]);
                }
            })
        })
        .collect();
    for j in joins {
        j.join().unwrap();
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "{MESSAGES} messages took {took:?}"
    );
}
