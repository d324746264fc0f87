//! The progress engine of the TCP transport: all link state behind one mutex, driven by the
//! threads that wait on it.
//!
//! ## Who moves the bytes
//! No thread is dedicated to a link. A thread that waits for a request (a blocking send or
//! receive, or `wait` on a non-blocking one) becomes the **driver** if there is none: it runs
//! the links' state machines itself (non-blocking `recv`/`sendmsg`), polls for `spin` with
//! `poll(.., 0)`, then sleeps in `poll` on every socket until something arrives or its
//! deadline passes. So the thread that waits for a small message reads it itself: no thread
//! hop, no wake-up when it arrives while spinning. Other waiting threads sleep on a condition
//! variable and are woken when a request completes; when the driver's own request is done it
//! hands over (another waiter becomes the driver).
//!
//! Between calls a **helper** thread drives (once no caller has been active for
//! [`HELPER_GRACE`]), so links are read while the application computes: credits and goodbyes
//! get through, non-blocking sends progress, a dead peer is noticed. A caller that finds the
//! helper driving wakes it through a socket pair and takes over.
//!
//! ## Liveness
//! Whoever drives also runs the engine's **tick** every [`TICK`] (100 ms): a link on which
//! nothing was sent for [`HEARTBEAT_EVERY`] (0.5 s, or a quarter of the liveness bound if that is
//! shorter) gets a heartbeat frame queued (after the frame being written: a control frame needs
//! no credit, so a window-blocked sender's peer still hears it); a link on which nothing
//! arrived for the liveness bound ([`super::TcpOptions::liveness`], 3 s by default) is lost as
//! "rank R silent for 3.0 s (no heartbeat): frozen, dead or cut off", which fails the calls
//! that need it at once. Since the helper drives between calls, a rank that computes for
//! minutes keeps heartbeating; only a stopped, dead or cut-off process (or host) goes silent.
//! A tick that finds this rank itself did not run for half the bound (the process was stopped
//! or starved) starts counting again instead of blaming its peers. A heartbeat is 72 bytes.
//!
//! The tick also announces, to every peer, the collective calls this rank's receives have
//! waited in for a tick or more (comm, sequence, fingerprint; at most [`MAX_ANNOUNCE`], each
//! once per link while it waits): a peer blocked in the same call with another fingerprint
//! then fails with a mismatch naming both calls within 100-200 ms, even when the two calls
//! exchange nothing (see [`crate::transport::matcher::Matcher::announce`]).
//!
//! ## Invariants
//! - Every socket call and every access to a posted destination or a borrowed send buffer
//!   happens under `Shared::state`'s mutex; `poll` is the only wait, and it is made without it.
//! - A borrowed buffer (a blocking send's payload, a blocking receive's destination) is only
//!   referenced until its call returns: the call waits for completion, or on error cancels the
//!   receive and turns a half-sent message into an owned copy, both under the mutex.

use super::link::{Link, Outgoing, RxEnd, SendBytes, TxState};
use crate::deadline::Deadline;
use crate::transport::matcher::Matcher;
use crate::transport::{MsgKey, TransportError};
// Request ids are small sequential integers: FxHash costs a multiply where SipHash showed up
// in the 8-byte all-reduce's profile (about 5% of its time).
use rustc_hash::FxHashMap as HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long no caller must have been active before the helper drives.
pub(super) const HELPER_GRACE: Duration = Duration::from_millis(5);
/// How long the driver's spin looks again without yielding the core.
const PURE_SPIN: Duration = Duration::from_micros(2);
/// The driver reads the clock every this many passes of its spin.
const CLOCK_EVERY: u32 = 8;
/// Longest sleep in `poll` (deadlines and shutdown are checked between sleeps).
const MAX_POLL: Duration = Duration::from_millis(100);
/// How often the driver runs the engine's tick (liveness, heartbeats, announcements).
pub(super) const TICK: Duration = Duration::from_millis(100);
/// A link on which nothing was sent for this long gets a heartbeat.
pub(super) const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// Most collective calls announced per tick.
pub(super) const MAX_ANNOUNCE: usize = 4;

/// Who drives the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Driver {
    Nobody,
    Caller,
    Helper,
}

/// The payload source of a send.
pub(super) enum Source {
    /// The caller's slice, valid until its blocking call returns (module invariant).
    Borrowed {
        ptr: *const u8,
        len: usize,
    },
    Owned(Vec<u8>),
}

