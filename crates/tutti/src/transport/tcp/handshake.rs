//! The hello a connector sends on each new connection, the acceptor's check of it, the proofs of
//! the job secret, and both halves of the exchange (layout and status codes in the
//! [module doc](super)).

use super::time_left;
use crate::auth::{Proof, Secret, PROOF_LEN};
use crate::deadline::Deadline;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

/// First bytes of a hello.
pub const HELLO_MAGIC: [u8; 12] = *b"TUTTI-HELLO\0";
/// Version of the handshake written by this build.
pub const HELLO_VERSION: u16 = 5;
/// Length of a hello.
pub const HELLO_LEN: usize = 35 + PROOF_LEN;
/// Length of the acceptor's first answer when it goes on: status 0, flags, nonce.
pub const CHALLENGE_LEN: usize = 2 + PROOF_LEN;
/// The flag of a hello (or challenge) whose sender has the job secret.
pub const FLAG_AUTH: u8 = 1;
/// Label of the connector's proof.
pub const CLIENT_LABEL: &str = "tutti/mesh/client";
/// Label of the acceptor's proof.
pub const SERVER_LABEL: &str = "tutti/mesh/server";

/// Longest rejection reason sent in a handshake reply.
pub(super) const MAX_REJECT_REASON: usize = 255;

/// Why an acceptor refuses a hello (the status byte of its answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reject {
    BadMagic = 1,
    BadVersion = 2,
    WrongSession = 3,
    WrongSize = 4,
    BadRank = 5,
    Duplicate = 6,
    Unauthorized = 7,
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
            Reject::Unauthorized,
        ]
        .into_iter()
        .find(|r| *r as u8 == c)
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Reject::BadMagic => "not a tutti hello",
            Reject::BadVersion => "unsupported version",
            Reject::WrongSession => "wrong session",
            Reject::WrongSize => "wrong world size",
            Reject::BadRank => "bad rank",
            Reject::Duplicate => "duplicate rank",
            Reject::Unauthorized => "not authorized",
        }
    }
}

/// A connector's hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Hello {
    pub(super) version: u16,
    pub(super) session: u64,
    pub(super) size: u32,
    pub(super) from: u32,
    pub(super) to: u32,
    /// True when the connector has the job secret and will prove it.
    pub(super) auth: bool,
    pub(super) nonce: Proof,
}

impl Hello {
    pub(super) fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..12].copy_from_slice(&HELLO_MAGIC);
        b[12..14].copy_from_slice(&self.version.to_le_bytes());
        b[14..22].copy_from_slice(&self.session.to_le_bytes());
        b[22..26].copy_from_slice(&self.size.to_le_bytes());
        b[26..30].copy_from_slice(&self.from.to_le_bytes());
        b[30..34].copy_from_slice(&self.to.to_le_bytes());
        b[34] = if self.auth { FLAG_AUTH } else { 0 };
        b[35..].copy_from_slice(&self.nonce);
        b
    }

    /// Decodes a hello; `None` unless `b` is a whole hello with the right magic.
    pub(super) fn decode(b: &[u8]) -> Option<Hello> {
        let b: &[u8; HELLO_LEN] = b.try_into().ok()?;
        if b[..12] != HELLO_MAGIC {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut session = [0u8; 8];
        session.copy_from_slice(&b[14..22]);
        let mut nonce = [0u8; PROOF_LEN];
        nonce.copy_from_slice(&b[35..]);
        Some(Hello {
            version: u16::from_le_bytes([b[12], b[13]]),
            session: u64::from_le_bytes(session),
            size: u32_at(22),
            from: u32_at(26),
            to: u32_at(30),
            auth: b[34] == FLAG_AUTH,
            nonce,
        })
    }
}

/// The acceptor's first answer to an acceptable hello: its flags and nonce.
pub(super) fn challenge(auth: bool, nonce: &Proof) -> [u8; CHALLENGE_LEN] {
    let mut b = [0u8; CHALLENGE_LEN];
    b[1] = if auth { FLAG_AUTH } else { 0 };
    b[2..].copy_from_slice(nonce);
    b
}

