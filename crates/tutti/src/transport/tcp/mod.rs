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
//!     12    2 version    5 (4 had no heartbeats, 3 no proof of a secret, 2 no link set-up
//!                        step, 1 no fragments)
//!     14    8 session    the job's session id (another job's rank is refused)
//!     22    4 size       world size
//!     26    4 from       the connector's rank
//!     30    4 to         the rank it means to reach
//!     34    1 flags      1: the connector has the job secret (TUTTI_SECRET)
//!     35   32 nonce      random
//! ```
//! The acceptor refuses a bad hello with a status (1 bad magic, 2 version, 3 session, 4 world
//! size, 5 rank, 6 duplicate, 7 not authorized) followed by a `u16` length and a short UTF-8
//! reason, and closes. It answers an acceptable one with `0`, its flags and its own 32-byte
//! nonce. Without a secret on either side that is the whole handshake. With one (both sides
//! must agree on having one: a mismatch is refused with status 7), the connector then sends
//! `HMAC-SHA-256(secret, "tutti/mesh/client" | hello | answer)` and the acceptor answers `0` and
//! `HMAC-SHA-256(secret, "tutti/mesh/server" | hello | answer)`, or status 7 and why; each side
//! checks the other's proof (see [`crate::auth`]). So the session id, which any client of the
//! store can read, is not what lets a connection in: a stranger or a rank of another job
//! cannot prove the secret, and a recorded handshake does not prove it again (the nonces are
//! new).
//!
//! A refused connection (a port scanner, a stray HTTP client, a rank of another job, a wrong
//! proof) is logged with `tracing::warn`, naming its address and why, and the acceptor keeps
//! waiting for the real peers. A connection that does not finish its handshake within
//! [`HANDSHAKE_TIMEOUT`] (5 s) is dropped without holding up the others; at most 64 wait at
//! once, more are closed at once (a real rank then retries).
//!
//! Then both ends of every link say which host they are on, and links whose ends share a host
//! move their frames to shared memory (see [`super::shm`] and its `setup` module for that
//! step); the socket stays, for doorbells and to tell that the peer is gone.
//!
//! ## Moving messages
//! Frames are those of [`super::frame`]; a message travels as fragments of at most a quarter of
//! the window (1 MiB at most). Sockets are non-blocking and owned by the progress engine
//! ([`engine`]): the thread that waits for a request drives every link itself (spinning
//! `spin`, then sleeping in `poll`), and a helper thread drives between calls. So:
//! - a receive posted before its message arrives gets the payload straight from the socket
//!   into its buffer (a combining receive reduces it from the 64 KiB read buffer); a message
//!   that arrives first waits in the [`Matcher`](super::matcher) as unexpected, bounded by the
//!   window;
//! - a send writes header and payload with one `sendmsg` when the link is free and the peer's
//!   window covers it, else it queues (no copy: the caller waits) and the engine sends it as
//!   credit comes back;
//! - a goodbye frame (its payload is the reason, UTF-8) closes the peer's link as a clean
//!   shutdown; an end of stream or an error without goodbye closes it as lost. Each link fails
//!   and closes on its own; the others carry on (a later change can replace one);
//! - a heartbeat frame goes on every link that sent nothing for 0.5 s, and a link that heard
//!   nothing for [`TcpOptions::liveness`] (3 s) is lost: a stopped (SIGSTOP), dead or silently
//!   cut-off peer is found within the bound, not at the call's deadline. Heartbeats also
//!   announce the collective calls this rank waits in, so a peer in the same call with another
//!   fingerprint fails with a mismatch although the two calls exchange nothing (see
//!   [`engine`]'s "Liveness").
//!
//! Memory: at most `window` bytes of unexpected messages per peer (plus 64 bytes of bookkeeping
//! per message, counted in the window), a 64 KiB read buffer per link, and the recycled buffers
//! of the pool (at most 16). A sender over the window waits, within its deadline.
//!
//! Cost: a message of `n` bytes costs `alpha + n * beta` on its link; a receive that is posted
//! in time copies nothing in user space, an unexpected one copies once.
//!
//! ## Leaving
//! [`Transport::shutdown`] fails local waiters, queues a goodbye on each link (after the frame
//! being written: all goodbyes bounded by one second) and shuts the write halves down. The
//! links stay open until the peer closes its side (so the goodbye is read before any reset);
//! `Drop` waits at most 100 ms for that, then closes them.
//!
//! Sending to oneself goes straight to one's own matcher, as with [`super::mem`], so the two
//! transports are interchangeable.
//!
//! ## Files
//! - this file: [`TcpOptions`], [`TcpTransport`] and its [`Transport`] impl, small helpers;
//! - `mesh.rs`: forming the mesh ([`TcpMeshListener`]: accept and connect loops, [`MeshError`]);
//! - `handshake.rs`: the hello above, its check, the proofs and both halves of the exchange;
//! - `engine.rs`: the progress engine (driver, helper, sends table, closing links);
//! - `link.rs`: one link's frame state machines (receiving into the matcher, sending fragments).

