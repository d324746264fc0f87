"""The Gloo side of bench/compare: one torch.distributed collective with the gloo backend (-c:
allreduce, the default, f32 sum; bcast from rank 0; allgather), timed as `tutti bench` times it,
one row per size in the same columns:

    size(B) count type redop time(us) algbw(GB/s) busbw(GB/s) #wrong

One process per rank, started by bench/compare with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
(and GLOO_SOCKET_IFNAME) set. For each size: warm-up calls, a barrier, timed calls
(time.perf_counter around the loop); time = mean per call averaged over ranks; then one checked
call on known data (allreduce: the sum; bcast: rank 0's data; allgather: every rank's block).
Sizes follow tutti bench (start at max(B, 4 * ranks), times F up to E); counted as `tutti bench`
(nccl-tests) counts them: allreduce and bcast move count = size / 4 elements; allgather's size is
the whole output, each rank contributing count = size / 4 / ranks elements (the printed count).
busbw = algbw x 2(n-1)/n (allreduce), 1 (bcast), (n-1)/n (allgather). All-gather uses
all_gather_into_tensor when this torch's gloo has it, else all_gather into views of one tensor
(the header says which). One thread per process (OMP_NUM_THREADS=1, torch.set_num_threads(1)).

    python3 bench/peers/gloo_bench.py -c allreduce -b 1024 -e 67108864 -f 4 -n 10 -w 2
"""

import argparse
import datetime
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def gather_into_tensor(n):
    """An all-gather (out, inp): all_gather_into_tensor if gloo supports it here (tried once, on
    every rank alike), else all_gather into the n chunks of out."""
    def views(out, inp):
        dist.all_gather(list(out.chunk(n)), inp)
    if hasattr(dist, "all_gather_into_tensor"):
        try:
            dist.all_gather_into_tensor(torch.zeros(n), torch.ones(1))
            return dist.all_gather_into_tensor, "all_gather_into_tensor"
        except RuntimeError:
            pass
    return views, "all_gather (into views)"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-c", choices=["allreduce", "bcast", "allgather"], default="allreduce")
    p.add_argument("-b", type=int, default=1024)
    p.add_argument("-e", type=int, default=64 << 20)
    p.add_argument("-f", type=int, default=4)
    p.add_argument("-n", type=int, default=10)
    p.add_argument("-w", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(1)
    timeout = float(os.environ.get("GLOO_BENCH_TIMEOUT", "300"))
    dist.init_process_group("gloo", init_method="env://",
                            timeout=datetime.timedelta(seconds=timeout))
    rank, n = dist.get_rank(), dist.get_world_size()
    c = a.c
    if c == "allgather":
        gather, name = gather_into_tensor(n)
    else:
        name = {"allreduce": "all_reduce", "bcast": "broadcast"}[c]
    redop = "sum" if c == "allreduce" else "none"
    bus = {"allreduce": 2 * (n - 1) / n, "bcast": 1.0, "allgather": (n - 1) / n}[c]

    def call(buf, out):
        if c == "allreduce":
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        elif c == "bcast":
            dist.broadcast(buf, src=0)
        else:
            gather(out, buf)

    if rank == 0:
        print(f"# gloo_bench: torch {torch.__version__} {name} on {n} ranks, f32, {redop}"
              f"{', root 0' if c == 'bcast' else ''}; {a.n} iters, {a.w} warmup; "
              f"busbw = algbw x {bus:.3f}", flush=True)
        print(f"{'size(B)':>12} {'count':>12} {'type':>6} {'redop':>6} {'time(us)':>12} "
              f"{'algbw(GB/s)':>10} {'busbw(GB/s)':>10} {'#wrong':>8}", flush=True)
    bytes_ = max(a.b, 4 * n)
    while bytes_ <= a.e:
        count = bytes_ // 4 // n if c == "allgather" else bytes_ // 4
        size = count * n * 4 if c == "allgather" else count * 4
        buf = torch.ones(count, dtype=torch.float32) if c == "allreduce" else torch.zeros(count)
        out = torch.zeros(count * n) if c == "allgather" else None
        for _ in range(a.w):
            call(buf, out)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(a.n):
            call(buf, out)
        secs = torch.tensor([(time.perf_counter() - t0) / a.n], dtype=torch.float64)
        dist.all_reduce(secs, op=dist.ReduceOp.SUM)
        secs = secs.item() / n
        # Checked once on known data, as tutti bench does: element i of rank r is (7r + i) % 13.
        idx = torch.arange(count, dtype=torch.int64)
        of = lambda r: ((r * 7 + idx) % 13).to(torch.float32)  # noqa: E731
        if c == "allreduce":
            buf = of(rank)
            call(buf, out)
            got, expect = buf, sum(((r * 7 + idx) % 13) for r in range(n)).to(torch.float32)
        elif c == "bcast":
            buf = of(0) if rank == 0 else torch.zeros(count)
            call(buf, out)
            got, expect = buf, of(0)
        else:
            out = torch.zeros(count * n)
            call(of(rank), out)
            got, expect = out, torch.cat([of(r) for r in range(n)])
        wrong = torch.tensor([int((got != expect).sum())], dtype=torch.int64)
        dist.all_reduce(wrong, op=dist.ReduceOp.SUM)
        if rank == 0:
            algbw = size / secs / 1e9
            print(f"{size:>12} {count:>12} {'f32':>6} {redop:>6} {secs * 1e6:>12.1f} "
                  f"{algbw:>10.3f} {algbw * bus:>10.3f} {int(wrong.item()):>8}", flush=True)
        bytes_ *= a.f
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
