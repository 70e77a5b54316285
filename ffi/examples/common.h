/* Helpers the C examples share: fail loudly, and spawn a child that gets a port. */
#ifndef SHMPORT_EXAMPLES_COMMON_H
#define SHMPORT_EXAMPLES_COMMON_H

#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "shmport.h"

extern char **environ;

#define CHECK(call)                                                                  \
    do {                                                                             \
        int check_status_ = (call);                                                  \
        if (check_status_ != SHMPORT_OK) {                                           \
            fprintf(stderr, "%s:%d: %s = %d: %s\n", __FILE__, __LINE__, #call,       \
                    check_status_, shmport_last_error());                            \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

/* Spawns argv[0] with argv, handing it `port` (detached here): posix_spawn with the
 * handoff descriptor dup2'd onto itself (which clears close-on-exec in the child only)
 * and SHMPORT_PARENT added to a copy of this process's environment. */
static pid_t spawn_with_port(shmport_port *port, char *const argv[]) {
    int fd = -1;
    char value[SHMPORT_PARENT_ENV_CAPACITY];
    CHECK(shmport_port_transfer_to_child(port, &fd, value, sizeof value));

    size_t n = 0;
    while (environ[n] != NULL) n++;
    char **envp = calloc(n + 2, sizeof *envp);
    const char *name = shmport_parent_env_name();
    size_t name_len = strlen(name);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        /* An inherited SHMPORT_PARENT is not ours to pass on. */
        if (strncmp(environ[i], name, name_len) == 0 && environ[i][name_len] == '=') continue;
        envp[k++] = environ[i];
    }
    char entry[64];
    snprintf(entry, sizeof entry, "%s=%s", name, value);
    envp[k++] = entry;
    envp[k] = NULL;

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fd, fd);
    pid_t pid = -1;
    int err = posix_spawn(&pid, argv[0], &actions, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&actions);
    free(envp);
    close(fd); /* the child holds the port now */
    if (err != 0) {
        fprintf(stderr, "posix_spawn %s: %s\n", argv[0], strerror(err));
        exit(1);
    }
    return pid;
}

#endif
