//! One link of the mesh: the sending path (a blocking send on the caller's thread, owned sends
//! through the writer thread), the reader thread that files arriving frames in the mailbox, and
//! frame I/O on the socket. The design and its invariants are in the [module doc](super).

use super::{closed_error, lock, spawn_named, truncate_utf8};
use crate::deadline::Deadline;
use crate::transport::frame::{FrameHeader, HEADER_LEN};
use crate::transport::pool::BufferPool;
use crate::transport::{SendTicket, TransportError};
use socket2::Socket;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest slice of a payload handed to one system call; the deadline is checked between them.
const WRITE_PIECE: usize = 4 << 20;
/// Longest goodbye reason sent; a reader refuses a goodbye payload longer than this.
pub(super) const MAX_GOODBYE_REASON: usize = 1024;

/// `send` flags: no SIGPIPE when the peer is gone (std ignores SIGPIPE in Rust binaries, but a
/// host such as Python or a C++ program may not).
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = 0;

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
pub(super) struct LinkState {
    /// A thread (a caller, the writer or `shutdown`) is writing a frame.
    busy: bool,
    /// Frames waiting for the writer thread, oldest first.
    jobs: VecDeque<Job>,
    /// Frames queued or being written by the writer thread; while non-zero, blocking sends queue.
    queued: usize,
    /// The writer thread, once started.
    pub(super) writer: Option<JoinHandle<()>>,
    /// Set once: why this link sends no more.
    dead: Option<LinkDown>,
}

/// The sending side of the connection to one peer (its reader thread owns the receiving side).
pub(super) struct Link {
    me: usize,
    pub(super) peer: usize,
    addr: SocketAddr,
    sock: Socket,
    pub(super) state: Mutex<LinkState>,
    /// Signalled whenever `busy`, `jobs` or `dead` change.
    changed: Condvar,
    /// Payload buffers of received messages, given back by the consumer and reused by the reader.
    pub(super) pool: BufferPool,
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
    pub(super) fn new(me: usize, peer: usize, addr: SocketAddr, stream: TcpStream) -> Link {
        Link {
            me,
            peer,
            addr,
            sock: Socket::from(stream),
            state: Mutex::new(LinkState::default()),
            changed: Condvar::new(),
            pool: BufferPool::default(),
        }
    }

    /// Writes one frame on the caller's thread, or behind queued owned sends, by `deadline`.
    pub(super) fn send(
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
    pub(super) fn enqueue(
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
    pub(super) fn say_goodbye(&self, reason: &str, abort: bool, deadline: Deadline) {
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
        let mut header = FrameHeader::goodbye(abort);
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

    /// Called by the reader when its stream ended (`clean`: with a goodbye): records why, logs
    /// it (a warning unless the peer said goodbye or this side closed the link) and returns the
    /// reason that sticks.
    pub(super) fn reader_stopped(&self, why: String, clean: bool) -> String {
        let ours = matches!(lock(&self.state).dead, Some(LinkDown::Closed(_)));
        let reason = self.lose(why);
        if clean || ours {
            tracing::debug!(rank = self.me, peer = self.peer, "{reason}");
        } else {
            tracing::warn!(rank = self.me, peer = self.peer, addr = %self.addr, "{reason}");
        }
        reason
    }

    /// Marks the link lost (the first reason sticks) and closes the socket; returns the reason.
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

#[cfg(test)]
mod tests {
    use super::super::reader::{read_frame, Incoming};
    use super::*;
    use crate::transport::pool::BufferPool;
    use crate::transport::{Lane, MsgKey};
    use std::net::TcpListener;

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
            let m = read_frame(&mut rx, &BufferPool::default());
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
}
