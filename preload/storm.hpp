// Reconnect storms (incident 001): pacing, abandonment, CLOSE_WAIT reaping.
#pragma once

#include <cstdint>

#include "policy/config.hpp"
#include "preload/fdtable.hpp"
#include "preload/share.hpp"

namespace tcpfix::storm {

// Before a matched connect: scans if due, then waits out the destination's
// backoff and rate slot. Returns 0, or -EINTR when a signal ends the wait of
// a blocking caller as it would end a blocking connect. d is the
// destination's local state (counters().destinations.get(s.dest())).
int before_connect(int fd, fdtable::Slot& s, policy::DestinationState& d);

// Whether before_connect() has anything to do: a pacing policy, reaping, or a share.
inline bool wanted(const policy::Config& c) {
    return c.reconnect_backoff || c.reap_close_wait_ns || c.connect_rate_per_s || share::in_use();
}

// A matched connect to s.dest failed (from connect() or SO_ERROR).
void after_failure(const fdtable::Slot& s);

// A matched connection's descriptor is being closed (the caller holds its
// reference still): if that ends the connection and it carried data, its
// destination is healthy again (short connections are usually gone before a
// scan sees them).
void on_close_backoff(int fd, fdtable::Slot& s);
inline void on_close(int fd, fdtable::Slot& s, const policy::Config& c) {
    if (c.reconnect_backoff) on_close_backoff(fd, s);
}

// Classifies this process's matched connections and reaps CLOSE_WAIT ones.
void scan(std::int64_t now_ns);
std::int64_t scan_interval_ns();

// The watchdog thread's tick: scans when due; returns when it wants the next.
std::int64_t on_timer(std::int64_t now_ns);

// In a forked child: forget a scan another thread had under way.
void after_fork_in_child();

// Logs one line per destination with sockets reaped since its last line.
void summarise();

}  // namespace tcpfix::storm
