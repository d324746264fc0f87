/* 8-byte TCP ping-pong on loopback, a limit printed beside bench/compare's results: a child
 * process echoes what the parent sends over one 127.0.0.1 connection with TCP_NODELAY on both
 * ends; the parent times N round trips (default 20000, after 1000 untimed ones) one by one and
 * prints the median and the 1st and 99th percentiles in microseconds.
 *
 *   cc -O2 -o target/peers/tcp_pingpong bench/peers/tcp_pingpong.c && target/peers/tcp_pingpong
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MSG 8

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int full(int fd, char *buf, int send_it) {
    int done = 0;
    while (done < MSG) {
        ssize_t k = send_it ? send(fd, buf + done, MSG - done, 0) : recv(fd, buf + done, MSG - done, 0);
        if (k <= 0) return -1;
        done += (int)k;
    }
    return 0;
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 20000, warm = 1000;
    if (n < 1) return 1;
    int lst = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (bind(lst, (struct sockaddr *)&a, sizeof a) || listen(lst, 1) ||
        getsockname(lst, (struct sockaddr *)&a, &alen)) {
        perror("tcp_pingpong: listen");
        return 1;
    }
    pid_t child = fork();
    if (child == 0) { /* the echo side: exactly warm + n round trips, then exit */
        int fd = accept(lst, NULL, NULL);
        char buf[MSG];
        nodelay(fd);
        for (int i = 0; i < warm + n; i++)
            if (full(fd, buf, 0) || full(fd, buf, 1)) _exit(1);
        _exit(0);
    }
    close(lst);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        perror("tcp_pingpong: connect");
        return 1;
    }
    nodelay(fd);
    char buf[MSG] = "pingpong";
    double *rtt = malloc(n * sizeof *rtt);
    for (int i = 0; i < warm + n; i++) {
        double t0 = now();
        if (full(fd, buf, 1) || full(fd, buf, 0)) {
            fprintf(stderr, "tcp_pingpong: connection lost\n");
            return 1;
        }
        if (i >= warm) rtt[i - warm] = now() - t0;
    }
    close(fd);
    waitpid(child, NULL, 0);
    qsort(rtt, n, sizeof *rtt, cmp);
    printf("tcp ping-pong 8 B, %d round trips: median %.1f us, p1 %.1f us, p99 %.1f us\n", n,
           rtt[n / 2] * 1e6, rtt[n / 100] * 1e6, rtt[n * 99 / 100] * 1e6);
    free(rtt);
    return 0;
}
