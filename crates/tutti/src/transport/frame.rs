//! The wire format of one message on a stream transport.
//!
//! ```text
//! offset size field
//!      0    2 magic        b"TU"
//!      2    1 version      2
//!      3    1 kind         1 = point-to-point data, 2 = collective data, 3 = goodbye,
//!                          4 = credit, 5 = heartbeat
//!      4    2 header_len   bytes from offset 0 to the payload (72 now; a reader skips any
//!                          extension it does not know, so later versions can add fields)
//!      6    2 flags        bit 0 on a goodbye: the sender aborted after an error (its reason
//!                          is the payload); other bits reserved (0), ignored by readers
//!      8    8 comm_id      communicator the message belongs to
//!     16    8 tag          user tag (p2p) or collective sequence number; on a credit frame,
//!                          the bytes of window the receiver gives back
//!     24    8 fingerprint  the sender's call fingerprint, low half: what the call is (0: none)
//!     32    8 payload_len  bytes of this frame's payload, which follows the header
//!     40    8 msg_len      bytes of the whole message this frame is a fragment of
//!     48    8 offset       where in the message this fragment's payload starts
//!     56    8 link_seq     the message's number on this link (0, 1, 2, ... per direction)
//!     64    8 plan         the fingerprint's high half: the algorithm and segment size the
//!                          sender's collective runs (0: none; see `exec::Fingerprint`)
//! ```
//! All integers are little-endian.
//!
//! A heartbeat has no payload. It says the sender is alive (a link silent for longer than the
//! liveness bound is lost, see `tcp::engine`), and may announce a collective call the sender is
//! blocked in: `comm_id`, `tag` (the call's sequence number) and `fingerprint` (0: no call), so
//! a receiver in the same call with another fingerprint fails with a mismatch even when the two
//! calls exchange no message.
//!
//! A message travels as one or more data frames (fragments) with the same envelope, in order,
//! back to back: a sender starts a fragment only when the receiver's window covers it, so that
//! control frames (credits, goodbyes) can always pass between fragments. `link_seq` and
//! `offset` say where each fragment belongs, so that a later version can stripe one peer's
//! traffic over several sockets and put it back in order.

use super::{Lane, MsgKey};

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"TU";
/// The format version written by this build.
pub const VERSION: u8 = 2;
/// Length of the header written by this build.
pub const HEADER_LEN: usize = 72;
/// The fields every version has (a reader needs these to find `header_len`).
const BASE_LEN: usize = 40;
/// The largest header extension a reader accepts (guards against garbage lengths).
pub const MAX_HEADER_LEN: usize = 4096;

/// `flags` bit of a goodbye: the sender is leaving because a call failed, not because it is done.
pub const FLAG_ABORT: u16 = 1;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A message; its lane says whose.
    Data(Lane),
    /// The sender is closing the link on purpose (not a crash).
    Goodbye,
    /// The receiver gives back window: `tag` more bytes may be sent.
    Credit,
    /// The sender is alive; it may announce a collective call it is blocked in.
    Heartbeat,
}

impl FrameKind {
    fn code(self) -> u8 {
        match self {
            FrameKind::Data(Lane::P2p) => 1,
            FrameKind::Data(Lane::Collective) => 2,
            FrameKind::Goodbye => 3,
            FrameKind::Credit => 4,
            FrameKind::Heartbeat => 5,
        }
    }

