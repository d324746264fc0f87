"""tutti from Python: torch.distributed's API on numpy arrays and CPU tensors.

    import numpy as np, tutti
    tutti.init_process_group()                # RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...
    grad = np.full(1 << 20, 0.5, dtype=np.float32)
    tutti.all_reduce(grad, op=tutti.ReduceOp.SUM)   # in place, in grad's own memory

Run it with ``python -m tutti.launch -n 4 script.py`` (or torchrun, mpirun, srun).

Every call works in place on the memory of the arrays it is given (the buffer protocol: numpy
arrays, bytearray, memoryview; or DLPack: PyTorch CPU tensors, bf16 included), which must be
C-contiguous, writable where the call writes, and of a supported element type (float32,
float64, float16, bfloat16, int8, uint8, int32, uint32, int64, uint64); otherwise TypeError or
ValueError names the argument and the problem. The GIL is released while communicating.
Ranks in arguments (``src``, ``dst``) are global ranks, as in torch.distributed, also when a
``group`` is given; ``group_src``/``group_dst`` take ranks within the group.

``async_op=True`` returns a :class:`Work` handle (``wait()``, ``is_completed()``): the call is
queued on the library's progress thread of its group (``Communicator::call_async``), runs in
call order with the group's other calls, holds its arrays until it finishes, and its error (the
library's) is raised by ``wait()``.

``tutti.put(array)`` returns a small picklable :class:`ObjectRef`; ``tutti.get(ref)`` on any
rank fetches the array from its owner (served by a thread of the owner's process);
``tutti.free(ref)`` on the owner frees it. ``from tutti import MPI`` is a facade for code
written against mpi4py (see ``tutti/MPI.py``).
"""

import atexit as _atexit
import datetime as _datetime
import enum as _enum
import os as _os

from . import _tutti
from ._errors import (
    Error,
    InitError,
    InvalidArgumentError,
    MismatchError,
    PeerLostError,
    TimeoutError,
)
from ._tutti import Work

__all__ = [
    "Error", "TimeoutError", "PeerLostError", "MismatchError", "InvalidArgumentError",
    "InitError", "Work", "ReduceOp", "ProcessGroup", "GroupMember",
    "init_process_group", "destroy_process_group", "is_initialized", "is_available",
    "get_rank", "get_world_size", "get_backend", "new_group", "get_process_group_ranks",
    "get_global_rank", "get_group_rank",
    "all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor", "gather",
    "scatter", "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
    "barrier", "send", "recv", "isend", "irecv", "put", "get", "free", "ObjectRef",
]

DTYPES = tuple(_tutti.DTYPES)


class ReduceOp(_enum.IntEnum):
    """Reduction operators (torch.distributed.ReduceOp's names). AVG divides the sum by the
    number of ranks; BAND/BOR/BXOR are for integer types; integer arithmetic wraps."""

    SUM = 0
    PRODUCT = 1
    MIN = 2
    MAX = 3
    AVG = 4
    BAND = 5
    BOR = 6
    BXOR = 7


# ReduceOp members (and their ints) to codes, for a dict lookup on the hot path.
_OP_CODES = {op: int(op) for op in ReduceOp}


def _op(op):
    code = _OP_CODES.get(op) if isinstance(op, (int, ReduceOp)) else None
    if code is not None:
        return code
    if isinstance(op, str):
        name = op.upper()
    else:
        # torch.distributed.ReduceOp.SUM and the like have a name.
        name = getattr(op, "name", None)
    if name == "PROD":
        name = "PRODUCT"
    try:
        return int(ReduceOp[name])
    except (KeyError, TypeError):
        raise ValueError(f"unknown reduce op {op!r}; use tutti.ReduceOp.SUM, ...") from None


class ProcessGroup:
    """A group of ranks (the world, or one made by :func:`new_group`)."""

    def __init__(self, comm, ranks):
        self._comm = comm  # None on a rank that is not a member
        self._ranks = tuple(ranks)

    def rank(self):
        return self._comm.rank() if self._comm is not None else -1

    def size(self):
        return len(self._ranks)

    @property
    def ranks(self):
        """The global ranks of the members, in group-rank order."""
        return list(self._ranks)

    def __repr__(self):
        return f"<tutti.ProcessGroup ranks={list(self._ranks)} rank={self.rank()}>"


