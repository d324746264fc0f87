//! Errors. Every error says what failed (the operation and its sequence number), where (this
//! rank, and the peer when there is one) and why.

use crate::transport::TransportError;
use std::fmt;

/// The operation an error belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    Init,
    Send,
    Recv,
    Broadcast,
    Reduce,
    AllReduce,
    Gather,
    AllGather,
    AllGatherV,
    Scatter,
    ReduceScatter,
    AllToAll,
    AllToAllV,
    Barrier,
    Split,
}

impl Op {
    /// The snake_case name users see (`all_reduce`, `reduce_scatter`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Op::Init => "init",
            Op::Send => "send",
            Op::Recv => "recv",
            Op::Broadcast => "broadcast",
            Op::Reduce => "reduce",
            Op::AllReduce => "all_reduce",
            Op::Gather => "gather",
            Op::AllGather => "all_gather",
            Op::AllGatherV => "all_gather_v",
            Op::Scatter => "scatter",
            Op::ReduceScatter => "reduce_scatter",
            Op::AllToAll => "all_to_all",
            Op::AllToAllV => "all_to_all_v",
            Op::Barrier => "barrier",
            Op::Split => "split",
        }
    }

    /// A stable one-byte code for call fingerprints.
    pub const fn code(self) -> u8 {
        self as u8 + 1
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong in tutti.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad argument, caught on this rank before any traffic.
    #[error("{op} on rank {rank}: invalid argument: {what}")]
    InvalidArgument { op: Op, rank: usize, what: String },

    /// A link failed, timed out or was closed while the operation ran.
    #[error("{op} #{seq} on rank {rank}: {source}")]
    Transport {
        op: Op,
        seq: u64,
        rank: usize,
        #[source]
        source: TransportError,
    },

    /// The peer's call does not match this rank's (another collective, type, count or root), or a
    /// message has another size than expected.
    #[error("{op} #{seq} on rank {rank}: mismatched call with rank {peer}: {what}")]
    Mismatch {
        op: Op,
        seq: u64,
        rank: usize,
        peer: usize,
        what: String,
    },

    /// Forming the communicator failed (environment, store, connecting to peers).
    #[error("init{}: {what}", rank.map(|r| format!(" of rank {r}")).unwrap_or_default())]
    Bootstrap { rank: Option<usize>, what: String },
}

/// Shorthand for results in tutti.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The peer this error names, if any (the dead, slow or mismatched rank).
    pub fn peer(&self) -> Option<usize> {
        match self {
            Error::Transport { source, .. } => source.peer(),
            Error::Mismatch { peer, .. } => Some(*peer),
            _ => None,
        }
    }

    /// True when this error leaves the world unusable: in the middle of a collective a peer
    /// timed out, left or broke its link, so the ranks no longer agree on where they are. The
    /// communicator then aborts its world (see `Communicator`).
    pub fn breaks_the_world(&self) -> bool {
        matches!(
            self,
            Error::Transport {
                source: TransportError::Timeout { .. }
                    | TransportError::PeerLost { .. }
                    | TransportError::Io { .. },
                ..
            }
        )
    }

    pub(crate) fn bootstrap(rank: Option<usize>, what: impl Into<String>) -> Error {
        Error::Bootstrap {
            rank,
            what: what.into(),
        }
    }
}
