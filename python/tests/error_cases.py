"""Errors, run under the launcher: ``python -m tutti.launch -n N error_cases.py PART``.

PART ``local``: arguments refused before any traffic (type, contiguity, writability,
alignment, overlaps, list lengths), the library's own argument errors, a point-to-point
timeout, an error surfacing at ``Work.wait()``. PART ``mismatch``: a mismatched all-reduce
(rank 0 passes 200 elements, the others 100) must raise a tutti.Error on every rank, after
which each rank still prints and exits. PART ``peer_lost``: the last rank leaves; the others'
all-reduce raises PeerLostError. Lines as in cases.py: ``RESULT <case> OK|FAIL <why>``.
"""

import builtins
import os
import sys
import time
import traceback

import numpy as np

import tutti
from cases import OnlyDLPack

LOCAL = [
    "dtype_int16", "dtype_bool", "dtype_complex", "dtype_big_endian", "not_a_buffer",
    "non_contiguous", "non_contiguous_dlpack", "read_only", "read_only_dlpack",
    "read_only_send_ok", "unaligned", "dtype_mismatch", "overlap", "list_length",
    "list_element_size", "root_out_of_range", "wrong_output_size", "bitwise_on_floats",
    "timeout_p2p", "error_at_wait", "after_errors_still_works",
]
# Each in a launch of its own: an abort races with whatever call a slower rank is finishing.
MISMATCH = ["mismatch_raises_everywhere"]
PEER_LOST = ["peer_lost"]


def expect(exc_type, fn, *words):
    try:
        fn()
    except exc_type as e:
        msg = str(e)
        for w in words:
            assert w in msg, f"{type(e).__name__} message {msg!r} does not mention {w!r}"
        return e
    except Exception as e:
        raise AssertionError(f"expected {exc_type.__name__}, got {type(e).__name__}: {e}") from e
    raise AssertionError(f"expected {exc_type.__name__}, nothing was raised")


