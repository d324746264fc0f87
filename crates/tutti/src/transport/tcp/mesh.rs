//! Forming the mesh: rank `i` connects to every rank below it and accepts from every rank
//! above it, each new connection opening with a hello (see the [module doc](super) for the
//! protocol and [`super::handshake`] for the wire format and its checks).

use super::handshake::{
    acceptance, challenge, check_hello, exchange_hello, proof_is_valid, HandshakeError, Hello,
    HelloProgress, PendingHello, Phase, Reject, HELLO_LEN, HELLO_VERSION, MAX_REJECT_REASON,
};
use super::{
    apply_buffers, lock, time_left, truncate_utf8, TcpOptions, TcpTransport, THREAD_STACK,
};
use crate::auth::Secret;
use crate::deadline::Deadline;
use crate::transport::shm;
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an accepted connection may take for its handshake (hello and proof).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
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
/// Connections the kernel queues before `accept`.
const LISTEN_BACKLOG: i32 = 1024;

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
    /// `r` listens, by `deadline`, without a job secret (see
    /// [`connect_mesh_with_secret`](Self::connect_mesh_with_secret)). Every rank must pass the
    /// same `addrs` and `session`.
    pub fn connect_mesh(
        self,
        rank: usize,
        addrs: &[SocketAddr],
        session: u64,
        opts: &TcpOptions,
        deadline: Deadline,
    ) -> Result<Arc<TcpTransport>, MeshError> {
        self.connect_mesh_with_secret(rank, addrs, session, None, opts, deadline)
    }

    /// As [`connect_mesh`](Self::connect_mesh); with a `secret`, every link proves it both
    /// ways (see [`crate::auth`]), and a connection that cannot is refused. Every rank must pass
    /// the same `secret` (or none).
    pub fn connect_mesh_with_secret(
        self,
        rank: usize,
        addrs: &[SocketAddr],
        session: u64,
        secret: Option<&Secret>,
        opts: &TcpOptions,
        deadline: Deadline,
    ) -> Result<Arc<TcpTransport>, MeshError> {
        check_mesh_args(rank, addrs)?;
        let plan = MeshPlan {
            rank,
            addrs,
            session,
            secret,
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
        let pipes =
            shm::setup::negotiate(rank, session, &streams, &opts.shm, deadline).map_err(|e| {
                MeshError::Incomplete {
                    rank,
                    size: addrs.len(),
                    waited: deadline.elapsed(),
                    failures: vec![PeerFailure {
                        peer: e.peer,
                        addr: addrs[e.peer],
                        why: e.why,
                    }],
                }
            })?;
        let t = TcpTransport::start(rank, addrs, streams, pipes, opts)?;
        tracing::debug!(rank, size = addrs.len(), "tcp mesh formed");
        Ok(t)
    }
}

