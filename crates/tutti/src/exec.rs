//! Runs an algorithm of `tutti_core::algo` over a [`Transport`]: the [`Channel`] a collective call
//! hands to its algorithm.
//!
//! The channel translates communicator ranks to world ranks, addresses every message with the
//! call's key (communicator, collective lane, sequence number), stamps it with the call's
//! [`Fingerprint`], and checks every received message against this rank's own call: another
//! collective, element type, count or root on the peer is reported as [`Error::Mismatch`] naming
//! both calls, at no extra round trip. Every wait is bounded by the call's deadline.

use crate::deadline::Deadline;
use crate::error::{Error, Op};
use crate::transport::{Envelope, Lane, MsgKey, Source, Transport, TransportError};
use tutti_core::channel::RecvInto;
use tutti_core::model::Algorithm;
use tutti_core::{DType, ReduceOp, Reducer};

/// What a call is, packed into the 128-bit fingerprint of every frame it sends.
///
/// The low 64 bits describe the call: bits 56..64 op code, 48..56 dtype code, 40..48 reduce-op
/// code (0: none), 24..40 root (0xffff: none), 0..24 the per-rank element count modulo 2^24 (0
/// where counts legitimately differ between ranks). The high 64 bits describe how it runs (its
/// *plan*, 0: not chosen, as for point-to-point messages): bits 112..120 the algorithm's
/// [`Algorithm::code`], 64..112 the segment size in bytes (saturated at 2^48 - 1). Two ranks in
/// the same call, with the same algorithm and segment, compute the same fingerprint. Counts of
/// 2^24 or more are described modulo 2^24; the exact sizes are still checked message by message.
///
/// The v-forms whose counts vector every rank must pass alike (`gather_v`, `scatter_v`,
/// `all_gather_v`, `reduce_scatter_v`) put a 24-bit digest of that vector in the count bits, so
/// a rank whose vector differs fails the first message it exchanges (a collision of the digest,
/// odds 2^-24, is still caught by the per-message size check where the sizes differ).
/// `all_to_all_v`'s counts legitimately differ between ranks: it fingerprints 0 there and relies
/// on the per-message size check (pairwise) or the all-gathered sizes (Bruck).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint(pub u128);

const NO_ROOT: u64 = 0xffff;
const COUNT_BITS: u32 = 24;
const SEGMENT_BITS: u32 = 48;

impl Fingerprint {
    pub fn new(
        op: Op,
        dtype: Option<DType>,
        red: Option<ReduceOp>,
        root: Option<usize>,
        count: usize,
    ) -> Self {
        let root = root.map_or(NO_ROOT, |r| (r as u64).min(NO_ROOT - 1));
        let count = (count as u64) & ((1 << COUNT_BITS) - 1);
        Fingerprint(u128::from(
            (op.code() as u64) << 56
                | (dtype.map_or(0, |d| d.code()) as u64) << 48
                | (red.map_or(0, |r| r.code()) as u64) << 40
                | root << 24
                | count,
        ))
    }

    /// This call run by the plan of [`plan_bits`](Fingerprint::plan_bits).
    pub fn with_plan_bits(self, bits: u64) -> Self {
        Fingerprint(self.call() as u128 | (bits as u128) << 64)
    }

    /// The high half of a fingerprint: the algorithm's code and the segment size.
    pub fn plan_bits(algorithm: Algorithm, segment: usize) -> u64 {
        let seg = (segment as u64).min((1 << SEGMENT_BITS) - 1);
        u64::from(algorithm.code()) << SEGMENT_BITS | seg
    }

    /// The low half: what the call is.
    pub fn call(self) -> u64 {
        self.0 as u64
    }

    /// The call's dtype, if it has one.
    pub fn dtype(self) -> Option<DType> {
        let code = (self.call() >> 48) & 0xff;
        DType::ALL.iter().copied().find(|d| d.code() as u64 == code)
    }

