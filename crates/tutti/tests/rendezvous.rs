//! Rendezvous stores over real sockets and a real directory: the same semantics checks run
//! against the TCP store (server + clients) and the file store, plus the TCP-only failure modes
//! (strangers, busy ports, nobody listening, shutdown with waiters). Loopback addresses only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tutti::rendezvous::{local_ip_towards, FileStore, Store, StoreError, TcpStore, TcpStoreServer};
use tutti::Deadline;

fn soon() -> Deadline {
    Deadline::after(Duration::from_secs(10))
}

fn server() -> TcpStoreServer {
    TcpStoreServer::bind("127.0.0.1:0".parse().unwrap()).unwrap()
}

fn client(addr: SocketAddr) -> Arc<dyn Store> {
    Arc::new(TcpStore::connect("127.0.0.1", addr.port(), soon()).unwrap())
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("tutti-test-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Semantics shared by every store; `open` gives a new client of the same store each call.

fn check_basic_ops(open: &dyn Fn() -> Arc<dyn Store>) {
    let a = open();
    let b = open();
    a.set("tutti/k", b"one", soon()).unwrap();
    assert_eq!(b.get("tutti/k", soon()).unwrap(), b"one");
    b.set("tutti/k", b"two", soon()).unwrap();
    assert_eq!(a.get("tutti/k", soon()).unwrap(), b"two", "set overwrites");
    a.set("empty", b"", soon()).unwrap();
    assert_eq!(b.get("empty", soon()).unwrap(), b"");
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    a.set("big", &big, soon()).unwrap();
    assert_eq!(b.get("big", soon()).unwrap(), big);

    assert_eq!(
        a.add("n", 5, soon()).unwrap(),
        5,
        "an absent counter starts at 0"
    );
    assert_eq!(b.add("n", -2, soon()).unwrap(), 3);
    assert_eq!(
        a.get("n", soon()).unwrap(),
        b"3",
        "counters are decimal text"
    );
    match b.add("tutti/k", 1, soon()) {
        Err(e @ StoreError::Refused { .. }) => assert!(e.to_string().contains("tutti/k"), "{e}"),
        other => panic!("add on text: {other:?}"),
    }

    assert!(a.check(&["tutti/k", "n", "empty"], soon()).unwrap());
    assert!(!a.check(&["tutti/k", "absent"], soon()).unwrap());
    assert!(a.check(&[], soon()).unwrap());
    b.wait(&["tutti/k", "n"], soon()).unwrap();

    assert!(a.delete("n", soon()).unwrap());
    assert!(
        !b.delete("n", soon()).unwrap(),
        "a second delete finds nothing"
    );
    assert!(!b.check(&["n"], soon()).unwrap());
}

fn check_waiting(open: &dyn Fn() -> Arc<dyn Store>) {
    let reader = open();
    let waiter = thread::spawn(move || {
        let t0 = Instant::now();
        let v = reader.get("later", soon());
        (v, t0.elapsed())
    });
    let keys = thread::spawn({
        let s = open();
        move || s.wait(&["w1", "w2"], soon())
    });
    thread::sleep(Duration::from_millis(100));
    let writer = open();
    writer.set("later", b"now", soon()).unwrap();
    writer.set("w1", b"", soon()).unwrap();
    writer.set("w2", b"", soon()).unwrap();
    let (v, waited) = waiter.join().unwrap();
    assert_eq!(v.unwrap(), b"now");
    assert!(
        waited >= Duration::from_millis(90),
        "get returned before the set: {waited:?}"
    );
    keys.join().unwrap().unwrap();
}

fn check_timeouts(open: &dyn Fn() -> Arc<dyn Store>) {
    let s = open();
    let t0 = Instant::now();
    let e = s
        .get("missing/key", Deadline::after(Duration::from_millis(50)))
        .unwrap_err();
    let took = t0.elapsed();
    assert!(e.is_timeout(), "{e}");
    assert!(e.to_string().contains("missing/key"), "{e}");
    assert!(
        (Duration::from_millis(45)..Duration::from_millis(1_000)).contains(&took),
        "get timed out after {took:?}"
    );
    s.set("present", b"", soon()).unwrap();
    match s.wait(
        &["present", "absent"],
        Deadline::after(Duration::from_millis(50)),
    ) {
        Err(StoreError::Timeout { keys, .. }) => assert_eq!(keys, vec!["absent".to_string()]),
        other => panic!("wait: {other:?}"),
    }
    // The client is still usable after a timeout, and an expired deadline still allows one try.
    let expired = Deadline::after(Duration::ZERO);
    assert_eq!(s.get("present", expired).unwrap(), b"");
    assert!(s.check(&["present"], expired).unwrap());
}

fn check_atomic_add(open: &dyn Fn() -> Arc<dyn Store>, threads: usize, per_thread: usize) {
    let shared = open();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            // Half the threads share one client, half have their own.
            let s = if t % 2 == 0 { shared.clone() } else { open() };
            thread::spawn(move || {
                let mut seen = Vec::with_capacity(per_thread);
                for _ in 0..per_thread {
                    seen.push(s.add("counter", 1, soon()).unwrap());
                }
                seen
            })
        })
        .collect();
    let mut all: Vec<i64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    let total = (threads * per_thread) as i64;
    assert_eq!(
        all,
        (1..=total).collect::<Vec<_>>(),
        "every add saw a distinct value"
    );
    assert_eq!(
        shared.get("counter", soon()).unwrap(),
        total.to_string().as_bytes()
    );
}

