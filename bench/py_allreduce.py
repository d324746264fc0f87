"""The Python call's overhead over the Rust call: f32 sum all-reduce from Python, timed as
`tutti bench` times itself (per call, after warm-up calls; median and mean over the timed
calls), to compare in one sitting with `tutti launch -n N -- tutti bench all_reduce -b 8 -e 64M`:

    python -m tutti.launch -n 2 bench/py_allreduce.py [--sizes 8,1M,64M] [--iters N]
    python -m tutti.launch -n 2 bench/py_allreduce.py --api facade     # tutti.MPI's Allreduce
    mpirun -n 2 python bench/py_allreduce.py --api mpi4py              # mpi4py on that MPI

``--api``: ``tutti`` (``tutti.all_reduce(a)``, the default), ``facade`` (``from tutti import
MPI``; ``comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)``) or ``mpi4py`` (the same call on mpi4py).
The in-place form is used for all three, so each call moves the same bytes.

Prints size, time p50 (us), time mean (us), algbw and busbw (GB/s, busbw = algbw * 2(n-1)/n)
from rank 0. Every rank checks the result of its last call. bench/py_overhead runs it
alternating with the Rust call and mpi4py, and prints the ratios.
"""

import argparse
import time

import numpy as np


def parse_size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * mult[s[-1].upper()] if s[-1].upper() in mult else int(s)


def setup(api):
    """(rank, size, all_reduce(a), barrier(), finish()) for the API under test."""
    if api == "tutti":
        import tutti

        tutti.init_process_group()
        return (tutti.get_rank(), tutti.get_world_size(), tutti.all_reduce, tutti.barrier,
                tutti.destroy_process_group)
    if api == "facade":
        from tutti import MPI
    else:
        from mpi4py import MPI
    comm = MPI.COMM_WORLD
    allreduce, in_place, op = comm.Allreduce, MPI.IN_PLACE, MPI.SUM
    return (comm.Get_rank(), comm.Get_size(), lambda a: allreduce(in_place, a, op), comm.Barrier,
            lambda: None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="8,1M,64M")
    ap.add_argument("--iters", type=int, default=0, help="timed calls (default: by size)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--api", choices=["tutti", "facade", "mpi4py"], default="tutti")
    args = ap.parse_args()
    rank, n, all_reduce, barrier, finish = setup(args.api)
    if rank == 0:
        print(f"# f32 sum all_reduce from Python ({args.api}), {n} ranks")
        print(f"{'size':>10} {'p50 us':>10} {'mean us':>10} {'algbw':>8} {'busbw':>8}")
    for size in (parse_size(s) for s in args.sizes.split(",")):
        count = max(size // 4, 1)
        a = np.ones(count, np.float32)
        iters = args.iters or (20000 if size <= 4096 else 200 if size <= (1 << 20) else 10)
        for _ in range(args.warmup):
            all_reduce(a)
        barrier()
        times = np.empty(iters)
        clock = time.perf_counter
        for i in range(iters):
            t0 = clock()
            all_reduce(a)
            times[i] = clock() - t0
        a[...] = 1
        all_reduce(a)
        assert np.all(a == n), "wrong result"
        p50, mean = np.median(times), times.mean()
        algbw = count * 4 / p50 / 1e9
        if rank == 0:
            print(f"{count * 4:>10} {p50 * 1e6:>10.2f} {mean * 1e6:>10.2f} {algbw:>8.3f} "
                  f"{algbw * 2 * (n - 1) / n:>8.3f}", flush=True)
    finish()


if __name__ == "__main__":
    main()
