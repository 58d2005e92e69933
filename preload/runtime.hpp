// The library's process-wide state: the configuration (immutable once the
// constructor has run, so reads need no lock), the counters, and small helpers
// every hook uses.
#pragma once

#include <cerrno>
#include <cstdint>
#include <ctime>

#include "policy/config.hpp"
#include "policy/stats.hpp"

namespace tcpfix::runtime {

namespace detail {
extern std::atomic<bool> g_active;
extern const policy::Config* g_config;
extern policy::Counters g_counters;
}

// True once the constructor has parsed a configuration that asks for
// something. Until then, and under TCPFIX_DISABLE=1, every hook passes through.
inline bool active() { return detail::g_active.load(std::memory_order_relaxed); }

// The configuration; only valid when active().
inline const policy::Config& config() { return *detail::g_config; }

inline policy::Counters& counters() { return detail::g_counters; }

// The process ID, refreshed after fork.
long pid();

// True in a child created without fork() handlers (vfork, posix_spawn's
// clone, _Fork): it may share the parent's memory, so the hooks must leave
// the table and the sockets alone there. Costs a getpid() system call: only
// on paths that are about to act.
bool in_unannounced_child();

// Monotonic clock in nanoseconds.
inline std::int64_t now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// Saves errno and puts it back: tcpfix's own syscalls never leak an errno.
class ErrnoGuard {
public:
    ErrnoGuard() : saved_(errno) {}
    ~ErrnoGuard() { errno = saved_; }
    ErrnoGuard(const ErrnoGuard&) = delete;
    ErrnoGuard& operator=(const ErrnoGuard&) = delete;

private:
    int saved_;
};

// Turns an internal result (value, or -errno) into the C convention: sets
// errno only on failure.
inline int to_c(int result) {
    if (result < 0) {
        errno = -result;
        return -1;
    }
    return result;
}

// Calls a libc function and returns its result, or -errno on failure, leaving
// errno as it was.
template <typename Fn, typename... Args>
int call_errno(Fn* fn, Args... args) {
    int saved = errno;
    int r = fn(args...);
    if (r < 0) r = -errno;
    errno = saved;
    return r;
}

// Calls a libc function whose result goes straight back to the application:
// its result, or -errno on failure (errno then set as the application will
// see it anyway).
template <typename Fn, typename... Args>
inline int call_direct(Fn* fn, Args... args) {
    int r = fn(args...);
    return r < 0 ? -errno : r;
}

}  // namespace tcpfix::runtime
