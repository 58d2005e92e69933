// The process's counters and their JSON form (TCPFIX_STATS). Counting is a
// relaxed atomic add; rendering writes into a caller's buffer and never
// allocates, so it is safe on the close path and in an exit handler.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "policy/storm.hpp"

namespace tcpfix::policy {

// Connect latencies in log-linear buckets (4 per power of two, from 1 us):
// lock-free to record; a percentile is at least the true value and at most
// 25% above it.
class LatencyHistogram {
public:
    static constexpr int kBuckets = 4 * 40;

    void record_ns(std::int64_t ns);
    std::uint64_t count() const;
    // The value in microseconds below which `fraction` of the samples lie (the
    // bucket's upper bound), or 0 when empty.
    double percentile_us(double fraction) const;
    double max_us() const { return static_cast<double>(max_ns_.load(std::memory_order_relaxed)) / 1000.0; }
    void reset();
    // Replaces the counts with `counts` (kBuckets of them, as bucket_of
    // numbers them: `tcpfix attach` counts in the kernel) and the maximum
    // with the upper bound of the highest bucket used.
    void assign(const std::uint64_t* counts);

    static int bucket_of(std::int64_t ns);
    static double upper_bound_us(int bucket);

private:
    std::atomic<std::uint64_t> buckets_[kBuckets]{};
    std::atomic<std::int64_t> max_ns_{0};
};

struct Counters {
    static constexpr int kMaxSourceAddrs = 32;

    static constexpr int kMaxErrno = 134;  // errno values glibc names (EHWPOISON = 133)

    std::atomic<std::uint64_t> sockets{0};          // TCP sockets created
    std::atomic<std::uint64_t> connects{0};         // connect() calls on TCP sockets
    std::atomic<std::uint64_t> connects_matched{0};  // ... whose destination passes TCPFIX_MATCH
    std::atomic<std::uint64_t> connect_errors[kMaxErrno]{};  // by errno (EINPROGRESS excluded)
    std::atomic<std::uint64_t> connect_timeouts{0};
    std::atomic<std::uint64_t> connect_retries{0};
    std::atomic<std::uint64_t> closes{0};                  // tracked TCP sockets closed
    std::atomic<std::uint64_t> closes_rst{0};              // ended with RST
    std::atomic<std::uint64_t> closes_rst_after_wait{0};   // ... after waiting for an ACK
    std::atomic<std::uint64_t> closes_graceful_unsent{0};  // rst refused: data could be lost
    std::atomic<std::uint64_t> closes_graceful_shared{0};  // rst refused: shared across fork
    std::atomic<std::uint64_t> ack_wait_us{0};             // time close() spent waiting for ACKs
    std::atomic<std::uint64_t> throttled_ms{0};
    std::atomic<std::uint64_t> close_wait_reaped{0};
    std::atomic<std::uint64_t> source_addr_binds{0};
    // Per TCPFIX_SOURCE_ADDRS entry, in the order given.
    std::atomic<std::uint64_t> source_addr_binds_by[kMaxSourceAddrs]{};
    std::atomic<std::uint64_t> source_addr_exhausted_by[kMaxSourceAddrs]{};
    LatencyHistogram connect_latency;  // connects that completed, as tcpfix saw them
    Destinations destinations;         // per destination: pacing state and counts

    void count_connect_error(int err) {
        if (err > 0 && err < kMaxErrno) connect_errors[err].fetch_add(1, std::memory_order_relaxed);
    }
    // Zeroes everything (a forked child starts its own count).
    void reset();
};

inline void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) {
    c.fetch_add(n, std::memory_order_relaxed);
}

// What the JSON needs besides the counters, prepared once at start-up.
struct StatsContext {
    std::string_view tag;
    long pid = 0;
    std::string_view policy_json;  // a ready JSON object of the variables in force
    const std::string_view* source_addr_names = nullptr;  // TCPFIX_SOURCE_ADDRS, as text
    std::size_t source_addr_count = 0;
};

// Writes the stats JSON into buf; returns its length, or 0 if cap is too small.
std::size_t render_stats_json(const Counters& c, const StatsContext& ctx, char* buf,
                              std::size_t cap);

// The same without per-source-address names.
std::size_t render_stats_json(const Counters& c, std::string_view tag, long pid,
                              std::string_view policy_json, char* buf, std::size_t cap);

// JSON string literal of s, quotes included.
std::string json_quote(std::string_view s);

// errno name ("ECONNREFUSED"), or "E<number>" when unnamed.
std::string errno_name(int err);

}  // namespace tcpfix::policy
