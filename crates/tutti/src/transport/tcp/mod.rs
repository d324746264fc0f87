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
//!
//! ## Files
//! - this file: [`TcpOptions`], [`TcpTransport`] and its [`Transport`] impl, small helpers;
//! - `mesh.rs`: forming the mesh ([`TcpMeshListener`]: accept and connect loops, [`MeshError`]);
//! - `handshake.rs`: the hello above, its check and both halves of the exchange;
//! - `link.rs`: one link: the sending path, the writer and reader threads, frame I/O.

mod handshake;
mod link;
mod mesh;
mod reader;

pub use handshake::{HELLO_LEN, HELLO_MAGIC, HELLO_VERSION};
pub use mesh::{MeshError, PeerFailure, TcpMeshListener};

use super::frame::FrameHeader;
use super::mailbox::Mailbox;
use super::{Message, MsgKey, SendTicket, Transport, TransportError};
use crate::deadline::Deadline;
use link::Link;
use reader::run_reader;
use socket2::{SockRef, Socket, TcpKeepalive};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bound on all goodbyes of one shutdown.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `Drop` waits for the link threads.
const DROP_GRACE: Duration = Duration::from_millis(100);
/// Stack of the link threads (they hold no large buffers on the stack).
const THREAD_STACK: usize = 256 << 10;

/// Socket settings of every link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    /// Disable Nagle's algorithm (default true): small messages leave at once.
    pub nodelay: bool,
    /// `SO_SNDBUF` and `SO_RCVBUF` (default 4 MiB). 0 keeps the kernel's defaults and its
    /// autotuning; on Linux a value above `net.core.{w,r}mem_max` is silently capped.
    pub socket_buffer_bytes: usize,
    /// How long a receive polls for its message before it sleeps (default 20 us): a message
    /// that arrives meanwhile costs no thread wake-up. Measured with `tutti bench`, 512-byte
    /// all-reduce on loopback: 70-101 us without, 35-67 us with it on 2 ranks; 262-311 us and
    /// 253-259 us on 4 (oversubscribed) ranks; 64 MiB unchanged. Zero disables it.
    pub spin: Duration,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            nodelay: true,
            socket_buffer_bytes: 4 << 20,
            spin: Duration::from_micros(20),
        }
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
            mailbox: Arc::new(Mailbox::with_spin(links.len(), opts.spin)),
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

    fn recycle(&self, peer: usize, payload: Vec<u8>) {
        if let Some(Some(link)) = self.links.get(peer) {
            link.pool.give(payload);
        }
    }

    fn shutdown(&self, reason: &str) {
        self.close(reason, false);
    }

    fn abort(&self, reason: &str) {
        self.close(reason, true);
    }
}

impl TcpTransport {
    /// Closes every link once, telling each peer why (and whether this rank aborted).
    fn close(&self, reason: &str, abort: bool) {
        if self.closed.set(reason.to_string()).is_err() {
            return;
        }
        self.mailbox.close_all(&closed_error(reason).to_string());
        let deadline = Deadline::after(GOODBYE_TIMEOUT);
        for link in self.links.iter().flatten() {
            link.say_goodbye(reason, abort, deadline);
        }
        tracing::debug!(rank = self.rank, reason, abort, "tcp transport shut down");
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

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }
}
