// shmport.hpp: header-only C++17 RAII wrappers over the C API in shmport.h.
//
// shmport::Port owns one shmport_port handle (move-only; freed by its destructor).
// Failures throw shmport::Error, carrying the status and shmport_last_error()'s
// message; the expected outcomes of a non-blocking call are return values instead:
// try_post returns false when the ring is full, recv an empty optional on timeout
// or once the port is closed (closed() then says which).
#ifndef SHMPORT_HPP
#define SHMPORT_HPP

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "shmport.h"

namespace shmport {

class Error : public std::runtime_error {
public:
    Error(int status, const char *what) : std::runtime_error(what), status_(status) {}
    int status() const noexcept { return status_; }

private:
    int status_;
};

inline void check(int status) {
    if (status != SHMPORT_OK) throw Error(status, shmport_last_error());
}

// The child's side of a handoff: the descriptor it must inherit under the same
// number, and the value of its SHMPORT_PARENT variable.
struct Handoff {
    int fd;
    std::string env_name;
    std::string env_value;
};

class Port {
public:
    Port() noexcept = default;
    explicit Port(shmport_port *raw) noexcept : raw_(raw) {}
    Port(const Port &) = delete;
    Port &operator=(const Port &) = delete;
    Port(Port &&other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
    Port &operator=(Port &&other) noexcept {
        if (this != &other) {
            shmport_port_free(raw_);
            raw_ = std::exchange(other.raw_, nullptr);
        }
        return *this;
    }
    ~Port() { shmport_port_free(raw_); }

    // A new channel's two ports.
    static std::pair<Port, Port> channel() {
        shmport_port *a = nullptr, *b = nullptr;
        check(shmport_channel_new(&a, &b));
        return {Port(a), Port(b)};
    }

    // The port the parent process handed down.
    static Port from_parent() {
        shmport_port *p = nullptr;
        check(shmport_port_from_parent(&p));
        return Port(p);
    }

    void post(const void *bytes, std::size_t len) { check(shmport_port_post_bytes(raw_, bytes, len)); }

    // False when the ring is full right now.
    bool try_post(const void *bytes, std::size_t len) {
        int status = shmport_port_try_post_bytes(raw_, bytes, len);
        if (status == SHMPORT_FULL) return false;
        check(status);
        return true;
    }

    // The next message (timeout_ms < 0: wait for ever, 0: only one already waiting);
    // empty on timeout or once closed.
    std::optional<std::vector<std::uint8_t>> recv(std::int32_t timeout_ms = -1) {
        std::vector<std::uint8_t> buf(256);
        for (;;) {
            std::size_t len = 0;
            int status = shmport_port_recv_bytes(raw_, buf.data(), buf.size(), &len, timeout_ms);
            if (status == SHMPORT_OK) {
                buf.resize(len);
                return buf;
            }
            if (status == SHMPORT_TOO_SMALL) { // kept: grow and take it
                buf.resize(len);
                timeout_ms = 0;
                continue;
            }
            if (status == SHMPORT_TIMEOUT) return std::nullopt;
            if (status == SHMPORT_CLOSED) {
                closed_ = true;
                return std::nullopt;
            }
            check(status);
        }
    }

    bool closed() const noexcept { return closed_; }

    // The readiness descriptor, for poll/epoll (owned by the port).
    int fd() const {
        int fd = shmport_port_fd(raw_);
        if (fd < 0) throw Error(SHMPORT_IO, shmport_last_error());
        return fd;
    }

    // Hands the port to a child about to be spawned (this Port is detached).
    Handoff transfer_to_child() {
        int fd = -1;
        char value[SHMPORT_PARENT_ENV_CAPACITY];
        check(shmport_port_transfer_to_child(raw_, &fd, value, sizeof value));
        return Handoff{fd, shmport_parent_env_name(), value};
    }

    void close() noexcept { shmport_port_close(raw_); }
    shmport_port *get() const noexcept { return raw_; }

private:
    shmport_port *raw_ = nullptr;
    bool closed_ = false;
};

} // namespace shmport

#endif
