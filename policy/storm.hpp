// Reconnect storms (incident 001): per-destination pacing and the signs of a
// leaking client. Pure: the clock and the randomness come in as arguments, so
// the schedule is testable exactly.
#pragma once

#include <atomic>
#include <cstdint>

#include "policy/config.hpp"
#include "policy/net.hpp"
#include "policy/close.hpp"

namespace tcpfix::policy {

namespace share {
struct Entry;
}

// What tcpfix keeps per destination. Lock-free: a signal handler may connect.
struct DestinationState {
    std::atomic<std::uint64_t> connects{0};
    std::atomic<std::uint64_t> failures{0};  // errors and abandoned connections
    std::atomic<std::uint64_t> leaks{0};     // connections the application abandoned
    std::atomic<std::uint64_t> reaped{0};    // ... shut down in CLOSE_WAIT to free their port
    std::atomic<std::uint64_t> reaped_logged{0};  // reaped count already reported in the log
    std::atomic<std::uint32_t> consecutive_failures{0};
    std::atomic<std::int64_t> backoff_next_ns{0};  // while failing: the next connect's earliest start
    std::atomic<std::int64_t> next_rate_slot_ns{0};  // TCPFIX_CONNECT_RATE's schedule
    // Its entry in the TCPFIX_SHARE segment once looked up there (a share's
    // entries never move or change their key); never set on the "other" state.
    std::atomic<share::Entry*> shared{nullptr};

    void reset();
};

// A bounded table of destinations; past its size every new destination
// shares one "other" entry (destination family 0).
class Destinations {
public:
    static constexpr int kSize = 256;

    // The state for ep, created on first use. Never null.
    DestinationState& get(const Endpoint& ep);

    // Calls f(endpoint, state) for every destination in use, "other" last.
    template <typename F>
    void for_each(F&& f) const {
        for (const auto& e : entries_)
            if (e.ready.load(std::memory_order_acquire) == 2) f(e.key, e.state);
        if (other_.connects.load(std::memory_order_relaxed) != 0) f(Endpoint{}, other_);
    }
    template <typename F>
    void for_each(F&& f) {
        for (auto& e : entries_)
            if (e.ready.load(std::memory_order_acquire) == 2) f(e.key, e.state);
        if (other_.connects.load(std::memory_order_relaxed) != 0) f(Endpoint{}, other_);
    }

    void reset();

    // Whether d is the one state every destination past the table's size shares.
    bool is_other(const DestinationState& d) const { return &d == &other_; }

private:
    struct Entry {
        std::atomic<int> ready{0};  // 0 free, 1 being filled, 2 ready
        Endpoint key;
        DestinationState state;
    };
    Entry entries_[kSize];
    DestinationState other_;
};

// The wait before the next connect after `failures` consecutive failures:
// MIN doubling up to MAX, scaled by a jitter factor in [0.5, 1.0) taken from
// `random01` in [0, 1) so that many clients do not retry in step.
std::int64_t backoff_delay_ns(const Backoff& b, std::uint32_t failures, double random01);

// A failed connect (or an abandoned connection) to this destination at `now`:
// one more consecutive failure, and no connect before now + its delay.
void record_failure(DestinationState& d, const Backoff& b, std::int64_t now_ns, double random01);

// A connection to this destination carried data: the backoff starts over.
void record_success(DestinationState& d);

// TCPFIX_RECONNECT_BACKOFF: while the destination has failures not yet
// cleared by a success, every connect to it takes the next start time, one
// current delay after the previous one; returns how long the caller waits.
// A failure is often seen only later (an abandoned connection is judged at
// 250 ms), so the spacing must hold for every connect, not just the first
// after a failure. 0 when the destination is healthy.
std::int64_t reserve_backoff_slot(DestinationState& d, const Backoff& b, std::int64_t now_ns, double random01);

// TCPFIX_CONNECT_RATE: reserves the next connect slot (spacing 1/rate, no
// burst) and returns how long the caller must wait for it, from `now`.
std::int64_t reserve_rate_slot(DestinationState& d, double per_second, std::int64_t now_ns);

// How a connection has been used, from TCP_INFO and SIOCINQ.
struct ConnectionUse {
    TcpState state = TcpState::Unknown;
    std::int64_t age_ns = 0;          // since tcpfix saw the connect
    std::uint64_t bytes_received = 0;  // in-order data received
    std::uint64_t bytes_sent = 0;      // data the application wrote
    std::uint32_t unread = 0;          // received, not yet read by the application
    bool counters_known = true;        // false: TCP_INFO has no byte counters (Linux < 4.1)
};

// TCP_INFO's bytes_received counts the peer's FIN as one byte once it has
// arrived; this is the data alone.
std::uint64_t data_bytes_received(TcpState state, std::uint64_t bytes_received);

// Connections younger than this are never judged: a pool that has just opened
// several connections has not had time to use them.
constexpr std::int64_t kAbandonAgeNs = 250'000'000;

// True for a connection the application gave up on: older than
// kAbandonAgeNs, nothing ever written, nothing ever read, and either the peer
// spoke (its data sits unread) or the peer closed (CLOSE_WAIT). An idle pool
// connection to a server that waits for the client to speak is not abandoned.
// Without byte counters (Linux < 4.1) only the second case can be told: the
// peer closed and its data sits unread.
bool looks_abandoned(const ConnectionUse& use);

// True for a connection that carried data both ways or was read from (never
// without byte counters: that cannot be told while it is open).
bool carried_data(const ConnectionUse& use);

// When the application closes a connection: did it work? carried_data, or
// without byte counters (Linux < 4.1), it got through its handshake and was
// not abandoned.
bool succeeded_at_close(const ConnectionUse& use);

// True for the whole life of a port prober (incident 000) as its close sees
// it: the handshake completed, closed within kAbandonAgeNs, nothing sent,
// nothing received, nothing unread; the peer may have closed already (a
// server that accepts and closes), but said nothing.
bool probe_succeeded(const ConnectionUse& use);

}  // namespace tcpfix::policy
