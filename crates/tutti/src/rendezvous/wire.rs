//! The wire format of the TCP store: pure encoding and decoding, no I/O.
//!
//! A connection opens with a handshake (see [`crate::auth`] for the proofs), then carries
//! request/response pairs, one at a time, each in a length-prefixed frame. All integers are
//! little-endian.
//!
//! ```text
//! client hello  magic b"TUTTISTO" (8), version u16 (2), flags u8 (1: has the job secret),
//!               rank u32 (u32::MAX: not a rank), job id u64 (0: unknown), nonce [32]
//! server hello  magic b"TUTTISTO" (8), version u16, flags u8, job id u64, nonce [32]
//! ... when both flags say 1:
//! client proof  [32] = HMAC(secret, "tutti/store/client" | client hello | server hello)
//! verdict       0, then proof [32] = HMAC(secret, "tutti/store/server" | ...)     accepted
//!               1, then len u16 (<= 255), UTF-8 reason                          refused, closed
//! ```
//! When neither side has a secret the hellos are the whole handshake; when one has and the
//! other has not, both close (each says why in its own log or error). A server of another
//! version answers with its own magic and version first, so each side can name both versions.
//!
//! ```text
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
use crate::auth::{Proof, PROOF_LEN};
use std::time::Duration;

/// The first bytes of every store connection, in both directions.
pub const MAGIC: [u8; 8] = *b"TUTTISTO";
/// The protocol version this build speaks (1 had no authentication).
pub const VERSION: u16 = 2;
/// Length of the part of a hello every version shares: magic and version.
pub const HELLO_LEN: usize = 10;
/// Length of a client's hello.
pub const CLIENT_HELLO_LEN: usize = HELLO_LEN + 1 + 4 + 8 + PROOF_LEN;
/// Length of a server's hello.
pub const SERVER_HELLO_LEN: usize = HELLO_LEN + 1 + 8 + PROOF_LEN;
/// The flag of a hello whose sender has the job secret.
pub const FLAG_AUTH: u8 = 1;
/// The rank field of a client that is not a rank (a tool, a test).
pub const NO_RANK: u32 = u32::MAX;
/// The longest reason in a refusing verdict.
pub const MAX_REASON: usize = 255;
/// Label of the client's proof.
pub const CLIENT_LABEL: &str = "tutti/store/client";
/// Label of the server's proof.
pub const SERVER_LABEL: &str = "tutti/store/server";

/// What a client says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// True when the client has the job secret and will prove it.
    pub auth: bool,
    /// The client's rank, if it is one.
    pub rank: Option<u32>,
    /// The job the client belongs to (0: unknown).
    pub job: u64,
    pub nonce: Proof,
}

/// What the server says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerHello {
    pub auth: bool,
    pub job: u64,
    pub nonce: Proof,
}

fn flags_byte(auth: bool) -> u8 {
    if auth {
        FLAG_AUTH
    } else {
        0
    }
}

fn parse_flags(b: u8) -> Result<bool, Malformed> {
    match b {
        0 => Ok(false),
        FLAG_AUTH => Ok(true),
        f => Err(Malformed(format!("unknown hello flags {f:#04x}"))),
    }
}

impl ClientHello {
    pub fn encode(&self) -> [u8; CLIENT_HELLO_LEN] {
        let mut w = Writer { buf: Vec::new() };
        w.buf.extend_from_slice(&hello());
        w.u8(flags_byte(self.auth))
            .u32(self.rank.unwrap_or(NO_RANK))
            .u64(self.job);
        w.buf.extend_from_slice(&self.nonce);
        let mut out = [0; CLIENT_HELLO_LEN];
        out.copy_from_slice(&w.buf);
        out
    }

    /// Decodes a whole client hello (magic and version checked first).
    pub fn decode(b: &[u8]) -> Result<ClientHello, Malformed> {
        let mut r = Reader { buf: b };
        check_hello(&r.array()?)?;
        let auth = parse_flags(r.u8()?)?;
        let rank = match r.u32()? {
            NO_RANK => None,
            n => Some(n),
        };
        let job = r.u64()?;
        let nonce = r.array()?;
        r.end()?;
        Ok(ClientHello {
            auth,
            rank,
            job,
            nonce,
        })
    }
}

impl ServerHello {
    pub fn encode(&self) -> [u8; SERVER_HELLO_LEN] {
        let mut w = Writer { buf: Vec::new() };
        w.buf.extend_from_slice(&hello());
        w.u8(flags_byte(self.auth)).u64(self.job);
        w.buf.extend_from_slice(&self.nonce);
        let mut out = [0; SERVER_HELLO_LEN];
        out.copy_from_slice(&w.buf);
        out
    }

    /// Decodes a whole server hello (magic and version checked first).
    pub fn decode(b: &[u8]) -> Result<ServerHello, Malformed> {
        let mut r = Reader { buf: b };
        check_hello(&r.array()?)?;
        let auth = parse_flags(r.u8()?)?;
        let job = r.u64()?;
        let nonce = r.array()?;
        r.end()?;
        Ok(ServerHello { auth, job, nonce })
    }
}

