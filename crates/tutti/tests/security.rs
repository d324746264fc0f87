//! Strangers, wrong secrets, replays and floods against the store and the mesh, over loopback
//! (issue 14): each is refused within a bounded time and logged, and a world that forms and
//! all-reduces meanwhile is unharmed. Also: a world on `MASTER_ADDR=::1`, and bounded durations.
//!
//! Worlds here are ranks as threads of this process, each calling `Communicator::init` with its
//! own variables (as `from_env` would read them), so every rank runs the real start-up: the
//! store, its handshake, the published addresses, the mesh handshake.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};
use tutti::auth::Secret;
use tutti::rendezvous::{
    Bootstrap, ClientAuth, ServerOptions, Store, StoreError, TcpStore, TcpStoreServer,
};
use tutti::transport::tcp::{TcpMeshListener, TcpOptions, HELLO_MAGIC, HELLO_VERSION};
use tutti::transport::{Lane, MsgKey, Source, Transport};
use tutti::{Communicator, Config, Deadline, ReduceOp};

const SECRET: &str = "test-secret-0123456789abcdef";
const OTHER: &str = "another-jobs-secret-0123456789";

fn secret(s: &str) -> Secret {
    Secret::new(s.as_bytes().to_vec()).unwrap()
}

fn secs(s: u64) -> Deadline {
    Deadline::after(Duration::from_secs(s))
}

