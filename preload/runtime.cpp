// Start-up and shutdown: read the TCPFIX_* variables once, refuse a malformed
// one before main, set up logging and stats, and keep state right across fork.
#include "preload/runtime.hpp"

#include <pthread.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <new>
#include <string_view>
#include <utility>
#include <vector>

#include "preload/connect_policy.hpp"
#include "preload/fdtable.hpp"
#include "preload/hold.hpp"
#include "preload/hooks.hpp"
#include "preload/kernel.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"
#include "preload/share.hpp"
#include "preload/stats_file.hpp"
#include "preload/storm.hpp"

extern char** environ;

namespace tcpfix::runtime {

namespace {

// Where the fork marker lives until the constructor has its page, and for
// good where memory cannot tell a child from its parent: the kernel lacks
// MADV_WIPEONFORK, or this architecture has no vfork()/clone() hook (see
// spawn.cpp), so a child sharing the memory would go unseen.
std::atomic<std::uint32_t> g_check_pid_word{detail::kCheckPid};

// The page marked MADV_WIPEONFORK, once set up.
std::atomic<std::uint32_t>* g_wipe_page = nullptr;

#if defined(__x86_64__)
constexpr bool kHooksSharedMemoryChildren = true;
#else
constexpr bool kHooksSharedMemoryChildren = false;
#endif

// t_vfork: no vfork() child of this thread can be running; one may be (set
// by the vfork() hook); it went through an exec hook, so by the time the
// parent thread runs again it has exec'ed or exited.
enum : std::uint8_t { kNoVfork = 0, kVforkPending = 1, kVforkExeced = 2 };

}  // namespace

namespace detail {
std::atomic<bool> g_active{false};
const policy::Config* g_config = nullptr;
policy::Counters g_counters;
std::atomic<std::uint32_t>* g_fork_marker = &g_check_pid_word;
thread_local constinit std::uint8_t t_vfork = kNoVfork;
}  // namespace detail

namespace {

using detail::g_config;
using detail::g_counters;
std::atomic<long> g_pid{0};

// Variables whose behaviour this version does not carry out yet: accepted
// (so experiments can be written against the full surface) and said so.
constexpr std::string_view kNotYetApplied[] = {"(none)"};

// Every socket that exists at the fork is held by two processes. Bumping
// before and after (in both) also covers a socket another thread makes
// between the prepare handler and the fork itself.
void prepare_fork() { fdtable::bump_fork_epoch(); }

void parent_after_fork() { fdtable::bump_fork_epoch(); }

void child_after_fork() {
    fdtable::bump_fork_epoch();
    g_pid.store(getpid(), std::memory_order_relaxed);
    // The kernel zeroed the marker's page in this child; a child sharing the
    // parent's memory is the parent's concern, not this copy's.
    if (g_wipe_page != nullptr) g_wipe_page->store(detail::kAnnounced, std::memory_order_relaxed);
    detail::t_vfork = kNoVfork;
    g_counters.reset();
    stats_file::after_fork_in_child();
    connect_policy::after_fork_in_child();
    hold::after_fork_in_child();
    storm::after_fork_in_child();
    share::after_fork_in_child();
}

}  // namespace

long pid() {
    long p = g_pid.load(std::memory_order_relaxed);
    if (p == 0) {
        p = getpid();
        g_pid.store(p, std::memory_order_relaxed);
    }
    return p;
}

namespace detail {

bool in_unannounced_child_slow() {
    // Zeroed by the kernel: a copy of this memory that ran no fork handler.
    if (g_fork_marker->load(std::memory_order_relaxed) == kWiped) return true;
    // Sharing the memory (vfork, clone(CLONE_VM)), or a copy the kernel
    // could not mark: only the process ID tells.
    if (real::raw_syscall(SYS_getpid) != g_pid.load(std::memory_order_relaxed)) return true;
    // This is the parent. A vfork() child of this thread that went through an
    // exec hook has exec'ed or exited by now (vfork suspends this thread until
    // then): the thread is back to the two loads. Still pending, the vfork()
    // may not even have happened yet (a signal handler between the hook and
    // the system call): keep asking.
    if (t_vfork == kVforkExeced) t_vfork = kNoVfork;
    return false;
}

}  // namespace detail

void vfork_pending() {
    detail::t_vfork = kVforkPending;
    fdtable::bump_spawn_epoch();
}

void shared_memory_child() {
    detail::g_fork_marker->store(detail::kCheckPid, std::memory_order_relaxed);
    fdtable::bump_spawn_epoch();
}

void before_exec_in_child() {
    if (detail::t_vfork == kVforkPending &&
        real::raw_syscall(SYS_getpid) != g_pid.load(std::memory_order_relaxed))
        detail::t_vfork = kVforkExeced;
}

namespace {

// The fork marker's page (Linux 4.14+); without it, or without the vfork()
// and clone() hooks, the marker stays kCheckPid.
void set_up_fork_marker() {
    if (!kHooksSharedMemoryChildren) return;
    const long size = sysconf(_SC_PAGESIZE);
    void* page = mmap(nullptr, static_cast<std::size_t>(size), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) return;
    if (!kernel::wipe_on_fork(page, static_cast<std::size_t>(size))) {
        munmap(page, static_cast<std::size_t>(size));
        return;
    }
    g_wipe_page = new (page) std::atomic<std::uint32_t>(detail::kAnnounced);
    detail::g_fork_marker = g_wipe_page;
}

__attribute__((constructor(101))) void initialise() {
    real::resolve_all();
    g_pid.store(getpid(), std::memory_order_relaxed);

    std::vector<std::pair<std::string_view, std::string_view>> vars;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
        std::string_view kv(*e);
        if (kv.rfind("TCPFIX_", 0) != 0) continue;
        auto eq = kv.find('=');
        if (eq == std::string_view::npos) continue;
        vars.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
    }
    auto parsed = policy::parse_config(vars);
    if (auto* refusal = std::get_if<std::string>(&parsed)) log::refuse(*refusal);

    // Lives for the process's lifetime: hooks read it without a lock.
    g_config = new policy::Config(std::move(std::get<policy::Config>(parsed)));
    if (!g_config->active()) return;

    connect_policy::check_at_start(*g_config);
    bool secure = getauxval(AT_SECURE) != 0;
    log::init(*g_config, secure);
    stats_file::init(*g_config, secure);
    share::init(*g_config, secure);
    set_up_fork_marker();
    pthread_atfork(prepare_fork, parent_after_fork, child_after_fork);
    detail::g_active.store(true, std::memory_order_release);

    for (const auto& [name, value] : g_config->given) {
        for (auto pending : kNotYetApplied)
            if (name == pending)
                log::at(policy::LogLevel::Info, "{}={} accepted but not yet applied by this version",
                        name, value);
    }
    log::at(policy::LogLevel::Debug, "loaded: close={}, {} destination rule(s)",
            policy::to_string(g_config->close), g_config->match.rules().size());
}

// Runs in exit() after the application's atexit handlers and static
// destructors (glibc calls the shared objects' destructors last).
__attribute__((destructor)) void finish() {
    // A child that ran no fork handler holds its parent's counters and share
    // slot (a copy, or the very memory): they are the parent's to write out.
    if (!active() || in_unannounced_child()) return;
    hooks::close_open_at_exit();
    storm::summarise();
    stats_file::write_now();
    share::detach();
}

}  // namespace
}  // namespace tcpfix::runtime
