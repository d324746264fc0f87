//! Plans: what an algorithm sends and receives, rank by rank, recorded by running it.
//!
//! [`record`] runs a schedule on `n` threads, each holding a [`RecordingChannel`]: a [`Channel`]
//! with an unbounded flow-control window (a send never waits) over in-process queues, which moves
//! the bytes for real (so data-dependent schedules such as all-to-all-v's size exchange run as
//! they do on a network) and notes every call as an [`Event`]. The result is a [`Plan`]: per rank,
//! the ordered events, and the totals the cost model speaks of (messages, bytes sent, bytes
//! combined on receipt) plus the critical path ([`Plan::critical_path`]) under any per-message,
//! per-byte and per-combined-byte weights.
//!
//! What a plan cannot see: a combine an algorithm does after a plain receive (recursive doubling
//! and Rabenseifner's halving receive into scratch and combine `lower op upper` themselves, to
//! keep the operand order the same on both partners). Those receives show as `copy`, and their
//! combines are in no count of the plan; the cost formulas in [`crate::model`] include them.
//!
//! The order of a rank's events is the one its schedule takes with an unbounded window (a
//! schedule that sends ahead within the window, such as the pairwise all-to-all, sends first).

use crate::algo::{
    allgather, allreduce, alltoall, barrier, broadcast, gather, hierarchical, reduce,
    reduce_scatter, scatter, Algorithms, AllGatherAlgo, AllReduceAlgo, AllToAllAlgo, BarrierAlgo,
    BroadcastAlgo, GatherAlgo, Hosts, ReduceAlgo, ReduceScatterAlgo, ScatterAlgo,
};
use crate::channel::{Channel, RecvInto};
use crate::dtype::DType;
use crate::layout;
use crate::model::Algorithm;
use crate::reduce::{ReduceOp, Reducer};
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::Duration;

/// How long a recording receive waits before it fails (a wrong schedule fails instead of
/// hanging: messages never wait on a window here, so only a missing send can hold a receive up).
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// One message's peer and length, as one side of an [`Event`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The rank sent to, or received from.
    pub peer: usize,
    /// Payload bytes.
    pub bytes: usize,
}

/// What a receive does with its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Overwrites the buffer.
    Copy,
    /// Combines into the buffer (`recv_reduce`, or [`RecvInto::Combine`]).
    Combine,
}

/// One channel call of one rank: a `send` (only `send`), a `recv` or `recv_reduce` (only
/// `recv`), or a `send_recv` (both, progressing together).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub send: Option<Transfer>,
    pub recv: Option<(Transfer, Delivery)>,
}

impl Event {
    /// Bytes this event combines on receipt (0 for a copy or a plain send).
    pub fn combined_bytes(&self) -> usize {
        match self.recv {
            Some((t, Delivery::Combine)) => t.bytes,
            _ => 0,
        }
    }
}

/// A failed recording call: which rank, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// One rank's end of a recording: real in-process queues, an unbounded window, and the log.
pub struct RecordingChannel {
    rank: usize,
    size: usize,
    /// `to_peer[p]` carries this rank's messages to rank `p`.
    to_peer: Vec<Sender<Vec<u8>>>,
    /// `from_peer[p]` holds rank `p`'s messages to this rank, in order.
    from_peer: Vec<Receiver<Vec<u8>>>,
    events: Vec<Event>,
}

impl RecordingChannel {
    fn check_peer(&self, peer: usize, what: &str) -> Result<(), PlanError> {
        if peer >= self.size || peer == self.rank {
            return Err(PlanError(format!(
                "rank {}: {what} peer {peer} (of {} ranks)",
                self.rank, self.size
            )));
        }
        Ok(())
    }

    fn put(&mut self, to: usize, data: &[u8]) -> Result<Transfer, PlanError> {
        self.check_peer(to, "send to")?;
        self.to_peer[to]
            .send(data.to_vec())
            .map_err(|_| PlanError(format!("rank {}: rank {to} has gone", self.rank)))?;
        Ok(Transfer {
            peer: to,
            bytes: data.len(),
        })
    }

