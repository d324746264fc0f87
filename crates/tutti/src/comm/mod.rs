//! The [`Communicator`]: a group of ranks that exchange data point to point and in collectives.
//!
//! A communicator owns a place in a world (its rank and size), a [`Transport`] shared with the
//! communicators split from it, and a per-communicator sequence number that tags every collective
//! call. Its methods take slices of any [`Element`] type and return [`Result`]:
//!
//! - arguments are checked on this rank before any traffic ([`Error::InvalidArgument`]);
//! - every call is bounded by the communicator's timeout ([`Config::timeout`]);
//! - every message of a collective carries a fingerprint of the call, so a peer that called a
//!   different collective, type, count or root is reported ([`Error::Mismatch`]) instead of
//!   producing wrong data or hanging.
//!
//! Failure rule (as NCCL's and Gloo's): a collective that fails because a peer timed out, left or
//! broke its link ([`Error::breaks_the_world`]) aborts the world: this rank closes every link
//! with a goodbye that carries the error, so each peer fails its own call at once with
//! "rank R aborted: <why>" (which names the rank R waited for) instead of waiting out its
//! timeout, and later calls on any communicator of this world fail with "transport shut down".
//! A mismatched collective aborts too (the abort carries both calls). Point-to-point failures do
//! not abort (a receive may time out and be retried), nor do argument errors (caught before any
//! traffic).
//!
//! A dead, stopped or cut-off peer is found by the transport's liveness bound
//! (`TUTTI_LIVENESS`, 3 s: links carry heartbeats), not by the call timeout, which only bounds
//! how long a call may take. A collective blocked in a call that a peer runs with another
//! fingerprint fails with [`Error::Mismatch`] within a few hundred milliseconds even when the
//! two calls exchange nothing: blocked calls are announced to the peers.
//!
//! [`Communicator::abort`] does the same on purpose, with the caller's reason.
//!
//! Flight recorder: each call is recorded (op, sequence number, sizes, peer, algorithm, state,
//! times) in a ring of the last `TUTTI_TRACE_OPS` calls of its communicator (`recorder`), dumped
//! to a file on errors, on a signal and on [`Communicator::dump_trace`] (see [`crate::trace`]).
//!
//! Ordering rule (as in MPI): all ranks of a communicator call its collectives in the same order.
//! Calls on one communicator from several threads are serialised, each waiting for its turn
//! within its own deadline ([`Error::Busy`] otherwise); different communicators (for example
//! those made by [`Communicator::split`]) may run concurrently.

mod collectives;
mod gate;
mod init;
mod nonblocking;
mod objects;
mod p2p;
pub(crate) mod recorder;
mod split;

pub use nonblocking::Work;
pub use objects::{ObjectRef, ObjectStore};
pub use p2p::{RecvRequest, SendRequest, Status};

use crate::deadline::Deadline;
use crate::error::{Error, Op, Result};
use crate::exec::{CollectiveChannel, Fingerprint, Group};
use crate::trace::TraceSettings;
use crate::transport::mem::MemTransport;
use crate::transport::shm::ShmMode;
use crate::transport::tcp::TcpOptions;
use crate::transport::Transport;
use crate::tune::TuneSetting;
use recorder::{CallInfo, Recorder};
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tutti_core::algo::{Algorithms, Hosts};
use tutti_core::model::{choose, Choice, Op as ModelOp, Tuning};
use tutti_core::DType;
use tutti_core::{Element, ReduceOp, Reducer};

/// Default bound on one call (`TUTTI_TIMEOUT` seconds overrides it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Settings of a communicator. Every rank must use the same `algorithms`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Bound on every blocking call (each collective and point-to-point operation).
    pub timeout: Duration,
    /// The algorithm of each collective and the segment size.
    pub algorithms: Algorithms,
    /// Socket settings of the TCP links (used when the world is formed over TCP).
    pub tcp: TcpOptions,
    /// Where the cost model of the `auto` algorithms comes from (`TUTTI_TUNE`; used by
    /// [`Communicator::init`]).
    pub tune: TuneSetting,
    /// The flight recorder's ring size and where and when it dumps (`TUTTI_TRACE_*`; see
    /// [`crate::trace`]).
    pub trace: TraceSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timeout: DEFAULT_TIMEOUT,
            algorithms: Algorithms::default(),
            tcp: TcpOptions::default(),
            tune: TuneSetting::default(),
            trace: TraceSettings::default(),
        }
    }
}

