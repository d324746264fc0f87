//! `tutti._tutti`: the Rust half of the Python binding. `python/tutti/__init__.py` is the
//! torch.distributed-style API over it (keywords, groups, global ranks); this module does the
//! work: it borrows the arrays' memory ([`buffer`]), runs the library's calls with the GIL
//! released, in place and without copying where the library's call allows it, queues
//! `async_op=True` calls on the library's progress thread ([`work`]), serves `tutti.put`/`get`
//! from the library's object store, and maps errors to `tutti.Error`
//! ([`errors`]). `launch` runs `tutti launch`'s code for `python -m tutti.launch`.

mod buffer;
mod errors;
mod interrupt;
mod launch;
mod work;

use buffer::{acquire, Access, Buf};
use bytemuck::Zeroable;
use errors::ErrInfo;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::types::PyList;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tutti::{Communicator, DType, Element, ObjectRef, ObjectStore, Op, ReduceOp};
use work::{Job, P2p, State, Work};

/// Runs `$body` with `$T` the Rust element type of `$dt`.
macro_rules! dispatch {
    ($dt:expr, $T:ident => $body:expr) => {
        match $dt {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            DType::F16 => {
                type $T = tutti::f16;
                $body
            }
            DType::BF16 => {
                type $T = tutti::bf16;
                $body
            }
            DType::I8 => {
                type $T = i8;
                $body
            }
            DType::U8 => {
                type $T = u8;
                $body
            }
            DType::I32 => {
                type $T = i32;
                $body
            }
            DType::U32 => {
                type $T = u32;
                $body
            }
            DType::I64 => {
                type $T = i64;
                $body
            }
            DType::U64 => {
                type $T = u64;
                $body
            }
            // `buffer` maps every exported type onto the ten above.
            other => unreachable!("no element type for {other:?}"),
        }
    };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn reduce_op(op: usize) -> PyResult<ReduceOp> {
    ReduceOp::ALL
        .get(op)
        .copied()
        .ok_or_else(|| PyValueError::new_err(format!("unknown reduce op {op}")))
}

fn same_dtype(a: &Buf, an: &str, b: &Buf, bn: &str) -> PyResult<()> {
    if a.dtype != b.dtype {
        return Err(PyTypeError::new_err(format!(
            "{an} holds {} but {bn} holds {}; they must have the same element type",
            a.dtype, b.dtype
        )));
    }
    Ok(())
}

fn disjoint(a: &Buf, an: &str, b: &Buf, bn: &str) -> PyResult<()> {
    if a.overlaps(b) {
        return Err(PyValueError::new_err(format!(
            "{an} and {bn} overlap in memory; pass separate arrays"
        )));
    }
    Ok(())
}

/// Borrows every array of a list, checking each against `like` (type, and count when given).
fn acquire_list(
    list: &Bound<'_, PyAny>,
    access: Access,
    name: &str,
    n: usize,
    like: &Buf,
    like_name: &str,
    same_count: bool,
) -> PyResult<Vec<Buf>> {
    let list = list
        .cast::<PyList>()
        .map(|l| l.iter().collect::<Vec<_>>())
        .or_else(|_| list.try_iter()?.collect::<PyResult<Vec<_>>>())?;
    if list.len() != n {
        return Err(PyValueError::new_err(format!(
            "{name} has {} entries; it needs one per rank of the group ({n})",
            list.len()
        )));
    }
    let mut bufs = Vec::with_capacity(n);
    for (i, obj) in list.iter().enumerate() {
        let what = format!("{name}[{i}]");
        let b = acquire(obj, access, &what)?;
        same_dtype(&b, &what, like, like_name)?;
        if same_count && b.count() != like.count() {
            return Err(PyValueError::new_err(format!(
                "{what} has {} elements but {like_name} has {}; they must be the same size",
                b.count(),
                like.count()
            )));
        }
        bufs.push(b);
    }
    Ok(bufs)
}

/// Copies the concatenation of `parts` into a new vector.
fn concat<T: Element>(parts: &[Buf]) -> Vec<T> {
    let total = parts.iter().map(Buf::count).sum();
    let mut out = vec![T::zeroed(); total];
    let mut at = 0;
    for p in parts {
        let s = p.slice::<T>();
        out[at..at + s.len()].copy_from_slice(s);
        at += s.len();
    }
    out
}

/// Copies consecutive blocks of `from` into `parts` (each its own length).
fn split_into<T: Element>(from: &[T], parts: &mut [Buf]) {
    let mut at = 0;
    for p in parts {
        let d = p.slice_mut::<T>();
        d.copy_from_slice(&from[at..at + d.len()]);
        at += d.len();
    }
}

/// A communicator (the world, or a group made by `split`).
#[pyclass(frozen, module = "tutti._tutti")]
struct Comm {
    inner: Arc<Communicator>,
    /// The last asynchronous call queued: once it has finished, every earlier one has.
    last: Mutex<Option<Arc<State>>>,
    closed: AtomicBool,
    /// This rank's object store (`put`/`get`/`free`), started at the first of them.
    store: Mutex<Option<Arc<ObjectStore>>>,
}

impl Comm {
    fn wrap(c: Communicator) -> Comm {
        Comm {
            inner: Arc::new(c),
            last: Mutex::new(None),
            closed: AtomicBool::new(false),
            store: Mutex::new(None),
        }
    }

    fn check_open(&self) -> PyResult<()> {
        if let Some(cause) = interrupt::revoked() {
            return Err(revoked_error(cause));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err(
                "this process group has been destroyed (destroy_process_group)",
            ));
        }
        Ok(())
    }

    /// This rank's object store, started (with its service thread) at the first call.
    fn store(&self, py: Python<'_>) -> PyResult<Arc<ObjectStore>> {
        self.check_open()?;
        let mut s = lock(&self.store);
        if let Some(st) = s.as_ref() {
            return Ok(st.clone());
        }
        let st = Arc::new(
            self.inner
                .object_store()
                .map_err(|e| errors::to_py(py, &e))?,
        );
        *s = Some(st.clone());
        Ok(st)
    }

    /// Waits for the queued asynchronous calls (their errors stay with their handles).
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let last = lock(&self.last).clone();
        if let Some(last) = last {
            // Their errors belong to their handles (`Work.wait()`).
            let _ = last.wait(py)?;
        }
        Ok(())
    }

    /// Runs `job` (the call `op`) now on this thread, after the queued calls, or queues it on
    /// the library's progress thread (`async_op`).
    fn submit<F>(
        &self,
        py: Python<'_>,
        op: Op,
        mut job: F,
        async_op: bool,
    ) -> PyResult<Option<Work>>
    where
        F: FnMut(&Communicator) -> tutti::Result<()> + Send + 'static,
    {
        self.check_open()?;
        if async_op {
            let state = Arc::new(State::start(&self.inner, op, Box::new(job)));
            *lock(&self.last) = Some(state.clone());
            return Ok(Some(Work::queued(state)));
        }
        self.drain(py)?;
        let comm = &*self.inner;
        let blocked = interrupt::Blocked::enter();
        let r = py.detach(|| job(comm));
        drop(blocked);
        // `job` (and the arrays it holds) is dropped here, with the GIL held.
        drop(job);
        outcome(py, r).map(|()| None)
    }
}

