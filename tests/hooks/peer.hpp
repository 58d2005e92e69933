// Test helpers: a loopback listener and the peer's view of how a connection ended.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace tcpfix::test {

inline void check(bool ok, const char* what) {
    if (!ok) throw std::runtime_error(std::string(what) + ": " + std::to_string(errno));
}

// How the peer saw the connection end.
enum class Ending { Fin, Rst, StillOpen };

inline const char* name(Ending e) {
    switch (e) {
        case Ending::Fin: return "FIN";
        case Ending::Rst: return "RST";
        case Ending::StillOpen: return "still open";
    }
    return "?";
}

// In a GoogleTest: the peer saw the connection end as expected (by name, so
// a failure reads "RST" and "FIN").
#define EXPECT_ENDING(view, expected) EXPECT_STREQ(name((view).ending), name(expected))

struct PeerView {
    Ending ending = Ending::StillOpen;
    std::size_t bytes = 0;
};

// Reads everything the peer gets until EOF, a reset, or `quiet_ms` without news.
inline PeerView read_until_end(int fd, int quiet_ms = 300) {
    PeerView view;
    char buf[65536];
    for (;;) {
        pollfd p{fd, POLLIN, 0};
        int r = poll(&p, 1, quiet_ms);
        if (r == 0) return view;
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n > 0) {
            view.bytes += static_cast<std::size_t>(n);
            continue;
        }
        view.ending = n == 0 ? Ending::Fin : (errno == ECONNRESET ? Ending::Rst : Ending::StillOpen);
        return view;
    }
}

// A listener on 127.0.0.1 and a way to make connected pairs through it.
class Listener {
public:
    Listener() {
        fd_ = socket(AF_INET, SOCK_STREAM, 0);
        check(fd_ >= 0, "socket");
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        check(bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "bind");
        check(listen(fd_, 64) == 0, "listen");
        socklen_t len = sizeof addr_;
        check(getsockname(fd_, reinterpret_cast<sockaddr*>(&addr_), &len) == 0, "getsockname");
    }
    ~Listener() { close(fd_); }

    const sockaddr_in& addr() const { return addr_; }
    int port() const { return ntohs(addr_.sin_port); }

    // A client socket connected through the hooks, and the server's end.
    std::pair<int, int> connect_pair(int domain = AF_INET) {
        int c = socket(domain, SOCK_STREAM, 0);
        check(c >= 0, "client socket");
        int r;
        if (domain == AF_INET6) {
            sockaddr_in6 a6{};
            a6.sin6_family = AF_INET6;
            a6.sin6_port = addr_.sin_port;
            inet_pton(AF_INET6, "::ffff:127.0.0.1", &a6.sin6_addr);
            r = connect(c, reinterpret_cast<sockaddr*>(&a6), sizeof a6);
        } else {
            r = connect(c, reinterpret_cast<const sockaddr*>(&addr_), sizeof addr_);
        }
        check(r == 0, "connect");
        int s = accept(fd_, nullptr, nullptr);
        check(s >= 0, "accept");
        return {c, s};
    }

private:
    int fd_ = -1;
    sockaddr_in addr_{};
};

inline bool preloaded() {
    const char* p = std::getenv("LD_PRELOAD");
    return p != nullptr && std::string(p).find("libtcpfix") != std::string::npos;
}

}  // namespace tcpfix::test
