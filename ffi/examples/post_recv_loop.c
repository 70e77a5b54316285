/* post_recv_loop: N times 64 B shmport_port_post_bytes + shmport_port_recv_bytes on one
 * channel in one process, for callgrind to count the C API's instructions beside
 * examples/post_recv_loop.rs (BENCHMARKS.md, "From C").
 *   post_recv_loop [N]   (default 10000)
 */
#include <stdio.h>
#include <stdlib.h>
#include "shmport.h"
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10000;
    shmport_port *a, *b;
    if (shmport_channel_new(&a, &b)) return 1;
    unsigned char msg[64] = {1}, back[64];
    size_t len;
    for (long i = 0; i < n; i++) {
        if (shmport_port_post_bytes(a, msg, sizeof msg)) return 2;
        if (shmport_port_recv_bytes(b, back, sizeof back, &len, -1)) return 3;
    }
    shmport_port_free(a); shmport_port_free(b);
    return 0;
}
