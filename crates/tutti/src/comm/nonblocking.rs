//! Non-blocking collectives: each `*_async` call queues the collective on the communicator's
//! progress thread and returns a [`Work`] handle at once; the handle holds the buffers until the
//! call completes and gives them back from [`Work::wait`]. Errors surface at `wait`.
//!
//! Order: calls run in the order they were made on this communicator, as every rank must make
//! them. Queued calls run one after another on one thread (started with the first); a blocking
//! call first waits until the queue is empty (an atomic load when nothing is queued, so the
//! blocking path gains no thread hop), then runs on the caller's thread.

use super::Communicator;
use crate::deadline::Deadline;
use crate::error::{Error, Op, Result};
use crate::transport::TransportError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};
use std::time::Duration;
use tutti_core::{Element, ReduceOp};

type Job = Box<dyn FnOnce() + Send>;

/// The progress thread of one communicator and the count of calls queued on it.
#[derive(Default)]
pub(crate) struct AsyncQueue {
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    pending: AtomicUsize,
    lock: Mutex<()>,
    idle: Condvar,
}

impl AsyncQueue {
    /// Queues `job`, starting the thread with the first; gives the job back if there is no
    /// thread to run it.
    fn push(&self, job: Job) -> std::result::Result<(), Job> {
        let mut sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        if sender.is_none() {
            let (tx, rx) = mpsc::channel::<Job>();
            let spawned = std::thread::Builder::new()
                .name("tutti-progress".into())
                .spawn(move || {
                    // Ends when the communicator (the sender's owner) is dropped.
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot start a progress thread ({e}): running the call in place");
                return Err(job);
            }
            *sender = Some(tx);
        }
        let Some(tx) = sender.as_ref() else {
            return Err(job);
        };
        self.pending.fetch_add(1, Ordering::AcqRel);
        tx.send(job).map_err(|e| {
            self.finished_one();
            e.0
        })
    }

    fn finished_one(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.idle.notify_all();
        }
    }

    /// Waits until no call is queued or running, within `deadline`.
    pub(crate) fn wait_idle(&self, deadline: Deadline) -> std::result::Result<(), Duration> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.pending.load(Ordering::Acquire) != 0 {
            if deadline.expired() {
                return Err(deadline.elapsed());
            }
            let left = deadline.remaining();
            guard = self
                .idle
                .wait_timeout(guard, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }
}

/// A collective in flight. [`wait`](Work::wait) gives back its buffers (or its error);
/// [`test`](Work::test) says whether it has completed. Dropping it does not cancel the call
/// (every rank must make it): the buffers are freed when it completes.
#[must_use = "a collective's result and buffers come back from wait()"]
pub struct Work<B> {
    rx: mpsc::Receiver<(Result<()>, B)>,
    got: Option<(Result<()>, B)>,
    op: Op,
    rank: usize,
    /// How long `wait` waits at most: the call's own bound, plus the calls queued before it.
    bound: Duration,
}

impl<B> Work<B> {
    /// True once the call has completed (successfully or not); never blocks.
    pub fn test(&mut self) -> bool {
        if self.got.is_none() {
            self.got = self.rx.try_recv().ok();
        }
        self.got.is_some()
    }

    /// How long [`wait`](Self::wait) waits at most: the call's own bound (the communicator's
    /// timeout) times the calls queued up to it, plus a second.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Waits at most `slice` for the call to complete; true once it has (then `wait` returns
    /// at once). Lets a caller wait in slices, e.g. to check for a signal in between.
    pub fn wait_for(&mut self, slice: Duration) -> bool {
        if self.got.is_none() {
            match self.rx.recv_timeout(slice) {
                Ok(done) => self.got = Some(done),
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
                // `wait` reports the ended thread.
                Err(mpsc::RecvTimeoutError::Disconnected) => return true,
            }
        }
        true
    }