#[pymethods]
impl Comm {
    /// The world communicator from the environment (torchrun, tutti launch, Open MPI, Slurm,
    /// PMI), formed with the GIL released. `timeout`: seconds bounding every call (default:
    /// `TUTTI_TIMEOUT`, else 300).
    #[staticmethod]
    #[pyo3(signature = (timeout = None))]
    fn from_env(py: Python<'_>, timeout: Option<f64>) -> PyResult<Comm> {
        let timeout = timeout
            .map(|t| {
                Duration::try_from_secs_f64(t)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        PyValueError::new_err(format!(
                            "timeout must be a positive number of seconds, not {t}"
                        ))
                    })
            })
            .transpose()?;
        let mut c = py
            .detach(Communicator::from_env)
            .map_err(|e| errors::to_py(py, &e))?;
        if let Some(t) = timeout {
            c.set_timeout(t);
        }
        let comm = Comm::wrap(c);
        interrupt::set_world(Some(&comm.inner));
        Ok(comm)
    }

    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    /// The world rank of each rank of this communicator.
    fn world_ranks(&self) -> Vec<usize> {
        self.inner.world_ranks().to_vec()
    }

    /// Seconds that bound every call.
    fn timeout(&self) -> f64 {
        self.inner.timeout().as_secs_f64()
    }

    /// `Communicator::split`: every rank calls it; `color=None` gets None.
    #[pyo3(signature = (color, key))]
    fn split(&self, py: Python<'_>, color: Option<u32>, key: i64) -> PyResult<Option<Comm>> {
        self.check_open()?;
        self.drain(py)?;
        let comm = &*self.inner;
        let blocked = interrupt::Blocked::enter();
        let r = py.detach(|| comm.split(color, key));
        drop(blocked);
        Ok(outcome(py, r)?.map(Comm::wrap))
    }

    /// Waits for the queued calls, stops the object store and refuses later calls; `shutdown`
    /// also closes this rank's links (the world's, shared by every group).
    #[pyo3(signature = (shutdown = false))]
    fn destroy(&self, py: Python<'_>, shutdown: bool) -> PyResult<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Waits for the queued calls (their errors stay with their handles).
        self.drain(py)?;
        // Stops the service thread (within its poll interval) and frees the objects.
        let store = lock(&self.store).take();
        py.detach(move || drop(store));
        if shutdown {
            interrupt::set_world(None);
            self.inner.shutdown();
        }
        Ok(())
    }

    #[pyo3(signature = (tensor, op, async_op = false))]
    fn all_reduce(
        &self,
        py: Python<'_>,
        tensor: &Bound<'_, PyAny>,
        op: usize,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let mut b = acquire(tensor, Access::Write, "tensor")?;
        let op = reduce_op(op)?;
        let dt = b.dtype;
        let job = move |c: &Communicator| dispatch!(dt, T => c.all_reduce(b.slice_mut::<T>(), op));
        self.submit(py, Op::AllReduce, job, async_op)
    }

    #[pyo3(signature = (tensor, root, async_op = false))]
    fn broadcast(
        &self,
        py: Python<'_>,
        tensor: &Bound<'_, PyAny>,
        root: usize,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let mut b = acquire(tensor, Access::Write, "tensor")?;
        let dt = b.dtype;
        let job = move |c: &Communicator| dispatch!(dt, T => c.broadcast(b.slice_mut::<T>(), root));
        self.submit(py, Op::Broadcast, job, async_op)
    }

    #[pyo3(signature = (tensor, root, op, async_op = false))]
    fn reduce(
        &self,
        py: Python<'_>,
        tensor: &Bound<'_, PyAny>,
        root: usize,
        op: usize,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let mut b = acquire(tensor, Access::Write, "tensor")?;
        let op = reduce_op(op)?;
        let dt = b.dtype;
        let job: Job =
            Box::new(move |c| dispatch!(dt, T => c.reduce_in_place(b.slice_mut::<T>(), op, root)));
        self.submit(py, Op::Reduce, job, async_op)
    }

    /// `all_gather_into_tensor(output, input)`: zero copy into `output`; `input` may be this
    /// rank's block of `output` (then nothing is copied locally either).
    #[pyo3(signature = (output, input, async_op = false))]
    fn all_gather_into(
        &self,
        py: Python<'_>,
        output: &Bound<'_, PyAny>,
        input: &Bound<'_, PyAny>,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let mut out = acquire(output, Access::Write, "output_tensor")?;
        let inp = acquire(input, Access::Read, "input_tensor")?;
        same_dtype(&out, "output_tensor", &inp, "input_tensor")?;
        let (n, r) = (self.inner.size(), self.inner.rank());
        let own = out.range().start + r * inp.range().len();
        let in_place =
            inp.range().len() * n == out.range().len() && inp.range().start == own && n > 0;
        let dt = out.dtype;
        let job: Job = if in_place {
            drop(inp);
            Box::new(move |c| dispatch!(dt, T => c.all_gather_in_place(out.slice_mut::<T>())))
        } else {
            disjoint(&out, "output_tensor", &inp, "input_tensor")?;
            Box::new(
                move |c| dispatch!(dt, T => c.all_gather(inp.slice::<T>(), out.slice_mut::<T>())),
            )
        };
        self.submit(py, Op::AllGather, job, async_op)
    }

    /// `all_gather(tensor_list, tensor)`: gathered into one buffer, then copied into the list.
    #[pyo3(signature = (outputs, input, async_op = false))]
    fn all_gather_list(
        &self,
        py: Python<'_>,
        outputs: &Bound<'_, PyAny>,
        input: &Bound<'_, PyAny>,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let inp = acquire(input, Access::Read, "tensor")?;
        let n = self.inner.size();
        let mut outs = acquire_list(
            outputs,
            Access::Write,
            "tensor_list",
            n,
            &inp,
            "tensor",
            true,
        )?;
        let dt = inp.dtype;
        let job: Job = Box::new(move |c| {
            dispatch!(dt, T => {
                let mut all = vec![T::zeroed(); n * inp.count()];
                c.all_gather(inp.slice::<T>(), &mut all)?;
                split_into(&all, &mut outs);
                Ok(())
            })
        });
        self.submit(py, Op::AllGather, job, async_op)
    }

    /// `gather(tensor, gather_list, dst)`: the root passes the list (one array per rank).
    #[pyo3(signature = (input, outputs, root, async_op = false))]
    fn gather(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        outputs: Option<&Bound<'_, PyAny>>,
        root: usize,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let inp = acquire(input, Access::Read, "tensor")?;
        let n = self.inner.size();
        let mut outs = match outputs {
            Some(o) => Some(acquire_list(
                o,
                Access::Write,
                "gather_list",
                n,
                &inp,
                "tensor",
                true,
            )?),
            None => None,
        };
        let dt = inp.dtype;
        let job: Job = Box::new(move |c| {
            dispatch!(dt, T => match outs.as_mut() {
                Some(outs) => {
                    let mut all = vec![T::zeroed(); n * inp.count()];
                    c.gather(inp.slice::<T>(), Some(&mut all), root)?;
                    split_into(&all, outs);
                    Ok(())
                }
                None => c.gather(inp.slice::<T>(), None, root),
            })
        });
        self.submit(py, Op::Gather, job, async_op)
    }

    /// `scatter(tensor, scatter_list, src)`: the root passes the list (one array per rank).
    #[pyo3(signature = (output, inputs, root, async_op = false))]
    fn scatter(
        &self,
        py: Python<'_>,
        output: &Bound<'_, PyAny>,
        inputs: Option<&Bound<'_, PyAny>>,
        root: usize,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let mut out = acquire(output, Access::Write, "tensor")?;
        let n = self.inner.size();
        let ins = match inputs {
            Some(i) => Some(acquire_list(
                i,
                Access::Read,
                "scatter_list",
                n,
                &out,
                "tensor",
                true,
            )?),
            None => None,
        };
        let dt = out.dtype;
        let job: Job = Box::new(move |c| {
            dispatch!(dt, T => match ins.as_ref() {
                Some(ins) => {
                    let all = concat::<T>(ins);
                    c.scatter(Some(&all), out.slice_mut::<T>(), root)
                }
                None => c.scatter(None, out.slice_mut::<T>(), root),
            })
        });
        self.submit(py, Op::Scatter, job, async_op)
    }

    /// `reduce_scatter(output, input_list, op)`: the list is concatenated, then reduced.
    #[pyo3(signature = (output, inputs, op, async_op = false))]
    fn reduce_scatter_list(
        &self,
        py: Python<'_>,
        output: &Bound<'_, PyAny>,
        inputs: &Bound<'_, PyAny>,
        op: usize,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let mut out = acquire(output, Access::Write, "output")?;
        let n = self.inner.size();
        let ins = acquire_list(inputs, Access::Read, "input_list", n, &out, "output", true)?;
        let op = reduce_op(op)?;
        let dt = out.dtype;
        let job: Job = Box::new(move |c| {
            dispatch!(dt, T => {
                let all = concat::<T>(&ins);
                c.reduce_scatter(&all, out.slice_mut::<T>(), op)
            })
        });
        self.submit(py, Op::ReduceScatter, job, async_op)
    }

    /// `reduce_scatter_tensor(output, input, op)`: zero copy from `input` into `output`.
    #[pyo3(signature = (output, input, op, async_op = false))]
    fn reduce_scatter_into(
        &self,
        py: Python<'_>,
        output: &Bound<'_, PyAny>,
        input: &Bound<'_, PyAny>,
        op: usize,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let mut out = acquire(output, Access::Write, "output")?;
        let inp = acquire(input, Access::Read, "input")?;
        same_dtype(&out, "output", &inp, "input")?;
        disjoint(&out, "output", &inp, "input")?;
        let op = reduce_op(op)?;
        let dt = out.dtype;
        let job: Job = Box::new(
            move |c| dispatch!(dt, T => c.reduce_scatter(inp.slice::<T>(), out.slice_mut::<T>(), op)),
        );
        self.submit(py, Op::ReduceScatter, job, async_op)
    }

    /// `all_to_all(output_list, input_list)`: sizes may differ per rank (all-to-all-v).
    #[pyo3(signature = (outputs, inputs, async_op = false))]
    fn all_to_all_list(
        &self,
        py: Python<'_>,
        outputs: &Bound<'_, PyAny>,
        inputs: &Bound<'_, PyAny>,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let n = self.inner.size();
        let first = inputs
            .get_item(0)
            .map_err(|_| PyValueError::new_err("input_tensor_list is empty"))?;
        let like = acquire(&first, Access::Read, "input_tensor_list[0]")?;
        let ins = acquire_list(
            inputs,
            Access::Read,
            "input_tensor_list",
            n,
            &like,
            "input_tensor_list[0]",
            false,
        )?;
        let mut outs = acquire_list(
            outputs,
            Access::Write,
            "output_tensor_list",
            n,
            &like,
            "input_tensor_list[0]",
            false,
        )?;
        drop(like);
        let send_counts: Vec<usize> = ins.iter().map(Buf::count).collect();
        let recv_counts: Vec<usize> = outs.iter().map(Buf::count).collect();
        let dt = ins.first().map_or(DType::U8, |b| b.dtype);
        let job: Job = Box::new(move |c| {
            dispatch!(dt, T => {
                let send = concat::<T>(&ins);
                let mut recv = vec![T::zeroed(); recv_counts.iter().sum()];
                c.all_to_all_v(&send, &send_counts, &mut recv, &recv_counts)?;
                split_into(&recv, &mut outs);
                Ok(())
            })
        });
        self.submit(py, Op::AllToAllV, job, async_op)
    }

    /// `all_to_all_single(output, input, output_split_sizes, input_split_sizes)`: zero copy;
    /// split sizes count rows (the first dimension), as torch's.
    #[pyo3(signature = (output, input, output_splits = None, input_splits = None, async_op = false))]
    fn all_to_all_single(
        &self,
        py: Python<'_>,
        output: &Bound<'_, PyAny>,
        input: &Bound<'_, PyAny>,
        output_splits: Option<Vec<usize>>,
        input_splits: Option<Vec<usize>>,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let mut out = acquire(output, Access::Write, "output")?;
        let inp = acquire(input, Access::Read, "input")?;
        same_dtype(&out, "output", &inp, "input")?;
        disjoint(&out, "output", &inp, "input")?;
        let n = self.inner.size();
        let dt = out.dtype;
        let job: Job = if output_splits.is_none() && input_splits.is_none() {
            Box::new(
                move |c| dispatch!(dt, T => c.all_to_all(inp.slice::<T>(), out.slice_mut::<T>())),
            )
        } else {
            let rc = split_counts(&out, output_splits, n, "output")?;
            let sc = split_counts(&inp, input_splits, n, "input")?;
            Box::new(
                move |c| dispatch!(dt, T => c.all_to_all_v(inp.slice::<T>(), &sc, out.slice_mut::<T>(), &rc)),
            )
        };
        self.submit(py, Op::AllToAll, job, async_op)
    }

    #[pyo3(signature = (async_op = false))]
    fn barrier(&self, py: Python<'_>, async_op: bool) -> PyResult<Option<Work>> {
        self.submit(py, Op::Barrier, |c: &Communicator| c.barrier(), async_op)
    }

    /// Blocking send, zero copy, on the caller's thread.
    #[pyo3(signature = (tensor, dst, tag = 0))]
    fn send(
        &self,
        py: Python<'_>,
        tensor: &Bound<'_, PyAny>,
        dst: usize,
        tag: u32,
    ) -> PyResult<()> {
        self.check_open()?;
        let b = acquire(tensor, Access::Read, "tensor")?;
        let comm = &*self.inner;
        let buf = &b;
        let blocked = interrupt::Blocked::enter();
        let r = py.detach(|| dispatch!(buf.dtype, T => comm.send(buf.slice::<T>(), dst, tag)));
        drop(blocked);
        outcome(py, r)
    }

    /// Blocking receive into `tensor` (its exact size and type), from `src` or any rank
    /// (`None`); returns the sender's rank in this communicator.
    #[pyo3(signature = (tensor, src = None, tag = 0))]
    fn recv(
        &self,
        py: Python<'_>,
        tensor: &Bound<'_, PyAny>,
        src: Option<usize>,
        tag: u32,
    ) -> PyResult<usize> {
        self.check_open()?;
        let mut b = acquire(tensor, Access::Write, "tensor")?;
        let comm = &*self.inner;
        let buf = &mut b;
        let dt = buf.dtype;
        let blocked = interrupt::Blocked::enter();
        let r = py.detach(|| dispatch!(dt, T => comm.recv_from(buf.slice_mut::<T>(), src, tag)));
        drop(blocked);
        outcome(py, r).map(|st| st.source)
    }

    /// Receives the next message of bytes with `tag` from `src` (or any rank), whatever its
    /// length; returns `(bytes, source)`.
    #[pyo3(signature = (src = None, tag = 0))]
    fn recv_bytes<'py>(
        &self,
        py: Python<'py>,
        src: Option<usize>,
        tag: u32,
    ) -> PyResult<(Bound<'py, PyBytes>, usize)> {
        self.check_open()?;
        let comm = &*self.inner;
        let blocked = interrupt::Blocked::enter();
        let r = py.detach(|| comm.recv_vec::<u8>(src, tag));
        drop(blocked);
        let (data, st) = outcome(py, r)?;
        Ok((PyBytes::new(py, &data), st.source))
    }

    /// Waits (at most the timeout) for a message with `tag` from `src` (or any rank); returns
    /// `(source, bytes)` without receiving it.
    #[pyo3(signature = (src = None, tag = 0))]
    fn probe(&self, py: Python<'_>, src: Option<usize>, tag: u32) -> PyResult<(usize, usize)> {
        self.check_open()?;
        let comm = &*self.inner;
        let blocked = interrupt::Blocked::enter();
        let r = py.detach(|| comm.probe(src, tag));
        drop(blocked);
        outcome(py, r).map(|st| (st.source, st.bytes))
    }

    /// As `probe`, without waiting: None if no such message has arrived.
    #[pyo3(signature = (src = None, tag = 0))]
    fn iprobe(
        &self,
        py: Python<'_>,
        src: Option<usize>,
        tag: u32,
    ) -> PyResult<Option<(usize, usize)>> {
        self.check_open()?;
        let r = self.inner.iprobe(src, tag);
        outcome(py, r).map(|st| st.map(|st| (st.source, st.bytes)))
    }

    /// `tutti.put`: keeps a copy of `array` on this rank; returns `(owner, id)`.
    fn put(&self, py: Python<'_>, array: &Bound<'_, PyAny>) -> PyResult<(usize, u64)> {
        let store = self.store(py)?;
        let b = acquire(array, Access::Read, "array")?;
        let buf = &b;
        let r = py.detach(|| dispatch!(buf.dtype, T => store.put(buf.slice::<T>())));
        Ok((r.owner, r.id))
    }

    /// `tutti.get`: the bytes of object `(owner, id)`, fetched from its owner (the GIL is
    /// released while waiting); bounded by the timeout.
    fn get<'py>(&self, py: Python<'py>, owner: usize, id: u64) -> PyResult<Bound<'py, PyBytes>> {
        let store = self.store(py)?;
        let blocked = interrupt::Blocked::enter();
        let r = py.detach(|| store.get_bytes(ObjectRef { owner, id }));
        drop(blocked);
        let (_, data) = outcome(py, r)?;
        Ok(PyBytes::new(py, &data))
    }

    /// `tutti.free`: drops this rank's object `(owner, id)`.
    fn free(&self, py: Python<'_>, owner: usize, id: u64) -> PyResult<()> {
        let store = self.store(py)?;
        store
            .free(ObjectRef { owner, id })
            .map_err(|e| errors::to_py(py, &e))
    }

    /// `isend`: the library's request (the array is copied into it at once, as the Rust
    /// `isend` takes its buffer by value).
    #[pyo3(signature = (tensor, dst, tag = 0))]
    fn isend(
        &self,
        py: Python<'_>,
        tensor: &Bound<'_, PyAny>,
        dst: usize,
        tag: u32,
    ) -> PyResult<Work> {
        self.check_open()?;
        let b = acquire(tensor, Access::Read, "tensor")?;
        let comm = &*self.inner;
        let req: tutti::Result<Box<dyn P2p>> = dispatch!(b.dtype, T => {
            comm.isend(b.slice::<T>().to_vec(), dst, tag)
                .map(|r| Box::new(SendReq(Some(r))) as Box<dyn P2p>)
        });
        req.map(Work::p2p).map_err(|e| errors::to_py(py, &e))
    }

    /// `irecv`: the library's request; the message is copied into `tensor` when it arrives
    /// (at `wait()` or a successful `is_completed()`).
    #[pyo3(signature = (tensor, src, tag = 0))]
    fn irecv(
        &self,
        py: Python<'_>,
        tensor: &Bound<'_, PyAny>,
        src: usize,
        tag: u32,
    ) -> PyResult<Work> {
        self.check_open()?;
        let b = acquire(tensor, Access::Write, "tensor")?;
        let comm = &*self.inner;
        let dt = b.dtype;
        let req: tutti::Result<Box<dyn P2p>> = dispatch!(dt, T => {
            comm.irecv(vec![T::zeroed(); b.count()], src, tag).map(|r| {
                Box::new(RecvReq { req: Some(r), out: b }) as Box<dyn P2p>
            })
        });
        req.map(Work::p2p).map_err(|e| errors::to_py(py, &e))
    }
}

