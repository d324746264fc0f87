"""``from tutti import MPI``: a facade for code written against mpi4py's API, on tutti.

    from tutti import MPI            # instead of: from mpi4py import MPI
    comm = MPI.COMM_WORLD
    x = np.full(4, comm.rank, dtype=np.float64)
    comm.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
    total = comm.allreduce(comm.rank)            # Python objects, pickled

Run with ``python -m tutti.launch -n 4 script.py`` (or alone: a world of one). Importing this
module forms the world (``tutti.init_process_group()``), as importing mpi4py's MPI initializes
MPI; ``tutti.*`` calls may be mixed with it.

What it covers: ``COMM_WORLD`` (``Get_rank``/``Get_size``/``rank``/``size``), ``Barrier``,
``Send``/``Recv``/``Isend``/``Irecv``/``Sendrecv`` (and ``Probe``/``Iprobe``), ``Bcast``,
``Reduce``, ``Allreduce``, ``Gather``, ``Allgather``, ``Scatter``, ``Reduce_scatter``,
``Reduce_scatter_block``, ``Alltoall``, ``Split``, ``Dup``, ``Free``, with mpi4py's keyword
names; numpy arrays (or any buffer) alone or as buffer specifications (``[a, MPI.FLOAT]``,
``[a, count, MPI.DOUBLE]``) and ``MPI.IN_PLACE``; ``SUM/PROD/MIN/MAX`` (and ``BAND/BOR/BXOR``
on integers); the lower-case calls on picklable objects (``send``, ``recv``, ``isend``,
``irecv``, ``sendrecv``, ``bcast``, ``reduce``, ``allreduce``, ``gather``, ``allgather``,
``scatter``, ``alltoall``, ``barrier``; a lower-case reduce also takes any two-argument
callable); ``Status``, ``ANY_SOURCE``/``ANY_TAG``, ``PROC_NULL``, ``UNDEFINED``, ``Wtime``,
``Get_version``, ``Get_library_version``, ``get_vendor``, ``Comm``/``Intracomm``. Anything else
of mpi4py's raises ``NotImplementedError`` naming it (an ``AttributeError`` too, so
``hasattr`` says False).

How: collectives run the library's collectives in the arrays' own memory (data movement as
bytes, so any dtype moves; reductions need a tutti dtype). Point-to-point messages carry their
MPI tag and kind in a 9-byte header on one library tag of the communicator, and the facade
matches them MPI's way (by source and tag, ``ANY_*`` included, in arrival order per source;
a message that matches no posted receive waits in a queue), so a message costs one copy on
each side. A send is eager: it returns once the library holds the message (it blocks only
while the receiver holds a window of unreceived messages), so ``Isend`` completes at once and
``Irecv`` is matched when it is waited or tested. Every wait is bounded by the group's timeout
(``TUTTI_TIMEOUT``); errors are ``tutti.Error`` subclasses (``MPI.Exception`` is
``tutti.Error``).
"""

import functools as _functools
import operator as _operator
import pickle as _pickle
import struct as _struct
import time as _time

import numpy as _np

import tutti as _t

from ._errors import Error as Exception  # noqa: A001  (mpi4py's name)
from ._errors import MismatchError as _MismatchError
from ._errors import TimeoutError as _TimeoutError


class _Unsupported(NotImplementedError, AttributeError):
    """What the facade cannot do (an AttributeError too, so hasattr() says False)."""


def _unsupported(name):
    return _Unsupported(f"tutti.MPI: {name} is not implemented by tutti's mpi4py facade")


# Constants (mpi4py's values where code may compare them).
ANY_SOURCE = -1
ANY_TAG = -1
PROC_NULL = -2
UNDEFINED = -32766
SUCCESS = 0
THREAD_SINGLE, THREAD_FUNNELED, THREAD_SERIALIZED, THREAD_MULTIPLE = 0, 1, 2, 3
TAG_UB = (1 << 31) - 1


