// `signals`: a signal handler that closes a tracked socket while the thread it
// interrupted is inside a hooked call, and signals interrupting the waits
// tcpfix adds inside connect(). What the application must see is what it
// would see without tcpfix: a blocking connect() interrupted by a handler
// without SA_RESTART fails with EINTR; with SA_RESTART it goes on; a
// non-blocking connect() never fails with EINTR; and a descriptor number the
// handler closed and reused for a file is the file's, untouched by tcpfix.
//
//   --scenario timed      (TCPFIX_CONNECT_TIMEOUT=300ms, TCPFIX_CONNECT_RETRIES=1)
//       connects to a listener whose queue is full, so the handshake hangs
//   --scenario throttled  (TCPFIX_CONNECT_RATE=4/s)
//       the second connect to a destination waits ~250 ms inside connect()
//   --scenario scan       (TCPFIX_REAP_CLOSE_WAIT and/or TCPFIX_RECONNECT_BACKOFF)
//       a fast timer whose handler closes every connection the main thread
//       holds, while the main thread's connect()s scan those connections
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>

#include "tests/stress/common.hpp"
#include "tests/stress/modes.hpp"

namespace stress {
namespace {

// What the handler does, set before each case; read only in the handler.
std::atomic<int> g_close_fd{-1};        // close this descriptor
std::atomic<int> g_reuse_as_file{0};    // then open the file at the same number
const char* g_file_path = nullptr;
std::atomic<int> g_close_result{-100};
std::atomic<int> g_close_errno{0};
std::atomic<int> g_signals{0};

void on_alarm(int) {
    int saved = errno;
    g_signals.fetch_add(1);
    int fd = g_close_fd.exchange(-1);
    if (fd >= 0) {
        errno = 0;
        int r = close(fd);
        g_close_result.store(r);
        g_close_errno.store(errno);
        if (g_reuse_as_file.load()) {
            int f = open(g_file_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
            if (f >= 0 && f != fd) {
                dup2(f, fd);
                close(f);
            }
        }
    }
    errno = saved;
}

void install(bool restart) {
    struct sigaction sa {};
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = restart ? SA_RESTART : 0;
    sigaction(SIGALRM, &sa, nullptr);
}

void arm_timer_ms(long ms) {
    itimerval it{};
    it.it_value.tv_sec = ms / 1000;
    it.it_value.tv_usec = (ms % 1000) * 1000;
    setitimer(ITIMER_REAL, &it, nullptr);
}

void disarm_timer() {
    itimerval it{};
    setitimer(ITIMER_REAL, &it, nullptr);
}

struct Fixture {
    Server server;
    Policy policy = read_policy();
    int filler = -1;          // the one connection that fills the full listener's queue
    int full = -1;            // listen(fd, 0), never accepted: further handshakes hang
    std::uint16_t full_port = 0;
    std::string file;

    Fixture() {
        server.start();
        full = listen_loopback(0, &full_port);
        filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int err = connect_wait(filler, loopback(full_port), false);
        STRESS_CHECK(err == 0, "filler connect: {}", strerrordesc_np(err));
        const char* dir = getenv("STRESS_DIR");
        file = fmt::format("{}/reused-{}", dir ? dir : "/tmp", getpid());
        g_file_path = file.c_str();
    }
    ~Fixture() {
        disarm_timer();
        close(filler);
        close(full);
        server.stop();
    }

    int connected() {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int err = connect_wait(fd, loopback(server.data_port()), false);
        if (err == EINTR) err = connect_wait(fd, loopback(server.data_port()), false) == EISCONN ? 0 : err;
        STRESS_CHECK(err == 0, "connect to the peer: {}", strerrordesc_np(err));
        return fd;
    }

    // Waits for the peer to count one more RST than `before`.
    bool peer_saw_rst(std::uint64_t before) {
        for (int i = 0; i < 200; ++i) {
            if (server.ended_rst.load() > before) return true;
            sleep_ms(10);
        }
        return false;
    }
};

struct Outcome {
    int result;
    int err;
    double ms;
};

Outcome timed_connect(int fd, const sockaddr_in& to) {
    std::int64_t t0 = now_ns();
    errno = 0;
    int r = connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to);
    int err = errno;
    return {r, r == 0 ? 0 : err, static_cast<double>(now_ns() - t0) / 1e6};
}

const char* errname(int e) { return e == 0 ? "0" : strerrorname_np(e); }

// tcpfix cannot tell which signal interrupted its wait, so by its documented
// rule (README, "Connect deadlines") a wait ends with EINTR when ANY installed
// handler lacks SA_RESTART. Sanitizer runtimes (and crash reporters) install
// SIGSEGV/SIGBUS/SIGFPE handlers without it: then the SA_RESTART cases below
// expect EINTR too. Returns the first such signal, or 0.
int other_handler_without_restart() {
    for (int sig = 1; sig < NSIG; ++sig) {
        if (sig == SIGALRM || sig == SIGKILL || sig == SIGSTOP) continue;
        struct sigaction sa {};
        if (sigaction(sig, nullptr, &sa) != 0) continue;
        if (sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN) continue;
        if ((sa.sa_flags & SA_RESTART) == 0) return sig;
    }
    return 0;
}

// What a blocking connect interrupted by a SA_RESTART handler returns: `kernel`
// (as without tcpfix), or EINTR under the rule above.
int restart_outcome(int kernel) {
    static int other = other_handler_without_restart();
    static bool said = false;
    if (other != 0 && !said) {
        said = true;
        fmt::print("note: a {} handler without SA_RESTART is installed (a sanitizer's or crash reporter's): "
                   "SA_RESTART cases expect EINTR, tcpfix's documented rule\n",
                   sigabbrev_np(other));
    }
    return other != 0 ? EINTR : kernel;
}

// A handler closes another tracked connection X while this thread waits
// inside connect(fd). X's peer must see the policy (RST under rst).
void case_close_other(Fixture& fx, const char* name, bool restart, bool nonblocking, const sockaddr_in& to,
                      int want_err, double min_ms, double max_ms) {
    install(restart);
    int x = fx.connected();
    std::uint64_t rst_before = fx.server.ended_rst.load();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    g_close_result.store(-100);
    g_reuse_as_file.store(0);
    g_close_fd.store(x);
    arm_timer_ms(50);
    Outcome o = timed_connect(fd, to);
    disarm_timer();
    fmt::print("{}: connect -> {} {} after {:.0f} ms; handler close(X) -> {}\n", name, o.result, errname(o.err), o.ms,
               g_close_result.load());
    // want_err -1: 0 or EINPROGRESS (a non-blocking connect on loopback may finish at once).
    if (want_err == -1)
        STRESS_CHECK(o.err == 0 || o.err == EINPROGRESS, "{}: connect failed with {}, expected 0 or EINPROGRESS", name,
                     errname(o.err));
    else
        STRESS_CHECK(o.err == want_err, "{}: connect failed with {}, expected {}", name, errname(o.err),
                     errname(want_err));
    STRESS_CHECK(o.ms >= min_ms && o.ms <= max_ms, "{}: connect returned after {:.0f} ms, expected {:.0f}..{:.0f}",
                 name, o.ms, min_ms, max_ms);
    STRESS_CHECK(g_close_result.load() == 0, "{}: the handler's close() returned {} (errno {})", name,
                 g_close_result.load(), g_close_errno.load());
    if (fx.policy.rst())
        STRESS_CHECK(fx.peer_saw_rst(rst_before), "{}: the connection closed in the handler did not end with RST",
                     name);
    if (want_err == EINPROGRESS) {
        // The poller learns the outcome when the watchdog abandons the attempt.
        pollfd p{fd, POLLOUT, 0};
        int n;
        do n = poll(&p, 1, 3000);
        while (n < 0 && errno == EINTR);
        int so = 0;
        socklen_t len = sizeof so;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &len);
        STRESS_CHECK(n == 1 && so == ETIMEDOUT, "{}: after EINPROGRESS, poll {} SO_ERROR {} (expected ETIMEDOUT)", name,
                     n, errname(so));
    }
    if (want_err == EINTR && to.sin_port == htons(fx.server.data_port())) {
        // No handshake was started (the wait was tcpfix's); connecting again works.
        int err = 0;
        std::int64_t deadline = now_ns() + 3'000'000'000LL;
        do {
            err = connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) == 0 ? 0 : errno;
        } while ((err == EINTR || err == EALREADY || err == EINPROGRESS) && now_ns() < deadline);
        STRESS_CHECK(err == 0 || err == EISCONN, "{}: connecting again after EINTR: {}", name, errname(err));
    }
    close(fd);
}

