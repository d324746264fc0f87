"""Ray-style put/get/free (tutti.put, tutti.get, tutti.free) on 2-4 ranks: prints
``RESULT <case> OK|FAIL <why>`` per rank (test_objects.py collects them).

The last case has the owner (the last rank) leave the group; the others' get of its object
must then fail, within the timeout, with a tutti error naming the owner.
"""

import pickle
import sys
import time
import traceback

import numpy as np

import tutti
from tutti import MPI

comm = MPI.COMM_WORLD
rank, size = comm.rank, comm.size
last = size - 1


def result(name, fn):
    try:
        extra = fn()
        print(f"RESULT {name} OK{'' if extra is None else ' ' + str(extra)}", flush=True)
        return True
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        print(f"RESULT {name} FAIL {type(e).__name__}: {e}".replace("\n", " ")[:400], flush=True)
        return False


def get_everywhere():
    a = np.arange(12, dtype=np.float32).reshape(3, 4) * (rank + 1)
    ref = tutti.put(a)
    refs = comm.allgather(ref)  # the references are small and picklable
    assert len(pickle.dumps(ref)) < 200, len(pickle.dumps(ref))
    for owner, r in enumerate(refs):
        got = tutti.get(r)
        want = np.arange(12, dtype=np.float32).reshape(3, 4) * (owner + 1)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), (owner, got)
        got[0, 0] = -1  # a writable copy
    comm.Barrier()
    tutti.free(ref)


def served_while_the_owner_is_busy():
    big = np.random.default_rng(7).standard_normal(1 << 20)  # 8 MiB
    ref = comm.bcast(tutti.put(big) if rank == 0 else None, root=0)
    if rank == 0:
        time.sleep(2.0)  # the application is busy; the store's thread answers
        comm.Barrier()
        tutti.free(ref)
        return None
    t0 = time.perf_counter()
    got = tutti.get(ref)
    took = time.perf_counter() - t0
    assert np.array_equal(got, big)
    assert took < 1.5, f"the get took {took:.2f} s while the owner slept 2 s"
    comm.Barrier()
    return f"get_s={took:.3f}"


def get_after_free():
    ref = comm.bcast(tutti.put(np.ones(5, np.int64)) if rank == 0 else None, root=0)
    comm.Barrier()
    if rank == 0:
        tutti.free(ref)
    comm.Barrier()
    try:
        tutti.get(ref)
    except tutti.InvalidArgumentError as e:
        assert "no such object" in str(e) and "rank 0" in str(e), str(e)
    else:
        raise AssertionError("a get after free succeeded")
    comm.Barrier()


def get_after_owner_left():
    ref = comm.bcast(tutti.put(np.ones(3)) if rank == last else None, root=last)
    comm.Barrier()
    if rank == last:
        tutti.destroy_process_group()
        return None
    time.sleep(0.5)
    t0 = time.perf_counter()
    try:
        tutti.get(ref)
    except tutti.Error as e:
        took = time.perf_counter() - t0
        assert f"{last}" in str(e), str(e)
        return f"{type(e).__name__} after {took:.3f} s: {e}"
    raise AssertionError("a get from an owner that left succeeded")


ok = result("get_everywhere", get_everywhere)
ok &= result("served_while_the_owner_is_busy", served_while_the_owner_is_busy)
ok &= result("get_after_free", get_after_free)
if size > 1:
    ok &= result("get_after_owner_left", get_after_owner_left)
print("RESULT done OK" if ok else "RESULT done FAIL", flush=True)
sys.exit(0 if ok else 1)