class _InPlace:
    def __repr__(self):
        return "MPI.IN_PLACE"


IN_PLACE = _InPlace()

# Library tags of the facade's messages (user tags travel in the header).
_P2P_TAG = 0x7FFF_FFF1
_OBJ_TAG = 0x7FFF_FFF2
_HEADER = _struct.Struct("<qB")  # MPI tag, kind
_RAW, _PICKLED = 0, 1


class Datatype:
    """An MPI datatype: a numpy dtype by its MPI name."""

    def __init__(self, name, dtype):
        self.name, self.dtype = name, _np.dtype(dtype)

    def Get_size(self):
        return self.dtype.itemsize

    size = property(Get_size)

    def Get_name(self):
        return self.name

    def __repr__(self):
        return f"<MPI.Datatype {self.name}>"

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise _unsupported(f"Datatype.{name}")


_TYPES = {
    "CHAR": "i1", "SIGNED_CHAR": "i1", "UNSIGNED_CHAR": "u1", "BYTE": "u1", "SHORT": "i2",
    "UNSIGNED_SHORT": "u2", "INT": "i4", "UNSIGNED": "u4", "LONG": "i8", "UNSIGNED_LONG": "u8",
    "LONG_LONG": "i8", "UNSIGNED_LONG_LONG": "u8", "FLOAT": "f4", "DOUBLE": "f8",
    "INT8_T": "i1", "INT16_T": "i2", "INT32_T": "i4", "INT64_T": "i8", "UINT8_T": "u1",
    "UINT16_T": "u2", "UINT32_T": "u4", "UINT64_T": "u8", "C_BOOL": "?", "BOOL": "?",
    "C_FLOAT_COMPLEX": "c8", "C_DOUBLE_COMPLEX": "c16", "COMPLEX": "c8", "DOUBLE_COMPLEX": "c16",
    "FLOAT16": "f2",
}
for _name, _code in _TYPES.items():
    globals()[_name] = Datatype(_name, _code)
_BY_DTYPE = {}
for _name in ("BYTE", "INT8_T", "INT16_T", "INT32_T", "INT64_T", "UINT16_T", "UINT32_T",
              "UINT64_T", "FLOAT", "DOUBLE", "C_BOOL", "C_FLOAT_COMPLEX", "C_DOUBLE_COMPLEX",
              "FLOAT16"):
    _BY_DTYPE.setdefault(globals()[_name].dtype, globals()[_name])


class Op:
    """A reduction operator: the library's for buffers, a Python function for objects."""

    def __init__(self, name, code, pyfunc):
        self.name, self._code, self._py = name, code, pyfunc

    def __call__(self, a, b):
        return self._py(a, b)

    def __repr__(self):
        return f"<MPI.Op {self.name}>"

    @staticmethod
    def Create(function, commute=False):
        raise _unsupported("Op.Create (user-defined reductions on buffers)")

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise _unsupported(f"Op.{name}")


SUM = Op("SUM", _t.ReduceOp.SUM, _operator.add)
PROD = Op("PROD", _t.ReduceOp.PRODUCT, _operator.mul)
MIN = Op("MIN", _t.ReduceOp.MIN, min)
MAX = Op("MAX", _t.ReduceOp.MAX, max)
BAND = Op("BAND", _t.ReduceOp.BAND, _operator.and_)
BOR = Op("BOR", _t.ReduceOp.BOR, _operator.or_)
BXOR = Op("BXOR", _t.ReduceOp.BXOR, _operator.xor)
LAND = Op("LAND", None, lambda a, b: a and b)
LOR = Op("LOR", None, lambda a, b: a or b)
LXOR = Op("LXOR", None, lambda a, b: bool(a) != bool(b))
MAXLOC = Op("MAXLOC", None, max)
MINLOC = Op("MINLOC", None, min)


