// The abortive-close decision (TCPFIX_CLOSE). Pure: socket facts in, an action out.
//
// `rst` turns an active close into an RST only when nothing the application
// wrote can be lost: no byte unsent and none sent but unacknowledged (an RST
// forfeits retransmission, KERNEL-FACTS 2). A close right after a final write
// usually has its last ACK one RTT away, so the decision may ask the hook to
// wait for it, within a short bound, before it gives up the RST.
#pragma once

#include <cstdint>

#include "policy/config.hpp"

namespace tcpfix::policy {

// Linux TCP states as TCP_INFO reports them (include/net/tcp_states.h).
enum class TcpState : std::uint8_t {
    Unknown = 0,
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
};

// What the fd table knows without a syscall.
struct SocketBookkeeping {
    bool connect_called = false;  // this process called connect() on it
    bool matched = false;         // its destination passes TCPFIX_MATCH
    bool last_reference = true;   // no other descriptor of this process refers to it
    bool maybe_shared = false;    // it existed when the process forked: another process may hold it
    bool app_set_linger = false;  // the application chose its own SO_LINGER
};

// What the kernel says at close time (TCP_INFO, SIOCOUTQ, SIOCOUTQNSD).
struct SocketProbe {
    TcpState state = TcpState::Unknown;
    std::uint32_t unacked_bytes = 0;  // SIOCOUTQ: not yet acknowledged, sent or not (+1 for a FIN)
    std::uint32_t unsent_bytes = 0;   // SIOCOUTQNSD: not yet sent
    std::uint32_t srtt_us = 0;        // smoothed RTT
};

enum class CloseAction : std::uint8_t {
    Passthrough,     // close as the application asked; nothing to count
    Probe,           // ask the kernel (SocketProbe) and decide again
    Rst,             // SO_LINGER {1,0}, then close
    WaitForAck,      // bytes are in flight: wait a little, probe, decide again
    GracefulUnsent,  // data could be lost by an RST: close gracefully, count it
    GracefulShared,  // another process may still use the socket: close gracefully, count it
};

struct CloseDecision {
    CloseAction action = CloseAction::Passthrough;
    const char* reason = "";
};

// The longest close() waits for the ACK of bytes in flight: twice the
// smoothed RTT plus 2 ms (a loopback or LAN peer's quick ACK), at most 20 ms.
std::int64_t ack_wait_budget_ns(std::uint32_t srtt_us);

// Decides the close. `probe` is null until the hook has probed (after a
// Probe answer); `waited_ns` is how long the hook has already waited for ACKs.
CloseDecision decide_close(CloseMode mode, const SocketBookkeeping& book, const SocketProbe* probe,
                           std::int64_t waited_ns);

}  // namespace tcpfix::policy