/// A port that was free a moment ago.
fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind(SocketAddr::new(ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Raises the open-file limit to its hard maximum: the floods below hold both ends of many
/// connections in this one process.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain calls on a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The variables of rank `rank` of a world of `n` at `addr:port`, with `extra`.
fn vars(
    rank: usize,
    n: usize,
    addr: &str,
    port: u16,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = [
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", n.to_string()),
        ("MASTER_ADDR", addr.to_string()),
        ("MASTER_PORT", port.to_string()),
        ("TUTTI_INIT_TIMEOUT", "60".to_string()),
        ("TUTTI_TIMEOUT", "30".to_string()),
        ("TUTTI_TUNE", "0".to_string()),
        ("TUTTI_TRANSPORT", "tcp".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    v.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    v
}

/// Starts rank `rank` in a thread: init, then `rounds` all-reduces checked against the sum.
fn start_rank(
    vars: Vec<(String, String)>,
    rounds: usize,
) -> thread::JoinHandle<Result<usize, String>> {
    thread::spawn(move || {
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let boot = Bootstrap::from_vars(get).map_err(|e| e.to_string())?;
        let config = Config::from_vars(get).map_err(|e| e.to_string())?;
        let (rank, n) = (boot.rank, boot.world_size);
        let comm = Communicator::init(boot, config).map_err(|e| e.to_string())?;
        let len = 100_003;
        for round in 0..rounds {
            let mut x: Vec<f64> = (0..len).map(|i| (i * (rank + 1) + round) as f64).collect();
            comm.all_reduce(&mut x, ReduceOp::Sum)
                .map_err(|e| e.to_string())?;
            let ranks_sum = (n * (n + 1) / 2) as f64;
            for (i, v) in x.iter().enumerate() {
                let want = i as f64 * ranks_sum + (round * n) as f64;
                if *v != want {
                    return Err(format!(
                        "rank {rank} round {round}: x[{i}] = {v}, want {want}"
                    ));
                }
            }
        }
        Ok(rank)
    })
}

/// Connections the test opens as a stranger, handed to a thread that watches them from the
/// moment each is opened until the other side closes it.
struct Watch {
    to_watcher: std::sync::mpsc::Sender<(TcpStream, Instant, &'static str)>,
    watcher: thread::JoinHandle<Vec<(&'static str, Duration, usize)>>,
}

impl Watch {
    /// Starts watching; every connection must be closed within `bound` of its opening.
    fn start(bound: Duration) -> Watch {
        let (to_watcher, rx) = std::sync::mpsc::channel();
        let watcher = thread::spawn(move || watch(&rx, bound));
        Watch {
            to_watcher,
            watcher,
        }
    }

    fn open(&self, addr: SocketAddr, what: &'static str, send: &[u8]) {
        let mut s = TcpStream::connect(addr).unwrap();
        let opened = Instant::now();
        if !send.is_empty() {
            // The peer may already have closed (a full handshake table): that is a refusal too.
            let _ = s.write_all(send);
        }
        s.set_nonblocking(true).unwrap();
        self.to_watcher.send((s, opened, what)).unwrap();
    }

    /// Waits until every connection was closed; per kind, the longest time from opening to
    /// close and the count.
    fn finish(self) -> Vec<(&'static str, Duration, usize)> {
        drop(self.to_watcher);
        self.watcher.join().unwrap()
    }
}

type Watched = (TcpStream, Instant, &'static str);

fn watch(
    rx: &std::sync::mpsc::Receiver<Watched>,
    bound: Duration,
) -> Vec<(&'static str, Duration, usize)> {
    let mut open: Vec<Watched> = Vec::new();
    let mut worst: Vec<(&'static str, Duration, usize)> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut senders_done = false;
    while !(senders_done && open.is_empty()) {
        loop {
            match rx.try_recv() {
                Ok(w) => open.push(w),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    senders_done = true;
                    break;
                }
            }
        }
        open.retain_mut(|(s, opened, what)| {
            let closed = loop {
                match s.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(_) => continue, // a refusal's reason: read on to the close
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break true, // reset: closed with our bytes unread
                }
            };
            let took = opened.elapsed();
            assert!(
                closed || took < bound,
                "a {what} connection is still open after {took:?}"
            );
            if closed {
                match worst.iter_mut().find(|(w, _, _)| w == what) {
                    Some(entry) => {
                        entry.1 = entry.1.max(took);
                        entry.2 += 1;
                    }
                    None => worst.push((what, took, 1)),
                }
            }
            !closed
        });
        thread::sleep(Duration::from_millis(2));
    }
    worst
}

/// Bytes that look like nothing in particular (a fixed xorshift stream).
fn junk(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A mesh hello as the transport's module doc lays it out.
fn mesh_hello(session: u64, size: u32, from: u32, to: u32, auth: bool, nonce: [u8; 32]) -> Vec<u8> {
    let mut b = HELLO_MAGIC.to_vec();
    b.extend_from_slice(&HELLO_VERSION.to_le_bytes());
    b.extend_from_slice(&session.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&from.to_le_bytes());
    b.extend_from_slice(&to.to_le_bytes());
    b.push(u8::from(auth));
    b.extend_from_slice(&nonce);
    b
}

/// A store client hello as `rendezvous::wire` lays it out.
fn store_hello(auth: bool, rank: u32, nonce: [u8; 32]) -> Vec<u8> {
    let mut b = b"TUTTISTO".to_vec();
    b.extend_from_slice(&2u16.to_le_bytes());
    b.push(u8::from(auth));
    b.extend_from_slice(&rank.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&nonce);
    b
}

fn read_all(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn strangers_floods_and_wrong_secrets_are_refused_while_a_world_all_reduces() {
    raise_fd_limit();
    let n = 4;
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = free_port(ip);
    let store_addr = SocketAddr::new(ip, port);
    let extra = [("TUTTI_SECRET", SECRET)];
    // Ranks 0-2 start now; rank 3 only once the strangers are in, so the mesh forms while they
    // are waiting in every listener's queue.
    let early: Vec<_> = (0..n - 1)
        .map(|r| start_rank(vars(r, n, "127.0.0.1", port, &extra), 3))
        .collect();

    // A client that knows the secret (the test itself) learns the mesh ports and the session,
    // which a stranger with the session but not the secret could also have.
    let spy = TcpStore::connect_as(
        "127.0.0.1",
        port,
        ClientAuth {
            secret: Some(secret(SECRET)),
            ..ClientAuth::default()
        },
        secs(30),
    )
    .unwrap();
    let mesh: Vec<SocketAddr> = (0..n - 1)
        .map(|r| {
            let v = spy.get(&format!("tutti/addr/{r}"), secs(30)).unwrap();
            String::from_utf8(v).unwrap().parse().unwrap()
        })
        .collect();
    let session = u64::from_le_bytes(
        spy.get("tutti/session", secs(30))
            .unwrap()
            .try_into()
            .unwrap(),
    );

    // Refused at once by the store: a wrong secret, no secret, and a rewrite of a rank's address.
    let t = Instant::now();
    let wrong = TcpStore::connect_as(
        "127.0.0.1",
        port,
        ClientAuth {
            rank: Some(1),
            secret: Some(secret(OTHER)),
            ..ClientAuth::default()
        },
        secs(10),
    );
    let wrong_secret_took = t.elapsed();
    match wrong {
        Err(e @ StoreError::Unauthorized { .. }) => {
            assert!(e.to_string().contains("refused"), "{e}")
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a wrong secret must be refused"),
    }
    let t = Instant::now();
    let none = TcpStore::connect("127.0.0.1", port, secs(10));
    let no_secret_took = t.elapsed();
    assert!(
        matches!(none, Err(StoreError::Unauthorized { .. })),
        "{:?}",
        none.err()
    );
    let e = spy.set("tutti/addr/1", b"10.9.9.9:1", secs(5)).unwrap_err();
    assert!(e.to_string().contains("may be set only by rank 1"), "{e}");

    let watch = Watch::start(Duration::from_secs(20));
    for (i, &addr) in std::iter::once(&store_addr).chain(&mesh).enumerate() {
        watch.open(addr, "random bytes", &junk(1500, i as u64 + 1));
        watch.open(addr, "silent", &[]);
        watch.open(
            addr,
            "truncated hello",
            &mesh_hello(session, n as u32, 3, 0, true, [1; 32])[..20],
        );
    }
    // A hello good in everything but the proof: the session is right, the secret is not.
    for (r, &addr) in mesh.iter().enumerate() {
        let nonce = [r as u8; 32];
        watch.open(
            addr,
            "mesh hello, no proof",
            &mesh_hello(session, n as u32, 3, r as u32, true, nonce),
        );
    }
    watch.open(store_addr, "oversized store hello", &{
        let mut h = store_hello(true, 0, [3; 32]);
        h.extend_from_slice(&[0xff; 70_000]);
        h
    });
    // A burst: 500 connections at the store, 50 at each rank's port.
    for i in 0..500 {
        watch.open(store_addr, "burst (store)", &junk(i % 3 * 40, i as u64));
    }
    for &addr in &mesh {
        for i in 0..50 {
            watch.open(addr, "burst (mesh)", &junk(i % 2 * 30, i as u64 + 7));
        }
    }

    let late = start_rank(vars(n - 1, n, "127.0.0.1", port, &extra), 3);
    let formed = Instant::now();
    for (r, h) in early.into_iter().chain(std::iter::once(late)).enumerate() {
        assert_eq!(h.join().unwrap(), Ok(r), "rank {r}");
    }
    let world_took = formed.elapsed();
    let worst = watch.finish();
    eprintln!(
        "wrong secret refused by the store in {wrong_secret_took:?}, no secret in \
         {no_secret_took:?}; the world formed and all-reduced 3 times in {world_took:?} after its \
         last rank started"
    );
    for (what, took, count) in &worst {
        eprintln!("{count:4} x {what:24}: all closed within {took:?}");
    }
    assert!(
        wrong_secret_took < Duration::from_secs(2),
        "{wrong_secret_took:?}"
    );
    assert!(
        no_secret_took < Duration::from_secs(2),
        "{no_secret_took:?}"
    );
}

#[test]
fn the_store_refuses_wrong_proofs_replays_and_rewrites() {
    let opts = ServerOptions {
        secret: Some(secret(SECRET)),
        ..ServerOptions::default()
    };
    let srv = TcpStoreServer::bind_with("127.0.0.1:0".parse().unwrap(), opts).unwrap();
    let addr = srv.local_addr();
    let as_rank = |rank: Option<u32>, s: Option<&str>| {
        TcpStore::connect_as(
            "127.0.0.1",
            addr.port(),
            ClientAuth {
                rank,
                job: 0,
                secret: s.map(secret),
            },
            secs(5),
        )
    };
    // The right secret gets in; the set-once rules hold.
    let r1 = as_rank(Some(1), Some(SECRET)).unwrap();
    let r2 = as_rank(Some(2), Some(SECRET)).unwrap();
    r1.set("tutti/addr/1", b"127.0.0.1:1111", secs(5)).unwrap();
    r1.set("tutti/addr/1", b"127.0.0.1:1111", secs(5)).unwrap(); // a retry: same value
    let e = r1
        .set("tutti/addr/1", b"127.0.0.1:2222", secs(5))
        .unwrap_err();
    assert!(e.to_string().contains("set once"), "{e}");
    let e = r2
        .set("tutti/addr/1", b"127.0.0.1:3333", secs(5))
        .unwrap_err();
    assert!(e.to_string().contains("may be set only by rank 1"), "{e}");
    let e = r2.delete("tutti/addr/1", secs(5)).unwrap_err();
    assert!(e.to_string().contains("never changed"), "{e}");
    let e = r2.set("tutti/session", b"12345678", secs(5)).unwrap_err();
    assert!(e.to_string().contains("rank 0"), "{e}");
    assert_eq!(r2.get("tutti/addr/1", secs(5)).unwrap(), b"127.0.0.1:1111");
    r2.set("free/key", b"x", secs(5)).unwrap();

    // Another job's secret, no secret: refused, and the server goes on.
    for (who, s) in [("wrong", Some(OTHER)), ("none", None)] {
        let t = Instant::now();
        let e = as_rank(Some(1), s)
            .err()
            .unwrap_or_else(|| panic!("{who}: let in"));
        assert!(matches!(e, StoreError::Unauthorized { .. }), "{who}: {e}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{who}: {:?}",
            t.elapsed()
        );
    }
    // A client with a secret refuses an unauthenticated server.
    let open = TcpStoreServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let e = TcpStore::connect_as(
        "127.0.0.1",
        open.local_addr().port(),
        ClientAuth {
            secret: Some(secret(SECRET)),
            ..ClientAuth::default()
        },
        secs(5),
    )
    .err()
    .expect("an unauthenticated store must be refused by a client with a secret");
    assert!(e.to_string().contains("not authenticated"), "{e}");

    // A replay: a proof made for one server nonce is refused under the next one.
    let key = secret(SECRET);
    let hello = store_hello(true, 1, [4; 32]);
    let mut first = TcpStream::connect(addr).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    first.write_all(&hello).unwrap();
    let mut server_hello = [0u8; 51];
    first.read_exact(&mut server_hello).unwrap();
    let proof = key.prove("tutti/store/client", &[&hello, &server_hello]);
    first.write_all(&proof).unwrap();
    let mut verdict = [9u8; 33];
    first.read_exact(&mut verdict).unwrap();
    assert_eq!(verdict[0], 0, "the honest proof is accepted");
    let mut replay = TcpStream::connect(addr).unwrap();
    replay
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    replay.write_all(&hello).unwrap();
    let mut second_hello = [0u8; 51];
    replay.read_exact(&mut second_hello).unwrap();
    assert_ne!(
        server_hello[19..],
        second_hello[19..],
        "server nonces must differ"
    );
    replay.write_all(&proof).unwrap();
    let answer = read_all(&mut replay);
    assert_eq!(
        answer.first(),
        Some(&1),
        "a replayed proof must be refused: {answer:?}"
    );
    assert!(
        String::from_utf8_lossy(&answer).contains("wrong proof"),
        "{answer:?}"
    );

    // Silence and truncation end at the handshake deadline; the store still serves.
    let mut silent = TcpStream::connect(addr).unwrap();
    let mut cut = TcpStream::connect(addr).unwrap();
    cut.write_all(&hello[..30]).unwrap();
    let t = Instant::now();
    assert!(read_all(&mut silent).is_empty());
    assert!(read_all(&mut cut).is_empty());
    let took = t.elapsed();
    eprintln!("silent and truncated store clients closed after {took:?}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert_eq!(r1.get("free/key", secs(5)).unwrap(), b"x");
}

#[test]
fn the_store_bounds_its_handshakes() {
    raise_fd_limit();
    let opts = ServerOptions {
        secret: Some(secret(SECRET)),
        max_handshakes: 8,
        ..ServerOptions::default()
    };
    let srv = TcpStoreServer::bind_with("127.0.0.1:0".parse().unwrap(), opts).unwrap();
    let addr = srv.local_addr();
    // 8 silent connections fill the handshake table; the next ones are closed at once.
    let silent: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    for _ in 0..20 {
        let mut extra = TcpStream::connect(addr).unwrap();
        assert!(read_all(&mut extra).is_empty());
    }
    let refused_in = t.elapsed();
    eprintln!("20 connections over the limit refused in {refused_in:?}");
    assert!(refused_in < Duration::from_secs(2), "{refused_in:?}");
    // A real client gets in once the silent ones time out (it retries meanwhile).
    let t = Instant::now();
    let c = TcpStore::connect_as(
        "127.0.0.1",
        addr.port(),
        ClientAuth {
            rank: Some(0),
            secret: Some(secret(SECRET)),
            ..ClientAuth::default()
        },
        secs(20),
    )
    .unwrap();
    c.set("k", b"v", secs(5)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    drop(silent);
}

/// Rank 0 of a world of 2 with a secret, and a fake rank 1 driven by the test.
#[test]
fn the_mesh_refuses_wrong_proofs_and_replays_and_still_forms() {
    let key = secret(SECRET);
    let (l0, l1) = (
        TcpMeshListener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap(),
        TcpMeshListener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap(),
    );
    let addrs = vec![l0.local_addr(), l1.local_addr()];
    let a = addrs.clone();
    let k0 = key.clone();
    let rank0 = thread::spawn(move || {
        l0.connect_mesh_with_secret(0, &a, 77, Some(&k0), &TcpOptions::default(), secs(30))
    });
    let hello = mesh_hello(77, 2, 1, 0, true, [8; 32]);

    // A wrong proof (another job's secret): status 7 and why.
    let mut s = TcpStream::connect(addrs[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&hello).unwrap();
    let mut challenge = [0u8; 34];
    s.read_exact(&mut challenge).unwrap();
    assert_eq!(challenge[..2], [0, 1], "an authenticated challenge");
    let t = Instant::now();
    s.write_all(&secret(OTHER).prove("tutti/mesh/client", &[&hello, &challenge]))
        .unwrap();
    let answer = read_all(&mut s);
    let wrong_took = t.elapsed();
    assert_eq!(answer.first(), Some(&7), "{answer:?}");
    assert!(
        String::from_utf8_lossy(&answer).contains("wrong proof"),
        "{answer:?}"
    );

    // A replay of an honest proof made for another challenge: refused.
    let mut s = TcpStream::connect(addrs[0]).unwrap();
    s.write_all(&hello).unwrap();
    let mut second = [0u8; 34];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut second).unwrap();
    assert_ne!(challenge, second, "nonces must differ");
    s.write_all(&key.prove("tutti/mesh/client", &[&hello, &challenge]))
        .unwrap();
    assert_eq!(read_all(&mut s).first(), Some(&7));

    // No secret at all: refused at the hello.
    let mut s = TcpStream::connect(addrs[0]).unwrap();
    s.write_all(&mesh_hello(77, 2, 1, 0, false, [0; 32]))
        .unwrap();
    let answer = read_all(&mut s);
    assert_eq!(answer.first(), Some(&7), "{answer:?}");
    assert!(
        String::from_utf8_lossy(&answer).contains("requires TUTTI_SECRET"),
        "{answer:?}"
    );

    // A rank with another job's secret fails fast, naming why; then the real rank 1 joins.
    let impostor = TcpMeshListener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    let t = Instant::now();
    let e = impostor
        .connect_mesh_with_secret(
            1,
            &addrs,
            77,
            Some(&secret(OTHER)),
            &TcpOptions::default(),
            secs(10),
        )
        .err()
        .expect("another job's secret must fail");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(e.to_string().contains("not authorized"), "{e}");

    let t1 = l1
        .connect_mesh_with_secret(1, &addrs, 77, Some(&key), &TcpOptions::default(), secs(30))
        .unwrap();
    let t0 = rank0.join().unwrap().unwrap();
    let k = MsgKey {
        comm_id: 0,
        lane: Lane::P2p,
        tag: 1,
    };
    t1.send(0, k, 0, b"hi", secs(5)).unwrap();
    let got = t0.recv_owned(Source::Rank(1), k, secs(5)).unwrap();
    assert_eq!(got.payload, b"hi");
    eprintln!("a wrong mesh proof was refused in {wrong_took:?}");
    assert!(wrong_took < Duration::from_secs(1), "{wrong_took:?}");
}

#[test]
fn a_world_on_ipv6_loopback_works() {
    if TcpListener::bind("[::1]:0").is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "::1 cannot be bound here, and CI=true: this test must run"
        );
        eprintln!("skipped: ::1 cannot be bound on this machine");
        return;
    }
    let n = 3;
    let port = free_port("::1".parse().unwrap());
    let extra = [("TUTTI_SECRET", SECRET)];
    let ranks: Vec<_> = (0..n)
        .map(|r| start_rank(vars(r, n, "::1", port, &extra), 2))
        .collect();
    for (r, h) in ranks.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), Ok(r), "rank {r}");
    }
}

#[test]
fn absurd_durations_are_clear_errors() {
    for bad in ["1e20", "1e10", "inf", "-5", "0"] {
        let e = Config::from_vars(|k| (k == "TUTTI_TIMEOUT").then(|| bad.to_string()))
            .expect_err(bad)
            .to_string();
        assert!(e.contains(&format!("TUTTI_TIMEOUT=\"{bad}\"")), "{e}");
        let e = Bootstrap::from_vars(|k| (k == "TUTTI_INIT_TIMEOUT").then(|| bad.to_string()))
            .expect_err(bad)
            .to_string();
        assert!(e.contains(&format!("TUTTI_INIT_TIMEOUT={bad}")), "{e}");
    }
    let c = Config::from_vars(|k| (k == "TUTTI_TIMEOUT").then(|| "1e9".to_string())).unwrap();
    assert_eq!(c.timeout, Duration::from_secs(1_000_000_000));
}
