// The library's process-wide state: the configuration (immutable once the
// constructor has run, so reads need no lock), the counters, and small helpers
// every hook uses.
#pragma once

#include <atomic>
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

// The fork marker: a word that reads kAnnounced in a process whose every
// child announced itself through the fork handlers. It sits on a page marked
// MADV_WIPEONFORK, so the kernel zeroes it in any child with a copy of this
// memory (fork without handlers, _Fork, a raw clone or fork system call);
// the fork child handler writes it again. It reads kCheckPid where memory
// cannot tell (a child sharing it may exist, or the kernel lacks
// MADV_WIPEONFORK): the hooks then ask getpid().
enum : std::uint32_t { kWiped = 0, kAnnounced = 0x7463'7066, kCheckPid = 0x7063'6b21 };
extern std::atomic<std::uint32_t>* g_fork_marker;

// Per thread: a vfork() from this thread may have a child running on its
// stack, in this memory (vfork_pending()), until the parent sees it ended.
extern thread_local constinit std::uint8_t t_vfork;

bool in_unannounced_child_slow();
}  // namespace detail

// True once the constructor has parsed a configuration that asks for
// something. Until then, and under TCPFIX_DISABLE=1, every hook passes through.
inline bool active() { return detail::g_active.load(std::memory_order_relaxed); }

// The configuration; only valid when active().
inline const policy::Config& config() { return *detail::g_config; }

inline policy::Counters& counters() { return detail::g_counters; }

// The process ID, refreshed after fork.
long pid();

// True in a child created without fork() handlers: a vfork() child or a
// clone(CLONE_VM) child shares the parent's memory, and a raw clone or fork
// system call (or _Fork) copies it without telling tcpfix; either way the
// hooks must leave the table and the sockets alone there. Two loads while no
// such child may exist; a getpid() system call after a vfork() (until the
// parent has seen the child exec) or a clone(CLONE_VM), and always where the
// kernel lacks MADV_WIPEONFORK (Linux < 4.14).
inline bool in_unannounced_child() {
    if (__builtin_expect(detail::g_fork_marker->load(std::memory_order_relaxed) == detail::kAnnounced &&
                             detail::t_vfork == 0,
                         1))
        return false;
    return detail::in_unannounced_child_slow();
}

// Called by the vfork() hook just before the real vfork(): the child will run
// on this thread's stack, sharing its memory and its thread-local variables,
// and may exec a program (through any exec function, hooked or not) that
// keeps every socket not close-on-exec.
void vfork_pending();

// Called before a clone() (or syscall(SYS_clone...)) that makes a child
// sharing this process's memory, which may run for as long as it likes: from
// now on every hook asks getpid(). It too may exec a program.
void shared_memory_child();

// Called by the exec hooks just before the real exec: in a vfork() child,
// marks that the child is about to give the memory back (if the exec fails it
// still runs; the parent resumes only once it exec'ed or exited either way).
void before_exec_in_child();

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
