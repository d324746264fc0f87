//! One link of the mesh: a non-blocking socket and the two state machines that move frames on
//! it, driven by whichever thread runs the engine ([`super::engine`]). Nothing here blocks and
//! nothing here takes a lock: the engine's mutex covers it all.
//!
//! - Receiving ([`Link::pump_rx`]): bytes are read into a 64 KiB buffer, which holds a small
//!   frame's header and payload after one `recv`; a payload's bytes go to the [`Matcher`], and
//!   once a large payload's header has been seen the rest is read straight into its posted
//!   destination (or an unexpected message's buffer) in calls sized from the header.
//! - Sending ([`Link::pump_tx`]): control frames first (goodbye, credit, heartbeats), then the
//!   fragments of the queued messages in order, each started only when the peer's window covers
//!   it, header and payload in one `sendmsg`. A control frame waits only for the frame being
//!   written (at most one fragment), never for credit.
//!
//! Liveness: the link notes that bytes arrived (`rx_seen`) and that a frame was started
//! (`tx_seen`) with a flag, not a clock read; the engine's tick (every
//! [`super::engine::TICK`]) turns the flags into times, queues a heartbeat on a link that sent
//! nothing for a while, and loses a link that heard nothing for the liveness bound.
//!
//! Window (flow control): the peer lets us have `credit` bytes unreceived there; a fragment
//! costs its payload, plus [`MESSAGE_COST`] for a message's first. We give credit back to the
//! peer in credit frames once a quarter of our window has been freed ([`Matcher::take_credit`]).
//! That never starves a sender: fragments are at most a quarter of the window, so a sender that
//! lacks credit for its next one has more than 3/4 of the window outstanding, and once the
//! receiver has consumed that (posted its receives), more than a quarter is due and goes back.

use super::super::frame::{FrameHeader, FrameKind, HEADER_LEN, MAX_HEADER_LEN};
use super::super::matcher::{Matcher, MESSAGE_COST};
use super::super::shm::ShmPipe;
use super::truncate_utf8;
use crate::transport::MsgKey;
use socket2::Socket;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::time::Instant;

/// Size of a link's receive buffer.
const RX_BUFFER: usize = 64 << 10;
/// Most bytes one read from a shared-memory ring puts into the receive buffer.
const SHM_HEADER_READ: usize = 4 << 10;
/// Longest goodbye reason sent; a reader refuses a goodbye payload longer than this.
pub(super) const MAX_GOODBYE_REASON: usize = 1024;

/// `send` flags: no SIGPIPE when the peer is gone (std ignores SIGPIPE in Rust binaries, but a
/// host such as Python or a C++ program may not).
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = 0;

/// The payload of a queued message, as the engine's send table holds it.
pub(super) struct Outgoing {
    pub key: MsgKey,
    pub fingerprint: u128,
    pub len: usize,
    /// Payload bytes already cut into fragments (started on the wire).
    pub cut: usize,
    /// Payload bytes fully written.
    pub written: usize,
    pub seq: u64,
}

/// The frame being written: header bytes and a payload range of one queued message.
struct OutFrame {
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// (send id, first byte, length) of the payload, or a goodbye's reason text.
    payload: OutPayload,
    written: usize,
}

enum OutPayload {
    None,
    Message { id: u64, at: usize, len: usize },
    Text(Vec<u8>),
}

/// How the engine finds the bytes of a queued send (by id).
pub(super) trait SendBytes {
    /// The outgoing message of send `id`.
    fn outgoing(&mut self, id: u64) -> Option<&mut Outgoing>;
    /// The payload bytes `at..at + len` of send `id`.
    fn bytes(&self, id: u64, at: usize, len: usize) -> &[u8];
}

/// Why a link stopped.
#[derive(Debug)]
pub(super) enum RxEnd {
    /// The peer said goodbye; `abort`: because a call of its failed.
    Goodbye {
        reason: String,
        abort: bool,
    },
    Eof {
        mid_frame: bool,
    },
    Io(io::Error),
    Protocol(String),
}

/// What pumping the send side left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TxState {
    /// Nothing more to send.
    Idle,
    /// The socket is full: wait for it to be writable.
    SocketFull,
    /// The peer's window is full: wait for credit.
    NoCredit,
}

