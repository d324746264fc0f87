//! The receiving side of a link: the reader thread that files every arriving frame in the
//! mailbox, and frame decoding from the socket (payloads into recycled buffers).

use super::link::{Link, MAX_GOODBYE_REASON};
use crate::transport::frame::{FrameHeader, HEADER_LEN};
use crate::transport::mailbox::Mailbox;
use crate::transport::pool::BufferPool;
use crate::transport::Message;
use std::fmt;
use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::Arc;

/// What a reader got.
pub(super) enum Incoming {
    Message(Message),
    /// The peer is leaving; `abort`: because a call of its failed (the reason says which).
    Goodbye {
        reason: String,
        abort: bool,
    },
}

/// Why a reader stopped.
pub(super) enum ReadFailure {
    Eof { mid_frame: bool },
    Io(io::Error),
    Protocol(String),
    Local(String),
}

/// The reader thread of one link: files every message in the mailbox until the stream ends, then
/// closes the peer's slot with why (messages read before stay available).
pub(super) fn run_reader(link: Arc<Link>, mut stream: TcpStream, mailbox: Arc<Mailbox>) {
    let peer = link.peer;
    let lost = |why: &dyn fmt::Display| {
        format!("connection to rank {peer} lost: {why} (process killed or network cut?)")
    };
    let (why, clean) = loop {
        match read_frame(&mut stream, &link.pool) {
            Ok(Incoming::Message(m)) => mailbox.deliver(peer, m),
            Ok(Incoming::Goodbye {
                reason,
                abort: true,
            }) => break (format!("rank {peer} aborted: {reason}"), true),
            Ok(Incoming::Goodbye { reason, .. }) if reason.is_empty() => {
                break (format!("rank {peer} left (clean shutdown)"), true)
            }
            Ok(Incoming::Goodbye { reason, .. }) => {
                break (format!("rank {peer} left (clean shutdown: {reason})"), true)
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
    let reason = link.reader_stopped(why, clean);
    mailbox.close(peer, &reason);
}

/// Reads one frame; a message's payload goes into a buffer from `pool`.
pub(super) fn read_frame(r: &mut impl Read, pool: &BufferPool) -> Result<Incoming, ReadFailure> {
    let mut head = [0u8; HEADER_LEN];
    match read_full(r, &mut head).map_err(ReadFailure::Io)? {
        0 => return Err(ReadFailure::Eof { mid_frame: false }),
        HEADER_LEN => {}
        _ => return Err(ReadFailure::Eof { mid_frame: true }),
    }
    let (h, extension) =
        FrameHeader::decode(&head).map_err(|e| ReadFailure::Protocol(e.to_string()))?;
    read_payload(r, extension as u64, u64::MAX, Vec::new())?;
    match h.key() {
        Some(key) => {
            // A length beyond usize gets a fresh buffer, and read_payload reports it.
            let buf = pool.take(usize::try_from(h.payload_len).unwrap_or(usize::MAX));
            Ok(Incoming::Message(Message {
                key,
                fingerprint: h.fingerprint,
                payload: read_payload(r, h.payload_len, u64::MAX, buf)?,
            }))
        }
        None => {
            let text = read_payload(r, h.payload_len, MAX_GOODBYE_REASON as u64, Vec::new())?;
            Ok(Incoming::Goodbye {
                reason: String::from_utf8_lossy(&text).into_owned(),
                abort: h.is_abort(),
            })
        }
    }
}

/// Reads exactly `len` bytes into `v` (empty; grown as needed; no size cap beyond `max`:
/// messages may be GiBs).
fn read_payload(
    r: &mut impl Read,
    len: u64,
    max: u64,
    mut v: Vec<u8>,
) -> Result<Vec<u8>, ReadFailure> {
    if len > max {
        return Err(ReadFailure::Protocol(format!(
            "a goodbye of {len} bytes (at most {max} expected)"
        )));
    }
    let n = usize::try_from(len)
        .map_err(|_| ReadFailure::Local(format!("a {len}-byte message does not fit in memory")))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Lane, MsgKey};
    use std::io::Cursor;

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
        let mut goodbye = FrameHeader::goodbye(true);
        goodbye.payload_len = 3;
        let mut bytes = frame(FrameHeader::data(key, 42, 5), b"hello");
        bytes.extend(frame(goodbye, b"bye"));
        let mut r = Cursor::new(bytes.clone());
        match read_frame(&mut r, &BufferPool::default()) {
            Ok(Incoming::Message(m)) => {
                assert_eq!(
                    (m.key, m.fingerprint, &m.payload[..]),
                    (key, 42, &b"hello"[..])
                )
            }
            _ => panic!("expected a message"),
        }
        assert!(matches!(
            read_frame(&mut r, &BufferPool::default()),
            Ok(Incoming::Goodbye { reason, abort: true }) if reason == "bye"
        ));
        assert!(matches!(
            read_frame(&mut r, &BufferPool::default()),
            Err(ReadFailure::Eof { mid_frame: false })
        ));
        for cut in [1, HEADER_LEN - 1, HEADER_LEN + 2] {
            let mut r = Cursor::new(&bytes[..cut]);
            assert!(matches!(
                read_frame(&mut r, &BufferPool::default()),
                Err(ReadFailure::Eof { mid_frame: true })
            ));
        }
        let mut r = Cursor::new(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789abcdef".to_vec());
        assert!(matches!(
            read_frame(&mut r, &BufferPool::default()),
            Err(ReadFailure::Protocol(_))
        ));
        goodbye.payload_len = MAX_GOODBYE_REASON as u64 + 1;
        let mut r = Cursor::new(goodbye.encode().to_vec());
        assert!(matches!(
            read_frame(&mut r, &BufferPool::default()),
            Err(ReadFailure::Protocol(_))
        ));
    }
}
