//! The data-parallel training loop:
//!
//! ```text
//! theta(t+1) = theta(t) - lr * (1/B) * sum_p grad(theta(t), D_p)
//! ```
//!
//! Each step takes one global batch of `B` samples from the shared, seeded epoch order
//! ([`BatchPlan`]); rank `r` of `P` computes the SUM of the per-sample gradients over its slice
//! `[r*B/P, (r+1)*B/P)`; one all-reduce (sum) of the flat gradient gives every rank the gradient
//! of the whole batch; every rank then applies the same SGD update, so the replicas stay equal
//! without ever exchanging parameters.
//!
//! The loop is generic over a [`Reducer`]: a [`tutti::Communicator`] in the real run, and
//! [`SingleWorker`] (identity, world of one) for the reference run that the end-of-run check
//! compares against. Same code, same init, same batch order: the only difference between the two
//! is the order in which the per-sample gradients are added.
//!
//! Cost per step with a ring all-reduce of `n` f32 parameters over `P` ranks (alpha = latency,
//! beta = seconds per byte, gamma = seconds per reduced element):
//! `compute(B/P samples) + 2(P-1) alpha + 2 (P-1)/P * 4n beta + (P-1)/P * n gamma`.
//! Loss and hit counts are reduced only every `log_every` steps (two f64 values).

use crate::data::{rank_slice, BatchPlan, Dataset, SplitMix64, CLASSES, FEATURES};
use crate::model::{BatchStats, Mlp};
use std::convert::Infallible;
use std::time::Instant;

/// Sums buffers across the ranks of a data-parallel group; every rank calls each method in the
/// same order with buffers of the same length, and afterwards all ranks hold the same sum.
pub trait Reducer {
    /// Why a reduction failed.
    type Error: std::error::Error + 'static;
    /// This rank, in `0..world()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// In-place elementwise sum of an `f32` buffer over all ranks.
    fn sum_f32(&self, buf: &mut [f32]) -> Result<(), Self::Error>;
    /// In-place elementwise sum of an `f64` buffer over all ranks.
    fn sum_f64(&self, buf: &mut [f64]) -> Result<(), Self::Error>;
    /// A sum of an `f32` buffer started and not yet waited for.
    type Pending;
    /// Starts the sum of `buf` over all ranks (in call order with the other sums) and returns
    /// at once; [`finish_sum_f32`](Reducer::finish_sum_f32) gives the result back.
    fn start_sum_f32(&self, buf: Vec<f32>) -> Self::Pending;
    /// Waits for a sum started by [`start_sum_f32`](Reducer::start_sum_f32).
    fn finish_sum_f32(&self, pending: Self::Pending) -> Result<Vec<f32>, Self::Error>;
}

/// The world of one: every reduction is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleWorker;

impl Reducer for SingleWorker {
    type Error = Infallible;
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn sum_f32(&self, _buf: &mut [f32]) -> Result<(), Infallible> {
        Ok(())
    }
    fn sum_f64(&self, _buf: &mut [f64]) -> Result<(), Infallible> {
        Ok(())
    }
    type Pending = Vec<f32>;
    fn start_sum_f32(&self, buf: Vec<f32>) -> Vec<f32> {
        buf
    }
    fn finish_sum_f32(&self, pending: Vec<f32>) -> Result<Vec<f32>, Infallible> {
        Ok(pending)
    }
}

/// A tutti group: each sum is one `all_reduce(.., ReduceOp::Sum)`, whose errors name the op,
/// its sequence number, this rank and the failed peer.
impl Reducer for tutti::Communicator {
    type Error = tutti::Error;
    fn rank(&self) -> usize {
        tutti::Communicator::rank(self)
    }
    fn world(&self) -> usize {
        self.size()
    }
    fn sum_f32(&self, buf: &mut [f32]) -> tutti::Result<()> {
        self.all_reduce(buf, tutti::ReduceOp::Sum)
    }
    fn sum_f64(&self, buf: &mut [f64]) -> tutti::Result<()> {
        self.all_reduce(buf, tutti::ReduceOp::Sum)
    }
    type Pending = tutti::Work<Vec<f32>>;
    fn start_sum_f32(&self, buf: Vec<f32>) -> tutti::Work<Vec<f32>> {
        self.all_reduce_async(buf, tutti::ReduceOp::Sum)
    }
    fn finish_sum_f32(&self, pending: tutti::Work<Vec<f32>>) -> tutti::Result<Vec<f32>> {
        pending.wait()
    }
}

