#include "policy/close.hpp"

#include <algorithm>
#include <cstdint>

namespace tcpfix::policy {

std::int64_t ack_wait_budget_ns(std::uint32_t srtt_us, WaitBudget budget) {
    const bool background = budget == WaitBudget::Background;
    const std::int64_t slack_ns = background ? 250'000'000 : 2'000'000;
    const std::int64_t cap_ns = background ? 1'000'000'000 : 20'000'000;
    return std::min<std::int64_t>(2 * static_cast<std::int64_t>(srtt_us) * 1000 + slack_ns, cap_ns);
}

int max_held_sockets(std::uint64_t fd_limit) {
    constexpr std::uint64_t kMax = 256;
    return static_cast<int>(std::min<std::uint64_t>(kMax, fd_limit / 16));
}

int held_fd_floor(std::uint64_t fd_limit, int max_held) {
    constexpr std::uint64_t kAboveSelect = 1024;
    if (max_held <= 0 || fd_limit < static_cast<std::uint64_t>(max_held)) return -1;
    if (fd_limit >= kAboveSelect + 2 * static_cast<std::uint64_t>(max_held)) return static_cast<int>(kAboveSelect);
    return static_cast<int>(std::min<std::uint64_t>(fd_limit - static_cast<std::uint64_t>(max_held), INT32_MAX));
}

const char* unacked_unit(const SocketProbe& probe) {
    return probe.unacked_in == Unacked::Bytes ? "bytes" : "segments";
}

bool needs_unacked_bytes(const SocketProbe& probe) {
    return probe.unacked_in == Unacked::Segments && probe.state == TcpState::FinWait1 &&
           probe.unsent_bytes == 0 && probe.unacked > 0;
}

CloseDecision decide_close(CloseMode mode, const SocketBookkeeping& book, const SocketProbe* probe,
                           std::int64_t waited_ns, WaitBudget budget) {
    if (mode == CloseMode::Keep) return {CloseAction::Passthrough, "policy keep"};
    if (!book.connect_called) return {CloseAction::Passthrough, "not a connection of this process"};
    if (!book.matched) return {CloseAction::Passthrough, "destination not matched"};
    if (mode == CloseMode::RstAlways) return {CloseAction::Rst, "rst-always"};

    // rst: the safe one.
    if (!book.last_reference) return {CloseAction::Passthrough, "another descriptor still refers to it"};
    if (book.app_set_linger) return {CloseAction::Passthrough, "the application set SO_LINGER itself"};
    if (book.maybe_shared)
        return {CloseAction::GracefulShared, "inherited across fork: another process may use it"};
    if (probe == nullptr) return {CloseAction::Probe, "need the socket's state"};

    std::uint32_t unacked_data = probe->unacked;
    switch (probe->state) {
        case TcpState::Established:
            break;
        case TcpState::FinWait1:
            // Half-closed by the application; SIOCOUTQ counts the FIN's
            // sequence number. A segment count cannot tell a lone FIN from
            // data with it (needs_unacked_bytes): it counts as data.
            if (probe->unacked_in == Unacked::Bytes && unacked_data > 0) --unacked_data;
            break;
        case TcpState::FinWait2:
            break;
        case TcpState::CloseWait:
        case TcpState::LastAck:
            return {CloseAction::Passthrough, "peer closed first: no TIME_WAIT to avoid"};
        case TcpState::Closing:
        case TcpState::TimeWait:
        case TcpState::Close:
            return {CloseAction::Passthrough, "peer's FIN already in: TIME_WAIT cannot be avoided"};
        default:
            return {CloseAction::Passthrough, "not an established connection"};
    }
    if (probe->unsent_bytes > 0) {
        // A tail shorter than a segment behind data in flight is what Nagle
        // holds back until that data is acknowledged: it leaves with the ACK,
        // so it is waited for like the ACK (a final message written in two
        // pieces). Anything else unsent is never waited for.
        const bool in_flight = probe->unacked_in == Unacked::Segments ? probe->unacked > 0
                                                                       : probe->unacked > probe->unsent_bytes;
        const bool nagle_tail =
            probe->state == TcpState::Established && in_flight && probe->unsent_bytes < probe->mss;
        if (!nagle_tail) return {CloseAction::GracefulUnsent, "data not yet sent"};
        if (waited_ns < ack_wait_budget_ns(probe->srtt_us, budget))
            return {CloseAction::WaitForAck, "a short tail waits for the ACK of the data in flight"};
        return {CloseAction::GracefulUnsent, "data still unsent after the wait"};
    }
    if (unacked_data > 0) {
        if (waited_ns < ack_wait_budget_ns(probe->srtt_us, budget))
            return {CloseAction::WaitForAck, "data in flight: waiting for its ACK"};
        return {CloseAction::GracefulUnsent, "data still unacknowledged after the wait"};
    }
    return {CloseAction::Rst, "active close, every byte acknowledged"};
}

}  // namespace tcpfix::policy
