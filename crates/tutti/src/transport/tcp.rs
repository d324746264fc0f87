//! The TCP transport: a full mesh of TCP connections, one per pair of ranks.
//!
//! ## Forming the mesh
//! Every rank binds a listener on port 0 of one interface ([`TcpMeshListener::bind`]), publishes
//! the address the kernel picked (through the rendezvous store), learns everyone's, and calls
//! [`TcpMeshListener::connect_mesh`]: rank `i` connects to every rank `j < i` and accepts from
//! every `j > i`, so each pair gets exactly one connection and no rank waits in a cycle.
//! Connecting retries with a short backoff (a peer may not listen yet); accepting polls a
//! non-blocking listener; both stop at the deadline.
//!
//! Each new connection starts with a hello from the connector (integers little-endian):
//! ```text
//! offset size field
//!      0   12 magic      b"TUTTI-HELLO\0"
//!     12    2 version    1
//!     14    8 session    the job's session id (another job's rank is refused)
//!     22    4 size       world size
//!     26    4 from       the connector's rank
//!     30    4 to         the rank it means to reach
//! ```
//! The acceptor answers one byte `0` (accepted), or a status (1 bad magic, 2 version, 3 session,
//! 4 world size, 5 rank, 6 duplicate) followed by a `u16` length and a short UTF-8 reason, and
//! then closes. A rejected connection (a port scanner, a stray HTTP client, a rank of another
//! job) is logged with `tracing::warn`, naming its address and why, and the acceptor keeps
//! waiting for the real peers. A connection that sends nothing is dropped after 10 s without
//! holding up the others.
//!
//! ## Moving messages
//! Frames are those of [`super::frame`]. On each link:
//! - a reader thread (`tutti-rx-<peer>`) reads frames as they arrive and files them in this
//!   rank's [`Mailbox`], so a sender never waits for its receiver to post a receive (full duplex,
//!   whatever the sizes). A goodbye frame (its payload is the reason, UTF-8) closes the peer's
//!   slot as a clean shutdown; an end of stream or an error without goodbye closes it as lost.
//! - a blocking [`send`](Transport::send) writes on the caller's thread, at most 4 MiB per system
//!   call, with `SO_SNDTIMEO` set to the time left, so a peer that stops reading cannot hold it
//!   past its deadline. A frame cut halfway leaves the stream unusable: the link is marked broken
//!   and shut down, and later sends fail at once with the original reason.
//! - [`send_owned`](Transport::send_owned) queues the frame for the link's writer thread
//!   (`tutti-tx-<peer>`, started on first use). While owned sends are queued, blocking sends queue
//!   behind them (copying the payload) and wait, so frames leave in call order.
//!
//! Invariant: at most one thread writes on a link at a time (`busy` in `LinkState`), and waiting
//! for that turn is bounded by the caller's deadline.
//!
//! Cost: a message of `n` bytes costs `alpha + n * beta` on its link; a blocking send copies
//! nothing, unless owned sends are queued ahead of it on the same link (one copy of `n`).
//!
//! ## Leaving
//! [`Transport::shutdown`] wakes local waiters, then on each healthy link sends a goodbye (all
//! goodbyes bounded by one second) and shuts the write half down. The peer's reader answers by
//! shutting its side down, so our reader sees the end of stream and exits. `Drop` shuts down and
//! waits at most 100 ms for the link threads, then leaves stragglers detached (they exit when
//! their peer closes).
//!
//! Sending to oneself goes straight to one's own mailbox, as with [`super::mem`], so the two
//! transports are interchangeable.

use super::frame::{FrameHeader, HEADER_LEN};
use super::mailbox::Mailbox;
use super::{Message, MsgKey, SendTicket, Transport, TransportError};
use crate::deadline::Deadline;
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// First bytes of a hello.
pub const HELLO_MAGIC: [u8; 12] = *b"TUTTI-HELLO\0";
/// Version of the handshake written by this build.
pub const HELLO_VERSION: u16 = 1;
/// Length of a hello.
pub const HELLO_LEN: usize = 34;

/// Largest slice of a payload handed to one system call; the deadline is checked between them.
const WRITE_PIECE: usize = 4 << 20;
/// How long an accepted connection may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for their hello at once; more are refused.
const MAX_PENDING_HELLOS: usize = 64;
/// Pause of the accept loop when nothing happened.
const ACCEPT_POLL: Duration = Duration::from_millis(1);
/// Bound on one connect attempt (a dropped SYN must not eat the whole deadline).
const CONNECT_ATTEMPT: Duration = Duration::from_secs(2);
/// Backoff between connect attempts: doubles from the first to the second.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(200));
/// Threads connecting to lower ranks at once.
const CONNECT_WORKERS: usize = 16;
/// Bound on all goodbyes of one shutdown.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `Drop` waits for the link threads.
const DROP_GRACE: Duration = Duration::from_millis(100);
/// Longest goodbye reason sent; a reader refuses a goodbye payload longer than this.
const MAX_GOODBYE_REASON: usize = 1024;
/// Longest rejection reason sent in a handshake reply.
const MAX_REJECT_REASON: usize = 255;
/// Stack of the link threads (they hold no large buffers on the stack).
const THREAD_STACK: usize = 256 << 10;
/// Connections the kernel queues before `accept`.
const LISTEN_BACKLOG: i32 = 1024;

/// `send` flags: no SIGPIPE when the peer is gone (std ignores SIGPIPE in Rust binaries, but a
/// host such as Python or a C++ program may not).
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = 0;

/// Socket settings of every link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    /// Disable Nagle's algorithm (default true): small messages leave at once.
    pub nodelay: bool,
    /// `SO_SNDBUF` and `SO_RCVBUF` (default 4 MiB). 0 keeps the kernel's defaults and its
    /// autotuning; on Linux a value above `net.core.{w,r}mem_max` is silently capped.
    pub socket_buffer_bytes: usize,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            nodelay: true,
            socket_buffer_bytes: 4 << 20,
        }
    }
}

/// One link that could not be set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerFailure {
    pub peer: usize,
    /// Where the peer said it listens.
    pub addr: SocketAddr,
    pub why: String,
}

impl fmt::Display for PeerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {} at {}: {}", self.peer, self.addr, self.why)
    }
}

/// Why [`TcpMeshListener::connect_mesh`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The arguments do not describe a mesh.
    #[error("rank {rank}: cannot form a mesh: {what}")]
    InvalidArgument { rank: usize, what: String },
    /// Some links were not set up by the deadline; each failure names the peer.
    #[error(
        "rank {rank}: mesh of {size} ranks not formed after {waited:.1?}: {}",
        FailureList(.failures)
    )]
    Incomplete {
        rank: usize,
        size: usize,
        waited: Duration,
        failures: Vec<PeerFailure>,
    },
    /// A local resource failed (listener, socket option, thread).
    #[error("rank {rank}: {what}: {source}")]
    Io {
        rank: usize,
        what: String,
        #[source]
        source: io::Error,
    },
}