    fn take(&mut self, from: usize, into: RecvInto<'_>) -> Result<(Transfer, Delivery), PlanError> {
        self.check_peer(from, "recv from")?;
        let msg = match self.from_peer[from].recv_timeout(RECV_TIMEOUT) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => {
                return Err(PlanError(format!(
                    "rank {}: no message from rank {from} within {RECV_TIMEOUT:?}",
                    self.rank
                )))
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(PlanError(format!(
                    "rank {}: rank {from} returned without sending",
                    self.rank
                )))
            }
        };
        if msg.len() != into.len() {
            return Err(PlanError(format!(
                "rank {}: recv from rank {from}: expected {} bytes, got {}",
                self.rank,
                into.len(),
                msg.len()
            )));
        }
        let kind = match into {
            RecvInto::Copy(_) => Delivery::Copy,
            RecvInto::Combine(..) => Delivery::Combine,
        };
        into.store(&msg);
        let t = Transfer {
            peer: from,
            bytes: msg.len(),
        };
        Ok((t, kind))
    }

    fn log(&mut self, send: Option<Transfer>, recv: Option<(Transfer, Delivery)>) {
        self.events.push(Event { send, recv });
    }
}

impl Channel for RecordingChannel {
    type Error = PlanError;

    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn send(&mut self, peer: usize, data: &[u8]) -> Result<(), PlanError> {
        let t = self.put(peer, data)?;
        self.log(Some(t), None);
        Ok(())
    }

    fn recv(&mut self, peer: usize, buf: &mut [u8]) -> Result<(), PlanError> {
        let r = self.take(peer, RecvInto::Copy(buf))?;
        self.log(None, Some(r));
        Ok(())
    }

    fn recv_reduce(&mut self, peer: usize, acc: &mut [u8], red: &Reducer) -> Result<(), PlanError> {
        let r = self.take(peer, RecvInto::Combine(acc, red))?;
        self.log(None, Some(r));
        Ok(())
    }

    fn send_recv(
        &mut self,
        to: usize,
        data: &[u8],
        from: usize,
        into: RecvInto<'_>,
    ) -> Result<(), PlanError> {
        let t = self.put(to, data)?;
        let r = self.take(from, into)?;
        self.log(Some(t), Some(r));
        Ok(())
    }

    fn window(&self) -> usize {
        usize::MAX
    }
}

/// Builds the `n` connected ends of a recording.
fn channels(n: usize) -> Vec<RecordingChannel> {
    let mut to_peer: Vec<Vec<Sender<Vec<u8>>>> = (0..n).map(|_| Vec::with_capacity(n)).collect();
    let mut from_peer: Vec<Vec<Receiver<Vec<u8>>>> =
        (0..n).map(|_| Vec::with_capacity(n)).collect();
    for outgoing in &mut to_peer {
        for incoming in &mut from_peer {
            let (tx, rx) = mpsc::channel();
            outgoing.push(tx);
            incoming.push(rx); // pushed in sender order for every receiver
        }
    }
    to_peer
        .into_iter()
        .zip(from_peer)
        .enumerate()
        .map(|(rank, (to_peer, from_peer))| RecordingChannel {
            rank,
            size: n,
            to_peer,
            from_peer,
            events: Vec::new(),
        })
        .collect()
}

