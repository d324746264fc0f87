"""The Gloo side of bench/compare: torch.distributed all_reduce (f32, sum) with the gloo backend,
timed as `tutti bench` times it, one row per size in the same columns:

    size(B) count type redop time(us) algbw(GB/s) busbw(GB/s) #wrong

One process per rank, started by bench/compare with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
(and GLOO_SOCKET_IFNAME) set. For each size: warm-up calls, a barrier, timed calls
(time.perf_counter around the loop); time = mean per call averaged over ranks; then one checked
call on known data. Sizes follow tutti bench (start at max(B, 4 * ranks), times F up to E, count
= size / 4 / ranks * ranks). One thread per process (OMP_NUM_THREADS=1, torch.set_num_threads(1)).

    python3 bench/peers/gloo_bench.py -b 1024 -e 67108864 -f 4 -n 10 -w 2
"""

import argparse
import datetime
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
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
    if rank == 0:
        print(f"# gloo_bench: torch {torch.__version__} all_reduce on {n} ranks, f32, sum; "
              f"{a.n} iters, {a.w} warmup", flush=True)
        print(f"{'size(B)':>12} {'count':>12} {'type':>6} {'redop':>6} {'time(us)':>12} "
              f"{'algbw(GB/s)':>10} {'busbw(GB/s)':>10} {'#wrong':>8}", flush=True)
    bytes_ = max(a.b, 4 * n)
    while bytes_ <= a.e:
        count = bytes_ // 4 // n * n
        buf = torch.ones(count, dtype=torch.float32)
        for _ in range(a.w):
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(a.n):
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        secs = torch.tensor([(time.perf_counter() - t0) / a.n], dtype=torch.float64)
        dist.all_reduce(secs, op=dist.ReduceOp.SUM)
        secs = secs.item() / n
        # Checked once on known data, as tutti bench does: element i of rank r is (7r + i) % 13.
        idx = torch.arange(count, dtype=torch.int64)
        buf = ((rank * 7 + idx) % 13).to(torch.float32)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        expect = sum(((r * 7 + idx) % 13) for r in range(n)).to(torch.float32)
        wrong = torch.tensor([int((buf != expect).sum())], dtype=torch.int64)
        dist.all_reduce(wrong, op=dist.ReduceOp.SUM)
        if rank == 0:
            size = count * 4
            algbw = size / secs / 1e9
            busbw = algbw * 2 * (n - 1) / n
            print(f"{size:>12} {count:>12} {'f32':>6} {'sum':>6} {secs * 1e6:>12.1f} "
                  f"{algbw:>10.3f} {busbw:>10.3f} {int(wrong.item()):>8}", flush=True)
        bytes_ *= a.f
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