def _buffer_op(op, call):
    if not isinstance(op, Op):
        raise TypeError(f"tutti.MPI: {call}: op must be an MPI.Op (MPI.SUM, ...), not {op!r}")
    if op._code is None:
        raise _unsupported(f"{call} with op=MPI.{op.name} on buffers")
    return int(op._code)


def _py_op(op):
    if isinstance(op, Op):
        return op._py
    if callable(op):
        return op
    raise TypeError(f"tutti.MPI: op must be an MPI.Op or a function of two objects, not {op!r}")


class Status:
    """What a receive or probe matched: ``source``, ``tag``, ``error`` and the message's size
    (``Get_count(datatype)`` elements)."""

    def __init__(self):
        self.source, self.tag, self.error, self._bytes = ANY_SOURCE, ANY_TAG, SUCCESS, 0

    def _fill(self, source, tag, nbytes):
        self.source, self.tag, self._bytes = source, tag, nbytes

    def Get_source(self):
        return self.source

    def Get_tag(self):
        return self.tag

    def Get_error(self):
        return self.error

    def Get_count(self, datatype=None):
        size = 1 if datatype is None else datatype.Get_size()
        return self._bytes // size if self._bytes % size == 0 else UNDEFINED

    Get_elements = Get_count

    def Set_source(self, source):
        self.source = source

    def Set_tag(self, tag):
        self.tag = tag

    def Set_error(self, error):
        self.error = error

    @property
    def count(self):
        return self._bytes

    def __repr__(self):
        return f"<MPI.Status source={self.source} tag={self.tag} bytes={self._bytes}>"


def _array(obj, what):
    """A flat, C-contiguous numpy view of ``obj``'s memory (which must be contiguous)."""
    a = obj if isinstance(obj, _np.ndarray) else _np.frombuffer(obj, dtype=_np.uint8)
    if not a.flags.c_contiguous:
        raise ValueError(f"tutti.MPI: {what} is not C-contiguous; pass np.ascontiguousarray(...)")
    return a.reshape(-1)


def _buf(spec, what):
    """The flat numpy view a buffer specification names: an array (or any buffer), or
    ``[buf, datatype]``, ``[buf, count, datatype]``, ``[buf, (count, displ), datatype]``."""
    if isinstance(spec, (list, tuple)):
        if len(spec) == 2:
            obj, count, dt = spec[0], None, spec[1]
        elif len(spec) == 3:
            obj, count, dt = spec
        else:
            raise _unsupported(f"{what} as a buffer specification of {len(spec)} items (vector variants)")
        a = _array(obj, what)
        displ = 0
        if isinstance(count, (list, tuple)):
            if len(count) != 2:
                raise _unsupported(f"{what} with counts and displacements per rank (vector variants)")
            count, displ = count
        if dt is not None:
            if not isinstance(dt, Datatype):
                raise TypeError(f"tutti.MPI: {what}: {dt!r} is not an MPI datatype")
            if a.nbytes % dt.dtype.itemsize:
                raise ValueError(f"tutti.MPI: {what} holds {a.nbytes} bytes, not a whole number of {dt.name}")
            a = a.view(_np.uint8).view(dt.dtype)
        if count is not None:
            count, displ = int(count), int(displ)
            if displ < 0 or count < 0 or displ + count > a.size:
                raise ValueError(f"tutti.MPI: {what}: count {count} at displacement {displ} exceeds its {a.size} elements")
            a = a[displ:displ + count]
        return a
    if spec is None:
        raise ValueError(f"tutti.MPI: {what} is None; pass an array")
    return _array(spec, what)


def _bytes_of(a):
    return a.view(_np.uint8) if a.size else _np.empty(0, _np.uint8)


