"""A small program written against mpi4py's API, as course assignments are: only its import
names tutti (``MPI_IMPL=mpi4py`` runs the very same code on mpi4py, for comparison).

    python -m tutti.launch -n 4 mpi_program.py
    mpirun -n 4 python mpi_program.py         # with MPI_IMPL=mpi4py

Each rank runs every case and prints ``RESULT <case> OK`` or ``RESULT <case> FAIL <why>``
(test_mpi.py collects them). Every expected value is computed from rank and size alone.
"""

import os
import sys
import traceback

import numpy as np

if os.environ.get("MPI_IMPL") == "mpi4py":
    from mpi4py import MPI
else:
    from tutti import MPI

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
size = comm.Get_size()
CASES = []


def case(f):
    CASES.append(f)
    return f


def check(cond, why):
    if not cond:
        raise AssertionError(why)


@case
def identity():
    check(comm.rank == rank and comm.size == size, "rank/size properties")
    check(0 <= rank < size, f"rank {rank} of {size}")
    check(isinstance(comm, MPI.Intracomm) and isinstance(comm, MPI.Comm), "types")
    check(isinstance(MPI.Get_version(), tuple), "Get_version")
    check(isinstance(MPI.Get_library_version(), str), "Get_library_version")
    check(len(MPI.get_vendor()) == 2, "get_vendor")
    t0 = MPI.Wtime()
    check(MPI.Wtime() >= t0, "Wtime")


@case
def barrier():
    comm.Barrier()
    comm.barrier()


@case
def bcast_buffer():
    a = np.arange(10, dtype=np.float64) if rank == 0 else np.zeros(10)
    comm.Bcast(a, root=0)
    check(np.array_equal(a, np.arange(10.0)), f"Bcast got {a}")
    b = np.full(5, rank, dtype=np.int32)
    comm.Bcast([b, MPI.INT], root=size - 1)
    check(np.all(b == size - 1), f"Bcast spec got {b}")