/// Runs `schedule` on `n >= 1` ranks, one thread each, and returns every rank's events. Fails
/// with the first rank's error, or if a message is left unreceived.
pub fn record<F>(n: usize, schedule: F) -> Result<Plan, PlanError>
where
    F: Fn(&mut RecordingChannel) -> Result<(), PlanError> + Sync,
{
    let ends = channels(n);
    let results: Vec<Result<RecordingChannel, PlanError>> = thread::scope(|s| {
        let handles: Vec<_> = ends
            .into_iter()
            .map(|mut ch| {
                let schedule = &schedule;
                s.spawn(move || {
                    schedule(&mut ch)?;
                    // A rank that has returned sends nothing more: a receive still waiting
                    // for it fails at once instead of timing out.
                    ch.to_peer.clear();
                    Ok(ch)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(PlanError("a rank panicked".into())))
            })
            .collect()
    });
    let ends: Vec<RecordingChannel> = results.into_iter().collect::<Result<_, _>>()?;
    for ch in &ends {
        for (src, rx) in ch.from_peer.iter().enumerate() {
            if let Ok(msg) = rx.try_recv() {
                return Err(PlanError(format!(
                    "a message of {} bytes from rank {src} to rank {} was never received",
                    msg.len(),
                    ch.rank
                )));
            }
        }
    }
    Ok(Plan {
        ranks: ends.into_iter().map(|ch| ch.events).collect(),
    })
}

/// What every rank of a recorded schedule does, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `ranks[r]`: rank `r`'s channel calls in the order it made them.
    pub ranks: Vec<Vec<Event>>,
}

/// Weights of the critical path: time per message, per byte sent, per byte combined.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    pub per_message: f64,
    pub per_byte: f64,
    pub per_combined_byte: f64,
}

impl Weights {
    /// Counts messages: the critical path in steps.
    pub const MESSAGES: Weights = Weights {
        per_message: 1.0,
        per_byte: 0.0,
        per_combined_byte: 0.0,
    };
    /// Counts bytes sent: the bytes on the critical path.
    pub const BYTES: Weights = Weights {
        per_message: 0.0,
        per_byte: 1.0,
        per_combined_byte: 0.0,
    };
    /// Counts bytes combined on receipt: the reduced bytes on the critical path.
    pub const COMBINED: Weights = Weights {
        per_message: 0.0,
        per_byte: 0.0,
        per_combined_byte: 1.0,
    };

    fn message(&self, bytes: usize) -> f64 {
        self.per_message + self.per_byte * bytes as f64
    }
}

/// Per rank, while the critical path is replayed: when its next call may start, and when its
/// outgoing and incoming links are free (full duplex).
#[derive(Clone, Copy, Debug, Default)]
struct Clock {
    ready: f64,
    tx_free: f64,
    rx_free: f64,
}

/// The critical-path replay: per rank its clock and next event; per pair the start and end of
/// every message sent so far, in order.
struct Replay<'a> {
    plan: &'a Plan,
    w: Weights,
    clocks: Vec<Clock>,
    next: Vec<usize>,
    /// Whether the send half of rank `r`'s next event has been started already.
    sent: Vec<bool>,
    /// `wire[src][dst]`: the start times of `src`'s messages to `dst`, in order.
    wire: Vec<Vec<Vec<f64>>>,
    /// `taken[dst][src]`: how many of them `dst` has received.
    taken: Vec<Vec<usize>>,
}

