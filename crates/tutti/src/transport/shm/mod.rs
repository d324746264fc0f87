//! Shared memory between ranks on one host: the byte pipe of a link whose two ends share a host.
//!
//! A link between two ranks of one host still has its TCP connection (formed and authenticated
//! as every link is), but its frames travel through two rings in a shared segment, one per
//! direction ([`ring`]); the socket only carries doorbells (one byte when the other side sleeps)
//! and tells that the peer is gone (end of stream when its process dies, even by SIGKILL). So
//! everything above the byte stream (frames, matching, posted receives, flow control, goodbyes,
//! a dead or frozen peer) is the TCP transport's, unchanged, and a link can be replaced one at a
//! time; what changes is the cost: no system call per message, no kernel socket buffers.
//!
//! - **Which pairs**: the two ends exchange a host identity right after the hello ([`setup`]):
//!   the boot id, the device of the segment directory, and the network, IPC, PID and user
//!   namespaces ([`host_identity`]). Equal identities mean one kernel and one `/dev/shm`
//!   (`LOCAL_WORLD_SIZE` would be wrong for sub-groups, containers and network namespaces).
//! - **Sleeping**: a waiting thread spins on its rings, then blocks in `poll` on the sockets,
//!   having raised its ring's sleep flag; the other side rings the doorbell only then. One `poll`
//!   thus waits for shared-memory links, TCP links and dead peers at once (a futex could wait
//!   for only one of them). More ranks than cores do not starve: the spin yields.
//! - **Mode**: `TUTTI_TRANSPORT=auto` (default) uses shared memory where it can and falls back to
//!   TCP with a warning naming the size needed when `/dev/shm` is missing or too small;
//!   `shm` makes that an error; `tcp` never uses shared memory.
//!
//! Cost: a message of `m` bytes is copied into the ring by the sender and out of it by the
//! receiver (into the posted buffer, or reduced from the ring straight into the accumulator):
//! `alpha_shm + m (2 / memcpy bandwidth)`, with `alpha_shm` a few hundred nanoseconds.

pub mod ring;
pub mod segment;
pub(crate) mod setup;

pub use segment::{Segment, SegmentError, DEFAULT_SHM_DIR};

use ring::{Ring, RING_HEADER};
use std::path::PathBuf;

/// Whether links between ranks of one host use shared memory (`TUTTI_TRANSPORT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ShmMode {
    /// Shared memory where both ends share a host and it can be set up; TCP otherwise.
    #[default]
    Auto,
    /// As `Auto`, but a host where it cannot be set up is an error.
    Require,
    /// TCP for every link.
    Off,
}

impl ShmMode {
    /// Parses `auto`, `shm` or `tcp`.
    pub fn parse(s: &str) -> Option<ShmMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Some(ShmMode::Auto),
            "shm" => Some(ShmMode::Require),
            "tcp" => Some(ShmMode::Off),
            _ => None,
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            ShmMode::Off => 0,
            ShmMode::Auto => 1,
            ShmMode::Require => 2,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<ShmMode> {
        [ShmMode::Off, ShmMode::Auto, ShmMode::Require]
            .into_iter()
            .find(|m| m.code() == c)
    }
}

/// Settings of the shared-memory links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmOptions {
    pub mode: ShmMode,
    /// The directory of the segments (a tmpfs; `TUTTI_SHM_DIR`, default `/dev/shm`).
    pub dir: PathBuf,
    /// Bytes of each ring (one per direction per pair), rounded up to a power of two; `None`:
    /// 1 MiB, less with many local peers (at least 256 KiB; see [`ShmOptions::ring_bytes_for`]).
    pub ring_bytes: Option<usize>,
    /// How long a waiting thread spins before it sleeps when it has shared-memory peers
    /// (default 1 ms, `TUTTI_SHM_SPIN_US`; the longer of this and the TCP spin applies).
    pub spin: std::time::Duration,
    /// The flow-control window of a shared-memory link (default 1 MiB,
    /// `TUTTI_SHM_WINDOW_BYTES`; at most the TCP window).
    pub window_bytes: usize,
}

impl Default for ShmOptions {
    fn default() -> Self {
        ShmOptions {
            mode: ShmMode::Auto,
            dir: PathBuf::from(DEFAULT_SHM_DIR),
            ring_bytes: None,
            spin: std::time::Duration::from_millis(1),
            window_bytes: 1 << 20,
        }
    }
}

