/* The MPI side of bench/compare: one collective (-c: allreduce, the default, f32 sum; bcast from
 * root 0; allgather) over a range of sizes, timed as `tutti bench` times it (warm-up calls, a
 * barrier, timed calls; time = mean per call, averaged over ranks with MPI_Reduce), one row per
 * size in the same columns:
 *
 *   size(B) count type redop time(us) algbw(GB/s) busbw(GB/s) #wrong
 *
 * Sizes follow tutti bench: start at max(B, 4 * ranks), multiply by F up to E. As `tutti bench`
 * (nccl-tests) counts them: allreduce and bcast move count = size / 4 elements; allgather's size
 * is the whole receive buffer, each rank contributing count = size / 4 / ranks elements (the
 * printed count), so size = 4 * ranks * count after rounding. busbw = algbw x 2(n-1)/n
 * (allreduce), 1 (bcast), (n-1)/n (allgather). #wrong counts elements that differ from the
 * expected result of one checked call on known data after the timed ones (allreduce: the exact
 * sum; bcast: the root's data; allgather: every rank's block), summed over ranks.
 *
 *   mpicc.openmpi -O2 -o target/peers/mpi_bench.openmpi bench/peers/mpi_bench.c
 *   mpirun.openmpi --allow-run-as-root --oversubscribe -np 2 --mca pml ob1 --mca btl tcp,self \
 *       target/peers/mpi_bench.openmpi -c allreduce -b 1K -e 64M -f 4 -n 10 -w 2
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t parse_size(const char *s) {
    char *end;
    size_t n = strtoull(s, &end, 10);
    switch (*end) {
    case 'K': case 'k': return n << 10;
    case 'M': case 'm': return n << 20;
    case 'G': case 'g': return n << 30;
    default: return n;
    }
}

static float value(int rank, size_t i) { return (float)((rank * 7 + i) % 13); }

enum coll { ALLREDUCE, BCAST, ALLGATHER };

/* One call: allreduce and bcast in place on buf (count elements); allgather from buf (count)
 * into recv (n * count). */
static void call(enum coll c, float *buf, float *recv, size_t count) {
    switch (c) {
    case ALLREDUCE:
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        break;
    case BCAST:
        MPI_Bcast(buf, (int)count, MPI_FLOAT, 0, MPI_COMM_WORLD);
        break;
    case ALLGATHER:
        MPI_Allgather(buf, (int)count, MPI_FLOAT, recv, (int)count, MPI_FLOAT, MPI_COMM_WORLD);
        break;
    }
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    size_t min_bytes = 1024, max_bytes = 64u << 20, factor = 4;
    int iters = 10, warmup = 2;
    enum coll c = ALLREDUCE;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "-b")) min_bytes = parse_size(v);
        else if (!strcmp(k, "-e")) max_bytes = parse_size(v);
        else if (!strcmp(k, "-f")) factor = strtoull(v, NULL, 10);
        else if (!strcmp(k, "-n")) iters = atoi(v);
        else if (!strcmp(k, "-w")) warmup = atoi(v);
        else if (!strcmp(k, "-c") && !strcmp(v, "allreduce")) c = ALLREDUCE;
        else if (!strcmp(k, "-c") && !strcmp(v, "bcast")) c = BCAST;
        else if (!strcmp(k, "-c") && !strcmp(v, "allgather")) c = ALLGATHER;
        else {
            if (rank == 0) fprintf(stderr, "mpi_bench: unknown option %s %s (-c: allreduce, bcast, allgather)\n", k, v);
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
    }
    if (factor < 2 || iters < 1 || min_bytes > max_bytes) {
        if (rank == 0) fprintf(stderr, "mpi_bench: need -f >= 2, -n >= 1, -b <= -e\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    static const char *names[] = {"MPI_Allreduce", "MPI_Bcast", "MPI_Allgather"};
    static const char *redops[] = {"sum", "none", "none"};
    double bus = c == ALLREDUCE ? 2.0 * (n - 1) / n : c == BCAST ? 1.0 : (double)(n - 1) / n;
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len;
    MPI_Get_library_version(version, &len);
    char *nl = strchr(version, '\n');
    if (nl) *nl = 0;
    if (rank == 0) {
        printf("# mpi_bench: %s on %d ranks, f32, %s%s; %d iters, %d warmup; busbw = algbw x %.3f; %s\n",
               names[c], n, redops[c], c == BCAST ? ", root 0" : "", iters, warmup, bus, version);
        printf("%12s %12s %6s %6s %12s %10s %10s %8s\n", "size(B)", "count", "type", "redop",
               "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong");
        fflush(stdout);
    }
    size_t start = min_bytes > 4u * n ? min_bytes : 4u * n;
    for (size_t bytes = start; bytes <= max_bytes; bytes *= factor) {
        /* count: elements of buf (allgather: per rank, the printed count); size: the row's S. */
        size_t count = c == ALLGATHER ? bytes / 4 / n : bytes / 4;
        size_t size = c == ALLGATHER ? count * n * 4 : count * 4;
        size_t recv_len = c == ALLGATHER ? count * n : 0;
        float *buf = malloc(count * sizeof(float));
        float *recv = recv_len ? malloc(recv_len * sizeof(float)) : NULL;
        if (!buf || (recv_len && !recv)) MPI_Abort(MPI_COMM_WORLD, 3);
        for (size_t i = 0; i < count; i++) buf[i] = c == ALLREDUCE ? 1.0f : 0.0f;
        for (size_t i = 0; i < recv_len; i++) recv[i] = 0.0f;
        for (int i = 0; i < warmup; i++) call(c, buf, recv, count);
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        for (int i = 0; i < iters; i++) call(c, buf, recv, count);
        double mine = (MPI_Wtime() - t0) / iters, secs = 0;
        MPI_Reduce(&mine, &secs, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
        secs /= n;
        /* The checked call on known data: element i of rank r is value(r, i). */
        for (size_t i = 0; i < count; i++) buf[i] = c == BCAST && rank != 0 ? 0.0f : value(rank, i);
        for (size_t i = 0; i < recv_len; i++) recv[i] = 0.0f;
        call(c, buf, recv, count);
        long wrong = 0, total = 0;
        if (c == ALLREDUCE) {
            for (size_t i = 0; i < count; i++) {
                float expect = 0;
                for (int r = 0; r < n; r++) expect += value(r, i);
                wrong += buf[i] != expect;
            }
        } else if (c == BCAST) {
            for (size_t i = 0; i < count; i++) wrong += buf[i] != value(0, i);
        } else {
            for (int r = 0; r < n; r++)
                for (size_t i = 0; i < count; i++) wrong += recv[r * count + i] != value(r, i);
        }
        MPI_Reduce(&wrong, &total, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
        if (rank == 0) {
            double algbw = size / secs / 1e9;
            printf("%12zu %12zu %6s %6s %12.1f %10.3f %10.3f %8ld\n", size, count, "f32",
                   redops[c], secs * 1e6, algbw, algbw * bus, total);
            fflush(stdout);
        }
        free(buf);
        free(recv);
    }
    MPI_Finalize();
    return 0;
}