impl<'a> Replay<'a> {
    fn new(plan: &'a Plan, w: Weights) -> Replay<'a> {
        let n = plan.ranks.len();
        Replay {
            plan,
            w,
            clocks: vec![Clock::default(); n],
            next: vec![0; n],
            sent: vec![false; n],
            wire: vec![vec![Vec::new(); n]; n],
            taken: vec![vec![0; n]; n],
        }
    }

    /// Starts the send half of rank `r`'s event at its clock, once.
    fn start_send(&mut self, r: usize, t: Transfer) {
        if self.sent[r] {
            return;
        }
        let c = &mut self.clocks[r];
        let start = c.ready.max(c.tx_free);
        c.tx_free = start + self.w.message(t.bytes);
        self.wire[r][t.peer].push(start);
        self.sent[r] = true;
    }

    /// Advances rank `r` by one event if it can; returns whether it did.
    fn step(&mut self, r: usize) -> bool {
        let Some(&ev) = self.plan.ranks[r].get(self.next[r]) else {
            return false;
        };
        if let Some(t) = ev.send {
            self.start_send(r, t);
        }
        let mut end = self.clocks[r].ready;
        if ev.send.is_some() {
            end = end.max(self.clocks[r].tx_free);
        }
        if let Some((t, _)) = ev.recv {
            let k = self.taken[r][t.peer];
            let Some(&start) = self.wire[t.peer][r].get(k) else {
                return false; // its message has not been sent yet
            };
            self.taken[r][t.peer] += 1;
            let c = &mut self.clocks[r];
            c.rx_free = start.max(c.rx_free) + self.w.message(t.bytes);
            end = end.max(c.rx_free) + self.w.per_combined_byte * ev.combined_bytes() as f64;
        }
        self.clocks[r].ready = end;
        self.next[r] += 1;
        self.sent[r] = false;
        true
    }

    /// Replays to the end; the latest clock, or `None` if some receive never gets its message.
    fn run(mut self) -> Option<f64> {
        let n = self.plan.ranks.len();
        loop {
            let mut moved = false;
            for r in 0..n {
                while self.step(r) {
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        let done = (0..n).all(|r| self.next[r] == self.plan.ranks[r].len());
        done.then(|| self.clocks.iter().map(|c| c.ready).fold(0.0, f64::max))
    }
}

impl Plan {
    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.ranks.len()
    }

    fn events(&self) -> impl Iterator<Item = &Event> {
        self.ranks.iter().flatten()
    }

    /// Messages sent by all ranks.
    pub fn messages(&self) -> usize {
        self.events().filter(|e| e.send.is_some()).count()
    }

    /// Payload bytes sent by all ranks.
    pub fn bytes_sent(&self) -> usize {
        self.events().filter_map(|e| e.send).map(|t| t.bytes).sum()
    }

    /// Bytes combined on receipt by all ranks (see the module doc for what this misses).
    pub fn bytes_combined(&self) -> usize {
        self.events().map(Event::combined_bytes).sum()
    }

    /// The most messages any one rank sends.
    pub fn max_rank_messages(&self) -> usize {
        let per_rank = self
            .ranks
            .iter()
            .map(|evs| evs.iter().filter(|e| e.send.is_some()));
        per_rank.map(Iterator::count).max().unwrap_or(0)
    }

    /// The length of the critical path under `w`: every rank's calls are replayed in order; a
    /// message of `b` bytes occupies its sender's outgoing link and its receiver's incoming link
    /// for `per_message + b per_byte` (each link carries one message at a time, the two
    /// directions independently); it starts when the sender reaches it and its link is free
    /// (sends never wait for the receiver: the window is unbounded), and a receive ends when the
    /// message has crossed the receiver's link, plus `b per_combined_byte` to combine it. A
    /// `send_recv` ends when both halves have. With [`Weights::MESSAGES`] this is the number of
    /// steps; with [`Weights::BYTES`] the bytes on the critical path.
    ///
    /// `None` if a receive has no matching send (not a recorded plan).
    pub fn critical_path(&self, w: Weights) -> Option<f64> {
        Replay::new(self, w).run()
    }

    /// The critical path in steps ([`Weights::MESSAGES`]).
    pub fn steps(&self) -> usize {
        self.critical_path(Weights::MESSAGES).unwrap_or(f64::NAN) as usize
    }

    /// The plan as a table: one line per event, then the totals.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "rank  call  send to   bytes  recv from   bytes  into");
        for (r, evs) in self.ranks.iter().enumerate() {
            for (i, e) in evs.iter().enumerate() {
                let _ = writeln!(out, "{r:>4}  {i:>4}  {}", EventRow(e));
            }
        }
        let _ = writeln!(
            out,
            "ranks {}, messages {}, bytes sent {}, bytes combined {}, steps {}, bytes on the \
             critical path {}",
            self.size(),
            self.messages(),
            self.bytes_sent(),
            self.bytes_combined(),
            self.steps(),
            self.critical_path(Weights::BYTES).unwrap_or(f64::NAN),
        );
        out
    }
}

/// An event as the columns of [`Plan::render`].
struct EventRow<'a>(&'a Event);

impl fmt::Display for EventRow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.send {
            Some(t) => write!(f, "{:>7}  {:>6}", t.peer, t.bytes)?,
            None => write!(f, "{:>7}  {:>6}", "-", "-")?,
        }
        match self.0.recv {
            Some((t, into)) => {
                let into = match into {
                    Delivery::Copy => "copy",
                    Delivery::Combine => "combine",
                };
                write!(f, "  {:>9}  {:>6}  {into}", t.peer, t.bytes)
            }
            None => write!(f, "  {:>9}  {:>6}  -", "-", "-"),
        }
    }
}