/// The acceptor's check of a hello (`bytes`: all that arrived): the connector's rank, or why not.
/// `secret` is this rank's; the hello must say it has one exactly when this rank does.
pub(super) fn check_hello(
    bytes: &[u8],
    me: usize,
    size: usize,
    session: u64,
    secret: Option<&Secret>,
    links: &[Option<TcpStream>],
) -> Result<usize, (Reject, String)> {
    let Some(h) = Hello::decode(bytes) else {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(16)]).into_owned();
        let magic_ok = bytes.len() >= HELLO_MAGIC.len() && bytes[..12] == HELLO_MAGIC;
        return Err(match bytes.get(12..14) {
            Some(v) if magic_ok && u16::from_le_bytes([v[0], v[1]]) != HELLO_VERSION => {
                let v = u16::from_le_bytes([v[0], v[1]]);
                (
                    Reject::BadVersion,
                    format!("version {v} (this build speaks {HELLO_VERSION})"),
                )
            }
            _ if magic_ok => (
                Reject::BadMagic,
                format!("a hello of {} bytes, not {HELLO_LEN}", bytes.len()),
            ),
            _ => (
                Reject::BadMagic,
                format!("bad magic (began with {shown:?})"),
            ),
        });
    };
    let (from, to) = (h.from as usize, h.to as usize);
    let (code, why) = if h.version != HELLO_VERSION {
        let v = h.version;
        (
            Reject::BadVersion,
            format!("version {v} (this build speaks {HELLO_VERSION})"),
        )
    } else if h.session != session {
        (
            Reject::WrongSession,
            format!("session {:#x} is not this job's", h.session),
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
    } else if h.auth && secret.is_none() {
        (
            Reject::Unauthorized,
            format!("rank {from} has a job secret (TUTTI_SECRET) and rank {me} has none"),
        )
    } else if !h.auth && secret.is_some() {
        (
            Reject::Unauthorized,
            format!(
                "no proof of the job secret: rank {me} requires TUTTI_SECRET, and the connector \
                 (saying it is rank {from}) has none"
            ),
        )
    } else {
        return Ok(from);
    };
    Err((code, why))
}

/// Checks the connector's proof: `hello` and `challenge` are the bytes both sides sent.
pub(super) fn proof_is_valid(
    secret: &Secret,
    hello: &[u8],
    challenge: &[u8],
    proof: &[u8],
) -> bool {
    secret.verify(CLIENT_LABEL, &[hello, challenge], proof)
}

/// The acceptor's answer to a valid proof: status 0 and its own proof.
pub(super) fn acceptance(secret: &Secret, hello: &[u8], challenge: &[u8]) -> [u8; 1 + PROOF_LEN] {
    let mut b = [0u8; 1 + PROOF_LEN];
    b[1..].copy_from_slice(&secret.prove(SERVER_LABEL, &[hello, challenge]));
    b
}

pub(super) enum HandshakeError {
    /// The listener answered and refused, or failed to prove the secret: retrying cannot help.
    Refused(String),
    Io(io::Error),
}

/// The connector's half of the handshake: sends the hello, reads the challenge, proves the
/// secret (if this rank has one) and checks the acceptor's proof.
pub(super) fn exchange_hello(
    s: &TcpStream,
    hello: &Hello,
    secret: Option<&Secret>,
    deadline: Deadline,
) -> Result<(), HandshakeError> {
    let io = HandshakeError::Io;
    s.set_write_timeout(Some(time_left(deadline).map_err(io)?))
        .map_err(io)?;
    let hello_bytes = hello.encode();
    (&*s).write_all(&hello_bytes).map_err(io)?;
    read_status(s, deadline)?;
    let mut challenge = [0u8; CHALLENGE_LEN];
    read_exact_by(s, &mut challenge[1..], deadline).map_err(io)?;
    let theirs = challenge[1];
    let secret = match (secret, theirs) {
        (None, 0) => None,
        (Some(secret), FLAG_AUTH) => Some(secret),
        (None, FLAG_AUTH) => {
            return Err(HandshakeError::Refused(
                "the listener requires the job secret (TUTTI_SECRET), and this rank has none"
                    .into(),
            ))
        }
        (Some(_), 0) => {
            return Err(HandshakeError::Refused(
                "the listener did not ask for a proof of the job secret: it is not a rank of \
                 this job (or one without TUTTI_SECRET)"
                    .into(),
            ))
        }
        (_, f) => {
            return Err(HandshakeError::Refused(format!(
                "the listener does not speak tutti (flags {f:#04x})"
            )))
        }
    };
    if let Some(secret) = secret {
        let proof = secret.prove(CLIENT_LABEL, &[&hello_bytes, &challenge]);
        (&*s).write_all(&proof).map_err(io)?;
        read_status(s, deadline)?;
        let mut theirs = [0u8; PROOF_LEN];
        read_exact_by(s, &mut theirs, deadline).map_err(io)?;
        if !secret.verify(SERVER_LABEL, &[&hello_bytes, &challenge], &theirs) {
            return Err(HandshakeError::Refused(
                "the listener's proof of the job secret is wrong: it does not know this job's \
                 secret"
                    .into(),
            ));
        }
    }
    s.set_write_timeout(None).map_err(io)?;
    Ok(())
}