/// What every part of `connect_mesh` needs to know.
struct MeshPlan<'a> {
    rank: usize,
    addrs: &'a [SocketAddr],
    session: u64,
    secret: Option<&'a Secret>,
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

    fn hello(&self, to: usize, nonce: crate::auth::Proof) -> Hello {
        Hello {
            version: HELLO_VERSION,
            session: self.session,
            size: self.size() as u32,
            from: self.rank as u32,
            to: to as u32,
            auth: self.secret.is_some(),
            nonce,
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
        let nonce = crate::auth::nonce().map_err(|e| format!("no random nonce: {e}"))?;
        let stream = dial(plan, plan.addrs[peer])?;
        match exchange_hello(
            &stream,
            &plan.hello(peer, nonce),
            plan.secret,
            plan.deadline,
        ) {
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

/// Accepts from every rank above ours until all came, the deadline passes or the mesh is
/// doomed; `result[p]` is rank `p`'s stream.
fn accept_higher(listener: &TcpListener, plan: &MeshPlan) -> Vec<Option<TcpStream>> {
    let mut links: Vec<Option<TcpStream>> = (0..plan.size()).map(|_| None).collect();
    let mut missing = plan.size() - plan.rank - 1;
    let mut pending: Vec<PendingHello> = Vec::new();
    let mut over_limit = OverLimit::default();
    while missing > 0 && !plan.deadline.expired() && !plan.doomed() {
        let accepted = accept_one(listener, plan, &mut pending, &mut over_limit);
        let mut i = 0;
        let mut progressed = false;
        while i < pending.len() {
            match pending[i].poll() {
                HelloProgress::Waiting if Instant::now() < pending[i].give_up => i += 1,
                HelloProgress::Waiting => {
                    let p = pending.swap_remove(i);
                    let why = format!(
                        "sent no complete {} within {HANDSHAKE_TIMEOUT:.0?}",
                        p.what()
                    );
                    let code = match p.phase {
                        Phase::Hello => Reject::BadMagic,
                        Phase::Proof { .. } => Reject::Unauthorized,
                    };
                    reject(plan, p, code, why);
                }
                HelloProgress::Gone(why) => {
                    let p = pending.swap_remove(i);
                    tracing::warn!(rank = plan.rank, from = %p.addr, "dropped a connection: {why}");
                }
                HelloProgress::Complete => {
                    progressed = true;
                    let p = pending.swap_remove(i);
                    match step(plan, p, &mut links) {
                        Step::Admitted(peer) => {
                            tracing::debug!(rank = plan.rank, peer, "accepted link");
                            missing -= 1;
                        }
                        Step::Challenged(p) => pending.push(*p),
                        Step::Dropped => {}
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

/// Connections refused because too many were in their handshake, logged at most once a second
/// with their count (a flood must not flood the log too).
#[derive(Default)]
struct OverLimit {
    unlogged: u64,
    last_log: Option<Instant>,
}

impl OverLimit {
    fn note(&mut self, plan: &MeshPlan, from: SocketAddr) {
        self.unlogged += 1;
        if self
            .last_log
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!(
            rank = plan.rank, %from,
            "refused {} connection(s) since the last report: {MAX_PENDING_HELLOS} connections \
             are in their handshake already",
            self.unlogged
        );
        self.unlogged = 0;
        self.last_log = Some(Instant::now());
    }
}

/// Accepts one connection if one is waiting; true if it did.
fn accept_one(
    listener: &TcpListener,
    plan: &MeshPlan,
    pending: &mut Vec<PendingHello>,
    over_limit: &mut OverLimit,
) -> bool {
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
        drop(stream);
        over_limit.note(plan, addr);
        return true;
    }
    if let Err(e) = stream.set_nonblocking(true) {
        tracing::warn!(rank = plan.rank, from = %addr, "dropped a connection: {e}");
        return true;
    }
    let give_up = Instant::now() + HANDSHAKE_TIMEOUT.min(plan.deadline.remaining());
    pending.push(PendingHello {
        stream,
        addr,
        buf: [0; HELLO_LEN],
        filled: 0,
        give_up,
        phase: Phase::Hello,
    });
    true
}

/// What became of a connection whose hello or proof is complete.
enum Step {
    Admitted(usize),
    /// Challenged: its proof is awaited.
    Challenged(Box<PendingHello>),
    Dropped,
}

/// Checks a complete hello (and challenges it when this rank has a secret) or a complete proof
/// (and admits it).
fn step(plan: &MeshPlan, mut p: PendingHello, links: &mut [Option<TcpStream>]) -> Step {
    let hello_bytes = match std::mem::replace(&mut p.phase, Phase::Hello) {
        Phase::Hello => None,
        Phase::Proof {
            peer,
            hello,
            challenge,
        } => Some((peer, hello, challenge)),
    };
    let Some((peer, hello, challenge)) = hello_bytes else {
        let peer = match check_hello(
            &p.buf[..p.filled],
            plan.rank,
            plan.size(),
            plan.session,
            plan.secret,
            links,
        ) {
            Ok(peer) => peer,
            Err((code, why)) => {
                reject(plan, p, code, why);
                return Step::Dropped;
            }
        };
        let nonce = match crate::auth::nonce() {
            Ok(n) => n,
            Err(e) => {
                reject(
                    plan,
                    p,
                    Reject::Unauthorized,
                    format!("no random nonce here: {e}"),
                );
                return Step::Dropped;
            }
        };
        let answer = challenge(plan.secret.is_some(), &nonce);
        if plan.secret.is_none() {
            return admit(plan, p, peer, &answer, links);
        }
        // A fresh socket's send buffer takes these few bytes at once.
        if !matches!((&p.stream).write(&answer), Ok(n) if n == answer.len()) {
            tracing::warn!(rank = plan.rank, from = %p.addr, "could not send the challenge");
            return Step::Dropped;
        }
        p.phase = Phase::Proof {
            peer,
            hello: p.buf,
            challenge: answer,
        };
        p.filled = 0;
        return Step::Challenged(Box::new(p));
    };
    let Some(secret) = plan.secret else {
        return Step::Dropped;
    };
    if !proof_is_valid(secret, &hello, &challenge, &p.buf[..p.filled]) {
        let why = format!(
            "wrong proof of the job secret from a connector saying it is rank {peer} (another \
             job, or a stranger)"
        );
        reject(plan, p, Reject::Unauthorized, why);
        return Step::Dropped;
    }
    if links.get(peer).is_some_and(Option::is_some) {
        let why = format!("rank {peer} is already connected");
        reject(plan, p, Reject::Duplicate, why);
        return Step::Dropped;
    }
    admit(
        plan,
        p,
        peer,
        &acceptance(secret, &hello, &challenge),
        links,
    )
}

/// Sends `answer` (the acceptance) and keeps the link of `peer`.
fn admit(
    plan: &MeshPlan,
    p: PendingHello,
    peer: usize,
    answer: &[u8],
    links: &mut [Option<TcpStream>],
) -> Step {
    let answered = p
        .stream
        .set_nonblocking(false)
        .and_then(|()| p.stream.set_write_timeout(Some(time_left(plan.deadline)?)))
        .and_then(|()| (&p.stream).write_all(answer))
        .and_then(|()| p.stream.set_write_timeout(None));
    match (answered, links.get_mut(peer)) {
        (Ok(()), Some(slot)) => {
            *slot = Some(p.stream);
            Step::Admitted(peer)
        }
        (Ok(()), None) => Step::Dropped,
        (Err(e), _) => {
            let from = p.addr;
            tracing::warn!(rank = plan.rank, peer, %from, "could not answer the hello: {e}");
            Step::Dropped
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