/// Hyper-parameters of a run; every rank must use the same values.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Global batch size `B`, summed over all ranks.
    pub batch: usize,
    /// SGD learning rate.
    pub lr: f32,
    /// Hidden units of the perceptron.
    pub hidden: usize,
    /// Seed of the weight init and of the batch order.
    pub seed: u64,
    /// Report the loss every this many steps (and at the last step).
    pub log_every: usize,
    /// Overlap the gradient's all-reduce with the backward pass: the gradient goes out in
    /// this many buckets of hidden-layer rows plus the output layer, each all-reduced
    /// asynchronously as soon as it is computed (0: one blocking all-reduce after the whole
    /// backward pass).
    pub overlap_buckets: usize,
}

/// One progress report (identical on all ranks, except the rate, which is this rank's clock).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLog {
    /// Steps done, 1-based.
    pub step: usize,
    /// Steps in the whole run.
    pub total: usize,
    /// Mean loss over the global samples of the steps since the previous report.
    pub loss: f64,
    /// Training accuracy over the same samples.
    pub accuracy: f64,
    /// Global samples per second over the same steps.
    pub samples_per_sec: f64,
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct Trained {
    /// The model shape the parameters belong to.
    pub mlp: Mlp,
    /// Final parameters.
    pub params: Vec<f32>,
    /// Steps taken.
    pub steps: usize,
    /// The last report (also produced when `log_every` is larger than the run).
    pub last: StepLog,
    /// Seconds per step on this rank (mean over the run), and the part of them spent waiting
    /// for the gradient's all-reduce (the blocking call, or the waits for the buckets).
    pub step_secs: f64,
    pub comm_wait_secs: f64,
}

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError<E: std::error::Error + 'static> {
    /// Bad hyper-parameters, found before any communication.
    #[error("{0}")]
    Config(String),
    /// A reduction failed.
    #[error("rank {rank}, step {step}: {what} failed: {source}")]
    Reduce {
        rank: usize,
        step: usize,
        what: &'static str,
        #[source]
        source: E,
    },
}

/// Trains on `data` with `reducer`'s group and calls `on_log` after each reported step.
///
/// Every rank must call this with the same `cfg` and the same `data`; the returned parameters
/// are then equal on all ranks (bit for bit, given a reducer that returns the same sum to all).
pub fn train<R: Reducer>(
    cfg: &TrainConfig,
    data: &Dataset,
    reducer: &R,
    mut on_log: impl FnMut(&StepLog),
) -> Result<Trained, TrainError<R::Error>> {
    let (mlp, plan) = validate(cfg, data.len(), reducer.world()).map_err(TrainError::Config)?;
    let steps_per_epoch = plan.steps_per_epoch();
    let total = steps_per_epoch * cfg.epochs;
    let mine = rank_slice(cfg.batch, reducer.rank(), reducer.world());
    let scale = cfg.lr / cfg.batch as f32;

    let mut params = mlp.init(cfg.seed);
    let mut grad = vec![0.0; mlp.param_len()];
    let mut ws = mlp.workspace();
    let mut window = Window::start();
    let mut last = None;
    let mut step = 0;
    let (mut step_time, mut comm_wait) = (0.0f64, 0.0f64);
    for epoch in 0..cfg.epochs {
        let order = plan.epoch_order(epoch as u64);
        for s in 0..steps_per_epoch {
            let global = &order[plan.batch_range(s)];
            let step_started = Instant::now();
            step += 1;
            let fail = |what| {
                move |source| TrainError::Reduce {
                    rank: reducer.rank(),
                    step,
                    what,
                    source,
                }
            };
            let indices = &global[mine.clone()];
            let stats = if cfg.overlap_buckets == 0 {
                let stats = mlp.sum_gradient(&params, data, indices, &mut grad, &mut ws);
                let t = Instant::now();
                reducer
                    .sum_f32(&mut grad)
                    .map_err(fail("gradient all_reduce"))?;
                comm_wait += t.elapsed().as_secs_f64();
                stats
            } else {
                let blocks = cfg.overlap_buckets;
                let mut pending = Vec::with_capacity(blocks + 1);
                let stats = mlp.sum_gradient_in_buckets(
                    &params,
                    data,
                    indices,
                    blocks,
                    &mut ws,
                    |k, bucket| pending.push((k, reducer.start_sum_f32(bucket))),
                );
                for (k, p) in pending {
                    let t = Instant::now();
                    let bucket = reducer
                        .finish_sum_f32(p)
                        .map_err(fail("gradient bucket all_reduce"))?;
                    comm_wait += t.elapsed().as_secs_f64();
                    mlp.write_bucket(blocks, k, &bucket, &mut grad);
                }
                stats
            };
            sgd_update(&mut params, &grad, scale);
            step_time += step_started.elapsed().as_secs_f64();
            window.add(stats);
            if step % cfg.log_every == 0 || step == total {
                let log = window
                    .report(reducer, step, total, cfg.batch)
                    .map_err(fail("loss all_reduce"))?;
                on_log(&log);
                last = Some(log);
            }
        }
    }
    // `validate` guarantees at least one step, and the last step always reports.
    let last = last.ok_or_else(|| TrainError::Config("the run took no step".into()))?;
    Ok(Trained {
        mlp,
        params,
        steps: total,
        last,
        step_secs: step_time / total.max(1) as f64,
        comm_wait_secs: comm_wait / total.max(1) as f64,
    })
}

