/* rtt: the C API's 64-byte round trip to a C echo child, timed, to set beside the Rust
 * `cargo run --release --example ping_pong` figures (the boundary should add nothing
 * measurable). Prints the median and the 99th percentile.
 *
 *   rtt [ROUNDS]   (default 100000)
 *   rtt echo       the child
 */
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>

#include "common.h"

static int echo(void) {
    shmport_port *port = NULL;
    CHECK(shmport_port_from_parent(&port));
    unsigned char buf[64];
    size_t len = 0;
    for (;;) {
        int status = shmport_port_recv_bytes(port, buf, sizeof buf, &len, -1);
        if (status == SHMPORT_CLOSED) break;
        CHECK(status);
        CHECK(shmport_port_post_bytes(port, buf, len));
    }
    shmport_port_free(port);
    return 0;
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "echo") == 0) return echo();
    long rounds = argc == 2 ? atol(argv[1]) : 100000;
    if (rounds <= 0) return 2;
    shmport_port *mine = NULL, *theirs = NULL;
    CHECK(shmport_channel_new(&mine, &theirs));
    char *child_argv[] = {argv[0], "echo", NULL};
    pid_t pid = spawn_with_port(theirs, child_argv);
    shmport_port_free(theirs);
    uint64_t *samples = malloc((size_t)rounds * sizeof *samples);
    unsigned char msg[64] = {1}, back[64];
    size_t len = 0;
    for (long i = 0; i < rounds / 10; i++) { /* warm up */
        CHECK(shmport_port_post_bytes(mine, msg, sizeof msg));
        CHECK(shmport_port_recv_bytes(mine, back, sizeof back, &len, -1));
    }
    for (long i = 0; i < rounds; i++) {
        uint64_t t0 = now_ns();
        CHECK(shmport_port_post_bytes(mine, msg, sizeof msg));
        CHECK(shmport_port_recv_bytes(mine, back, sizeof back, &len, -1));
        samples[i] = now_ns() - t0;
    }
    qsort(samples, (size_t)rounds, sizeof *samples, cmp);
    printf("rtt: %ld round trips of 64 B from C: median %llu ns, p99 %llu ns\n", rounds,
           (unsigned long long)samples[rounds / 2], (unsigned long long)samples[rounds * 99 / 100]);
    free(samples);
    shmport_port_close(mine);
    shmport_port_free(mine);
    int wstatus = 0;
    return waitpid(pid, &wstatus, 0) == pid && WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0 ? 0 : 1;
}
