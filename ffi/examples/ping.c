/* ping: a channel, a child process, and bytes round-tripped through it.
 *
 *   ping                 spawns itself as the echo child
 *   ping --child PROG... spawns PROG (any program that echoes what it receives on
 *                        the port from shmport_port_from_parent: this one's `echo`
 *                        mode, or the Rust example rust_echo)
 *   ping echo            the child: echoes every message until the port closes
 */
#include <stdint.h>
#include <sys/wait.h>

#include "common.h"

#define ROUNDS 1000

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
    /* A message larger than the buffer is kept: TOO_SMALL says how large it is. */
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

    shmport_port_close(mine);
    shmport_port_free(mine);
    int wstatus = 0;
    if (waitpid(pid, &wstatus, 0) != pid || !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
        fprintf(stderr, "child failed (status %d)\n", wstatus);
        return 1;
    }
    printf("ping: %d round trips ok\n", ROUNDS);
    return 0;
}
