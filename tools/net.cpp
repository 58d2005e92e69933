#include "tools/net.hpp"

#include <fmt/format.h>
#include <netdb.h>
#include <poll.h>
#include <time.h>

#include <cstring>
#include <stdexcept>

#include "policy/net.hpp"

namespace tcpfix::tools {

std::int64_t mono_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

std::vector<Address> resolve(const std::string& host, std::uint16_t port, int family) {
    addrinfo hints{};
    hints.ai_family = family;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
    addrinfo* list = nullptr;
    auto service = std::to_string(port);
    int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &list);
    if (rc == EAI_NONAME || rc == EAI_ADDRFAMILY || rc == EAI_NODATA) {
        // AI_ADDRCONFIG hides ::1 on a host whose only IPv6 address is loopback.
        hints.ai_flags = AI_NUMERICSERV;
        rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &list);
    }
    if (rc != 0)
        throw std::runtime_error(
            fmt::format("cannot resolve {}: {}", host,
                        rc == EAI_SYSTEM ? std::strerror(errno) : gai_strerror(rc)));
    std::vector<Address> out;
    for (auto* ai = list; ai != nullptr; ai = ai->ai_next) {
        auto ep = policy::endpoint_from_sockaddr(ai->ai_addr, ai->ai_addrlen);
        if (!ep || ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
        Address a;
        std::memcpy(&a.storage, ai->ai_addr, ai->ai_addrlen);
        a.length = ai->ai_addrlen;
        a.text = policy::to_string(*ep);
        bool seen = false;
        for (const auto& b : out) seen = seen || b.text == a.text;
        if (!seen) out.push_back(std::move(a));
    }
    freeaddrinfo(list);
    if (out.empty()) throw std::runtime_error(fmt::format("cannot resolve {}: no address", host));
    return out;
}

int wait_fd(int fd, short events, std::int64_t deadline_ns, int stop_fd) {
    pollfd fds[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
    while (true) {
        auto left = deadline_ns - mono_ns();
        if (left <= 0) return ETIMEDOUT;
        timespec ts{left / 1'000'000'000, left % 1'000'000'000};
        int n = ppoll(fds, stop_fd >= 0 ? 2 : 1, &ts, nullptr);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw_errno("ppoll");
        if (n == 0) continue;  // re-check the clock: ppoll may wake a little early
        if (stop_fd >= 0 && fds[1].revents != 0) return EINTR;
        return 0;
    }
}

ConnectResult timed_connect(const Address& to, std::int64_t deadline_ns, int stop_fd) {
    ConnectResult r;
    auto start = mono_ns();
    auto finish = [&](int err) {
        r.err = err;
        r.latency_ns = mono_ns() - start;
        return std::move(r);
    };
    r.fd.reset(::socket(to.storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!r.fd) return finish(errno);
    start = mono_ns();
    if (::connect(r.fd.get(), to.sa(), to.length) == 0) return finish(0);
    if (errno != EINPROGRESS) return finish(errno);
    if (int err = wait_fd(r.fd.get(), POLLOUT, deadline_ns, stop_fd); err != 0) return finish(err);
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(r.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    return finish(err);
}

void close_rst(Fd fd) {
    if (!fd) return;
    linger lg{1, 0};
    // Best effort: if it fails the close is merely graceful.
    (void)setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    fd.reset();
}

}  // namespace tcpfix::tools