    /// The algorithm and segment of the plan half, in words (empty without a plan).
    fn describe_plan(self) -> String {
        let plan = (self.0 >> 64) as u64;
        if plan == 0 {
            return String::new();
        }
        let seg = plan & ((1 << SEGMENT_BITS) - 1);
        let code = (plan >> SEGMENT_BITS) as u8;
        let algo = Algorithm::from_code(code)
            .map_or_else(|| format!("algorithm #{code}"), |a| a.name().to_string());
        format!(" by {algo} in segments of {seg} B")
    }

    /// A human-readable description (for mismatch errors).
    pub fn describe(self) -> String {
        let v = self.call();
        let op = Op::from_code((v >> 56) as u8);
        let dtype = DType::ALL
            .iter()
            .find(|d| d.code() as u64 == (v >> 48) & 0xff);
        let red = ReduceOp::ALL
            .iter()
            .find(|r| r.code() as u64 == (v >> 40) & 0xff);
        let root = (v >> 24) & 0xffff;
        let count = v & ((1 << COUNT_BITS) - 1);
        let mut s = op.map_or_else(|| format!("op#{}", v >> 56), |o| o.name().to_string());
        s.push('(');
        let mut parts = Vec::new();
        if let Some(d) = dtype {
            parts.push(d.name().to_string());
        }
        if let Some(r) = red {
            parts.push(r.name().to_string());
        }
        if root != NO_ROOT {
            parts.push(format!("root {root}"));
        }
        match op {
            Some(Op::GatherV | Op::ScatterV | Op::AllGatherV | Op::ReduceScatterV) => {
                parts.push(format!("counts digest {count:06x}"))
            }
            Some(Op::AllToAllV) => parts.push("counts per peer".to_string()),
            _ => parts.push(format!("count {count}")),
        }
        s.push_str(&parts.join(", "));
        s.push(')');
        s.push_str(&self.describe_plan());
        s
    }
}

/// Checks what a receive matched against what this rank expects; the error names both calls.
/// (The transport writes a message only if it fits, so a mismatch leaves the buffer as it was.)
pub(crate) fn check_envelope(
    env: &Envelope,
    expected: Fingerprint,
    expected_len: usize,
    ctx: (Op, u64, usize, usize),
) -> Result<(), Error> {
    let (op, seq, rank, peer) = ctx;
    // Strict: every message of a collective carries its call's fingerprint (never 0), so a
    // frame without one is as foreign as one of another call.
    if env.fingerprint != expected.0 {
        return Err(Error::Mismatch {
            op,
            seq,
            rank,
            peer,
            what: format!(
                "rank {peer} called {}, this rank called {}",
                Fingerprint(env.fingerprint).describe(),
                expected.describe()
            ),
        });
    }
    if env.len != expected_len || !env.written {
        return Err(Error::Mismatch {
            op,
            seq,
            rank,
            peer,
            what: format!(
                "message of {} bytes where this rank expects {} bytes",
                env.len, expected_len
            ),
        });
    }
    Ok(())
}

/// The members of a communicator: `members[r]` is the world rank of communicator rank `r`.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    pub members: std::sync::Arc<[usize]>,
    pub rank: usize,
    pub comm_id: u64,
}

impl Group {
    /// This rank's world rank, for a sub-communicator (the world's own ranks need no mapping).
    pub fn world_rank_if_sub(&self) -> Option<usize> {
        (self.comm_id != 0).then(|| self.members[self.rank])
    }
}

/// The [`tutti_core::Channel`] of one collective call.
pub(crate) struct CollectiveChannel<'a> {
    pub transport: &'a dyn Transport,
    pub group: &'a Group,
    pub op: Op,
    pub seq: u64,
    pub fingerprint: Fingerprint,
    pub deadline: Deadline,
}

