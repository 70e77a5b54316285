/* frame_loop: an engine's main loop. Each frame it posts one fixed-size job to a
 * worker process without blocking (shmport_port_try_post_bytes), then polls the
 * port's readiness descriptor with a zero timeout and drains whatever results are
 * waiting (shmport_port_recv_bytes with timeout 0), never waiting in the frame.
 *
 *   frame_loop           the engine (spawns itself as the worker)
 *   frame_loop worker    the worker: answers each job with its result frame
 */
#include <poll.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>

#include "common.h"

#define FRAMES 300

typedef struct {
    uint32_t frame;
    float samples[64];
} job_t;

typedef struct {
    uint32_t frame;
    float sum;
} result_t;

static int worker(void) {
    shmport_port *port = NULL;
    CHECK(shmport_port_from_parent(&port));
    job_t job;
    size_t len = 0;
    for (;;) {
        int status = shmport_port_recv_bytes(port, &job, sizeof job, &len, -1);
        if (status == SHMPORT_CLOSED) break;
        CHECK(status);
        if (len != sizeof job) return 1;
        result_t r = {job.frame, 0.0f};
        for (int i = 0; i < 64; i++) r.sum += job.samples[i];
        CHECK(shmport_port_post_bytes(port, &r, sizeof r));
    }
    shmport_port_free(port);
    return 0;
}

/* Takes every result waiting now; returns how many. */
static int drain(shmport_port *port, uint32_t *next_expected) {
    int got = 0;
    for (;;) {
        result_t r;
        size_t len = 0;
        int status = shmport_port_recv_bytes(port, &r, sizeof r, &len, 0);
        if (status == SHMPORT_TIMEOUT) return got;
        CHECK(status);
        float want = 0.0f;
        for (int i = 0; i < 64; i++) want += (float)(r.frame + (uint32_t)i);
        if (len != sizeof r || r.frame != *next_expected || r.sum != want) {
            fprintf(stderr, "bad result for frame %u (expected frame %u)\n", r.frame, *next_expected);
            exit(1);
        }
        (*next_expected)++;
        got++;
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "worker") == 0) return worker();

    shmport_port *engine = NULL, *to_worker = NULL;
    CHECK(shmport_channel_new(&engine, &to_worker));
    char *child_argv[] = {argv[0], "worker", NULL};
    pid_t pid = spawn_with_port(to_worker, child_argv);
    shmport_port_free(to_worker);

    struct pollfd pfd = {.fd = shmport_port_fd(engine), .events = POLLIN};
    if (pfd.fd < 0) {
        fprintf(stderr, "shmport_port_fd: %s\n", shmport_last_error());
        return 1;
    }
    uint32_t posted = 0, received = 0, skipped = 0;
    for (uint32_t frame = 0; frame < FRAMES; frame++) {
        job_t job = {.frame = posted};
        for (int i = 0; i < 64; i++) job.samples[i] = (float)(posted + (uint32_t)i);
        int status = shmport_port_try_post_bytes(engine, &job, sizeof job);
        if (status == SHMPORT_OK) posted++;
        else if (status == SHMPORT_FULL) skipped++; /* the worker is behind: next frame */
        else CHECK(status);

        if (poll(&pfd, 1, 0) < 0) return 1; /* never waits */
        if (pfd.revents & POLLIN) drain(engine, &received);

        struct timespec tick = {0, 1000000}; /* the rest of the frame's work */
        nanosleep(&tick, NULL);
    }
    /* After the last frame: wait (poll with a timeout) for the results still owed. */
    for (int tries = 0; received < posted && tries < 10000; tries++) {
        if (poll(&pfd, 1, 1) < 0) return 1;
        if (pfd.revents & POLLIN) drain(engine, &received);
    }
    shmport_port_close(engine);
    shmport_port_free(engine);
    int wstatus = 0;
    if (waitpid(pid, &wstatus, 0) != pid || !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) return 1;
    if (received != posted) {
        fprintf(stderr, "posted %u jobs, got %u results\n", posted, received);
        return 1;
    }
    printf("frame_loop: %u frames, %u jobs, %u results, %u skipped\n", FRAMES, posted, received, skipped);
    return 0;
}
