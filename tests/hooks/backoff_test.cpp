// TCPFIX_RECONNECT_BACKOFF judges a connection when it ends: a destination
// that failed is healthy again once a connection to it carried data and was
// closed, however many copies of its descriptor came and went before
// (dup, dup2 over a copy: the connection goes on, nothing is judged then).
// Run with TCPFIX_RECONNECT_BACKOFF=1s:1s, so a connect that is still paced
// waits at least half a second (the jitter is a factor in [0.5, 1)).
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <chrono>

#include "tests/hooks/peer.hpp"

namespace tcpfix::test {
namespace {

struct Attempt {
    int fd = -1;
    int result = 0;
    int error = 0;
    double ms = 0;
};

Attempt attempt(const sockaddr_in& dest) {
    Attempt a;
    a.fd = socket(AF_INET, SOCK_STREAM, 0);
    check(a.fd >= 0, "socket");
    auto t0 = std::chrono::steady_clock::now();
    a.result = connect(a.fd, reinterpret_cast<const sockaddr*>(&dest), sizeof dest);
    a.error = errno;
    a.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return a;
}

// A destination that refuses its first connect (bound, not yet listening)
// and then accepts: the backoff is armed, and the connect after it waits.
// Returns the listener and the connection, its data exchanged both ways.
struct Recovered {
    int listener = -1;
    sockaddr_in dest{};
    int client = -1;
    int server = -1;
};

Recovered fail_then_connect() {
    Recovered r;
    r.listener = socket(AF_INET, SOCK_STREAM, 0);
    check(r.listener >= 0, "socket");
    r.dest.sin_family = AF_INET;
    r.dest.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    check(bind(r.listener, reinterpret_cast<sockaddr*>(&r.dest), sizeof r.dest) == 0, "bind");
    socklen_t len = sizeof r.dest;
    check(getsockname(r.listener, reinterpret_cast<sockaddr*>(&r.dest), &len) == 0, "getsockname");

    Attempt refused = attempt(r.dest);
    EXPECT_EQ(refused.result, -1);
    EXPECT_EQ(refused.error, ECONNREFUSED);
    close(refused.fd);

    check(listen(r.listener, 8) == 0, "listen");
    Attempt paced = attempt(r.dest);
    check(paced.result == 0, "connect after the failure");
    EXPECT_GE(paced.ms, 450) << "the connect after a refused one was not paced: the test sees no backoff";
    r.client = paced.fd;
    r.server = accept(r.listener, nullptr, nullptr);
    check(r.server >= 0, "accept");

    char buf[2];
    check(send(r.server, "hi", 2, 0) == 2, "server send");
    check(recv(r.client, buf, 2, MSG_WAITALL) == 2, "client recv");
    check(send(r.client, "ok", 2, 0) == 2, "client send");
    check(recv(r.server, buf, 2, MSG_WAITALL) == 2, "server recv");
    return r;
}

bool peer_sees_nothing(int server) {
    char b;
    return recv(server, &b, 1, MSG_DONTWAIT) == -1 && errno == EAGAIN;
}

void expect_unpaced(const sockaddr_in& dest) {
    Attempt next = attempt(dest);
    EXPECT_EQ(next.result, 0) << next.error;
    EXPECT_LT(next.ms, 250) << "the destination is still backed off after a connection that carried data ended";
    close(next.fd);
}

TEST(Backoff, ADupedConnectionIsJudgedWhenItsLastDescriptorCloses) {
    ASSERT_TRUE(preloaded());
    Recovered r = fail_then_connect();
    int copy = dup(r.client);
    int other = dup(r.client);
    ASSERT_GE(copy, 0);
    ASSERT_GE(other, 0);
    ASSERT_EQ(dup2(copy, r.client), r.client);  // over a copy of itself
    ASSERT_EQ(close(copy), 0);
    ASSERT_EQ(close(other), 0);
    EXPECT_TRUE(peer_sees_nothing(r.server)) << "closing copies ended the connection";

    ASSERT_EQ(close(r.client), 0);  // the last descriptor: an RST, nothing was left unacknowledged
    EXPECT_ENDING(read_until_end(r.server), Ending::Rst);
    expect_unpaced(r.dest);
    close(r.server);
    close(r.listener);
}

TEST(Backoff, AConnectionEndedByDup2OverItIsJudged) {
    ASSERT_TRUE(preloaded());
    Recovered r = fail_then_connect();
    int copy = dup(r.client);
    ASSERT_GE(copy, 0);
    ASSERT_EQ(close(copy), 0);
    // The JDK's way: a marker descriptor dup2'ed over the socket's last one.
    int marker[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, marker), 0);
    ASSERT_EQ(dup2(marker[0], r.client), r.client);
    EXPECT_ENDING(read_until_end(r.server), Ending::Rst);
    expect_unpaced(r.dest);
    close(r.client);
    close(marker[0]);
    close(marker[1]);
    close(r.server);
    close(r.listener);
}

}  // namespace
}  // namespace tcpfix::test
