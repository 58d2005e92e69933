#include "policy/storm.hpp"

#include <algorithm>
#include <cmath>

namespace tcpfix::policy {

namespace {

// Two 64-bit multiplies over the address, port and family: the top byte
// picks the bucket.
std::size_t bucket_of(const Endpoint& ep, std::size_t buckets) {
    std::uint64_t lo, hi;
    __builtin_memcpy(&lo, ep.addr.bytes.data(), 8);
    __builtin_memcpy(&hi, ep.addr.bytes.data() + 8, 8);
    std::uint64_t h = (lo ^ (std::uint64_t{ep.port} << 48 | static_cast<std::uint64_t>(ep.addr.family))) *
                      0x9e3779b97f4a7c15ull;
    h = (h ^ hi ^ (h >> 29)) * 0xbf58476d1ce4e5b9ull;
    return static_cast<std::size_t>(h >> 56) % buckets;
}

bool same(const Endpoint& a, const Endpoint& b) {
    std::uint64_t a0, a1, b0, b1;
    __builtin_memcpy(&a0, a.addr.bytes.data(), 8);
    __builtin_memcpy(&a1, a.addr.bytes.data() + 8, 8);
    __builtin_memcpy(&b0, b.addr.bytes.data(), 8);
    __builtin_memcpy(&b1, b.addr.bytes.data() + 8, 8);
    return ((a0 ^ b0) | (a1 ^ b1)) == 0 && a.port == b.port && a.addr.family == b.addr.family;
}

}  // namespace

DestinationState& Destinations::get(const Endpoint& ep) {
    static_assert((kSize & (kSize - 1)) == 0 && kSize <= 256);
    const std::size_t h = bucket_of(ep, kSize);
    for (int probe = 0; probe < kSize; ++probe) {
        Entry& e = entries_[(h + static_cast<std::size_t>(probe)) % kSize];
        int ready = e.ready.load(std::memory_order_acquire);
        if (ready == 2) {
            if (same(e.key, ep)) return e.state;
            continue;
        }
        if (ready == 0 && e.ready.compare_exchange_strong(ready, 1, std::memory_order_acq_rel)) {
            e.key = ep;
            e.ready.store(2, std::memory_order_release);
            return e.state;
        }
        while (ready == 1) ready = e.ready.load(std::memory_order_acquire);  // being filled: a few stores
        if (same(e.key, ep)) return e.state;
    }
    return other_;
}

void DestinationState::reset() {
    for (auto* c : {&connects, &failures, &leaks, &reaped, &reaped_logged}) c->store(0, std::memory_order_relaxed);
    consecutive_failures.store(0, std::memory_order_relaxed);
    backoff_next_ns.store(0, std::memory_order_relaxed);
    next_rate_slot_ns.store(0, std::memory_order_relaxed);
    shared.store(nullptr, std::memory_order_relaxed);
}

void Destinations::reset() {
    for (auto& e : entries_) {
        e.ready.store(0, std::memory_order_relaxed);
        e.state.reset();
    }
    other_.reset();
}

std::int64_t backoff_delay_ns(const Backoff& b, std::uint32_t failures, double random01) {
    if (failures == 0) return 0;
    double delay = static_cast<double>(b.min_ns) * std::ldexp(1.0, static_cast<int>(std::min(failures - 1, 62u)));
    delay = std::min(delay, static_cast<double>(b.max_ns));
    double jitter = 0.5 + 0.5 * std::clamp(random01, 0.0, 0.999999);
    return std::max<std::int64_t>(static_cast<std::int64_t>(delay * jitter), 1);
}

void record_failure(DestinationState& d, const Backoff& b, std::int64_t now_ns, double random01) {
    d.failures.fetch_add(1, std::memory_order_relaxed);
    std::uint32_t n = d.consecutive_failures.fetch_add(1, std::memory_order_acq_rel) + 1;
    std::int64_t until = now_ns + backoff_delay_ns(b, n, random01);
    std::int64_t seen = d.backoff_next_ns.load(std::memory_order_relaxed);
    while (until > seen && !d.backoff_next_ns.compare_exchange_weak(seen, until, std::memory_order_acq_rel)) {
    }
}

void record_success(DestinationState& d) {
    d.consecutive_failures.store(0, std::memory_order_release);
    d.backoff_next_ns.store(0, std::memory_order_release);
}

std::int64_t reserve_backoff_slot(DestinationState& d, const Backoff& b, std::int64_t now_ns, double random01) {
    std::uint32_t n = d.consecutive_failures.load(std::memory_order_acquire);
    if (n == 0) return 0;
    std::int64_t delay = backoff_delay_ns(b, n, random01);
    std::int64_t next = d.backoff_next_ns.load(std::memory_order_acquire);
    for (;;) {
        std::int64_t mine = std::max(next, now_ns);
        if (d.backoff_next_ns.compare_exchange_weak(next, mine + delay, std::memory_order_acq_rel))
            return mine - now_ns;
    }
}

std::int64_t reserve_rate_slot(DestinationState& d, double per_second, std::int64_t now_ns) {
    const auto interval = static_cast<std::int64_t>(1e9 / per_second);
    std::int64_t slot = d.next_rate_slot_ns.load(std::memory_order_acquire);
    for (;;) {
        std::int64_t mine = std::max(slot, now_ns);
        if (d.next_rate_slot_ns.compare_exchange_weak(slot, mine + interval, std::memory_order_acq_rel))
            return mine - now_ns;
    }
}

std::uint64_t data_bytes_received(TcpState state, std::uint64_t bytes_received) {
    bool fin_in = state == TcpState::CloseWait || state == TcpState::LastAck || state == TcpState::Closing ||
                  state == TcpState::TimeWait;
    return fin_in && bytes_received > 0 ? bytes_received - 1 : bytes_received;
}

bool looks_abandoned(const ConnectionUse& use) {
    if (use.age_ns < kAbandonAgeNs) return false;
    if (!use.counters_known)  // only what needs no counters: the peer closed, its data sits unread
        return (use.state == TcpState::CloseWait || use.state == TcpState::LastAck) && use.unread > 0;
    if (use.bytes_sent != 0) return false;
    bool never_read = use.unread == use.bytes_received;
    if (!never_read) return false;
    if (use.state == TcpState::CloseWait || use.state == TcpState::LastAck) return true;
    return use.state == TcpState::Established && use.unread > 0;
}

bool carried_data(const ConnectionUse& use) {
    if (!use.counters_known) return false;  // cannot be told while the connection is open
    bool read_something = use.bytes_received > use.unread;
    return read_something || use.bytes_sent > 0;
}

bool succeeded_at_close(const ConnectionUse& use) {
    if (use.counters_known) return carried_data(use);
    // Without counters: a connection the application closes itself after its
    // handshake, not abandoned, is the best sign of a working one.
    switch (use.state) {
        case TcpState::Established:
        case TcpState::FinWait1:
        case TcpState::FinWait2:
        case TcpState::Closing:
        case TcpState::TimeWait:
            return true;
        case TcpState::CloseWait:
        case TcpState::LastAck:
            return use.unread == 0;
        default:
            return false;
    }
}

bool probe_succeeded(const ConnectionUse& use) {
    bool connected = use.state == TcpState::Established || use.state == TcpState::CloseWait;
    return connected && use.age_ns < kAbandonAgeNs && use.bytes_sent == 0 && use.bytes_received == 0 &&
           use.unread == 0;
}

}  // namespace tcpfix::policy