mod calls;
mod engine;
mod handshake;
mod link;
mod mesh;

pub(crate) use handshake::{fuzz_hello, fuzz_hello_seeds};
pub use handshake::{HELLO_LEN, HELLO_MAGIC, HELLO_VERSION};
pub use mesh::HANDSHAKE_TIMEOUT;
pub use mesh::{MeshError, PeerFailure, TcpMeshListener};

use super::shm::{ShmOptions, ShmPipe};
use super::{recv_timeout, MsgKey, Source, Transport, TransportError};
use crate::deadline::Deadline;
use engine::{Engine, QueuedSend, Shared, Source as SendSource};
use link::{Link, Outgoing};
use socket2::{SockRef, Socket, TcpKeepalive};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bound on all goodbyes of one shutdown.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `Drop` waits for the peers to close their side.
const DROP_GRACE: Duration = Duration::from_millis(100);
/// Stack of the helper and mesh threads (they hold no large buffers on the stack).
const THREAD_STACK: usize = 256 << 10;
/// The smallest window accepted (a fragment is at least 4 KiB).
const MIN_WINDOW: usize = 16 << 10;

/// Socket settings of every link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    /// Disable Nagle's algorithm (default true): small messages leave at once.
    pub nodelay: bool,
    /// `SO_SNDBUF` and `SO_RCVBUF` (default 4 MiB). 0 keeps the kernel's defaults and its
    /// autotuning; on Linux a value above `net.core.{w,r}mem_max` is silently capped.
    pub socket_buffer_bytes: usize,
    /// How long a waiting thread polls its sockets before it sleeps in `poll` (default 20 us):
    /// a message that arrives meanwhile costs no wake-up. Zero disables it.
    pub spin: Duration,
    /// The flow-control window: bytes of unreceived messages each peer may have buffered here
    /// (default 16 MiB, at least 16 KiB). A sender beyond it waits for the receiver.
    pub window_bytes: usize,
    /// Shared memory on links whose two ends share a host (default: where possible).
    pub shm: ShmOptions,
    /// A link on which nothing arrives for this long is lost (default 3 s, `TUTTI_LIVENESS`;
    /// zero: never). Every link carries a heartbeat at least every 0.5 s (a quarter of this
    /// if shorter), sent by whichever thread drives, also between calls, so only a stopped,
    /// dead or cut-off peer goes silent. Every rank should use the same value.
    pub liveness: Duration,
}

/// The default [`TcpOptions::liveness`].
pub const DEFAULT_LIVENESS: Duration = Duration::from_secs(3);

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            nodelay: true,
            socket_buffer_bytes: 4 << 20,
            spin: Duration::from_micros(20),
            window_bytes: 16 << 20,
            shm: ShmOptions::default(),
            liveness: DEFAULT_LIVENESS,
        }
    }
}

/// One rank's end of a mesh of TCP links.
pub struct TcpTransport {
    rank: usize,
    size: usize,
    window: usize,
    shared: Arc<Shared>,
    helper: Mutex<Option<JoinHandle<()>>>,
}

