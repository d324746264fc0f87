//! The wire format of one message on a stream transport.
//!
//! ```text
//! offset size field
//!      0    2 magic        b"TU"
//!      2    1 version      1
//!      3    1 kind         1 = point-to-point data, 2 = collective data, 3 = goodbye
//!      4    2 header_len   bytes from offset 0 to the payload (40 now; a reader skips any
//!                          extension it does not know, so later versions can add fields)
//!      6    2 flags        bit 0 on a goodbye: the sender aborted after an error (its reason
//!                          is the payload); other bits reserved (0), ignored by readers
//!      8    8 comm_id      communicator the message belongs to
//!     16    8 tag          user tag (p2p) or collective sequence number
//!     24    8 fingerprint  the sender's call fingerprint (0: none)
//!     32    8 payload_len  bytes that follow the header
//! ```
//! All integers are little-endian.

use super::{Lane, MsgKey};

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"TU";
/// The format version written by this build.
pub const VERSION: u8 = 1;
/// Length of the fixed header written by this build.
pub const HEADER_LEN: usize = 40;
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
}

impl FrameKind {
    fn code(self) -> u8 {
        match self {
            FrameKind::Data(Lane::P2p) => 1,
            FrameKind::Data(Lane::Collective) => 2,
            FrameKind::Goodbye => 3,
        }
    }

    fn from_code(c: u8) -> Option<FrameKind> {
        match c {
            1 => Some(FrameKind::Data(Lane::P2p)),
            2 => Some(FrameKind::Data(Lane::Collective)),
            3 => Some(FrameKind::Goodbye),
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
    pub fingerprint: u64,
    pub payload_len: u64,
    /// [`FLAG_ABORT`]; unknown bits are carried but mean nothing to this version.
    pub flags: u16,
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
}

impl FrameHeader {
    /// A data frame for a message with this key.
    pub fn data(key: MsgKey, fingerprint: u64, payload_len: usize) -> FrameHeader {
        FrameHeader {
            kind: FrameKind::Data(key.lane),
            comm_id: key.comm_id,
            tag: key.tag,
            fingerprint,
            payload_len: payload_len as u64,
            flags: 0,
        }
    }

    /// The goodbye frame; `abort` sets [`FLAG_ABORT`].
    pub fn goodbye(abort: bool) -> FrameHeader {
        FrameHeader {
            kind: FrameKind::Goodbye,
            comm_id: 0,
            tag: 0,
            fingerprint: 0,
            payload_len: 0,
            flags: if abort { FLAG_ABORT } else { 0 },
        }
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
            FrameKind::Goodbye => None,
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
        b[24..32].copy_from_slice(&self.fingerprint.to_le_bytes());
        b[32..40].copy_from_slice(&self.payload_len.to_le_bytes());
        b
    }

    /// Decodes the fixed part; returns the header and how many extension bytes follow it (to be
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
        Ok((
            FrameHeader {
                kind,
                comm_id: u64_at(8),
                tag: u64_at(16),
                fingerprint: u64_at(24),
                payload_len: u64_at(32),
                flags: u16::from_le_bytes([b[6], b[7]]),
            },
            header_len - HEADER_LEN,
        ))
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
            fp in any::<u64>(),
            len in any::<u64>(),
            p2p in any::<bool>(),
            flags in any::<u16>(),
        ) {
            let lane = if p2p { Lane::P2p } else { Lane::Collective };
            let h = FrameHeader {
                kind: FrameKind::Data(lane),
                comm_id: comm,
                tag,
                fingerprint: fp,
                payload_len: len,
                flags,
            };
            prop_assert_eq!(FrameHeader::decode(&h.encode()), Ok((h, 0)));
            prop_assert!(!h.is_abort(), "only a goodbye aborts");
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::array::uniform32(any::<u8>()), tail in any::<[u8; 8]>()) {
            let mut b = [0u8; HEADER_LEN];
            b[..32].copy_from_slice(&bytes);
            b[32..].copy_from_slice(&tail);
            let _ = FrameHeader::decode(&b);
        }
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
        b[4..6].copy_from_slice(&48u16.to_le_bytes());
        assert_eq!(FrameHeader::decode(&b).unwrap().1, 8);
        b[4..6].copy_from_slice(&8u16.to_le_bytes());
        assert_eq!(FrameHeader::decode(&b), Err(FrameError::BadHeaderLen(8)));
        let http = *b"GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789abc";
        assert!(FrameHeader::decode(&http).is_err());
    }
}