impl MeshError {
    /// The ranks whose link failed, ascending.
    pub fn failed_peers(&self) -> Vec<usize> {
        match self {
            MeshError::Incomplete { failures, .. } => failures.iter().map(|f| f.peer).collect(),
            _ => Vec::new(),
        }
    }
}

struct FailureList<'a>(&'a [PeerFailure]);

impl fmt::Display for FailureList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

/// A bound listener, before the mesh is formed.
pub struct TcpMeshListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl TcpMeshListener {
    /// Listens on `ip`, on a port the kernel picks, with the default [`TcpOptions`] buffers.
    pub fn bind(ip: IpAddr) -> io::Result<TcpMeshListener> {
        TcpMeshListener::bind_with(ip, &TcpOptions::default())
    }

    /// As [`bind`](Self::bind), with the socket buffers of `opts`: accepted links inherit them
    /// from the listener, before the TCP window scale is agreed.
    pub fn bind_with(ip: IpAddr, opts: &TcpOptions) -> io::Result<TcpMeshListener> {
        let addr = SocketAddr::new(ip, 0);
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        apply_buffers(&sock, opts)?;
        sock.bind(&addr.into())?;
        sock.listen(LISTEN_BACKLOG)?;
        let listener: TcpListener = sock.into();
        let addr = listener.local_addr()?;
        Ok(TcpMeshListener { listener, addr })
    }

    /// The address to publish: `ip` and the port the kernel picked.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forms this rank's links of a world of `addrs.len()` ranks, where `addrs[r]` is where rank
    /// `r` listens, by `deadline`. Every rank must pass the same `addrs` and `session`.
    pub fn connect_mesh(
        self,
        rank: usize,
        addrs: &[SocketAddr],
        session: u64,
        opts: &TcpOptions,
        deadline: Deadline,
    ) -> Result<Arc<TcpTransport>, MeshError> {
        check_mesh_args(rank, addrs)?;
        let plan = MeshPlan {
            rank,
            addrs,
            session,
            opts,
            deadline,
            doomed: AtomicBool::new(false),
        };
        let (lower, upper) = form_links(&self.listener, &plan)?;
        let mut failures = Vec::new();
        let mut streams: Vec<Option<TcpStream>> = (0..addrs.len()).map(|_| None).collect();
        for (peer, r) in lower.into_iter().enumerate() {
            match r {
                Ok(s) => streams[peer] = Some(s),
                Err(why) => failures.push(plan.failure(peer, why)),
            }
        }
        for (peer, s) in upper.into_iter().enumerate().skip(rank + 1) {
            match s {
                Some(s) => streams[peer] = Some(s),
                None => failures.push(plan.failure(peer, plan.never_connected())),
            }
        }
        if !failures.is_empty() {
            return Err(MeshError::Incomplete {
                rank,
                size: addrs.len(),
                waited: deadline.elapsed(),
                failures,
            });
        }
        let t = TcpTransport::start(rank, addrs, streams, opts)?;
        tracing::debug!(rank, size = addrs.len(), "tcp mesh formed");
        Ok(t)
    }
}

/// One rank's end of a mesh of TCP links.
pub struct TcpTransport {
    rank: usize,
    mailbox: Arc<Mailbox>,
    /// `links[p]` is the link to rank `p`; `None` at our own rank.
    links: Vec<Option<Arc<Link>>>,
    /// Set once by `shutdown`: why this transport was closed.
    closed: OnceLock<String>,
    readers: Mutex<Vec<JoinHandle<()>>>,
}

impl TcpTransport {
    /// The transport over `streams` (handshaken, `None` at `rank`), with its reader threads.
    fn start(
        rank: usize,
        addrs: &[SocketAddr],
        streams: Vec<Option<TcpStream>>,
        opts: &TcpOptions,
    ) -> Result<Arc<TcpTransport>, MeshError> {
        let mut links = Vec::with_capacity(streams.len());
        let mut read_halves = Vec::new();
        for (peer, stream) in streams.into_iter().enumerate() {
            let Some(stream) = stream else {
                links.push(None);
                continue;
            };
            let io_err = |what: &str, source| MeshError::Io {
                rank,
                what: format!("{what} of the link to rank {peer} at {}", addrs[peer]),
                source,
            };
            configure_link(&stream, opts).map_err(|e| io_err("setting socket options", e))?;
            let read_half = stream
                .try_clone()
                .map_err(|e| io_err("duplicating the socket", e))?;
            let link = Arc::new(Link::new(rank, peer, addrs[peer], stream));
            read_halves.push((link.clone(), read_half));
            links.push(Some(link));
        }
        let t = Arc::new(TcpTransport {
            rank,
            mailbox: Arc::new(Mailbox::new(links.len())),
            links,
            closed: OnceLock::new(),
            readers: Mutex::new(Vec::new()),
        });
        for (link, read_half) in read_halves {
            let peer = link.peer;
            let mailbox = t.mailbox.clone();
            match spawn_named(format!("tutti-rx-{peer}"), move || {
                run_reader(link, read_half, mailbox)
            }) {
                Ok(h) => lock(&t.readers).push(h),
                Err(source) => {
                    t.shutdown("mesh setup failed: could not start a reader thread");
                    return Err(MeshError::Io {
                        rank,
                        what: format!("starting the reader thread of rank {peer}"),
                        source,
                    });
                }
            }
        }
        Ok(t)
    }

    /// The link to `peer` (`None` for ourselves), if this transport is open and `peer` exists.
    fn link(&self, peer: usize) -> Result<Option<&Arc<Link>>, TransportError> {
        self.check_open()?;
        match self.links.get(peer) {
            Some(l) => Ok(l.as_ref()),
            None => Err(TransportError::NoSuchPeer {
                peer,
                size: self.links.len(),
            }),
        }
    }

    fn check_open(&self) -> Result<(), TransportError> {
        match self.closed.get() {
            Some(reason) => Err(closed_error(reason)),
            None => Ok(()),
        }
    }

    /// A message to ourselves goes straight to our mailbox.
    fn deliver_to_self(&self, key: MsgKey, fingerprint: u64, payload: Vec<u8>) {
        let msg = Message {
            key,
            fingerprint,
            payload,
        };
        self.mailbox.deliver(self.rank, msg);
    }

    /// After a shutdown, any receive error is reported as the shutdown.
    fn closed_instead(&self, e: TransportError) -> TransportError {
        match self.closed.get() {
            Some(reason) => closed_error(reason),
            None => e,
        }
    }
}