// SAFETY: a borrowed pointer is only read under the engine mutex, while its owner waits.
unsafe impl Send for Source {}

/// A send in the engine's table.
pub(super) struct QueuedSend {
    pub peer: usize,
    pub out: Outgoing,
    pub src: Source,
    pub done: Option<Result<(), TransportError>>,
    /// Nobody will collect it (a cancelled or timed-out send finishing in the background).
    pub detached: bool,
}

impl QueuedSend {
    /// A send that finished as it was made (to ourselves).
    pub(super) fn finished(peer: usize) -> QueuedSend {
        QueuedSend {
            peer,
            out: Outgoing {
                key: MsgKey {
                    comm_id: 0,
                    lane: crate::transport::Lane::P2p,
                    tag: 0,
                },
                fingerprint: 0,
                len: 0,
                cut: 0,
                written: 0,
                seq: 0,
            },
            src: Source::Owned(Vec::new()),
            done: Some(Ok(())),
            detached: false,
        }
    }
}

/// The sends table, as the links see it.
pub(super) struct Sends(pub HashMap<u64, QueuedSend>);

impl SendBytes for Sends {
    fn outgoing(&mut self, id: u64) -> Option<&mut Outgoing> {
        self.0.get_mut(&id).map(|s| &mut s.out)
    }

    fn bytes(&self, id: u64, at: usize, len: usize) -> &[u8] {
        match self.0.get(&id).map(|s| &s.src) {
            // SAFETY: in bounds (fragments lie within the message), and the owner of the
            // borrowed slice is waiting (module invariant).
            Some(Source::Borrowed { ptr, .. }) => unsafe {
                std::slice::from_raw_parts(ptr.add(at), len)
            },
            Some(Source::Owned(v)) => &v[at..at + len],
            None => &[],
        }
    }
}

/// Everything behind the mutex.
pub(super) struct Engine {
    pub rank: usize,
    pub matcher: Matcher,
    /// `links[p]`: the link to rank `p` (`None` at our own rank, or once closed).
    pub links: Vec<Option<Link>>,
    /// Why each peer's link is gone, once it is.
    pub lost: Vec<Option<String>>,
    pub sends: Sends,
    pub next_send: u64,
    pub driver: Driver,
    /// Callers inside a blocking call.
    pub active: usize,
    pub last_active: Instant,
    /// The driver sleeps in `poll` (a poster must wake it to change what it polls for).
    pub polling: bool,
    /// Threads asleep on `Shared::changed` (a notification without sleepers costs a syscall).
    pub sleepers: usize,
    /// Sends whose last byte was written in the current pass (reused, not reallocated).
    written: Vec<u64>,
    pub closed: Option<String>,
    /// Keys of receives posted with `irecv`.
    pub irecv_keys: HashMap<u64, (MsgKey, crate::transport::Source)>,
    wake_rx: UnixStream,
    pollfds: Vec<libc::pollfd>,
    /// The peer of each link in `pollfds` (after the wake-up socket), in order.
    poll_peers: Vec<usize>,
    /// `close` has sent (or given up sending) the goodbyes and shut the sockets.
    pub flushed: bool,
    /// A link silent for longer is lost (zero: never).
    liveness: Duration,
    /// When the tick last ran, and when it runs next.
    last_tick: Instant,
    next_tick: Instant,
    /// The matcher's watermark at the last tick: receives posted before it have waited a tick.
    watermark: u64,
}

/// The engine and what its waiters wait on.
pub(super) struct Shared {
    pub state: Mutex<Engine>,
    /// Notified when a request completes, the driver resigns, or the transport closes.
    pub changed: Condvar,
    /// Wakes the helper early (shutdown).
    pub helper_cv: Condvar,
    wake_tx: UnixStream,
    pub spin: Duration,
    /// How long of `spin` passes without yielding the core (see `Shared::new`).
    pure_spin: Duration,
}

