// What probe and churn share: name resolution, a connect bounded by a
// deadline, and the two ways to close.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tools/fd.hpp"

namespace tcpfix::tools {

// CLOCK_MONOTONIC in nanoseconds.
std::int64_t mono_ns();

// One resolved destination.
struct Address {
    sockaddr_storage storage{};
    socklen_t length = 0;
    std::string text;  // "127.0.0.1:5432", "[::1]:6379"

    const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

// getaddrinfo for TCP, numeric or by name, IPv4 and IPv6 in the resolver's
// order; `family` is AF_UNSPEC, AF_INET or AF_INET6. Throws std::runtime_error
// naming the host when nothing resolves.
std::vector<Address> resolve(const std::string& host, std::uint16_t port, int family);

// The fate of one connect attempt. err is 0 when the handshake completed,
// else the errno: ETIMEDOUT when the deadline passed first, EINTR when
// `stop_fd` became readable first.
struct ConnectResult {
    int err = 0;
    std::int64_t latency_ns = 0;  // from just before connect() to the verdict
    Fd fd;                        // the socket (non-blocking), open even on failure
};

// Non-blocking socket + connect + poll until `deadline_ns` (mono_ns clock),
// then SO_ERROR. Failures of the attempt are results, not exceptions; only a
// failure of poll() itself throws.
ConnectResult timed_connect(const Address& to, std::int64_t deadline_ns, int stop_fd);

// Waits until `fd` is ready for `events` or the deadline passes. Returns 0
// when ready, ETIMEDOUT, or EINTR when `stop_fd` (may be -1) became readable.
int wait_fd(int fd, short events, std::int64_t deadline_ns, int stop_fd);

// Closes with SO_LINGER {1, 0}: the kernel sends RST and keeps no TIME_WAIT.
void close_rst(Fd fd);

}  // namespace tcpfix::tools
