//! One message larger than 4 GiB over the TCP transport on loopback: past every 32-bit length
//! (frame lengths, Linux's ~2 GiB cap on one `write`/`read` call), the bytes arrive whole and in
//! place. In a test binary of its own so that nothing else runs beside it: it holds about 8 GiB
//! (the sender's buffer and the receiver's copy).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tutti::transport::tcp::{TcpMeshListener, TcpOptions, TcpTransport};
use tutti::transport::{Lane, MsgKey, Transport};
use tutti::Deadline;

/// 4 GiB and a bit: not a multiple of 8 or of any page size.
const LEN: usize = (4 << 30) + 4097;

fn secs(s: u64) -> Deadline {
    Deadline::after(Duration::from_secs(s))
}

fn pair() -> (Arc<TcpTransport>, Arc<TcpTransport>) {
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let listeners: Vec<_> = (0..2)
        .map(|_| TcpMeshListener::bind(local).unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect();
    let mut joins: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let addrs = addrs.clone();
            thread::spawn(move || {
                l.connect_mesh(rank, &addrs, 99, &TcpOptions::default(), secs(20))
            })
        })
        .collect();
    let b = joins.pop().unwrap().join().unwrap().unwrap();
    let a = joins.pop().unwrap().join().unwrap().unwrap();
    (a, b)
}

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
    let (a, b) = pair();
    let key = MsgKey {
        comm_id: 0,
        lane: Lane::P2p,
        tag: 1,
    };
    let receiver = thread::spawn(move || {
        let msg = b
            .recv(0, key, secs(300))
            .expect("receive the large message");
        // A small message behind the large one, with the same key: order is kept.
        let tail = b
            .recv(0, key, secs(60))
            .expect("receive the message after it");
        (msg.payload, tail.payload)
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