impl Config {
    /// The default config with overrides from `TUTTI_TIMEOUT` (seconds), `TUTTI_ALGO`
    /// (`allreduce:ring,broadcast:binomial`), `TUTTI_SEGMENT_BYTES`,
    /// `TUTTI_SMALL_ALLREDUCE_BYTES` (the largest all-reduce, in bytes per rank, that the `auto`
    /// all-reduce runs by recursive doubling; the ring above), `TUTTI_SOCKET_BUFFER_BYTES` (0: the
    /// kernel's autotuning), `TUTTI_SPIN_US` (how long a receive polls before it sleeps),
    /// `TUTTI_WINDOW_BYTES`, `TUTTI_TRANSPORT` (`auto`, `shm` or `tcp`), `TUTTI_SHM_DIR` and
    /// `TUTTI_SHM_RING_BYTES`, `TUTTI_TUNE` (see [`TuneSetting`]), `TUTTI_LIVENESS` (seconds a
    /// link may stay silent before its peer is declared lost; 0: never), and `TUTTI_TRACE_DIR`,
    /// `TUTTI_TRACE_OPS` and `TUTTI_TRACE_SIGNAL` (see [`TraceSettings::from_vars`]).
    pub fn from_env() -> Result<Config> {
        Config::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`Config::from_env`], reading variables through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let mut c = Config {
            trace: TraceSettings::from_vars(&get).map_err(|e| Error::bootstrap(None, e))?,
            ..Config::default()
        };
        if let Some(v) = get("TUTTI_TIMEOUT") {
            c.timeout = crate::rendezvous::env::parse_secs(&v).ok_or_else(|| {
                Error::bootstrap(
                    None,
                    format!(
                        "TUTTI_TIMEOUT={v:?} is not a positive number of seconds of at most {:e}",
                        crate::rendezvous::env::MAX_TIMEOUT_SECS
                    ),
                )
            })?;
        }
        if let Some(v) = get("TUTTI_LIVENESS") {
            c.tcp.liveness = parse_liveness(&v).ok_or_else(|| {
                Error::bootstrap(
                    None,
                    format!(
                        "TUTTI_LIVENESS={v:?} is not a number of seconds (how long a silent \
                         link is tolerated; 0: forever) of at most {:e}",
                        crate::rendezvous::env::MAX_TIMEOUT_SECS
                    ),
                )
            })?;
        }
        if let Some(v) = get("TUTTI_ALGO") {
            c.algorithms = c
                .algorithms
                .parse(&v)
                .map_err(|e| Error::bootstrap(None, e.to_string()))?;
        }
        if let Some(v) = get("TUTTI_SEGMENT_BYTES") {
            c.algorithms.segment_bytes = v
                .trim()
                .parse()
                .ok()
                .filter(|s: &usize| *s > 0)
                .ok_or_else(|| {
                    Error::bootstrap(
                        None,
                        format!("TUTTI_SEGMENT_BYTES={v:?} is not a positive integer"),
                    )
                })?;
            c.algorithms.fixed_segment = true;
        }
        if let Some(v) = get("TUTTI_SMALL_ALLREDUCE_BYTES") {
            c.algorithms.small_all_reduce_bytes = v.trim().parse().map_err(|_| {
                Error::bootstrap(
                    None,
                    format!(
                        "TUTTI_SMALL_ALLREDUCE_BYTES={v:?} is not a number of bytes (all-reduces \
                         up to it use recursive doubling, larger ones the ring)"
                    ),
                )
            })?;
        }
        if let Some(v) = get("TUTTI_SPIN_US") {
            let us: u64 = v.trim().parse().map_err(|_| {
                Error::bootstrap(
                    None,
                    format!("TUTTI_SPIN_US={v:?} is not a number of microseconds (0: no polling)"),
                )
            })?;
            c.tcp.spin = Duration::from_micros(us);
        }
        if let Some(v) = get("TUTTI_SOCKET_BUFFER_BYTES") {
            c.tcp.socket_buffer_bytes = v.trim().parse().map_err(|_| {
                Error::bootstrap(
                    None,
                    format!(
                        "TUTTI_SOCKET_BUFFER_BYTES={v:?} is not a number of bytes \
                         (0 leaves the buffers to the kernel)"
                    ),
                )
            })?;
        }
        if let Some(v) = get("TUTTI_WINDOW_BYTES") {
            c.tcp.window_bytes = v
                .trim()
                .parse()
                .ok()
                .filter(|w: &usize| *w >= 16 << 10)
                .ok_or_else(|| {
                    Error::bootstrap(
                        None,
                        format!(
                            "TUTTI_WINDOW_BYTES={v:?} is not a number of bytes of at least \
                             16384 (the flow-control window per peer)"
                        ),
                    )
                })?;
        }
        if let Some(v) = get("TUTTI_TRANSPORT") {
            c.tcp.shm.mode = ShmMode::parse(&v).ok_or_else(|| {
                Error::bootstrap(
                    None,
                    format!(
                        "TUTTI_TRANSPORT={v:?} is not a transport; valid: auto (shared memory \
                         between ranks of one host, TCP between hosts), shm (as auto, and an \
                         error where shared memory cannot be set up), tcp"
                    ),
                )
            })?;
        }
        if let Some(v) = get("TUTTI_SHM_DIR") {
            c.tcp.shm.dir = v.into();
        }
        if let Some(v) = get("TUTTI_SHM_SPIN_US") {
            let us: u64 = v.trim().parse().map_err(|_| {
                Error::bootstrap(
                    None,
                    format!("TUTTI_SHM_SPIN_US={v:?} is not a number of microseconds"),
                )
            })?;
            c.tcp.shm.spin = Duration::from_micros(us);
        }
        if let Some(v) = get("TUTTI_SHM_WINDOW_BYTES") {
            c.tcp.shm.window_bytes = v
                .trim()
                .parse()
                .ok()
                .filter(|w: &usize| *w >= 16 << 10)
                .ok_or_else(|| {
                    Error::bootstrap(
                        None,
                        format!(
                            "TUTTI_SHM_WINDOW_BYTES={v:?} is not a number of bytes of at least \
                             16384 (the flow-control window of a shared-memory link)"
                        ),
                    )
                })?;
        }
        if let Some(v) = get("TUTTI_TUNE") {
            c.tune = TuneSetting::parse(&v);
        }
        if let Some(v) = get("TUTTI_SHM_RING_BYTES") {
            // The range the rings are built in (a value inside is rounded up to a power of two).
            let bytes: usize = v
                .trim()
                .parse()
                .ok()
                .filter(|b| (4usize << 10..=64 << 20).contains(b))
                .ok_or_else(|| {
                    Error::bootstrap(
                        None,
                        format!(
                            "TUTTI_SHM_RING_BYTES={v:?} is not a number of bytes from 4096 to                              67108864 (the ring size per direction of a shared-memory link)"
                        ),
                    )
                })?;
            c.tcp.shm.ring_bytes = Some(bytes);
        }
        Ok(c)
    }
}

