//! [`TcpStore`]: the client of a [`TcpStoreServer`](super::TcpStoreServer), speaking the protocol of
//! [`wire`](super::wire).
//!
//! Connections: requests run one at a time per TCP connection, so a thread blocked in `get` would
//! stall every other thread sharing that connection. The client therefore keeps a small pool of
//! idle connections: a call takes one (or opens one), and puts it back after a complete exchange.
//! A connection that failed or timed out mid-exchange is dropped, never reused, so a late reply
//! can never be read as the answer to another request.
//!
//! Authentication: a client made with [`TcpStore::connect_as`] says which rank it is and, when it
//! has the job secret, proves it (see [`wire`](super::wire) and [`crate::auth`]); it checks the
//! server's proof in turn, so a stranger on the store's port cannot pose as the store. A client
//! without a secret is refused by a store that has one, and a client with one refuses a store
//! without one: both are errors that say which side lacks `TUTTI_SECRET`.
//!
//! Idle connections are reused only while younger than [`POOL_MAX_AGE`], well within the
//! server's idle timeout, so a pooled connection is never one the server has already closed.
//!
//! Deadlines: connecting retries with backoff until the deadline (rank 0 may not be listening
//! yet). A waiting request sends its remaining time to the server, which answers `TIMEOUT` when it
//! runs out; the client bounds every socket read and write by the same deadline, so a dead server
//! cannot hold it longer. Socket I/O always gets at least [`IO_FLOOR`], so a call whose deadline
//! has passed still makes one exchange (`check`, or `get` of a key that exists, then succeed).

use super::route::{host_port, resolve_all};
use super::store::{check_limits, owned, Store, StoreError};
use super::wire::{
    self, check_hello, frame_len, ClientHello, Request, Response, ServerHello, Verdict,
    CLIENT_LABEL, HELLO_LEN, MAX_REASON, SERVER_HELLO_LEN, SERVER_LABEL,
};
use crate::auth::{self, Secret, PROOF_LEN};
use crate::deadline::Deadline;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The least time socket I/O is given, even past the caller's deadline.
pub const IO_FLOOR: Duration = Duration::from_millis(10);
/// The first pause between connection attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Idle connections kept for reuse; more are closed.
const MAX_IDLE: usize = 4;
/// A pooled connection idle for longer is closed instead of reused: the server closes
/// connections idle for [`super::tcp_server::IDLE_TIMEOUT`] (3 times as long).
pub const POOL_MAX_AGE: Duration = Duration::from_secs(20);

/// Who a client is: its rank (if it is one), its job, and the job secret (if the job has one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientAuth {
    pub rank: Option<u32>,
    /// The job id (`TUTTI_JOB_ID`; 0: unknown), shown in the server's log.
    pub job: u64,
    pub secret: Option<Secret>,
}

/// A client of a TCP store. `Sync`: share it between threads freely.
pub struct TcpStore {
    host: String,
    port: u16,
    /// `host:port`, for messages.
    label: String,
    auth: ClientAuth,
    idle: Mutex<Vec<(TcpStream, Instant)>>,
}

impl TcpStore {
    /// Connects to the store at `host:port` as an anonymous client without a secret (a tool or
    /// a test; see [`TcpStore::connect_as`]).
    pub fn connect(host: &str, port: u16, deadline: Deadline) -> Result<TcpStore, StoreError> {
        TcpStore::connect_as(host, port, ClientAuth::default(), deadline)
    }

    /// Connects to the store at `host:port` as `auth` says, retrying until `deadline` (the
    /// server may start later than this rank). Fails with [`StoreError::Unreachable`] naming
    /// `host:port` and the last error, [`StoreError::Protocol`] if something that is not a tutti
    /// store answers, or [`StoreError::Unauthorized`] if either side lacks the job secret or
    /// proves another one.
    pub fn connect_as(
        host: &str,
        port: u16,
        auth: ClientAuth,
        deadline: Deadline,
    ) -> Result<TcpStore, StoreError> {
        let store = TcpStore {
            host: host.to_owned(),
            port,
            label: host_port(host, port),
            auth,
            idle: Mutex::new(Vec::new()),
        };
        let conn = store.open(deadline)?;
        store.put_back(conn);
        Ok(store)
    }

    /// [`TcpStore::connect`] to a socket address.
    pub fn connect_addr(addr: SocketAddr, deadline: Deadline) -> Result<TcpStore, StoreError> {
        TcpStore::connect(&addr.ip().to_string(), addr.port(), deadline)
    }