/// A finished blocking call's result as Python sees it: after Ctrl-C revoked the group,
/// KeyboardInterrupt (Python's handler runs now), else the revocation; otherwise the error.
fn outcome<T>(py: Python<'_>, r: tutti::Result<T>) -> PyResult<T> {
    r.or_else(|e| {
        if let Some(cause) = interrupt::revoked() {
            py.check_signals()?;
            return Err(revoked_error(cause));
        }
        Err(errors::to_py(py, &e))
    })
}

fn revoked_error(cause: &str) -> PyErr {
    Python::attach(|py| {
        ErrInfo {
            class: "Error",
            message: format!("the process group is revoked: {cause}"),
        }
        .to_py(py)
    })
}

/// The element counts of `all_to_all_single`'s split sizes (rows of the first dimension).
fn split_counts(b: &Buf, splits: Option<Vec<usize>>, n: usize, name: &str) -> PyResult<Vec<usize>> {
    let count = b.count();
    match splits {
        None => {
            if !count.is_multiple_of(n) {
                return Err(PyValueError::new_err(format!(
                    "{name} has {count} elements, which do not split into {n} equal blocks; pass {name}_split_sizes"
                )));
            }
            Ok(vec![count / n; n])
        }
        Some(s) => {
            if s.len() != n {
                return Err(PyValueError::new_err(format!(
                    "{name}_split_sizes has {} entries; it needs one per rank ({n})",
                    s.len()
                )));
            }
            let rows: usize = s.iter().sum();
            if rows != b.rows {
                return Err(PyValueError::new_err(format!(
                    "{name}_split_sizes add up to {rows} rows but {name} has {}",
                    b.rows
                )));
            }
            let per_row = count.checked_div(b.rows).unwrap_or(0);
            Ok(s.iter().map(|&r| r * per_row).collect())
        }
    }
}

