//! Large transfers over the TCP transport on loopback, one at a time (a lock keeps them apart,
//! and this binary holds nothing else): one message larger than 4 GiB, past every 32-bit length
//! (frame lengths, Linux's ~2 GiB cap on one `write`/`read` call), arrives whole and in place
//! (about 8 GiB: the sender's buffer and the receiver's); and a ring all-reduce and an
//! all-to-all of 1 GiB per rank complete under a 1 MiB flow-control window, which proves that
//! no schedule deadlocks when the receiver may buffer far less than a message.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};
use tutti::transport::tcp::{TcpMeshListener, TcpOptions, TcpTransport};
use tutti::transport::{Lane, MsgKey, RecvInto, Source, Transport};
use tutti::{Communicator, Config, Deadline, ReduceOp};

/// One large test at a time: each holds several GiB.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// 4 GiB and a bit: not a multiple of 8 or of any page size.
const LEN: usize = (4 << 30) + 4097;

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
    o
}

fn secs(s: u64) -> Deadline {
    Deadline::after(Duration::from_secs(s))
}

fn pair() -> (Arc<TcpTransport>, Arc<TcpTransport>) {
    let mut w = world(2, &opts());
    let b = w.pop().unwrap();
    (w.pop().unwrap(), b)
}

/// A TCP world of `n` ranks in this process.
fn world(n: usize, opts: &TcpOptions) -> Vec<Arc<TcpTransport>> {
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let listeners: Vec<_> = (0..n)
        .map(|_| TcpMeshListener::bind(local).unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect();
    let joins: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let (addrs, opts) = (addrs.clone(), opts.clone());
            thread::spawn(move || l.connect_mesh(rank, &addrs, 99, &opts, secs(20)))
        })
        .collect();
    joins
        .into_iter()
        .map(|j| j.join().unwrap().unwrap())
        .collect()
}

/// Runs `f` on every rank of a TCP world of `n` with a 1 MiB window, one thread per rank.
fn with_small_window<R: Send + 'static>(
    n: usize,
    f: impl Fn(Communicator) -> R + Send + Sync + 'static,
) -> Vec<R> {
    let opts = TcpOptions {
        window_bytes: 1 << 20,
        ..opts()
    };
    let f = Arc::new(f);
    let joins: Vec<_> = world(n, &opts)
        .into_iter()
        .map(|t| {
            let f = f.clone();
            let config = Config {
                timeout: Duration::from_secs(300),
                tcp: opts.clone(),
                ..Config::default()
            };
            thread::spawn(move || {
                assert_eq!(t.window(), 1 << 20);
                f(Communicator::with_transport(t, config))
            })
        })
        .collect();
    joins.into_iter().map(|j| j.join().unwrap()).collect()
}

/// Elements of f32 per rank in the 1 GiB tests.
const GIB_F32: usize = (1 << 30) / 4;

/// Byte `i` of the message: a function of the position in every 8-byte word, so a dropped,
/// doubled or shifted block of any length is caught.
fn fill(buf: &mut [u8]) {
    for (w, chunk) in buf.chunks_mut(8).enumerate() {
        let word = (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// The index of the first wrong byte, if any.
fn first_wrong(buf: &[u8]) -> Option<usize> {
    buf.chunks(8).enumerate().find_map(|(w, chunk)| {
        let word = (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
        (chunk != &word[..chunk.len()]).then(|| {
            let off = chunk.iter().zip(word).position(|(a, b)| *a != b);
            w * 8 + off.unwrap_or(0)
        })
    })
}

#[test]
fn a_message_over_4_gib_arrives_whole() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b) = pair();
    let key = MsgKey {
        comm_id: 0,
        lane: Lane::P2p,
        tag: 1,
    };
    let receiver = thread::spawn(move || {
        // Posted before the bytes arrive: they land in this buffer, not in a copy.
        let mut got = vec![0u8; LEN];
        let env = b
            .recv(Source::Rank(0), key, 0, RecvInto::Copy(&mut got), secs(300))
            .expect("receive the large message");
        assert!(env.written && env.len == LEN);
        // A small message behind the large one, with the same key: order is kept.
        let tail = b
            .recv_owned(Source::Rank(0), key, secs(60))
            .expect("receive the message after it");
        (got, tail.payload)
    });
    let mut payload = vec![0u8; LEN];
    fill(&mut payload);
    let started = Instant::now();
    a.send(1, key, 0, &payload, secs(300)).expect("send 4 GiB");
    a.send(1, key, 0, b"after", secs(60))
        .expect("send the tail");
    drop(payload);
    let (got, tail) = receiver.join().expect("receiver thread");
    let took = started.elapsed();
    assert_eq!(got.len(), LEN);
    assert_eq!(first_wrong(&got), None);
    assert_eq!(tail, b"after");
    eprintln!(
        "{LEN} bytes in {took:.2?}: {:.2} GB/s over loopback",
        LEN as f64 / took.as_secs_f64() / 1e9
    );
}

#[test]
fn a_ring_all_reduce_of_1_gib_completes_under_a_1_mib_window() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let wrong = with_small_window(3, |c| {
        let r = c.rank() as f32;
        let mut v: Vec<f32> = (0..GIB_F32).map(|i| (i % 1024) as f32 + r).collect();
        c.all_reduce(&mut v, ReduceOp::Sum).expect("all-reduce");
        // Sum over ranks 0..3 of (i % 1024 + r): exact in f32.
        v.iter()
            .enumerate()
            .filter(|&(i, x)| *x != 3.0 * (i % 1024) as f32 + 3.0)
            .count()
    });
    assert_eq!(wrong, [0, 0, 0]);
}

#[test]
fn an_all_to_all_of_1_gib_completes_under_a_1_mib_window() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let wrong = with_small_window(3, |c| {
        let (r, n) = (c.rank() as u32, c.size());
        let chunk = GIB_F32 / n;
        // Element j of the chunk from rank s to rank d: s * 2^20 + d * 2^10 + j % 1024.
        let send: Vec<u32> = (0..chunk * n)
            .map(|i| r << 20 | ((i / chunk) as u32) << 10 | (i % chunk % 1024) as u32)
            .collect();
        let mut recv = vec![0u32; chunk * n];
        c.all_to_all(&send, &mut recv).expect("all-to-all");
        drop(send);
        recv.iter()
            .enumerate()
            .filter(|&(i, &x)| {
                x != ((i / chunk) as u32) << 20 | r << 10 | (i % chunk % 1024) as u32
            })
            .count()
    });
    assert_eq!(wrong, [0, 0, 0]);
}