    fn from_code(c: u8) -> Option<FrameKind> {
        match c {
            1 => Some(FrameKind::Data(Lane::P2p)),
            2 => Some(FrameKind::Data(Lane::Collective)),
            3 => Some(FrameKind::Goodbye),
            4 => Some(FrameKind::Credit),
            5 => Some(FrameKind::Heartbeat),
            _ => None,
        }
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub comm_id: u64,
    pub tag: u64,
    pub fingerprint: u128,
    pub payload_len: u64,
    /// [`FLAG_ABORT`]; unknown bits are carried but mean nothing to this version.
    pub flags: u16,
    pub msg_len: u64,
    pub offset: u64,
    pub link_seq: u64,
}

/// A header that cannot be decoded: the stream is not (or no longer) a tutti link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic {0:02x?}: not a tutti frame")]
    BadMagic([u8; 2]),
    #[error("unsupported frame version {0} (this build speaks {VERSION})")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("bad header length {0}")]
    BadHeaderLen(usize),
    #[error("a fragment of {payload} bytes at offset {offset} of a {msg}-byte message")]
    BadFragment { payload: u64, offset: u64, msg: u64 },
}

impl FrameHeader {
    /// A data frame carrying a whole message with this key.
    pub fn data(key: MsgKey, fingerprint: u128, payload_len: usize) -> FrameHeader {
        FrameHeader::fragment(key, fingerprint, payload_len, 0, payload_len, 0)
    }

    /// A data frame carrying `payload_len` bytes at `offset` of a message of `msg_len` bytes,
    /// message number `link_seq` on its link.
    pub fn fragment(
        key: MsgKey,
        fingerprint: u128,
        msg_len: usize,
        offset: usize,
        payload_len: usize,
        link_seq: u64,
    ) -> FrameHeader {
        FrameHeader {
            kind: FrameKind::Data(key.lane),
            comm_id: key.comm_id,
            tag: key.tag,
            fingerprint,
            payload_len: payload_len as u64,
            flags: 0,
            msg_len: msg_len as u64,
            offset: offset as u64,
            link_seq,
        }
    }

    /// A control frame of `kind` with no envelope.
    fn control(kind: FrameKind) -> FrameHeader {
        FrameHeader {
            kind,
            comm_id: 0,
            tag: 0,
            fingerprint: 0,
            payload_len: 0,
            flags: 0,
            msg_len: 0,
            offset: 0,
            link_seq: 0,
        }
    }

    /// The goodbye frame; `abort` sets [`FLAG_ABORT`].
    pub fn goodbye(abort: bool) -> FrameHeader {
        let mut h = FrameHeader::control(FrameKind::Goodbye);
        h.flags = if abort { FLAG_ABORT } else { 0 };
        h
    }

    /// A credit frame giving back `bytes` of window.
    pub fn credit(bytes: u64) -> FrameHeader {
        let mut h = FrameHeader::control(FrameKind::Credit);
        h.tag = bytes;
        h
    }

    /// A heartbeat, announcing the collective call (`key`, `fingerprint`) if there is one.
    pub fn heartbeat(call: Option<(MsgKey, u128)>) -> FrameHeader {
        let mut h = FrameHeader::control(FrameKind::Heartbeat);
        if let Some((key, fingerprint)) = call {
            h.comm_id = key.comm_id;
            h.tag = key.tag;
            h.fingerprint = fingerprint;
        }
        h
    }

    /// The collective call a heartbeat announces, if any.
    pub fn announced_call(&self) -> Option<(MsgKey, u128)> {
        let key = MsgKey {
            comm_id: self.comm_id,
            lane: Lane::Collective,
            tag: self.tag,
        };
        (self.kind == FrameKind::Heartbeat && self.fingerprint != 0)
            .then_some((key, self.fingerprint))
    }

    /// True for the goodbye of a sender that aborted.
    pub fn is_abort(&self) -> bool {
        self.kind == FrameKind::Goodbye && self.flags & FLAG_ABORT != 0
    }

    /// The message key of a data frame.
    pub fn key(&self) -> Option<MsgKey> {
        match self.kind {
            FrameKind::Data(lane) => Some(MsgKey {
                comm_id: self.comm_id,
                lane,
                tag: self.tag,
            }),
            FrameKind::Goodbye | FrameKind::Credit | FrameKind::Heartbeat => None,
        }
    }