@case
def allreduce_ops():
    x = np.array([rank + 1.0, 2.0], dtype=np.float64)
    out = np.empty_like(x)
    comm.Allreduce(x, out, op=MPI.SUM)
    check(np.allclose(out, [size * (size + 1) / 2, 2.0 * size]), f"SUM {out}")
    comm.Allreduce(sendbuf=x, recvbuf=out, op=MPI.MAX)
    check(out[0] == size, f"MAX {out}")
    comm.Allreduce([x, MPI.DOUBLE], [out, MPI.DOUBLE], op=MPI.MIN)
    check(out[0] == 1.0, f"MIN {out}")
    comm.Allreduce(x, out, op=MPI.PROD)
    check(out[1] == 2.0 ** size, f"PROD {out}")
    y = np.full(3, rank, dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, y, op=MPI.SUM)
    check(np.all(y == size * (size - 1) // 2), f"IN_PLACE {y}")
    f = np.ones(8, dtype=np.float32)
    comm.Allreduce(MPI.IN_PLACE, [f, 4, MPI.FLOAT], op=MPI.SUM)
    check(np.all(f[:4] == size) and np.all(f[4:] == 1), f"count spec {f}")


@case
def reduce_to_root():
    x = np.full(4, rank, dtype=np.int32)
    out = np.zeros(4, dtype=np.int32) if rank == 0 else None
    comm.Reduce(x, out, op=MPI.SUM, root=0)
    if rank == 0:
        check(np.all(out == size * (size - 1) // 2), f"Reduce {out}")
    root = size - 1
    y = np.full(2, rank + 1.0)
    comm.Reduce(MPI.IN_PLACE if rank == root else y, y if rank == root else None, op=MPI.MAX, root=root)
    if rank == root:
        check(np.all(y == size), f"Reduce IN_PLACE {y}")


@case
def gather_scatter():
    send = np.full(3, rank, dtype=np.float32)
    recv = np.empty(3 * size, dtype=np.float32) if rank == 0 else None
    comm.Gather(send, recv, root=0)
    if rank == 0:
        check(np.array_equal(recv, np.repeat(np.arange(size, dtype=np.float32), 3)), f"Gather {recv}")
    allv = np.empty(3 * size, dtype=np.float32)
    comm.Allgather(send, allv)
    check(np.array_equal(allv, np.repeat(np.arange(size, dtype=np.float32), 3)), f"Allgather {allv}")
    src = np.arange(2 * size, dtype=np.int64) if rank == 0 else None
    part = np.empty(2, dtype=np.int64)
    comm.Scatter(src, part, root=0)
    check(np.array_equal(part, [2 * rank, 2 * rank + 1]), f"Scatter {part}")


@case
def reduce_scatter():
    send = np.arange(2 * size, dtype=np.float64) + rank
    out = np.empty(2)
    comm.Reduce_scatter_block(send, out, op=MPI.SUM)
    expect = size * np.arange(2 * rank, 2 * rank + 2) + size * (size - 1) / 2
    check(np.allclose(out, expect), f"Reduce_scatter_block {out} != {expect}")
    out2 = np.empty(2)
    comm.Reduce_scatter(send, out2, recvcounts=[2] * size, op=MPI.SUM)
    check(np.allclose(out2, expect), f"Reduce_scatter {out2}")


@case
def alltoall():
    send = np.array([rank * 100 + j for j in range(size)], dtype=np.int32)
    recv = np.empty(size, dtype=np.int32)
    comm.Alltoall(send, recv)
    check(np.array_equal(recv, [j * 100 + rank for j in range(size)]), f"Alltoall {recv}")


@case
def send_recv_ring():
    right, left = (rank + 1) % size, (rank - 1) % size
    out = np.full(6, rank, dtype=np.float64)
    got = np.empty(6)
    comm.Sendrecv(out, dest=right, sendtag=7, recvbuf=got, source=left, recvtag=7)
    check(np.all(got == left), f"Sendrecv {got}")
    req = comm.Irecv([got, MPI.DOUBLE], source=left, tag=3)
    comm.Isend([out, MPI.DOUBLE], dest=right, tag=3).Wait()
    status = MPI.Status()
    req.Wait(status)
    check(np.all(got == left), f"Isend/Irecv {got}")
    check(status.Get_source() == left and status.Get_tag() == 3, f"status {status}")
    check(status.Get_count(MPI.DOUBLE) == 6, f"count {status.Get_count(MPI.DOUBLE)}")


@case
def any_source_any_tag():
    if rank != 0:
        comm.Send(np.full(2, rank, dtype=np.int64), dest=0, tag=rank)
        return
    seen = set()
    for _ in range(size - 1):
        buf = np.empty(2, dtype=np.int64)
        st = MPI.Status()
        comm.Recv(buf, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st)
        check(st.source == buf[0] and st.tag == buf[0], f"status {st} for {buf}")
        seen.add(int(buf[0]))
    check(seen == set(range(1, size)), f"senders {seen}")


@case
def tags_out_of_order():
    # Two messages to the left neighbour; it receives the later tag first.
    right, left = (rank + 1) % size, (rank - 1) % size
    comm.send("first", dest=right, tag=1)
    comm.send("second", dest=right, tag=2)
    b = comm.recv(source=left, tag=2)
    a = comm.recv(source=left, tag=1)
    check((a, b) == ("first", "second"), f"got {a!r}, {b!r}")


@case
def objects_p2p():
    if size == 1:
        comm.send({"x": 1}, dest=0, tag=5)
        check(comm.recv(source=0, tag=5) == {"x": 1}, "self send")
        return
    if rank == 0:
        comm.send({"a": [1, 2, 3], "from": 0}, dest=1, tag=11)
        req = comm.irecv(source=1, tag=12)
        got = req.wait()
        check(got == ("reply", 1), f"irecv {got}")
    elif rank == 1:
        st = MPI.Status()
        msg = comm.recv(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st)
        check(msg == {"a": [1, 2, 3], "from": 0} and st.Get_source() == 0 and st.Get_tag() == 11, f"recv {msg} {st}")
        comm.isend(("reply", 1), dest=0, tag=12).wait()


@case
def objects_collectives():
    data = comm.bcast({"lr": 0.1, "steps": [1, 2]} if rank == 0 else None, root=0)
    check(data == {"lr": 0.1, "steps": [1, 2]}, f"bcast {data}")
    g = comm.gather(rank * rank, root=0)
    if rank == 0:
        check(g == [r * r for r in range(size)], f"gather {g}")
    else:
        check(g is None, f"gather non-root {g}")
    check(comm.allgather(("r", rank)) == [("r", r) for r in range(size)], "allgather")
    s = comm.scatter([f"item{r}" for r in range(size)] if rank == 0 else None, root=0)
    check(s == f"item{rank}", f"scatter {s}")
    a = comm.alltoall([(rank, j) for j in range(size)])
    check(a == [(j, rank) for j in range(size)], f"alltoall {a}")
    total = comm.allreduce(rank, op=MPI.SUM)
    check(total == size * (size - 1) // 2, f"allreduce {total}")
    check(comm.allreduce(rank, op=MPI.MAX) == size - 1, "allreduce MAX")
    r = comm.reduce([rank], op=MPI.SUM, root=0)
    if rank == 0:
        check(r == list(range(size)), f"reduce lists {r}")


@case
def split_dup_free():
    sub = comm.Split(color=rank % 2, key=-rank)
    members = [r for r in range(size) if r % 2 == rank % 2]
    check(sub.Get_size() == len(members), f"Split size {sub.Get_size()}")
    check(sub.Get_rank() == sorted(members, reverse=True).index(rank), f"Split rank {sub.Get_rank()}")
    x = np.array([rank], dtype=np.int64)
    sub.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
    check(x[0] == sum(members), f"sub Allreduce {x}")
    check(sub.allgather(rank) == sorted(members, reverse=True), "sub allgather")
    sub.Free()
    none = comm.Split(MPI.UNDEFINED if rank == 0 else 1, rank)
    check((none == MPI.COMM_NULL) == (rank == 0), "UNDEFINED gives COMM_NULL")
    dup = comm.Dup()
    check(dup.Get_size() == size and dup.Get_rank() == rank, "Dup")
    check(dup.bcast("dup" if rank == 0 else None) == "dup", "Dup bcast")
    dup.Free()


@case
def in_place_variants():
    g = np.zeros(2 * size, dtype=np.int32)
    g[2 * rank:2 * rank + 2] = rank + 1
    if rank == 0:
        comm.Gather(MPI.IN_PLACE, g, root=0)
        check(np.array_equal(g, np.repeat(np.arange(1, size + 1, dtype=np.int32), 2)), f"Gather IN_PLACE {g}")
    else:
        comm.Gather(g[2 * rank:2 * rank + 2], None, root=0)
    a = np.zeros(size, dtype=np.float64)
    a[rank] = rank * 2.0
    comm.Allgather(MPI.IN_PLACE, a)
    check(np.array_equal(a, 2.0 * np.arange(size)), f"Allgather IN_PLACE {a}")
    counts = [r + 1 for r in range(size)]
    send = np.ones(sum(counts), dtype=np.float32) * (rank + 1)
    out = np.zeros(counts[rank], dtype=np.float32)
    comm.Reduce_scatter(send, out, recvcounts=counts, op=MPI.SUM)
    check(np.all(out == size * (size + 1) / 2), f"Reduce_scatter counts {out}")


@case
def probe_then_receive():
    right, left = (rank + 1) % size, (rank - 1) % size
    comm.Send(np.arange(rank + 3, dtype=np.int64), dest=right, tag=21)
    st = MPI.Status()
    comm.Probe(source=left, tag=21, status=st)
    n = st.Get_count(MPI.INT64_T)
    check(n == left + 3 and st.Get_source() == left, f"Probe count {n} source {st.Get_source()}")
    buf = np.empty(n, dtype=np.int64)
    comm.Recv(buf, source=left, tag=21)
    check(np.array_equal(buf, np.arange(left + 3)), f"Recv after Probe {buf}")


@case
def unsupported_names_the_call():
    if os.environ.get("MPI_IMPL") == "mpi4py":
        return
    for call in (lambda: comm.Scan, lambda: MPI.Win):
        try:
            call()
        except NotImplementedError as e:
            check("Scan" in str(e) or "Win" in str(e), f"message {e}")
        else:
            raise AssertionError("no NotImplementedError")


def main():
    failed = 0
    for f in CASES:
        try:
            f()
            print(f"RESULT {f.__name__} OK", flush=True)
        except Exception as e:  # noqa: BLE001  (report, keep going)
            failed += 1
            why = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
            print(f"RESULT {f.__name__} FAIL {why}", flush=True)
            traceback.print_exc()
        comm.Barrier()
    print("RESULT done OK" if not failed else "RESULT done FAIL", flush=True)
    sys.exit(1 if failed else 0)


CASE_NAMES = [f.__name__ for f in CASES]

if __name__ == "__main__":
    main()
