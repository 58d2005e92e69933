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

// How SocketProbe::unacked counts.
enum class Unacked : std::uint8_t {
    // SIOCOUTQ (write_seq - snd_una): every byte not yet acknowledged, the
    // unsent ones included, +1 for a FIN sent or queued.
    Bytes,
    // TCP_INFO's tcpi_unacked (the kernel's packets_out): segments sent and
    // not yet acknowledged; zero exactly when snd_una == snd_nxt. A FIN sent
    // is one of them, alone or riding on the last data segment: the count
    // cannot say which.
    Segments,
};

// What the kernel says at close time: one getsockopt(TCP_INFO) where its
// fields answer (Linux 4.6+), else TCP_INFO and the ioctls SIOCOUTQ and
// SIOCOUTQNSD. The counts matter in ESTABLISHED, FIN_WAIT1 and FIN_WAIT2
// only; every other state is decided by the state alone.
struct SocketProbe {
    TcpState state = TcpState::Unknown;
    // Not yet sent, +1 for a FIN queued behind them (write_seq - snd_nxt):
    // tcpi_notsent_bytes, or SIOCOUTQNSD, which answer the same.
    std::uint32_t unsent_bytes = 0;
    std::uint32_t unacked = 0;  // not yet acknowledged, counted as `unacked_in` says
    Unacked unacked_in = Unacked::Bytes;
    std::uint32_t srtt_us = 0;  // smoothed RTT
    // tcpi_snd_mss: an unsent tail shorter than this, behind data in flight,
    // is one Nagle holds until that data is acknowledged (0: unknown).
    std::uint32_t mss = 0;
};

// "bytes" or "segments", for log lines that print SocketProbe::unacked.
const char* unacked_unit(const SocketProbe& probe);

// True when a TCP_INFO probe cannot tell whether an RST would lose data: the
// application half-closed (FIN_WAIT1), everything is sent, and segments are
// unacknowledged — the FIN alone, or data with it. The hook then asks
// SIOCOUTQ for the byte count (unacked_in = Bytes), whose FIN is exactly 1.
// Without that, decide_close() counts such a segment as data.
bool needs_unacked_bytes(const SocketProbe& probe);

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

// How long a close may wait for the ACK of bytes in flight.
enum class WaitBudget : std::uint8_t {
    // In the caller's thread (close() when tcpfix holds too many sockets
    // already, and exit): twice the smoothed RTT plus 2 ms (a loopback or LAN
    // peer's quick ACK), at most 20 ms.
    OnTheSpot,
    // In tcpfix's own thread, the application's close() long returned: twice
    // the smoothed RTT plus 250 ms, at most 1 s. A peer's kernel that delays
    // its ACK to send it with its reply does so for at most 200 ms
    // (Linux's TCP_DELACK_MAX; Windows' default delayed ACK is 200 ms too), so
    // the ACK comes within this budget however slowly the server answers.
    Background,
};

std::int64_t ack_wait_budget_ns(std::uint32_t srtt_us, WaitBudget budget = WaitBudget::OnTheSpot);

// Decides the close. `probe` is null until the hook has probed (after a
// Probe answer); `waited_ns` is how long tcpfix has already waited for ACKs.
CloseDecision decide_close(CloseMode mode, const SocketBookkeeping& book, const SocketProbe* probe,
                           std::int64_t waited_ns, WaitBudget budget = WaitBudget::OnTheSpot);

// How many sockets tcpfix may hold for a background decision at once, given
// the process's descriptor limit (soft RLIMIT_NOFILE): at most 256, and never
// more than a sixteenth of the limit, so the application keeps its descriptors.
int max_held_sockets(std::uint64_t fd_limit);

// The lowest descriptor number tcpfix holds a socket at: 1024 and up, above
// what select() can watch, when the limit leaves room for that; else the top
// `max_held` numbers below the limit. -1 when no number is left.
int held_fd_floor(std::uint64_t fd_limit, int max_held);

}  // namespace tcpfix::policy
