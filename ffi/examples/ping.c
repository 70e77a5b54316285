/* ping: a channel, a child process, and bytes round-tripped through it.
 *
 *   ping                 spawns itself as the echo child
 *   ping --child PROG... spawns PROG (any program that echoes what it receives on
 *                        the port from shmport_port_from_parent: this one's `echo`
 *                        mode, or the Rust example rust_echo)
 *   ping echo            the child: echoes every message until the port closes
 *
 * After the bytes, a buffer: the message "buffer" announces one, which the echo
 * receives as a shmport_buffer, adds 1 to each byte of in place, and transfers back.
 */
#include <stdint.h>
#include <sys/wait.h>

#include "common.h"

#define ROUNDS 1000
#define BUFFER_LEN (1 << 20)

static void add_one(void *ctx, uint8_t *bytes, size_t len) {
    (void)ctx;
    for (size_t i = 0; i < len; i++) bytes[i]++;
}

static int echo(void) {
    shmport_port *port = NULL;
    CHECK(shmport_port_from_parent(&port));
    unsigned char buf[256];
    size_t len = 0;
    size_t echoed = 0;
    for (;;) {
        int status = shmport_port_recv_bytes(port, buf, sizeof buf, &len, -1);
        if (status == SHMPORT_CLOSED) break;
        CHECK(status);
        if (len == 6 && memcmp(buf, "buffer", 6) == 0) {
            shmport_buffer *b = NULL;
            CHECK(shmport_port_recv_buffer(port, &b, -1));
            CHECK(shmport_buffer_map(b, add_one, NULL));
            CHECK(shmport_port_post_buffer(port, b));
            shmport_buffer_free(b);
            continue;
        }
        CHECK(shmport_port_post_bytes(port, buf, len));
        echoed++;
    }
    shmport_port_free(port);
    fprintf(stderr, "echo: %zu messages\n", echoed);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "echo") == 0) return echo();

    shmport_port *mine = NULL, *theirs = NULL;
    CHECK(shmport_channel_new(&mine, &theirs));
    char *self_argv[] = {argv[0], "echo", NULL};
    char *const *child_argv = self_argv;
    if (argc >= 3 && strcmp(argv[1], "--child") == 0) child_argv = argv + 2;
    pid_t pid = spawn_with_port(theirs, child_argv);
    shmport_port_free(theirs); /* detached by the handoff: only the handle is left */

    for (uint32_t i = 0; i < ROUNDS; i++) {
        unsigned char msg[64];
        for (size_t j = 0; j < sizeof msg; j++) msg[j] = (unsigned char)(i + j);
        size_t n = 1 + i % sizeof msg;
        CHECK(shmport_port_post_bytes(mine, msg, n));
        unsigned char back[64];
        size_t len = 0;
        CHECK(shmport_port_recv_bytes(mine, back, sizeof back, &len, 10000));
        if (len != n || memcmp(back, msg, n) != 0) {
            fprintf(stderr, "round %u: got %zu bytes, wanted %zu\n", i, len, n);
            return 1;
        }
    }
    /* A message larger than the buffer stays queued: TOO_SMALL says how large it is. */
    unsigned char big[100] = {7};
    CHECK(shmport_port_post_bytes(mine, big, sizeof big));
    unsigned char small[8];
    size_t len = 0;
    int status = shmport_port_recv_bytes(mine, small, sizeof small, &len, 10000);
    if (status != SHMPORT_TOO_SMALL || len != sizeof big) {
        fprintf(stderr, "too small: status %d len %zu\n", status, len);
        return 1;
    }
    unsigned char *grown = malloc(len);
    CHECK(shmport_port_recv_bytes(mine, grown, len, &len, 0));
    if (len != sizeof big || grown[0] != 7) return 1;
    free(grown);

    /* A buffer there and back: transferred both ways, changed in place by the child. */
    shmport_buffer *out = NULL;
    CHECK(shmport_buffer_new(BUFFER_LEN, &out));
    uint8_t pattern[256];
    for (size_t i = 0; i < sizeof pattern; i++) pattern[i] = (uint8_t)i;
    for (size_t at = 0; at < BUFFER_LEN; at += sizeof pattern) CHECK(shmport_buffer_write(out, at, pattern, sizeof pattern));
    CHECK(shmport_port_post_bytes(mine, "buffer", 6));
    CHECK(shmport_port_post_buffer(mine, out));
    if (shmport_buffer_len(out) != 0) return 1; /* detached by the transfer */
    shmport_buffer_free(out);
    shmport_buffer *back = NULL;
    CHECK(shmport_port_recv_buffer(mine, &back, 10000));
    if (shmport_buffer_len(back) != BUFFER_LEN) return 1;
    uint8_t tail[256];
    CHECK(shmport_buffer_read(back, BUFFER_LEN - sizeof tail, tail, sizeof tail));
    for (size_t i = 0; i < sizeof tail; i++) {
        if (tail[i] != (uint8_t)(i + 1)) {
            fprintf(stderr, "buffer byte %zu: %u\n", i, tail[i]);
            return 1;
        }
    }
    shmport_buffer_free(back);

    shmport_port_close(mine);
    shmport_port_free(mine);
    int wstatus = 0;
    if (waitpid(pid, &wstatus, 0) != pid || !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
        fprintf(stderr, "child failed (status %d)\n", wstatus);
        return 1;
    }
    printf("ping: %d round trips ok, and a %d-byte buffer there and back\n", ROUNDS, BUFFER_LEN);
    return 0;
}
