//! `async_op=True`: the library's non-blocking calls. Each call is queued with
//! `Communicator::call_async` on the communicator's progress thread (the library's), which
//! runs queued calls in call order, each holding its arrays (their `Buf`s) until it has
//! finished; a blocking call on the same communicator waits until the queue is empty (the
//! library's rule), so calls run in the order they were made. Errors surface at `Work.wait()`,
//! as the library reports them.
//!
//! `isend`/`irecv` use the library's own requests (`Communicator::isend`/`irecv`), which keep
//! the order of messages between a pair with the same tag.

use crate::errors::ErrInfo;
use pyo3::prelude::*;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tutti::{Communicator, Op};

/// A call to run on a communicator, once (it owns the buffers it works on).
pub type Job = Box<dyn FnMut(&Communicator) -> tutti::Result<()> + Send>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum Stage {
    /// Queued or running in the library.
    Running(tutti::Work<Job>),
    /// A thread is waiting on it (without the lock, so that other threads never block on
    /// the lock while holding the GIL).
    Taken,
    Done(Result<(), ErrInfo>),
}

/// One queued call: the library's handle, then its outcome.
pub struct State {
    stage: Mutex<Stage>,
    op: Op,
    /// When `wait` gives up: the library handle's bound after queueing.
    deadline: Instant,
}

impl State {
    /// Queues `job` on `comm`'s progress thread; `op` names it in the handle's own errors.
    pub fn start(comm: &Communicator, op: Op, job: Job) -> State {
        let work = comm.call_async(op, job, |c, job| job(c));
        State {
            deadline: Instant::now() + work.bound(),
            stage: Mutex::new(Stage::Running(work)),
            op,
        }
    }

    /// The outcome, if the call has finished (never blocks); the arrays are released here,
    /// with the GIL held.
    pub fn result(&self) -> Option<Result<(), ErrInfo>> {
        let mut stage = lock(&self.stage);
        if let Stage::Running(w) = &mut *stage {
            if !w.test() {
                return None;
            }
            let Stage::Running(w) = std::mem::replace(&mut *stage, Stage::Taken) else {
                unreachable!("just matched")
            };
            *stage = Stage::Done(finish(w));
        }
        match &*stage {
            Stage::Done(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// Waits for the call with the GIL released, checking for Ctrl-C (and other signals)
    /// every 100 ms. The call itself is bounded by the communicator's timeout; the wait by the
    /// library handle's bound (that times the calls queued up to it, plus a second).
    pub fn wait(&self, py: Python<'_>) -> PyResult<Result<(), ErrInfo>> {
        let _blocked = crate::interrupt::Blocked::enter();
        loop {
            let taken = std::mem::replace(&mut *lock(&self.stage), Stage::Taken);
            match taken {
                Stage::Done(r) => {
                    *lock(&self.stage) = Stage::Done(r.clone());
                    return Ok(r);
                }
                Stage::Running(mut w) => {
                    let done = py.detach(|| w.wait_for(Duration::from_millis(100)));
                    *lock(&self.stage) = if done {
                        Stage::Done(finish(w))
                    } else if Instant::now() >= self.deadline {
                        // The library bounds the call itself; this is the handle's backstop.
                        Stage::Done(Err(ErrInfo {
                            class: "TimeoutError",
                            message: format!(
                                "{} (async_op): no answer from the queued call within {:?}",
                                self.op,
                                w.bound()
                            ),
                        }))
                    } else {
                        Stage::Running(w)
                    };
                }
                // Another thread waits on it: look again shortly.
                Stage::Taken => py.detach(|| std::thread::sleep(Duration::from_millis(1))),
            }
            py.check_signals()?;
        }
    }
}

/// The outcome of a finished call; drops its job (and arrays) on this thread.
fn finish(w: tutti::Work<Job>) -> Result<(), ErrInfo> {
    w.wait().map(drop).map_err(|e| ErrInfo::from(&e))
}

/// A point-to-point request of the library, typed away.
pub trait P2p: Send {
    /// True once the request has finished (then `wait` returns at once).
    fn test(&mut self) -> Result<bool, ErrInfo>;
    fn wait(self: Box<Self>) -> Result<(), ErrInfo>;
}

enum Kind {
    Queued(Arc<State>),
    P2p(Box<dyn P2p>),
    Done(Result<(), ErrInfo>),
}

/// The handle of an asynchronous call (`async_op=True`, `isend`, `irecv`), as torch's `Work`.
#[pyclass(frozen, module = "tutti._tutti")]
pub struct Work {
    kind: Mutex<Kind>,
}

impl Work {
    pub fn queued(state: Arc<State>) -> Work {
        Work {
            kind: Mutex::new(Kind::Queued(state)),
        }
    }

    pub fn p2p(req: Box<dyn P2p>) -> Work {
        Work {
            kind: Mutex::new(Kind::P2p(req)),
        }
    }
}

#[pymethods]
impl Work {
    /// Waits until the call has finished; raises its error (a `tutti.Error`) if it failed.
    /// Returns True, as torch's `Work.wait()`. `timeout` is accepted for torch's signature;
    /// the call is bounded by the communicator's timeout (`TUTTI_TIMEOUT`) in any case.
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<Py<PyAny>>) -> PyResult<bool> {
        let _ = timeout;
        let outcome = {
            let mut kind = lock(&self.kind);
            match std::mem::replace(&mut *kind, Kind::Done(Ok(()))) {
                Kind::Queued(state) => {
                    // Keep the handle waitable while we wait without its lock held.
                    *kind = Kind::Queued(state.clone());
                    drop(kind);
                    let r = state.wait(py)?;
                    *lock(&self.kind) = Kind::Done(r.clone());
                    r
                }
                Kind::P2p(req) => {
                    drop(kind);
                    let r = py.detach(move || req.wait());
                    *lock(&self.kind) = Kind::Done(r.clone());
                    r
                }
                Kind::Done(r) => {
                    *kind = Kind::Done(r.clone());
                    r
                }
            }
        };
        outcome.map_err(|e| e.to_py(py))?;
        Ok(true)
    }

    /// True once the call has finished (successfully or not); never blocks.
    fn is_completed(&self) -> PyResult<bool> {
        let mut kind = lock(&self.kind);
        Ok(match &mut *kind {
            Kind::Queued(state) => state.result().is_some(),
            Kind::P2p(req) => match req.test() {
                Ok(done) => done,
                Err(e) => {
                    *kind = Kind::Done(Err(e));
                    true
                }
            },
            Kind::Done(_) => true,
        })
    }

    /// True once the call has finished without an error.
    fn is_success(&self) -> PyResult<bool> {
        if !self.is_completed()? {
            return Ok(false);
        }
        let kind = lock(&self.kind);
        Ok(match &*kind {
            Kind::Queued(state) => matches!(state.result(), Some(Ok(()))),
            Kind::Done(r) => r.is_ok(),
            Kind::P2p(_) => true,
        })
    }
}