impl Transport for TcpTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.links.len()
    }

    fn send(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u64,
        payload: &[u8],
        deadline: Deadline,
    ) -> Result<(), TransportError> {
        let Some(link) = self.link(peer)? else {
            self.deliver_to_self(key, fingerprint, payload.to_vec());
            return Ok(());
        };
        let header = FrameHeader::data(key, fingerprint, payload.len()).encode();
        link.send(&header, payload, deadline)
    }

    fn send_owned(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u64,
        payload: Vec<u8>,
    ) -> Result<SendTicket, TransportError> {
        let Some(link) = self.link(peer)? else {
            self.deliver_to_self(key, fingerprint, payload);
            return Ok(SendTicket::done(Ok(())));
        };
        let header = FrameHeader::data(key, fingerprint, payload.len()).encode();
        let rx = link.enqueue(header, payload, None)?;
        Ok(SendTicket::pending(peer, rx))
    }

    fn recv(
        &self,
        peer: usize,
        key: MsgKey,
        deadline: Deadline,
    ) -> Result<Message, TransportError> {
        self.link(peer)?;
        self.mailbox
            .take(peer, key, deadline)
            .map_err(|e| self.closed_instead(e))
    }

    fn try_recv(&self, peer: usize, key: MsgKey) -> Result<Option<Message>, TransportError> {
        self.link(peer)?;
        self.mailbox
            .try_take(peer, key)
            .map_err(|e| self.closed_instead(e))
    }

    fn shutdown(&self, reason: &str) {
        if self.closed.set(reason.to_string()).is_err() {
            return;
        }
        self.mailbox.close_all(&closed_error(reason).to_string());
        let deadline = Deadline::after(GOODBYE_TIMEOUT);
        for link in self.links.iter().flatten() {
            link.say_goodbye(reason, deadline);
        }
        tracing::debug!(rank = self.rank, reason, "tcp transport shut down");
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shutdown("transport dropped");
        let mut threads = std::mem::take(&mut *lock(&self.readers));
        for link in self.links.iter().flatten() {
            threads.extend(lock(&link.state).writer.take());
        }
        join_for(threads, Deadline::after(DROP_GRACE));
    }
}