class GroupMember:
    """As torch.distributed.GroupMember: ``WORLD`` (set by init_process_group) and the marker
    that :func:`new_group` returns on ranks outside the new group."""

    WORLD = None
    NON_GROUP_MEMBER = None  # replaced below


_world = None
_world_comm = None  # _world._comm, for the hot path
_groups = []


def _not_member_group():
    return ProcessGroup(None, ())


def is_available():
    return True


def is_initialized():
    return _world is not None


def _default():
    if _world is None:
        raise RuntimeError(
            "tutti: the default process group has not been initialized; call "
            "tutti.init_process_group() first"
        )
    return _world


def _resolve(group):
    pg = _default() if group is None else group
    if not isinstance(pg, ProcessGroup):
        raise TypeError(f"group must be a tutti.ProcessGroup (from new_group) or None, not {type(pg).__name__}")
    if pg._comm is None:
        raise ValueError(
            f"global rank {_default()._comm.rank()} is not a member of this group; only its "
            "members may call its collectives"
        )
    return pg


def _group_rank(pg, rank, group_rank, name):
    """The rank within ``pg`` of global ``rank`` (or of ``group_rank``, already in the group)."""
    if group_rank is not None:
        if rank is not None:
            raise ValueError(f"pass either {name} or group_{name}, not both")
        return int(group_rank)
    if rank is None:
        raise ValueError(f"{name} is required")
    rank = int(rank)
    if pg is _world:
        return rank
    try:
        return pg._ranks.index(rank)
    except ValueError:
        raise ValueError(f"{name}={rank} is not a member of the group {list(pg._ranks)}") from None


def init_process_group(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1,
                       store=None, group_name="", pg_options=None, device_id=None):
    """Forms the world from the environment, as the Rust ``Communicator::from_env``: RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT (torchrun, python -m tutti.launch), Open MPI's,
    Slurm's or PMI's variables, TUTTI_STORE.

    torch's keywords are accepted: ``backend`` may be None, "tutti", "gloo", "mpi" or
    "cpu:..." (tutti replaces a CPU backend; "nccl" is refused: tutti works on CPU memory);
    ``init_method`` None or "env://", or "tcp://HOST:PORT" (sets MASTER_ADDR/MASTER_PORT);
    ``timeout`` (a timedelta or seconds) bounds every call; ``world_size``/``rank``, when
    given, must agree with the environment (or fill in RANK/WORLD_SIZE where it has none).
    ``store`` and ``pg_options`` are not supported (ValueError); ``group_name`` is ignored.
    """
    global _world, _world_comm
    if _world is not None:
        raise RuntimeError("trying to initialize the default process group twice")
    if backend is not None:
        b = str(backend).lower()
        if "nccl" in b or "cuda" in b:
            raise ValueError(f"backend {backend!r}: tutti communicates CPU memory only (use the default backend)")
        if b not in ("tutti", "gloo", "mpi", "cpu") and not b.startswith("cpu:"):
            raise ValueError(f"unknown backend {backend!r}; tutti accepts None, 'tutti', 'gloo', 'mpi'")
    if store is not None:
        raise ValueError("store= is not supported: tutti forms its own rendezvous store (MASTER_ADDR/MASTER_PORT or TUTTI_STORE)")
    if pg_options is not None:
        raise ValueError("pg_options= is not supported by tutti")
    if device_id is not None and "cpu" not in str(device_id):
        raise ValueError(f"device_id={device_id!r}: tutti communicates CPU memory only")
    if init_method is not None and init_method != "env://":
        if init_method.startswith("tcp://"):
            host, _, port = init_method[len("tcp://"):].rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"init_method {init_method!r}: expected tcp://HOST:PORT")
            _os.environ["MASTER_ADDR"] = host.strip("[]")
            _os.environ["MASTER_PORT"] = port
        else:
            raise ValueError(f"init_method {init_method!r} is not supported (use env:// or tcp://HOST:PORT)")
    for key, value in (("RANK", rank), ("WORLD_SIZE", world_size)):
        if value is None or int(value) < 0:
            continue
        have = _os.environ.get(key)
        if have is None:
            _os.environ[key] = str(int(value))
        elif int(have) != int(value):
            raise ValueError(f"{key.lower()}={value} disagrees with the environment's {key}={have}")
    if isinstance(timeout, _datetime.timedelta):
        timeout = timeout.total_seconds()
    comm = _tutti.Comm.from_env(None if timeout is None else float(timeout))
    _world = ProcessGroup(comm, range(comm.size()))
    _world_comm = comm
    _tutti.set_world_comm(comm)
    _watch_ctrl_c()
    GroupMember.WORLD = _world
    _groups.clear()


