//! The wire format of the TCP store: pure encoding and decoding, no I/O.
//!
//! A connection opens with a hello in each direction, then carries request/response pairs, one
//! at a time, each in a length-prefixed frame. All integers are little-endian.
//!
//! ```text
//! hello      magic b"TUTTISTO" (8 bytes), version u16          client -> server, then echoed back
//! frame      body_len u32 (<= MAX_FRAME), body
//! key        len u32 (<= MAX_KEY_LEN), UTF-8 bytes
//! bytes      len u32 (<= MAX_VALUE_LEN), bytes
//! keys       count u32, count x key
//!
//! request body: op u8, then
//!   1 SET     key, bytes
//!   2 GET     wait_ms u32, key          wait_ms: how long the server may wait (the client's
//!   3 ADD     key, delta i64                     remaining deadline, floored to milliseconds)
//!   4 WAIT    wait_ms u32, keys
//!   5 CHECK   keys
//!   6 DELETE  key
//! response body: status u8, then
//!   0 DONE                              (SET, WAIT)
//!   1 VALUE   bytes                     (GET)
//!   2 COUNTER i64                       (ADD)
//!   3 FLAG    u8 (0 or 1)               (CHECK, DELETE)
//!   4 TIMEOUT keys                      the keys still missing when wait_ms ran out
//!   5 ERROR   bytes (UTF-8 message)     the request was refused; the connection stays usable
//!   6 CLOSED                            the server is shutting down
//! ```
//!
//! Every length is checked against its limit before anything is allocated, and the frame length
//! bounds the sum of the lengths inside it, so a stranger's bytes cannot make either side allocate
//! more than [`MAX_FRAME`].

use super::store::{MAX_KEY_LEN, MAX_VALUE_LEN};
use std::time::Duration;

/// The first bytes of every store connection, in both directions.
pub const MAGIC: [u8; 8] = *b"TUTTISTO";
/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Length of a hello.
pub const HELLO_LEN: usize = 10;
/// The largest frame body: one maximal value plus one maximal key plus headers.
pub const MAX_FRAME: usize = MAX_VALUE_LEN + MAX_KEY_LEN + 64;

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Set { key: String, value: Vec<u8> },
    Get { key: String, wait: Duration },
    Add { key: String, delta: i64 },
    Wait { keys: Vec<String>, wait: Duration },
    Check { keys: Vec<String> },
    Delete { key: String },
}

/// A response from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Done,
    Value(Vec<u8>),
    Counter(i64),
    Flag(bool),
    Timeout(Vec<String>),
    Error(String),
    Closed,
}

/// Bytes that do not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// The hello this build sends.
pub fn hello() -> [u8; HELLO_LEN] {
    let mut h = [0; HELLO_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Checks a peer's hello: the magic, then the version.
pub fn check_hello(h: &[u8; HELLO_LEN]) -> Result<(), Malformed> {
    if h[..8] != MAGIC {
        return Err(Malformed(format!(
            "not a tutti store peer (first bytes {:?})",
            String::from_utf8_lossy(h)
        )));
    }
    let v = u16::from_le_bytes([h[8], h[9]]);
    if v != VERSION {
        return Err(Malformed(format!(
            "store protocol version {v}, this build speaks {VERSION}"
        )));
    }
    Ok(())
}

/// Decodes a frame's length prefix, enforcing [`MAX_FRAME`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, Malformed> {
    let n = u32::from_le_bytes(prefix) as usize;
    if n > MAX_FRAME {
        return Err(Malformed(format!(
            "frame of {n} bytes exceeds the {MAX_FRAME}-byte limit"
        )));
    }
    Ok(n)
}

impl Request {
    /// The operation's name, for messages.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Set { .. } => "set",
            Request::Get { .. } => "get",
            Request::Add { .. } => "add",
            Request::Wait { .. } => "wait",
            Request::Check { .. } => "check",
            Request::Delete { .. } => "delete",
        }
    }

    /// The keys the request is about, for messages.
    pub fn keys(&self) -> Vec<String> {
        match self {
            Request::Set { key, .. }
            | Request::Get { key, .. }
            | Request::Add { key, .. }
            | Request::Delete { key } => vec![key.clone()],
            Request::Wait { keys, .. } | Request::Check { keys } => keys.clone(),
        }
    }

    /// The whole frame: length prefix and body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::frame();
        match self {
            Request::Set { key, value } => w.u8(1).str(key).bytes(value),
            Request::Get { key, wait } => w.u8(2).millis(*wait).str(key),
            Request::Add { key, delta } => w.u8(3).str(key).i64(*delta),
            Request::Wait { keys, wait } => w.u8(4).millis(*wait).strs(keys),
            Request::Check { keys } => w.u8(5).strs(keys),
            Request::Delete { key } => w.u8(6).str(key),
        };
        w.finish()
    }

    /// Decodes a frame body.
    pub fn decode(body: &[u8]) -> Result<Request, Malformed> {
        let mut r = Reader { buf: body };
        let req = match r.u8()? {
            1 => Request::Set {
                key: r.key()?,
                value: r.bytes(MAX_VALUE_LEN)?,
            },
            2 => Request::Get {
                wait: r.millis()?,
                key: r.key()?,
            },
            3 => Request::Add {
                key: r.key()?,
                delta: r.i64()?,
            },
            4 => Request::Wait {
                wait: r.millis()?,
                keys: r.keys()?,
            },
            5 => Request::Check { keys: r.keys()? },
            6 => Request::Delete { key: r.key()? },
            op => return Err(Malformed(format!("unknown request op {op}"))),
        };
        r.end()?;
        Ok(req)
    }
}

