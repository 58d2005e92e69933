// This network namespace's TCP sockets, read the way ss reads them: one
// NETLINK_SOCK_DIAG dump per address family (no /proc/net/tcp parsing, which
// is slow with many sockets), and the processes that own them, from the
// socket inodes in /proc/*/fd (only those this user may look at).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "policy/net.hpp"

namespace tcpfix::tools::diag {

// The kernel's TCP states (include/net/tcp_states.h), numbered as it numbers them.
enum TcpState : std::uint8_t {
    kEstablished = 1,
    kSynSent,
    kSynRecv,
    kFinWait1,
    kFinWait2,
    kTimeWait,
    kClose,
    kCloseWait,
    kLastAck,
    kListen,
    kClosing,
    kNewSynRecv,
    kStateCount
};

// "ESTABLISHED", "TIME_WAIT", ... ("UNKNOWN" out of range).
const char* state_name(unsigned state);

// One socket as sock_diag reports it. Addresses are normalised (IPv4-mapped
// IPv6 becomes IPv4), ports in host byte order.
struct TcpSocket {
    std::uint8_t state = 0;
    policy::Endpoint local;
    policy::Endpoint remote;
    std::uint64_t cookie = 0;  // the kernel's socket cookie: unique while it exists
    std::uint32_t inode = 0;   // 0 for TIME_WAIT and orphaned sockets (no descriptor)
    std::uint32_t uid = 0;
    std::uint32_t rqueue = 0;      // unread bytes; for LISTEN the accept queue length
    std::uint32_t wqueue = 0;      // unsent/unacked bytes; for LISTEN the backlog
    std::uint32_t expires_ms = 0;  // time left on the socket's timer (TIME_WAIT: until it goes)
};

// Bit of `state` for a dump's state mask.
constexpr std::uint32_t state_bit(unsigned state) {
    return 1u << state;
}
constexpr std::uint32_t kAllStates = 0xfffu & ~state_bit(kNewSynRecv);

// Every TCP socket (IPv4 and IPv6) of this network namespace whose state is in
// `states`. Throws std::system_error naming the call that failed.
std::vector<TcpSocket> dump_tcp(std::uint32_t states = kAllStates);

// A process that holds sockets.
struct Owner {
    int pid = 0;
    std::string command;  // /proc/PID/comm
};

// Socket inode -> its owner, for the inodes in `wanted` (all sockets when
// empty), from /proc/*/fd. Processes this user may not inspect are skipped:
// their sockets simply have no owner. The first (lowest) PID wins when a
// socket is shared (inherited across fork).
std::unordered_map<std::uint32_t, Owner> socket_owners(const std::vector<std::uint32_t>& wanted);

}  // namespace tcpfix::tools::diag