_watching = False


def _watch_ctrl_c():
    """Lets Ctrl-C interrupt a call blocked with the GIL released (see
    crates/tutti-py/src/interrupt.rs): Python writes each signal's number to a pipe whose other
    end a thread of the extension reads. Skipped off the main thread, and where the wakeup fd
    is already taken (asyncio): there Ctrl-C acts when the call returns."""
    global _watching
    import signal
    import threading

    if _watching or threading.current_thread() is not threading.main_thread():
        return
    r, w = _os.pipe()
    _os.set_blocking(w, False)
    try:
        old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:
        old = None
    if old != -1:
        if old is not None:
            signal.set_wakeup_fd(old)
        _os.close(r)
        _os.close(w)
        return
    _tutti.watch_signals(r)
    _watching = True


def destroy_process_group(group=None):
    """Destroys ``group``, or (None) every group and the world: waits for their queued
    asynchronous calls, then closes this rank's links."""
    global _world, _world_comm
    if group is not None and group is not _world:
        if group._comm is not None:
            group._comm.destroy()
        if group in _groups:
            _groups.remove(group)
        return
    if _world is None:
        raise RuntimeError("tutti: destroy_process_group() called before init_process_group()")
    for g in _groups:
        if g._comm is not None:
            g._comm.destroy()
    _groups.clear()
    _tutti.set_world_comm(None)
    _world._comm.destroy(shutdown=True)
    _world = None
    _world_comm = None
    GroupMember.WORLD = None


@_atexit.register
def _finish_queued_calls():
    # Worker threads take the GIL to release their arrays: let them finish before the
    # interpreter shuts down.
    for g in list(_groups) + ([_world] if _world is not None else []):
        if g._comm is not None:
            g._comm.destroy()


def get_backend(group=None):
    _resolve(group)
    return "tutti"


def get_rank(group=None):
    """This rank in ``group`` (default: the world); -1 if it is not a member."""
    pg = _default() if group is None else group
    return pg.rank()


def get_world_size(group=None):
    """The number of ranks of ``group`` (default: the world); -1 on a rank outside it."""
    pg = _default() if group is None else group
    return pg.size() if pg._comm is not None else -1


def get_process_group_ranks(group):
    return list((_default() if group is None else group)._ranks)


def get_global_rank(group, group_rank):
    return (_default() if group is None else group)._ranks[group_rank]


def get_group_rank(group, global_rank):
    pg = _default() if group is None else group
    try:
        return pg._ranks.index(global_rank)
    except ValueError:
        raise ValueError(f"global rank {global_rank} is not part of the group") from None


def new_group(ranks=None, timeout=None, backend=None, pg_options=None,
              use_local_synchronization=False, group_desc=None):
    """A group of the given global ranks (all, if None), ordered by global rank, as torch's.
    A collective over the world (``Communicator::split``): every rank must call it, members or
    not; non-members get a group they cannot use (get_rank(group) == -1). ``timeout`` is not
    supported per group (the world's applies)."""
    world = _default()
    if use_local_synchronization:
        raise ValueError("use_local_synchronization=True is not supported: every rank of the world calls new_group")
    n = world.size()
    members = sorted(set(range(n) if ranks is None else (int(r) for r in ranks)))
    bad = [r for r in members if not 0 <= r < n]
    if bad:
        raise ValueError(f"new_group: ranks {bad} are out of range for a world of {n}")
    if ranks is not None and len(members) != len(list(ranks)):
        raise ValueError(f"new_group: ranks {list(ranks)} has duplicates")
    me = world._comm.rank()
    comm = world._comm.split(0 if me in members else None, me)
    pg = ProcessGroup(comm, members) if comm is not None else ProcessGroup(None, members)
    _groups.append(pg)
    return pg


# Collectives.