/// One connection to one peer.
pub(super) struct Link {
    pub peer: usize,
    pub addr: SocketAddr,
    pub sock: Socket,
    /// The shared-memory pipe, when the peer shares this host: frames go through its rings and
    /// the socket carries only doorbells and the end of stream.
    pub shm: Option<ShmLink>,
    /// Bytes the peer lets us send unreceived (its window, minus what is outstanding).
    pub credit: usize,
    /// Queued sends to this peer (ids), oldest first; the front is being cut into fragments.
    pub queue: VecDeque<u64>,
    /// Our window (what we let the peer have buffered, and so what it lets us have): when to
    /// give credit back, and the bound on what the peer has buffered here.
    pub window: usize,
    /// Largest fragment payload.
    fragment: usize,
    out: Option<OutFrame>,
    goodbye: Option<(bool, Vec<u8>)>,
    next_seq: u64,
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    /// Payload bytes of the current data frame still to read.
    frag_left: usize,
    /// The current frame's payload is a goodbye reason (read whole into `rx`).
    pending_goodbye: Option<FrameHeader>,
    /// Bytes of an unknown header extension still to skip.
    skip: usize,
    pub tx_state: TxState,
    /// Bytes arrived since the engine's last tick.
    pub rx_seen: bool,
    /// A frame was started since the engine's last tick.
    pub tx_seen: bool,
    /// When bytes last arrived (as of the last tick that saw them).
    pub last_rx: Instant,
    /// When a frame was last started (as of the last tick that saw it).
    pub last_tx: Instant,
    /// A heartbeat is to be sent (after the frame being written).
    pub heartbeat_due: bool,
    /// Calls to announce to the peer in heartbeats (see [`FrameHeader::heartbeat`]).
    pub announce: VecDeque<(MsgKey, u128)>,
    /// The calls last announced on this link (each is announced once while it stays blocked).
    pub announced: Vec<(MsgKey, u128)>,
}

impl Link {
    pub(super) fn new(
        peer: usize,
        addr: SocketAddr,
        sock: Socket,
        shm: Option<ShmPipe>,
        window: usize,
    ) -> Link {
        Link {
            peer,
            addr,
            sock,
            shm: shm.map(|pipe| ShmLink {
                pipe,
                sock_ready: false,
                eof: false,
            }),
            credit: 0,
            queue: VecDeque::new(),
            window,
            fragment: (window / 4).clamp(4 << 10, 1 << 20),
            out: None,
            goodbye: None,
            next_seq: 0,
            rx: vec![0; RX_BUFFER],
            rx_start: 0,
            rx_end: 0,
            frag_left: 0,
            pending_goodbye: None,
            skip: 0,
            tx_state: TxState::Idle,
            rx_seen: false,
            tx_seen: false,
            last_rx: Instant::now(),
            last_tx: Instant::now(),
            heartbeat_due: false,
            announce: VecDeque::new(),
            announced: Vec::new(),
        }
    }

