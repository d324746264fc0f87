//! The collective operations of [`Communicator`]: argument checks, then the chosen algorithm of
//! `tutti_core::algo` over the call's channel.

use super::{bytes, bytes_mut, fp, Communicator};
use crate::error::{Error, Op, Result};
use crate::exec::{CollectiveChannel, Fingerprint};
use std::ops::Range;
use tutti_core::algo::scan::{self, ScanKind};
use tutti_core::algo::{
    allgather, allreduce, alltoall, barrier, broadcast, gather, hierarchical, reduce,
    reduce_scatter, scatter, Algorithms, AllGatherAlgo, AllReduceAlgo, AllToAllAlgo, BarrierAlgo,
    BroadcastAlgo, GatherAlgo, ReduceAlgo, ReduceScatterAlgo, ScatterAlgo,
};
use tutti_core::layout::{chunks_from_counts, even_chunks};
use tutti_core::reduce::finish_avg;
use tutti_core::{Element, ReduceOp, Reducer};

impl Communicator {
    /// Copies `buf` from `root` to every rank.
    pub fn broadcast<T: Element>(&self, buf: &mut [T], root: usize) -> Result<()> {
        let op = Op::Broadcast;
        self.check_root(op, root)?;
        let m = bytes_of::<T>(buf.len());
        self.collective(op, fp::<T>(op, None, Some(root), buf.len()), m, |ch, a| {
            let seg = a.segment_bytes;
            match a.broadcast {
                BroadcastAlgo::Binomial => broadcast::binomial(ch, bytes_mut(buf), root, seg),
                BroadcastAlgo::Chain | BroadcastAlgo::Auto => {
                    broadcast::chain(ch, bytes_mut(buf), root, seg)
                }
                BroadcastAlgo::Hierarchical => {
                    hierarchical::broadcast(ch, bytes_mut(buf), root, &self.hosts, seg)
                }
                BroadcastAlgo::ScatterAllgather => {
                    broadcast::scatter_allgather(ch, bytes_mut(buf), root, seg)
                }
            }
        })
    }

    /// Reduces every rank's `buf` into the root's `buf`, in place. The other ranks' buffers are
    /// left unchanged.
    pub fn reduce_in_place<T: Element>(
        &self,
        buf: &mut [T],
        op: ReduceOp,
        root: usize,
    ) -> Result<()> {
        if self.rank() == root {
            self.reduce_impl(buf.len(), None, Some(buf), op, root)
        } else {
            self.reduce_impl(buf.len(), Some(&*buf), None, op, root)
        }
    }

    /// Reduces every rank's `send` into `recv` at the root. `recv` must be `Some` (with
    /// `send.len()` elements) at the root and is ignored elsewhere.
    pub fn reduce<T: Element>(
        &self,
        send: &[T],
        recv: Option<&mut [T]>,
        op: ReduceOp,
        root: usize,
    ) -> Result<()> {
        let o = Op::Reduce;
        self.check_root(o, root)?;
        if self.rank() != root {
            return self.reduce_impl(send.len(), Some(send), None, op, root);
        }
        let recv = recv.ok_or_else(|| self.invalid(o, "the root must pass a receive buffer"))?;
        self.check_len(o, "recv", recv.len(), send.len())?;
        recv.copy_from_slice(send);
        self.reduce_impl(send.len(), None, Some(recv), op, root)
    }

    /// Shared body of the reduce forms: `own` is this rank's contribution when it must not be
    /// overwritten (it is copied into scratch); `out` is the root's in-place buffer.
    fn reduce_impl<T: Element>(
        &self,
        count: usize,
        own: Option<&[T]>,
        out: Option<&mut [T]>,
        red: ReduceOp,
        root: usize,
    ) -> Result<()> {
        let o = Op::Reduce;
        self.check_root(o, root)?;
        let reducer = self.reducer::<T>(o, red)?;
        let mut scratch;
        let buf: &mut [u8] = match (out, own) {
            (Some(out), _) => bytes_mut(out),
            (None, Some(own)) => {
                scratch = bytes(own).to_vec();
                &mut scratch
            }
            (None, None) => unreachable!("reduce_impl: neither input nor output"),
        };
        let n = self.size();
        let is_root = self.rank() == root;
        let m = bytes_of::<T>(count);
        self.collective(o, fp::<T>(o, Some(red), Some(root), count), m, |ch, a| {
            match a.reduce {
                ReduceAlgo::Binomial | ReduceAlgo::Auto => {
                    reduce::binomial(ch, buf, root, &reducer, a.segment_bytes)?
                }
                ReduceAlgo::Rabenseifner => reduce::rabenseifner(ch, buf, root, &reducer)?,
            }
            if is_root {
                finish_avg(&reducer, buf, n);
            }
            Ok(())
        })
    }