/// State that collective calls on one communicator update in order.
struct CallState {
    /// Sequence number of the next collective call (its tag on the wire).
    next_seq: u64,
    /// Number of splits made from this communicator (part of each child's id).
    splits: u64,
    algorithms: Algorithms,
    /// The cost model every rank agreed on (`None`: the fixed defaults; see [`crate::tune`]).
    tuning: Option<Tuning>,
    /// Plans chosen so far, by collective, dtype and bytes. Choosing is pure (the same inputs
    /// give the same plan on every rank), so this only saves time; cleared when full or when
    /// the algorithms or the model change. FxHash: the keys are this rank's own calls (at
    /// most [`MAX_PLANS`]), and SipHash showed up in the 8-byte all-reduce's profile (~2%).
    plans: FxHashMap<PlanKey, CallPlan>,
}

/// What a plan depends on besides the settings: the collective, the dtype (its reduction
/// speed) and the bytes every rank agrees on (`None`: sizes differ between ranks, so the
/// model is not consulted).
type PlanKey = (ModelOp, Option<DType>, Option<usize>);

/// At most this many cached plans per communicator.
const MAX_PLANS: usize = 1024;

/// How one call runs, as every rank chooses it.
#[derive(Clone, Debug)]
struct CallPlan {
    choice: Choice,
    /// The fingerprint's plan half for `choice` (computed once: it searches the algorithms).
    bits: u64,
    /// `choice.algorithm`'s code, for the flight recorder (computed once, as `bits`).
    code: u8,
}

impl CallState {
    /// The plan of a call of `op` on `dtype` with `bytes` agreed bytes on `n` ranks.
    fn plan(&mut self, key: PlanKey, n: usize, hierarchical: bool) -> &CallPlan {
        if self.plans.len() >= MAX_PLANS && !self.plans.contains_key(&key) {
            self.plans.clear();
        }
        let (algorithms, tuning) = (&self.algorithms, &self.tuning);
        self.plans.entry(key).or_insert_with(|| {
            let (op, dtype, bytes) = key;
            let model = match (tuning, bytes) {
                (Some(t), Some(_)) => Some(t.for_dtype(dtype)),
                _ => None,
            };
            let choice = choose(
                algorithms,
                op,
                bytes.unwrap_or(0),
                n,
                model.as_ref(),
                hierarchical,
            );
            let bits = Fingerprint::plan_bits(choice.algorithm, choice.segment);
            let code = choice.algorithm.code();
            CallPlan { choice, bits, code }
        })
    }

    fn forget_plans(&mut self) {
        self.plans.clear();
    }
}

/// The collective of the cost model that runs `op` (`None`: a call without a choice of
/// algorithm).
fn model_op(op: Op) -> Option<ModelOp> {
    Some(match op {
        Op::AllReduce => ModelOp::AllReduce,
        Op::Broadcast => ModelOp::Broadcast,
        Op::Reduce => ModelOp::Reduce,
        Op::AllGather | Op::AllGatherV => ModelOp::AllGather,
        Op::ReduceScatter | Op::ReduceScatterV => ModelOp::ReduceScatter,
        Op::AllToAll | Op::AllToAllV => ModelOp::AllToAll,
        Op::Gather | Op::GatherV => ModelOp::Gather,
        Op::Scatter | Op::ScatterV => ModelOp::Scatter,
        Op::Barrier => ModelOp::Barrier,
        _ => return None,
    })
}

/// Keeps alive what the world needs beyond the transport (the rendezvous store server on rank 0).
pub(crate) type Keepalive = Box<dyn Send + Sync>;