impl CollectiveChannel<'_> {
    fn key(&self) -> MsgKey {
        MsgKey {
            comm_id: self.group.comm_id,
            lane: Lane::Collective,
            tag: self.seq,
        }
    }

    fn world(&self, peer: usize) -> usize {
        self.group.members[peer]
    }

    /// Wraps a transport error (which names peers by world rank) with this call's context and
    /// the (communicator) ranks `peers` it was waiting for.
    pub fn wrap(&self, source: TransportError, peers: &[usize]) -> Error {
        let mut waiting_for: Vec<usize> = peers
            .iter()
            .filter_map(|&p| self.group.members.get(p).copied())
            .collect();
        waiting_for.dedup();
        Error::Transport {
            op: self.op,
            seq: self.seq,
            rank: self.group.rank,
            world_rank: self.group.world_rank_if_sub(),
            source,
            waiting_for: waiting_for.into(),
        }
    }

    /// Checks what a receive from `peer` matched. A mismatch may come from another peer (a
    /// message of this call that disagrees, whoever this rank waits for): the error names the
    /// sender.
    fn check(&self, env: Envelope, peer: usize, len: usize) -> Result<(), Error> {
        let sender = self
            .group
            .members
            .iter()
            .position(|&w| w == env.peer)
            .unwrap_or(peer);
        check_envelope(
            &env,
            self.fingerprint,
            len,
            (self.op, self.seq, self.group.rank, sender),
        )
    }

    fn receive(&mut self, peer: usize, into: RecvInto<'_>) -> Result<(), Error> {
        let len = into.len();
        let env = self
            .transport
            .recv(
                Source::Rank(self.world(peer)),
                self.key(),
                self.fingerprint.0,
                into,
                self.deadline,
            )
            .map_err(|e| self.wrap(e, &[peer]))?;
        self.check(env, peer, len)
    }
}

impl tutti_core::Channel for CollectiveChannel<'_> {
    type Error = Error;

    fn rank(&self) -> usize {
        self.group.rank
    }

    fn size(&self) -> usize {
        self.group.members.len()
    }

    fn send(&mut self, peer: usize, data: &[u8]) -> Result<(), Error> {
        self.transport
            .send(
                self.world(peer),
                self.key(),
                self.fingerprint.0,
                data,
                self.deadline,
            )
            .map_err(|e| self.wrap(e, &[peer]))
    }

    fn recv(&mut self, peer: usize, buf: &mut [u8]) -> Result<(), Error> {
        self.receive(peer, RecvInto::Copy(buf))
    }

    fn recv_reduce(&mut self, peer: usize, acc: &mut [u8], reducer: &Reducer) -> Result<(), Error> {
        self.receive(peer, RecvInto::Combine(acc, reducer))
    }

    fn send_recv(
        &mut self,
        to: usize,
        data: &[u8],
        from: usize,
        into: RecvInto<'_>,
    ) -> Result<(), Error> {
        let len = into.len();
        let env = self
            .transport
            .send_recv(
                self.world(to),
                self.key(),
                self.fingerprint.0,
                data,
                self.world(from),
                into,
                self.deadline,
            )
            .map_err(|e| self.wrap(e, &[to, from]))?;
        self.check(env, from, len)
    }

    /// Half the transport's window: the rest stays free for what else shares the link (other
    /// communicators' calls, point-to-point messages) and for the per-message bookkeeping the
    /// transport counts in it.
    fn window(&self) -> usize {
        self.transport.window() / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_distinguish_calls_and_describe_them() {
        let a = Fingerprint::new(
            Op::AllReduce,
            Some(DType::F32),
            Some(ReduceOp::Sum),
            None,
            1000,
        );
        let b = Fingerprint::new(Op::Broadcast, Some(DType::F32), None, Some(2), 1000);
        let c = Fingerprint::new(
            Op::AllReduce,
            Some(DType::F32),
            Some(ReduceOp::Sum),
            None,
            1001,
        );
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.describe(), "all_reduce(f32, sum, count 1000)");
        assert_eq!(b.describe(), "broadcast(f32, root 2, count 1000)");
    }
}
