// Start-up and shutdown: read the TCPFIX_* variables once, refuse a malformed
// one before main, set up logging and stats, and keep state right across fork.
#include "preload/runtime.hpp"

#include <pthread.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

#include "preload/connect_policy.hpp"
#include "preload/fdtable.hpp"
#include "preload/hold.hpp"
#include "preload/hooks.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"
#include "preload/share.hpp"
#include "preload/stats_file.hpp"
#include "preload/storm.hpp"

extern char** environ;

namespace tcpfix::runtime {

namespace detail {
std::atomic<bool> g_active{false};
const policy::Config* g_config = nullptr;
policy::Counters g_counters;
}

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

bool in_unannounced_child() {
    return real::raw_syscall(SYS_getpid) != g_pid.load(std::memory_order_relaxed);
}

namespace {

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
    if (!active()) return;
    hooks::close_open_at_exit();
    storm::summarise();
    stats_file::write_now();
    share::detach();
}

}  // namespace
}  // namespace tcpfix::runtime