def local_cases(rank, n):
    t = tutti
    a = np.zeros(8, np.float32)

    def dtype_int16():
        expect(TypeError, lambda: t.all_reduce(np.zeros(4, np.int16)), "tensor", "int16")

    def dtype_bool():
        expect(TypeError, lambda: t.all_reduce(np.zeros(4, bool)), "bool")

    def dtype_complex():
        expect(TypeError, lambda: t.all_reduce(np.zeros(4, np.complex64)), "complex64")

    def dtype_big_endian():
        expect(TypeError, lambda: t.all_reduce(np.zeros(4, ">f4")), "byte order")

    def not_a_buffer():
        expect(TypeError, lambda: t.all_reduce([1.0, 2.0]), "list")

    def non_contiguous():
        m = np.zeros((4, 4), np.float32)
        expect(ValueError, lambda: t.all_reduce(m[:, 1]), "not C-contiguous")
        expect(ValueError, lambda: t.all_reduce(m.T), "not C-contiguous")
        expect(ValueError, lambda: t.broadcast(np.zeros(8)[::2], src=0), "not C-contiguous")

    def non_contiguous_dlpack():
        m = np.zeros((4, 4), np.float32)
        expect(ValueError, lambda: t.all_reduce(OnlyDLPack(m[:, 1])), "not C-contiguous")

    def read_only():
        r = np.zeros(4, np.float64)
        r.setflags(write=False)
        expect(ValueError, lambda: t.all_reduce(r), "read-only")
        expect(ValueError, lambda: t.recv(r, src=rank), "read-only")
        expect(ValueError, lambda: t.all_reduce(np.frombuffer(b"\0" * 16, np.float64)), "read-only")

    def read_only_dlpack():
        r = np.zeros(4, np.float64)
        r.setflags(write=False)
        expect(ValueError, lambda: t.all_reduce(OnlyDLPack(r)), "read-only")

    def read_only_send_ok():
        r = np.arange(4, dtype=np.int32)
        r.setflags(write=False)
        got = np.zeros(4, np.int32)
        t.send(r, dst=rank, tag=11)  # to itself: reading a read-only array is fine
        t.recv(got, src=rank, tag=11)
        assert list(got) == [0, 1, 2, 3]

    def unaligned():
        raw = np.zeros(33, np.uint8)
        view = raw[1:].view(np.float32)
        expect(ValueError, lambda: t.all_reduce(view), "aligned")

    def dtype_mismatch():
        expect(TypeError, lambda: t.all_gather_into_tensor(np.zeros(4 * n, np.float32), np.zeros(4, np.float64)),
               "same element type")
        expect(TypeError, lambda: t.all_gather([np.zeros(4, np.int32)] * n, np.zeros(4, np.int64)),
               "tensor_list[0]")

    def overlap():
        buf = np.zeros(4 * n + 2, np.float32)
        expect(ValueError, lambda: t.all_gather_into_tensor(buf[:4 * n], buf[1:5]), "overlap")
        expect(ValueError, lambda: t.all_to_all_single(buf[:4 * n], buf[:4 * n]), "overlap")

    def list_length():
        expect(ValueError, lambda: t.all_gather([np.zeros(4)] * (n + 1), np.zeros(4)), "tensor_list", str(n))

    def list_element_size():
        expect(ValueError, lambda: t.all_gather([np.zeros(5)] * n, np.zeros(4)), "same size")

    def root_out_of_range():
        e = expect(t.InvalidArgumentError, lambda: t.broadcast(a, src=n), "out of range")
        assert isinstance(e, ValueError) and isinstance(e, t.Error)

    def wrong_output_size():
        expect(t.InvalidArgumentError, lambda: t.all_gather_into_tensor(np.zeros(4 * n + 1, np.float32), a[:4]))

    def bitwise_on_floats():
        expect(t.InvalidArgumentError, lambda: t.all_reduce(a, op=t.ReduceOp.BXOR))

    def timeout_p2p():
        start = time.monotonic()
        e = expect(t.TimeoutError, lambda: t.recv(np.zeros(2), src=rank, tag=99), "timed out")
        took = time.monotonic() - start
        assert isinstance(e, builtins.TimeoutError) and isinstance(e, t.Error)
        assert 1.5 < took < 10, took  # init_process_group(timeout=2)

    def error_at_wait():
        w = t.broadcast(a, src=n + 5, async_op=True)
        expect(t.InvalidArgumentError, w.wait, "out of range")
        assert w.is_completed() and not w.is_success()

    def after_errors_still_works():
        x = np.array([rank + 1], np.int64)
        t.all_reduce(x)
        assert x[0] == n * (n + 1) // 2

    def mismatch_raises_everywhere():
        # A rank that compares fingerprints with rank 0 raises MismatchError at once (the
        # test checks that one does); the others raise PeerLostError naming the rank that
        # aborted, or, where the library does not abort on a mismatch, TimeoutError when
        # their own timeout (2 s here) runs out. Every rank raises; none hangs.
        x = np.ones(200 if rank == 0 else 100, np.float32)
        start = time.monotonic()
        try:
            t.all_reduce(x)
        except t.Error as e:
            took = time.monotonic() - start
            print(f"MISMATCH {type(e).__name__} after {took:.2f}s: {e}", flush=True)
            assert took < 2.0 + 8.0, f"took {took:.1f}s to raise"
            return
        if n > 1:
            raise AssertionError("a mismatched all_reduce raised nothing on this rank")

    found = locals()
    return [(name, found[name]) for name in LOCAL + MISMATCH]


def peer_lost_cases(rank, n):
    def peer_lost():
        tutti.barrier()
        if rank == n - 1:
            time.sleep(1)  # lets the others finish the barrier
            os._exit(0)  # leaves without a word
        x = np.ones(1000, np.float32)
        start = time.monotonic()
        e = expect(tutti.PeerLostError, lambda: tutti.all_reduce(x), f"rank {n - 1}")
        print(f"PEERLOST after {time.monotonic() - start:.2f}s: {e}", flush=True)

    return [("peer_lost", peer_lost)]


def main():
    part = sys.argv[1]
    tutti.init_process_group(timeout=2)
    rank, n = tutti.get_rank(), tutti.get_world_size()
    if part == "peer_lost":
        cases = peer_lost_cases(rank, n)
    else:
        names = LOCAL if part == "local" else MISMATCH
        cases = [(name, fn) for name, fn in local_cases(rank, n) if name in names]
    for name, fn in cases:
        try:
            fn()
            print(f"RESULT {name} OK", flush=True)
        except Exception as e:
            why = f"{type(e).__name__}: {e}".replace("\n", " | ")
            print(f"RESULT {name} FAIL {why}", flush=True)
            traceback.print_exc()
    print("RESULT done OK", flush=True)
    sys.stdout.flush()
    os._exit(0)  # whatever state the world is in after the mismatch


if __name__ == "__main__":
    main()