/// A group of ranks that communicate. See the [module documentation](self).
pub struct Communicator {
    transport: Arc<dyn Transport>,
    group: Group,
    timeout: Duration,
    /// Shared with the progress thread's handles (one sequence of calls).
    state: Arc<Mutex<CallState>>,
    /// One collective at a time on this communicator (shared with the progress handles); held
    /// for the whole call, waited for within the call's deadline.
    gate: Arc<gate::CallGate>,
    /// The non-blocking calls queued on this communicator's progress thread.
    asyncq: Arc<nonblocking::AsyncQueue>,
    /// True for the handle a queued call runs on (it must not wait for the queue it is in).
    on_progress_thread: bool,
    /// The hosts of this communicator's ranks (from `world_hosts`).
    hosts: Hosts,
    /// The host of each world rank (shared by the communicators split from the world).
    world_hosts: Arc<Vec<u32>>,
    /// The flight recorder: this communicator's last calls (shared with its progress handle).
    recorder: Arc<Recorder>,
    _keepalive: Arc<Vec<Keepalive>>,
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("rank", &self.group.rank)
            .field("size", &self.group.members.len())
            .field("comm_id", &self.group.comm_id)
            .finish()
    }
}

impl Communicator {
    /// The world communicator over a transport (rank and size are the transport's), all ranks
    /// taken to share one host.
    pub fn with_transport(transport: Arc<dyn Transport>, config: Config) -> Communicator {
        let size = transport.size();
        Communicator::with_transport_on_hosts(transport, config, vec![0; size])
    }

    /// As [`with_transport`](Self::with_transport), with `hosts[r]` the host of world rank `r`
    /// (equal numbers: one host). Every rank must pass the same `hosts`: the default all-reduce
    /// of a world spread over several hosts, some with several ranks, is hierarchical.
    pub fn with_transport_on_hosts(
        transport: Arc<dyn Transport>,
        config: Config,
        hosts: Vec<u32>,
    ) -> Communicator {
        let size = transport.size();
        let rank = transport.rank();
        assert_eq!(hosts.len(), size, "one host per rank");
        let trace = Arc::new(config.trace.clone());
        Communicator::new(
            transport,
            Group {
                members: (0..size).collect::<Vec<_>>().into(),
                rank,
                comm_id: 0,
            },
            config.timeout,
            config.algorithms,
            Arc::new(hosts),
            Arc::new(Vec::new()),
        )
        .with_trace_settings(trace)
    }

    /// `size` communicators of one in-process world (ranks as threads; element `r` is rank `r`).
    pub fn in_process(size: usize, config: Config) -> Result<Vec<Communicator>> {
        Communicator::in_process_on_hosts(&vec![0; size], config)
    }

    /// As [`in_process`](Self::in_process), with rank `r` taken to run on host `hosts[r]`
    /// (to exercise what depends on the topology, such as the hierarchical all-reduce).
    pub fn in_process_on_hosts(hosts: &[u32], config: Config) -> Result<Vec<Communicator>> {
        if hosts.is_empty() {
            return Err(Error::bootstrap(
                None,
                "a world needs at least one rank (size 0 given)",
            ));
        }
        Ok(MemTransport::world(hosts.len())
            .into_iter()
            .map(|t| Communicator::with_transport_on_hosts(t, config.clone(), hosts.to_vec()))
            .collect())
    }

    fn new(
        transport: Arc<dyn Transport>,
        group: Group,
        timeout: Duration,
        algorithms: Algorithms,
        world_hosts: Arc<Vec<u32>>,
        keepalive: Arc<Vec<Keepalive>>,
    ) -> Communicator {
        let hosts = Hosts::from_keys(group.members.iter().map(|&w| world_hosts[w]));
        // Replaced by `with_trace_settings`, which every constructor calls: this one is never
        // registered, so it neither dumps nor installs a signal watcher.
        let recorder = Arc::new(Recorder::new(
            recorder::Owner::of(&group, transport.size()),
            Arc::new(TraceSettings::off()),
        ));
        Communicator {
            transport,
            group,
            timeout,
            state: Arc::new(Mutex::new(CallState {
                next_seq: 1,
                splits: 0,
                algorithms,
                tuning: None,
                plans: FxHashMap::default(),
            })),
            gate: Arc::default(),
            asyncq: Arc::default(),
            on_progress_thread: false,
            hosts,
            world_hosts,
            recorder,
            _keepalive: keepalive,
        }
    }

    /// A recorder for `group` (registered for dumps on a signal).
    fn new_recorder(
        group: &Group,
        transport: &dyn Transport,
        settings: Arc<TraceSettings>,
    ) -> Arc<Recorder> {
        let owner = recorder::Owner::of(group, transport.size());
        let rec = Arc::new(Recorder::new(owner, settings));
        crate::trace::register(&rec);
        rec
    }

    /// This communicator with a fresh recorder under `settings` (before any call).
    fn with_trace_settings(mut self, settings: Arc<TraceSettings>) -> Communicator {
        self.recorder = Communicator::new_recorder(&self.group, &*self.transport, settings);
        self
    }

