//! [`TcpStoreServer`]: serves a [`MemStore`] over TCP to the ranks of a job (usually from rank 0,
//! or from the tutti launcher's agent).
//!
//! Threads: one accept thread, and one thread per client connection (a job has one or a few
//! connections per rank). A request that waits (`get`, `wait`) blocks its connection's thread on
//! the store's condition variable, bounded by the wait time the client sent.
//!
//! Shutdown (on drop): a stop flag, then the store is closed (waiters answer `CLOSED`), the accept
//! thread (which polls a non-blocking listener) is joined, every client socket is shut down (which
//! wakes its thread out of `read`/`write`), and every connection thread is joined. Nothing is left
//! blocked: drop returns promptly (at worst after [`TICK`], the backstop poll of the stop flag).
//!
//! Strangers: a connection whose first bytes are not the store hello (a port scanner, an HTTP
//! client, another job on the same port) is logged at `warn` and closed; other clients are not
//! affected.

use super::mem_store::MemStore;
use super::store::{Store, StoreError};
use super::tcp_store::{is_transient, read_frame, read_full, write_full, ExchangeError};
use super::wire::{check_hello, hello, Request, Response, HELLO_LEN};
use crate::deadline::Deadline;
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often blocked server threads look at the stop flag. A backstop only: stopping shuts the
/// sockets down, which wakes their threads at once.
pub const TICK: Duration = Duration::from_secs(1);
/// How long a new connection has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Accept polling backs off from the first to the last value while no client connects.
const ACCEPT_POLL_MIN: Duration = Duration::from_millis(1);
const ACCEPT_POLL_MAX: Duration = Duration::from_millis(50);

/// A running store server; stops when dropped.
pub struct TcpStoreServer {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// State shared by the accept thread and the connection threads.
struct Shared {
    store: MemStore,
    addr: SocketAddr,
    stop: AtomicBool,
    conns: Mutex<Conns>,
}

/// Live connections: a clone of each socket (to shut it down on stop) and each thread.
#[derive(Default)]
struct Conns {
    next_id: u64,
    sockets: HashMap<u64, TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

impl TcpStoreServer {
    /// Listens on `addr` (port 0: any free port, see [`TcpStoreServer::local_addr`]) and serves in
    /// background threads. A busy port fails with [`StoreError::Bind`] saying so.
    pub fn bind(addr: SocketAddr) -> Result<TcpStoreServer, StoreError> {
        let listener = TcpListener::bind(addr).map_err(|e| bind_error(addr, &e))?;
        let local = listener.local_addr().map_err(|e| bind_error(addr, &e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| bind_error(addr, &e))?;
        let shared = Arc::new(Shared {
            store: MemStore::new(local.to_string()),
            addr: local,
            stop: AtomicBool::new(false),
            conns: Mutex::new(Conns::default()),
        });
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tutti-store-accept".into())
                .spawn(move || accept_loop(&shared, &listener))
                .map_err(|e| bind_error(addr, &e))?
        };
        tracing::debug!(addr = %local, "store server listening");
        Ok(TcpStoreServer {
            shared,
            accept: Some(accept),
        })
    }

    /// The address the server listens on (with the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The server's own store, for the process hosting it (no socket round trip).
    pub fn store(&self) -> &MemStore {
        &self.shared.store
    }
}

impl Drop for TcpStoreServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.store.close();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // The accept thread is gone: no connection can be added after this.
        let conns = std::mem::take(&mut *self.shared.lock_conns());
        for socket in conns.sockets.values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        for t in conns.threads {
            let _ = t.join();
        }
        tracing::debug!(addr = %self.shared.addr, "store server stopped");
    }
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `conn` and starts its thread.
    fn spawn_conn(self: &Arc<Shared>, conn: TcpStream, peer: SocketAddr) {
        let registered = conn.try_clone();
        let mut conns = self.lock_conns();
        conns.threads.retain(|t| !t.is_finished());
        let id = conns.next_id;
        conns.next_id += 1;
        match registered {
            Ok(clone) => {
                conns.sockets.insert(id, clone);
            }
            Err(e) => {
                tracing::warn!(addr = %self.addr, %peer, "store: cannot register a connection: {e}");
                return;
            }
        }
        let shared = self.clone();
        let spawned = std::thread::Builder::new()
            .name("tutti-store-conn".into())
            .spawn(move || {
                serve_conn(&shared, conn, peer);
                shared.lock_conns().sockets.remove(&id);
            });
        match spawned {
            Ok(t) => conns.threads.push(t),
            Err(e) => {
                conns.sockets.remove(&id);
                tracing::warn!(addr = %self.addr, %peer, "store: cannot start a connection thread: {e}");
            }
        }
    }