/// Records `algo` on `n` ranks and `m` bytes with segments of `seg` bytes (`m` as in
/// [`crate::model`]: an all-to-all sends `m / n` whole bytes to each rank), over `u8` sums,
/// root 0, even chunks; `hierarchical` over one rank per host (it is then its inter-host
/// algorithm), `auto` as `Algorithms::default()` picks it.
pub fn record_algorithm(
    algo: Algorithm,
    n: usize,
    m: usize,
    seg: usize,
) -> Result<Plan, PlanError> {
    let red = Reducer::new(DType::U8, ReduceOp::Sum).expect("u8 sums exist");
    let chunks = layout::even_chunks(m, n, 1);
    record(n, |ch| {
        let mut buf: Vec<u8> = (0..m).map(|i| (i + ch.rank()) as u8).collect();
        match algo {
            Algorithm::AllReduce(a) => run_all_reduce(a, ch, &mut buf, &red, seg),
            Algorithm::Broadcast(a) => run_broadcast(a, ch, &mut buf, seg),
            Algorithm::Reduce(ReduceAlgo::Binomial | ReduceAlgo::Auto) => {
                reduce::binomial(ch, &mut buf, 0, &red, seg)
            }
            Algorithm::Reduce(ReduceAlgo::Rabenseifner) => {
                reduce::rabenseifner(ch, &mut buf, 0, &red)
            }
            Algorithm::AllGather(a) => run_all_gather(a, ch, &mut buf, &chunks, seg),
            Algorithm::ReduceScatter(ReduceScatterAlgo::Ring | ReduceScatterAlgo::Auto) => {
                reduce_scatter::ring(ch, &mut buf, &chunks, &red, seg)
            }
            Algorithm::ReduceScatter(ReduceScatterAlgo::RecursiveHalving) => {
                reduce_scatter::recursive_halving(ch, &mut buf, &chunks, &red)
            }
            Algorithm::AllToAll(a) => run_all_to_all(a, ch, m / n),
            Algorithm::Gather(a) => run_gather(a, ch, &chunks),
            Algorithm::Scatter(a) => run_scatter(a, ch, &chunks),
            Algorithm::Barrier(BarrierAlgo::Dissemination) => barrier::dissemination(ch),
        }
    })
}

fn run_all_reduce(
    a: AllReduceAlgo,
    ch: &mut RecordingChannel,
    buf: &mut [u8],
    red: &Reducer,
    seg: usize,
) -> Result<(), PlanError> {
    let defaults = Algorithms::default();
    match a {
        AllReduceAlgo::Naive => allreduce::naive(ch, buf, red),
        AllReduceAlgo::Ring => allreduce::ring(ch, buf, red, seg),
        AllReduceAlgo::Tree => allreduce::tree(ch, buf, red, seg),
        AllReduceAlgo::RecursiveDoubling => allreduce::recursive_doubling(ch, buf, red),
        AllReduceAlgo::Rabenseifner => allreduce::rabenseifner(ch, buf, red),
        AllReduceAlgo::DoubleBinaryTree => allreduce::double_binary_tree(ch, buf, red, seg),
        AllReduceAlgo::Auto => {
            run_all_reduce(defaults.all_reduce_for(buf.len()), ch, buf, red, seg)
        }
        AllReduceAlgo::Hierarchical => {
            let hosts = Hosts::one_per_rank(ch.size());
            let inter = defaults.inter_host_all_reduce_for(buf.len());
            hierarchical::all_reduce(ch, buf, red, &hosts, seg, inter)
        }
    }
}

