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
//! # Strangers and limits ([`ServerOptions`])
//! - Every connection starts with the handshake of [`wire`](super::wire): with a job secret, a
//!   client that cannot prove it (a stranger, a rank of another job, a client without
//!   `TUTTI_SECRET`) is refused and logged at `warn`, and never reaches the store. Garbage, a
//!   truncated or oversized hello, or nothing at all within the handshake deadline (5 s) is
//!   closed and logged the same way; other clients are not affected.
//! - At most `max_handshakes` connections (64) may be in their handshake at once and at most
//!   `max_connections` (1024) be open: beyond either, a new connection is closed at once, with
//!   a log line (at most one a second, with the count).
//! - A request frame is at most `max_value_bytes` (1 MiB) plus a key and headers; its bytes must
//!   all arrive within `request_timeout` (30 s) of its first; a connection idle between requests
//!   for [`IDLE_TIMEOUT`] (60 s) is closed (clients reuse connections for a third of that).
//!
//! # Keys of a rank are set once, by that rank
//! The facts a rank publishes, `tutti/[<scope>/]addr/<r>` and `tutti/[<scope>/]host/<r>` (and
//! `tutti/session`, rank 0's), may be set only by a connection whose hello said it is rank `r`
//! (with a secret, an authenticated one), and only once: a second `set` of the same value is
//! accepted (a retry), of another value refused, and `add` and `delete` on them are refused. So
//! no other client can redirect a rank's peers to another address. Without a secret a client's
//! rank is its own word: the job is unauthenticated, and this only guards against mistakes.

use super::mem_store::MemStore;
use super::store::{Store, StoreError, MAX_KEY_LEN};
use super::tcp_store::{is_transient, read_full, write_full};
use super::wire::{
    check_hello, frame_len_within, ClientHello, Request, Response, ServerHello, Verdict,
    CLIENT_HELLO_LEN, CLIENT_LABEL, HELLO_LEN, MAGIC, SERVER_LABEL,
};
use crate::auth::{self, Secret, PROOF_LEN};
use crate::deadline::Deadline;
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often blocked server threads look at the stop flag. A backstop only: stopping shuts the
/// sockets down, which wakes their threads at once.
pub const TICK: Duration = Duration::from_secs(1);
/// How long a new connection has to finish its handshake (by default).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection idle between requests this long is closed (by default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Stack of a connection thread (it holds no large buffer on the stack).
const CONN_STACK: usize = 256 << 10;
/// Refused connections are logged at most this often (with their count).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// The limits and the secret of a store server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// The job secret clients must prove (`None`: unauthenticated).
    pub secret: Option<Secret>,
    /// This job's id (`TUTTI_JOB_ID`; 0: unknown), to name another job's clients in the log.
    pub job: u64,
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// Connections in their handshake at most; more are closed at once.
    pub max_handshakes: usize,
    /// Time a connection has for its handshake.
    pub handshake_timeout: Duration,
    /// Time a connection may stay idle between requests.
    pub idle_timeout: Duration,
    /// Time the rest of a request may take once its first byte arrived.
    pub request_timeout: Duration,
    /// The largest value a client may set.
    pub max_value_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            secret: None,
            job: 0,
            max_connections: 1024,
            max_handshakes: 64,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            request_timeout: Duration::from_secs(30),
            max_value_bytes: 1 << 20,
        }
    }
}

impl ServerOptions {
    /// The defaults for a job of `world` ranks with `secret`: room for a few connections per
    /// rank.
    pub fn for_job(world: usize, secret: Option<Secret>, job: u64) -> ServerOptions {
        let d = ServerOptions::default();
        ServerOptions {
            secret,
            job,
            max_connections: d.max_connections.max(world.saturating_mul(4)),
            ..d
        }
    }

