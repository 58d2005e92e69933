// TCPFIX_STATS: the counters as JSON, written atomically (temporary file,
// then rename) at exit and refreshed from hooked calls at most every two
// seconds, so a process killed by a signal still leaves recent counters.
#pragma once

#include <atomic>
#include <cstdint>

#include "policy/config.hpp"

namespace tcpfix::stats_file {

namespace detail {
extern std::atomic<bool> g_enabled;  // TCPFIX_STATS names a file this process writes
void refresh_if_due();
}  // namespace detail

// Prepares the path (%p becomes the PID) and the policy object; nothing is
// written in a secure (set-user-ID) process.
void init(const policy::Config& config, bool secure);

// In a forked child: a path with %p moves to the child's PID; a path without
// it is left to the parent, which would otherwise be overwritten.
void after_fork_in_child();

// Writes if the last write is more than the refresh interval ago. One load
// without TCPFIX_STATS.
inline void maybe_refresh() {
    if (detail::g_enabled.load(std::memory_order_relaxed)) detail::refresh_if_due();
}

// The watchdog thread's tick: refreshes a file whose counters moved since it
// was written, so a process that went idle and is then killed by a signal
// leaves its last counters. Returns when it wants the next tick.
std::int64_t on_timer(std::int64_t now_ns);

// Starts the watchdog thread for on_timer (once, at the first connect).
void start_refresher();

// Writes now (the exit handler).
void write_now();

}  // namespace tcpfix::stats_file
