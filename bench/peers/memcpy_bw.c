/* Single-thread memcpy bandwidth, a limit printed beside bench/compare's results: copies a
 * buffer of S bytes (default 64 MiB) into another, R times (default 10), and prints the best
 * time as GB/s (GB = 1e9, counting the bytes copied once).
 *
 *   cc -O2 -o target/peers/memcpy_bw bench/peers/memcpy_bw.c && target/peers/memcpy_bw 64 10
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 64;
    int reps = argc > 2 ? atoi(argv[2]) : 10;
    size_t bytes = mib << 20;
    char *src = malloc(bytes), *dst = malloc(bytes);
    if (!src || !dst || reps < 1) return 1;
    memset(src, 1, bytes); /* touch every page before timing */
    memset(dst, 2, bytes);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        src[r % bytes] = (char)r;
        double t0 = now();
        memcpy(dst, src, bytes);
        double t = now() - t0;
        if (t < best) best = t;
    }
    volatile char sink = dst[reps % bytes]; /* keep the copies */
    (void)sink;
    printf("memcpy %zu MiB best of %d: %.2f GB/s\n", mib, reps, bytes / best / 1e9);
    free(src);
    free(dst);
    return 0;
}