impl ShmOptions {
    /// Ring size for a rank with `local_peers` peers on its host: 1 MiB per ring up to 4 local
    /// peers, then shrinking so that a rank's rings total at most 8 MiB (at least 256 KiB).
    /// Small rings keep the bytes in flight in the caches (see `SHM_SEGMENT_BYTES` in
    /// `comm::init` for the measurement).
    pub fn ring_bytes_for(&self, local_peers: usize) -> usize {
        match self.ring_bytes {
            Some(b) => b.clamp(4 << 10, 64 << 20).next_power_of_two(),
            None => {
                let budget = (8usize << 20) / (2 * local_peers.max(1));
                let floor_pow2 = 1usize << (usize::BITS - 1 - budget.max(1).leading_zeros());
                floor_pow2.clamp(256 << 10, 1 << 20)
            }
        }
    }
}

/// The size of a pair's segment with rings of `ring_bytes`.
pub fn segment_len(ring_bytes: usize) -> usize {
    (2 * (RING_HEADER + ring_bytes)).next_multiple_of(4096)
}

/// One end of a shared-memory link: the segment and its two rings.
pub struct ShmPipe {
    /// Frames to the peer.
    pub tx: Ring,
    /// Frames from the peer.
    pub rx: Ring,
    /// Keeps the rings mapped (declared last: dropped after them).
    _segment: Segment,
}

impl ShmPipe {
    /// The pipe over `segment` with rings of `ring_bytes`; the creator (the pair's lower rank)
    /// sends on the first ring.
    pub fn new(segment: Segment, ring_bytes: usize, creator: bool) -> ShmPipe {
        assert!(
            segment.len() >= segment_len(ring_bytes),
            "segment too small"
        );
        let first = segment.ptr();
        // SAFETY: both rings lie within the mapping (checked above), start 64-byte aligned
        // (RING_HEADER and ring_bytes are multiples of 64), and the segment outlives them.
        let (a, b) = unsafe {
            (
                Ring::new(first, ring_bytes),
                Ring::new(first.add(RING_HEADER + ring_bytes), ring_bytes),
            )
        };
        let (tx, rx) = if creator { (a, b) } else { (b, a) };
        ShmPipe {
            tx,
            rx,
            _segment: segment,
        }
    }
}

/// This process's host identity: equal on two processes exactly when they share a kernel (boot
/// id), the segment directory `shm_dir` (the same tmpfs: its device number) and the namespaces
/// that shared memory and the topology depend on (network, IPC, PID, user). The mount namespace
/// is left out: `ip netns exec` gives every process a mount namespace of its own, yet the same
/// `/dev/shm`.
pub fn host_identity(shm_dir: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let shm = std::fs::metadata(shm_dir)
        .map(|m| format!("{:#x}", m.dev()))
        .unwrap_or_else(|_| "none".into());
    let mut id = format!("boot={boot} shm={shm}");
    for ns in ["net", "ipc", "pid", "user"] {
        let link = std::fs::read_link(format!("/proc/self/ns/{ns}"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| format!("{ns}:?"));
        id.push(' ');
        id.push_str(&link);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_ring_sizes() {
        assert_eq!(ShmMode::parse("SHM"), Some(ShmMode::Require));
        assert_eq!(ShmMode::parse("tcp"), Some(ShmMode::Off));
        assert_eq!(ShmMode::parse("auto"), Some(ShmMode::Auto));
        assert_eq!(ShmMode::parse("rdma"), None);
        let o = ShmOptions::default();
        assert_eq!(o.ring_bytes_for(1), 1 << 20);
        assert_eq!(o.ring_bytes_for(4), 1 << 20);
        assert_eq!(o.ring_bytes_for(8), 512 << 10);
        assert_eq!(o.ring_bytes_for(63), 256 << 10);
        let fixed = ShmOptions {
            ring_bytes: Some(5000),
            ..o
        };
        assert_eq!(fixed.ring_bytes_for(1), 8192);
    }

    #[test]
    fn host_identity_is_stable_and_names_the_namespaces() {
        let dir = std::env::temp_dir();
        let a = host_identity(&dir);
        assert_eq!(a, host_identity(&dir));
        assert!(
            a.starts_with("boot=") && a.contains("net:") && a.contains("pid:"),
            "{a}"
        );
        assert_ne!(a, host_identity(std::path::Path::new("/nonexistent")));
    }
}
