/* The peer side of `tutti bench --op all-reduce`: MPI_Allreduce of f32 sum, timed the same way
 * (warm-up calls, a barrier, timed calls, the mean per call averaged over ranks) and printed in
 * the same columns, so the two tables can be read side by side.
 *
 *   mpicc -O2 -o /tmp/mpi_allreduce scripts/peers/mpi_allreduce.c
 *   mpirun --allow-run-as-root --oversubscribe -np 2 --mca btl tcp,self /tmp/mpi_allreduce 64M 10
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

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    size_t bytes = argc > 1 ? parse_size(argv[1]) : (64u << 20);
    int iters = argc > 2 ? atoi(argv[2]) : 10;
    int warmup = 2;
    size_t count = bytes / 4 / n * n;
    float *buf = malloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++) buf[i] = 1.0f;
    for (int i = 0; i < warmup; i++)
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++)
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    double mine = (MPI_Wtime() - t0) / iters, secs;
    MPI_Allreduce(&mine, &secs, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    secs /= n;
    /* Check once on known data: every element must be n. */
    for (size_t i = 0; i < count; i++) buf[i] = 1.0f;
    MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    long wrong = 0, total;
    for (size_t i = 0; i < count; i++) wrong += buf[i] != (float)n;
    MPI_Allreduce(&wrong, &total, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) {
        double algbw = count * 4.0 / secs / 1e9;
        printf("# MPI_Allreduce on %d ranks, f32, sum; %d iters, %d warmup\n", n, iters, warmup);
        printf("%12zu %12zu %6s %6s %12.1f %10.3f %10.3f %8ld\n", count * 4, count, "f32", "sum",
               secs * 1e6, algbw, algbw * 2.0 * (n - 1) / n, total);
    }
    free(buf);
    MPI_Finalize();
    return 0;
}