/// The error of every call after `shutdown(reason)` ("transport shut down: {reason}").
fn closed_error(reason: &str) -> TransportError {
    TransportError::Closed {
        reason: reason.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Links: sending.

/// Why no more frames may be sent on a link.
#[derive(Clone, Debug)]
enum LinkDown {
    /// This transport shut down.
    Closed(String),
    /// The peer left, or the link broke.
    Lost(String),
}

impl LinkDown {
    fn error(&self, peer: usize) -> TransportError {
        match self {
            LinkDown::Closed(reason) => closed_error(reason),
            LinkDown::Lost(reason) => TransportError::PeerLost {
                peer,
                reason: reason.clone(),
            },
        }
    }
}

/// A frame queued for the writer thread.
struct Job {
    header: [u8; HEADER_LEN],
    payload: Vec<u8>,
    /// For a blocking send that queued behind owned ones; owned sends have none.
    deadline: Option<Deadline>,
    done: mpsc::Sender<Result<(), TransportError>>,
}

#[derive(Default)]
struct LinkState {
    /// A thread (a caller, the writer or `shutdown`) is writing a frame.
    busy: bool,
    /// Frames waiting for the writer thread, oldest first.
    jobs: VecDeque<Job>,
    /// Frames queued or being written by the writer thread; while non-zero, blocking sends queue.
    queued: usize,
    /// The writer thread, once started.
    writer: Option<JoinHandle<()>>,
    /// Set once: why this link sends no more.
    dead: Option<LinkDown>,
}

/// The sending side of the connection to one peer (its reader thread owns the receiving side).
struct Link {
    me: usize,
    peer: usize,
    addr: SocketAddr,
    sock: Socket,
    state: Mutex<LinkState>,
    /// Signalled whenever `busy`, `jobs` or `dead` change.
    changed: Condvar,
}

/// Why a frame could not be written.
struct WriteFailure {
    /// Some bytes of the frame left: the stream is out of step.
    started: bool,
    timed_out: bool,
    source: io::Error,
    waited: Duration,
}

impl Link {
    fn new(me: usize, peer: usize, addr: SocketAddr, stream: TcpStream) -> Link {
        Link {
            me,
            peer,
            addr,
            sock: Socket::from(stream),
            state: Mutex::new(LinkState::default()),
            changed: Condvar::new(),
        }
    }

    /// Writes one frame on the caller's thread, or behind queued owned sends, by `deadline`.
    fn send(
        self: &Arc<Self>,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
        deadline: Deadline,
    ) -> Result<(), TransportError> {
        let mut st = lock(&self.state);
        loop {
            if let Some(down) = &st.dead {
                return Err(down.error(self.peer));
            }
            if st.queued > 0 {
                drop(st);
                let rx = self.enqueue(*header, payload.to_vec(), Some(deadline))?;
                return SendTicket::pending(self.peer, rx).wait(deadline);
            }
            if !st.busy {
                st.busy = true;
                break;
            }
            st = self.wait_changed(st, deadline)?;
        }
        drop(st);
        let outcome = write_frame(&self.sock, header, payload, Some(deadline));
        self.finish(outcome, false)
    }

    /// Queues a frame for the writer thread (started on first use); the receiver gets its result.
    fn enqueue(
        self: &Arc<Self>,
        header: [u8; HEADER_LEN],
        payload: Vec<u8>,
        deadline: Option<Deadline>,
    ) -> Result<mpsc::Receiver<Result<(), TransportError>>, TransportError> {
        let mut st = lock(&self.state);
        if let Some(down) = &st.dead {
            return Err(down.error(self.peer));
        }
        if st.writer.is_none() {
            let link = self.clone();
            let h = spawn_named(format!("tutti-tx-{}", self.peer), move || run_writer(link))
                .map_err(|source| TransportError::Io {
                    peer: self.peer,
                    source,
                })?;
            st.writer = Some(h);
        }
        let (done, rx) = mpsc::channel();
        st.jobs.push_back(Job {
            header,
            payload,
            deadline,
            done,
        });
        st.queued += 1;
        drop(st);
        self.changed.notify_all();
        Ok(rx)
    }

    /// Waits for the state to change, until `deadline`.
    fn wait_changed<'a>(
        &self,
        st: MutexGuard<'a, LinkState>,
        deadline: Deadline,
    ) -> Result<MutexGuard<'a, LinkState>, TransportError> {
        let left = deadline.remaining();
        if left.is_zero() {
            return Err(TransportError::Timeout {
                peer: self.peer,
                what: "send to",
                waited: deadline.elapsed(),
            });
        }
        let (st, _) = self
            .changed
            .wait_timeout(st, left)
            .unwrap_or_else(|e| e.into_inner());
        Ok(st)
    }

    /// Ends a write: frees the link and turns a failure into the caller's error.
    fn finish(
        &self,
        outcome: Result<(), WriteFailure>,
        queued: bool,
    ) -> Result<(), TransportError> {
        let mut st = lock(&self.state);
        st.busy = false;
        if queued {
            st.queued -= 1;
        }
        let r = outcome.map_err(|f| self.write_failed(&mut st, f));
        drop(st);
        self.changed.notify_all();
        r
    }

    fn write_failed(&self, st: &mut LinkState, f: WriteFailure) -> TransportError {
        if let Some(down) = &st.dead {
            // The link went down under the write (peer left, shutdown): that is the news.
            return down.error(self.peer);
        }
        let what = if f.timed_out {
            format!("timed out after {:.1?}", f.waited)
        } else {
            format!("failed: {}", f.source)
        };
        if f.started || !f.timed_out {
            let reason = format!(
                "link to rank {} at {} broken: a send {what} with the frame partly written",
                self.peer, self.addr
            );
            tracing::warn!(rank = self.me, peer = self.peer, "{reason}");
            self.mark_dead(st, LinkDown::Lost(reason));
            let _ = self.sock.shutdown(Shutdown::Both);
        }
        if f.timed_out {
            TransportError::Timeout {
                peer: self.peer,
                what: "send to",
                waited: f.waited,
            }
        } else {
            TransportError::Io {
                peer: self.peer,
                source: f.source,
            }
        }
    }

    /// Marks the link down (the first reason sticks) and fails every queued frame.
    fn mark_dead(&self, st: &mut LinkState, down: LinkDown) {
        if st.dead.is_none() {
            st.dead = Some(down);
        }
        let down = st.dead.clone().unwrap_or(LinkDown::Lost(String::new()));
        for job in st.jobs.drain(..) {
            let _ = job.done.send(Err(down.error(self.peer)));
            st.queued -= 1;
        }
        self.changed.notify_all();
    }

    /// The writer thread's next frame; `None` once the link is down.
    fn next_job(&self) -> Option<Job> {
        let mut st = lock(&self.state);
        loop {
            if st.dead.is_some() {
                return None;
            }
            if !st.busy {
                if let Some(job) = st.jobs.pop_front() {
                    st.busy = true;
                    return Some(job);
                }
            }
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Sends a goodbye if the link is healthy (bounded by `deadline`), then shuts it down.
    fn say_goodbye(&self, reason: &str, deadline: Deadline) {
        let mut st = lock(&self.state);
        let healthy = st.dead.is_none();
        self.mark_dead(&mut st, LinkDown::Closed(reason.to_string()));
        while healthy && st.busy && !deadline.expired() {
            st = self
                .changed
                .wait_timeout(st, deadline.remaining())
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if !healthy || st.busy {
            drop(st);
            let _ = self.sock.shutdown(Shutdown::Both);
            return;
        }
        st.busy = true;
        drop(st);
        let text = truncate_utf8(reason, MAX_GOODBYE_REASON).as_bytes();
        let mut header = FrameHeader::goodbye();
        header.payload_len = text.len() as u64;
        let sent = write_frame(&self.sock, &header.encode(), text, Some(deadline)).is_ok();
        let _ = self.sock.shutdown(if sent {
            Shutdown::Write
        } else {
            Shutdown::Both
        });
        lock(&self.state).busy = false;
        self.changed.notify_all();
    }

    /// Called by the reader when the peer can send no more; returns the reason that sticks.
    fn lose(&self, why: String) -> String {
        let mut st = lock(&self.state);
        self.mark_dead(&mut st, LinkDown::Lost(why.clone()));
        let reason = match &st.dead {
            Some(LinkDown::Lost(first)) => first.clone(),
            _ => why,
        };
        drop(st);
        let _ = self.sock.shutdown(Shutdown::Both);
        reason
    }
}

/// Writes header and payload, at most [`WRITE_PIECE`] payload bytes per system call; with a
/// deadline, `SO_SNDTIMEO` is the time left before each call.
fn write_frame(
    sock: &Socket,
    header: &[u8; HEADER_LEN],
    payload: &[u8],
    deadline: Option<Deadline>,
) -> Result<(), WriteFailure> {
    let started = Instant::now();
    let total = HEADER_LEN + payload.len();
    let mut done = 0;
    let fail = |done: usize, timed_out: bool, source: io::Error| WriteFailure {
        started: done > 0,
        timed_out,
        source,
        waited: deadline.map_or(started.elapsed(), |d| d.elapsed()),
    };
    if deadline.is_none() {
        sock.set_write_timeout(None)
            .map_err(|e| fail(0, false, e))?;
    }
    while done < total {
        if let Some(d) = deadline {
            let left = d.remaining();
            if left.is_zero() {
                return Err(fail(done, true, io::ErrorKind::TimedOut.into()));
            }
            sock.set_write_timeout(Some(left))
                .map_err(|e| fail(done, false, e))?;
        }
        let (head, body) = if done < HEADER_LEN {
            (&header[done..], &payload[..payload.len().min(WRITE_PIECE)])
        } else {
            let from = done - HEADER_LEN;
            (
                &[][..],
                &payload[from..payload.len().min(from + WRITE_PIECE)],
            )
        };
        match sock.send_vectored_with_flags(&[IoSlice::new(head), IoSlice::new(body)], SEND_FLAGS) {
            Ok(0) => return Err(fail(done, false, io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(fail(done, true, e))
            }
            Err(e) => return Err(fail(done, false, e)),
        }
    }
    Ok(())
}

/// The writer thread of one link: writes queued frames in order until the link goes down.
fn run_writer(link: Arc<Link>) {
    while let Some(job) = link.next_job() {
        let outcome = match job.deadline {
            Some(d) if d.expired() => Err(WriteFailure {
                started: false,
                timed_out: true,
                source: io::ErrorKind::TimedOut.into(),
                waited: d.elapsed(),
            }),
            d => write_frame(&link.sock, &job.header, &job.payload, d),
        };
        let r = link.finish(outcome, true);
        // The ticket may have been dropped: nobody wants the result then.
        let _ = job.done.send(r);
    }
}

// ---------------------------------------------------------------------------------------------
// Links: receiving.

/// What a reader got.
enum Incoming {
    Message(Message),
    Goodbye(String),
}

/// Why a reader stopped.
enum ReadFailure {
    Eof { mid_frame: bool },
    Io(io::Error),
    Protocol(String),
    Local(String),
}

/// The reader thread of one link: files every message in the mailbox until the stream ends, then
/// closes the peer's slot with why (messages read before stay available).
fn run_reader(link: Arc<Link>, mut stream: TcpStream, mailbox: Arc<Mailbox>) {
    let peer = link.peer;
    let lost = |why: &dyn fmt::Display| {
        format!("connection to rank {peer} lost: {why} (process killed or network cut?)")
    };
    let (why, clean) = loop {
        match read_frame(&mut stream) {
            Ok(Incoming::Message(m)) => mailbox.deliver(peer, m),
            Ok(Incoming::Goodbye(r)) if r.is_empty() => {
                break (format!("rank {peer} left (clean shutdown)"), true)
            }
            Ok(Incoming::Goodbye(r)) => {
                break (format!("rank {peer} left (clean shutdown: {r})"), true)
            }
            Err(ReadFailure::Eof { mid_frame: false }) => {
                break (lost(&"it closed the connection without a goodbye"), false)
            }
            Err(ReadFailure::Eof { mid_frame: true }) => {
                break (lost(&"the stream ended in the middle of a frame"), false)
            }
            Err(ReadFailure::Io(e)) => break (lost(&e), false),
            Err(ReadFailure::Protocol(e)) => {
                break (format!("protocol error from rank {peer}: {e}"), false)
            }
            Err(ReadFailure::Local(e)) => {
                break (format!("link to rank {peer} failed: {e}"), false)
            }
        }
    };
    let ours = matches!(lock(&link.state).dead, Some(LinkDown::Closed(_)));
    let reason = link.lose(why);
    if clean || ours {
        tracing::debug!(rank = link.me, peer, "{reason}");
    } else {
        tracing::warn!(rank = link.me, peer, addr = %link.addr, "{reason}");
    }
    mailbox.close(peer, &reason);
}

/// Reads one frame.
fn read_frame(r: &mut impl Read) -> Result<Incoming, ReadFailure> {
    let mut head = [0u8; HEADER_LEN];
    match read_full(r, &mut head).map_err(ReadFailure::Io)? {
        0 => return Err(ReadFailure::Eof { mid_frame: false }),
        HEADER_LEN => {}
        _ => return Err(ReadFailure::Eof { mid_frame: true }),
    }
    let (h, extension) =
        FrameHeader::decode(&head).map_err(|e| ReadFailure::Protocol(e.to_string()))?;
    read_payload(r, extension as u64, u64::MAX)?;
    match h.key() {
        Some(key) => Ok(Incoming::Message(Message {
            key,
            fingerprint: h.fingerprint,
            payload: read_payload(r, h.payload_len, u64::MAX)?,
        })),
        None => {
            let text = read_payload(r, h.payload_len, MAX_GOODBYE_REASON as u64)?;
            Ok(Incoming::Goodbye(
                String::from_utf8_lossy(&text).into_owned(),
            ))
        }
    }
}

/// Reads exactly `len` bytes into a new vector (no size cap beyond `max`: messages may be GiBs).
fn read_payload(r: &mut impl Read, len: u64, max: u64) -> Result<Vec<u8>, ReadFailure> {
    if len > max {
        return Err(ReadFailure::Protocol(format!(
            "a goodbye of {len} bytes (at most {max} expected)"
        )));
    }
    let n = usize::try_from(len)
        .map_err(|_| ReadFailure::Local(format!("a {len}-byte message does not fit in memory")))?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        ReadFailure::Local(format!(
            "cannot allocate {n} bytes for a message (out of memory?)"
        ))
    })?;
    let got = r.take(len).read_to_end(&mut v).map_err(ReadFailure::Io)?;
    if got < n {
        return Err(ReadFailure::Eof { mid_frame: true });
    }
    Ok(v)
}

/// Fills `buf` unless the stream ends first; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Forming the mesh.

/// What every part of `connect_mesh` needs to know.
struct MeshPlan<'a> {
    rank: usize,
    addrs: &'a [SocketAddr],
    session: u64,
    opts: &'a TcpOptions,
    deadline: Deadline,
    /// Set when the mesh can no longer form (a peer refused us): everyone stops early.
    doomed: AtomicBool,
}

impl MeshPlan<'_> {
    fn size(&self) -> usize {
        self.addrs.len()
    }

    fn failure(&self, peer: usize, why: String) -> PeerFailure {
        PeerFailure {
            peer,
            addr: self.addrs[peer],
            why,
        }
    }

    fn doomed(&self) -> bool {
        self.doomed.load(Ordering::Acquire)
    }

    fn never_connected(&self) -> String {
        if self.doomed() {
            "not connected: stopped waiting after another link failed".into()
        } else {
            format!("never connected within {:.1?}", self.deadline.elapsed())
        }
    }

    fn hello(&self, to: usize) -> Hello {
        Hello {
            version: HELLO_VERSION,
            session: self.session,
            size: self.size() as u32,
            from: self.rank as u32,
            to: to as u32,
        }
    }
}