    fn max_frame(&self) -> usize {
        self.max_value_bytes.saturating_add(MAX_KEY_LEN + 64)
    }
}
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
    opts: ServerOptions,
    /// Connections in their handshake now.
    handshaking: AtomicUsize,
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
    /// background threads, unauthenticated, with the default limits. A busy port fails with
    /// [`StoreError::Bind`] saying so.
    pub fn bind(addr: SocketAddr) -> Result<TcpStoreServer, StoreError> {
        TcpStoreServer::bind_with(addr, ServerOptions::default())
    }

    /// As [`TcpStoreServer::bind`], with the secret and limits of `opts`.
    pub fn bind_with(addr: SocketAddr, opts: ServerOptions) -> Result<TcpStoreServer, StoreError> {
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
            opts,
            handshaking: AtomicUsize::new(0),
        });
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tutti-store-accept".into())
                .spawn(move || accept_loop(&shared, &listener))
                .map_err(|e| bind_error(addr, &e))?
        };
        tracing::debug!(addr = %local, authenticated = shared.opts.secret.is_some(), "store server listening");
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
        self.handshaking.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name("tutti-store-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || {
                serve_conn(&shared, conn, peer);
                shared.lock_conns().sockets.remove(&id);
            });
        match spawned {
            Ok(t) => conns.threads.push(t),
            Err(e) => {
                self.handshaking.fetch_sub(1, Ordering::AcqRel);
                conns.sockets.remove(&id);
                tracing::warn!(addr = %self.addr, %peer, "store: cannot start a connection thread: {e}");
            }
        }
    }

    /// Why a new connection must be refused now, if it must.
    fn over_limit(&self) -> Option<String> {
        let handshaking = self.handshaking.load(Ordering::Acquire);
        if handshaking >= self.opts.max_handshakes {
            return Some(format!(
                "{handshaking} connections are in their handshake (the limit)"
            ));
        }
        let open = self.lock_conns().sockets.len();
        if open >= self.opts.max_connections {
            return Some(format!("{open} connections are open (the limit)"));
        }
        None
    }

    /// Runs one request of the client `rank` against the store.
    fn handle(&self, req: Request, rank: Option<u32>, peer: SocketAddr) -> Response {
        if let Some(why) = forbidden(&req, rank) {
            tracing::warn!(addr = %self.addr, %peer, "store: refused a {}: {why}", req.op());
            return Response::Error(why);
        }
        let result = match req {
            Request::Set { key, value } if owner(&key).is_some() => {
                self.store.set_once(&key, &value).map(|_| Response::Done)
            }
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

/// The rank that owns `key`, if it is a fact a rank publishes: `tutti/session` (rank 0), and
/// `tutti/.../addr/<r>` and `tutti/.../host/<r>`.
pub(crate) fn owner(key: &str) -> Option<u32> {
    if key == "tutti/session" {
        return Some(0);
    }
    let rest = key.strip_prefix("tutti/")?;
    let (head, rank) = rest.rsplit_once('/')?;
    let kind = head.rsplit('/').next()?;
    if kind != "addr" && kind != "host" {
        return None;
    }
    if rank.is_empty() || rank.len() > 10 || !rank.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rank.parse().ok()
}

/// Why a client of `rank` may not make `req`, if it may not (see the module doc).
fn forbidden(req: &Request, rank: Option<u32>) -> Option<String> {
    let (key, changes) = match req {
        Request::Set { key, .. } => (key, false),
        Request::Add { key, .. } | Request::Delete { key } => (key, true),
        _ => return None,
    };
    let r = owner(key)?;
    if changes {
        return Some(format!(
            "key '{key}' is published by rank {r}: it is set once and never changed"
        ));
    }
    if rank == Some(r) {
        return None;
    }
    let who = match rank {
        Some(me) => format!("rank {me}"),
        None => "not a rank".into(),
    };
    Some(format!(
        "key '{key}' may be set only by rank {r}, and this client is {who}"
    ))
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
    let mut refusals = Refusals::default();
    while !shared.stopping() {
        match listener.accept() {
            Ok((conn, peer)) => {
                poll = ACCEPT_POLL_MIN;
                if let Some(why) = shared.over_limit() {
                    drop(conn);
                    refusals.note(&shared.addr, peer, &why);
                    continue;
                }
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

/// Counts refused connections and logs them at most once per [`REFUSAL_LOG_EVERY`].
#[derive(Default)]
struct Refusals {
    unlogged: u64,
    last_log: Option<Instant>,
}

impl Refusals {
    fn note(&mut self, addr: &SocketAddr, peer: SocketAddr, why: &str) {
        self.unlogged += 1;
        if self
            .last_log
            .is_some_and(|t| t.elapsed() < REFUSAL_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            %addr, %peer,
            "store: refused {} connection(s) over the limit since the last report: {why}",
            self.unlogged
        );
        self.unlogged = 0;
        self.last_log = Some(Instant::now());
    }
}

fn prepare(conn: &TcpStream) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(TICK))?;
    conn.set_write_timeout(Some(TICK))
}

/// Serves one client: the handshake, then requests until the client leaves, stays idle too
/// long, or the server stops.
fn serve_conn(shared: &Shared, mut conn: TcpStream, peer: SocketAddr) {
    let greeted = greet(shared, &mut conn);
    shared.handshaking.fetch_sub(1, Ordering::AcqRel);
    let rank = match greeted {
        Ok(rank) => rank,
        Err(why) => {
            tracing::warn!(addr = %shared.addr, %peer, "store: refused a connection: {why}");
            return;
        }
    };
    let opts = &shared.opts;
    loop {
        // Between requests: the first bytes of the next one, within the idle timeout.
        let mut prefix = [0; 4];
        let idle = Deadline::after(opts.idle_timeout);
        match read_full(
            &mut conn,
            &mut prefix,
            &mut bounded_tick(shared, idle, "idle"),
        ) {
            Ok(()) => {}
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof && !shared.stopping() {
                    tracing::debug!(addr = %shared.addr, %peer, "store: connection closed: {e}");
                }
                return;
            }
        }
        let mut tick = bounded_tick(shared, Deadline::after(opts.request_timeout), "request");
        let n = match frame_len_within(prefix, opts.max_frame()) {
            Ok(n) => n,
            Err(m) => {
                // The stream cannot be resynchronised: answer, then close.
                tracing::warn!(addr = %shared.addr, %peer, "store: closing a connection: {m}");
                let _ = write_full(&mut conn, &Response::Error(m.0).encode(), &mut tick);
                return;
            }
        };
        let mut body = vec![0; n];
        if let Err(e) = read_full(&mut conn, &mut body, &mut tick) {
            tracing::warn!(addr = %shared.addr, %peer, "store: closing a connection in the middle of a request: {e}");
            return;
        }
        let resp = match Request::decode(&body) {
            Ok(req) => shared.handle(req, rank, peer),
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

/// A tick that gives up at `deadline` (saying `what` timed out) or when the server stops, and
/// bounds each socket call by the time left (and [`TICK`], to see the stop flag).
fn bounded_tick<'a>(
    shared: &'a Shared,
    deadline: Deadline,
    what: &'static str,
) -> impl FnMut(&TcpStream) -> io::Result<()> + 'a {
    move |conn: &TcpStream| {
        stop_check(shared)?;
        let left = deadline.remaining();
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} timeout of {:.1?} passed", deadline.elapsed()),
            ));
        }
        conn.set_read_timeout(Some(left.min(TICK)))?;
        conn.set_write_timeout(Some(left.min(TICK)))
    }
}

