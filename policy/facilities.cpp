#include "policy/facilities.hpp"

namespace tcpfix::policy {
namespace {

constexpr FacilityInfo kFacilities[] = {
    {Facility::BindAddressNoPort, "IP_BIND_ADDRESS_NO_PORT", "4.2+",
     "TCPFIX_SOURCE_ADDRS, TCPFIX_BIND_NO_PORT",
     "source addresses are bound with port 0 without it: each address still brings its own "
     "port range, but a port is then reserved for every destination, not per destination; "
     "TCPFIX_BIND_NO_PORT has no effect"},
    {Facility::LocalPortRange, "IP_LOCAL_PORT_RANGE", "6.3+", "TCPFIX_PORT_RANGE",
     "connections use the system's net.ipv4.ip_local_port_range"},
    {Facility::CloseRange, "close_range", "5.9+", "close_range() and closefrom() hooks",
     "close_range() fails with ENOSYS as it would without tcpfix, and tcpfix leaves its table "
     "alone; the application's fallback (one close() per descriptor) gets the close policy"},
    {Facility::WipeOnFork, "MADV_WIPEONFORK", "4.14+",
     "telling a child that ran no fork handler (a raw clone or fork system call) from its parent",
     "such a child is told by its process ID instead: one getpid() system call (about 0.2 us) "
     "on each close or dup2 of a tracked socket",
     true},
    {Facility::OutqNsd, "SIOCOUTQNSD", "2.6.36+", "TCPFIX_CLOSE=rst",
     "every byte still in the send queue (SIOCOUTQ) is treated as possibly unsent: the close "
     "waits for all of it to be acknowledged, as for a final message, and is graceful if it is "
     "not within the wait; nothing is ever cut off"},
    {Facility::TcpInfoNotsent, "TCP_INFO tcpi_notsent_bytes", "4.6+", "TCPFIX_CLOSE=rst",
     "each close decision asks the ioctls SIOCOUTQ and SIOCOUTQNSD besides TCP_INFO (three "
     "system calls instead of one) and decides the same",
     true},
    {Facility::TcpInfoBytes, "TCP_INFO byte counters", "4.1+",
     "TCPFIX_RECONNECT_BACKOFF (abandoned connections)",
     "a connection counts as abandoned only when the peer closed it and its data sits unread "
     "(CLOSE_WAIT); a connection the application closes after its handshake counts as a "
     "success; CLOSE_WAIT reaping is unchanged"},
    {Facility::UnspecConnect, "connect(AF_UNSPEC)", "any (a sandbox may refuse it)",
     "TCPFIX_CONNECT_TIMEOUT (non-blocking callers)",
     "the handshake is cut short with shutdown(SHUT_RDWR) instead, which wakes the poller the "
     "same way; the descriptor can connect again"},
    {Facility::Getrandom, "getrandom", "3.17+", "(nothing)",
     "not needed: the backoff jitter is seeded from the clock and the process ID"},
};
static_assert(sizeof kFacilities / sizeof kFacilities[0] == static_cast<std::size_t>(Facility::Count));

}  // namespace

std::span<const FacilityInfo> facilities() { return kFacilities; }

const FacilityInfo& facility_info(Facility f) { return kFacilities[static_cast<std::size_t>(f)]; }

}  // namespace tcpfix::policy