impl Response {
    /// The whole frame: length prefix and body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::frame();
        match self {
            Response::Done => w.u8(0),
            Response::Value(v) => w.u8(1).bytes(v),
            Response::Counter(c) => w.u8(2).i64(*c),
            Response::Flag(f) => w.u8(3).u8(u8::from(*f)),
            Response::Timeout(keys) => w.u8(4).strs(keys),
            Response::Error(msg) => w.u8(5).bytes(msg.as_bytes()),
            Response::Closed => w.u8(6),
        };
        w.finish()
    }

    /// Decodes a frame body.
    pub fn decode(body: &[u8]) -> Result<Response, Malformed> {
        let mut r = Reader { buf: body };
        let resp = match r.u8()? {
            0 => Response::Done,
            1 => Response::Value(r.bytes(MAX_VALUE_LEN)?),
            2 => Response::Counter(r.i64()?),
            3 => match r.u8()? {
                0 => Response::Flag(false),
                1 => Response::Flag(true),
                b => return Err(Malformed(format!("flag byte {b} is neither 0 nor 1"))),
            },
            4 => Response::Timeout(r.keys()?),
            5 => Response::Error(String::from_utf8_lossy(&r.bytes(MAX_VALUE_LEN)?).into_owned()),
            6 => Response::Closed,
            s => return Err(Malformed(format!("unknown response status {s}"))),
        };
        r.end()?;
        Ok(resp)
    }
}

