// The pieces a matched connect() goes through, each in its own file:
//   source.cpp   TCPFIX_SOURCE_ADDRS, TCPFIX_PORT_RANGE, TCPFIX_BIND_NO_PORT (incident 002)
//   deadline.cpp TCPFIX_CONNECT_TIMEOUT and its watchdog (incident 003)
//   replace.cpp  a fresh socket in the application's descriptor, for retries
// Every function returns 0 / a result, or -errno, and leaves errno alone.
#pragma once

#include <sys/socket.h>

#include <cstdint>

#include "policy/config.hpp"
#include "preload/fdtable.hpp"

namespace tcpfix::connect_policy {

// --- source.cpp ---

// Refuses (exit 2, SPEC format) a TCPFIX_SOURCE_ADDRS entry that is not an
// address of this host; warns once when the kernel lacks IP_LOCAL_PORT_RANGE.
void check_at_start(const policy::Config& config);

// Which source address a connect uses, and which it tries next on EADDRNOTAVAIL.
struct SourceCursor {
    int first = -1;    // position among the addresses of the destination's family
    int tried = 0;     // how many of them this connect has used
    int current = -1;  // index into TCPFIX_SOURCE_ADDRS of the one bound now, or -1
};

// Before a matched connect: the per-socket port range, then (unless the
// application bound the socket itself) a bind to the next source address
// with IP_BIND_ADDRESS_NO_PORT.
int prepare_source(int fd, fdtable::Slot& s, const policy::Endpoint& dest, SourceCursor& cursor);

// After EADDRNOTAVAIL: true when another source address remains to try.
bool next_source(const fdtable::Slot& s, const policy::Endpoint& dest, SourceCursor& cursor);

// Before the application's bind(): IP_BIND_ADDRESS_NO_PORT and the port
// range when it binds to port 0. Then binds.
int bind_like_app(int fd, fdtable::Slot* s, const sockaddr* addr, socklen_t len);

// --- replace.cpp ---

// Puts a fresh TCP socket at fd: same family, file status flags and
// close-on-exec flag, every option the application set replayed, and its
// bind() replayed. The old socket (never connected) is closed by the swap.
// Only safe while the application is inside connect() on fd.
int replace_socket(int fd, fdtable::Slot& s);

// --- deadline.cpp ---

struct AttemptResult {
    int result = 0;          // 0, -errno, or -EINPROGRESS for a non-blocking caller
    bool timed_out = false;  // the handshake did not complete in time
};

// One connect attempt bounded by TCPFIX_CONNECT_TIMEOUT. A blocking caller
// waits here; a non-blocking caller waits here too unless this is its last
// attempt (`last`), which returns EINPROGRESS and is cut short by the
// watchdog at the deadline (the poller then sees ETIMEDOUT in SO_ERROR).
AttemptResult timed_connect(int fd, std::uint32_t index, fdtable::Slot& s, const sockaddr* addr,
                            socklen_t len, bool last);

// The socket is being closed or its connect was seen to finish: forget its deadline.
void disarm(std::uint32_t index, fdtable::Slot& s);

// A pending connect's SO_ERROR as the application must see it.
int translate_so_error(fdtable::Slot& s, int err);

// Starts the watchdog thread if it is not running (deadlines, and the reaper's
// timer); false if it cannot be started.
bool start_timer();

// True once the watchdog thread runs in this process.
bool timer_running();

// Wakes the watchdog thread to look at its timers again (a socket was just
// held), unless it sleeps only until due_ns or less anyway: a wake-up costs
// the caller a few tens of microseconds when the scheduler lets the woken
// thread run first.
void wake_timer_unless_due_by(std::int64_t due_ns);

// A signal interrupted a wait a blocking connect() would have been in: true
// when every installed handler has SA_RESTART (the kernel would restart it).
bool handlers_restart();

// In a forked child: no watchdog thread yet, no deadlines inherited.
void after_fork_in_child();

}  // namespace tcpfix::connect_policy