/// The SGD step `theta -= scale * grad`, with `scale = lr / B` and `grad` the batch SUM.
pub fn sgd_update(params: &mut [f32], grad: &[f32], scale: f32) {
    for (p, g) in params.iter_mut().zip(grad) {
        *p -= scale * g;
    }
}

/// `max_i |a_i - b_i|` over the common length (NaN-propagating: a NaN anywhere gives NaN, so a
/// diverged run can never pass a tolerance check).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| {
            if d.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
}

/// The seed of the batch order, derived from the run seed so that it is a stream independent of
/// the weight init.
fn shuffle_seed(seed: u64) -> u64 {
    SplitMix64::new(seed ^ 0x5348_5546_464C_4521).next_u64()
}

/// Checks the hyper-parameters against a training set of `len` samples and a world of `world`
/// ranks, with the message [`train`] would fail with (to refuse a run before announcing it).
pub fn check_config(cfg: &TrainConfig, len: usize, world: usize) -> Result<(), String> {
    validate(cfg, len, world).map(|_| ())
}

/// Checks the hyper-parameters against the data and the world; builds the model shape and plan.
fn validate(cfg: &TrainConfig, len: usize, world: usize) -> Result<(Mlp, BatchPlan), String> {
    if cfg.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if cfg.epochs == 0 {
        return Err("--epochs must be at least 1".into());
    }
    if cfg.log_every == 0 {
        return Err("--log-every must be at least 1".into());
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(format!("--lr must be a positive number, got {}", cfg.lr));
    }
    if !cfg.batch.is_multiple_of(world) {
        return Err(format!(
            "--batch {} is not divisible by the world size {world}: every rank must get the \
             same number of samples per step (try --batch {})",
            cfg.batch,
            cfg.batch.div_ceil(world).max(1) * world
        ));
    }
    let mlp = Mlp::new(FEATURES, cfg.hidden, CLASSES).map_err(|e| format!("--hidden: {e}"))?;
    let plan = BatchPlan::new(len, cfg.batch, shuffle_seed(cfg.seed))?;
    Ok((mlp, plan))
}

/// Loss, hits and time since the last report, local to this rank until reported.
struct Window {
    stats: BatchStats,
    steps: usize,
    since: Instant,
}

impl Window {
    fn start() -> Window {
        Window {
            stats: BatchStats::default(),
            steps: 0,
            since: Instant::now(),
        }
    }

    fn add(&mut self, stats: BatchStats) {
        self.stats.loss_sum += stats.loss_sum;
        self.stats.correct += stats.correct;
        self.steps += 1;
    }