    /// Which ranks of this communicator share a host: groups of ranks, as the hierarchical
    /// algorithms see them.
    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }

    /// This rank, in `0..size()`.
    pub fn rank(&self) -> usize {
        self.group.rank
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.group.members.len()
    }

    /// The world rank of each member (`world_ranks()[r]` is the world rank of rank `r`).
    pub fn world_ranks(&self) -> &[usize] {
        &self.group.members
    }

    /// The ranks of this communicator reached over shared memory from this rank, ascending
    /// (the others, but this rank, over TCP).
    pub fn shm_peers(&self) -> Vec<usize> {
        let shm = self.transport.shm_peers();
        (0..self.size())
            .filter(|&r| shm.contains(&self.group.members[r]))
            .collect()
    }

    /// The bound on each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the bound on each later call (a local setting; ranks may differ).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The algorithms in use.
    pub fn algorithms(&self) -> Algorithms {
        self.lock_state().algorithms
    }

    /// Forces algorithms and segment size for later calls. Every rank must make the same change
    /// between the same two calls.
    pub fn set_algorithms(&self, algorithms: Algorithms) {
        let mut state = self.lock_state();
        state.algorithms = algorithms;
        state.forget_plans();
    }

    /// Closes this rank's links: later calls here fail, and peers see this rank leave. Dropping
    /// the last communicator of a world does the same.
    pub fn shutdown(&self) {
        self.transport.shutdown("shutdown() called");
    }

    /// Closes the world's links after `cause`, telling every peer why, so that each fails its
    /// current call at once (naming this rank and, through `cause`, the rank it waited for)
    /// instead of waiting out its own timeout.
    fn abort_world(&self, cause: &Error) {
        let world_rank = self.group.members[self.group.rank];
        let reason = if self.group.comm_id == 0 {
            cause.to_string()
        } else {
            format!(
                "{cause} (in sub-communicator {:#x}, world rank {world_rank})",
                self.group.comm_id
            )
        };
        tracing::debug!(rank = world_rank, %reason, "aborting the world");
        self.transport.abort(&reason);
    }

    fn lock_state(&self) -> MutexGuard<'_, CallState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deadline(&self) -> Deadline {
        Deadline::after(self.timeout)
    }

    fn invalid(&self, op: Op, what: impl Into<String>) -> Error {
        Error::InvalidArgument {
            op,
            rank: self.rank(),
            what: what.into(),
        }
    }

    fn check_root(&self, op: Op, root: usize) -> Result<()> {
        if root >= self.size() {
            return Err(self.invalid(
                op,
                format!("root {root} is out of range for {} ranks", self.size()),
            ));
        }
        Ok(())
    }

    fn reducer<T: Element>(&self, op: Op, red: ReduceOp) -> Result<Reducer> {
        Reducer::new(T::DTYPE, red).map_err(|e| self.invalid(op, e.to_string()))
    }

    fn check_len(&self, op: Op, what: &str, got: usize, want: usize) -> Result<()> {
        if got != want {
            return Err(self.invalid(op, format!("{what} has {got} elements, expected {want}")));
        }
        Ok(())
    }

    /// This communicator as a queued call sees it: the same links, state and sequence numbers,
    /// on the progress thread.
    fn progress_handle(&self) -> Communicator {
        Communicator {
            transport: self.transport.clone(),
            group: self.group.clone(),
            timeout: self.timeout,
            state: self.state.clone(),
            gate: self.gate.clone(),
            asyncq: self.asyncq.clone(),
            on_progress_thread: true,
            hosts: self.hosts.clone(),
            world_hosts: self.world_hosts.clone(),
            recorder: self.recorder.clone(),
            _keepalive: self._keepalive.clone(),
        }
    }

    /// A communicator over the same ranks and links with id `comm_id`: its messages never
    /// match this one's, so it can run calls of its own (the tuning at creation) without
    /// taking this one's sequence numbers.
    pub(crate) fn sibling(&self, comm_id: u64) -> Communicator {
        Communicator::new(
            self.transport.clone(),
            Group {
                members: self.group.members.clone(),
                rank: self.group.rank,
                comm_id,
            },
            self.timeout,
            self.algorithms(),
            self.world_hosts.clone(),
            self._keepalive.clone(),
        )
        .with_trace_settings(self.recorder.settings.clone())
    }

    /// The cost model the `auto` algorithms choose by (`None`: the fixed defaults).
    pub fn tuning(&self) -> Option<Tuning> {
        self.lock_state().tuning.clone()
    }

    /// Sets the cost model of later calls. Every rank must set the same model (the model that
    /// [`Communicator::init`] measures is agreed on by all ranks).
    pub fn set_tuning(&self, tuning: Option<Tuning>) {
        let mut state = self.lock_state();
        state.tuning = tuning;
        state.forget_plans();
    }

    /// The algorithm and segment a call of `op` on `bytes` bytes of `dtype` would run (`bytes`
    /// as the model counts them: see [`tutti_core::model`]), and why.
    pub fn plan_of(&self, op: ModelOp, dtype: Option<DType>, bytes: usize) -> Choice {
        let hierarchical = self.hosts.is_hierarchical();
        let mut state = self.lock_state();
        state
            .plan((op, dtype, Some(bytes)), self.size(), hierarchical)
            .choice
            .clone()
    }

    /// Runs one collective call: takes the next sequence number, chooses the algorithm (forced,
    /// or by the cost model for `bytes`, the size every rank agrees on; `None` where sizes
    /// differ between ranks) and hands `body` the call's channel and the algorithms with that
    /// choice filled in. The choice is part of the fingerprint, so ranks that disagree on it
    /// fail with a mismatch. Calls on this communicator are serialised ([`gate`]): one
    /// deadline, set on entry, bounds the whole call, the waits for the queued `*_async` calls
    /// and for another thread's call included ([`Error::Busy`] when it passes there, before
    /// anything was sent).
    fn collective<R>(
        &self,
        op: Op,
        fingerprint: Fingerprint,
        bytes: Option<usize>,
        body: impl FnOnce(&mut CollectiveChannel<'_>, &Algorithms) -> Result<R>,
    ) -> Result<R> {
        // One deadline for the whole call: the waits for the calls ahead of it included.
        let deadline = self.deadline();
        if !self.on_progress_thread {
            // Calls queued before this one run first (call order is the ranks' contract).
            self.asyncq
                .wait_idle(deadline)
                .map_err(|waited| Error::Busy {
                    op,
                    rank: self.rank(),
                    waited,
                    behind: "the calls queued before this one (*_async)".into(),
                })?;
        }
        // Another thread's call on this communicator runs to its end first.
        let turn = self
            .gate
            .enter(op, deadline)
            .map_err(|(waited, holder)| Error::Busy {
                op,
                rank: self.rank(),
                waited,
                behind: format!("another thread's {holder}"),
            })?;
        let (seq, algorithms, fingerprint, code) = self.plan_call(op, fingerprint, bytes);
        turn.started(seq);
        let call = CallInfo::collective(op, seq, fingerprint, bytes, code);
        let id = self.recorder.start(&call, deadline.started());
        let mut ch = CollectiveChannel {
            transport: &*self.transport,
            group: &self.group,
            op,
            seq,
            fingerprint,
            deadline,
        };
        let result = body(&mut ch, &algorithms);
        if let Err(e) = &result {
            tracing::debug!(rank = self.rank(), %op, seq, error = %e, "collective failed");
            if e.breaks_the_world() {
                self.abort_world(e);
            }
        }
        self.end_call(id, result)
    }
}