def _all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op=False):
    """Reduces ``tensor`` over the group, in place: every rank ends with the same result.

    (``tutti.all_reduce`` is the binding's ``_tutti.all_reduce``, which calls the world's
    communicator directly for the common case, saving the Python frame on the 8-byte path,
    and comes here for everything else: a group, an op by name or torch's.)"""
    comm = _world_comm if group is None else None
    if comm is None:
        comm = _resolve(group)._comm
    code = _OP_CODES.get(op) if type(op) is ReduceOp else None
    return comm.all_reduce(tensor, _op(op if op is not None else ReduceOp.SUM) if code is None else code, async_op)


all_reduce = _tutti.all_reduce


def broadcast(tensor, src=None, group=None, async_op=False, group_src=None):
    """Copies ``src``'s tensor into every rank's ``tensor``, in place."""
    pg = _resolve(group)
    return pg._comm.broadcast(tensor, _group_rank(pg, src, group_src, "src"), async_op)


def reduce(tensor, dst=None, op=ReduceOp.SUM, group=None, async_op=False, group_dst=None):
    """Reduces every rank's ``tensor`` into ``dst``'s, in place; the others' are unchanged."""
    pg = _resolve(group)
    return pg._comm.reduce(tensor, _group_rank(pg, dst, group_dst, "dst"), _op(op), async_op)


def all_gather(tensor_list, tensor, group=None, async_op=False):
    """``tensor_list[r]`` receives rank r's ``tensor`` (gathered in one buffer, then copied
    into the list; :func:`all_gather_into_tensor` writes in place)."""
    return _resolve(group)._comm.all_gather_list(tensor_list, tensor, async_op)


def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op=False):
    """Rank r's ``input_tensor`` lands at block r of ``output_tensor`` (``size`` blocks), in
    place; ``input_tensor`` may be this rank's block of ``output_tensor``."""
    return _resolve(group)._comm.all_gather_into(output_tensor, input_tensor, async_op)


def gather(tensor, gather_list=None, dst=None, group=None, async_op=False, group_dst=None):
    """``dst``'s ``gather_list[r]`` receives rank r's ``tensor``."""
    pg = _resolve(group)
    root = _group_rank(pg, dst, group_dst, "dst")
    if pg._comm.rank() == root:
        if gather_list is None:
            raise ValueError("gather: the destination rank must pass gather_list")
    elif gather_list:
        raise ValueError("gather: gather_list must not be given on ranks other than the destination")
    else:
        gather_list = None
    return pg._comm.gather(tensor, gather_list, root, async_op)


def scatter(tensor, scatter_list=None, src=None, group=None, async_op=False, group_src=None):
    """Rank r's ``tensor`` receives ``src``'s ``scatter_list[r]``."""
    pg = _resolve(group)
    root = _group_rank(pg, src, group_src, "src")
    if pg._comm.rank() == root:
        if scatter_list is None:
            raise ValueError("scatter: the source rank must pass scatter_list")
    elif scatter_list:
        raise ValueError("scatter: scatter_list must not be given on ranks other than the source")
    else:
        scatter_list = None
    return pg._comm.scatter(tensor, scatter_list, root, async_op)


def reduce_scatter(output, input_list, op=ReduceOp.SUM, group=None, async_op=False):
    """Reduces ``input_list[r]`` over the group into rank r's ``output``."""
    return _resolve(group)._comm.reduce_scatter_list(output, input_list, _op(op), async_op)


def reduce_scatter_tensor(output, input, op=ReduceOp.SUM, group=None, async_op=False):
    """Reduces ``input`` (``size`` blocks) over the group; rank r's ``output`` receives block
    r of the result, in place."""
    return _resolve(group)._comm.reduce_scatter_into(output, input, _op(op), async_op)


def all_to_all(output_tensor_list, input_tensor_list, group=None, async_op=False):
    """Rank j's ``output_tensor_list[i]`` receives rank i's ``input_tensor_list[j]`` (sizes
    may differ per pair)."""
    return _resolve(group)._comm.all_to_all_list(output_tensor_list, input_tensor_list, async_op)


def all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None,
                      group=None, async_op=False):
    """All-to-all on single tensors, in place; split sizes count rows of the first dimension
    (equal blocks when None)."""
    return _resolve(group)._comm.all_to_all_single(
        output, input,
        None if output_split_sizes is None else [int(s) for s in output_split_sizes],
        None if input_split_sizes is None else [int(s) for s in input_split_sizes],
        async_op,
    )