    /// Sums the window over all ranks (a collective: every rank calls it at the same step),
    /// turns it into a report and starts a new window.
    fn report<R: Reducer>(
        &mut self,
        reducer: &R,
        step: usize,
        total: usize,
        batch: usize,
    ) -> Result<StepLog, R::Error> {
        let mut sums = [self.stats.loss_sum, self.stats.correct as f64];
        reducer.sum_f64(&mut sums)?;
        let samples = (self.steps * batch) as f64;
        let secs = self.since.elapsed().as_secs_f64().max(1e-9);
        *self = Window::start();
        Ok(StepLog {
            step,
            total,
            loss: sums[0] / samples,
            accuracy: sums[1] / samples,
            samples_per_sec: samples / secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{load_embedded, DEFAULT_TEST_LEN};
    use std::sync::{Arc, Barrier, Mutex};

    fn cfg() -> TrainConfig {
        TrainConfig {
            epochs: 3,
            batch: 60,
            lr: 0.5,
            hidden: 16,
            seed: 11,
            log_every: 10,
            overlap_buckets: 0,
        }
    }

    fn train_set() -> Dataset {
        load_embedded()
            .unwrap()
            .split_tail(DEFAULT_TEST_LEN)
            .unwrap()
            .0
    }

    /// P in-process "ranks" on threads: each publishes its buffer and waits for all; then every
    /// rank adds the published buffers up in the same order, so all get the same bits. `f32`
    /// sums follow a ring all-reduce's order (chunk `c` of `P` starts at rank `c + 1` and goes
    /// round), in f32, so the test sees the round-off the real run sees.
    struct ThreadGroup {
        rank: usize,
        world: usize,
        slots: Arc<Mutex<Vec<Vec<f64>>>>,
        barrier: Arc<Barrier>,
    }

    impl ThreadGroup {
        fn group(world: usize) -> Vec<ThreadGroup> {
            let slots = Arc::new(Mutex::new(vec![Vec::new(); world]));
            let barrier = Arc::new(Barrier::new(world));
            (0..world)
                .map(|rank| ThreadGroup {
                    rank,
                    world,
                    slots: slots.clone(),
                    barrier: barrier.clone(),
                })
                .collect()
        }

        /// Publishes `buf`, then returns `sum(i, slots)` for every element `i`.
        fn exchange(&self, buf: &[f64], sum: impl Fn(usize, &[Vec<f64>]) -> f64) -> Vec<f64> {
            self.slots.lock().unwrap()[self.rank] = buf.to_vec();
            self.barrier.wait();
            let total = {
                let slots = self.slots.lock().unwrap();
                (0..buf.len()).map(|i| sum(i, &slots)).collect()
            };
            self.barrier.wait();
            total
        }
    }

    impl Reducer for ThreadGroup {
        type Error = Infallible;
        fn rank(&self) -> usize {
            self.rank
        }
        fn world(&self) -> usize {
            self.world
        }
        fn sum_f32(&self, buf: &mut [f32]) -> Result<(), Infallible> {
            let (n, p) = (buf.len(), self.world);
            let wide: Vec<f64> = buf.iter().map(|&v| f64::from(v)).collect();
            let ring_sum = |i: usize, slots: &[Vec<f64>]| {
                let chunk = i * p / n;
                let mut acc = 0f32;
                for k in 1..=p {
                    acc += slots[(chunk + k) % p][i] as f32;
                }
                f64::from(acc)
            };
            for (b, s) in buf.iter_mut().zip(self.exchange(&wide, ring_sum)) {
                *b = s as f32;
            }
            Ok(())
        }
        fn sum_f64(&self, buf: &mut [f64]) -> Result<(), Infallible> {
            let total = self.exchange(buf, |i, slots| slots.iter().map(|s| s[i]).sum());
            buf.copy_from_slice(&total);
            Ok(())
        }
        type Pending = Vec<f32>;
        fn start_sum_f32(&self, mut buf: Vec<f32>) -> Vec<f32> {
            let _ = self.sum_f32(&mut buf);
            buf
        }
        fn finish_sum_f32(&self, pending: Vec<f32>) -> Result<Vec<f32>, Infallible> {
            Ok(pending)
        }
    }

    #[test]
    fn overlapped_buckets_give_the_same_parameters_as_one_all_reduce() {
        // The test group's f32 sum depends on the buffer's length (a ring's chunks), so the
        // comparison is on one worker and with the identity; across real ranks the same holds
        // for any algorithm whose order does not depend on the length (tests/overlap in
        // crates/dp-train/tests).
        let data = train_set();
        let plain = train(&cfg(), &data, &SingleWorker, |_| {}).unwrap();
        for buckets in [1, 3, 16] {
            let c = TrainConfig {
                overlap_buckets: buckets,
                ..cfg()
            };
            let run = train(&c, &data, &SingleWorker, |_| {}).unwrap();
            assert_eq!(run.params, plain.params, "{buckets} buckets");
            assert!(run.step_secs > 0.0 && run.comm_wait_secs <= run.step_secs);
        }
    }

    #[test]
    fn data_parallel_matches_single_worker() {
        let data = Arc::new(train_set());
        let single = train(&cfg(), &data, &SingleWorker, |_| {}).unwrap();
        let handles: Vec<_> = ThreadGroup::group(4)
            .into_iter()
            .map(|g| {
                let data = data.clone();
                std::thread::spawn(move || train(&cfg(), &data, &g, |_| {}).unwrap())
            })
            .collect();
        let runs: Vec<Trained> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for run in &runs {
            assert_eq!(run.params, runs[0].params, "replicas are bit-identical");
            assert_eq!(run.last.loss, runs[0].last.loss);
        }
        let diff = max_abs_diff(&runs[0].params, &single.params);
        assert!(diff < 1e-4, "max |theta_dp - theta_1| = {diff}");
        // The reports see the same global samples; only the sum order differs.
        assert!((runs[0].last.loss - single.last.loss).abs() < 1e-4);
        assert_eq!(runs[0].last.accuracy, single.last.accuracy);
        assert_eq!(runs[0].steps, 3 * (1500 / 60));
    }

    #[test]
    fn training_lowers_the_loss_and_logs_on_schedule() {
        let data = train_set();
        let mut logs = Vec::new();
        let run = train(&cfg(), &data, &SingleWorker, |l| logs.push(*l)).unwrap();
        let steps: Vec<usize> = logs.iter().map(|l| l.step).collect();
        assert_eq!(steps, vec![10, 20, 30, 40, 50, 60, 70, 75]);
        assert!(logs
            .iter()
            .all(|l| l.total == 75 && l.samples_per_sec > 0.0));
        assert!(logs[0].loss > 1.0, "early loss {}", logs[0].loss);
        assert!(
            run.last.loss < 0.5 * logs[0].loss,
            "loss went {} -> {}",
            logs[0].loss,
            run.last.loss
        );
        assert!(
            run.last.accuracy > 0.7,
            "train accuracy {}",
            run.last.accuracy
        );
        assert_eq!(run.last, logs[7]);
        let again = train(&cfg(), &data, &SingleWorker, |_| {}).unwrap();
        assert_eq!(run.params, again.params, "deterministic");
    }

    #[test]
    fn bad_configs_are_refused_before_any_reduction() {
        let data = train_set();
        let refused = |c: TrainConfig, world: usize, needle: &str| {
            let err = validate(&c, data.len(), world).unwrap_err();
            assert!(err.contains(needle), "{err} lacks {needle}");
        };
        refused(
            TrainConfig { batch: 64, ..cfg() },
            3,
            "--batch 64 is not divisible by the world size 3",
        );
        refused(TrainConfig { batch: 64, ..cfg() }, 3, "try --batch 66");
        refused(
            TrainConfig {
                batch: 2000,
                ..cfg()
            },
            1,
            "larger than the training set",
        );
        refused(TrainConfig { epochs: 0, ..cfg() }, 1, "--epochs");
        refused(
            TrainConfig { batch: 0, ..cfg() },
            4,
            "--batch must be at least 1",
        );
        refused(
            TrainConfig {
                lr: f32::NAN,
                ..cfg()
            },
            1,
            "--lr",
        );
        refused(TrainConfig { hidden: 0, ..cfg() }, 1, "--hidden");
        refused(
            TrainConfig {
                log_every: 0,
                ..cfg()
            },
            1,
            "--log-every",
        );
        let err = train(
            &TrainConfig { batch: 0, ..cfg() },
            &data,
            &SingleWorker,
            |_| {},
        );
        assert!(matches!(err, Err(TrainError::Config(_))));
    }
}