fn check_mesh_args(rank: usize, addrs: &[SocketAddr]) -> Result<(), MeshError> {
    let what = if addrs.is_empty() {
        "no addresses: a world has at least one rank".to_string()
    } else if rank >= addrs.len() {
        format!("rank {rank} is out of range for a world of {}", addrs.len())
    } else if u32::try_from(addrs.len()).is_err() {
        format!("a world of {} ranks is too large", addrs.len())
    } else {
        return Ok(());
    };
    Err(MeshError::InvalidArgument { rank, what })
}

type Connected = Vec<Result<TcpStream, String>>;

/// Connects to lower ranks and accepts from higher ones at the same time.
fn form_links(
    listener: &TcpListener,
    plan: &MeshPlan,
) -> Result<(Connected, Vec<Option<TcpStream>>), MeshError> {
    listener
        .set_nonblocking(true)
        .map_err(|source| MeshError::Io {
            rank: plan.rank,
            what: "making the listener non-blocking".into(),
            source,
        })?;
    std::thread::scope(|s| {
        let accept = || accept_higher(listener, plan);
        let acceptor = std::thread::Builder::new()
            .name(format!("tutti-accept-{}", plan.rank))
            .spawn_scoped(s, accept);
        let lower = connect_lower(plan);
        let upper = match acceptor {
            Ok(h) => h
                .join()
                .unwrap_or_else(|_| (0..plan.size()).map(|_| None).collect()),
            // No thread: accept after connecting (still no cycle: rank 0 only accepts).
            Err(_) => accept(),
        };
        Ok((lower, upper))
    })
}