    /// Opens and greets a new connection, retrying with backoff until `deadline`.
    fn open(&self, deadline: Deadline) -> Result<TcpStream, StoreError> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let last = match self.try_open(deadline) {
                Ok(conn) => return Ok(conn),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why)) => why,
            };
            let left = deadline.remaining();
            if left.is_zero() {
                return Err(StoreError::Unreachable {
                    addr: self.label.clone(),
                    why: format!(
                        "{last} ({attempts} attempts over {:.1?})",
                        deadline.elapsed()
                    ),
                });
            }
            std::thread::sleep(backoff.min(left));
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One attempt: every resolved address in turn, then the hello.
    fn try_open(&self, deadline: Deadline) -> Result<TcpStream, Attempt> {
        let addrs =
            resolve_all(&self.host, self.port).map_err(|e| Attempt::Retry(e.to_string()))?;
        let mut last = format!("host '{}' resolved to no address", self.host);
        for addr in addrs {
            let conn = TcpStream::connect_timeout(&addr, io_time(deadline))
                .map_err(|e| Attempt::Retry(format!("connect to {addr}: {e}")))
                .and_then(|conn| self.greet(conn, deadline));
            match conn {
                Err(Attempt::Retry(why)) => last = why,
                done => return done,
            }
        }
        Err(Attempt::Retry(last))
    }

    /// The handshake: hellos, then (when both sides have the secret) the proofs. A peer that
    /// answers with other bytes is not a tutti store, and an authentication failure cannot be
    /// cured by retrying: both are fatal.
    fn greet(&self, mut conn: TcpStream, deadline: Deadline) -> Result<TcpStream, Attempt> {
        let retry = |e: io::Error| Attempt::Retry(format!("handshake with {}: {e}", self.label));
        let protocol = |what: String| {
            Attempt::Fatal(StoreError::Protocol {
                store: self.label.clone(),
                what,
            })
        };
        let unauthorized = |why: String| {
            Attempt::Fatal(StoreError::Unauthorized {
                store: self.label.clone(),
                why,
            })
        };
        conn.set_nodelay(true).map_err(retry)?;
        let nonce = auth::nonce().map_err(|e| protocol(format!("no random nonce: {e}")))?;
        let mine = ClientHello {
            auth: self.auth.secret.is_some(),
            rank: self.auth.rank,
            job: self.auth.job,
            nonce,
        }
        .encode();
        write_full(&mut conn, &mine, &mut client_tick(deadline)).map_err(retry)?;
        let mut theirs = [0; SERVER_HELLO_LEN];
        read_full(
            &mut conn,
            &mut theirs[..HELLO_LEN],
            &mut client_tick(deadline),
        )
        .map_err(retry)?;
        let mut prefix = [0; HELLO_LEN];
        prefix.copy_from_slice(&theirs[..HELLO_LEN]);
        check_hello(&prefix).map_err(|m| protocol(m.0))?;
        read_full(
            &mut conn,
            &mut theirs[HELLO_LEN..],
            &mut client_tick(deadline),
        )
        .map_err(retry)?;
        let server = ServerHello::decode(&theirs).map_err(|m| protocol(m.0))?;
        let secret = match (&self.auth.secret, server.auth) {
            (None, false) => return Ok(conn),
            (None, true) => {
                return Err(unauthorized(
                    "the store requires the job secret and this process has none: set \
                     TUTTI_SECRET or TUTTI_SECRET_FILE as for the process that hosts the store \
                     (tutti launch sets it for its ranks)"
                        .into(),
                ))
            }
            (Some(_), false) => {
                return Err(unauthorized(
                    "the store is not authenticated, but this process has a job secret \
                     (TUTTI_SECRET or TUTTI_SECRET_FILE): give the process that hosts the store \
                     the same secret"
                        .into(),
                ))
            }
            (Some(secret), true) => secret,
        };
        let proof = secret.prove(CLIENT_LABEL, &[&mine, &theirs]);
        write_full(&mut conn, &proof, &mut client_tick(deadline)).map_err(retry)?;
        let mut verdict = vec![0u8; 1];
        read_full(&mut conn, &mut verdict, &mut client_tick(deadline)).map_err(retry)?;
        let rest = match verdict.first() {
            Some(0) => PROOF_LEN,
            Some(1) => {
                let mut len = [0u8; 2];
                read_full(&mut conn, &mut len, &mut client_tick(deadline)).map_err(retry)?;
                verdict.extend_from_slice(&len);
                usize::from(u16::from_le_bytes(len)).min(MAX_REASON)
            }
            _ => 0,
        };
        let start = verdict.len();
        verdict.resize(start + rest, 0);
        read_full(&mut conn, &mut verdict[start..], &mut client_tick(deadline)).map_err(retry)?;
        match Verdict::decode(&verdict).map_err(|m| protocol(m.0))? {
            Verdict::Refused(why) => Err(unauthorized(format!(
                "the store refused this process's proof of the job secret: {why} (is \
                 TUTTI_SECRET the same as the store's?)"
            ))),
            Verdict::Accepted(proof) if secret.verify(SERVER_LABEL, &[&mine, &theirs], &proof) => {
                Ok(conn)
            }
            Verdict::Accepted(_) => Err(unauthorized(
                "the store's proof of the job secret is wrong: whatever listens there does not \
                 know this job's secret"
                    .into(),
            )),
        }
    }

    fn put_back(&self, conn: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    /// Sends `req` and returns the server's answer; statuses that are errors for every request
    /// (timeout, refusal, shutdown) are turned into errors here.
    fn call(&self, req: &Request, deadline: Deadline) -> Result<Response, StoreError> {
        let pooled = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.retain(|(_, since)| since.elapsed() < POOL_MAX_AGE);
            idle.pop().map(|(conn, _)| conn)
        };
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.open(deadline)?,
        };
        let resp = exchange(&mut conn, req, deadline).map_err(|e| self.failed(req, e, deadline))?;
        self.put_back(conn);
        match resp {
            Response::Timeout(missing) => Err(StoreError::Timeout {
                store: self.label.clone(),
                op: req.op(),
                keys: missing,
                waited: deadline.elapsed(),
            }),
            Response::Error(why) => Err(StoreError::Refused {
                store: self.label.clone(),
                op: req.op(),
                keys: req.keys(),
                why,
            }),
            Response::Closed => Err(StoreError::Closed {
                store: self.label.clone(),
                op: req.op(),
                keys: req.keys(),
            }),
            ok => Ok(ok),
        }
    }

    fn failed(&self, req: &Request, e: ExchangeError, deadline: Deadline) -> StoreError {
        match e {
            ExchangeError::Io(e) if is_transient(&e) => StoreError::Timeout {
                store: self.label.clone(),
                op: req.op(),
                keys: req.keys(),
                waited: deadline.elapsed(),
            },
            ExchangeError::Io(source) => StoreError::Io {
                store: self.label.clone(),
                op: req.op(),
                keys: req.keys(),
                source,
            },
            ExchangeError::Malformed(m) => StoreError::Protocol {
                store: self.label.clone(),
                what: format!("bad reply to {}: {m}", req.op()),
            },
        }
    }

    fn unexpected(&self, req: &Request, resp: Response) -> StoreError {
        StoreError::Protocol {
            store: self.label.clone(),
            what: format!("answered {resp:?} to {}", req.op()),
        }
    }
}

