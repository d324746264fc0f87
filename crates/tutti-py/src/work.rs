//! `async_op=True`: written before the library had asynchronous collectives (issue 15's Rust
//! part, since added as `Communicator::*_async`), the binding runs them itself: one worker
//! thread per communicator, started at its
//! first asynchronous call, runs the queued calls in call order, each holding its arrays (their
//! `Buf`s) until it has finished. A blocking call on the same communicator first waits for the
//! queue to drain, so calls still run in the order they were made; it then runs on the
//! caller's thread (no hop on the latency path). Errors surface at `Work.wait()`.
//!
//! `isend`/`irecv` use the library's own requests (`Communicator::isend`/`irecv`), which keep
//! the order of messages between a pair with the same tag.

use crate::errors::ErrInfo;
use pyo3::prelude::*;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use tutti::Communicator;

/// A call to run on a communicator, once (it owns the buffers it works on).
pub type Job = Box<dyn FnMut(&Communicator) -> tutti::Result<()> + Send>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The outcome of one queued call, filled in by the worker.
#[derive(Default)]
pub struct State {
    done: Mutex<Option<Result<(), ErrInfo>>>,
    cv: Condvar,
}

impl State {
    fn finish(&self, r: Result<(), ErrInfo>) {
        *lock(&self.done) = Some(r);
        self.cv.notify_all();
    }

    pub fn result(&self) -> Option<Result<(), ErrInfo>> {
        lock(&self.done).clone()
    }

    /// Waits at most `slice` for the call to finish; true once it has.
    fn wait_for(&self, slice: Duration) -> bool {
        let guard = lock(&self.done);
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, slice, |d| d.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.is_some()
    }

    /// Waits for the call with the GIL released, checking for Ctrl-C (and other signals)
    /// every 100 ms. The call itself is bounded by the communicator's timeout.
    pub fn wait(&self, py: Python<'_>) -> PyResult<Result<(), ErrInfo>> {
        let _blocked = crate::interrupt::Blocked::enter();
        loop {
            if py.detach(|| self.wait_for(Duration::from_millis(100))) {
                return Ok(self.result().unwrap_or(Ok(())));
            }
            py.check_signals()?;
        }
    }
}

/// A communicator's worker thread and its queue.
pub struct Queue {
    tx: Option<mpsc::Sender<(Job, Arc<State>)>>,
    thread: Option<JoinHandle<()>>,
    /// The last call queued: once it has finished, every earlier one has.
    last: Option<Arc<State>>,
}

impl Queue {
    pub fn start(comm: Arc<Communicator>) -> std::io::Result<Queue> {
        let (tx, rx) = mpsc::channel::<(Job, Arc<State>)>();
        let thread = std::thread::Builder::new()
            .name(format!("tutti-work-{}", comm.rank()))
            .spawn(move || {
                for (mut job, state) in rx {
                    let r = job(&comm).map_err(|e| ErrInfo::from(&e));
                    // Releases the call's arrays (taking the GIL) before the handle says done.
                    drop(job);
                    state.finish(r);
                }
            })?;
        Ok(Queue {
            tx: Some(tx),
            thread: Some(thread),
            last: None,
        })
    }

    pub fn push(&mut self, job: Job) -> Option<Arc<State>> {
        let state = Arc::new(State::default());
        self.tx.as_ref()?.send((job, state.clone())).ok()?;
        self.last = Some(state.clone());
        Some(state)
    }

    pub fn last(&self) -> Option<Arc<State>> {
        self.last.clone()
    }

    /// Lets the worker finish what is queued, then joins it (GIL released: the worker takes
    /// the GIL to release the arrays of finished calls).
    pub fn close(&mut self, py: Python<'_>) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            py.detach(move || {
                let _ = t.join();
            });
        }
    }
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