    /// The header as bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC);
        b[2] = VERSION;
        b[3] = self.kind.code();
        b[4..6].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.comm_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.tag.to_le_bytes());
        b[24..32].copy_from_slice(&(self.fingerprint as u64).to_le_bytes());
        b[32..40].copy_from_slice(&self.payload_len.to_le_bytes());
        b[40..48].copy_from_slice(&self.msg_len.to_le_bytes());
        b[48..56].copy_from_slice(&self.offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.link_seq.to_le_bytes());
        b[64..72].copy_from_slice(&((self.fingerprint >> 64) as u64).to_le_bytes());
        b
    }

    /// Decodes a header from the start of `b`: `Ok(None)` if `b` is too short to hold it yet,
    /// else the header and its length on the wire (what to skip before the payload).
    pub fn decode_prefix(b: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        if b.len() < BASE_LEN {
            if b.len() >= 2 && b[0..2] != MAGIC {
                return Err(FrameError::BadMagic([b[0], b[1]]));
            }
            return Ok(None);
        }
        let header_len = u16::from_le_bytes([b[4], b[5]]) as usize;
        if b[0..2] == MAGIC && b[2] == VERSION && b.len() < header_len.min(MAX_HEADER_LEN) {
            return Ok(None);
        }
        let fixed: &[u8; HEADER_LEN] = match b.get(..HEADER_LEN) {
            Some(f) => f.try_into().expect("HEADER_LEN bytes"),
            None => {
                // Too short for this version's header: decode reports what is wrong with it.
                let mut pad = [0u8; HEADER_LEN];
                pad[..b.len()].copy_from_slice(b);
                return FrameHeader::decode(&pad).map(|(h, _)| Some((h, header_len)));
            }
        };
        FrameHeader::decode(fixed).map(|(h, extra)| Some((h, HEADER_LEN + extra)))
    }

    /// Decodes this version's header; returns it and how many extension bytes follow it (to be
    /// skipped by this version).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<(FrameHeader, usize), FrameError> {
        if b[0..2] != MAGIC {
            return Err(FrameError::BadMagic([b[0], b[1]]));
        }
        if b[2] != VERSION {
            return Err(FrameError::BadVersion(b[2]));
        }
        let kind = FrameKind::from_code(b[3]).ok_or(FrameError::BadKind(b[3]))?;
        let header_len = u16::from_le_bytes([b[4], b[5]]) as usize;
        if !(HEADER_LEN..=MAX_HEADER_LEN).contains(&header_len) {
            return Err(FrameError::BadHeaderLen(header_len));
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let h = FrameHeader {
            kind,
            comm_id: u64_at(8),
            tag: u64_at(16),
            fingerprint: u128::from(u64_at(24)) | u128::from(u64_at(64)) << 64,
            payload_len: u64_at(32),
            flags: u16::from_le_bytes([b[6], b[7]]),
            msg_len: u64_at(40),
            offset: u64_at(48),
            link_seq: u64_at(56),
        };
        let in_message = h
            .offset
            .checked_add(h.payload_len)
            .is_some_and(|e| e <= h.msg_len);
        if matches!(kind, FrameKind::Data(_)) && !in_message {
            return Err(FrameError::BadFragment {
                payload: h.payload_len,
                offset: h.offset,
                msg: h.msg_len,
            });
        }
        Ok((h, header_len - HEADER_LEN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(
            comm in any::<u64>(),
            tag in any::<u64>(),
            fp in any::<u128>(),
            len in any::<u64>(),
            p2p in any::<bool>(),
            flags in any::<u16>(),
        ) {
            let lane = if p2p { Lane::P2p } else { Lane::Collective };
            let mut h = FrameHeader::fragment(
                MsgKey { comm_id: comm, lane, tag }, fp, 0, 0, 0, tag ^ fp as u64,
            );
            h.payload_len = len / 2;
            h.offset = len / 4;
            h.msg_len = len;
            h.flags = flags;
            prop_assert_eq!(FrameHeader::decode(&h.encode()), Ok((h, 0)));
            prop_assert!(!h.is_abort(), "only a goodbye aborts");
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut b = [0u8; HEADER_LEN];
            let n = bytes.len().min(HEADER_LEN);
            b[..n].copy_from_slice(&bytes[..n]);
            let _ = FrameHeader::decode(&b);
            let _ = FrameHeader::decode_prefix(&bytes);
        }

        #[test]
        fn a_header_is_found_in_any_prefix(cut in 0usize..=HEADER_LEN) {
            let h = FrameHeader::fragment(
                MsgKey { comm_id: 1, lane: Lane::P2p, tag: 2 }, 3, 100, 10, 20, 4,
            );
            let b = h.encode();
            let got = FrameHeader::decode_prefix(&b[..cut]).unwrap();
            if cut < HEADER_LEN {
                prop_assert!(got.is_none());
            } else {
                prop_assert_eq!(got, Some((h, HEADER_LEN)));
            }
        }
    }

    #[test]
    fn the_plan_half_of_the_fingerprint_travels_in_the_extension() {
        let key = MsgKey {
            comm_id: 1,
            lane: Lane::Collective,
            tag: 2,
        };
        let fp = 0x0123_4567_89ab_cdef_u128 << 64 | 0xfedc_ba98_7654_3210;
        let b = FrameHeader::data(key, fp, 0).encode();
        assert_eq!(b.len(), 72);
        assert_eq!(
            u64::from_le_bytes(b[64..72].try_into().unwrap()),
            0x0123_4567_89ab_cdef
        );
        assert_eq!(
            u64::from_le_bytes(b[24..32].try_into().unwrap()),
            0xfedc_ba98_7654_3210
        );
        assert_eq!(FrameHeader::decode(&b).unwrap().0.fingerprint, fp);
    }

    #[test]
    fn a_heartbeat_carries_the_call_it_announces() {
        let key = MsgKey {
            comm_id: 7,
            lane: Lane::Collective,
            tag: 9,
        };
        let fp = 3u128 << 64 | 5;
        let (h, _) =
            FrameHeader::decode(&FrameHeader::heartbeat(Some((key, fp))).encode()).unwrap();
        assert_eq!(h.kind, FrameKind::Heartbeat);
        assert_eq!(h.announced_call(), Some((key, fp)));
        let (h, _) = FrameHeader::decode(&FrameHeader::heartbeat(None).encode()).unwrap();
        assert_eq!(h.announced_call(), None);
        assert_eq!(h.payload_len, 0);
    }

    #[test]
    fn an_aborting_goodbye_says_so() {
        let (h, _) = FrameHeader::decode(&FrameHeader::goodbye(true).encode()).unwrap();
        assert!(h.is_abort());
        let (h, _) = FrameHeader::decode(&FrameHeader::goodbye(false).encode()).unwrap();
        assert!(!h.is_abort());
    }

    #[test]
    fn rejects_strangers_and_skips_extensions() {
        let mut b = FrameHeader::goodbye(false).encode();
        b[0] = b'G';
        assert!(matches!(
            FrameHeader::decode(&b),
            Err(FrameError::BadMagic(_))
        ));
        let mut b = FrameHeader::goodbye(false).encode();
        b[4..6].copy_from_slice(&80u16.to_le_bytes());
        assert_eq!(FrameHeader::decode(&b).unwrap().1, 8);
        b[4..6].copy_from_slice(&8u16.to_le_bytes());
        assert_eq!(FrameHeader::decode(&b), Err(FrameError::BadHeaderLen(8)));
        let http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789abc";
        assert!(FrameHeader::decode_prefix(http).is_err());
        let bad = FrameHeader::fragment(
            MsgKey {
                comm_id: 0,
                lane: Lane::Collective,
                tag: 0,
            },
            0,
            10,
            8,
            3,
            0,
        );
        assert!(matches!(
            FrameHeader::decode(&bad.encode()),
            Err(FrameError::BadFragment { .. })
        ));
    }
}
