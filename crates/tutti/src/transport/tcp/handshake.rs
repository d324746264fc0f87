//! The hello a connector sends on each new connection, the acceptor's check of it, and both
//! halves of the exchange (layout and status codes in the [module doc](super)).

use super::time_left;
use crate::deadline::Deadline;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

/// First bytes of a hello.
pub const HELLO_MAGIC: [u8; 12] = *b"TUTTI-HELLO\0";
/// Version of the handshake written by this build.
pub const HELLO_VERSION: u16 = 3;
/// Length of a hello.
pub const HELLO_LEN: usize = 34;

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

    pub(super) fn name(self) -> &'static str {
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
pub(super) struct Hello {
    pub(super) version: u16,
    pub(super) session: u64,
    pub(super) size: u32,
    pub(super) from: u32,
    pub(super) to: u32,
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
pub(super) fn check_hello(
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

pub(super) enum HandshakeError {
    /// The listener answered and refused: retrying cannot help.
    Refused(String),
    Io(io::Error),
}

/// The connector's half of the handshake: sends the hello, reads the verdict.
pub(super) fn exchange_hello(
    s: &TcpStream,
    hello: &Hello,
    deadline: Deadline,
) -> Result<(), HandshakeError> {
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
pub(super) struct PendingHello {
    pub(super) stream: TcpStream,
    pub(super) addr: SocketAddr,
    pub(super) buf: [u8; HELLO_LEN],
    pub(super) filled: usize,
    pub(super) give_up: Instant,
}

/// What reading a pending hello gave.
pub(super) enum HelloProgress {
    Waiting,
    Complete,
    Gone(String),
}

impl PendingHello {
    /// Reads what has arrived (the stream is non-blocking).
    pub(super) fn poll(&mut self) -> HelloProgress {
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
}