    /// Reduces `buf` over all ranks, in place: every rank ends with the same (bit-identical)
    /// result.
    pub fn all_reduce<T: Element>(&self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        let o = Op::AllReduce;
        let reducer = self.reducer::<T>(o, op)?;
        let n = self.size();
        let m = bytes_of::<T>(buf.len());
        self.collective(o, fp::<T>(o, Some(op), None, buf.len()), m, |ch, a| {
            let b = bytes_mut(buf);
            let seg = a.segment_bytes;
            // The plan filled in `a.all_reduce` (never auto here); on a hierarchical topology
            // the hierarchical all-reduce picks its leaders' algorithm by size.
            let algo = a.all_reduce_for_hosts(b.len(), Some(&self.hosts));
            match algo {
                AllReduceAlgo::Naive => allreduce::naive(ch, b, &reducer)?,
                AllReduceAlgo::Ring => allreduce::ring(ch, b, &reducer, seg)?,
                AllReduceAlgo::Tree => allreduce::tree(ch, b, &reducer, seg)?,
                AllReduceAlgo::RecursiveDoubling => allreduce::recursive_doubling(ch, b, &reducer)?,
                AllReduceAlgo::Rabenseifner => allreduce::rabenseifner(ch, b, &reducer)?,
                AllReduceAlgo::DoubleBinaryTree => {
                    allreduce::double_binary_tree(ch, b, &reducer, seg)?
                }
                AllReduceAlgo::Hierarchical => {
                    let inter = a.inter_host_all_reduce_for(b.len());
                    hierarchical::all_reduce(ch, b, &reducer, &self.hosts, seg, inter)?
                }
                AllReduceAlgo::Auto => unreachable!("all_reduce_for resolves auto"),
            }
            finish_avg(&reducer, b, n);
            Ok(())
        })
    }