struct SendReq<T: Element>(Option<tutti::SendRequest<T>>);

impl<T: Element> P2p for SendReq<T> {
    fn test(&mut self) -> Result<bool, ErrInfo> {
        Ok(self.0.as_mut().is_none_or(|r| r.test()))
    }

    fn wait(mut self: Box<Self>) -> Result<(), ErrInfo> {
        match self.0.take() {
            Some(r) => r.wait().map(drop).map_err(|e| ErrInfo::from(&e)),
            None => Ok(()),
        }
    }
}

struct RecvReq<T: Element> {
    req: Option<tutti::RecvRequest<T>>,
    out: Buf,
}

impl<T: Element> P2p for RecvReq<T> {
    fn test(&mut self) -> Result<bool, ErrInfo> {
        let Some(req) = self.req.take() else {
            return Ok(true);
        };
        match req.test().map_err(|e| ErrInfo::from(&e))? {
            Ok(data) => {
                self.out.slice_mut::<T>().copy_from_slice(&data);
                Ok(true)
            }
            Err(req) => {
                self.req = Some(req);
                Ok(false)
            }
        }
    }

    fn wait(mut self: Box<Self>) -> Result<(), ErrInfo> {
        if let Some(req) = self.req.take() {
            let data = req.wait().map_err(|e| ErrInfo::from(&e))?;
            self.out.slice_mut::<T>().copy_from_slice(&data);
        }
        Ok(())
    }
}