// ---------------------------------------------------------------------------------------------
// TCP store

#[test]
fn tcp_store_basic_ops() {
    let srv = server();
    let addr = srv.local_addr();
    check_basic_ops(&|| client(addr));
}

#[test]
fn tcp_store_get_waits_for_a_later_set() {
    let srv = server();
    let addr = srv.local_addr();
    check_waiting(&|| client(addr));
}

#[test]
fn tcp_store_waiting_get_does_not_block_other_threads_of_the_same_client() {
    let srv = server();
    let s = client(srv.local_addr());
    let s2 = s.clone();
    let waiter = thread::spawn(move || s2.get("x", soon()));
    thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    s.set("x", b"1", soon()).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(waiter.join().unwrap().unwrap(), b"1");
}

#[test]
fn tcp_store_timeouts_name_keys() {
    let srv = server();
    let addr = srv.local_addr();
    check_timeouts(&|| client(addr));
}

#[test]
fn tcp_store_add_is_atomic() {
    let srv = server();
    let addr = srv.local_addr();
    check_atomic_add(&|| client(addr), 8, 100);
}

#[test]
fn tcp_store_rejects_a_stranger_and_keeps_serving() {
    let srv = server();
    let addr = srv.local_addr();
    let s = client(addr);
    s.set("before", b"1", soon()).unwrap();

    let mut http = TcpStream::connect(addr).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    assert_closed(http.read(&mut buf).map(|n| &buf[..n]));

    // A client that says hello, then sends a frame longer than the limit, is cut off too.
    let mut rogue = TcpStream::connect(addr).unwrap();
    rogue
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut hello = b"TUTTISTO".to_vec();
    hello.extend_from_slice(&2u16.to_le_bytes());
    let magic_and_version = hello.clone();
    hello.push(0); // flags: no secret
    hello.extend_from_slice(&u32::MAX.to_le_bytes()); // not a rank
    hello.extend_from_slice(&0u64.to_le_bytes()); // job
    hello.extend_from_slice(&[9; 32]); // nonce
    rogue.write_all(&hello).unwrap();
    let mut theirs = [0u8; 51];
    rogue.read_exact(&mut theirs).unwrap();
    assert_eq!(&theirs[..10], &magic_and_version[..]);
    assert_eq!(theirs[10], 0, "an unauthenticated server says so");
    rogue.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let mut rest = Vec::new();
    let closed = rogue.read_to_end(&mut rest).map(|_| &[][..]);
    assert!(
        !rest.is_empty(),
        "expected an error answer before the close"
    );
    assert_closed(closed);

    assert_eq!(s.get("before", soon()).unwrap(), b"1");
    client(addr).set("after", b"2", soon()).unwrap();
    assert_eq!(s.get("after", soon()).unwrap(), b"2");
}