    /// Reduces `send` over all ranks into `recv` (same length) on every rank.
    pub fn all_reduce_into<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        self.check_len(Op::AllReduce, "recv", recv.len(), send.len())?;
        recv.copy_from_slice(send);
        self.all_reduce(recv, op)
    }

    /// Collects every rank's `send` at the root: `recv` (root only, `size() * send.len()`
    /// elements) holds rank r's data at `r * send.len()`.
    pub fn gather<T: Element>(
        &self,
        send: &[T],
        recv: Option<&mut [T]>,
        root: usize,
    ) -> Result<()> {
        let o = Op::Gather;
        self.check_root(o, root)?;
        let n = self.size();
        let mut empty: [T; 0] = [];
        let recv: &mut [T] = if self.rank() == root {
            let r = recv.ok_or_else(|| self.invalid(o, "the root must pass a receive buffer"))?;
            self.check_len(o, "recv", r.len(), n * send.len())?;
            r
        } else {
            &mut empty
        };
        let chunks = even_chunks(n * send.len(), n, T::DTYPE.size());
        let m = bytes_of::<T>(n * send.len());
        self.collective(o, fp::<T>(o, None, Some(root), send.len()), m, |ch, a| {
            run_gather(ch, a, bytes(send), bytes_mut(recv), &chunks, root)
        })
    }

    /// Gather with a count per rank: `counts[r]` elements from rank r land in the root's `recv`
    /// at the sum of the counts before r. `send.len()` must equal `counts[rank()]`; `recv` must
    /// be `Some` (with the sum of the counts) at the root and is ignored elsewhere. Every rank
    /// passes the same counts (the binomial gather forwards whole subtrees).
    pub fn gather_v<T: Element>(
        &self,
        send: &[T],
        recv: Option<&mut [T]>,
        counts: &[usize],
        root: usize,
    ) -> Result<()> {
        let o = Op::GatherV;
        self.check_root(o, root)?;
        let total = self.check_counts::<T>(o, "counts", counts)?;
        self.check_len(o, "send", send.len(), counts[self.rank()])?;
        let mut empty: [T; 0] = [];
        let recv: &mut [T] = if self.rank() == root {
            let r = recv.ok_or_else(|| self.invalid(o, "the root must pass a receive buffer"))?;
            self.check_len(o, "recv", r.len(), total)?;
            r
        } else {
            &mut empty
        };
        let chunks = chunks_from_counts(counts, T::DTYPE.size());
        let fingerprint = fp::<T>(o, None, Some(root), counts_digest(counts));
        let m = bytes_of::<T>(total);
        self.collective(o, fingerprint, m, |ch, a| {
            run_gather(ch, a, bytes(send), bytes_mut(recv), &chunks, root)
        })
    }

    /// Hands every rank r the `r`-th block of the root's `send` (`size() * recv.len()` elements,
    /// root only).
    pub fn scatter<T: Element>(
        &self,
        send: Option<&[T]>,
        recv: &mut [T],
        root: usize,
    ) -> Result<()> {
        let o = Op::Scatter;
        self.check_root(o, root)?;
        let n = self.size();
        let send: &[T] = if self.rank() == root {
            let s = send.ok_or_else(|| self.invalid(o, "the root must pass a send buffer"))?;
            self.check_len(o, "send", s.len(), n * recv.len())?;
            s
        } else {
            &[]
        };
        let chunks = even_chunks(n * recv.len(), n, T::DTYPE.size());
        let m = bytes_of::<T>(n * recv.len());
        self.collective(o, fp::<T>(o, None, Some(root), recv.len()), m, |ch, a| {
            run_scatter(ch, a, bytes(send), bytes_mut(recv), &chunks, root)
        })
    }

    /// Scatter with a count per rank: rank r receives `counts[r]` elements, taken from the
    /// root's `send` at the sum of the counts before r. `recv.len()` must equal
    /// `counts[rank()]`; `send` must be `Some` (with the sum of the counts) at the root and is
    /// ignored elsewhere. Every rank passes the same counts (the binomial scatter forwards whole
    /// subtrees).
    pub fn scatter_v<T: Element>(
        &self,
        send: Option<&[T]>,
        recv: &mut [T],
        counts: &[usize],
        root: usize,
    ) -> Result<()> {
        let o = Op::ScatterV;
        self.check_root(o, root)?;
        let total = self.check_counts::<T>(o, "counts", counts)?;
        self.check_len(o, "recv", recv.len(), counts[self.rank()])?;
        let send: &[T] = if self.rank() == root {
            let s = send.ok_or_else(|| self.invalid(o, "the root must pass a send buffer"))?;
            self.check_len(o, "send", s.len(), total)?;
            s
        } else {
            &[]
        };
        let chunks = chunks_from_counts(counts, T::DTYPE.size());
        let fingerprint = fp::<T>(o, None, Some(root), counts_digest(counts));
        let m = bytes_of::<T>(total);
        self.collective(o, fingerprint, m, |ch, a| {
            run_scatter(ch, a, bytes(send), bytes_mut(recv), &chunks, root)
        })
    }

    /// Every rank receives every rank's `send`: `recv` (`size() * send.len()` elements) holds
    /// rank r's data at `r * send.len()`.
    pub fn all_gather<T: Element>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        let o = Op::AllGather;
        let n = self.size();
        self.check_len(o, "recv", recv.len(), n * send.len())?;
        let at = self.rank() * send.len();
        recv[at..at + send.len()].copy_from_slice(send);
        self.all_gather_in_place(recv)
    }

    /// All-gather where `buf` (`size() * c` elements) already holds this rank's block at
    /// `rank() * c`.
    pub fn all_gather_in_place<T: Element>(&self, buf: &mut [T]) -> Result<()> {
        let o = Op::AllGather;
        let n = self.size();
        if !buf.len().is_multiple_of(n) {
            return Err(self.invalid(
                o,
                format!(
                    "buffer of {} elements does not split into {n} equal blocks",
                    buf.len()
                ),
            ));
        }
        let chunks = even_chunks(buf.len(), n, T::DTYPE.size());
        let m = bytes_of::<T>(buf.len());
        self.collective(o, fp::<T>(o, None, None, buf.len() / n), m, |ch, a| {
            run_all_gather(ch, a, bytes_mut(buf), &chunks)
        })
    }

    /// All-gather with a count per rank: `counts[r]` elements from rank r land at the sum of the
    /// counts before r. `send.len()` must equal `counts[rank()]`; every rank passes the same counts.
    pub fn all_gather_v<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
    ) -> Result<()> {
        let o = Op::AllGatherV;
        let total = self.check_counts::<T>(o, "counts", counts)?;
        self.check_len(o, "send", send.len(), counts[self.rank()])?;
        self.check_len(o, "recv", recv.len(), total)?;
        let chunks = chunks_from_counts(counts, T::DTYPE.size());
        let es = T::DTYPE.size();
        let own = chunks[self.rank()].start / es;
        recv[own..own + send.len()].copy_from_slice(send);
        let fingerprint = fp::<T>(o, None, None, counts_digest(counts));
        let m = bytes_of::<T>(total);
        self.collective(o, fingerprint, m, |ch, a| {
            run_all_gather(ch, a, bytes_mut(recv), &chunks)
        })
    }

    /// Reduces `send` (`size() * recv.len()` elements) over all ranks and hands rank r block r of
    /// the result in `recv`.
    pub fn reduce_scatter<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        let o = Op::ReduceScatter;
        let n = self.size();
        let reducer = self.reducer::<T>(o, op)?;
        self.check_len(o, "send", send.len(), n * recv.len())?;
        let chunks = even_chunks(send.len(), n, T::DTYPE.size());
        let mut scratch = bytes(send).to_vec();
        let own = chunks[self.rank()].clone();
        let m = bytes_of::<T>(send.len());
        self.collective(o, fp::<T>(o, Some(op), None, recv.len()), m, |ch, a| {
            run_reduce_scatter(ch, a, &mut scratch, &chunks, &reducer)?;
            let out = bytes_mut(recv);
            out.copy_from_slice(&scratch[own]);
            finish_avg(&reducer, out, n);
            Ok(())
        })
    }

    /// Reduce-scatter with a count per rank: reduces `send` (the sum of the counts) over all
    /// ranks and hands rank r its block of the result, `counts[r]` elements at the sum of the
    /// counts before r, in `recv` (`counts[rank()]` elements). Every rank passes the same counts.
    pub fn reduce_scatter_v<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        op: ReduceOp,
    ) -> Result<()> {
        let o = Op::ReduceScatterV;
        let n = self.size();
        let reducer = self.reducer::<T>(o, op)?;
        let total = self.check_counts::<T>(o, "counts", counts)?;
        self.check_len(o, "send", send.len(), total)?;
        self.check_len(o, "recv", recv.len(), counts[self.rank()])?;
        let chunks = chunks_from_counts(counts, T::DTYPE.size());
        let mut scratch = bytes(send).to_vec();
        let own = chunks[self.rank()].clone();
        let fingerprint = fp::<T>(o, Some(op), None, counts_digest(counts));
        let m = bytes_of::<T>(total);
        self.collective(o, fingerprint, m, |ch, a| {
            run_reduce_scatter(ch, a, &mut scratch, &chunks, &reducer)?;
            let out = bytes_mut(recv);
            out.copy_from_slice(&scratch[own]);
            finish_avg(&reducer, out, n);
            Ok(())
        })
    }

    /// Inclusive prefix reduction, in place: rank r ends with `x_0 op x_1 op ... op x_r`, where
    /// `x_i` is rank i's `buf` (`Avg`: divided by `r + 1`). Every rank passes the same length
    /// and op. Runs the recursive-doubling scan (`ceil(log2 n)` steps; see
    /// [`tutti_core::algo::scan`]): operands are combined in rank order, bracketed by the
    /// doubling tree, so the result is the same on every run; on floats its last bits may
    /// differ from a left-to-right fold (integers and exact float values match it).
    pub fn scan<T: Element>(&self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        self.scan_impl(Op::Scan, ScanKind::Inclusive, buf, op)
    }

    /// Exclusive prefix reduction, in place: rank r > 0 ends with `x_0 op ... op x_(r-1)`
    /// (`Avg`: divided by `r`). Rank 0, which has no ranks before it, keeps its `buf` unchanged
    /// (MPI's `MPI_Exscan` leaves it undefined). Otherwise as [`scan`](Self::scan).
    pub fn exscan<T: Element>(&self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        self.scan_impl(Op::Exscan, ScanKind::Exclusive, buf, op)
    }

    fn scan_impl<T: Element>(
        &self,
        o: Op,
        kind: ScanKind,
        buf: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        let reducer = self.reducer::<T>(o, op)?;
        let contributors = match kind {
            ScanKind::Inclusive => self.rank() + 1,
            ScanKind::Exclusive => self.rank(),
        };
        self.collective(o, fp::<T>(o, Some(op), None, buf.len()), None, |ch, _| {
            let b = bytes_mut(buf);
            scan::recursive_doubling(ch, b, &reducer, kind)?;
            finish_avg(&reducer, b, contributors);
            Ok(())
        })
    }

    /// Every rank sends block j of `send` to rank j and receives rank j's block into block j of
    /// `recv`; both have `size() * c` elements.
    pub fn all_to_all<T: Element>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        let o = Op::AllToAll;
        let n = self.size();
        self.check_len(o, "recv", recv.len(), send.len())?;
        if !send.len().is_multiple_of(n) {
            return Err(self.invalid(
                o,
                format!(
                    "send of {} elements does not split into {n} equal blocks",
                    send.len()
                ),
            ));
        }
        let chunks = even_chunks(send.len(), n, T::DTYPE.size());
        let block = send.len() / n * T::DTYPE.size();
        let m = bytes_of::<T>(send.len());
        self.collective(
            o,
            fp::<T>(o, None, None, send.len() / n),
            m,
            |ch, a| match a.all_to_all {
                AllToAllAlgo::Pairwise | AllToAllAlgo::Auto => {
                    alltoall::pairwise(ch, bytes(send), &chunks, bytes_mut(recv), &chunks)
                }
                AllToAllAlgo::Bruck => alltoall::bruck(ch, bytes(send), bytes_mut(recv), block),
            },
        )
    }

    /// All-to-all with counts: `send_counts[j]` elements go to rank j (blocks laid out in rank
    /// order in `send`), `recv_counts[j]` elements come from rank j. Rank i's `send_counts[j]`
    /// must equal rank j's `recv_counts[i]` (a mismatch is reported, never truncated).
    pub fn all_to_all_v<T: Element>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv: &mut [T],
        recv_counts: &[usize],
    ) -> Result<()> {
        let o = Op::AllToAllV;
        let send_total = self.check_counts::<T>(o, "send_counts", send_counts)?;
        let recv_total = self.check_counts::<T>(o, "recv_counts", recv_counts)?;
        self.check_len(o, "send", send.len(), send_total)?;
        self.check_len(o, "recv", recv.len(), recv_total)?;
        let es = T::DTYPE.size();
        let sc = chunks_from_counts(send_counts, es);
        let rc = chunks_from_counts(recv_counts, es);
        if send_counts[self.rank()] != recv_counts[self.rank()] {
            return Err(self.invalid(
                o,
                format!(
                    "this rank sends itself {} elements but expects {}",
                    send_counts[self.rank()],
                    recv_counts[self.rank()]
                ),
            ));
        }
        let rank = self.rank();
        // Sizes differ between ranks: no model, the forced or fixed algorithm.
        self.collective(o, fp::<T>(o, None, None, 0), None, |ch, a| {
            match a.all_to_all {
                AllToAllAlgo::Pairwise | AllToAllAlgo::Auto => {
                    alltoall::pairwise(ch, bytes(send), &sc, bytes_mut(recv), &rc)
                }
                AllToAllAlgo::Bruck => {
                    let seq = ch.seq;
                    // Every rank finds the same disagreement in the all-gathered sizes.
                    let mismatch = |peer, what| Error::Mismatch {
                        op: o,
                        seq,
                        rank,
                        peer,
                        what,
                    };
                    alltoall::bruck_v(ch, bytes(send), &sc, bytes_mut(recv), &rc, mismatch)
                }
            }
        })
    }

    /// Returns once every rank has entered the barrier.
    pub fn barrier(&self) -> Result<()> {
        let o = Op::Barrier;
        self.collective(
            o,
            Fingerprint::new(o, None, None, None, 0),
            Some(0),
            |ch, a| match a.barrier {
                BarrierAlgo::Dissemination => barrier::dissemination(ch),
            },
        )
    }
}