impl Store for TcpStore {
    fn set(&self, key: &str, value: &[u8], deadline: Deadline) -> Result<(), StoreError> {
        check_limits(&self.label, &[key], Some(value))?;
        let req = Request::Set {
            key: key.to_owned(),
            value: value.to_vec(),
        };
        match self.call(&req, deadline)? {
            Response::Done => Ok(()),
            other => Err(self.unexpected(&req, other)),
        }
    }

    fn get(&self, key: &str, deadline: Deadline) -> Result<Vec<u8>, StoreError> {
        check_limits(&self.label, &[key], None)?;
        let req = Request::Get {
            key: key.to_owned(),
            wait: deadline.remaining(),
        };
        match self.call(&req, deadline)? {
            Response::Value(v) => Ok(v),
            other => Err(self.unexpected(&req, other)),
        }
    }

    fn add(&self, key: &str, delta: i64, deadline: Deadline) -> Result<i64, StoreError> {
        check_limits(&self.label, &[key], None)?;
        let req = Request::Add {
            key: key.to_owned(),
            delta,
        };
        match self.call(&req, deadline)? {
            Response::Counter(n) => Ok(n),
            other => Err(self.unexpected(&req, other)),
        }
    }

    fn wait(&self, keys: &[&str], deadline: Deadline) -> Result<(), StoreError> {
        check_limits(&self.label, keys, None)?;
        let req = Request::Wait {
            keys: owned(keys),
            wait: deadline.remaining(),
        };
        match self.call(&req, deadline)? {
            Response::Done => Ok(()),
            other => Err(self.unexpected(&req, other)),
        }
    }