// The handler closes the very descriptor this thread is connecting, and the
// number is at once a file opened with O_APPEND. Whatever connect() then
// returns, the file must keep its flags: tcpfix may not act on a number the
// application has given up.
void case_close_self(Fixture& fx, const char* name, bool restart, const sockaddr_in& to, int want_err) {
    (void)fx;
    install(restart);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    g_close_result.store(-100);
    g_reuse_as_file.store(1);
    g_close_fd.store(fd);
    arm_timer_ms(50);
    Outcome o = timed_connect(fd, to);
    disarm_timer();
    g_reuse_as_file.store(0);
    int flags = fcntl(fd, F_GETFL);
    struct stat st {};
    fstat(fd, &st);
    fmt::print("{}: connect -> {} {} after {:.0f} ms; the number is now a {} with flags {:#o}\n", name, o.result,
               errname(o.err), o.ms, S_ISREG(st.st_mode) ? "file" : "non-file", flags);
    STRESS_CHECK(g_close_result.load() == 0, "{}: the handler's close() returned {}", name, g_close_result.load());
    STRESS_CHECK(S_ISREG(st.st_mode), "{}: descriptor {} is no longer the handler's file", name, fd);
    STRESS_CHECK(flags >= 0 && (flags & O_APPEND) != 0 && (flags & O_NONBLOCK) == 0 && (flags & O_ACCMODE) == O_WRONLY,
                 "{}: tcpfix changed the file status flags of the file now at {} to {:#o} (want O_WRONLY|O_APPEND)",
                 name, fd, flags);
    STRESS_CHECK(o.result == -1, "{}: connect() on a number that became a file succeeded", name);
    if (want_err != 0)
        STRESS_CHECK(o.err == want_err, "{}: connect failed with {}, expected {} (as without tcpfix)", name,
                     errname(o.err), errname(want_err));
    close(fd);
}