fn run_broadcast(
    a: BroadcastAlgo,
    ch: &mut RecordingChannel,
    buf: &mut [u8],
    seg: usize,
) -> Result<(), PlanError> {
    match a {
        BroadcastAlgo::Binomial => broadcast::binomial(ch, buf, 0, seg),
        BroadcastAlgo::Chain | BroadcastAlgo::Auto => broadcast::chain(ch, buf, 0, seg),
        BroadcastAlgo::ScatterAllgather => broadcast::scatter_allgather(ch, buf, 0, seg),
        BroadcastAlgo::Hierarchical => {
            let hosts = Hosts::one_per_rank(ch.size());
            hierarchical::broadcast(ch, buf, 0, &hosts, seg)
        }
    }
}

fn run_all_gather(
    a: AllGatherAlgo,
    ch: &mut RecordingChannel,
    buf: &mut [u8],
    chunks: &[Range<usize>],
    seg: usize,
) -> Result<(), PlanError> {
    match a {
        AllGatherAlgo::Ring | AllGatherAlgo::Auto => allgather::ring(ch, buf, chunks, seg),
        AllGatherAlgo::RecursiveDoubling => allgather::recursive_doubling(ch, buf, chunks),
        AllGatherAlgo::Bruck => allgather::bruck(ch, buf, chunks),
    }
}

/// An all-to-all of `block` bytes to each rank.
fn run_all_to_all(
    a: AllToAllAlgo,
    ch: &mut RecordingChannel,
    block: usize,
) -> Result<(), PlanError> {
    let n = ch.size();
    let send = vec![ch.rank() as u8; n * block];
    let mut recv = vec![0u8; n * block];
    match a {
        AllToAllAlgo::Pairwise | AllToAllAlgo::Auto => {
            let chunks = layout::even_chunks(n * block, n, 1);
            alltoall::pairwise(ch, &send, &chunks, &mut recv, &chunks)
        }
        AllToAllAlgo::Bruck => alltoall::bruck(ch, &send, &mut recv, block),
    }
}

fn run_gather(
    a: GatherAlgo,
    ch: &mut RecordingChannel,
    chunks: &[Range<usize>],
) -> Result<(), PlanError> {
    let send = vec![ch.rank() as u8; chunks[ch.rank()].len()];
    let mut recv = vec![0u8; chunks.last().map_or(0, |c| c.end)];
    match a {
        GatherAlgo::Linear | GatherAlgo::Auto => gather::linear(ch, &send, &mut recv, chunks, 0),
        GatherAlgo::Binomial => gather::binomial(ch, &send, &mut recv, chunks, 0),
    }
}

fn run_scatter(
    a: ScatterAlgo,
    ch: &mut RecordingChannel,
    chunks: &[Range<usize>],
) -> Result<(), PlanError> {
    let send = vec![7u8; chunks.last().map_or(0, |c| c.end)];
    let mut recv = vec![0u8; chunks[ch.rank()].len()];
    match a {
        ScatterAlgo::Linear | ScatterAlgo::Auto => scatter::linear(ch, &send, &mut recv, chunks, 0),
        ScatterAlgo::Binomial => scatter::binomial(ch, &send, &mut recv, chunks, 0),
    }
}

#[cfg(test)]
mod tests;
