// Every way a connection ends under TCPFIX_CLOSE=rst besides a plain close():
// dup2/dup3 over the socket (the JDK's way), and a close whose last ACK is
// still due, which tcpfix hands to its background thread. Each test watches
// the peer's end of a real loopback connection.
#include <dirent.h>
#include <gtest/gtest.h>
#include <linux/sockios.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <chrono>
#include <utility>
#include <thread>
#include <vector>

#include "tests/hooks/peer.hpp"

namespace tcpfix::test {
namespace {

// The descriptors open in this process.
std::vector<int> open_fds() {
    std::vector<int> fds;
    DIR* d = opendir("/proc/self/fd");
    if (d == nullptr) return fds;
    while (dirent* e = readdir(d)) {
        if (e->d_name[0] == '.') continue;
        int fd = std::atoi(e->d_name);
        if (fd != dirfd(d)) fds.push_back(fd);
    }
    closedir(d);
    std::sort(fds.begin(), fds.end());
    return fds;
}

// Descriptors in `after` that are not in `before`.
std::vector<int> new_fds(const std::vector<int>& before, const std::vector<int>& after) {
    std::vector<int> out;
    std::set_difference(after.begin(), after.end(), before.begin(), before.end(), std::back_inserter(out));
    return out;
}

// What /proc says of descriptor fd, without touching it: tcpfix's own
// descriptors belong to its background thread, which may close them at any
// moment (ThreadSanitizer rightly calls an fstat() of one a race).
std::string fd_target(int fd) {
    char path[64], target[256];
    std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof target - 1);
    return n < 0 ? std::string() : std::string(target, static_cast<std::size_t>(n));
}

bool is_open(int fd) { return !fd_target(fd).empty(); }

bool is_socket(int fd) { return fd_target(fd).rfind("socket:", 0) == 0; }

// The descriptor's O_CLOEXEC, from /proc/self/fdinfo ("flags:" in octal).
bool is_cloexec(int fd) {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE* f = std::fopen(path, "r");
    if (f == nullptr) return false;
    unsigned long flags = 0;
    char line[128];
    while (std::fgets(line, sizeof line, f) != nullptr)
        if (std::sscanf(line, "flags: %lo", &flags) == 1) break;
    std::fclose(f);
    return (flags & O_CLOEXEC) != 0;
}

// The TCP state of fd (TCP_ESTABLISHED, TCP_FIN_WAIT1, ...), 0 if unknown.
int tcp_state(int fd) {
    tcp_info ti{};
    socklen_t len = sizeof ti;
    return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 ? ti.tcpi_state : 0;
}

// Waits up to `ms` for fd to reach `state`.
bool reaches_state(int fd, int state, int ms) {
    for (int i = 0; i < ms; ++i) {
        if (tcp_state(fd) == state) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return tcp_state(fd) == state;
}

// SIOCOUTQ: bytes not yet acknowledged, a FIN counting as one.
int unacked_bytes(int fd) {
    int n = -1;
    return ioctl(fd, SIOCOUTQ, &n) == 0 ? n : -1;
}

// A JDK-style marker: one end of a socketpair whose other end is closed.
int marker() {
    int sv[2];
    check(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
    close(sv[1]);
    return sv[0];
}

// One request and its answer, and the server's kernel in interactive
// (ping-pong) mode: it delays the ACK of the client's next bytes (40 ms on
// loopback) in the hope of sending it with a reply, as a database server
// does. The exchange alone usually gets it there; TCP_QUICKACK 0 makes sure.
void request_reply(int c, int s) {
    char b[8];
    check(write(c, "req", 3) == 3, "write req");
    check(read(s, b, sizeof b) == 3, "read req");
    check(write(s, "resp", 4) == 4, "write resp");
    check(read(c, b, sizeof b) == 4, "read resp");
    int zero = 0;
    check(setsockopt(s, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof zero) == 0, "TCP_QUICKACK");
}

class RstEnding : public ::testing::Test {
protected:
    // The background thread starts with the first matched connect after a
    // close found its ACK due (that close decides on the spot): make sure it
    // runs, whichever test comes first.
    void SetUp() override {
        ASSERT_TRUE(preloaded()) << "run through ctest: it preloads libtcpfix.so";
        auto [c, s] = listener.connect_pair();
        request_reply(c, s);
        check(write(c, "QUIT\r\n", 6) == 6, "write QUIT");
        check(close(c) == 0, "close");
        close(s);
        auto [c2, s2] = listener.connect_pair();
        close(c2);
        close(s2);
    }

    // A connection whose client wrote "QUIT\r\n" and closed while the ACK was
    // due: {server end, tcpfix's held descriptor}. The ACK comes 40 ms after
    // the write; a client descheduled that long between write and close (a
    // loaded machine) finds it acknowledged and nothing is held, so up to three
    // connections are tried.
    std::pair<int, int> held_after_close() {
        for (int attempt = 0; attempt < 3; ++attempt) {
            wait_until_nothing_held();
            auto [c, s] = listener.connect_pair();
            request_reply(c, s);
            check(write(c, "QUIT\r\n", 6) == 6, "write QUIT");
            auto before = open_fds();
            check(close(c) == 0, "close");
            auto held = new_fds(before, open_fds());
            if (held.size() == 1) return {s, held[0]};
            close(s);
        }
        return {-1, -1};
    }

    // An earlier socket still held would make a difference of open_fds()
    // ambiguous (a number freed and taken again): wait until it is decided.
    static void wait_until_nothing_held() {
        for (int i = 0; i < 200 && open_fds().back() >= 900; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }

    Listener listener;
};

TEST_F(RstEnding, Dup2OfAMarkerOverTheLastDescriptorSendsRst) {
    auto [c, s] = listener.connect_pair();
    int m = marker();
    ASSERT_EQ(dup2(m, c), c);
    EXPECT_ENDING(read_until_end(s), Ending::Rst);
    // c is the marker now: closing it is a plain close.
    errno = 0;
    EXPECT_EQ(close(c), 0);
    EXPECT_EQ(errno, 0);
    close(m);
    close(s);
}

TEST_F(RstEnding, FinalMessageThenDup2ArrivesWholeAndEndsWithRst) {
    auto [c, s] = listener.connect_pair();
    request_reply(c, s);
    ASSERT_EQ(write(c, "QUIT\r\n", 6), 6);
    int m = marker();
    ASSERT_EQ(dup2(m, c), c);
    PeerView v = read_until_end(s);
    EXPECT_EQ(v.bytes, 6u);
    EXPECT_ENDING(v, Ending::Rst);
    close(c);
    close(m);
    close(s);
}

TEST_F(RstEnding, Dup2OverOneOfTwoDescriptorsKeepsTheSocket) {
    auto [c, s] = listener.connect_pair();
    int d = dup(c);
    ASSERT_GE(d, 0);
    int m = marker();
    ASSERT_EQ(dup2(m, c), c);
    EXPECT_ENDING(read_until_end(s, 100), Ending::StillOpen);
    ASSERT_EQ(write(d, "x", 1), 1);
    ASSERT_EQ(close(d), 0);
    PeerView v = read_until_end(s);
    EXPECT_EQ(v.bytes, 1u);
    EXPECT_ENDING(v, Ending::Rst);
    close(c);
    close(m);
    close(s);
}

TEST_F(RstEnding, AFailedDup2LeavesTheSocketAsItWas) {
    auto [c, s] = listener.connect_pair();
    int m = marker();
    errno = 0;
    EXPECT_EQ(dup2(m + 1000, c), -1);
    EXPECT_EQ(errno, EBADF);
    errno = 0;
    EXPECT_EQ(dup3(m, c, 0x4242), -1) << "flags other than O_CLOEXEC";
    EXPECT_EQ(errno, EINVAL);
    EXPECT_ENDING(read_until_end(s, 100), Ending::StillOpen);
    linger l{};
    socklen_t len = sizeof l;
    ASSERT_EQ(getsockopt(c, SOL_SOCKET, SO_LINGER, &l, &len), 0);
    EXPECT_EQ(l.l_onoff, 0) << "no RST armed on a socket the application keeps";
    ASSERT_EQ(write(c, "still mine", 10), 10);
    ASSERT_EQ(close(c), 0);
    PeerView v = read_until_end(s);
    EXPECT_EQ(v.bytes, 10u);
    EXPECT_ENDING(v, Ending::Rst);
    close(m);
    close(s);
}

TEST_F(RstEnding, Dup2WithDataUnsentClosesGracefullyAndArrivesWhole) {
    auto [c, s] = listener.connect_pair();
    fcntl(c, F_SETFL, O_NONBLOCK);
    std::vector<char> chunk(65536, 'x');
    std::size_t written = 0;
    for (int i = 0; i < 10000; ++i) {
        ssize_t n = write(c, chunk.data(), chunk.size());
        if (n < 0) break;
        written += static_cast<std::size_t>(n);
    }
    ASSERT_GT(written, 0u);
    int m = marker();
    ASSERT_EQ(dup2(m, c), c);
    PeerView v = read_until_end(s, 2000);
    EXPECT_EQ(v.bytes, written) << "every byte the application wrote must arrive";
    EXPECT_ENDING(v, Ending::Fin);
    close(c);
    close(m);
    close(s);
}

TEST_F(RstEnding, CloseWithTheAckDueReturnsAtOnceAndTheHeldSocketEndsWithRst) {
    auto [s, h] = held_after_close();
    ASSERT_GE(h, 0) << "tcpfix holds one descriptor of its own for the socket";
    EXPECT_GE(h, 900) << "above the application's numbers";
    EXPECT_TRUE(is_socket(h)) << fd_target(h);
    EXPECT_TRUE(is_cloexec(h)) << "never inherited by an exec'd program";
    PeerView v = read_until_end(s);
    EXPECT_EQ(v.bytes, 6u);
    EXPECT_ENDING(v, Ending::Rst) << "RST once the delayed ACK came, not FIN";
    EXPECT_FALSE(is_open(h)) << "the held descriptor is closed once decided";
    close(s);
}

TEST_F(RstEnding, APeerThatClosesFirstWhileHeldGetsANormalClose) {
    auto [s, h] = held_after_close();
    ASSERT_GE(h, 0);
    // The server answers the final message with its own FIN, which carries
    // the ACK (it reads only after: a read may send the ACK on its own).
    ASSERT_EQ(shutdown(s, SHUT_WR), 0);
    PeerView v = read_until_end(s);
    EXPECT_EQ(v.bytes, 6u);
    EXPECT_ENDING(v, Ending::Fin) << "the peer closed first: no TIME_WAIT on this side, no RST needed";
    close(s);
}

TEST_F(RstEnding, AForkedChildHasNoHeldDescriptor) {
    auto [s, h] = held_after_close();
    ASSERT_GE(h, 0);
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) _exit(fcntl(h, F_GETFD) == -1 && errno == EBADF ? 0 : 1);
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the child closed its copy at once";
    PeerView v = read_until_end(s);
    EXPECT_EQ(v.bytes, 6u);
    EXPECT_ENDING(v, Ending::Rst);
    close(s);
}

TEST_F(RstEnding, ADup2OntoAHeldNumberGivesItToTheApplication) {
    auto [s, h] = held_after_close();
    ASSERT_GE(h, 0);
    // As bash does with fixed numbers: the application takes the number.
    int file = open("/dev/null", O_WRONLY);
    ASSERT_EQ(dup2(file, h), h);
    PeerView v = read_until_end(s);
    EXPECT_EQ(v.bytes, 6u);
    EXPECT_ENDING(v, Ending::Fin) << "tcpfix gave the socket up: the kernel closed it normally";
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // past any background decision
    EXPECT_EQ(write(h, "x", 1), 1) << "the number is the application's /dev/null, untouched by tcpfix";
    EXPECT_EQ(close(h), 0);
    close(file);
    close(s);
}

// Half-closed (shutdown SHUT_WR) connections: in FIN_WAIT1 TCP_INFO counts
// the FIN as one more unacknowledged segment, so tcpfix asks SIOCOUTQ whether
// data is in flight with it. The server answers a request, then delays its
// ACKs (40 ms); it never closes, so a socket that is not reset leaves it in
// CLOSE_WAIT, and a reset one in CLOSE.
//
// Only the FIN in flight: nothing to lose, an RST at once, nothing held.
TEST_F(RstEnding, HalfClosedWithOnlyTheFinInFlightIsResetAtOnce) {
    for (int attempt = 0; attempt < 3; ++attempt) {
        wait_until_nothing_held();
        auto [c, s] = listener.connect_pair();
        request_reply(c, s);  // the reply acknowledged the request
        ASSERT_EQ(shutdown(c, SHUT_WR), 0);
        if (tcp_state(c) != TCP_FIN_WAIT1 || unacked_bytes(c) != 1) {
            close(c);  // the FIN's ACK came already (the test was descheduled 40 ms): again
            close(s);
            continue;
        }
        auto before = open_fds();
        ASSERT_EQ(close(c), 0);
        EXPECT_EQ(new_fds(before, open_fds()), std::vector<int>{})
            << "held, though only the FIN was in flight";
        EXPECT_TRUE(reaches_state(s, TCP_CLOSE, 1000))
            << "no RST: the server's end is in state " << tcp_state(s);
        close(s);
        return;
    }
    FAIL() << "three times the FIN was acknowledged before close(): the ACK was not delayed";
}

// The final message and the FIN in flight: held until the ACK comes, then reset.
TEST_F(RstEnding, HalfClosedWithDataInFlightIsHeldThenReset) {
    for (int attempt = 0; attempt < 3; ++attempt) {
        wait_until_nothing_held();
        auto [c, s] = listener.connect_pair();
        request_reply(c, s);
        ASSERT_EQ(write(c, "QUIT\r\n", 6), 6);
        ASSERT_EQ(shutdown(c, SHUT_WR), 0);
        if (tcp_state(c) != TCP_FIN_WAIT1 || unacked_bytes(c) != 7) {
            close(c);
            close(s);
            continue;
        }
        auto before = open_fds();
        ASSERT_EQ(close(c), 0);
        EXPECT_EQ(new_fds(before, open_fds()).size(), 1u)
            << "not held, though 6 bytes were unacknowledged";
        EXPECT_TRUE(reaches_state(s, TCP_CLOSE, 1000))
            << "no RST: the server's end is in state " << tcp_state(s);
        char buf[16];
        EXPECT_EQ(read(s, buf, sizeof buf), 6) << "the final message arrived before the RST";
        close(s);
        return;
    }
    FAIL() << "three times the data was acknowledged before close(): the ACK was not delayed";
}

}  // namespace
}  // namespace tcpfix::test