    /// Waits for the call and returns its buffers, or its error.
    pub fn wait(mut self) -> Result<B> {
        let (result, buf) = match self.got.take() {
            Some(done) => done,
            None => self.rx.recv_timeout(self.bound).map_err(|e| {
                let reason = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("no answer from the queued call within {:?}", self.bound)
                    }
                    mpsc::RecvTimeoutError::Disconnected => {
                        "the progress thread ended without an answer".to_string()
                    }
                };
                Error::Transport {
                    op: self.op,
                    seq: 0,
                    rank: self.rank,
                    world_rank: None,
                    source: TransportError::Closed { reason },
                    waiting_for: Box::default(),
                }
            })?,
        };
        result.map(|()| buf)
    }
}

impl Communicator {
    /// Queues `run` on the progress thread with a handle on this communicator (same links,
    /// same sequence numbers) and `buf`.
    fn submit<B: Send + 'static>(
        &self,
        op: Op,
        mut buf: B,
        run: impl FnOnce(&Communicator, &mut B) -> Result<()> + Send + 'static,
    ) -> Work<B> {
        let (tx, rx) = mpsc::channel();
        let handle = self.progress_handle();
        let queue = self.asyncq.clone();
        let queued = queue.pending.load(Ordering::Acquire) as u32;
        let work = Work {
            rx,
            got: None,
            op,
            rank: self.rank(),
            bound: self.timeout.saturating_mul(queued + 1) + Duration::from_secs(1),
        };
        let q = queue.clone();
        let job: Job = Box::new(move || {
            let r = run(&handle, &mut buf);
            drop(handle);
            q.finished_one();
            let _ = tx.send((r, buf));
        });
        if let Err(job) = queue.push(job) {
            // No thread: run it here (it then counts itself done, as on the thread).
            queue.pending.fetch_add(1, Ordering::AcqRel);
            job();
        }
        work
    }

    /// Queues any call, as the `*_async` calls below are queued: `run` runs on the progress
    /// thread with a handle on this communicator and `state` (which comes back from
    /// [`Work::wait`]), in call order with the other queued and blocking calls. For callers
    /// (such as the Python binding) whose calls are not one of the typed ones; `op` names the
    /// call in the handle's own errors.
    pub fn call_async<B: Send + 'static>(
        &self,
        op: Op,
        state: B,
        run: impl FnOnce(&Communicator, &mut B) -> Result<()> + Send + 'static,
    ) -> Work<B> {
        self.submit(op, state, run)
    }

    /// [`all_reduce`](Communicator::all_reduce), queued: `buf` comes back from
    /// [`Work::wait`] holding the result.
    pub fn all_reduce_async<T: Element, B>(&self, buf: B, op: ReduceOp) -> Work<B>
    where
        B: AsMut<[T]> + Send + 'static,
    {
        self.submit(Op::AllReduce, buf, move |c, b| c.all_reduce(b.as_mut(), op))
    }

    /// [`broadcast`](Communicator::broadcast), queued.
    pub fn broadcast_async<T: Element, B>(&self, buf: B, root: usize) -> Work<B>
    where
        B: AsMut<[T]> + Send + 'static,
    {
        self.submit(Op::Broadcast, buf, move |c, b| {
            c.broadcast(b.as_mut(), root)
        })
    }

    /// [`reduce_in_place`](Communicator::reduce_in_place), queued.
    pub fn reduce_async<T: Element, B>(&self, buf: B, op: ReduceOp, root: usize) -> Work<B>
    where
        B: AsMut<[T]> + Send + 'static,
    {
        self.submit(Op::Reduce, buf, move |c, b| {
            c.reduce_in_place(b.as_mut(), op, root)
        })
    }

    /// [`all_gather`](Communicator::all_gather), queued: `(send, recv)` come back.
    pub fn all_gather_async<T: Element, S, R>(&self, send: S, recv: R) -> Work<(S, R)>
    where
        S: AsRef<[T]> + Send + 'static,
        R: AsMut<[T]> + Send + 'static,
    {
        self.submit(Op::AllGather, (send, recv), |c, (s, r)| {
            c.all_gather(s.as_ref(), r.as_mut())
        })
    }

    /// [`reduce_scatter`](Communicator::reduce_scatter), queued: `(send, recv)` come back.
    pub fn reduce_scatter_async<T: Element, S, R>(
        &self,
        send: S,
        recv: R,
        op: ReduceOp,
    ) -> Work<(S, R)>
    where
        S: AsRef<[T]> + Send + 'static,
        R: AsMut<[T]> + Send + 'static,
    {
        self.submit(Op::ReduceScatter, (send, recv), move |c, (s, r)| {
            c.reduce_scatter(s.as_ref(), r.as_mut(), op)
        })
    }

    /// [`all_to_all`](Communicator::all_to_all), queued: `(send, recv)` come back.
    pub fn all_to_all_async<T: Element, S, R>(&self, send: S, recv: R) -> Work<(S, R)>
    where
        S: AsRef<[T]> + Send + 'static,
        R: AsMut<[T]> + Send + 'static,
    {
        self.submit(Op::AllToAll, (send, recv), |c, (s, r)| {
            c.all_to_all(s.as_ref(), r.as_mut())
        })
    }

    /// [`gather`](Communicator::gather), queued: `recv` (`Some` at the root) comes back.
    pub fn gather_async<T: Element, S, R>(
        &self,
        send: S,
        recv: Option<R>,
        root: usize,
    ) -> Work<(S, Option<R>)>
    where
        S: AsRef<[T]> + Send + 'static,
        R: AsMut<[T]> + Send + 'static,
    {
        self.submit(Op::Gather, (send, recv), move |c, (s, r)| {
            c.gather(s.as_ref(), r.as_mut().map(|r| r.as_mut()), root)
        })
    }

    /// [`scatter`](Communicator::scatter), queued: `(send, recv)` come back.
    pub fn scatter_async<T: Element, S, R>(
        &self,
        send: Option<S>,
        recv: R,
        root: usize,
    ) -> Work<(Option<S>, R)>
    where
        S: AsRef<[T]> + Send + 'static,
        R: AsMut<[T]> + Send + 'static,
    {
        self.submit(Op::Scatter, (send, recv), move |c, (s, r)| {
            c.scatter(s.as_ref().map(|s| s.as_ref()), r.as_mut(), root)
        })
    }

    /// [`barrier`](Communicator::barrier), queued.
    pub fn barrier_async(&self) -> Work<()> {
        self.submit(Op::Barrier, (), |c, ()| c.barrier())
    }
}

