"""Every collective and point-to-point call on every numpy dtype, against numpy references.

Run under the launcher (``python -m tutti.launch -n N cases.py [--only PREFIX]``): each rank runs
every case and prints one line ``RESULT <case> OK`` or ``RESULT <case> FAIL <why>``;
test_collectives.py collects the lines of every rank and turns each case into a pytest item.
Importing this module (for the case names) runs nothing.

Every rank can compute every rank's input (seeded by case, rank and size), hence the
reference result. Inputs are small whole numbers for the float types, so that sums and
products are exact in any order (bit-exact comparisons, f16 included); integers use their
whole range (sums wrap, as in the library). Outputs are views into a larger array whose
first and last elements are guards: the result must land in the view's own memory, and
nowhere else.
"""

import functools
import os
import sys
import traceback
import zlib

import numpy as np

FLOATS = ["float32", "float64", "float16"]
INTS = ["int8", "uint8", "int32", "uint32", "int64", "uint64"]
DTYPES = FLOATS + INTS
SIZES = [0, 1, 7, 1000, 70000]
OPS_FLOAT = ["SUM", "PRODUCT", "MIN", "MAX", "AVG"]
OPS_INT = OPS_FLOAT + ["BAND", "BOR", "BXOR"]
GUARD = 77

FAMILIES = [
    "all_reduce", "all_reduce_async", "broadcast", "reduce", "all_gather",
    "all_gather_into_tensor", "gather", "scatter", "reduce_scatter", "reduce_scatter_tensor",
    "all_to_all", "all_to_all_single", "send_recv", "isend_irecv", "dlpack",
]
# Cases that are not per dtype.
SINGLE = ["barrier", "groups", "async_order", "recv_any_source"]


def case_names():
    return [f"{f}-{d}" for f in FAMILIES for d in DTYPES] + SINGLE


def data(dtype, count, rank, salt, small=False):
    """Rank ``rank``'s input of a case: the same on every rank that computes it."""
    rng = np.random.default_rng([zlib.crc32(repr(salt).encode()), rank, count])
    dt = np.dtype(dtype)
    if dt.kind == "f":
        if small:
            return rng.choice(np.array([-2, -1, 1, 2]), count).astype(dt)
        return rng.integers(-8, 9, count).astype(dt)
    info = np.iinfo(dt)
    if small:
        return rng.integers(max(info.min, -3), 4, count).astype(dt)
    return rng.integers(info.min, info.max, count, endpoint=True, dtype=dt)


