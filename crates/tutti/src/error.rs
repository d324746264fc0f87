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
    SendRecv,
    GatherV,
    ScatterV,
    ReduceScatterV,
    Scan,
    Exscan,
    /// A fetch of an object of [`crate::ObjectStore`] (and its `free`).
    Get,
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
            Op::SendRecv => "sendrecv",
            Op::GatherV => "gather_v",
            Op::ScatterV => "scatter_v",
            Op::ReduceScatterV => "reduce_scatter_v",
            Op::Scan => "scan",
            Op::Exscan => "exscan",
            Op::Get => "get",
        }
    }

    /// A stable one-byte code for call fingerprints.
    pub const fn code(self) -> u8 {
        self as u8 + 1
    }

    /// Every op, in declaration order (so `ALL[i].code() == i + 1`).
    pub const ALL: [Op; 22] = [
        Op::Init,
        Op::Send,
        Op::Recv,
        Op::Broadcast,
        Op::Reduce,
        Op::AllReduce,
        Op::Gather,
        Op::AllGather,
        Op::AllGatherV,
        Op::Scatter,
        Op::ReduceScatter,
        Op::AllToAll,
        Op::AllToAllV,
        Op::Barrier,
        Op::Split,
        Op::SendRecv,
        Op::GatherV,
        Op::ScatterV,
        Op::ReduceScatterV,
        Op::Scan,
        Op::Exscan,
        Op::Get,
    ];

    /// The op of a [`code`](Op::code), if any.
    pub fn from_code(code: u8) -> Option<Op> {
        Op::ALL.get(usize::from(code).checked_sub(1)?).copied()
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

    /// A link failed, timed out or was closed while the operation ran. `seq` is the collective's
    /// sequence number (0 for point-to-point calls). The transport names peers by world rank:
    /// `world_rank` is set when this communicator is a sub-communicator, whose ranks differ.
    /// `waiting_for`: the (world) ranks the call was waiting for when it failed (one, or two in
    /// a send-receive), said at the end of the message when the error names none of them (when
    /// a third rank aborted, say): `[rank 0 was waiting for rank 3]`.
    #[error(
        "{op}{} on rank {rank}{}: {source}{}",
        seq_label(*seq),
        world_label(*world_rank),
        waiting_label(*rank, *world_rank, waiting_for, source)
    )]
    Transport {
        op: Op,
        seq: u64,
        rank: usize,
        world_rank: Option<usize>,
        #[source]
        source: TransportError,
        waiting_for: Box<[usize]>,
    },

    /// The peer's call does not match this rank's (another collective, type, count or root), or a
    /// message has another size than expected.
    #[error("{op}{} on rank {rank}: mismatched call with rank {peer}: {what}", seq_label(*seq))]
    Mismatch {
        op: Op,
        seq: u64,
        rank: usize,
        peer: usize,
        what: String,
    },

    /// The call waited its whole deadline for the calls ahead of it on the same communicator
    /// (another thread's call, or the queued `*_async` calls) and gave up before sending
    /// anything, so the world is intact.
    #[error("{op} on rank {rank}: timed out after {waited:.1?} waiting behind {behind} on this communicator (calls on one communicator run one at a time)")]
    Busy {
        op: Op,
        rank: usize,
        waited: std::time::Duration,
        behind: String,
    },

    /// Forming the communicator failed (environment, store, connecting to peers).
    #[error("init{}: {what}", rank.map(|r| format!(" of rank {r}")).unwrap_or_default())]
    Bootstrap { rank: Option<usize>, what: String },
}

/// ` #7` for a collective's sequence number; nothing for point-to-point calls (0).
fn seq_label(seq: u64) -> String {
    if seq == 0 {
        String::new()
    } else {
        format!(" #{seq}")
    }
}

/// ` [rank R was waiting for rank P]` (world ranks), unless `source` names one of them already.
fn waiting_label(
    rank: usize,
    world_rank: Option<usize>,
    waiting_for: &[usize],
    source: &TransportError,
) -> String {
    if waiting_for.is_empty() || source.peer().is_some_and(|p| waiting_for.contains(&p)) {
        return String::new();
    }
    let peers: Vec<String> = waiting_for.iter().map(|p| format!("rank {p}")).collect();
    format!(
        " [rank {} was waiting for {}]",
        world_rank.unwrap_or(rank),
        peers.join(" and ")
    )
}

/// In a sub-communicator, this rank's world rank (the transport's peers are world ranks).
fn world_label(world_rank: Option<usize>) -> String {
    world_rank.map_or_else(String::new, |w| {
        format!(" (world rank {w} of a sub-communicator; peers below are world ranks)")
    })
}

/// Shorthand for results in tutti.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The operation that failed (`Op::Init` for a bootstrap error).
    pub fn op(&self) -> Op {
        match self {
            Error::InvalidArgument { op, .. }
            | Error::Transport { op, .. }
            | Error::Mismatch { op, .. }
            | Error::Busy { op, .. } => *op,
            Error::Bootstrap { .. } => Op::Init,
        }
    }

    /// The peer this error names, if any (the dead, slow or mismatched rank): a world rank for
    /// [`Error::Transport`], a rank of the communicator for [`Error::Mismatch`].
    pub fn peer(&self) -> Option<usize> {
        match self {
            Error::Transport { source, .. } => source.peer(),
            Error::Mismatch { peer, .. } => Some(*peer),
            _ => None,
        }
    }

    /// True when this error leaves the world unusable: in the middle of a collective a peer
    /// timed out, left or broke its link, or runs another call (a mismatch), so the ranks no
    /// longer agree on where they are. The communicator then aborts its world (see
    /// `Communicator`), and every rank fails with this reason.
    pub fn breaks_the_world(&self) -> bool {
        match self {
            Error::Transport { source, .. } => matches!(
                source,
                TransportError::Timeout { .. }
                    | TransportError::PeerLost { .. }
                    | TransportError::Io { .. }
            ),
            Error::Mismatch { op, .. } => !matches!(op, Op::Send | Op::Recv | Op::SendRecv),
            _ => false,
        }
    }

    pub(crate) fn bootstrap(rank: Option<usize>, what: impl Into<String>) -> Error {
        Error::Bootstrap {
            rank,
            what: what.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(source: TransportError, waiting_for: &[usize]) -> String {
        Error::Transport {
            op: Op::AllReduce,
            seq: 2,
            rank: 0,
            world_rank: None,
            source,
            waiting_for: waiting_for.into(),
        }
        .to_string()
    }

    #[test]
    fn an_error_says_whom_the_call_waited_for_unless_it_names_them() {
        let aborted = || TransportError::Closed {
            reason: "rank 1 aborted: rank 2 silent".into(),
        };
        assert_eq!(
            failed(aborted(), &[3]),
            "all_reduce #2 on rank 0: transport shut down: rank 1 aborted: rank 2 silent \
             [rank 0 was waiting for rank 3]"
        );
        assert!(failed(aborted(), &[3, 1]).ends_with("waiting for rank 3 and rank 1]"));
        assert!(failed(aborted(), &[]).ends_with("rank 2 silent"));
        let lost = TransportError::PeerLost {
            peer: 3,
            reason: "silent".into(),
        };
        assert_eq!(
            failed(lost, &[1, 3]),
            "all_reduce #2 on rank 0: rank 3 is gone: silent"
        );
    }

    #[test]
    fn every_op_is_listed_once_and_its_code_maps_back() {
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(op.code()), i + 1, "{op}");
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code(0), None);
        assert_eq!(Op::from_code(Op::Get.code() + 1), None);
    }
}