#[cfg(test)]
mod call_async_tests {
    use super::*;
    use crate::Config;

    #[test]
    fn call_async_runs_in_order_with_blocking_calls_and_wait_for_is_bounded() {
        let world = Communicator::in_process(2, Config::default()).unwrap();
        std::thread::scope(|s| {
            for c in &world {
                s.spawn(move || {
                    let mut w = c.call_async(Op::AllReduce, vec![1.0f32; 4], |c, b| {
                        c.all_reduce(b.as_mut_slice(), ReduceOp::Sum)
                    });
                    // A blocking call after it runs after it (the queue drains first).
                    let mut x = [c.rank() as i64];
                    c.all_reduce(&mut x, ReduceOp::Sum).unwrap();
                    assert_eq!(x, [1]);
                    let t = std::time::Instant::now();
                    assert!(w.wait_for(Duration::from_secs(5)));
                    assert!(t.elapsed() < Duration::from_secs(5));
                    assert_eq!(w.wait().unwrap(), vec![2.0; 4]);
                });
            }
        });
    }

    #[test]
    fn wait_for_returns_false_while_the_call_waits_for_its_peer() {
        let world = Communicator::in_process(2, Config::default()).unwrap();
        let mut w = world[0].call_async(Op::Barrier, (), |c, ()| c.barrier());
        let t = std::time::Instant::now();
        assert!(!w.wait_for(Duration::from_millis(50)));
        assert!(t.elapsed() >= Duration::from_millis(50));
        world[1].barrier().unwrap();
        assert!(w.wait_for(Duration::from_secs(5)));
        w.wait().unwrap();
    }
}
