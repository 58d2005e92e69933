// The daemon's hands on sockets: NETLINK_SOCK_DIAG lookups, dumps and
// SOCK_DESTROY (what `ss -K` does), in the daemon's network namespace. A
// socket is named by its 4-tuple and, where known, its cookie: the kernel
// refuses (ESTALE) to act on another socket that took the same 4-tuple.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "tools/fd.hpp"

namespace tcpfix::tools::attach {

inline constexpr std::uint64_t kNoCookie = ~std::uint64_t{0};

struct SocketKey {
    std::uint8_t family = 0;  // the socket's: AF_INET or AF_INET6 (addresses as it holds them)
    std::uint8_t local[16] = {}, remote[16] = {};
    std::uint16_t local_port = 0, remote_port = 0;  // host byte order
    std::uint64_t cookie = kNoCookie;
};

struct SocketInfo {
    SocketKey key;  // with the cookie the kernel reported
    std::uint8_t state = 0;
    std::uint8_t timer = 0;  // 3: a TIME_WAIT mini-socket (whatever its state: FIN_WAIT2 too)
    std::uint32_t inode = 0;
    std::uint32_t rqueue = 0;     // unread bytes
    std::uint64_t cgroup_id = 0;  // 0 when the kernel did not say (TIME_WAIT, Linux < 5.9)
};

class SockDiag {
  public:
    SockDiag();  // throws std::system_error when netlink sock_diag is unavailable

    // The socket with this 4-tuple (and cookie, unless kNoCookie), or
    // nullopt when there is none. Throws on other errors.
    std::optional<SocketInfo> lookup(const SocketKey& key);

    // SOCK_DESTROY: 0, or the errno value (ENOENT gone, ESTALE another socket
    // has the 4-tuple now, EOPNOTSUPP no CONFIG_INET_DIAG_DESTROY or a
    // TIME_WAIT entry before Linux 6.0).
    int destroy(const SocketKey& key);

    // Every TCP socket (IPv4 and IPv6) in one of `states` (a bit per state).
    std::vector<SocketInfo> dump(std::uint32_t states);

  private:
    int request(std::uint16_t type, std::uint16_t flags, const SocketKey& key, std::uint32_t states,
                std::vector<SocketInfo>* out);
    Fd nl_;
    std::uint32_t seq_ = 0;
};

}  // namespace tcpfix::tools::attach
