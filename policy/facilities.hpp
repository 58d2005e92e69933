// The kernel facilities tcpfix uses that an old kernel may lack, the oldest
// Linux that has each, and what tcpfix does without it. One table for the
// library's one warning per facility and for README's "Old kernels" table
// (a unit test keeps the two in step).
#pragma once

#include <cstddef>
#include <span>
#include <string_view>

namespace tcpfix::policy {

enum class Facility {
    BindAddressNoPort,  // IP_BIND_ADDRESS_NO_PORT
    LocalPortRange,     // IP_LOCAL_PORT_RANGE
    CloseRange,         // close_range(2)
    WipeOnFork,         // madvise(MADV_WIPEONFORK)
    OutqNsd,            // ioctl SIOCOUTQNSD
    TcpInfoNotsent,     // TCP_INFO's tcpi_notsent_bytes (and a length that says so)
    TcpInfoBytes,       // TCP_INFO's byte counters (tcpi_bytes_received, tcpi_bytes_acked)
    UnspecConnect,      // connect(AF_UNSPEC) on a socket in SYN_SENT
    Getrandom,          // getrandom(2)
    Count
};

struct FacilityInfo {
    Facility facility;
    std::string_view name;        // as the README and the warning name it
    std::string_view minimum;     // "4.2"
    std::string_view used_for;    // which variables need it
    std::string_view without_it;  // what tcpfix does instead, one sentence
    // Without it tcpfix does the same, only with more system calls: said once
    // at info level, not as a warning (nothing to act on, and a warning is a
    // new line on the stderr of every program on such a kernel).
    bool cost_only = false;
};

std::span<const FacilityInfo> facilities();
const FacilityInfo& facility_info(Facility f);

}  // namespace tcpfix::policy
