// The internal side of every hook: returns the result or -errno and never
// touches errno, so the exported shims and syscall() share one body.
#pragma once

#include <sys/socket.h>

#include <cstdint>

#include "policy/close.hpp"
#include "policy/config.hpp"
#include "preload/fdtable.hpp"
#include "preload/hold.hpp"

namespace tcpfix::hooks {

int do_socket(int domain, int type, int protocol);
int do_accept4(int fd, sockaddr* addr, socklen_t* len, int flags, bool plain_accept);
int do_connect(int fd, const sockaddr* addr, socklen_t len);
int do_bind(int fd, const sockaddr* addr, socklen_t len);
int do_setsockopt(int fd, int level, int name, const void* value, socklen_t len);
int do_getsockopt(int fd, int level, int name, void* value, socklen_t* len);
int do_close(int fd);
int do_close_range(unsigned first, unsigned last, int flags);
int do_dup(int fd);
int do_dup3(int from, int to, int flags, bool is_dup2);
int do_fcntl_dupfd(int fd, int cmd, int min_fd);

// Applies the policy to every tracked descriptor in [first, last] and takes
// them out of the table, ahead of a close_range() or closefrom().
void take_range(unsigned first, unsigned last);

// What apply_close_policy() did to the socket, so that a dup2() that fails
// after all can undo it.
struct CloseApplied {
    bool linger = false;  // SO_LINGER {1,0} is set: the close will be an RST
    int held = -1;        // a hold place was claimed: hold::publish() or hold::cancel() it
};

// Applies TCPFIX_CLOSE to a socket about to be closed or replaced; `index`
// is the slot just taken out of the table for fd (the caller releases it).
CloseApplied apply_close_policy(int fd, std::uint32_t index, hold::Origin origin);

// True when apply_close_policy() would only count the close: TCPFIX_CLOSE=keep,
// no reconnect backoff to learn from it, no connect deadline to disarm. The
// caller then bumps counters().closes itself and skips the rest.
inline bool close_only_counts(const policy::Config& config, const fdtable::Slot& s) {
    return config.close == policy::CloseMode::Keep && !config.reconnect_backoff &&
           (s.flags.load(std::memory_order_acquire) & fdtable::kDeadlineArmed) == 0;
}

// True when closing or replacing the slot's descriptor (its reference still
// held) ends the connection: it is the socket's last descriptor, or
// rst-always resets the socket whatever other descriptors refer to it.
inline bool closing_ends_connection(policy::CloseMode mode, const fdtable::Slot& s) {
    return mode == policy::CloseMode::RstAlways || s.refs.load(std::memory_order_acquire) == 1;
}

// True when a descriptor that is not the socket's last (another one refers
// to the same slot) would only be counted as closed: TCPFIX_CLOSE=keep or
// rst (rst-always resets even a shared socket), no connect deadline armed,
// and no debug log to write about it. A reconnect backoff learns nothing
// here: the connection goes on, and is judged when it ends (or by the scan).
inline bool copy_close_only_counts(const policy::Config& config, const fdtable::Slot& s) {
    return config.close != policy::CloseMode::RstAlways && config.log < policy::LogLevel::Debug &&
           (s.flags.load(std::memory_order_acquire) & fdtable::kDeadlineArmed) == 0;
}

// True when closing or replacing the slot's descriptor would only count the
// close: close_only_counts(), or copy_close_only_counts() while another
// descriptor still refers to the socket.
inline bool closing_only_counts(const policy::Config& config, const fdtable::Slot& s) {
    return close_only_counts(config, s) ||
           (s.refs.load(std::memory_order_acquire) > 1 && copy_close_only_counts(config, s));
}

// What the table knows of the socket, for policy::decide_close().
policy::SocketBookkeeping bookkeeping(int fd, const fdtable::Slot& s, std::uint32_t flags);

// Reads the kernel's view of a TCP socket: TCP_INFO alone on Linux 4.6+
// (SIOCOUTQ too for a half-closed socket with segments in flight), TCP_INFO,
// SIOCOUTQ and SIOCOUTQNSD before; false if a call failed (fd is no TCP
// socket: a stale entry; SIOCOUTQ on a listener).
bool probe_socket(int fd, policy::SocketProbe& probe);

// The application closed or replaced a descriptor the table marks as
// tcpfix's own (taken out of the table already): the log file, or a held socket.
void forget_owned(int fd);

// exit.cpp: the policy for matched connections still open when the process
// exits (run from the library's destructor, after the application's atexit
// handlers), and the held sockets settled; at most 50 ms of waiting.
void close_open_at_exit();
// Before an exec: the held sockets are settled within the same bound.
void settle_before_exec();

}  // namespace tcpfix::hooks
