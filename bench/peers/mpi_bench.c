/* The MPI side of bench/compare: MPI_Allreduce of f32 sum over a range of sizes, timed as
 * `tutti bench` times it (warm-up calls, a barrier, timed calls; time = mean per call, averaged
 * over ranks with MPI_Reduce), one row per size in the same columns:
 *
 *   size(B) count type redop time(us) algbw(GB/s) busbw(GB/s) #wrong
 *
 * Sizes follow tutti bench: start at max(B, 4 * ranks), multiply by F up to E; each row holds
 * count = size / 4 / ranks * ranks elements. #wrong counts elements that differ from the exact
 * sum of one checked call on known data after the timed ones, summed over ranks.
 *
 *   mpicc.openmpi -O2 -o target/peers/mpi_bench.openmpi bench/peers/mpi_bench.c
 *   mpirun.openmpi --allow-run-as-root --oversubscribe -np 2 --mca pml ob1 --mca btl tcp,self \
 *       target/peers/mpi_bench.openmpi -b 1K -e 64M -f 4 -n 10 -w 2
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

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    size_t min_bytes = 1024, max_bytes = 64u << 20, factor = 4;
    int iters = 10, warmup = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "-b")) min_bytes = parse_size(v);
        else if (!strcmp(k, "-e")) max_bytes = parse_size(v);
        else if (!strcmp(k, "-f")) factor = strtoull(v, NULL, 10);
        else if (!strcmp(k, "-n")) iters = atoi(v);
        else if (!strcmp(k, "-w")) warmup = atoi(v);
        else {
            if (rank == 0) fprintf(stderr, "mpi_bench: unknown option %s\n", k);
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
    }
    if (factor < 2 || iters < 1 || min_bytes > max_bytes) {
        if (rank == 0) fprintf(stderr, "mpi_bench: need -f >= 2, -n >= 1, -b <= -e\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len;
    MPI_Get_library_version(version, &len);
    char *nl = strchr(version, '\n');
    if (nl) *nl = 0;
    if (rank == 0) {
        printf("# mpi_bench: MPI_Allreduce on %d ranks, f32, sum; %d iters, %d warmup; %s\n", n,
               iters, warmup, version);
        printf("%12s %12s %6s %6s %12s %10s %10s %8s\n", "size(B)", "count", "type", "redop",
               "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong");
        fflush(stdout);
    }
    size_t start = min_bytes > 4u * n ? min_bytes : 4u * n;
    for (size_t bytes = start; bytes <= max_bytes; bytes *= factor) {
        size_t count = bytes / 4 / n * n;
        float *buf = malloc(count * sizeof(float));
        if (!buf) MPI_Abort(MPI_COMM_WORLD, 3);
        for (size_t i = 0; i < count; i++) buf[i] = 1.0f;
        for (int i = 0; i < warmup; i++)
            MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        for (int i = 0; i < iters; i++)
            MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        double mine = (MPI_Wtime() - t0) / iters, secs = 0;
        MPI_Reduce(&mine, &secs, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
        secs /= n;
        for (size_t i = 0; i < count; i++) buf[i] = value(rank, i);
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        long wrong = 0, total = 0;
        for (size_t i = 0; i < count; i++) {
            float expect = 0;
            for (int r = 0; r < n; r++) expect += value(r, i);
            wrong += buf[i] != expect;
        }
        MPI_Reduce(&wrong, &total, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
        if (rank == 0) {
            double algbw = count * 4.0 / secs / 1e9;
            printf("%12zu %12zu %6s %6s %12.1f %10.3f %10.3f %8ld\n", count * 4, count, "f32",
                   "sum", secs * 1e6, algbw, algbw * 2.0 * (n - 1) / n, total);
            fflush(stdout);
        }
        free(buf);
    }
    MPI_Finalize();
    return 0;
}