/// The server's half of the handshake (see [`wire`](super::wire)): the client's rank, or why it
/// is refused. A wrong magic is closed without an answer; a wrong version gets our hello first,
/// so the client can report both versions.
fn greet(shared: &Shared, conn: &mut TcpStream) -> Result<Option<u32>, String> {
    let opts = &shared.opts;
    let deadline = Deadline::after(opts.handshake_timeout);
    let mut tick = bounded_tick(shared, deadline, "handshake");
    let mut theirs = [0; CLIENT_HELLO_LEN];
    read_full(conn, &mut theirs[..HELLO_LEN], &mut tick).map_err(|e| during_hello(&e))?;
    let mut prefix = [0; HELLO_LEN];
    prefix.copy_from_slice(&theirs[..HELLO_LEN]);
    if prefix[..MAGIC.len()] != MAGIC {
        return Err(check_hello(&prefix).err().map(|m| m.0).unwrap_or_default());
    }
    let nonce = auth::nonce().map_err(|e| format!("no random nonce: {e}"))?;
    let ours = ServerHello {
        auth: opts.secret.is_some(),
        job: opts.job,
        nonce,
    }
    .encode();
    if let Err(m) = check_hello(&prefix) {
        let _ = write_full(conn, &ours, &mut tick);
        return Err(m.0);
    }
    read_full(conn, &mut theirs[HELLO_LEN..], &mut tick).map_err(|e| during_hello(&e))?;
    let client = ClientHello::decode(&theirs).map_err(|m| m.0)?;
    let who = describe(&client, opts.job);
    write_full(conn, &ours, &mut tick).map_err(|e| e.to_string())?;
    let secret = match (&opts.secret, client.auth) {
        (None, false) => return Ok(client.rank),
        (Some(_), false) => {
            return Err(format!(
                "{who} has no job secret, and this store requires it (TUTTI_SECRET)"
            ))
        }
        (None, true) => return Err(format!("{who} has a job secret, and this store has none")),
        (Some(secret), true) => secret,
    };
    let mut proof = [0; PROOF_LEN];
    read_full(conn, &mut proof, &mut tick)
        .map_err(|e| format!("{who} sent no complete proof: {e}"))?;
    if !secret.verify(CLIENT_LABEL, &[&theirs, &ours], &proof) {
        let why = if client.job != 0 && opts.job != 0 && client.job != opts.job {
            "wrong proof of the job secret (a client of another job)"
        } else {
            "wrong proof of the job secret"
        };
        let _ = write_full(conn, &Verdict::Refused(why.into()).encode(), &mut tick);
        return Err(format!("{who}: {why}"));
    }
    let answer = Verdict::Accepted(secret.prove(SERVER_LABEL, &[&theirs, &ours]));
    write_full(conn, &answer.encode(), &mut tick).map_err(|e| e.to_string())?;
    Ok(client.rank)
}

/// A client, for the log: its rank and job.
fn describe(client: &ClientHello, our_job: u64) -> String {
    let rank = match client.rank {
        Some(r) => format!("a client saying it is rank {r}"),
        None => "a client that is not a rank".to_string(),
    };
    if client.job != 0 && client.job != our_job {
        format!("{rank} of job {:#x}", client.job)
    } else {
        rank
    }
}

fn during_hello(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "closed the connection before a whole hello".into(),
        io::ErrorKind::TimedOut => format!("no complete hello in time ({e})"),
        _ => format!("reading the hello: {e}"),
    }
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