/// The server's answer to a client's proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted(Proof),
    Refused(String),
}

impl Verdict {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Verdict::Accepted(proof) => {
                let mut b = vec![0];
                b.extend_from_slice(proof);
                b
            }
            Verdict::Refused(why) => {
                let mut end = why.len().min(MAX_REASON);
                while !why.is_char_boundary(end) {
                    end -= 1;
                }
                let mut b = vec![1];
                b.extend_from_slice(&(end as u16).to_le_bytes());
                b.extend_from_slice(&why.as_bytes()[..end]);
                b
            }
        }
    }

    /// Decodes a whole verdict.
    pub fn decode(b: &[u8]) -> Result<Verdict, Malformed> {
        let mut r = Reader { buf: b };
        let v = match r.u8()? {
            0 => Verdict::Accepted(r.array()?),
            1 => {
                let n = usize::from(u16::from_le_bytes(r.array()?));
                if n > MAX_REASON {
                    return Err(Malformed(format!(
                        "refusal of {n} bytes exceeds the {MAX_REASON}-byte limit"
                    )));
                }
                let mut why = String::from_utf8_lossy(r.take(n)?).into_owned();
                // Replacement characters may lengthen it: keep it within the limit.
                let mut end = why.len().min(MAX_REASON);
                while !why.is_char_boundary(end) {
                    end -= 1;
                }
                why.truncate(end);
                Verdict::Refused(why)
            }
            s => return Err(Malformed(format!("unknown verdict status {s}"))),
        };
        r.end()?;
        Ok(v)
    }
}
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
    frame_len_within(prefix, MAX_FRAME)
}

/// Decodes a frame's length prefix, enforcing `limit` (a server's own, lower bound).
pub fn frame_len_within(prefix: [u8; 4], limit: usize) -> Result<usize, Malformed> {
    let n = u32::from_le_bytes(prefix) as usize;
    if n > limit {
        return Err(Malformed(format!(
            "frame of {n} bytes exceeds the {limit}-byte limit"
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

    fn u64(&mut self, v: u64) -> &mut Writer {
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

    fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(self.array()?))
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
        let mut v1 = hello();
        v1[8] = 1;
        assert!(check_hello(&v1).unwrap_err().0.contains("version 1"));
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
    fn hellos_and_verdicts_round_trip() {
        let c = ClientHello {
            auth: true,
            rank: Some(3),
            job: 0xfeed,
            nonce: [7; 32],
        };
        assert_eq!(ClientHello::decode(&c.encode()), Ok(c));
        let anon = ClientHello {
            auth: false,
            rank: None,
            ..c
        };
        assert_eq!(ClientHello::decode(&anon.encode()), Ok(anon));
        let s = ServerHello {
            auth: false,
            job: 9,
            nonce: [1; 32],
        };
        assert_eq!(ServerHello::decode(&s.encode()), Ok(s));
        for v in [
            Verdict::Accepted([3; 32]),
            Verdict::Refused("wrong proof".into()),
            Verdict::Refused(String::new()),
        ] {
            assert_eq!(Verdict::decode(&v.encode()), Ok(v));
        }
        // A long reason is cut at a character boundary within the limit.
        let long = Verdict::Refused("é".repeat(200)).encode();
        assert!(long.len() <= 3 + MAX_REASON);
        assert!(matches!(Verdict::decode(&long), Ok(Verdict::Refused(_))));
        // Truncated, with bad flags, or with another magic: refused, never a panic.
        let full = c.encode();
        for n in 0..full.len() {
            assert!(ClientHello::decode(&full[..n]).is_err(), "{n} bytes");
        }
        let mut bad = full;
        bad[HELLO_LEN] = 2;
        assert!(ClientHello::decode(&bad).unwrap_err().0.contains("flags"));
        let mut v1 = full;
        v1[8] = 1;
        assert!(ClientHello::decode(&v1)
            .unwrap_err()
            .0
            .contains("version 1"));
        assert!(Verdict::decode(&[1, 255, 0]).is_err());
        assert!(Verdict::decode(&[2]).is_err());
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
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
            let _ = ClientHello::decode(&bytes);
            let _ = ServerHello::decode(&bytes);
            let _ = Verdict::decode(&bytes);
        }

        #[test]
        fn client_hellos_round_trip(auth: bool, rank: Option<u32>, job: u64, nonce: [u8; 32]) {
            // NO_RANK is the encoding of "no rank".
            let rank = rank.filter(|&r| r != NO_RANK);
            let h = ClientHello { auth, rank, job, nonce };
            prop_assert_eq!(ClientHello::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn set_round_trips(key in "[a-z/0-9]{0,40}", value in proptest::collection::vec(any::<u8>(), 0..256)) {
            let r = Request::Set { key, value };
            prop_assert_eq!(Request::decode(body(&r.encode())).unwrap(), r);
        }
    }
}
