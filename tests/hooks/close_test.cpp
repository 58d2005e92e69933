// The hooks, run under LD_PRELOAD (ctest sets the environment per suite; see
// CMakeLists.txt). Each test watches the peer's end of a real loopback
// connection: FIN means a normal close, RST means tcpfix's abortive close.
#include <gtest/gtest.h>
#include <linux/close_range.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <cstring>
#include <thread>
#include <vector>

#include "tests/hooks/peer.hpp"

namespace tcpfix::test {
namespace {

class Rst : public ::testing::Test {
protected:
    void SetUp() override { ASSERT_TRUE(preloaded()) << "run through ctest: it preloads libtcpfix.so"; }
    Listener listener;
};

TEST_F(Rst, CloseOfAnEstablishedConnectionSendsRst) {
    auto [c, s] = listener.connect_pair();
    ASSERT_EQ(close(c), 0);
    EXPECT_ENDING(read_until_end(s), Ending::Rst);
    close(s);
}

TEST_F(Rst, IPv4MappedDestinationOnAnIPv6SocketIsMatched) {
    auto [c, s] = listener.connect_pair(AF_INET6);
    ASSERT_EQ(close(c), 0);
    EXPECT_ENDING(read_until_end(s), Ending::Rst);
    close(s);
}

TEST_F(Rst, FinalMessageThenCloseArrivesWholeAndEndsWithRst) {
    auto [c, s] = listener.connect_pair();
    const char quit[] = "QUIT\r\n";
    ASSERT_EQ(write(c, quit, sizeof quit - 1), static_cast<ssize_t>(sizeof quit - 1));
    ASSERT_EQ(close(c), 0);
    PeerView v = read_until_end(s);
    EXPECT_EQ(v.bytes, sizeof quit - 1);
    EXPECT_ENDING(v, Ending::Rst);
    close(s);
}

TEST_F(Rst, UnsentDataClosesGracefullyAndArrivesWhole) {
    auto [c, s] = listener.connect_pair();
    // Fill everything the kernel will take while the peer does not read: the
    // send queue then holds bytes not yet sent.
    fcntl(c, F_SETFL, O_NONBLOCK);
    std::vector<char> chunk(65536, 'x');
    std::size_t written = 0;
    for (int i = 0; i < 10000; ++i) {
        ssize_t n = write(c, chunk.data(), chunk.size());
        if (n < 0) break;
        written += static_cast<std::size_t>(n);
    }
    ASSERT_GT(written, 0u);
    ASSERT_EQ(close(c), 0);
    PeerView v = read_until_end(s, 2000);
    EXPECT_EQ(v.bytes, written) << "every byte the application wrote must arrive";
    EXPECT_ENDING(v, Ending::Fin);
    close(s);
}

TEST_F(Rst, DupKeepsTheSocketUntilTheLastDescriptorCloses) {
    auto [c, s] = listener.connect_pair();
    int d = dup(c);
    ASSERT_GE(d, 0);
    ASSERT_EQ(close(c), 0);
    EXPECT_ENDING(read_until_end(s, 100), Ending::StillOpen);
    ASSERT_EQ(write(d, "x", 1), 1);
    ASSERT_EQ(close(d), 0);
    PeerView v = read_until_end(s);
    EXPECT_EQ(v.bytes, 1u);
    EXPECT_ENDING(v, Ending::Rst);
    close(s);
}

TEST_F(Rst, FcntlDupfdCloexecIsADup) {
    auto [c, s] = listener.connect_pair();
    int d = fcntl(c, F_DUPFD_CLOEXEC, 100);
    ASSERT_GE(d, 100);
    ASSERT_EQ(close(d), 0);
    EXPECT_ENDING(read_until_end(s, 100), Ending::StillOpen);
    ASSERT_EQ(close(c), 0);
    EXPECT_ENDING(read_until_end(s), Ending::Rst);
    close(s);
}

TEST_F(Rst, Dup2OfASocketOverAFileCarriesTheSocket) {
    auto [c, s] = listener.connect_pair();
    int file = open("/dev/null", O_WRONLY);
    ASSERT_GE(file, 0);
    ASSERT_EQ(dup2(c, file), file);
    ASSERT_EQ(close(c), 0);
    EXPECT_ENDING(read_until_end(s, 100), Ending::StillOpen);
    ASSERT_EQ(close(file), 0);
    EXPECT_ENDING(read_until_end(s), Ending::Rst);
    close(s);
}

TEST_F(Rst, Dup3OverATrackedSocketAppliesThePolicyAndForgetsIt) {
    auto [c, s] = listener.connect_pair();
    int file = open("/dev/null", O_WRONLY);
    ASSERT_EQ(dup3(file, c, O_CLOEXEC), c);
    // The replaced socket's last descriptor is gone: closed as close() would.
    EXPECT_ENDING(read_until_end(s), Ending::Rst);
    // c is now /dev/null: closing it must be a plain close.
    errno = 0;
    EXPECT_EQ(write(c, "x", 1), 1);
    EXPECT_EQ(close(c), 0);
    EXPECT_EQ(close(file), 0);
    close(s);
}

TEST_F(Rst, Dup2OfASocketOverItsOwnCopyKeepsBothTracked) {
    auto [c, s] = listener.connect_pair();
    int copy = dup(c);
    ASSERT_GE(copy, 0);
    ASSERT_EQ(dup2(c, copy), copy);
    ASSERT_EQ(dup3(copy, c, O_CLOEXEC), c);
    // Two descriptors of one socket still: the first close is not its last.
    ASSERT_EQ(close(c), 0);
    EXPECT_ENDING(read_until_end(s, 100), Ending::StillOpen);
    ASSERT_EQ(close(copy), 0);
    EXPECT_ENDING(read_until_end(s), Ending::Rst);
    close(s);
}

TEST_F(Rst, Dup2OntoItselfChangesNothing) {
    auto [c, s] = listener.connect_pair();
    ASSERT_EQ(dup2(c, c), c);
    ASSERT_EQ(close(c), 0);
    EXPECT_ENDING(read_until_end(s), Ending::Rst);
    close(s);
}

TEST_F(Rst, CloseRangeAppliesThePolicyToEverySocketInIt) {
    auto [a, sa] = listener.connect_pair();
    auto [b, sb] = listener.connect_pair();
    ASSERT_EQ(dup2(a, 700), 700);
    ASSERT_EQ(dup2(b, 701), 701);
    ASSERT_EQ(close(a), 0);
    ASSERT_EQ(close(b), 0);
    EXPECT_ENDING(read_until_end(sa, 100), Ending::StillOpen);
    ASSERT_EQ(close_range(700, 701, 0), 0);
    EXPECT_ENDING(read_until_end(sa), Ending::Rst);
    EXPECT_ENDING(read_until_end(sb), Ending::Rst);
    EXPECT_EQ(fcntl(700, F_GETFD), -1);
    close(sa);
    close(sb);
}

TEST_F(Rst, CloseRangeCloexecClosesNothingNow) {
    auto [c, s] = listener.connect_pair();
    ASSERT_EQ(close_range(c, c, CLOSE_RANGE_CLOEXEC), 0);
    EXPECT_ENDING(read_until_end(s, 100), Ending::StillOpen);
    ASSERT_EQ(close(c), 0);
    EXPECT_ENDING(read_until_end(s), Ending::Rst);
    close(s);
}

TEST_F(Rst, ClosefromAppliesThePolicy) {
    auto [c, s] = listener.connect_pair();
    ASSERT_EQ(dup2(c, 900), 900);
    ASSERT_EQ(close(c), 0);
    closefrom(900);
    EXPECT_ENDING(read_until_end(s), Ending::Rst);
    close(s);
}

TEST_F(Rst, SyscallCloseGoesThroughTheHook) {
    auto [c, s] = listener.connect_pair();
    ASSERT_EQ(syscall(SYS_close, c), 0);
    EXPECT_ENDING(read_until_end(s), Ending::Rst);
    close(s);
}

TEST_F(Rst, ErrnoIsUnchangedBySuccessfulHookedCalls) {
    errno = 4242;
    int c = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(c, 0);
    EXPECT_EQ(errno, 4242);
    ASSERT_EQ(connect(c, reinterpret_cast<const sockaddr*>(&listener.addr()), sizeof(sockaddr_in)), 0);
    EXPECT_EQ(errno, 4242);
    int s = accept(-1, nullptr, nullptr);
    EXPECT_EQ(s, -1);
    EXPECT_EQ(errno, EBADF) << "a failing hooked call reports its own errno";
    errno = 4242;
    ASSERT_EQ(close(c), 0);
    EXPECT_EQ(errno, 4242);
}

TEST_F(Rst, FailuresKeepTheirErrno) {
    errno = 0;
    EXPECT_EQ(close(-1), -1);
    EXPECT_EQ(errno, EBADF);
    errno = 0;
    EXPECT_EQ(close(1 << 22), -1);
    EXPECT_EQ(errno, EBADF);
    auto [c, s] = listener.connect_pair();
    EXPECT_EQ(close(c), 0);
    errno = 0;
    EXPECT_EQ(close(c), -1) << "double close";
    EXPECT_EQ(errno, EBADF);
    errno = 0;
    EXPECT_EQ(dup2(-1, 5), -1);
    EXPECT_EQ(errno, EBADF);
    int refused = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in nowhere = listener.addr();
    nowhere.sin_port = htons(1);  // nothing listens on port 1
    errno = 0;
    EXPECT_EQ(connect(refused, reinterpret_cast<sockaddr*>(&nowhere), sizeof nowhere), -1);
    EXPECT_EQ(errno, ECONNREFUSED);
    close(refused);
    close(s);
}

TEST_F(Rst, SocketsInheritedAcrossForkCloseGracefully) {
    auto [c, s] = listener.connect_pair();
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        // The child's copy: the parent still holds the connection.
        _exit(close(c) == 0 ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    EXPECT_ENDING(read_until_end(s, 100), Ending::StillOpen);
    ASSERT_EQ(write(c, "after fork", 10), 10);
    ASSERT_EQ(close(c), 0);
    PeerView v = read_until_end(s);
    EXPECT_EQ(v.bytes, 10u);
    EXPECT_ENDING(v, Ending::Fin) << "another process may still use an inherited socket";
    close(s);

    // A connection made after the fork is this process's alone again.
    auto [c2, s2] = listener.connect_pair();
    ASSERT_EQ(close(c2), 0);
    EXPECT_ENDING(read_until_end(s2), Ending::Rst);
    close(s2);
}

TEST_F(Rst, ApplicationsOwnLingerIsRespected) {
    auto [c, s] = listener.connect_pair();
    linger l{1, 5};
    ASSERT_EQ(setsockopt(c, SOL_SOCKET, SO_LINGER, &l, sizeof l), 0);
    ASSERT_EQ(close(c), 0);
    EXPECT_ENDING(read_until_end(s), Ending::Fin);
    close(s);
}

TEST_F(Rst, PeerClosedFirstIsANormalClose) {
    auto [c, s] = listener.connect_pair();
    ASSERT_EQ(shutdown(s, SHUT_WR), 0);
    char b;
    ASSERT_EQ(read(c, &b, 1), 0);  // the peer's FIN is in: CLOSE_WAIT
    ASSERT_EQ(close(c), 0);
    EXPECT_ENDING(read_until_end(s), Ending::Fin);
    close(s);
}

TEST_F(Rst, NonTcpDescriptorsBehaveAsWithoutTcpfix) {
    // AF_UNIX stream: the other end reads EOF, never a reset.
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ASSERT_EQ(write(sv[0], "hi", 2), 2);
    ASSERT_EQ(close(sv[0]), 0);
    PeerView v = read_until_end(sv[1]);
    EXPECT_EQ(v.bytes, 2u);
    EXPECT_ENDING(v, Ending::Fin);
    close(sv[1]);
    // A pipe.
    int p[2];
    ASSERT_EQ(pipe(p), 0);
    ASSERT_EQ(write(p[1], "abc", 3), 3);
    ASSERT_EQ(close(p[1]), 0);
    char buf[8];
    EXPECT_EQ(read(p[0], buf, sizeof buf), 3);
    EXPECT_EQ(read(p[0], buf, sizeof buf), 0);
    close(p[0]);
    // UDP: connect and close work and leave errno alone.
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    ASSERT_GE(u, 0);
    ASSERT_EQ(connect(u, reinterpret_cast<const sockaddr*>(&listener.addr()), sizeof(sockaddr_in)), 0);
    errno = 77;
    EXPECT_EQ(close(u), 0);
    EXPECT_EQ(errno, 77);
    // A file: what was written is there.
    char path[] = "/tmp/tcpfix-hooks-XXXXXX";
    int f = mkstemp(path);
    ASSERT_GE(f, 0);
    ASSERT_EQ(write(f, "data", 4), 4);
    ASSERT_EQ(close(f), 0);
    struct stat st;
    ASSERT_EQ(stat(path, &st), 0);
    EXPECT_EQ(st.st_size, 4);
    unlink(path);
}

TEST_F(Rst, ADescriptorReusedByAFileRightAfterASocketIsAPlainFile) {
    auto [c, s] = listener.connect_pair();
    ASSERT_EQ(close(c), 0);
    int f = open("/dev/null", O_WRONLY);
    ASSERT_EQ(f, c) << "the lowest free number is reused";
    errno = 0;
    EXPECT_EQ(close(f), 0);
    EXPECT_EQ(errno, 0);
    close(s);
}

// Descriptors far up the table (another chunk of it). Above 65536 where the
// hard limit can be raised; machines without CAP_SYS_RESOURCE (this project's
// CI caps RLIMIT_NOFILE at 20000) use the highest descriptor they allow.
TEST_F(Rst, HighDescriptorsAreTracked) {
    rlimit old{};
    ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
    rlimit raised{100000, std::max<rlim_t>(old.rlim_max, 100000)};
    int high = setrlimit(RLIMIT_NOFILE, &raised) == 0 ? 70000 : static_cast<int>(old.rlim_cur) - 1;
    ASSERT_GT(high, 4096) << "the test needs descriptors beyond the table's first chunk";
    auto [c, s] = listener.connect_pair();
    ASSERT_EQ(dup2(c, high), high);
    ASSERT_EQ(close(c), 0);
    EXPECT_ENDING(read_until_end(s, 100), Ending::StillOpen);
    ASSERT_EQ(close(high), 0);
    EXPECT_ENDING(read_until_end(s), Ending::Rst);
    close(s);
    setrlimit(RLIMIT_NOFILE, &old);
}

TEST_F(Rst, ThreadsClosingConcurrentlyAllEndWithRst) {
    constexpr int kThreads = 4, kEach = 50;
    std::vector<std::thread> threads;
    std::atomic<int> rst{0}, other{0};
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < kEach; ++i) {
                auto [c, s] = listener.connect_pair();
                close(c);
                (read_until_end(s).ending == Ending::Rst ? rst : other)++;
                close(s);
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(rst.load(), kThreads * kEach);
    EXPECT_EQ(other.load(), 0);
}

// TCPFIX_MATCH names another destination: this one is left alone.
class Unmatched : public Rst {};

TEST_F(Unmatched, UnmatchedDestinationsCloseNormally) {
    auto [c, s] = listener.connect_pair();
    ASSERT_EQ(close(c), 0);
    EXPECT_ENDING(read_until_end(s), Ending::Fin);
    close(s);
}

// TCPFIX_CLOSE=rst-always: exactly a hand-patched prober.
class RstAlways : public Rst {};

TEST_F(RstAlways, EvenTheApplicationsOwnLingerIsOverridden) {
    auto [c, s] = listener.connect_pair();
    linger l{1, 5};
    ASSERT_EQ(setsockopt(c, SOL_SOCKET, SO_LINGER, &l, sizeof l), 0);
    ASSERT_EQ(close(c), 0);
    EXPECT_ENDING(read_until_end(s), Ending::Rst);
    close(s);
}

// TCPFIX_DISABLE=1 (with TCPFIX_CLOSE=rst): the control arm, pure pass-through.
class Disabled : public Rst {};

TEST_F(Disabled, NothingChanges) {
    auto [c, s] = listener.connect_pair();
    ASSERT_EQ(close(c), 0);
    EXPECT_ENDING(read_until_end(s), Ending::Fin);
    close(s);
}

}  // namespace
}  // namespace tcpfix::test