/// The server closed the connection (a reset counts: it closed with our bytes unread), rather
/// than answering or leaving it open until the read timed out.
fn assert_closed(read: std::io::Result<&[u8]>) {
    match read {
        Ok([]) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(bytes) => panic!("the server answered: {:?}", String::from_utf8_lossy(bytes)),
        Err(e) => panic!("the server kept the connection open: {e}"),
    }
}

#[test]
fn tcp_store_client_refuses_a_server_that_is_not_a_store() {
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = fake.local_addr().unwrap().port();
    let t = thread::spawn(move || {
        let (mut c, _) = fake.accept().unwrap();
        let mut hello = [0u8; 10];
        c.read_exact(&mut hello).unwrap();
        c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
    });
    let e = TcpStore::connect("127.0.0.1", port, Deadline::after(Duration::from_secs(5)))
        .err()
        .expect("connect to a non-store must fail");
    assert!(matches!(e, StoreError::Protocol { .. }), "{e}");
    assert!(e.to_string().contains(&port.to_string()), "{e}");
    t.join().unwrap();
}

#[test]
fn tcp_store_bind_on_a_busy_port_says_so() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let e = TcpStoreServer::bind(addr).err().expect("bind must fail");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("port {} is already in use", addr.port())),
        "{msg}"
    );
    assert!(msg.contains("MASTER_PORT"), "{msg}");
}

#[test]
fn tcp_store_connect_to_nobody_is_unreachable_by_the_deadline() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t0 = Instant::now();
    let e = TcpStore::connect(
        "127.0.0.1",
        port,
        Deadline::after(Duration::from_millis(300)),
    )
    .err()
    .expect("nobody listens");
    let took = t0.elapsed();
    assert!(
        (Duration::from_millis(290)..Duration::from_secs(2)).contains(&took),
        "gave up after {took:?}"
    );
    match &e {
        StoreError::Unreachable { addr, why } => {
            assert_eq!(addr, &format!("127.0.0.1:{port}"));
            assert!(why.to_lowercase().contains("refused"), "{why}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn tcp_store_client_started_before_the_server_connects() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let early = thread::spawn(move || {
        TcpStore::connect("127.0.0.1", port, Deadline::after(Duration::from_secs(10)))
            .map(|s| s.get("hi", soon()))
    });
    thread::sleep(Duration::from_millis(200));
    let srv = TcpStoreServer::bind(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    client(srv.local_addr())
        .set("hi", b"there", soon())
        .unwrap();
    assert_eq!(early.join().unwrap().unwrap().unwrap(), b"there");
}

#[test]
fn tcp_store_server_drop_wakes_waiters_and_returns_promptly() {
    let srv = server();
    let s = client(srv.local_addr());
    let waiter = thread::spawn(move || s.get("never", soon()));
    thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    drop(srv);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        t0.elapsed()
    );
    let e = waiter.join().unwrap().unwrap_err();
    assert!(
        matches!(e, StoreError::Closed { .. } | StoreError::Io { .. }),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// File store

fn file_store(dir: &TempDir) -> Arc<dyn Store> {
    Arc::new(FileStore::new(dir.0.clone()).unwrap())
}

#[test]
fn file_store_basic_ops() {
    let dir = TempDir::new("basic");
    check_basic_ops(&|| file_store(&dir));
}

#[test]
fn file_store_get_waits_for_a_later_set() {
    let dir = TempDir::new("wait");
    check_waiting(&|| file_store(&dir));
}

#[test]
fn file_store_timeouts_name_keys() {
    let dir = TempDir::new("timeout");
    check_timeouts(&|| file_store(&dir));
}

#[test]
fn file_store_add_is_atomic() {
    let dir = TempDir::new("add");
    check_atomic_add(&|| file_store(&dir), 8, 100);
}

#[test]
fn file_store_refuses_keys_too_long_for_a_file_name() {
    let dir = TempDir::new("long");
    let s = file_store(&dir);
    let e = s.set(&"x/".repeat(200), b"", soon()).unwrap_err();
    assert!(e.to_string().contains("too long"), "{e}");
    s.set(&"a".repeat(200), b"ok", soon()).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

// ---------------------------------------------------------------------------------------------
// Routing

#[test]
fn route_towards_loopback_is_loopback() {
    let ip = local_ip_towards("127.0.0.1", 1).unwrap();
    assert!(ip.is_loopback(), "{ip}");
}