    fn check(&self, keys: &[&str], deadline: Deadline) -> Result<bool, StoreError> {
        check_limits(&self.label, keys, None)?;
        let req = Request::Check { keys: owned(keys) };
        match self.call(&req, deadline)? {
            Response::Flag(all) => Ok(all),
            other => Err(self.unexpected(&req, other)),
        }
    }

    fn delete(&self, key: &str, deadline: Deadline) -> Result<bool, StoreError> {
        check_limits(&self.label, &[key], None)?;
        let req = Request::Delete {
            key: key.to_owned(),
        };
        match self.call(&req, deadline)? {
            Response::Flag(existed) => Ok(existed),
            other => Err(self.unexpected(&req, other)),
        }
    }

    fn location(&self) -> String {
        self.label.clone()
    }
}

/// The outcome of one connection attempt that did not succeed.
enum Attempt {
    /// Worth retrying until the deadline (refused, reset, unreachable, resolution failure).
    Retry(String),
    /// Retrying cannot help (the peer is not a tutti store, or speaks another version).
    Fatal(StoreError),
}

/// Why an exchange on an established connection failed.
pub(super) enum ExchangeError {
    Io(io::Error),
    Malformed(wire::Malformed),
}

/// One request and its response, every socket operation bounded by `deadline` (and [`IO_FLOOR`]).
fn exchange(
    conn: &mut TcpStream,
    req: &Request,
    deadline: Deadline,
) -> Result<Response, ExchangeError> {
    let mut tick = client_tick(deadline);
    write_full(conn, &req.encode(), &mut tick).map_err(ExchangeError::Io)?;
    let body = read_frame(conn, &mut tick)?;
    Response::decode(&body).map_err(ExchangeError::Malformed)
}

/// Reads one length-prefixed frame body.
pub(super) fn read_frame(
    conn: &mut TcpStream,
    tick: &mut Tick<'_>,
) -> Result<Vec<u8>, ExchangeError> {
    let mut prefix = [0; 4];
    read_full(conn, &mut prefix, tick).map_err(ExchangeError::Io)?;
    let n = frame_len(prefix).map_err(ExchangeError::Malformed)?;
    let mut body = vec![0; n];
    read_full(conn, &mut body, tick).map_err(ExchangeError::Io)?;
    Ok(body)
}

/// Called before every socket read or write: sets the socket's timeout for that call, or fails
/// to abandon the operation (deadline passed, server stopping).
pub(super) type Tick<'a> = dyn FnMut(&TcpStream) -> io::Result<()> + 'a;

/// Time for one socket operation: what is left of `deadline`, at least [`IO_FLOOR`].
fn io_time(deadline: Deadline) -> Duration {
    deadline.remaining().max(IO_FLOOR)
}

/// A tick that bounds socket calls by `deadline`, granting [`IO_FLOOR`] once it has passed.
fn client_tick(deadline: Deadline) -> impl FnMut(&TcpStream) -> io::Result<()> {
    let io_deadline = if deadline.remaining() < IO_FLOOR {
        Deadline::after(IO_FLOOR)
    } else {
        deadline
    };
    move |conn: &TcpStream| {
        let left = io_deadline.remaining();
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        conn.set_read_timeout(Some(left))?;
        conn.set_write_timeout(Some(left))
    }
}

/// True for the errors a socket timeout produces (and interrupted calls): try again after a tick.
pub(super) fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Reads exactly `buf.len()` bytes, calling `tick` before each read.
pub(super) fn read_full(
    conn: &mut TcpStream,
    buf: &mut [u8],
    tick: &mut Tick<'_>,
) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        tick(conn)?;
        match conn.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection",
                ))
            }
            Ok(n) => done += n,
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `buf`, calling `tick` before each write.
pub(super) fn write_full(conn: &mut TcpStream, buf: &[u8], tick: &mut Tick<'_>) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        tick(conn)?;
        match conn.write(&buf[done..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the peer stopped accepting data",
                ))
            }
            Ok(n) => done += n,
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