int scenario_timed(Fixture& fx) {
    if (!fx.policy.timeout || fx.policy.retries != 1)
        fmt::print("timed: expects TCPFIX_CONNECT_TIMEOUT=300ms TCPFIX_CONNECT_RETRIES=1\n");
    sockaddr_in hang = loopback(fx.full_port);
    // A handler without SA_RESTART: EINTR, as the kernel does for a blocking connect.
    case_close_other(fx, "timed/no-restart", false, false, hang, EINTR, 30, 250);
    // With SA_RESTART the wait goes on to tcpfix's deadline (two attempts of 300 ms).
    if (restart_outcome(ETIMEDOUT) == EINTR) case_close_other(fx, "timed/restart", true, false, hang, EINTR, 30, 250);
    else case_close_other(fx, "timed/restart", true, false, hang, ETIMEDOUT, 500, 2500);
    // A non-blocking connect never fails with EINTR, whatever tcpfix waits for inside.
    case_close_other(fx, "timed/non-blocking", false, true, hang, EINPROGRESS, 200, 2000);
    case_close_self(fx, "timed/close-self/no-restart", false, hang, EINTR);
    case_close_self(fx, "timed/close-self/restart", true, hang, restart_outcome(ENOTSOCK));
    return 0;
}

int scenario_throttled(Fixture& fx) {
    if (!fx.policy.rate) fmt::print("throttled: expects TCPFIX_CONNECT_RATE=4/s\n");
    sockaddr_in peer = loopback(fx.server.data_port());
    // Each case's own connect of X takes the current slot: the one under test waits ~250 ms.
    case_close_other(fx, "throttled/no-restart", false, false, peer, EINTR, 30, 200);
    if (restart_outcome(0) == EINTR) case_close_other(fx, "throttled/restart", true, false, peer, EINTR, 30, 200);
    else case_close_other(fx, "throttled/restart", true, false, peer, 0, 150, 1500);
    case_close_other(fx, "throttled/non-blocking", false, true, peer, -1, 150, 1500);
    (void)fx.connected();  // take a slot, so the next connect waits
    case_close_self(fx, "throttled/close-self/no-restart", false, peer, EINTR);
    (void)fx.connected();
    case_close_self(fx, "throttled/close-self/restart", true, peer, restart_outcome(ENOTSOCK));
    return 0;
}