    /// Runs one request against the store.
    fn handle(&self, req: Request) -> Response {
        let result = match req {
            Request::Set { key, value } => self
                .store
                .set(&key, &value, Deadline::after(Duration::ZERO))
                .map(|()| Response::Done),
            Request::Get { key, wait } => self
                .store
                .get_shared(&key, Deadline::after(wait))
                .map(|v| Response::Value(v.to_vec())),
            Request::Add { key, delta } => self
                .store
                .add(&key, delta, Deadline::after(Duration::ZERO))
                .map(Response::Counter),
            Request::Wait { keys, wait } => self
                .store
                .wait(&borrowed(&keys), Deadline::after(wait))
                .map(|()| Response::Done),
            Request::Check { keys } => self
                .store
                .check(&borrowed(&keys), Deadline::after(Duration::ZERO))
                .map(Response::Flag),
            Request::Delete { key } => self
                .store
                .delete(&key, Deadline::after(Duration::ZERO))
                .map(Response::Flag),
        };
        result.unwrap_or_else(|e| match e {
            StoreError::Timeout { keys, .. } => Response::Timeout(keys),
            StoreError::Closed { .. } => Response::Closed,
            StoreError::Refused { why, .. } => Response::Error(why),
            StoreError::Protocol { what, .. } => Response::Error(what),
            other => Response::Error(other.to_string()),
        })
    }
}

fn borrowed(keys: &[String]) -> Vec<&str> {
    keys.iter().map(String::as_str).collect()
}

fn bind_error(addr: SocketAddr, e: &io::Error) -> StoreError {
    let why = match e.kind() {
        io::ErrorKind::AddrInUse => format!(
            "port {} is already in use (another job on this MASTER_PORT?)",
            addr.port()
        ),
        io::ErrorKind::AddrNotAvailable => format!("{} is not an address of this host", addr.ip()),
        io::ErrorKind::PermissionDenied => {
            format!(
                "permission denied for port {} (ports below 1024 need privileges)",
                addr.port()
            )
        }
        _ => e.to_string(),
    };
    StoreError::Bind {
        addr: addr.to_string(),
        why,
    }
}

/// Accepts connections until the stop flag is set, polling the non-blocking listener with a
/// backoff that resets after each accepted connection.
fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    let mut poll = ACCEPT_POLL_MIN;
    while !shared.stopping() {
        match listener.accept() {
            Ok((conn, peer)) => {
                poll = ACCEPT_POLL_MIN;
                if let Err(e) = prepare(&conn) {
                    tracing::warn!(addr = %shared.addr, %peer, "store: cannot set up a connection: {e}");
                    continue;
                }
                shared.spawn_conn(conn, peer);
            }
            Err(e) if is_transient(&e) => {
                std::thread::sleep(poll);
                poll = (poll * 2).min(ACCEPT_POLL_MAX);
            }
            Err(e) => {
                // E.g. out of file descriptors: keep serving the connections we have.
                tracing::warn!(addr = %shared.addr, "store: accept failed: {e}");
                std::thread::sleep(ACCEPT_POLL_MAX);
            }
        }
    }
}

fn prepare(conn: &TcpStream) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(TICK))?;
    conn.set_write_timeout(Some(TICK))
}

/// Serves one client: the hello, then requests until the client leaves or the server stops.
fn serve_conn(shared: &Shared, mut conn: TcpStream, peer: SocketAddr) {
    if let Err(why) = greet(shared, &mut conn) {
        tracing::warn!(addr = %shared.addr, %peer, "store: rejected a connection: {why}");
        return;
    }
    let mut tick = |_: &TcpStream| stop_check(shared);
    loop {
        let body = match read_frame(&mut conn, &mut tick) {
            Ok(body) => body,
            Err(ExchangeError::Io(e)) => {
                if e.kind() != io::ErrorKind::UnexpectedEof && !shared.stopping() {
                    tracing::debug!(addr = %shared.addr, %peer, "store: connection lost: {e}");
                }
                return;
            }
            Err(ExchangeError::Malformed(m)) => {
                // The stream cannot be resynchronised: answer, then close.
                tracing::warn!(addr = %shared.addr, %peer, "store: closing a connection: {m}");
                let _ = write_full(&mut conn, &Response::Error(m.0).encode(), &mut tick);
                return;
            }
        };
        let resp = match Request::decode(&body) {
            Ok(req) => shared.handle(req),
            Err(m) => {
                tracing::warn!(addr = %shared.addr, %peer, "store: malformed request: {m}");
                Response::Error(m.0)
            }
        };
        if let Err(e) = write_full(&mut conn, &resp.encode(), &mut tick) {
            tracing::debug!(addr = %shared.addr, %peer, "store: cannot answer: {e}");
            return;
        }
    }
}

/// Reads the client's hello and answers with ours. A wrong magic is closed without an answer; a
/// wrong version gets our hello first, so the client can report both versions.
fn greet(shared: &Shared, conn: &mut TcpStream) -> Result<(), String> {
    let deadline = Deadline::after(HELLO_TIMEOUT);
    let mut tick = |_: &TcpStream| {
        stop_check(shared)?;
        if deadline.expired() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no hello within {HELLO_TIMEOUT:?}"),
            ));
        }
        Ok(())
    };
    let mut theirs = [0; HELLO_LEN];
    read_full(conn, &mut theirs, &mut tick).map_err(|e| e.to_string())?;
    if theirs[..8] != hello()[..8] {
        return Err(check_hello(&theirs).err().map(|m| m.0).unwrap_or_default());
    }
    write_full(conn, &hello(), &mut tick).map_err(|e| e.to_string())?;
    check_hello(&theirs).map_err(|m| m.0)
}

fn stop_check(shared: &Shared) -> io::Result<()> {
    if shared.stopping() {
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the store server is stopping",
        ))
    } else {
        Ok(())
    }
}