impl TcpTransport {
    /// The transport over `streams` (handshaken, `None` at `rank`), with its helper thread.
    fn start(
        rank: usize,
        addrs: &[SocketAddr],
        streams: Vec<Option<TcpStream>>,
        pipes: Vec<Option<ShmPipe>>,
        opts: &TcpOptions,
    ) -> Result<Arc<TcpTransport>, MeshError> {
        let tcp_window = opts.window_bytes.max(MIN_WINDOW);
        // A shared-memory link gets a small window: a sender that runs ahead of unposted
        // receives would only fill buffers that the receiver copies again, while one that waits
        // for the receive streams from the ring straight into it (broadcast of 1 to 64 MiB on 2
        // ranks: 1.5-1.9 GB/s with 16 MiB, 21-27 GB/s with 1 MiB).
        let shm_window = opts.shm.window_bytes.clamp(MIN_WINDOW, tcp_window);
        let mut links = Vec::with_capacity(streams.len());
        let mut window = tcp_window;
        for ((peer, stream), pipe) in streams.into_iter().enumerate().zip(pipes) {
            let Some(stream) = stream else {
                links.push(None);
                continue;
            };
            configure_link(&stream, opts).map_err(|source| MeshError::Io {
                rank,
                what: format!(
                    "setting socket options of the link to rank {peer} at {}",
                    addrs[peer]
                ),
                source,
            })?;
            let link_window = if pipe.is_some() {
                shm_window
            } else {
                tcp_window
            };
            // What algorithms may send ahead: the smallest window of this rank's links.
            window = window.min(link_window);
            links.push(Some(Link::new(
                peer,
                addrs[peer],
                Socket::from(stream),
                pipe,
                link_window,
            )));
        }
        let size = links.len();
        let io_err = |what: &str, source| MeshError::Io {
            rank,
            what: what.to_string(),
            source,
        };
        let shared = Arc::new(
            Shared::new(rank, links, opts.spin, opts.shm.spin, opts.liveness)
                .map_err(|e| io_err("creating the engine's wake-up socket pair", e))?,
        );
        {
            // Each side opens by granting its window to the other.
            let mut e = shared.lock();
            let Engine { links, matcher, .. } = &mut *e;
            for link in links.iter_mut().flatten() {
                let initial = link.window;
                link.flush_credit(matcher, initial);
            }
            e.progress();
        }
        let t = Arc::new(TcpTransport {
            rank,
            size,
            window,
            shared: shared.clone(),
            helper: Mutex::new(None),
        });
        let h = spawn_named(format!("tutti-progress-{rank}"), move || {
            shared.run_helper()
        })
        .map_err(|e| {
            t.shutdown("mesh setup failed: could not start the progress thread");
            io_err("starting the progress thread", e)
        })?;
        *lock(&t.helper) = Some(h);
        Ok(t)
    }