impl Communicator {
    /// Takes the next sequence number and chooses the plan of a call (see
    /// [`collective`](Self::collective)); holds the state lock only for that. Returns the
    /// sequence number, the algorithms, the fingerprint and the chosen algorithm's code (0: no
    /// plan), the last for the flight recorder.
    fn plan_call(
        &self,
        op: Op,
        fingerprint: Fingerprint,
        bytes: Option<usize>,
    ) -> (u64, Algorithms, Fingerprint, u8) {
        let mut state = self.lock_state();
        let seq = state.next_seq;
        state.next_seq += 1;
        match model_op(op) {
            Some(mop) => {
                let key = (mop, fingerprint.dtype(), bytes);
                let hierarchical = self.hosts.is_hierarchical();
                let base = state.algorithms;
                let plan = state.plan(key, self.size(), hierarchical);
                let c = &plan.choice;
                tracing::debug!(
                    rank = self.rank(),
                    %op,
                    seq,
                    bytes,
                    algorithm = c.algorithm.name(),
                    segment = c.segment,
                    reason = %c.reason,
                    "plan"
                );
                let mut a = c.algorithm.set_in(&base);
                a.segment_bytes = c.segment;
                (seq, a, fingerprint.with_plan_bits(plan.bits), plan.code)
            }
            None => (seq, state.algorithms, fingerprint, 0),
        }
    }

    /// Records the end of call `id` (see [`recorder`]); after a failure other than an invalid
    /// argument, dumps this rank's rings (bounded by [`crate::trace::DUMP_WAIT`]).
    fn end_call<R>(&self, id: u64, result: Result<R>) -> Result<R> {
        match &result {
            Ok(_) => self.recorder.done(id),
            Err(e) => {
                self.recorder.failed(id, e);
                if !matches!(e, Error::InvalidArgument { .. }) {
                    crate::trace::dump_on_error(&self.recorder, format!("error: {e}"), false);
                }
            }
        }
        result
    }

    /// Records the start of a point-to-point call of `count` elements of `dtype` with `peer`
    /// (`None`: any source) bounded by `deadline`; end it with [`end_call`](Self::end_call).
    fn start_p2p(
        &self,
        op: Op,
        peer: Option<usize>,
        (dtype, count): (DType, usize),
        deadline: &Deadline,
    ) -> u64 {
        let call = CallInfo::p2p(op, peer, Some(dtype), count);
        self.recorder.start(&call, deadline.started())
    }