/// Appends fields to a frame whose length prefix is filled in by `finish`.
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn frame() -> Writer {
        Writer {
            buf: vec![0; 4], // length prefix, patched by `finish`
        }
    }

    fn u8(&mut self, v: u8) -> &mut Writer {
        self.buf.push(v);
        self
    }

    fn u32(&mut self, v: u32) -> &mut Writer {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn i64(&mut self, v: i64) -> &mut Writer {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A duration in whole milliseconds, saturating at `u32::MAX` (49 days).
    fn millis(&mut self, d: Duration) -> &mut Writer {
        self.u32(u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
    }

    /// Callers keep lengths within the limits (checked before encoding), so they fit in u32.
    fn bytes(&mut self, v: &[u8]) -> &mut Writer {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(v);
        self
    }

    fn str(&mut self, s: &str) -> &mut Writer {
        self.bytes(s.as_bytes())
    }

    fn strs(&mut self, keys: &[String]) -> &mut Writer {
        self.u32(u32::try_from(keys.len()).unwrap_or(u32::MAX));
        for k in keys {
            self.str(k);
        }
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        let body = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&body.to_le_bytes());
        std::mem::take(&mut self.buf)
    }
}

/// Reads fields from a frame body, failing on any overrun.
struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Malformed> {
        if n > self.buf.len() {
            return Err(Malformed(format!(
                "truncated frame: field of {n} bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, Malformed> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn millis(&mut self) -> Result<Duration, Malformed> {
        Ok(Duration::from_millis(u64::from(self.u32()?)))
    }

    fn bytes(&mut self, limit: usize) -> Result<Vec<u8>, Malformed> {
        let n = self.u32()? as usize;
        if n > limit {
            return Err(Malformed(format!(
                "field of {n} bytes exceeds the {limit}-byte limit"
            )));
        }
        Ok(self.take(n)?.to_vec())
    }

    fn key(&mut self) -> Result<String, Malformed> {
        String::from_utf8(self.bytes(MAX_KEY_LEN)?)
            .map_err(|_| Malformed("key is not valid UTF-8".into()))
    }

    fn keys(&mut self) -> Result<Vec<String>, Malformed> {
        let n = self.u32()? as usize;
        // Each key takes at least its 4-byte length: bound the count by what is left.
        if n > self.buf.len() / 4 {
            return Err(Malformed(format!(
                "{n} keys cannot fit in the {} bytes left",
                self.buf.len()
            )));
        }
        (0..n).map(|_| self.key()).collect()
    }

    fn end(&self) -> Result<(), Malformed> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Malformed(format!(
                "{} trailing bytes after the frame's fields",
                self.buf.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body(frame: &[u8]) -> &[u8] {
        let n = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, frame.len() - 4, "length prefix");
        &frame[4..]
    }

    #[test]
    fn requests_round_trip() {
        let reqs = [
            Request::Set {
                key: "a/b".into(),
                value: vec![1, 2, 3],
            },
            Request::Get {
                key: "k".into(),
                wait: Duration::from_millis(1500),
            },
            Request::Add {
                key: "c".into(),
                delta: -7,
            },
            Request::Wait {
                keys: vec!["x".into(), "yy".into()],
                wait: Duration::ZERO,
            },
            Request::Check { keys: vec![] },
            Request::Delete { key: "".into() },
        ];
        for r in reqs {
            assert_eq!(Request::decode(body(&r.encode())).unwrap(), r);
        }
    }

    #[test]
    fn responses_round_trip() {
        let resps = [
            Response::Done,
            Response::Value(b"v".to_vec()),
            Response::Counter(i64::MIN),
            Response::Flag(true),
            Response::Flag(false),
            Response::Timeout(vec!["m".into()]),
            Response::Error("no".into()),
            Response::Closed,
        ];
        for r in resps {
            assert_eq!(Response::decode(body(&r.encode())).unwrap(), r);
        }
    }

    #[test]
    fn hello_rejects_strangers_and_other_versions() {
        assert!(check_hello(&hello()).is_ok());
        let http: [u8; HELLO_LEN] = b"GET / HTTP".to_owned();
        assert!(check_hello(&http).unwrap_err().0.contains("GET / HTTP"));
        let mut v2 = hello();
        v2[8] = 2;
        assert!(check_hello(&v2).unwrap_err().0.contains("version 2"));
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        assert!(frame_len((MAX_FRAME as u32 + 1).to_le_bytes()).is_err());
        // A SET claiming a 4 GiB value in a tiny frame.
        let mut b = vec![1u8];
        b.extend_from_slice(&1u32.to_le_bytes());
        b.push(b'k');
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Request::decode(&b).unwrap_err().0.contains("limit"));
        // A key longer than MAX_KEY_LEN.
        let mut b = vec![6u8];
        b.extend_from_slice(&(MAX_KEY_LEN as u32 + 1).to_le_bytes());
        assert!(Request::decode(&b).is_err());
        // A WAIT with a billion keys.
        let mut b = vec![5u8];
        b.extend_from_slice(&1_000_000_000u32.to_le_bytes());
        assert!(Request::decode(&b).unwrap_err().0.contains("keys"));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let f = Request::Delete { key: "k".into() }.encode();
        let mut b = f[4..].to_vec();
        b.push(0);
        assert!(Request::decode(&b).unwrap_err().0.contains("trailing"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }

        #[test]
        fn set_round_trips(key in "[a-z/0-9]{0,40}", value in proptest::collection::vec(any::<u8>(), 0..256)) {
            let r = Request::Set { key, value };
            prop_assert_eq!(Request::decode(body(&r.encode())).unwrap(), r);
        }
    }
}