def reference(op, arrays, dtype):
    dt = np.dtype(dtype)
    n = len(arrays)
    stack = np.stack(arrays) if arrays[0].size else np.zeros((n, 0), dt)
    with np.errstate(over="ignore"):
        if op == "SUM":
            return functools.reduce(np.add, arrays).astype(dt)
        if op == "PRODUCT":
            return functools.reduce(np.multiply, arrays).astype(dt)
        if op == "MIN":
            return stack.min(axis=0)
        if op == "MAX":
            return stack.max(axis=0)
        if op == "BAND":
            return functools.reduce(np.bitwise_and, arrays)
        if op == "BOR":
            return functools.reduce(np.bitwise_or, arrays)
        if op == "BXOR":
            return functools.reduce(np.bitwise_xor, arrays)
        if op == "AVG":
            s = functools.reduce(np.add, arrays).astype(dt)
            if n == 1:
                return s
            if dt.kind == "f":
                # The library divides in the type itself, f16 in f32.
                if dt == np.float16:
                    return (s.astype(np.float32) / np.float32(n)).astype(dt)
                return s / dt.type(n)
            # Integers: the wrapped sum divided by n, rounded toward zero.
            return ((s - np.fmod(s, dt.type(n))) // dt.type(n)).astype(dt)
    raise ValueError(op)


def guarded(count, dtype, fill=0):
    """(base, view): ``view`` is ``base[1:-1]``, the guards around it hold GUARD."""
    base = np.full(count + 2, GUARD, dtype=dtype)
    view = base[1:count + 1]
    view[...] = fill
    return base, view


def check(name, base, expected):
    view = base[1:-1]
    if base[0] != GUARD or base[-1] != GUARD:
        raise AssertionError(f"{name}: wrote outside the array (guards {base[0]}, {base[-1]})")
    if not np.array_equal(view, expected):
        bad = np.flatnonzero(view != expected)[:5]
        raise AssertionError(
            f"{name}: {len(np.flatnonzero(view != expected))} of {view.size} elements differ, "
            f"first at {list(bad)}: got {view[bad]} want {np.asarray(expected)[bad]}")


def each_size(fn):
    for count in SIZES:
        fn(count)


class Ctx:
    def __init__(self, tutti):
        self.t = tutti
        self.rank = tutti.get_rank()
        self.n = tutti.get_world_size()


def c_all_reduce(c, dtype, async_op=False):
    t = c.t
    ops = OPS_FLOAT if np.dtype(dtype).kind == "f" else OPS_INT
    for op in ops:
        for count in SIZES:
            small = op == "PRODUCT"
            mine = data(dtype, count, c.rank, (op, dtype), small)
            base, view = guarded(count, dtype)
            view[...] = mine
            addr = view.ctypes.data
            w = t.all_reduce(view, op=getattr(t.ReduceOp, op), async_op=async_op)
            if async_op:
                assert w.wait() is True and w.is_completed()
            else:
                assert w is None
            assert view.ctypes.data == addr
            want = reference(op, [data(dtype, count, r, (op, dtype), small) for r in range(c.n)], dtype)
            check(f"all_reduce {op} count {count}", base, want)


def c_broadcast(c, dtype):
    t = c.t
    for count in SIZES:
        for src in sorted({0, c.n - 1}):
            base, view = guarded(count, dtype)
            if c.rank == src:
                view[...] = data(dtype, count, src, "bc")
            t.broadcast(view, src=src)
            check(f"broadcast src {src} count {count}", base, data(dtype, count, src, "bc"))


def c_reduce(c, dtype):
    t = c.t
    dst = c.n // 2
    for op in ["SUM", "MAX"]:
        for count in SIZES:
            mine = data(dtype, count, c.rank, ("r", op))
            base, view = guarded(count, dtype)
            view[...] = mine
            t.reduce(view, dst=dst, op=getattr(t.ReduceOp, op))
            if c.rank == dst:
                want = reference(op, [data(dtype, count, r, ("r", op)) for r in range(c.n)], dtype)
            else:
                want = mine
            check(f"reduce {op} count {count}", base, want)


def c_all_gather(c, dtype):
    t = c.t
    for count in SIZES:
        mine = data(dtype, count, c.rank, "ag")
        outs = [guarded(count, dtype) for _ in range(c.n)]
        t.all_gather([v for _, v in outs], mine)
        for r, (base, _) in enumerate(outs):
            check(f"all_gather count {count} block {r}", base, data(dtype, count, r, "ag"))


def c_all_gather_into_tensor(c, dtype):
    t = c.t
    for count in SIZES:
        want = np.concatenate([data(dtype, count, r, "agt") for r in range(c.n)])
        base, view = guarded(count * c.n, dtype)
        t.all_gather_into_tensor(view, data(dtype, count, c.rank, "agt"))
        check(f"all_gather_into_tensor count {count}", base, want)
        # In place: the input is this rank's block of the output.
        base, view = guarded(count * c.n, dtype)
        block = view[c.rank * count:(c.rank + 1) * count]
        block[...] = data(dtype, count, c.rank, "agt")
        t.all_gather_into_tensor(view, block)
        check(f"all_gather_into_tensor in place count {count}", base, want)
        # 2-d output, as torch's (size * rows, cols).
        if count % 7 == 0 and count:
            out = np.zeros((c.n * 7, count // 7), dtype=dtype)
            t.all_gather_into_tensor(out, data(dtype, count, c.rank, "agt").reshape(7, -1))
            assert np.array_equal(out.ravel(), want)


def c_gather(c, dtype):
    t = c.t
    dst = c.n - 1
    for count in SIZES:
        mine = data(dtype, count, c.rank, "g")
        if c.rank == dst:
            outs = [guarded(count, dtype) for _ in range(c.n)]
            t.gather(mine, gather_list=[v for _, v in outs], dst=dst)
            for r, (base, _) in enumerate(outs):
                check(f"gather count {count} from {r}", base, data(dtype, count, r, "g"))
        else:
            t.gather(mine, dst=dst)


def c_scatter(c, dtype):
    t = c.t
    src = 0
    for count in SIZES:
        base, view = guarded(count, dtype)
        if c.rank == src:
            t.scatter(view, scatter_list=[data(dtype, count, r, "s") for r in range(c.n)], src=src)
        else:
            t.scatter(view, src=src)
        check(f"scatter count {count}", base, data(dtype, count, c.rank, "s"))


def c_reduce_scatter(c, dtype):
    t = c.t
    for count in SIZES:
        ins = [data(dtype, count, c.rank, ("rs", j)) for j in range(c.n)]
        base, view = guarded(count, dtype)
        t.reduce_scatter(view, ins, op=t.ReduceOp.SUM)
        want = reference("SUM", [data(dtype, count, r, ("rs", c.rank)) for r in range(c.n)], dtype)
        check(f"reduce_scatter count {count}", base, want)


def c_reduce_scatter_tensor(c, dtype):
    t = c.t
    for op in ["SUM", "MIN"]:
        for count in SIZES:
            full = [data(dtype, count * c.n, r, ("rst", op)) for r in range(c.n)]
            base, view = guarded(count, dtype)
            t.reduce_scatter_tensor(view, full[c.rank], op=getattr(t.ReduceOp, op))
            want = reference(op, full, dtype)[c.rank * count:(c.rank + 1) * count]
            check(f"reduce_scatter_tensor {op} count {count}", base, want)


def a2a_len(count, i, j):
    """How many elements rank i sends rank j in the all_to_all case (varies per pair)."""
    return count + (i + 2 * j) % 3 if count else 0


def c_all_to_all(c, dtype):
    t = c.t
    for count in SIZES:
        ins = [data(dtype, a2a_len(count, c.rank, j), c.rank, ("a2a", j)) for j in range(c.n)]
        outs = [guarded(a2a_len(count, i, c.rank), dtype) for i in range(c.n)]
        t.all_to_all([v for _, v in outs], ins)
        for i, (base, _) in enumerate(outs):
            want = data(dtype, a2a_len(count, i, c.rank), i, ("a2a", c.rank))
            check(f"all_to_all count {count} from {i}", base, want)


def c_all_to_all_single(c, dtype):
    t = c.t
    for count in SIZES:
        # Equal blocks.
        send = [data(dtype, count * c.n, r, "a2as") for r in range(c.n)]
        base, view = guarded(count * c.n, dtype)
        t.all_to_all_single(view, send[c.rank])
        want = np.concatenate([send[i][c.rank * count:(c.rank + 1) * count] for i in range(c.n)])
        check(f"all_to_all_single count {count}", base, want)
        # Split sizes in rows of 3 elements: rank i sends rows_(i, j) rows to rank j.
        rows = lambda i, j: (i + j + count) % 4  # noqa: E731
        mine = data(dtype, 3 * sum(rows(c.rank, j) for j in range(c.n)), c.rank, ("a2asv", count)).reshape(-1, 3)
        out = np.zeros((sum(rows(i, c.rank) for i in range(c.n)), 3), dtype=dtype)
        t.all_to_all_single(out, mine,
                            output_split_sizes=[rows(i, c.rank) for i in range(c.n)],
                            input_split_sizes=[rows(c.rank, j) for j in range(c.n)])
        parts = []
        for i in range(c.n):
            theirs = data(dtype, 3 * sum(rows(i, j) for j in range(c.n)), i, ("a2asv", count)).reshape(-1, 3)
            start = sum(rows(i, j) for j in range(c.rank))
            parts.append(theirs[start:start + rows(i, c.rank)])
        assert np.array_equal(out, np.concatenate(parts)), f"all_to_all_single splits count {count}"


def c_send_recv(c, dtype):
    t = c.t
    to, frm = (c.rank + 1) % c.n, (c.rank - 1) % c.n
    for count in SIZES:
        base, view = guarded(count, dtype)
        msg = data(dtype, count, c.rank, "p2p")
        if c.rank % 2 == 0:
            t.send(msg, dst=to, tag=5)
            got = t.recv(view, src=frm, tag=5)
        else:
            got = t.recv(view, src=frm, tag=5)
            t.send(msg, dst=to, tag=5)
        assert got == frm, (got, frm)
        check(f"send/recv count {count}", base, data(dtype, count, frm, "p2p"))


def c_isend_irecv(c, dtype):
    t = c.t
    to, frm = (c.rank + 1) % c.n, (c.rank - 1) % c.n
    for count in SIZES:
        outs = [guarded(count, dtype) for _ in range(3)]
        recvs = [t.irecv(v, src=frm, tag=9) for _, v in outs]
        sends = []
        for k in range(3):
            msg = data(dtype, count, c.rank, ("ip", k))
            sends.append(t.isend(msg, dst=to, tag=9))
            msg[...] = 0  # isend copied it: reusing the array at once is safe
        for w in sends + recvs:
            assert w.wait() is True
            assert w.is_completed()
        # Messages between a pair with one tag arrive in order.
        for k, (base, _) in enumerate(outs):
            check(f"isend/irecv count {count} message {k}", base, data(dtype, count, frm, ("ip", k)))


class OnlyDLPack:
    """Exposes an array through __dlpack__ alone (no buffer protocol), as a torch tensor does."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def c_dlpack(c, dtype):
    t = c.t
    for count in SIZES:
        base, view = guarded(count, dtype)
        view[...] = data(dtype, count, c.rank, "dl")
        t.all_reduce(OnlyDLPack(view))
        want = reference("SUM", [data(dtype, count, r, "dl") for r in range(c.n)], dtype)
        check(f"all_reduce through DLPack count {count}", base, want)
        # numpy's from_dlpack of the wrapper shares the same memory.
        back = np.from_dlpack(OnlyDLPack(view))
        assert back.ctypes.data == view.ctypes.data or count == 0
        base, view = guarded(count, dtype)
        if c.rank == 0:
            view[...] = data(dtype, count, 0, "dlb")
        t.broadcast(OnlyDLPack(view), src=0)
        check(f"broadcast through DLPack count {count}", base, data(dtype, count, 0, "dlb"))


def c_barrier(c):
    t = c.t
    assert t.barrier() is None
    w = t.barrier(async_op=True)
    assert w.wait()


def c_groups(c):
    t = c.t
    evens = [r for r in range(c.n) if r % 2 == 0]
    g = t.new_group(evens)
    if c.rank in evens:
        assert t.get_rank(g) == evens.index(c.rank)
        assert t.get_world_size(g) == len(evens)
        a = np.array([c.rank + 1], dtype=np.int64)
        t.all_reduce(a, group=g)
        assert a[0] == sum(r + 1 for r in evens), a
        # src is a global rank, also with a group (torch's convention).
        b = np.array([c.rank], dtype=np.int64)
        t.broadcast(b, src=evens[-1], group=g)
        assert b[0] == evens[-1]
        b[0] = c.rank
        t.broadcast(b, group_src=0, group=g)
        assert b[0] == evens[0]
    else:
        assert t.get_rank(g) == -1 and t.get_world_size(g) == -1
        try:
            t.all_reduce(np.zeros(1), group=g)
        except ValueError as e:
            assert "not a member" in str(e)
        else:
            raise AssertionError("a non-member's collective on the group did not raise")
    # A group of every rank, in reverse order: torch sorts the ranks.
    all_g = t.new_group(list(reversed(range(c.n))))
    assert t.get_rank(all_g) == c.rank
    a = np.array([1.0])
    t.all_reduce(a, group=all_g)
    assert a[0] == c.n
    t.destroy_process_group(g)
    t.destroy_process_group(all_g)


def c_async_order(c):
    """Queued calls run in call order; a blocking call after them waits for them."""
    t = c.t
    arrays = [np.full(1000, c.rank + k, dtype=np.float64) for k in range(5)]
    works = [t.all_reduce(a, async_op=True) for a in arrays]
    # The same array again, blocking: it must see the queued results first (x2 of the sum).
    t.all_reduce(arrays[0])
    for w in works:
        assert w.wait()
    for k, a in enumerate(arrays):
        s = sum(r + k for r in range(c.n))
        want = s * c.n if k == 0 else s
        assert np.all(a == want), (k, a[0], want)
    big = np.ones(1 << 20, dtype=np.float32)
    w = t.all_reduce(big, async_op=True)
    del big  # the handle keeps the array alive
    w.wait()


def c_recv_any_source(c):
    t = c.t
    if c.n == 1:
        a = np.zeros(3, np.int32)
        t.send(np.arange(3, dtype=np.int32), dst=0, tag=2)
        assert t.recv(a, tag=2) == 0 and list(a) == [0, 1, 2]
        return
    if c.rank == 0:
        seen = set()
        for _ in range(c.n - 1):
            a = np.zeros(2, np.int64)
            src = t.recv(a, tag=3)
            assert a[0] == src and a[1] == 100 + src, (a, src)
            seen.add(src)
        assert seen == set(range(1, c.n))
    else:
        t.send(np.array([c.rank, 100 + c.rank], np.int64), dst=0, tag=3)


CASES = {
    "all_reduce": c_all_reduce,
    "all_reduce_async": functools.partial(c_all_reduce, async_op=True),
    "broadcast": c_broadcast,
    "reduce": c_reduce,
    "all_gather": c_all_gather,
    "all_gather_into_tensor": c_all_gather_into_tensor,
    "gather": c_gather,
    "scatter": c_scatter,
    "reduce_scatter": c_reduce_scatter,
    "reduce_scatter_tensor": c_reduce_scatter_tensor,
    "all_to_all": c_all_to_all,
    "all_to_all_single": c_all_to_all_single,
    "send_recv": c_send_recv,
    "isend_irecv": c_isend_irecv,
    "dlpack": c_dlpack,
}
SINGLE_CASES = {
    "barrier": c_barrier,
    "groups": c_groups,
    "async_order": c_async_order,
    "recv_any_source": c_recv_any_source,
}


def main():
    import tutti

    tutti.init_process_group(backend="gloo", init_method="env://")
    c = Ctx(tutti)
    assert c.rank == int(os.environ["RANK"]) and c.n == int(os.environ["WORLD_SIZE"])

    def run(name, fn):
        try:
            fn()
            print(f"RESULT {name} OK", flush=True)
        except Exception as e:  # reported per case; the others still run
            why = f"{type(e).__name__}: {e}".replace("\n", " | ")
            print(f"RESULT {name} FAIL {why}", flush=True)
            traceback.print_exc()

    for fam, fn in CASES.items():
        for dtype in DTYPES:
            run(f"{fam}-{dtype}", functools.partial(fn, c, dtype))
    for name, fn in SINGLE_CASES.items():
        run(name, functools.partial(fn, c))
    tutti.barrier()
    tutti.destroy_process_group()
    print("RESULT done OK", flush=True)


if __name__ == "__main__":
    sys.exit(main())
