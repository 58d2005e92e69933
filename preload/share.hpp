// TCPFIX_SHARE: the process's view of a share — the segment in /dev/shm that
// every process of this user naming the same share maps — and the few
// system calls the pacing needs on it (a futex to wake waiters). The layout
// and the logic are policy/share.*; storm.cpp applies them to connects.
#pragma once

#include <atomic>
#include <cstdint>

#include "policy/config.hpp"
#include "policy/net.hpp"
#include "policy/share.hpp"
#include "policy/storm.hpp"

namespace tcpfix::share {

namespace detail {
extern std::atomic<int> g_state;  // 0: no share asked for (or given up on)
policy::share::Entry* entry_slow(const policy::Endpoint& dest);
policy::share::Entry* entry_remembered(const policy::Endpoint& dest, policy::DestinationState& local);
}  // namespace detail

// Records TCPFIX_SHARE; nothing is opened until the first matched connect
// (a process that never connects — a shell around a client — never maps it).
// A set-user-ID process ignores the share, with one warning.
void init(const policy::Config& config, bool secure);

// Whether TCPFIX_SHARE names a share this process may use (attached or not yet).
inline bool in_use() { return detail::g_state.load(std::memory_order_relaxed) != 0; }

// The common state of a matched destination: attaches on first use, and
// claims this process's slot after a fork. nullptr when there is no share,
// it could not be trusted (one warning, then the process paces on its own),
// or its table is full (one warning; this destination is paced per process).
// Looked up in the segment once per destination, then remembered in its
// local state `local` (a forked child forgets it with the rest of its
// counters, and claims its own process slot on the next lookup).
inline policy::share::Entry* entry(const policy::Endpoint& dest, policy::DestinationState& local) {
    if (__builtin_expect(detail::g_state.load(std::memory_order_relaxed) == 0, 1)) return nullptr;
    if (policy::share::Entry* e = local.shared.load(std::memory_order_acquire)) return e;
    return detail::entry_remembered(dest, local);
}

// Counts a thread of this process as waiting for `e` (for `tcpfix top`):
// a record for unmark_waiting, or -1.
int mark_waiting(policy::share::Entry& e);
void unmark_waiting(int record);

// Sleeps until `until` (CLOCK_MONOTONIC) or until e.wake moves from `seen`
// (a failing spell ended in some process). False when a signal should end
// the wait with EINTR (a blocking caller whose handlers do not restart).
bool wait_for_wake(policy::share::Entry& e, std::uint32_t seen, std::int64_t until,
                   bool nonblocking);

// Wakes every process waiting on e (after policy::share::record_success).
void wake_all(policy::share::Entry& e);

// In a forked child: the mapping is inherited, the process slot is the
// parent's; the child claims its own on first use.
void after_fork_in_child();

// At exit: gives the process slot back.
void detach();

}  // namespace tcpfix::share