def barrier(group=None, async_op=False, device_ids=None):
    """Returns once every rank of the group has entered the barrier."""
    return _resolve(group)._comm.barrier(async_op)


# Point to point.

def send(tensor, dst=None, group=None, tag=0, group_dst=None):
    """Sends ``tensor`` to ``dst`` (blocking, from the array's own memory)."""
    pg = _resolve(group)
    pg._comm.send(tensor, _group_rank(pg, dst, group_dst, "dst"), int(tag))


def recv(tensor, src=None, group=None, tag=0, group_src=None):
    """Receives into ``tensor`` (which must have the sent size and type) from ``src``, or from
    any rank if both ``src`` and ``group_src`` are None; returns the sender's global rank."""
    pg = _resolve(group)
    root = None if src is None and group_src is None else _group_rank(pg, src, group_src, "src")
    sender = pg._comm.recv(tensor, root, int(tag))
    return pg._ranks[sender]


def isend(tensor, dst=None, group=None, tag=0, group_dst=None):
    """Starts sending ``tensor`` to ``dst``; returns a :class:`Work`. The array is copied
    when the call is made, so it may be reused at once."""
    pg = _resolve(group)
    return pg._comm.isend(tensor, _group_rank(pg, dst, group_dst, "dst"), int(tag))


def irecv(tensor, src=None, group=None, tag=0, group_src=None):
    """Posts a receive into ``tensor`` from ``src``; returns a :class:`Work`. ``tensor`` is
    filled when ``wait()`` (or a true ``is_completed()``) returns."""
    pg = _resolve(group)
    if src is None and group_src is None:
        raise ValueError("irecv: src is required (receives from any rank are blocking: use recv(tensor))")
    return pg._comm.irecv(tensor, _group_rank(pg, src, group_src, "src"), int(tag))


GroupMember.NON_GROUP_MEMBER = _not_member_group()


# Ray-style objects (crates/tutti/src/comm/objects.rs).

class ObjectRef:
    """A reference to an array kept by rank ``owner`` (:func:`put`): small and picklable, to be
    sent to any rank, where :func:`get` fetches the array from its owner."""

    __slots__ = ("owner", "id", "dtype", "shape")

    def __init__(self, owner, id, dtype, shape):
        self.owner, self.id, self.dtype, self.shape = int(owner), int(id), str(dtype), tuple(shape)

    def __reduce__(self):
        return (ObjectRef, (self.owner, self.id, self.dtype, self.shape))

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and (self.owner, self.id) == (other.owner, other.id)

    def __hash__(self):
        return hash((self.owner, self.id))

    def __repr__(self):
        return f"<tutti.ObjectRef owner={self.owner} id={self.id} {self.dtype}{list(self.shape)}>"


def put(array):
    """Keeps a copy of ``array`` (a numpy array, or anything ``numpy.asarray`` takes) on this
    rank and returns an :class:`ObjectRef`. The copy lives until this rank calls
    :func:`free` on it or leaves the group; a service thread of this process answers other
    ranks' :func:`get` meanwhile, whatever the application is doing."""
    import numpy as np

    a = np.ascontiguousarray(array)
    if a.dtype.hasobject:
        raise TypeError("put: an array of Python objects has no bytes to share; pass a numeric array")
    # Kept as bytes: the reference carries the dtype and shape.
    owner, oid = _default()._comm.put(a.reshape(-1).view(np.uint8))
    return ObjectRef(owner, oid, a.dtype.str, a.shape)


def get(ref):
    """The array of ``ref``, fetched from its owner (a copy, writable); on the owner, a copy
    of its own. Raises :class:`InvalidArgumentError` if the owner has freed it,
    :class:`PeerLostError` if the owner has left, :class:`TimeoutError` if it does not answer
    within the timeout."""
    import numpy as np

    if not isinstance(ref, ObjectRef):
        raise TypeError(f"get: expected a tutti.ObjectRef (from tutti.put), not {type(ref).__name__}")
    data = _default()._comm.get(ref.owner, ref.id)
    return np.frombuffer(bytearray(data), dtype=np.dtype(ref.dtype)).reshape(ref.shape)


def free(ref):
    """Frees this rank's object ``ref``: later gets of it, on any rank, raise an error."""
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"free: expected a tutti.ObjectRef (from tutti.put), not {type(ref).__name__}")
    _default()._comm.free(ref.owner, ref.id)
