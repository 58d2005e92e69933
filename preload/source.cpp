// Port space (incident 002): spread matched connects over TCPFIX_SOURCE_ADDRS
// with IP_BIND_ADDRESS_NO_PORT, so each source address brings its own ~64k
// ports per destination; narrow the ephemeral range per socket
// (TCPFIX_PORT_RANGE); keep an application's bind() to port 0 from pinning a
// port before the destination is known (TCPFIX_BIND_NO_PORT).
#include <netinet/in.h>

#include <atomic>
#include <cstring>

#include "preload/connect_policy.hpp"
#include "preload/kernel.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#ifndef IP_LOCAL_PORT_RANGE
#define IP_LOCAL_PORT_RANGE 51
#endif

namespace tcpfix::connect_policy {
namespace {

using runtime::call_errno;

std::atomic<unsigned> g_round_robin{0};

// A sockaddr for `ip` usable on a socket of `domain` (IPv4 becomes IPv4-mapped on AF_INET6).
socklen_t make_sockaddr(int domain, const policy::IpAddr& ip, sockaddr_storage& out) {
    std::memset(&out, 0, sizeof out);
    if (domain == AF_INET && ip.family == AF_INET) {
        auto* in = reinterpret_cast<sockaddr_in*>(&out);
        in->sin_family = AF_INET;
        std::memcpy(&in->sin_addr, ip.bytes.data(), 4);
        return sizeof(sockaddr_in);
    }
    if (domain != AF_INET6) return 0;
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&out);
    in6->sin6_family = AF_INET6;
    if (ip.family == AF_INET) {
        in6->sin6_addr.s6_addr[10] = 0xff;
        in6->sin6_addr.s6_addr[11] = 0xff;
        std::memcpy(&in6->sin6_addr.s6_addr[12], ip.bytes.data(), 4);
    } else {
        std::memcpy(&in6->sin6_addr, ip.bytes.data(), 16);
    }
    return sizeof(sockaddr_in6);
}

// How many source addresses serve this destination's family, and the k-th of them.
int count_for(const policy::Endpoint& dest) {
    int n = 0;
    for (const auto& ip : runtime::config().source_addrs) n += ip.family == dest.addr.family;
    return n;
}

int kth_for(const policy::Endpoint& dest, int k) {
    const auto& addrs = runtime::config().source_addrs;
    for (int i = 0; i < static_cast<int>(addrs.size()); ++i)
        if (addrs[i].family == dest.addr.family && k-- == 0) return i;
    return -1;
}

int set_int(int fd, int level, int name, int value) {
    return call_errno(real::setsockopt.get(), fd, level, name, static_cast<const void*>(&value),
                      static_cast<socklen_t>(sizeof value));
}

void apply_port_range(int fd) {
    const auto& range = runtime::config().port_range;
    if (!range || kernel::lacks(policy::Facility::LocalPortRange)) return;
    int r = set_int(fd, IPPROTO_IP, IP_LOCAL_PORT_RANGE, (range->hi << 16) | range->lo);
    if (r == -ENOPROTOOPT) kernel::missing(policy::Facility::LocalPortRange, ENOPROTOOPT);
}

// IP_BIND_ADDRESS_NO_PORT before a bind to port 0; a kernel without it
// (ENOPROTOOPT, Linux < 4.2) binds the port at bind() time instead.
void set_no_port(int fd) {
    if (kernel::lacks(policy::Facility::BindAddressNoPort)) return;
    int r = set_int(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1);
    if (r == -ENOPROTOOPT) kernel::missing(policy::Facility::BindAddressNoPort, ENOPROTOOPT);
}

}  // namespace

void check_at_start(const policy::Config& config) {
    std::string bad;
    for (const auto& ip : config.source_addrs) {
        int domain = ip.family;
        int fd = call_errno(real::socket.get(), domain, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) continue;  // no such family here: connects of that family will say so
        sockaddr_storage sa;
        socklen_t len = make_sockaddr(domain, ip, sa);
        set_no_port(fd);
        int r = call_errno(real::bind.get(), fd, reinterpret_cast<sockaddr*>(&sa), len);
        call_errno(real::close.get(), fd);
        if (r == -EADDRNOTAVAIL) {
            bad = policy::to_string(ip);
            break;
        }
    }
    if (!bad.empty()) {
        std::string value;
        for (const auto& [name, v] : config.given)
            if (name == "TCPFIX_SOURCE_ADDRS") value = v;
        log::refuse(policy::refusal("TCPFIX_SOURCE_ADDRS", value,
                                    "addresses of this host; " + bad + " is not one"));
    }
    if (config.port_range) {
        int fd = call_errno(real::socket.get(), AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            apply_port_range(fd);
            call_errno(real::close.get(), fd);
        }
    }
}

int prepare_source(int fd, fdtable::Slot& s, const policy::Endpoint& dest, SourceCursor& cursor) {
    if ((s.flags.load(std::memory_order_acquire) & fdtable::kAppBound) != 0) return 0;
    apply_port_range(fd);
    int n = count_for(dest);
    if (n == 0) return 0;
    if (cursor.first < 0) cursor.first = static_cast<int>(g_round_robin.fetch_add(1, std::memory_order_relaxed) % n);
    int index = kth_for(dest, (cursor.first + cursor.tried) % n);
    ++cursor.tried;
    cursor.current = index;
    sockaddr_storage sa;
    socklen_t len = make_sockaddr(s.domain(), runtime::config().source_addrs[index], sa);
    if (len == 0) return 0;
    set_no_port(fd);
    int r = call_errno(real::bind.get(), fd, reinterpret_cast<sockaddr*>(&sa), len);
    if (r < 0) return r;
    auto& c = runtime::counters();
    policy::bump(c.source_addr_binds);
    if (index < policy::Counters::kMaxSourceAddrs) policy::bump(c.source_addr_binds_by[index]);
    return 0;
}

bool next_source(const fdtable::Slot& s, const policy::Endpoint& dest, SourceCursor& cursor) {
    if (cursor.current < 0) return false;
    if (cursor.current < policy::Counters::kMaxSourceAddrs)
        policy::bump(runtime::counters().source_addr_exhausted_by[cursor.current]);
    (void)s;
    int n = count_for(dest);
    if (cursor.tried >= n) {
        log::at(policy::LogLevel::Warn, "connect to {}: every source address is out of ports (EADDRNOTAVAIL)",
                dest);
        return false;
    }
    log::at(policy::LogLevel::Info, "connect to {}: source {} out of ports, trying the next", dest,
            policy::to_string(runtime::config().source_addrs[cursor.current]));
    return true;
}

int bind_like_app(int fd, fdtable::Slot* s, const sockaddr* addr, socklen_t len) {
    auto local = policy::endpoint_from_sockaddr(addr, len);
    if (local && local->port == 0 && runtime::active()) {
        const auto& config = runtime::config();
        if (config.bind_no_port) set_no_port(fd);
        apply_port_range(fd);
    }
    int r = call_errno(real::bind.get(), fd, addr, len);
    if (r != 0 || s == nullptr || !local) return r;
    std::uint32_t set = fdtable::kAppBound | (local->port != 0 ? fdtable::kExplicitPort : 0u);
    if (!fdtable::save_option(*s, fdtable::kBoundLevel, 0, addr, len)) set |= fdtable::kOptionsLost;
    s->flags.fetch_or(set, std::memory_order_release);
    return r;
}

}  // namespace tcpfix::connect_policy