constexpr int kHeld = 64;
std::atomic<int> g_held[kHeld];
std::atomic<long> g_handler_closes{0};

void close_all_held(int) {
    int saved = errno;
    g_signals.fetch_add(1);
    for (auto& h : g_held) {
        int fd = h.exchange(-1);
        if (fd >= 0 && close(fd) == 0) g_handler_closes.fetch_add(1);
    }
    errno = saved;
}

int scenario_scan(Fixture& fx, double seconds) {
    if (!fx.policy.reap && !fx.policy.backoff)
        fmt::print("scan: expects TCPFIX_REAP_CLOSE_WAIT or TCPFIX_RECONNECT_BACKOFF (the scan runs from connect)\n");
    for (auto& h : g_held) h.store(-1);
    struct sigaction sa {};
    sa.sa_handler = close_all_held;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, nullptr);
    itimerval it{};
    it.it_interval.tv_usec = 300;
    it.it_value.tv_usec = 300;
    setitimer(ITIMER_REAL, &it, nullptr);
    sockaddr_in peer = loopback(fx.server.data_port());
    long cycles = 0;
    std::int64_t end = now_ns() + static_cast<std::int64_t>(seconds * 1e9);
    while (now_ns() < end && failures().count() == 0) {
        for (auto& h : g_held) {
            if (h.load() >= 0) continue;
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
            int err = connect_wait(fd, peer, true);
            STRESS_CHECK(err == 0, "scan: connect {}", errname(err));
            int expected = -1;
            if (!h.compare_exchange_strong(expected, fd)) close(fd);
        }
        // A connect of its own: it runs the scan over the held connections.
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        int err = connect_wait(fd, peer, true);
        STRESS_CHECK(err == 0, "scan: connect {}", errname(err));
        close(fd);
        ++cycles;
    }
    disarm_timer();
    for (auto& h : g_held) {
        int fd = h.exchange(-1);
        if (fd >= 0) close(fd);
    }
    fmt::print("scan: {} cycles, {} signals, {} connections closed by the handler in {:.1f} s\n", cycles,
               g_signals.load(), g_handler_closes.load(), seconds);
    STRESS_CHECK(g_handler_closes.load() > 100, "scan: the handler closed only {} connections", g_handler_closes.load());
    return 0;
}

}  // namespace

int run_signals(const std::vector<std::string>& args) {
    std::string scenario;
    double seconds = 3;
    for (std::size_t i = 0; i + 1 < args.size(); i += 2) {
        if (args[i] == "--scenario") scenario = args[i + 1];
        else if (args[i] == "--seconds") seconds = std::stod(args[i + 1]);
        else {
            fmt::print(stderr, "signals: unknown option {}\n", args[i]);
            return 64;
        }
    }
    Fixture fx;
    if (scenario == "timed") scenario_timed(fx);
    else if (scenario == "throttled") scenario_throttled(fx);
    else if (scenario == "scan") scenario_scan(fx, seconds);
    else {
        fmt::print(stderr, "signals: --scenario timed|throttled|scan\n");
        return 64;
    }
    Expectations ex;
    ex.note("signals/" + scenario + ": checked in the worker");
    ex.write();
    return failures().report("signals/" + scenario) ? 0 : 1;
}

}  // namespace stress