impl Communicator {
    /// Checks a counts vector of a `_v` collective (one per rank, a total whose bytes are
    /// addressable) and returns the total number of elements.
    fn check_counts<T: Element>(&self, op: Op, name: &str, counts: &[usize]) -> Result<usize> {
        self.check_len(op, name, counts.len(), self.size())?;
        counts
            .iter()
            .try_fold(0usize, |sum, &c| sum.checked_add(c))
            .filter(|total| total.checked_mul(T::DTYPE.size()).is_some())
            .ok_or_else(|| {
                self.invalid(
                    op,
                    format!("{name} {counts:?} sum to more elements than fit in memory"),
                )
            })
    }
}

/// The bytes of `count` elements of `T` as the cost model counts them (every rank passes the
/// same count, so every rank chooses the same algorithm).
fn bytes_of<T: Element>(count: usize) -> Option<usize> {
    Some(count.saturating_mul(T::DTYPE.size()))
}

/// A digest of a counts vector for the fingerprint (ranks passing different counts differ).
fn counts_digest(counts: &[usize]) -> usize {
    counts.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x100_0000_01b3)
    }) as usize
}

// The algorithm dispatch of the collectives that come in a plain and a `_v` form, on bytes, so
// that a new algorithm is named in one place.

/// Runs the gather algorithm `a` names.
fn run_gather(
    ch: &mut CollectiveChannel<'_>,
    a: &Algorithms,
    send: &[u8],
    recv: &mut [u8],
    chunks: &[Range<usize>],
    root: usize,
) -> Result<()> {
    match a.gather {
        GatherAlgo::Linear | GatherAlgo::Auto => gather::linear(ch, send, recv, chunks, root),
        GatherAlgo::Binomial => gather::binomial(ch, send, recv, chunks, root),
    }
}