/// Reads a status byte: `Ok` for 0, the refusal (with its reason) otherwise.
fn read_status(s: &TcpStream, deadline: Deadline) -> Result<(), HandshakeError> {
    let io = HandshakeError::Io;
    let mut status = [0u8; 1];
    read_exact_by(s, &mut status, deadline).map_err(io)?;
    if status[0] == 0 {
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

/// Where an accepted connection is in its handshake.
pub(super) enum Phase {
    /// Reading the hello.
    Hello,
    /// The hello of rank `peer` was good and challenged: reading its proof.
    Proof {
        peer: usize,
        hello: [u8; HELLO_LEN],
        challenge: [u8; CHALLENGE_LEN],
    },
}

/// An accepted connection whose handshake is still going on.
pub(super) struct PendingHello {
    pub(super) stream: TcpStream,
    pub(super) addr: SocketAddr,
    pub(super) buf: [u8; HELLO_LEN],
    pub(super) filled: usize,
    pub(super) give_up: Instant,
    pub(super) phase: Phase,
}

/// What reading a pending hello gave.
pub(super) enum HelloProgress {
    Waiting,
    Complete,
    Gone(String),
}

impl PendingHello {
    /// Bytes the current phase reads.
    fn want(&self) -> usize {
        match self.phase {
            Phase::Hello => HELLO_LEN,
            Phase::Proof { .. } => PROOF_LEN,
        }
    }

    /// Reads what has arrived (the stream is non-blocking). A hello is complete as soon as its
    /// magic or version is wrong, so a stranger is answered without waiting for more.
    pub(super) fn poll(&mut self) -> HelloProgress {
        let want = self.want();
        loop {
            let Some(room) = self.buf.get_mut(self.filled..want) else {
                return HelloProgress::Complete;
            };
            match (&self.stream).read(room) {
                Ok(0) => {
                    return HelloProgress::Gone(format!(
                        "closed the connection after {} bytes of its {}",
                        self.filled,
                        self.what()
                    ))
                }
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return HelloProgress::Gone(format!("read failed: {e}")),
            }
            if self.filled == want {
                return HelloProgress::Complete;
            }
            if matches!(self.phase, Phase::Hello) {
                let m = self.filled.min(HELLO_MAGIC.len());
                if self.buf[..m] != HELLO_MAGIC[..m] {
                    return HelloProgress::Complete;
                }
                if self.filled >= 14 && self.buf[12..14] != HELLO_VERSION.to_le_bytes() {
                    return HelloProgress::Complete;
                }
            }
            return HelloProgress::Waiting;
        }
    }

    /// What the current phase waits for, for messages.
    pub(super) fn what(&self) -> &'static str {
        match self.phase {
            Phase::Hello => "hello",
            Phase::Proof { .. } => "proof of the job secret",
        }
    }
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

/// The fuzz target of the hello (see `crate::fuzzing`): decodes `data` as a hello and checks it
/// as rank 1 of 4 would, with and without a secret. Whatever decodes round-trips; an admitted
/// connector is a rank above 1 and below 4, and a refusal's reason fits its reply.
pub(crate) fn fuzz_hello(data: &[u8]) {
    if let Some(h) = Hello::decode(data) {
        assert_eq!(Hello::decode(&h.encode()), Some(h), "hello round trip");
    }
    let none: Vec<Option<TcpStream>> = (0..4).map(|_| None).collect();
    let secret = Secret::new(b"fuzzing-secret-0123456789".to_vec()).ok();
    for s in [None, secret.as_ref()] {
        match check_hello(data, 1, 4, 0x5e55, s, &none) {
            Ok(peer) => assert!((2..4).contains(&peer), "admitted rank {peer}"),
            Err((code, why)) => {
                assert_eq!(Reject::from_code(code as u8), Some(code));
                assert!(!why.is_empty());
            }
        }
    }
}

/// Hellos to start the fuzzer from: accepted ones, with and without the secret flag, and one
/// of each refusal.
pub(crate) fn fuzz_hello_seeds() -> Vec<Vec<u8>> {
    let h = Hello {
        version: HELLO_VERSION,
        session: 0x5e55,
        size: 4,
        from: 3,
        to: 1,
        auth: true,
        nonce: [9; PROOF_LEN],
    };
    vec![
        h.encode().to_vec(),
        Hello { auth: false, ..h }.encode().to_vec(),
        Hello { session: 1, ..h }.encode().to_vec(),
        Hello { from: 0, ..h }.encode().to_vec(),
        Hello { version: 3, ..h }.encode()[..34].to_vec(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const SESSION: u64 = 0x5eed;

    fn hello(from: u32, to: u32) -> Hello {
        Hello {
            version: HELLO_VERSION,
            session: SESSION,
            size: 4,
            from,
            to,
            auth: false,
            nonce: [5; PROOF_LEN],
        }
    }

    fn verdict(bytes: &[u8], links: &[Option<TcpStream>]) -> Result<usize, Reject> {
        check_hello(bytes, 1, 4, SESSION, None, links).map_err(|(code, _)| code)
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
        // A hello of the previous version (34 bytes) is named as such.
        let mut v3 = h.encode()[..34].to_vec();
        v3[12] = 3;
        assert_eq!(verdict(&v3, &none), Err(Reject::BadVersion));
        assert_eq!(verdict(&h.encode()[..40], &none), Err(Reject::BadMagic));
        // Authentication must match on both sides.
        let secret = Secret::new(b"0123456789abcdef".to_vec()).unwrap();
        let with = |bytes: &[u8], s: Option<&Secret>| {
            check_hello(bytes, 1, 4, SESSION, s, &none).map_err(|(code, _)| code)
        };
        assert_eq!(with(&h.encode(), Some(&secret)), Err(Reject::Unauthorized));
        let authed = Hello { auth: true, ..h };
        assert_eq!(with(&authed.encode(), None), Err(Reject::Unauthorized));
        assert_eq!(with(&authed.encode(), Some(&secret)), Ok(3));
        for code in 1..=7 {
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
}
