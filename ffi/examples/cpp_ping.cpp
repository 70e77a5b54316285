// cpp_ping: the C++ wrappers (shmport.hpp). A thread echoes over an in-process
// channel, then a child made with fork/exec echoes over a handed-down port.
//
//   cpp_ping        the parent
//   cpp_ping echo   the child
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

extern char **environ;

#include "shmport.hpp"

static void echo_all(shmport::Port &port) {
    while (auto msg = port.recv()) port.post(msg->data(), msg->size());
}

static void round_trips(shmport::Port &port, int rounds, const char *who) {
    for (int i = 0; i < rounds; i++) {
        std::string msg = std::string(who) + " " + std::to_string(i) + std::string(i % 300, 'x');
        port.post(msg.data(), msg.size());
        auto back = port.recv(10000);
        if (!back || std::string(back->begin(), back->end()) != msg) {
            std::fprintf(stderr, "%s: round %d failed\n", who, i);
            std::exit(1);
        }
    }
}

int main(int argc, char **argv) try {
    if (argc == 2 && std::strcmp(argv[1], "echo") == 0) {
        auto port = shmport::Port::from_parent();
        echo_all(port);
        return 0;
    }

    {
        auto [mine, theirs] = shmport::Port::channel();
        std::thread t([p = std::move(theirs)]() mutable { echo_all(p); });
        round_trips(mine, 500, "thread");
        mine.close();
        t.join();
    }

    auto [mine, theirs] = shmport::Port::channel();
    shmport::Handoff h = theirs.transfer_to_child();
    // The child's environment is made before fork: between fork and exec a child of a
    // threaded process may only make async-signal-safe calls (fcntl, execve).
    std::string entry = h.env_name + "=" + h.env_value;
    std::vector<char *> envp;
    for (char **e = environ; *e != nullptr; e++) {
        if (std::strncmp(*e, entry.c_str(), h.env_name.size() + 1) != 0) envp.push_back(*e);
    }
    envp.push_back(entry.data());
    envp.push_back(nullptr);
    char echo_arg[] = "echo";
    char *child_argv[] = {argv[0], echo_arg, nullptr};
    pid_t pid = fork();
    if (pid == 0) {
        // In the child only: inherit the descriptor, exec.
        fcntl(h.fd, F_SETFD, 0);
        execve(argv[0], child_argv, envp.data());
        _exit(127);
    }
    close(h.fd);
    round_trips(mine, 500, "child");
    mine.close();
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;

    // A handle moved from is empty: the C API refuses it cleanly.
    shmport::Port empty = std::move(mine);
    try {
        mine.post("x", 1);
        return 1;
    } catch (const shmport::Error &e) {
        if (e.status() != SHMPORT_NULL) return 1;
    }
    std::printf("cpp_ping: thread and child round trips ok\n");
    return 0;
} catch (const shmport::Error &e) {
    std::fprintf(stderr, "shmport error %d: %s\n", e.status(), e.what());
    return 1;
}