    /// The engine, if this transport is open and `peer` exists.
    fn open(&self, peer: Option<usize>) -> Result<MutexGuard<'_, Engine>, TransportError> {
        if let Some(peer) = peer.filter(|&p| p >= self.size) {
            return Err(TransportError::NoSuchPeer {
                peer,
                size: self.size,
            });
        }
        let e = self.shared.lock();
        match &e.closed {
            Some(reason) => Err(closed_error(reason)),
            None => Ok(e),
        }
    }

    /// Queues a send of `src` to `peer` and pushes it as far as it goes now. Returns its id, or
    /// `None` if it was delivered to ourselves.
    fn queue_send(
        &self,
        e: &mut Engine,
        peer: usize,
        key: MsgKey,
        fingerprint: u128,
        src: SendSource,
    ) -> Result<Option<u64>, TransportError> {
        let len = match &src {
            SendSource::Borrowed { len, .. } => *len,
            SendSource::Owned(v) => v.len(),
        };
        if peer == self.rank {
            let bytes: &[u8] = match &src {
                // SAFETY: the caller's slice, valid for this call.
                SendSource::Borrowed { ptr, len } => unsafe {
                    std::slice::from_raw_parts(*ptr, *len)
                },
                SendSource::Owned(v) => v,
            };
            e.matcher.begin(self.rank, key, fingerprint, len);
            e.matcher.bytes(self.rank, bytes);
            return Ok(None);
        }
        let Some(link) = e.links[peer].as_mut() else {
            return Err(e.peer_error(peer));
        };
        let seq = link.take_seq();
        let id = e.next_send;
        e.next_send += 1;
        link.queue.push_back(id);
        e.sends.0.insert(
            id,
            QueuedSend {
                peer,
                out: Outgoing {
                    key,
                    fingerprint,
                    len,
                    cut: 0,
                    written: 0,
                    seq,
                },
                src,
                done: None,
                detached: false,
            },
        );
        e.pump(peer);
        self.shared.wake_driver(e);
        Ok(Some(id))
    }

    /// Gives up on send `id` without waiting: if some of it is on the wire it is finished in
    /// the background from an owned copy (a link cannot carry half a message), else dropped.
    fn abandon_send(e: &mut Engine, id: u64) {
        let Some(s) = e.sends.0.get_mut(&id) else {
            return;
        };
        if s.done.is_some() {
            e.sends.0.remove(&id);
            return;
        }
        if s.out.cut == 0 {
            let peer = s.peer;
            e.sends.0.remove(&id);
            if let Some(link) = e.links[peer].as_mut() {
                link.queue.retain(|&x| x != id);
            }
            return;
        }
        if let SendSource::Borrowed { ptr, len } = s.src {
            // SAFETY: the owner of the slice is still in its call (it is the one abandoning).
            let copy = unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec();
            s.src = SendSource::Owned(copy);
        }
        s.detached = true;
    }

    /// Waits for send `id`; on any way out but success the send is abandoned.
    fn finish_send<'a>(
        &'a self,
        e: MutexGuard<'a, Engine>,
        id: u64,
        peer: usize,
        deadline: Deadline,
    ) -> (MutexGuard<'a, Engine>, Result<Vec<u8>, TransportError>) {
        let (mut e, _) = self.shared.run_until(e, deadline, |e| {
            e.sends.0.get(&id).is_none_or(|s| s.done.is_some())
        });
        let r = match e.sends.0.get(&id).map(|s| s.done.is_some()) {
            Some(true) => {
                let s = e.sends.0.remove(&id).expect("checked");
                s.done.expect("checked").map(|()| match s.src {
                    SendSource::Owned(v) => v,
                    SendSource::Borrowed { .. } => Vec::new(),
                })
            }
            Some(false) => {
                Self::abandon_send(&mut e, id);
                Err(TransportError::Timeout {
                    peer,
                    what: "send to",
                    waited: deadline.elapsed(),
                })
            }
            None => Err(TransportError::NoSuchRequest(id)),
        };
        (e, r)
    }

    /// Waits for receive `id`; a receive still pending at the deadline is cancelled.
    fn finish_recv<'a>(
        &'a self,
        e: MutexGuard<'a, Engine>,
        id: u64,
        from: Source,
        deadline: Deadline,
    ) -> (MutexGuard<'a, Engine>, super::matcher::Outcome) {
        let (mut e, _) = self.shared.run_until(e, deadline, |e| {
            e.matcher.has_done(id) || !e.matcher.is_pending(id)
        });
        let out = match e.matcher.take_done(id) {
            Some(out) => out,
            None => {
                e.matcher.cancel(id);
                let closed = e.closed.clone();
                Err(closed.map_or_else(|| recv_timeout(from, deadline), |r| closed_error(&r)))
            }
        };
        (e, out)
    }

    /// Closes every link once, telling each peer why (and whether this rank aborted).
    fn close(&self, reason: &str, abort: bool) {
        let mut e = self.shared.lock();
        if e.flushed {
            return;
        }
        e.flushed = true;
        // A no-op when a peer's abort closed the engine already (its goodbyes are queued).
        e.close_all(reason, abort);
        let deadline = Deadline::after(GOODBYE_TIMEOUT);
        loop {
            e.progress();
            let sent = e
                .links
                .iter()
                .flatten()
                .all(|l| !l.mid_frame() && !l.has_goodbye());
            if sent || deadline.expired() {
                break;
            }
            drop(e);
            std::thread::sleep(Duration::from_micros(200));
            e = self.shared.lock();
        }
        for link in e.links.iter().flatten() {
            let _ = link.sock.shutdown(Shutdown::Write);
        }
        tracing::debug!(rank = self.rank, reason, abort, "tcp transport shut down");
        self.shared.wake_driver(&e);
        drop(e);
        self.shared.changed.notify_all();
        self.shared.helper_cv.notify_all();
    }

    /// The most bytes of unreceived messages any one peer has had buffered here (at most the
    /// window, plus 64 bytes per message, by the flow-control invariant).
    pub fn peak_unexpected_bytes(&self) -> usize {
        self.shared.lock().matcher.peak_buffered()
    }

    /// Closes the link to `peer` alone (a goodbye, then the socket): calls with `peer` fail
    /// with `reason`, the other links carry on. The first step of replacing one link.
    pub fn close_link(&self, peer: usize, reason: &str) {
        let mut e = self.shared.lock();
        if let Some(link) = e.links.get_mut(peer).and_then(Option::as_mut) {
            link.queue_goodbye(false, reason);
            e.pump(peer);
        }
        e.lose_link(
            peer,
            &format!("the link to rank {peer} was closed here: {reason}"),
            true,
        );
        drop(e);
        self.shared.changed.notify_all();
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shutdown("transport dropped");
        let deadline = Deadline::after(DROP_GRACE);
        let mut e = self.shared.lock();
        while e.links.iter().any(Option::is_some) && !deadline.expired() {
            if e.driver == engine::Driver::Nobody {
                e.progress();
            }
            drop(e);
            std::thread::sleep(Duration::from_millis(1));
            e = self.shared.lock();
        }
        for link in e.links.iter_mut() {
            *link = None;
        }
        drop(e);
        self.shared.helper_cv.notify_all();
        if let Some(h) = lock(&self.helper).take() {
            join_for(vec![h], Deadline::after(DROP_GRACE));
        }
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

/// Socket settings of an established link: non-blocking, nodelay, buffers, keepalive.
fn configure_link(stream: &TcpStream, opts: &TcpOptions) -> io::Result<()> {
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    stream.set_nonblocking(true)?;
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