/// Connects to every rank below ours with a few worker threads; `result[p]` is rank `p`'s.
fn connect_lower(plan: &MeshPlan) -> Connected {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(
        (0..plan.rank)
            .map(|_| Err(String::new()))
            .collect::<Connected>(),
    );
    let work = || loop {
        let peer = next.fetch_add(1, Ordering::Relaxed);
        if peer >= plan.rank {
            break;
        }
        let r = connect_peer(plan, peer);
        lock(&results)[peer] = r;
    };
    std::thread::scope(|s| {
        let spawned = (0..plan.rank.min(CONNECT_WORKERS))
            .filter(|i| {
                std::thread::Builder::new()
                    .name(format!("tutti-connect-{i}"))
                    .stack_size(THREAD_STACK)
                    .spawn_scoped(s, work)
                    .is_ok()
            })
            .count();
        if spawned == 0 {
            work();
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Connects to `peer` and runs the handshake; the error says why, for the mesh error.
///
/// A connection closed before the answer (the acceptor was overloaded, or restarted) is retried;
/// a refusal is final and dooms the mesh (a duplicate retry is refused too, so it cannot double a
/// link).
fn connect_peer(plan: &MeshPlan, peer: usize) -> Result<TcpStream, String> {
    loop {
        let stream = dial(plan, plan.addrs[peer])?;
        match exchange_hello(&stream, &plan.hello(peer), plan.deadline) {
            Ok(()) => return Ok(stream),
            Err(HandshakeError::Refused(why)) => {
                plan.doomed.store(true, Ordering::Release);
                return Err(why);
            }
            Err(HandshakeError::Io(e)) if plan.deadline.expired() => {
                return Err(format!("connected, but the handshake did not finish: {e}"));
            }
            Err(HandshakeError::Io(e)) => {
                tracing::debug!(rank = plan.rank, peer, "handshake failed, retrying: {e}");
                std::thread::sleep(BACKOFF.1.min(plan.deadline.remaining()));
            }
        }
    }
}

/// Connects to `addr`, retrying with backoff until the deadline.
fn dial(plan: &MeshPlan, addr: SocketAddr) -> Result<TcpStream, String> {
    let mut backoff = BACKOFF.0;
    let mut attempts = 0u32;
    let mut last = String::from("no attempt made");
    loop {
        if plan.doomed() {
            return Err("gave up: another link of the mesh failed".into());
        }
        let left = plan.deadline.remaining();
        if left.is_zero() {
            return Err(format!("could not connect ({attempts} attempts): {last}"));
        }
        attempts += 1;
        match dial_once(addr, plan.opts, left.min(CONNECT_ATTEMPT)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(backoff.min(plan.deadline.remaining()));
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

fn dial_once(addr: SocketAddr, opts: &TcpOptions, timeout: Duration) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    apply_buffers(&sock, opts)?;
    sock.connect_timeout(&addr.into(), timeout)?;
    Ok(sock.into())
}

enum HandshakeError {
    /// The listener answered and refused: retrying cannot help.
    Refused(String),
    Io(io::Error),
}

/// The connector's half of the handshake: sends the hello, reads the verdict.
fn exchange_hello(s: &TcpStream, hello: &Hello, deadline: Deadline) -> Result<(), HandshakeError> {
    let io = HandshakeError::Io;
    s.set_write_timeout(Some(time_left(deadline).map_err(io)?))
        .map_err(io)?;
    (&*s).write_all(&hello.encode()).map_err(io)?;
    let mut status = [0u8; 1];
    read_exact_by(s, &mut status, deadline).map_err(io)?;
    if status[0] == 0 {
        s.set_write_timeout(None).map_err(io)?;
        return Ok(());
    }
    let Some(code) = Reject::from_code(status[0]) else {
        return Err(HandshakeError::Refused(format!(
            "the listener does not speak tutti (it answered byte {:#04x})",
            status[0]
        )));
    };
    let mut len = [0u8; 2];
    read_exact_by(s, &mut len, deadline).map_err(io)?;
    let mut text = vec![0u8; usize::from(u16::from_le_bytes(len)).min(MAX_REJECT_REASON)];
    read_exact_by(s, &mut text, deadline).map_err(io)?;
    Err(HandshakeError::Refused(format!(
        "refused our hello ({}): {}",
        code.name(),
        String::from_utf8_lossy(&text)
    )))
}

/// An accepted connection whose hello is still arriving.
struct PendingHello {
    stream: TcpStream,
    addr: SocketAddr,
    buf: [u8; HELLO_LEN],
    filled: usize,
    give_up: Instant,
}

/// What reading a pending hello gave.
enum HelloProgress {
    Waiting,
    Complete,
    Gone(String),
}

impl PendingHello {
    /// Reads what has arrived (the stream is non-blocking).
    fn poll(&mut self) -> HelloProgress {
        loop {
            match (&self.stream).read(&mut self.buf[self.filled..]) {
                Ok(0) => {
                    return HelloProgress::Gone(format!(
                        "closed the connection after {} bytes of hello",
                        self.filled
                    ))
                }
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return HelloProgress::Gone(format!("read failed: {e}")),
            }
            let m = self.filled.min(HELLO_MAGIC.len());
            if self.filled == HELLO_LEN || self.buf[..m] != HELLO_MAGIC[..m] {
                return HelloProgress::Complete;
            }
            return HelloProgress::Waiting;
        }
    }
}

/// Accepts from every rank above ours until all came, the deadline passes or the mesh is
/// doomed; `result[p]` is rank `p`'s stream.
fn accept_higher(listener: &TcpListener, plan: &MeshPlan) -> Vec<Option<TcpStream>> {
    let mut links: Vec<Option<TcpStream>> = (0..plan.size()).map(|_| None).collect();
    let mut missing = plan.size() - plan.rank - 1;
    let mut pending: Vec<PendingHello> = Vec::new();
    while missing > 0 && !plan.deadline.expired() && !plan.doomed() {
        let accepted = accept_one(listener, plan, &mut pending);
        let mut i = 0;
        let mut progressed = false;
        while i < pending.len() {
            match pending[i].poll() {
                HelloProgress::Waiting if Instant::now() < pending[i].give_up => i += 1,
                HelloProgress::Waiting => {
                    let p = pending.swap_remove(i);
                    let why = format!("sent no complete hello within {HELLO_TIMEOUT:.0?}");
                    reject(plan, p, Reject::BadMagic, why);
                }
                HelloProgress::Gone(why) => {
                    let p = pending.swap_remove(i);
                    tracing::warn!(rank = plan.rank, from = %p.addr, "dropped a connection: {why}");
                }
                HelloProgress::Complete => {
                    progressed = true;
                    let p = pending.swap_remove(i);
                    if let Some(peer) = admit(plan, p, &mut links) {
                        tracing::debug!(rank = plan.rank, peer, "accepted link");
                        missing -= 1;
                    }
                }
            }
        }
        if !accepted && !progressed {
            std::thread::sleep(ACCEPT_POLL);
        }
    }
    links
}

/// Accepts one connection if one is waiting; true if it did.
fn accept_one(listener: &TcpListener, plan: &MeshPlan, pending: &mut Vec<PendingHello>) -> bool {
    let (stream, addr) = match listener.accept() {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
        Err(e) => {
            // Transient (aborted connection, out of descriptors): log and keep going.
            tracing::warn!(rank = plan.rank, "accept failed: {e}");
            return false;
        }
    };
    if pending.len() >= MAX_PENDING_HELLOS {
        let why = "too many connections are waiting to send their hello";
        tracing::warn!(rank = plan.rank, from = %addr, "refused a connection: {why}");
        return true;
    }
    if let Err(e) = stream.set_nonblocking(true) {
        tracing::warn!(rank = plan.rank, from = %addr, "dropped a connection: {e}");
        return true;
    }
    let give_up = Instant::now() + HELLO_TIMEOUT.min(plan.deadline.remaining());
    pending.push(PendingHello {
        stream,
        addr,
        buf: [0; HELLO_LEN],
        filled: 0,
        give_up,
    });
    true
}

/// Checks a complete hello and answers it; the peer's rank if it was admitted.
fn admit(plan: &MeshPlan, p: PendingHello, links: &mut [Option<TcpStream>]) -> Option<usize> {
    let peer = match check_hello(
        &p.buf[..p.filled],
        plan.rank,
        plan.size(),
        plan.session,
        links,
    ) {
        Ok(peer) => peer,
        Err((code, why)) => {
            reject(plan, p, code, why);
            return None;
        }
    };
    let answered = p
        .stream
        .set_nonblocking(false)
        .and_then(|()| p.stream.set_write_timeout(Some(time_left(plan.deadline)?)))
        .and_then(|()| (&p.stream).write_all(&[0]))
        .and_then(|()| p.stream.set_write_timeout(None));
    match answered {
        Ok(()) => {
            links[peer] = Some(p.stream);
            Some(peer)
        }
        Err(e) => {
            let from = p.addr;
            tracing::warn!(rank = plan.rank, peer, %from, "could not answer the hello: {e}");
            None
        }
    }
}

/// Answers a refused connection (best effort) and logs it.
fn reject(plan: &MeshPlan, p: PendingHello, code: Reject, why: String) {
    let (from, what) = (p.addr, code.name());
    tracing::warn!(rank = plan.rank, %from, "rejected a connection ({what}): {why}");
    let text = truncate_utf8(&why, MAX_REJECT_REASON).as_bytes();
    let mut reply = vec![code as u8];
    reply.extend_from_slice(&(text.len() as u16).to_le_bytes());
    reply.extend_from_slice(text);
    // A fresh socket's send buffer takes a few bytes at once; a peer that is gone is fine too.
    let _ = (&p.stream).write(&reply);
    let _ = p.stream.shutdown(Shutdown::Both);
}

/// Why an acceptor refuses a hello (the status byte of its answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reject {
    BadMagic = 1,
    BadVersion = 2,
    WrongSession = 3,
    WrongSize = 4,
    BadRank = 5,
    Duplicate = 6,
}

impl Reject {
    fn from_code(c: u8) -> Option<Reject> {
        [
            Reject::BadMagic,
            Reject::BadVersion,
            Reject::WrongSession,
            Reject::WrongSize,
            Reject::BadRank,
            Reject::Duplicate,
        ]
        .into_iter()
        .find(|r| *r as u8 == c)
    }

    fn name(self) -> &'static str {
        match self {
            Reject::BadMagic => "not a tutti hello",
            Reject::BadVersion => "unsupported version",
            Reject::WrongSession => "wrong session",
            Reject::WrongSize => "wrong world size",
            Reject::BadRank => "bad rank",
            Reject::Duplicate => "duplicate rank",
        }
    }
}

/// A connector's hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hello {
    version: u16,
    session: u64,
    size: u32,
    from: u32,
    to: u32,
}

impl Hello {
    fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..12].copy_from_slice(&HELLO_MAGIC);
        b[12..14].copy_from_slice(&self.version.to_le_bytes());
        b[14..22].copy_from_slice(&self.session.to_le_bytes());
        b[22..26].copy_from_slice(&self.size.to_le_bytes());
        b[26..30].copy_from_slice(&self.from.to_le_bytes());
        b[30..34].copy_from_slice(&self.to.to_le_bytes());
        b
    }

    /// Decodes a hello; `None` unless `b` is a whole hello with the right magic.
    fn decode(b: &[u8]) -> Option<Hello> {
        let b: &[u8; HELLO_LEN] = b.try_into().ok()?;
        if b[..12] != HELLO_MAGIC {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut session = [0u8; 8];
        session.copy_from_slice(&b[14..22]);
        Some(Hello {
            version: u16::from_le_bytes([b[12], b[13]]),
            session: u64::from_le_bytes(session),
            size: u32_at(22),
            from: u32_at(26),
            to: u32_at(30),
        })
    }
}

/// The acceptor's check of a hello (`bytes`: all that arrived): the connector's rank, or why not.
fn check_hello(
    bytes: &[u8],
    me: usize,
    size: usize,
    session: u64,
    links: &[Option<TcpStream>],
) -> Result<usize, (Reject, String)> {
    let Some(h) = Hello::decode(bytes) else {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(16)]).into_owned();
        return Err((
            Reject::BadMagic,
            format!("bad magic (began with {shown:?})"),
        ));
    };
    let (from, to) = (h.from as usize, h.to as usize);
    let (code, why) = if h.version != HELLO_VERSION {
        let v = h.version;
        (
            Reject::BadVersion,
            format!("version {v} (this build speaks {HELLO_VERSION})"),
        )
    } else if h.session != session {
        let s = h.session;
        (
            Reject::WrongSession,
            format!("session {s:#x}, expected {session:#x}"),
        )
    } else if h.size as usize != size {
        (
            Reject::WrongSize,
            format!("world size {}, expected {size}", h.size),
        )
    } else if to != me {
        (
            Reject::BadRank,
            format!("addressed to rank {to}, this is rank {me}"),
        )
    } else if from <= me || from >= size {
        let why = format!("rank {from} must not connect to rank {me} (ranks above it do)");
        (Reject::BadRank, why)
    } else if links[from].is_some() {
        (
            Reject::Duplicate,
            format!("rank {from} is already connected"),
        )
    } else {
        return Ok(from);
    };
    Err((code, why))
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// Buffer sizes of `opts` (0: keep the kernel's).
fn apply_buffers(sock: &Socket, opts: &TcpOptions) -> io::Result<()> {
    if opts.socket_buffer_bytes > 0 {
        sock.set_send_buffer_size(opts.socket_buffer_bytes)?;
        sock.set_recv_buffer_size(opts.socket_buffer_bytes)?;
    }
    Ok(())
}

/// Socket settings of an established link: blocking, no timeouts, nodelay, buffers, keepalive.
fn configure_link(stream: &TcpStream, opts: &TcpOptions) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    stream.set_nodelay(opts.nodelay)?;
    let sock = SockRef::from(stream);
    apply_buffers(&sock, opts)?;
    let keepalive = TcpKeepalive::new().with_time(Duration::from_secs(30));
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let keepalive = keepalive
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    sock.set_tcp_keepalive(&keepalive)?;
    #[cfg(any(target_os = "macos", target_os = "ios"))]
    sock.set_nosigpipe(true)?;
    Ok(())
}