    /// The next message number on this link.
    pub(super) fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }

    /// Queues a goodbye (sent before any further data frame).
    pub(super) fn queue_goodbye(&mut self, abort: bool, reason: &str) {
        let text = truncate_utf8(reason, MAX_GOODBYE_REASON)
            .as_bytes()
            .to_vec();
        self.goodbye = Some((abort, text));
    }

    /// True while a goodbye waits to be sent.
    pub(super) fn has_goodbye(&self) -> bool {
        self.goodbye.is_some()
    }

    /// True while a frame is half written (the stream cannot take another yet).
    pub(super) fn mid_frame(&self) -> bool {
        self.out.is_some()
    }

    /// Writes what it can: the half-written frame, control frames, then fragments of the
    /// queued sends as credit allows. Sends whose last byte was written are returned in `done`.
    pub(super) fn pump_tx(
        &mut self,
        matcher: &mut Matcher,
        sends: &mut dyn SendBytes,
        done: &mut Vec<u64>,
    ) -> io::Result<TxState> {
        loop {
            if self.out.is_some() {
                if !self.write_out(sends, done)? {
                    self.tx_state = TxState::SocketFull;
                    return Ok(self.tx_state);
                }
                continue;
            }
            if let Some((abort, text)) = self.goodbye.take() {
                let mut h = FrameHeader::goodbye(abort);
                h.payload_len = text.len() as u64;
                self.start(h, OutPayload::Text(text));
                continue;
            }
            if matcher.credit_due(self.peer) >= self.window / 4 {
                let bytes = matcher.take_credit(self.peer);
                self.start(FrameHeader::credit(bytes as u64), OutPayload::None);
                continue;
            }
            if let Some(call) = self.announce.pop_front() {
                self.heartbeat_due = false;
                self.start(FrameHeader::heartbeat(Some(call)), OutPayload::None);
                continue;
            }
            if std::mem::take(&mut self.heartbeat_due) {
                self.start(FrameHeader::heartbeat(None), OutPayload::None);
                continue;
            }
            match self.next_fragment(sends) {
                Some(()) => continue,
                None if self.queue.is_empty() => self.tx_state = TxState::Idle,
                None => self.tx_state = TxState::NoCredit,
            }
            return Ok(self.tx_state);
        }
    }

    /// Gives back every freed byte of window now (before this rank sleeps, or at start).
    pub(super) fn flush_credit(&mut self, matcher: &mut Matcher, initial: usize) {
        if self.out.is_none() {
            let bytes = matcher.take_credit(self.peer) + initial;
            if bytes > 0 {
                self.start(FrameHeader::credit(bytes as u64), OutPayload::None);
            }
        }
    }

    fn start(&mut self, header: FrameHeader, payload: OutPayload) {
        self.tx_seen = true;
        self.out = Some(OutFrame {
            header: header.encode(),
            header_len: HEADER_LEN,
            payload,
            written: 0,
        });
    }

    /// Starts the next fragment of the front send if the peer's window covers it.
    fn next_fragment(&mut self, sends: &mut dyn SendBytes) -> Option<()> {
        let id = *self.queue.front()?;
        let m = sends.outgoing(id)?;
        let len = (m.len - m.cut).min(self.fragment);
        let cost = len + if m.cut == 0 { MESSAGE_COST } else { 0 };
        if cost > self.credit {
            return None;
        }
        self.credit -= cost;
        let at = m.cut;
        let h = FrameHeader::fragment(m.key, m.fingerprint, m.len, at, len, m.seq);
        m.cut += len;
        if m.cut == m.len {
            self.queue.pop_front();
        }
        self.start(h, OutPayload::Message { id, at, len });
        Some(())
    }

    /// Writes the current frame; `Ok(false)` if the socket is full.
    fn write_out(&mut self, sends: &mut dyn SendBytes, done: &mut Vec<u64>) -> io::Result<bool> {
        let out = self.out.as_mut().expect("a frame to write");
        let body: &[u8] = match &out.payload {
            OutPayload::None => &[],
            OutPayload::Message { id, at, len } => sends.bytes(*id, *at, *len),
            OutPayload::Text(t) => t,
        };
        let total = out.header_len + body.len();
        while out.written < total {
            let (head, tail) = if out.written < out.header_len {
                (&out.header[out.written..out.header_len], body)
            } else {
                (&[][..], &body[out.written - out.header_len..])
            };
            match write_parts(&self.sock, self.shm.as_ref(), head, tail) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => out.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if let OutPayload::Message { id, len, .. } = out.payload {
            if let Some(m) = sends.outgoing(id) {
                m.written += len;
                if m.written == m.len {
                    done.push(id);
                }
            }
        }
        self.out = None;
        Ok(true)
    }

    /// Reads what has arrived and hands it to `matcher`; returns the credit the peer gave back,
    /// or why the link ended. `Ok` means the socket has nothing more for now.
    pub(super) fn pump_rx(&mut self, matcher: &mut Matcher, window: usize) -> Result<(), RxEnd> {
        loop {
            if self.frag_left > 0 {
                if self.rx_start < self.rx_end {
                    let n = self.frag_left.min(self.rx_end - self.rx_start);
                    matcher.bytes(self.peer, &self.rx[self.rx_start..self.rx_start + n]);
                    self.rx_start += n;
                    self.frag_left -= n;
                    continue;
                }
                if let Some(shm) = self.shm.as_mut() {
                    // The payload goes from the ring straight where it belongs (copied into the
                    // posted buffer, reduced into the accumulator, or buffered if unexpected).
                    let peer = self.peer;
                    let n = shm
                        .pipe
                        .rx
                        .read_with(self.frag_left, |chunk| matcher.bytes(peer, chunk));
                    if n > 0 {
                        self.rx_seen = true;
                        self.frag_left -= n;
                        if shm.pipe.rx.writer_needs_wake() {
                            doorbell(&self.sock);
                        }
                        continue;
                    }
                } else if self.frag_left >= RX_BUFFER / 4 {
                    if let Some(dst) = matcher.direct(self.peer, self.frag_left) {
                        match read_some(&self.sock, self.shm.as_mut(), dst)? {
                            Some(n) => {
                                self.rx_seen = true;
                                matcher.commit_direct(self.peer, n);
                                self.frag_left -= n;
                                continue;
                            }
                            None => return Ok(()),
                        }
                    }
                }
            } else if self.skip > 0 {
                let n = self.skip.min(self.rx_end - self.rx_start);
                self.rx_start += n;
                self.skip -= n;
                if self.skip == 0 || n > 0 {
                    continue;
                }
            } else if let Some(step) = self.next_frame(matcher, window)? {
                match step {
                    Step::Again => continue,
                    Step::Credit(bytes) => {
                        self.credit = self.credit.saturating_add(bytes);
                        continue;
                    }
                }
            }
            if !self.fill()? {
                return Ok(());
            }
        }
    }

    /// Decodes the next frame from the buffer, if a whole header (and, for a goodbye, its
    /// reason) is there; `None`: more bytes are needed.
    fn next_frame(&mut self, matcher: &mut Matcher, window: usize) -> Result<Option<Step>, RxEnd> {
        let avail = &self.rx[self.rx_start..self.rx_end];
        if let Some(h) = self.pending_goodbye {
            let len = h.payload_len as usize;
            if avail.len() < len {
                return Ok(None);
            }
            return Err(RxEnd::Goodbye {
                reason: String::from_utf8_lossy(&avail[..len]).into_owned(),
                abort: h.is_abort(),
            });
        }
        let Some((h, header_len)) =
            FrameHeader::decode_prefix(avail).map_err(|e| RxEnd::Protocol(e.to_string()))?
        else {
            return Ok(None);
        };
        let in_buffer = header_len.min(avail.len());
        self.rx_start += in_buffer;
        self.skip = header_len - in_buffer;
        match h.kind {
            FrameKind::Credit => Ok(Some(Step::Credit(to_usize(h.tag)?))),
            FrameKind::Goodbye => {
                if h.payload_len > MAX_GOODBYE_REASON as u64 {
                    return Err(RxEnd::Protocol(format!(
                        "a goodbye of {} bytes (at most {MAX_GOODBYE_REASON} expected)",
                        h.payload_len
                    )));
                }
                self.pending_goodbye = Some(h);
                Ok(Some(Step::Again))
            }
            FrameKind::Data(_) => {
                self.start_fragment(matcher, &h, window)?;
                Ok(Some(Step::Again))
            }
            FrameKind::Heartbeat => {
                if let Some((key, fingerprint)) = h.announced_call() {
                    matcher.announce(self.peer, key, fingerprint);
                }
                // This version sends none, but a later one may give heartbeats a payload.
                self.skip = self.skip.saturating_add(to_usize(h.payload_len)?);
                Ok(Some(Step::Again))
            }
        }
    }

    /// Checks a data frame against the message in progress and the window, and routes it.
    fn start_fragment(
        &mut self,
        matcher: &mut Matcher,
        h: &FrameHeader,
        window: usize,
    ) -> Result<(), RxEnd> {
        let (len, offset, payload) = (to_usize(h.msg_len)?, to_usize(h.offset)?, h.payload_len);
        // The fragment must continue the message in progress exactly, or start a new one when
        // none is in progress.
        let due = match matcher.inbound(self.peer) {
            Some((in_len, left)) if in_len == len => Some(in_len - left),
            Some(_) => None,
            None => Some(0),
        };
        if due != Some(offset) {
            return Err(RxEnd::Protocol(format!(
                "a fragment at offset {offset} of a {len}-byte message (number {}) that does not \
                 continue the message in progress",
                h.link_seq
            )));
        }
        if offset == 0 {
            let key = h.key().expect("a data frame has a key");
            matcher.begin(self.peer, key, h.fingerprint, len);
        }
        if matcher.buffered(self.peer) > window {
            return Err(RxEnd::Protocol(format!(
                "rank {} sent beyond its window of {window} bytes",
                self.peer
            )));
        }
        self.frag_left = to_usize(payload)?;
        Ok(())
    }

    /// Reads more bytes into the receive buffer; `Ok(false)` if none are available now.
    fn fill(&mut self) -> Result<bool, RxEnd> {
        if self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        } else if self.rx_end == self.rx.len() || self.rx_start > RX_BUFFER / 2 {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        if self.rx_end == self.rx.len() {
            // A header extension larger than the buffer: refused by decode before this.
            return Err(RxEnd::Protocol(format!(
                "a header longer than {MAX_HEADER_LEN} bytes"
            )));
        }
        let mid_frame = self.frag_left > 0
            || self.skip > 0
            || self.pending_goodbye.is_some()
            || self.rx_end > self.rx_start;
        // From a ring, headers only (and small payloads with them): a large payload is then
        // taken from the ring in place, not through this buffer.
        let room = if self.shm.is_some() {
            SHM_HEADER_READ
        } else {
            usize::MAX
        };
        let end = self.rx.len().min(self.rx_end.saturating_add(room));
        let free = &mut self.rx[self.rx_end..end];
        // SAFETY: u8 and MaybeUninit<u8> have one layout; recv only writes initialised bytes.
        let free = unsafe { &mut *(free as *mut [u8] as *mut [MaybeUninit<u8>]) };
        match read_some(&self.sock, self.shm.as_mut(), free) {
            Ok(Some(n)) => {
                self.rx_seen = true;
                self.rx_end += n;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(RxEnd::Eof { .. }) => Err(RxEnd::Eof { mid_frame }),
            Err(e) => Err(e),
        }
    }
}

/// What decoding a frame asked for.
enum Step {
    Again,
    Credit(usize),
}

/// The shared-memory state of a link.
pub(super) struct ShmLink {
    pub pipe: ShmPipe,
    /// `poll` saw the socket readable (doorbells, or the end of stream) since it was drained.
    pub sock_ready: bool,
    /// The socket has ended: once the ring is empty, the link is.
    pub eof: bool,
}

impl ShmLink {
    /// Before this rank blocks in `poll`: raises the sleep flags (reading always; writing when
    /// the ring is full, `tx_full`), having published the room it read (and rung the peer on
    /// `sock` if it waits for that room). False if the rings changed meanwhile: do not block.
    pub(super) fn may_sleep(&self, sock: &Socket, tx_full: bool) -> bool {
        if self.eof {
            return true;
        }
        let rx = self.pipe.rx.reader_may_sleep();
        if self.pipe.rx.writer_needs_wake() {
            doorbell(sock);
        }
        rx && (!tx_full || self.pipe.tx.writer_may_sleep())
    }
}

/// Writes `head` then `tail` to the link (socket or ring); `WouldBlock` if nothing fits now.
fn write_parts(
    sock: &Socket,
    shm: Option<&ShmLink>,
    head: &[u8],
    tail: &[u8],
) -> io::Result<usize> {
    let Some(shm) = shm else {
        return sock
            .send_vectored_with_flags(&[IoSlice::new(head), IoSlice::new(tail)], SEND_FLAGS);
    };
    let n = shm.pipe.tx.write(&[head, tail]);
    if n == 0 {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    if shm.pipe.tx.reader_needs_wake() {
        doorbell(sock);
    }
    Ok(n)
}

/// Reads what the link has (socket or ring): `Some(n)` bytes, `None` if nothing is there now.
/// On a shared-memory link the end of the socket ends the link only once the ring is empty (the
/// peer's last frames, such as its goodbye, are in the ring).
fn read_some(
    sock: &Socket,
    shm: Option<&mut ShmLink>,
    buf: &mut [MaybeUninit<u8>],
) -> Result<Option<usize>, RxEnd> {
    let Some(shm) = shm else {
        return recv_some(sock, buf);
    };
    for _ in 0..2 {
        let n = shm.pipe.rx.read(buf);
        if n > 0 {
            if shm.pipe.rx.writer_needs_wake() {
                doorbell(sock);
            }
            return Ok(Some(n));
        }
        if shm.eof {
            return Err(RxEnd::Eof { mid_frame: true });
        }
        if !std::mem::take(&mut shm.sock_ready) {
            return Ok(None);
        }
        drain_doorbells(sock, shm)?;
    }
    Ok(None)
}

/// Reads the doorbell bytes off a shared-memory link's socket, noting its end.
fn drain_doorbells(sock: &Socket, shm: &mut ShmLink) -> Result<(), RxEnd> {
    let mut scratch = [MaybeUninit::new(0u8); 64];
    loop {
        match sock.recv(&mut scratch) {
            Ok(0) => {
                shm.eof = true;
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                shm.eof = true;
                return Ok(());
            }
            Err(e) => return Err(RxEnd::Io(e)),
        }
    }
}

/// Wakes the peer, asleep in `poll` on its end of the socket (a full socket buffer already
/// holds doorbells; a broken socket is noticed by the reading side).
fn doorbell(sock: &Socket) {
    let _ = sock.send_with_flags(&[1], SEND_FLAGS);
}

/// One non-blocking `recv`: `Some(n)` bytes, `None` if nothing is there now.
fn recv_some(sock: &Socket, buf: &mut [MaybeUninit<u8>]) -> Result<Option<usize>, RxEnd> {
    loop {
        match sock.recv(buf) {
            Ok(0) if !buf.is_empty() => return Err(RxEnd::Eof { mid_frame: true }),
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(RxEnd::Io(e)),
        }
    }
}

fn to_usize(v: u64) -> Result<usize, RxEnd> {
    usize::try_from(v).map_err(|_| RxEnd::Protocol(format!("a length of {v} bytes")))
}