impl Shared {
    pub(super) fn new(
        rank: usize,
        links: Vec<Option<Link>>,
        spin: Duration,
        shm_spin: Duration,
        liveness: Duration,
    ) -> io::Result<Shared> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let size = links.len();
        let local_ranks = 1 + links.iter().flatten().filter(|l| l.shm.is_some()).count();
        let cores = online_cores();
        // More ranks than cores on this host: a spinning rank may hold the core of the rank it
        // waits for, so every look gives the core away.
        // With shared-memory peers, a message is a few microseconds away rather than a system
        // call and a wake-up: spin longer before sleeping (a sleep and its wake-up cost tens of
        // microseconds, more than most steps of a collective take). Past the first 2 us each
        // look yields the core (at once on a host with more ranks than cores): measured with
        // `tutti bench all_reduce -b 8 -e 8 -n 5000` on 2 pinned ranks, yielding gave 0.55 to
        // 0.68 us per call against 1.12 to 1.35 us for spinning without yielding (a thread
        // that needs the core, such as the rank's own helper, gets it at once).
        let spin = if local_ranks > 1 {
            spin.max(shm_spin)
        } else {
            spin
        };
        let pure_spin = if local_ranks > cores {
            Duration::ZERO
        } else {
            PURE_SPIN.min(spin)
        };
        Ok(Shared {
            pure_spin,
            state: Mutex::new(Engine {
                rank,
                matcher: Matcher::new(size),
                links,
                lost: vec![None; size],
                sends: Sends(HashMap::default()),
                next_send: 0,
                driver: Driver::Nobody,
                active: 0,
                last_active: Instant::now(),
                polling: false,
                sleepers: 0,
                written: Vec::new(),
                closed: None,
                irecv_keys: HashMap::default(),
                wake_rx,
                pollfds: Vec::new(),
                poll_peers: Vec::new(),
                flushed: false,
                liveness,
                last_tick: Instant::now(),
                next_tick: Instant::now() + TICK,
                watermark: 0,
            }),
            changed: Condvar::new(),
            helper_cv: Condvar::new(),
            wake_tx,
            spin,
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Engine> {
        // Every critical section leaves the engine consistent before anything can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Interrupts the driver's `poll`, if it is in one.
    pub(super) fn wake_driver(&self, e: &Engine) {
        if e.polling {
            let _ = (&self.wake_tx).write(&[1]);
        }
    }

    /// Wakes the threads asleep on `changed`, if there are any.
    pub(super) fn notify(&self, e: &Engine) {
        if e.sleepers > 0 {
            self.changed.notify_all();
        }
    }

    /// Runs the engine until `done` holds or `deadline` passes (`false` then), as the driver
    /// when there is none, else asleep until the driver completes something.
    ///
    /// Cost when `done` holds at once: no clock read (the engine's `last_active` then takes the
    /// deadline's start, the start of the caller's call); otherwise one clock read on entry, which
    /// the driver's loop starts from, and the driver's reads (one per [`CLOCK_EVERY`] passes).
    pub(super) fn run_until<'a>(
        &'a self,
        mut e: MutexGuard<'a, Engine>,
        deadline: Deadline,
        mut done: impl FnMut(&mut Engine) -> bool,
    ) -> (MutexGuard<'a, Engine>, bool) {
        e.active += 1;
        // The latest clock reading of this call (`None`: none yet).
        let mut now: Option<Instant> = None;
        let finished = loop {
            if done(&mut e) {
                break true;
            }
            let t = Instant::now();
            now = Some(t);
            if t >= deadline.instant() {
                break false;
            }
            match e.driver {
                Driver::Nobody => {
                    e.driver = Driver::Caller;
                    let (back, ok, last) = self.drive(e, deadline, &mut done, false, t);
                    e = back;
                    now = Some(last);
                    e.driver = Driver::Nobody;
                    self.notify(&e);
                    if ok {
                        break true;
                    }
                }
                Driver::Helper | Driver::Caller => {
                    self.wake_driver(&e);
                    let left = deadline.remaining().min(MAX_POLL);
                    e.sleepers += 1;
                    e = self
                        .changed
                        .wait_timeout(e, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    e.sleepers -= 1;
                    // Slept: what was read before is stale (the helper's grace counts from the
                    // end of this call).
                    now = Some(Instant::now());
                }
            }
        };
        e.active -= 1;
        // Never moved back: another thread's call may have ended later.
        let end = now.unwrap_or_else(|| deadline.started());
        e.last_active = e.last_active.max(end);
        (e, finished)
    }

    /// The driver's loop: progress, spin, sleep in `poll`. Returns when `done` holds, the
    /// deadline passes, or (`helper`) a caller arrives or the engine closes; with the engine,
    /// whether `done` held, and the last clock reading (at most [`CLOCK_EVERY`] passes old).
    /// `start`: the time now, as the caller just read it.
    fn drive<'a>(
        &'a self,
        mut e: MutexGuard<'a, Engine>,
        deadline: Deadline,
        done: &mut dyn FnMut(&mut Engine) -> bool,
        helper: bool,
        start: Instant,
    ) -> (MutexGuard<'a, Engine>, bool, Instant) {
        // The helper keeps links moving between calls: it sleeps at once, latency is the
        // callers' business.
        let spin_until = if helper { start } else { start + self.spin };
        let pure_until = start + self.pure_spin;
        let mut now = start;
        let mut passes = 0u32;
        loop {
            if e.progress() {
                self.notify(&e);
            }
            if now >= e.next_tick && e.tick(now) {
                self.notify(&e);
            }
            if done(&mut e) {
                return (e, true, now);
            }
            passes = passes.wrapping_add(1);
            // Reading the clock costs about as much as a pass over idle rings: every 8th.
            if passes.is_multiple_of(CLOCK_EVERY) {
                now = Instant::now();
            }
            let expired = passes.is_multiple_of(CLOCK_EVERY) && now >= deadline.instant();
            if expired || (helper && (e.active > 0 || e.closed.is_some())) {
                return (e, false, now);
            }
            if now < spin_until {
                drop(e);
                // A shared-memory message lands within a microsecond or two: look again at
                // once; past `pure_until` (at once on a host with more ranks than cores) give
                // the core away between looks, so as not to starve the rank we wait for.
                if now < pure_until {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                e = self.lock();
                continue;
            }
            if !e.may_sleep() {
                continue;
            }
            e.build_pollfds();
            let mut fds = std::mem::take(&mut e.pollfds);
            e.polling = true;
            drop(e);
            let wait = deadline.remaining().min(MAX_POLL);
            poll(&mut fds, wait);
            now = Instant::now();
            e = self.lock();
            e.polling = false;
            e.note_ready(&fds);
            e.pollfds = fds;
            e.drain_wake();
        }
    }

    /// The helper thread's loop: drives the engine while no caller is active, until closed.
    pub(super) fn run_helper(&self) {
        let mut e = self.lock();
        loop {
            if e.closed.is_some() && e.links.iter().all(Option::is_none) {
                return;
            }
            let idle = e.active == 0
                && e.driver == Driver::Nobody
                && e.last_active.elapsed() >= HELPER_GRACE;
            if !idle {
                e = self
                    .helper_cv
                    .wait_timeout(e, HELPER_GRACE)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            e.driver = Driver::Helper;
            let deadline = Deadline::after(MAX_POLL);
            let start = deadline.started();
            let (back, _, _) = self.drive(e, deadline, &mut |_| false, true, start);
            e = back;
            e.driver = Driver::Nobody;
            self.notify(&e);
            if e.closed.is_some() {
                return;
            }
        }
    }
}

impl Engine {
    /// The tick (see the module doc): heartbeats, the liveness check and announcements of
    /// blocked calls. Returns true if a request completed (a link was lost, or an announcement
    /// failed a receive). Cost: a pass over the links and the posted receives.
    pub(super) fn tick(&mut self, now: Instant) -> bool {
        let gap = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        self.next_tick = now + TICK;
        if self.closed.is_some() {
            return false;
        }
        // This rank did not run for a while (stopped, or starved of the CPU): what it did not
        // hear meanwhile says nothing about its peers.
        let stalled = !self.liveness.is_zero() && gap > self.liveness / 2;
        let every = if self.liveness.is_zero() {
            HEARTBEAT_EVERY
        } else {
            HEARTBEAT_EVERY.min(self.liveness / 4)
        };
        let calls = self.matcher.blocked_calls(self.watermark, MAX_ANNOUNCE);
        self.watermark = self.matcher.watermark();
        let mut completed = false;
        for peer in 0..self.links.len() {
            completed |= self.tick_link(peer, now, stalled, every, &calls);
        }
        completed
    }

    /// The tick of the link to `peer`: loses it if it has been silent for the liveness bound
    /// (its clock restarted if this rank `stalled`), else queues a heartbeat if it sent nothing
    /// for `every`, and announces the `calls` it has not announced yet. True if a request
    /// completed.
    fn tick_link(
        &mut self,
        peer: usize,
        now: Instant,
        stalled: bool,
        every: Duration,
        calls: &[(MsgKey, u128)],
    ) -> bool {
        let Some(link) = self.links[peer].as_mut() else {
            return false;
        };
        if std::mem::take(&mut link.rx_seen) || stalled {
            link.last_rx = now;
        }
        let silent = now.saturating_duration_since(link.last_rx);
        if !self.liveness.is_zero() && silent > self.liveness {
            let why = format!(
                "rank {peer} silent for {:.1} s (no heartbeat): frozen, dead or cut off",
                silent.as_secs_f64()
            );
            self.lose_link(peer, &why, false);
            return true;
        }
        if std::mem::take(&mut link.tx_seen) {
            link.last_tx = now;
        }
        if now.saturating_duration_since(link.last_tx) >= every {
            link.heartbeat_due = true;
        }
        for call in calls {
            if !link.announced.contains(call) {
                link.announce.push_back(*call);
            }
        }
        link.announced.clear();
        link.announced.extend_from_slice(calls);
        if link.heartbeat_due || !link.announce.is_empty() {
            return self.pump(peer);
        }
        false
    }

    /// One pass over every link: writes what can be written, reads what has arrived. Returns
    /// true if a request completed (waiters should look).
    pub(super) fn progress(&mut self) -> bool {
        let mut completed = false;
        for peer in 0..self.links.len() {
            completed |= self.pump(peer);
        }
        completed
    }

    /// Pumps one link both ways; a failure closes it.
    pub(super) fn pump(&mut self, peer: usize) -> bool {
        let Some(link) = self.links[peer].as_mut() else {
            return false;
        };
        let window = link.window;
        let rx = link.pump_rx(&mut self.matcher, window);
        let mut written = std::mem::take(&mut self.written);
        let tx = link.pump_tx(&mut self.matcher, &mut self.sends, &mut written);
        let completed = self.matcher.take_progress() || !written.is_empty();
        for id in written.drain(..) {
            self.finish_send(id, Ok(()));
        }
        self.written = written;
        match (rx, tx) {
            (Err(end), _) => {
                let aborted = matches!(end, RxEnd::Goodbye { abort: true, .. });
                let (why, clean) = describe_end(peer, end);
                self.lose_link(peer, &why, clean);
                if aborted && self.close_all(&why, true) {
                    // The world is aborted: this rank's pending and later calls fail with the
                    // aborting rank's reason (a call blocked on a third, frozen rank would
                    // otherwise wait out its own deadline), and the goodbyes go out now.
                    self.progress();
                }
                true
            }
            (Ok(()), Err(e)) => {
                let why =
                    format!("connection to rank {peer} lost: {e} (process killed or network cut?)");
                self.lose_link(peer, &why, false);
                true
            }
            _ => completed,
        }
    }

    /// Closes every link once (false if already closed; the first reason sticks): pending and
    /// later calls fail with `reason`, and each link queues a goodbye saying it (and whether
    /// this rank aborted), which the next passes send ahead of any data.
    pub(super) fn close_all(&mut self, reason: &str, abort: bool) -> bool {
        if self.closed.is_some() {
            return false;
        }
        self.closed = Some(reason.to_string());
        self.matcher
            .close_all(&super::closed_error(reason).to_string());
        let pending: Vec<u64> = self
            .sends
            .0
            .iter()
            .filter(|(_, s)| s.done.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in pending {
            self.finish_send(id, Err(super::closed_error(reason)));
        }
        for link in self.links.iter_mut().flatten() {
            link.queue.clear();
            link.queue_goodbye(abort, reason);
        }
        true
    }

    /// Records the outcome of send `id` (a detached send is dropped).
    pub(super) fn finish_send(&mut self, id: u64, r: Result<(), TransportError>) {
        if let Some(s) = self.sends.0.get_mut(&id) {
            if s.detached {
                self.sends.0.remove(&id);
            } else {
                s.done = Some(r);
            }
        }
    }

    /// Closes the link to `peer` (the first reason sticks): its receives and sends fail.
    pub(super) fn lose_link(&mut self, peer: usize, why: &str, clean: bool) {
        let Some(link) = self.links[peer].take() else {
            return;
        };
        let _ = link.sock.shutdown(std::net::Shutdown::Both);
        let reason = self.lost[peer]
            .get_or_insert_with(|| why.to_string())
            .clone();
        if clean || self.closed.is_some() {
            tracing::debug!(rank = self.rank, peer, "{reason}");
        } else {
            tracing::warn!(rank = self.rank, peer, addr = %link.addr, "{reason}");
        }
        self.matcher.close(peer, &reason);
        let ids: Vec<u64> = self
            .sends
            .0
            .iter()
            .filter(|(_, s)| s.peer == peer && s.done.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            let e = self.peer_error(peer);
            self.finish_send(id, Err(e));
        }
    }

    /// The error of a call that needs the link to `peer`, which is gone.
    pub(super) fn peer_error(&self, peer: usize) -> TransportError {
        if let Some(reason) = &self.closed {
            return TransportError::Closed {
                reason: reason.clone(),
            };
        }
        TransportError::PeerLost {
            peer,
            reason: self.lost[peer]
                .clone()
                .unwrap_or_else(|| "its link is closed".into()),
        }
    }

    /// Raises the sleep flags of the shared-memory links before the driver blocks; false if one
    /// of their rings changed meanwhile (the driver must look again instead of blocking).
    fn may_sleep(&mut self) -> bool {
        self.links.iter().flatten().all(|link| {
            link.shm
                .as_ref()
                .is_none_or(|shm| shm.may_sleep(&link.sock, link.tx_state == TxState::SocketFull))
        })
    }

    /// After `poll`: marks the shared-memory links whose socket has something (doorbells or
    /// the end), so that their next read drains it. `fds` is in `build_pollfds`' order.
    /// Matched by peer, not by position: a link may have closed while the driver polled
    /// without the lock.
    fn note_ready(&mut self, fds: &[libc::pollfd]) {
        for (&peer, fd) in self.poll_peers.iter().zip(fds.iter().skip(1)) {
            let link = self.links[peer].as_mut();
            if let Some(shm) = link.and_then(|l| l.shm.as_mut()) {
                shm.sock_ready |= fd.revents != 0;
            }
        }
    }

    fn build_pollfds(&mut self) {
        self.pollfds.clear();
        self.pollfds.push(libc::pollfd {
            fd: self.wake_rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        self.poll_peers.clear();
        for (peer, link) in self.links.iter().enumerate() {
            let Some(link) = link else { continue };
            self.poll_peers.push(peer);
            let mut events = libc::POLLIN;
            // A full ring waits for a doorbell, a full socket for POLLOUT.
            if link.tx_state == TxState::SocketFull && link.shm.is_none() {
                events |= libc::POLLOUT;
            }
            self.pollfds.push(libc::pollfd {
                fd: link.sock.as_raw_fd(),
                events,
                revents: 0,
            });
        }
    }

    fn drain_wake(&mut self) {
        let mut buf = [0u8; 64];
        while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// The host's online cores (not this process's affinity: a launcher that pins each rank to a
/// core of its own leaves each with one, on a host that is not oversubscribed).
fn online_cores() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

/// `poll(2)` for at most `wait` (interrupted calls just return: the caller loops).
fn poll(fds: &mut [libc::pollfd], wait: Duration) {
    let ms = wait.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs.
    unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms);
    }
}

/// The reason a link ended, and whether it ended cleanly (the peer said goodbye).
fn describe_end(peer: usize, end: RxEnd) -> (String, bool) {
    let lost = |why: &dyn std::fmt::Display| {
        format!("connection to rank {peer} lost: {why} (process killed or network cut?)")
    };
    match end {
        RxEnd::Goodbye {
            reason,
            abort: true,
        } => (format!("rank {peer} aborted: {reason}"), true),
        RxEnd::Goodbye { reason, .. } if reason.is_empty() => {
            (format!("rank {peer} left (clean shutdown)"), true)
        }
        RxEnd::Goodbye { reason, .. } => {
            (format!("rank {peer} left (clean shutdown: {reason})"), true)
        }
        RxEnd::Eof { mid_frame: false } => {
            (lost(&"it closed the connection without a goodbye"), false)
        }
        RxEnd::Eof { mid_frame: true } => {
            (lost(&"the stream ended in the middle of a frame"), false)
        }
        RxEnd::Io(e) => (lost(&e), false),
        RxEnd::Protocol(e) => (format!("protocol error from rank {peer}: {e}"), false),
    }
}