/// The time left before `deadline`, or a timeout error once it passed.
fn time_left(deadline: Deadline) -> io::Result<Duration> {
    let left = deadline.remaining();
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("deadline passed after {:.1?}", deadline.elapsed()),
        ));
    }
    Ok(left)
}

/// `read_exact` on a blocking stream with `SO_RCVTIMEO` set to the time left before each read.
fn read_exact_by(s: &TcpStream, buf: &mut [u8], deadline: Deadline) -> io::Result<()> {
    let mut n = 0;
    while n < buf.len() {
        s.set_read_timeout(Some(time_left(deadline)?))?;
        match (&*s).read(&mut buf[n..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the handshake",
                ))
            }
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    s.set_read_timeout(None)
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its state consistent before anything can panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn spawn_named(name: String, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .stack_size(THREAD_STACK)
        .spawn(f)
}

/// Joins the threads that finish by `deadline`; the others are left detached.
fn join_for(mut threads: Vec<JoinHandle<()>>, deadline: Deadline) {
    loop {
        let (done, running): (Vec<_>, Vec<_>) = threads.into_iter().partition(|h| h.is_finished());
        for h in done {
            let _ = h.join();
        }
        threads = running;
        if threads.is_empty() || deadline.expired() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Lane;
    use std::io::Cursor;

    const SESSION: u64 = 0x5eed;

    fn hello(from: u32, to: u32) -> Hello {
        Hello {
            version: HELLO_VERSION,
            session: SESSION,
            size: 4,
            from,
            to,
        }
    }

    fn verdict(bytes: &[u8], links: &[Option<TcpStream>]) -> Result<usize, Reject> {
        check_hello(bytes, 1, 4, SESSION, links).map_err(|(code, _)| code)
    }

    #[test]
    fn hello_round_trips_and_is_checked() {
        let none: Vec<Option<TcpStream>> = (0..4).map(|_| None).collect();
        let h = hello(3, 1);
        assert_eq!(Hello::decode(&h.encode()), Some(h));
        assert_eq!(verdict(&h.encode(), &none), Ok(3));
        assert_eq!(
            verdict(b"GET / HTTP/1.1\r\n\r\n", &none),
            Err(Reject::BadMagic)
        );
        let cases = [
            (Hello { version: 9, ..h }, Reject::BadVersion),
            (Hello { session: 1, ..h }, Reject::WrongSession),
            (Hello { size: 5, ..h }, Reject::WrongSize),
            (hello(3, 2), Reject::BadRank),
            (hello(0, 1), Reject::BadRank),
            (hello(1, 1), Reject::BadRank),
            (hello(4, 1), Reject::BadRank),
        ];
        for (bad, code) in cases {
            assert_eq!(verdict(&bad.encode(), &none), Err(code), "{bad:?}");
        }
        for code in 1..=6 {
            assert_eq!(Reject::from_code(code).map(|r| r as u8), Some(code));
        }
        assert_eq!(Reject::from_code(0), None);
        assert_eq!(Reject::from_code(b'H'), None);
    }

    #[test]
    fn duplicate_rank_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut links: Vec<Option<TcpStream>> = (0..4).map(|_| None).collect();
        links[2] = Some(s);
        assert_eq!(
            verdict(&hello(2, 1).encode(), &links),
            Err(Reject::Duplicate)
        );
    }

    fn frame(header: FrameHeader, payload: &[u8]) -> Vec<u8> {
        let mut b = header.encode().to_vec();
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn frames_are_read_back_and_truncation_is_detected() {
        let key = MsgKey {
            comm_id: 7,
            lane: Lane::Collective,
            tag: 9,
        };
        let mut goodbye = FrameHeader::goodbye();
        goodbye.payload_len = 3;
        let mut bytes = frame(FrameHeader::data(key, 42, 5), b"hello");
        bytes.extend(frame(goodbye, b"bye"));
        let mut r = Cursor::new(bytes.clone());
        match read_frame(&mut r) {
            Ok(Incoming::Message(m)) => {
                assert_eq!(
                    (m.key, m.fingerprint, &m.payload[..]),
                    (key, 42, &b"hello"[..])
                )
            }
            _ => panic!("expected a message"),
        }
        assert!(matches!(read_frame(&mut r), Ok(Incoming::Goodbye(s)) if s == "bye"));
        assert!(matches!(
            read_frame(&mut r),
            Err(ReadFailure::Eof { mid_frame: false })
        ));
        for cut in [1, HEADER_LEN - 1, HEADER_LEN + 2] {
            let mut r = Cursor::new(&bytes[..cut]);
            assert!(matches!(
                read_frame(&mut r),
                Err(ReadFailure::Eof { mid_frame: true })
            ));
        }
        let mut r = Cursor::new(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789abcdef".to_vec());
        assert!(matches!(read_frame(&mut r), Err(ReadFailure::Protocol(_))));
        goodbye.payload_len = MAX_GOODBYE_REASON as u64 + 1;
        let mut r = Cursor::new(goodbye.encode().to_vec());
        assert!(matches!(read_frame(&mut r), Err(ReadFailure::Protocol(_))));
    }

    #[test]
    fn write_frame_writes_large_payloads_in_pieces_and_honours_the_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = Socket::from(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        let (mut rx, _) = l.accept().unwrap();
        let payload: Vec<u8> = (0..WRITE_PIECE * 2 + 3).map(|i| (i % 251) as u8).collect();
        let header = FrameHeader::data(
            MsgKey {
                comm_id: 0,
                lane: Lane::P2p,
                tag: 1,
            },
            0,
            payload.len(),
        );
        let reader = std::thread::spawn(move || {
            let m = read_frame(&mut rx);
            (m, rx)
        });
        let d = Deadline::after(Duration::from_secs(20));
        assert!(write_frame(&sock, &header.encode(), &payload, Some(d)).is_ok());
        let (m, _rx) = reader.join().unwrap();
        assert!(matches!(m, Ok(Incoming::Message(m)) if m.payload == payload));
        // Nobody reads any more: a large write must stop at its deadline, with the frame cut.
        let d = Deadline::after(Duration::from_millis(200));
        let big = vec![0u8; 256 << 20];
        let t0 = Instant::now();
        let f = write_frame(&sock, &header.encode(), &big, Some(d)).expect_err("must time out");
        assert!(f.timed_out && f.started, "{}", f.source);
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }
}
