// Sockets whose last ACK was still due when the application let go of them.
//
// Under TCPFIX_CLOSE=rst a close right after a final write (QUIT, Terminate)
// usually finds the bytes sent but not yet acknowledged, and an RST then
// would forfeit their retransmission (KERNEL-FACTS 2). Rather than wait in
// the application's close(), tcpfix keeps a descriptor of its own to the
// socket — above the application's numbers, close-on-exec, marked as
// tcpfix's own in the descriptor table — and the watchdog thread decides:
// RST as soon as every byte is acknowledged, a normal close if the peer
// closes first (no TIME_WAIT to avoid then), a normal close when the
// background budget (policy::WaitBudget::Background) runs out. The socket
// stays ESTABLISHED meanwhile: no FIN is sent, so a peer that answers the
// final message with its own FIN (PostgreSQL) leaves the TIME_WAIT on its
// side. A bounded number is held; past the bound the close waits on the
// spot, as before.
#pragma once

#include <atomic>
#include <cstdint>

#include "policy/close.hpp"
#include "preload/fdtable.hpp"

namespace tcpfix::hold {

namespace detail {
extern std::atomic<bool> g_thread_wanted;
}

// How the application let go of the socket (for the stats).
enum class Origin : std::uint8_t { Close, Dup2 };

// Reserves a place and a descriptor of tcpfix's own for the socket at fd,
// which the application is about to close or replace. Returns the place
// (>= 0), or -1 when the caller must decide on the spot: tcpfix holds as
// many as it may already (counted), no descriptor number is free, the
// background thread is not running, or the process is exiting. Nothing is
// decided until publish().
int claim(int fd, const fdtable::Slot& s, const policy::SocketProbe& probe, Origin origin);

// True once a close wanted to hold a socket and found no background thread:
// the next matched connect() starts it. Until then no thread exists for this
// (a second thread makes every glibc cancellation point — read, write,
// close, connect — take its multi-threaded path, ~50 instructions a call).
inline bool thread_wanted() { return detail::g_thread_wanted.load(std::memory_order_relaxed); }

// Hands a claimed place to the background thread; call once the
// application's descriptor is gone.
void publish(int place);

// Gives a claimed place up (the call that was to close the application's
// descriptor failed): tcpfix's descriptor is closed, the socket untouched.
void cancel(int place);

// The watchdog's tick: decides every held socket that is due; returns when
// it wants to run next (INT64_MAX: nothing held).
std::int64_t on_timer(std::int64_t now_ns);

// The application closed or replaced descriptor fd, which the table marked
// as tcpfix's own (it was taken out of the table already): if it is a held
// socket, tcpfix gives it up, waiting while the background thread acts on it.
void forget_fd(int fd);

// Exit and exec: no more sockets are held from now on (closes decide on the
// spot), and those held are decided by deadline_ns at the latest. One round:
// returns true while some are still held (the caller sleeps and calls again).
bool settle_round(std::int64_t now_ns, std::int64_t deadline_ns);
void stop_holding();

// In a forked child: closes the child's copies of the held descriptors.
void after_fork_in_child();

}  // namespace tcpfix::hold