/// Runs the scatter algorithm `a` names.
fn run_scatter(
    ch: &mut CollectiveChannel<'_>,
    a: &Algorithms,
    send: &[u8],
    recv: &mut [u8],
    chunks: &[Range<usize>],
    root: usize,
) -> Result<()> {
    match a.scatter {
        ScatterAlgo::Linear | ScatterAlgo::Auto => scatter::linear(ch, send, recv, chunks, root),
        ScatterAlgo::Binomial => scatter::binomial(ch, send, recv, chunks, root),
    }
}

/// Runs the all-gather algorithm `a` names over `buf`, which holds this rank's chunk.
fn run_all_gather(
    ch: &mut CollectiveChannel<'_>,
    a: &Algorithms,
    buf: &mut [u8],
    chunks: &[Range<usize>],
) -> Result<()> {
    match a.all_gather {
        AllGatherAlgo::Ring | AllGatherAlgo::Auto => {
            allgather::ring(ch, buf, chunks, a.segment_bytes)
        }
        AllGatherAlgo::RecursiveDoubling => allgather::recursive_doubling(ch, buf, chunks),
        AllGatherAlgo::Bruck => allgather::bruck(ch, buf, chunks),
    }
}

/// Runs the reduce-scatter algorithm `a` names over `scratch` (a copy of the send buffer).
fn run_reduce_scatter(
    ch: &mut CollectiveChannel<'_>,
    a: &Algorithms,
    scratch: &mut [u8],
    chunks: &[Range<usize>],
    reducer: &Reducer,
) -> Result<()> {
    match a.reduce_scatter {
        ReduceScatterAlgo::Ring | ReduceScatterAlgo::Auto => {
            reduce_scatter::ring(ch, scratch, chunks, reducer, a.segment_bytes)
        }
        ReduceScatterAlgo::RecursiveHalving => {
            reduce_scatter::recursive_halving(ch, scratch, chunks, reducer)
        }
    }
}
