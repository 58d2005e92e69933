// Shared pieces of the stress programs: loopback servers, descriptor and
// memory readings, a failure log threads can write to, the expectations file
// the supervisor checks against tcpfix's stats, and what the environment asks
// of tcpfix (so a worker knows which counts to predict).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>

namespace stress {

std::int64_t now_ns();
void sleep_ms(long ms);
void sleep_us(long us);

// A thread-safe record of what went wrong; the first few messages are kept.
class Failures {
public:
    template <typename... T>
    void add(fmt::format_string<T...> f, T&&... args) {
        add_text(fmt::format(f, std::forward<T>(args)...));
    }
    void add_text(std::string text);
    std::uint64_t count() const { return count_.load(); }
    // Prints the kept messages to stderr; returns count() == 0.
    bool report(std::string_view what) const;

private:
    mutable std::mutex mu_;
    std::vector<std::string> kept_;
    std::atomic<std::uint64_t> count_{0};
};

Failures& failures();

// Checks a condition in a worker; on failure records the message with errno.
#define STRESS_CHECK(cond, ...)                                                            \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            int stress_saved_errno_ = errno;                                               \
            ::stress::failures().add("{}:{}: {} [errno {}]", __FILE__, __LINE__,           \
                                     fmt::format(__VA_ARGS__), stress_saved_errno_);       \
        }                                                                                  \
    } while (0)

// --- what tcpfix was asked to do -------------------------------------------

struct Policy {
    bool loaded = false;     // libtcpfix.so is mapped into this process
    bool active = false;     // loaded, some TCPFIX_* variable set, not disabled
    std::string close;       // keep, rst, rst-always ("" = keep)
    bool timeout = false;    // TCPFIX_CONNECT_TIMEOUT
    unsigned retries = 0;    // TCPFIX_CONNECT_RETRIES
    bool reap = false;       // TCPFIX_REAP_CLOSE_WAIT
    std::int64_t reap_ns = 0;
    bool backoff = false;    // TCPFIX_RECONNECT_BACKOFF
    bool rate = false;       // TCPFIX_CONNECT_RATE
    bool source_addrs = false;
    bool match = false;      // TCPFIX_MATCH (the stress programs expect every destination matched)
    bool rst() const { return active && close == "rst"; }
    bool rst_always() const { return active && close == "rst-always"; }
};

// Reads the TCPFIX_* environment (durations in the SPEC's grammar, loosely).
Policy read_policy();

// True if a library whose file name contains `name` is loaded.
bool library_loaded(std::string_view name);

// --- descriptors and memory ---------------------------------------------------

// The open descriptors of this process (from /proc/self/fd, without the
// descriptor used to read it).
std::set<int> open_fds();
std::string describe_fd(int fd);  // readlink of /proc/self/fd/N
long rss_kb();
// The highest descriptor number the process may use, after raising the soft
// limit to the hard one (and trying above 65,536 first).
int raise_fd_limit(bool* above_65536);

// --- sockets ----------------------------------------------------------------

sockaddr_in loopback(std::uint16_t port, std::uint32_t host = 0x7f000001);
std::uint16_t local_port(int fd);
// A TCP listener on 127.0.0.1, port chosen by the kernel; exits on failure.
int listen_loopback(int backlog, std::uint16_t* port);
// A TCP socket bound to 127.0.0.1 but not listening: connects to it are refused.
int refusing_socket(std::uint16_t* port);

// Blocking connect with EINPROGRESS/EINTR handled for non-blocking sockets:
// returns 0 or the errno of the failed attempt.
int connect_wait(int fd, const sockaddr_in& to, bool nonblocking, int timeout_ms = 10000);

// FNV-1a, as the integration tests' sink_server computes it.
inline std::uint64_t fnv1a(std::uint64_t h, const unsigned char* p, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}
constexpr std::uint64_t kFnvBasis = 1469598103934665603ULL;

// A server thread on epoll: `data` listeners read each connection until EOF or
// reset, then close it; `closing` listeners close each connection at once (the
// client is left in CLOSE_WAIT). Counts how connections ended.
class Server {
public:
    explicit Server(int backlog = 4096);
    ~Server();
    void start();
    void stop();

    std::uint16_t data_port() const { return data_port_; }
    std::uint16_t closing_port() const { return closing_port_; }
    std::uint16_t refused_port() const { return refused_port_; }

    // Waits until every accepted connection has ended; false on timeout.
    bool wait_quiet(int timeout_ms);

    // Closes the listening sockets (after stop()); returns how many close() calls it made.
    int close_listeners();

    std::atomic<std::uint64_t> accepted{0};
    std::atomic<std::uint64_t> accepted_data{0};  // ... on the data port
    std::atomic<std::uint64_t> ended_rst{0};
    std::atomic<std::uint64_t> ended_eof{0};
    std::atomic<std::uint64_t> ended_other{0};
    std::atomic<std::uint64_t> closed_at_once{0};
    std::atomic<std::uint64_t> bytes{0};
    std::atomic<std::int64_t> open_conns{0};

private:
    void run();
    int data_ = -1, closing_ = -1, refused_ = -1, epoll_ = -1, wake_[2] = {-1, -1};
    std::uint16_t data_port_ = 0, closing_port_ = 0, refused_port_ = 0;
    std::thread thread_;
};

// Blocks `sig` in the calling thread (so servers never take the test's signals).
void block_signal(int sig);

// --- the expectations file the supervisor checks ------------------------------

// Lines "LHS OP RHS": each side a sum of integers and stats keys ("closes",
// "connect_errors.ECONNREFUSED"), OP one of == <= >=. A line starting with '#'
// is shown but not checked.
class Expectations {
public:
    void eq(std::string lhs, std::string rhs) { add(std::move(lhs), "==", std::move(rhs)); }
    void le(std::string lhs, std::string rhs) { add(std::move(lhs), "<=", std::move(rhs)); }
    void ge(std::string lhs, std::string rhs) { add(std::move(lhs), ">=", std::move(rhs)); }
    void note(std::string text) { lines_.push_back("# " + text); }
    // Writes $STRESS_DIR/expect-<pid>.txt; a no-op without STRESS_DIR.
    void write() const;

private:
    void add(std::string lhs, const char* op, std::string rhs) {
        lines_.push_back(lhs + " " + op + " " + rhs);
    }
    std::vector<std::string> lines_;
};

// Top-level number `key` ("a" or "a.b" for one level down) of a JSON object.
std::optional<long long> json_number(std::string_view json, std::string_view key);

std::string read_file(const std::string& path);

// The stats file tcpfix writes for pid under the supervisor's directory.
std::string stats_path_for(long pid);

}  // namespace stress