def _blocks(a, n, what):
    if a.size % n:
        raise ValueError(f"tutti.MPI: {what} has {a.size} elements, which do not split into {n} equal blocks")
    return [a[i * (a.size // n):(i + 1) * (a.size // n)] for i in range(n)]


class Request:
    """A non-blocking call's handle: ``Wait``/``Test`` (and lower-case ``wait``/``test``,
    which return the received object)."""

    def __init__(self, comm=None, kind=None, buf=None, source=None, tag=None, done=True):
        self._comm, self._kind, self._buf = comm, kind, buf
        self._source, self._tag = source, tag
        self._done, self._value, self._status = done, None, (None, None, 0)

    def _deliver(self, source, tag, kind, payload):
        """Takes a matched message (the facade calls it in posting order)."""
        if kind != self._kind:
            raise _MismatchError(
                f"tutti.MPI: rank {source} sent {'an object (send)' if kind == _PICKLED else 'a buffer (Send)'} "
                f"with tag {tag}; this rank receives {'an object (recv)' if self._kind == _PICKLED else 'a buffer (Recv)'}")
        if kind == _PICKLED:
            self._value = _pickle.loads(payload)
        elif self._buf is not None:
            dst = _bytes_of(self._buf)
            if len(payload) > dst.size:
                raise _MismatchError(
                    f"tutti.MPI: Recv on rank {self._comm.rank}: rank {source} sent {len(payload)} bytes "
                    f"with tag {tag}, more than the receive buffer's {dst.size} (message truncated)")
            dst[:len(payload)] = _np.frombuffer(payload, dtype=_np.uint8)
        self._status = (source, tag, len(payload))
        self._done = True

    def _finish(self, status):
        if status is not None:
            status._fill(*self._status)
        return self._value

    def Wait(self, status=None):
        if not self._done:
            self._comm._wait(self)
        self._finish(status)
        return True

    def Test(self, status=None):
        if not self._done:
            self._comm._poll()
        if self._done:
            self._finish(status)
        return self._done

    def wait(self, status=None):
        self.Wait(status)
        return self._finish(status)

    def test(self, status=None):
        done = self.Test(status)
        return done, (self._value if done else None)

    def Free(self):
        pass

    def Cancel(self):
        raise _unsupported("Request.Cancel")

    @staticmethod
    def Waitall(requests, statuses=None):
        for i, r in enumerate(requests):
            r.Wait(None if statuses is None else statuses[i])
        return True

    @staticmethod
    def waitall(requests, statuses=None):
        return [r.wait(None if statuses is None else statuses[i]) for i, r in enumerate(requests)]

    @staticmethod
    def Testall(requests, statuses=None):
        return all([r.Test() for r in requests])

    @staticmethod
    def Waitany(requests, status=None):
        deadline = _time.monotonic() + COMM_WORLD._inner().timeout()
        while _time.monotonic() < deadline:
            for i, r in enumerate(requests):
                if r.Test(status):
                    return i
            _time.sleep(0.0005)
        raise _TimeoutError("tutti.MPI: Request.Waitany: no request completed within the timeout")


class Comm:
    """A communicator (mpi4py's ``MPI.Comm``); :class:`Intracomm` is the kind every
    communicator of the facade is."""

    def __init__(self, inner=None):
        self._c = inner
        self._unexpected = []  # (source, tag, kind, payload), in arrival order
        self._posted = []  # receive requests not yet matched, in posting order

    # Identity.
    def _inner(self):
        if self._c is None:
            raise Exception("tutti.MPI: this communicator is MPI.COMM_NULL (or freed)")
        return self._c

    def Get_rank(self):
        return self._inner().rank()

    def Get_size(self):
        return self._inner().size()

    rank = property(Get_rank)
    size = property(Get_size)

    def Is_inter(self):
        return False

    def Is_intra(self):
        return True

    def __eq__(self, other):
        return isinstance(other, Comm) and self._c is other._c

    def __hash__(self):
        return id(self._c)

    def __bool__(self):
        return self._c is not None

    def __repr__(self):
        if self._c is None:
            return "<MPI.COMM_NULL>"
        return f"<MPI.Intracomm rank={self.rank} size={self.size}>"

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise _unsupported(f"Comm.{name}")

    # Communicators.
    def Split(self, color=0, key=0):
        """Ranks with the same ``color`` form a new communicator, ordered by ``key`` then rank;
        ``color=MPI.UNDEFINED`` gets ``MPI.COMM_NULL``. Every rank calls it."""
        c = None if color == UNDEFINED else int(color)
        if c is not None and c < 0:
            raise ValueError(f"tutti.MPI: Split: color {color} must be >= 0 or MPI.UNDEFINED")
        new = self._inner().split(c, int(key))
        return Intracomm(new) if new is not None else COMM_NULL

    def Dup(self):
        return self.Split(0, self.rank)

    Clone = Dup

    def Free(self):
        if self is COMM_WORLD:
            raise Exception("tutti.MPI: Free of MPI.COMM_WORLD is not allowed")
        if self._c is not None:
            self._c.destroy()
        self._c = None

    def Abort(self, errorcode=0):
        import os
        import sys

        print(f"tutti.MPI: Abort({errorcode}) on rank {self.rank}", file=sys.stderr, flush=True)
        os._exit(int(errorcode) or 1)

    # Collectives on buffers.
    def Barrier(self):
        self._inner().barrier(False)

    barrier = Barrier

    def Bcast(self, buf, root=0):
        self._inner().broadcast(_bytes_of(_buf(buf, "buf")), int(root), False)

    def Reduce(self, sendbuf, recvbuf, op=SUM, root=0):
        c = self._inner()
        code = _buffer_op(op, "Reduce")
        if c.rank() == root:
            r = _buf(recvbuf, "recvbuf")
            if sendbuf is not IN_PLACE:
                _copy(r, _buf(sendbuf, "sendbuf"), "Reduce")
        else:
            if sendbuf is IN_PLACE:
                raise ValueError("tutti.MPI: Reduce: MPI.IN_PLACE is for the root's sendbuf only")
            r = _buf(sendbuf, "sendbuf").copy()
        c.reduce(r, int(root), code, False)

    def Allreduce(self, sendbuf, recvbuf, op=SUM):
        r = _buf(recvbuf, "recvbuf")
        if sendbuf is not IN_PLACE:
            _copy(r, _buf(sendbuf, "sendbuf"), "Allreduce")
        self._inner().all_reduce(r, _buffer_op(op, "Allreduce"), False)

    def Gather(self, sendbuf, recvbuf, root=0):
        c = self._inner()
        n = c.size()
        if c.rank() == root:
            blocks = _blocks(_bytes_of(_buf(recvbuf, "recvbuf")), n, "recvbuf")
            s = blocks[root].copy() if sendbuf is IN_PLACE else _bytes_of(_buf(sendbuf, "sendbuf"))
            c.gather(s, blocks, int(root), False)
        else:
            c.gather(_bytes_of(_buf(sendbuf, "sendbuf")), None, int(root), False)

    def Allgather(self, sendbuf, recvbuf):
        c = self._inner()
        r = _bytes_of(_buf(recvbuf, "recvbuf"))
        if sendbuf is IN_PLACE:
            s = _blocks(r, c.size(), "recvbuf")[c.rank()]
        else:
            s = _bytes_of(_buf(sendbuf, "sendbuf"))
        c.all_gather_into(r, s, False)

    def Scatter(self, sendbuf, recvbuf, root=0):
        c = self._inner()
        n = c.size()
        if c.rank() == root:
            blocks = _blocks(_bytes_of(_buf(sendbuf, "sendbuf")), n, "sendbuf")
            r = blocks[root].copy() if recvbuf is IN_PLACE else _bytes_of(_buf(recvbuf, "recvbuf"))
            c.scatter(r, blocks, int(root), False)
        else:
            c.scatter(_bytes_of(_buf(recvbuf, "recvbuf")), None, int(root), False)

    def Reduce_scatter_block(self, sendbuf, recvbuf, op=SUM):
        c = self._inner()
        code = _buffer_op(op, "Reduce_scatter_block")
        r = _buf(recvbuf, "recvbuf")
        if sendbuf is IN_PLACE:
            s = r.copy()
            r = _blocks(r, c.size(), "recvbuf")[0]
        else:
            s = _buf(sendbuf, "sendbuf")
        c.reduce_scatter_into(r, s, code, False)

    def Reduce_scatter(self, sendbuf, recvbuf, recvcounts=None, op=SUM):
        c = self._inner()
        n = c.size()
        if recvcounts is None or len(set(int(x) for x in recvcounts)) <= 1:
            if recvcounts is not None and len(recvcounts) != n:
                raise ValueError(f"tutti.MPI: Reduce_scatter: recvcounts has {len(recvcounts)} entries for {n} ranks")
            return self.Reduce_scatter_block(sendbuf, recvbuf, op)
        counts = [int(x) for x in recvcounts]
        if len(counts) != n:
            raise ValueError(f"tutti.MPI: Reduce_scatter: recvcounts has {len(counts)} entries for {n} ranks")
        r = _buf(recvbuf, "recvbuf")
        s = (r if sendbuf is IN_PLACE else _buf(sendbuf, "sendbuf"))[:sum(counts)].copy()
        c.all_reduce(s, _buffer_op(op, "Reduce_scatter"), False)
        at = sum(counts[:c.rank()])
        r[:counts[c.rank()]] = s[at:at + counts[c.rank()]]

    def Alltoall(self, sendbuf, recvbuf):
        c = self._inner()
        r = _bytes_of(_buf(recvbuf, "recvbuf"))
        s = r.copy() if sendbuf is IN_PLACE else _bytes_of(_buf(sendbuf, "sendbuf"))
        c.all_to_all_single(r, s, None, None, False)

    # Point to point.
    def _post(self, kind, buf, source, tag):
        req = Request(self, kind, buf, int(source), int(tag), done=False)
        if source == PROC_NULL:
            req._done, req._status = True, (PROC_NULL, ANY_TAG, 0)
            return req
        for i, (src, t, k, payload) in enumerate(self._unexpected):
            if _matches(req, src, t):
                del self._unexpected[i]
                req._deliver(src, t, k, payload)
                return req
        self._posted.append(req)
        return req

    def _arrived(self, data, src):
        """Files a message that has arrived: to the first posted receive it matches, else to
        the unexpected queue."""
        tag, kind = _HEADER.unpack_from(data)
        payload = memoryview(data)[_HEADER.size:]
        for i, req in enumerate(self._posted):
            if _matches(req, src, tag):
                del self._posted[i]
                req._deliver(src, tag, kind, payload)
                return
        self._unexpected.append((src, tag, kind, bytes(payload)))

    def _wait(self, req):
        c = self._inner()
        deadline = _time.monotonic() + c.timeout()
        while not req._done:
            if _time.monotonic() > deadline:
                raise _TimeoutError(
                    f"tutti.MPI: a receive on rank {c.rank()} from "
                    f"{'any rank' if req._source == ANY_SOURCE else f'rank {req._source}'} with "
                    f"{'any tag' if req._tag == ANY_TAG else f'tag {req._tag}'}: no matching message within {c.timeout():.0f} s")
            src = None if req._source == ANY_SOURCE else req._source
            data, sender = c.recv_bytes(src, _P2P_TAG)
            self._arrived(data, sender)

    def _poll(self):
        """Files every message that has already arrived (never blocks)."""
        c = self._inner()
        for _ in range(1 << 16):
            if c.iprobe(None, _P2P_TAG) is None:
                return
            data, sender = c.recv_bytes(None, _P2P_TAG)
            self._arrived(data, sender)

    def _send(self, kind, payload, dest, tag):
        if dest == PROC_NULL:
            return
        tag = int(tag)
        if tag < 0:
            raise ValueError(f"tutti.MPI: a send's tag must be >= 0, not {tag}")
        body = payload if isinstance(payload, _np.ndarray) else _np.frombuffer(payload, _np.uint8)
        msg = _np.empty(_HEADER.size + body.size, _np.uint8)
        _HEADER.pack_into(msg, 0, tag, kind)
        msg[_HEADER.size:] = body
        self._inner().send(msg, int(dest), _P2P_TAG)

    def Send(self, buf, dest, tag=0):
        self._send(_RAW, _bytes_of(_buf(buf, "buf")), dest, tag)

    Ssend = Rsend = Bsend = Send

    def Recv(self, buf, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        self._post(_RAW, _buf(buf, "buf"), source, tag).Wait(status)

    def Isend(self, buf, dest, tag=0):
        self.Send(buf, dest, tag)
        return Request()

    Issend = Irsend = Ibsend = Isend

    def Irecv(self, buf, source=ANY_SOURCE, tag=ANY_TAG):
        return self._post(_RAW, _buf(buf, "buf"), source, tag)

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=ANY_SOURCE, recvtag=ANY_TAG,
                 status=None):
        self.Send(sendbuf, dest, sendtag)
        self.Recv(recvbuf, source, recvtag, status)

    def Probe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        c = self._inner()
        deadline = _time.monotonic() + c.timeout()
        while not self.Iprobe(source, tag, status):
            if _time.monotonic() > deadline:
                raise _TimeoutError(f"tutti.MPI: Probe on rank {c.rank()}: no matching message within {c.timeout():.0f} s")
            _time.sleep(0.0002)
        return True

    def Iprobe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        self._poll()
        probe = Request(None, None, None, int(source), int(tag))
        for src, t, _, payload in self._unexpected:
            if _matches(probe, src, t):
                if status is not None:
                    status._fill(src, t, len(payload))
                return True
        return False

    probe, iprobe = Probe, Iprobe

    # Point to point on Python objects.
    def send(self, obj, dest, tag=0):
        self._send(_PICKLED, _pickle.dumps(obj, _pickle.HIGHEST_PROTOCOL), dest, tag)

    ssend = send

    def recv(self, buf=None, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        return self._post(_PICKLED, None, source, tag).wait(status)

    def isend(self, obj, dest, tag=0):
        self.send(obj, dest, tag)
        return Request()

    issend = isend

    def irecv(self, buf=None, source=ANY_SOURCE, tag=ANY_TAG):
        return self._post(_PICKLED, None, source, tag)

    def sendrecv(self, sendobj, dest, sendtag=0, recvbuf=None, source=ANY_SOURCE, recvtag=ANY_TAG,
                 status=None):
        self.send(sendobj, dest, sendtag)
        return self.recv(None, source, recvtag, status)

    # Collectives on Python objects.
    def bcast(self, obj=None, root=0):
        c = self._inner()
        data = _pickle.dumps(obj, _pickle.HIGHEST_PROTOCOL) if c.rank() == root else b""
        n = _np.array([len(data)], dtype=_np.int64)
        c.broadcast(n, int(root), False)
        buf = _np.frombuffer(bytearray(data), _np.uint8) if c.rank() == root else _np.empty(int(n[0]), _np.uint8)
        c.broadcast(buf, int(root), False)
        return obj if c.rank() == root else _pickle.loads(buf.tobytes())

    def gather(self, sendobj, root=0):
        c = self._inner()
        data = _pickle.dumps(sendobj, _pickle.HIGHEST_PROTOCOL)
        if c.rank() != root:
            c.send(data, int(root), _OBJ_TAG)
            return None
        out = []
        for r in range(c.size()):
            out.append(sendobj if r == root else _pickle.loads(c.recv_bytes(r, _OBJ_TAG)[0]))
        return out

    def scatter(self, sendobj, root=0):
        c = self._inner()
        if c.rank() == root:
            items = list(sendobj) if sendobj is not None else None
            if items is None or len(items) != c.size():
                raise ValueError(f"tutti.MPI: scatter: the root passes one object per rank ({c.size()})")
            for r, item in enumerate(items):
                if r != root:
                    c.send(_pickle.dumps(item, _pickle.HIGHEST_PROTOCOL), r, _OBJ_TAG)
            return items[root]
        return _pickle.loads(c.recv_bytes(int(root), _OBJ_TAG)[0])

    def allgather(self, sendobj):
        c = self._inner()
        data = _pickle.dumps(sendobj, _pickle.HIGHEST_PROTOCOL)
        n = c.size()
        lens = _np.zeros(n, _np.int64)
        c.all_gather_into(lens, _np.array([len(data)], _np.int64), False)
        width = int(lens.max())
        blocks = _np.zeros(n * width, _np.uint8)
        mine = _np.zeros(width, _np.uint8)
        mine[:len(data)] = _np.frombuffer(data, _np.uint8)
        c.all_gather_into(blocks, mine, False)
        return [_pickle.loads(blocks[r * width:r * width + int(lens[r])].tobytes()) for r in range(n)]

    def alltoall(self, sendobj):
        c = self._inner()
        items = list(sendobj)
        if len(items) != c.size():
            raise ValueError(f"tutti.MPI: alltoall: pass one object per rank ({c.size()}), not {len(items)}")
        for r, item in enumerate(items):
            if r != c.rank():
                c.send(_pickle.dumps(item, _pickle.HIGHEST_PROTOCOL), r, _OBJ_TAG)
        return [items[r] if r == c.rank() else _pickle.loads(c.recv_bytes(r, _OBJ_TAG)[0])
                for r in range(c.size())]

    def reduce(self, sendobj, op=SUM, root=0):
        f = _py_op(op)
        items = self.gather(sendobj, root)
        return None if items is None else _functools.reduce(f, items)

    def allreduce(self, sendobj, op=SUM):
        f = _py_op(op)
        return _functools.reduce(f, self.allgather(sendobj))


class Intracomm(Comm):
    """An intra-communicator: COMM_WORLD and what Split/Dup make."""


def _matches(req, src, tag):
    return (req._source in (ANY_SOURCE, src)) and (req._tag in (ANY_TAG, tag))


def _copy(dst, src, call):
    if dst.nbytes != src.nbytes or dst.dtype != src.dtype:
        raise ValueError(
            f"tutti.MPI: {call}: sendbuf ({src.size} x {src.dtype}) and recvbuf ({dst.size} x "
            f"{dst.dtype}) differ; pass buffers of one type and size")
    _np.copyto(dst, src)


# Environment.
def Wtime():
    return _time.perf_counter()


def Wtick():
    return 1e-9


def Get_version():
    return (3, 1)


def Get_library_version():
    import importlib.metadata

    try:
        v = importlib.metadata.version("tutti")
    except importlib.metadata.PackageNotFoundError:
        v = "0"
    return f"tutti {v} (mpi4py facade: tutti.MPI)"


def get_vendor():
    return ("tutti", (0, 1, 0))


def Get_processor_name():
    import socket

    return socket.gethostname()


def Is_initialized():
    return _t.is_initialized()


def Is_finalized():
    return not _t.is_initialized()


def Init():
    pass


def Init_thread(required=THREAD_MULTIPLE):
    return THREAD_MULTIPLE


def Query_thread():
    return THREAD_MULTIPLE


def Finalize():
    if _t.is_initialized():
        _t.destroy_process_group()
    COMM_WORLD._c = None


def __getattr__(name):
    if name.startswith("_"):
        raise AttributeError(name)
    raise _unsupported(f"MPI.{name}")


if not _t.is_initialized():
    _t.init_process_group()
COMM_WORLD = Intracomm(_t._world_comm)
COMM_NULL = Comm(None)