/// The world's `Comm`, for [`all_reduce`]'s fast path (set by `init_process_group`, cleared
/// by `destroy_process_group`).
static WORLD_COMM: Mutex<Option<Py<Comm>>> = Mutex::new(None);

#[pyfunction]
#[pyo3(signature = (comm))]
fn set_world_comm(comm: Option<Py<Comm>>) {
    *lock(&WORLD_COMM) = comm;
}

/// `tutti.all_reduce` itself (torch's signature), without a Python frame on the way: the
/// world's communicator when `group` is None, `op` a `ReduceOp` (or its int, or None for
/// SUM). Anything else (a group, an op given by name or as torch's, no world yet) goes to the
/// Python definition, `tutti._all_reduce`, which checks and converts it.
#[pyfunction]
#[pyo3(signature = (tensor, op = None, group = None, async_op = false))]
fn all_reduce(
    py: Python<'_>,
    tensor: &Bound<'_, PyAny>,
    op: Option<&Bound<'_, PyAny>>,
    group: Option<&Bound<'_, PyAny>>,
    async_op: bool,
) -> PyResult<Py<PyAny>> {
    let code = match op {
        None => Some(0),
        Some(o) if o.is_instance_of::<pyo3::types::PyInt>() => o.extract::<usize>().ok(),
        Some(_) => None,
    };
    let world = if group.is_none() {
        lock(&WORLD_COMM).as_ref().map(|c| c.clone_ref(py))
    } else {
        None
    };
    match (world, code) {
        (Some(comm), Some(code)) => match comm.get().all_reduce(py, tensor, code, async_op)? {
            Some(work) => Ok(Py::new(py, work)?.into_any()),
            None => Ok(py.None()),
        },
        _ => {
            let slow = py.import("tutti")?.getattr("_all_reduce")?;
            let op = match op {
                Some(o) => o.clone().unbind(),
                None => py.None(),
            };
            let group = match group {
                Some(g) => g.clone().unbind(),
                None => py.None(),
            };
            Ok(slow.call1((tensor, op, group, async_op))?.unbind())
        }
    }
}

#[pymodule]
fn _tutti(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Comm>()?;
    m.add_class::<Work>()?;
    m.add_function(wrap_pyfunction!(launch::launch, m)?)?;
    m.add_function(wrap_pyfunction!(interrupt::watch_signals, m)?)?;
    m.add_function(wrap_pyfunction!(all_reduce, m)?)?;
    m.add_function(wrap_pyfunction!(set_world_comm, m)?)?;
    m.add(
        "DTYPES",
        DType::ALL.iter().map(|d| d.name()).collect::<Vec<_>>(),
    )?;
    Ok(())
}