    /// As [`start_p2p`](Self::start_p2p), for a call with early returns: the guard records
    /// the call as failed if dropped before [`Traced::finish`] (without the error's text,
    /// which the early return carries to the caller; no dump).
    fn traced_p2p(
        &self,
        op: Op,
        peer: Option<usize>,
        what: (DType, usize),
        deadline: &Deadline,
    ) -> Traced<'_> {
        Traced {
            comm: self,
            id: self.start_p2p(op, peer, what, deadline),
        }
    }

    /// Writes this rank's flight-recorder file (every communicator of this world rank in this
    /// process, see [`crate::trace`]) into `dir`, or into `TUTTI_TRACE_DIR` when `None`;
    /// returns its path. Waits at most [`crate::trace::DUMP_WAIT`].
    pub fn dump_trace(
        &self,
        dir: Option<&std::path::Path>,
        reason: &str,
    ) -> std::io::Result<std::path::PathBuf> {
        let dir = dir
            .map(std::path::Path::to_path_buf)
            .or_else(|| self.recorder.settings.dir.clone())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "dump_trace: no directory given and TUTTI_TRACE_DIR is off",
                )
            })?;
        let rank = self.group.members[self.group.rank];
        crate::trace::dump_bounded(dir, rank, reason.to_string())
    }

    /// Revokes this communicator on purpose: closes the world's links (shared by every
    /// communicator split from the same world), telling each peer `reason`, so that every
    /// later call here, any call blocked in this process, and the peers' pending and later
    /// calls fail at once, the peers' naming this rank (`rank R aborted: abort() on rank R:
    /// REASON`) and ours with `transport shut down: abort() ...`. Then writes this rank's
    /// flight-recorder file (as an error does, bounded by [`crate::trace::DUMP_WAIT`]). If the
    /// world was closed already, its first reason stays. Costs the transport's goodbyes: one
    /// frame per peer, flushed within a bounded time.
    pub fn abort(&self, reason: &str) {
        let world_rank = self.group.members[self.group.rank];
        let why = match self.group.world_rank_if_sub() {
            None => format!("abort() on rank {world_rank}: {reason}"),
            Some(_) => format!(
                "abort() on rank {} of sub-communicator {:#x} (world rank {world_rank}): {reason}",
                self.rank(),
                self.group.comm_id
            ),
        };
        tracing::debug!(rank = world_rank, %why, "communicator aborted");
        self.transport.abort(&why);
        crate::trace::dump_on_error(&self.recorder, why, true);
    }
}

/// A recorded call in flight (see [`Communicator::traced_p2p`]).
struct Traced<'a> {
    comm: &'a Communicator,
    id: u64,
}

impl Traced<'_> {
    /// Records the call's outcome (as [`Communicator::end_call`]) and returns it.
    fn finish<R>(self, result: Result<R>) -> Result<R> {
        let (comm, id) = (self.comm, self.id);
        std::mem::forget(self);
        comm.end_call(id, result)
    }
}

impl Drop for Traced<'_> {
    fn drop(&mut self) {
        self.comm.recorder.failed_early(self.id);
    }
}

/// `TUTTI_LIVENESS`: seconds, 0 (off) up to the largest timeout.
fn parse_liveness(v: &str) -> Option<Duration> {
    if v.trim().parse::<f64>().ok()? == 0.0 {
        return Some(Duration::ZERO);
    }
    crate::rendezvous::env::parse_secs(v)
}

/// The fingerprint of a collective on `T`.
fn fp<T: Element>(op: Op, red: Option<ReduceOp>, root: Option<usize>, count: usize) -> Fingerprint {
    Fingerprint::new(op, Some(T::DTYPE), red, root, count)
}

/// Views a slice of elements as bytes.
fn bytes<T: Element>(s: &[T]) -> &[u8] {
    bytemuck::cast_slice(s)
}

/// Views a mutable slice of elements as bytes.
fn bytes_mut<T: Element>(s: &mut [T]) -> &mut [u8] {
    bytemuck::cast_slice_mut(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_core::algo::{AllReduceAlgo, DEFAULT_SMALL_ALL_REDUCE_BYTES};

    use crate::test_vars as vars;

    #[test]
    fn the_small_all_reduce_bound_and_forced_algorithms_come_from_the_environment() {
        let a = Config::from_vars(vars(&[])).unwrap().algorithms;
        assert_eq!(a.all_reduce, AllReduceAlgo::Auto);
        assert_eq!(a.small_all_reduce_bytes, DEFAULT_SMALL_ALL_REDUCE_BYTES);
        assert_eq!(a.all_reduce_for(9_600), AllReduceAlgo::RecursiveDoubling);

        let a = Config::from_vars(vars(&[("TUTTI_SMALL_ALLREDUCE_BYTES", " 4096 ")]))
            .unwrap()
            .algorithms;
        assert_eq!(a.small_all_reduce_bytes, 4096);
        assert_eq!(a.all_reduce_for(4096), AllReduceAlgo::RecursiveDoubling);
        assert_eq!(a.all_reduce_for(4097), AllReduceAlgo::Ring);

        // Forcing wins over the bound, whichever the order of the variables.
        let a = Config::from_vars(vars(&[
            ("TUTTI_SMALL_ALLREDUCE_BYTES", "1000000"),
            ("TUTTI_ALGO", "allreduce:ring"),
        ]))
        .unwrap()
        .algorithms;
        assert_eq!(a.all_reduce_for(8), AllReduceAlgo::Ring);
        let a = Config::from_vars(vars(&[("TUTTI_ALGO", "allreduce:recursive_doubling")]))
            .unwrap()
            .algorithms;
        assert_eq!(a.all_reduce_for(1 << 30), AllReduceAlgo::RecursiveDoubling);

        for bad in ["0", "4095", "67108865", "1M"] {
            let e = Config::from_vars(vars(&[("TUTTI_SHM_RING_BYTES", bad)])).unwrap_err();
            assert!(
                e.to_string().contains(&format!(
                    "TUTTI_SHM_RING_BYTES={bad:?} is not a number of bytes from 4096"
                )),
                "{e}"
            );
        }
        let c = Config::from_vars(vars(&[("TUTTI_SHM_RING_BYTES", "65536")])).unwrap();
        assert_eq!(c.tcp.shm.ring_bytes, Some(65536));

        for bad in ["", "-1", "64k", "1.5"] {
            let e = Config::from_vars(vars(&[("TUTTI_SMALL_ALLREDUCE_BYTES", bad)])).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("TUTTI_SMALL_ALLREDUCE_BYTES={bad:?}")),
                "{e}"
            );
        }
    }

    /// Two threads call on rank 0's communicator while rank 1 is late: the second call waits
    /// behind the first and gives up at its own (shorter) deadline with `Busy`, having sent
    /// nothing, so the first call and the world go on.
    #[test]
    fn a_call_behind_another_threads_call_gives_up_at_its_deadline() {
        let mut comms = Communicator::in_process(2, Config::default()).unwrap();
        let one = comms.pop().unwrap();
        let mut zero = comms.pop().unwrap();
        zero.set_timeout(Duration::from_secs(1));
        // The first call's handle has a longer bound than the second call's.
        let mut first = zero.progress_handle();
        first.timeout = Duration::from_secs(20);
        std::thread::scope(|s| {
            let a = s.spawn(move || {
                let mut x = [1u32; 4];
                first.all_reduce(&mut x, ReduceOp::Sum).map(|()| x)
            });
            std::thread::sleep(Duration::from_millis(200));
            let started = std::time::Instant::now();
            let e = zero.barrier().unwrap_err();
            let took = started.elapsed();
            assert!(
                matches!(
                    e,
                    Error::Busy {
                        op: Op::Barrier,
                        ..
                    }
                ),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(
                text.contains("barrier on rank 0: timed out after")
                    && text.contains("waiting behind another thread's all_reduce #1"),
                "{text}"
            );
            assert!(
                took >= Duration::from_millis(900) && took < Duration::from_secs(5),
                "{took:?}"
            );
            // Rank 1 comes: the first call completes, and the world is intact.
            let mut y = [2u32; 4];
            one.all_reduce(&mut y, ReduceOp::Sum).unwrap();
            assert_eq!(a.join().unwrap().unwrap(), [3; 4]);
            assert_eq!(y, [3; 4]);
            let b = s.spawn(|| one.barrier());
            zero.barrier().unwrap();
            b.join().unwrap().unwrap();
        });
    }

    #[test]
    fn the_liveness_bound_comes_from_the_environment() {
        let c = |v: &str| Config::from_vars(vars(&[("TUTTI_LIVENESS", v)]));
        let default = Config::from_vars(vars(&[])).unwrap().tcp.liveness;
        assert_eq!(default, Duration::from_secs(3));
        assert_eq!(c("1.5").unwrap().tcp.liveness, Duration::from_millis(1500));
        assert_eq!(c(" 0 ").unwrap().tcp.liveness, Duration::ZERO);
        for bad in ["", "-1", "3s", "1e12"] {
            let e = c(bad).unwrap_err();
            assert!(
                e.to_string().contains(&format!("TUTTI_LIVENESS={bad:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn auto_all_reduces_on_both_sides_of_the_bound_are_right() {
        // 5 ranks (a fold), a bound of 80 bytes: 10 i64 take recursive doubling, 11 the ring.
        let n = 5;
        let mut config = Config::default();
        config.algorithms.small_all_reduce_bytes = 80;
        let comms = Communicator::in_process(n, config).unwrap();
        let out: Vec<Vec<Vec<i64>>> = std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        [10usize, 11, 0, 1]
                            .into_iter()
                            .map(|count| {
                                let mut x: Vec<i64> =
                                    (0..count).map(|i| (i * 7 + c.rank()) as i64).collect();
                                c.all_reduce(&mut x, ReduceOp::Sum).unwrap();
                                x
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (rank, results) in out.iter().enumerate() {
            for x in results {
                let expect: Vec<i64> = (0..x.len() as i64)
                    .map(|i| n as i64 * i * 7 + (0..n as i64).sum::<i64>())
                    .collect();
                assert_eq!(x, &expect, "rank {rank}");
            }
        }
    }
}
