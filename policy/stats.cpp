#include "policy/stats.hpp"

#include "policy/errno_names.hpp"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace tcpfix::policy {
namespace {

// Appends formatted text to a fixed buffer; remembers whether it ran out.
struct BoundedWriter {
    char* out;
    std::size_t left;
    char* start = out;
    bool overflow = false;

    template <typename... T>
    void put(fmt::format_string<T...> f, T&&... args) {
        auto r = fmt::format_to_n(out, left, f, std::forward<T>(args)...);
        if (r.size > left) {
            overflow = true;
            left = 0;
            return;
        }
        out += r.size;
        left -= r.size;
    }
    std::size_t used() const { return static_cast<std::size_t>(out - start); }
};

}  // namespace

void Counters::reset() {
    for (auto* c : {&sockets, &connects, &connects_matched, &connect_timeouts, &connect_retries,
                    &closes, &closes_rst, &closes_rst_after_wait, &closes_graceful_unsent,
                    &closes_graceful_shared, &ack_wait_us, &throttled_ms, &close_wait_reaped,
                    &source_addr_binds})
        c->store(0, std::memory_order_relaxed);
    for (auto& c : connect_errors) c.store(0, std::memory_order_relaxed);
    for (auto& c : source_addr_binds_by) c.store(0, std::memory_order_relaxed);
    for (auto& c : source_addr_exhausted_by) c.store(0, std::memory_order_relaxed);
    connect_latency.reset();
    destinations.reset();
}

std::size_t render_stats_json(const Counters& c, const StatsContext& ctx, char* buf,
                              std::size_t cap) {
    auto get = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
    BoundedWriter w{buf, cap};
    // tag is validated printable without quotes or backslashes (config.cpp).
    w.put("{{\"tag\":\"{}\",\"pid\":{},\"sockets\":{},\"connects\":{},\"connects_matched\":{},"
          "\"connect_errors\":{{",
          ctx.tag, ctx.pid, get(c.sockets), get(c.connects), get(c.connects_matched));
    bool first = true;
    for (int e = 1; e < Counters::kMaxErrno; ++e) {
        auto n = get(c.connect_errors[e]);
        if (n == 0) continue;
        const char* name = errno_symbol(e);
        if (name != nullptr) w.put("{}\"{}\":{}", first ? "" : ",", name, n);
        else w.put("{}\"E{}\":{}", first ? "" : ",", e, n);
        first = false;
    }
    const LatencyHistogram& lat = c.connect_latency;
    w.put("}},\"connect_timeouts\":{},\"connect_retries\":{},"
          "\"connect_latency_ms\":{{\"count\":{},\"p50\":{:.3f},\"p99\":{:.3f},\"max\":{:.3f}}},"
          "\"closes\":{},\"closes_rst\":{},"
          "\"closes_rst_after_wait\":{},\"closes_graceful_unsent\":{},\"closes_graceful_shared\":{},"
          "\"ack_wait_us\":{},\"throttled_ms\":{},\"close_wait_reaped\":{},\"source_addr_binds\":{},"
          "\"source_addrs\":{{",
          get(c.connect_timeouts), get(c.connect_retries), lat.count(),
          lat.percentile_us(0.50) / 1000.0, lat.percentile_us(0.99) / 1000.0, lat.max_us() / 1000.0,
          get(c.closes), get(c.closes_rst), get(c.closes_rst_after_wait),
          get(c.closes_graceful_unsent), get(c.closes_graceful_shared), get(c.ack_wait_us),
          get(c.throttled_ms), get(c.close_wait_reaped), get(c.source_addr_binds));
    for (std::size_t i = 0; i < ctx.source_addr_count && i < Counters::kMaxSourceAddrs; ++i) {
        w.put("{}\"{}\":{{\"binds\":{},\"eaddrnotavail\":{}}}", i == 0 ? "" : ",",
              ctx.source_addr_names[i], get(c.source_addr_binds_by[i]),
              get(c.source_addr_exhausted_by[i]));
    }
    w.put("}},\"destinations\":{{");
    bool first_dest = true;
    c.destinations.for_each([&](const Endpoint& ep, const DestinationState& d) {
        w.put("{}\"{}\":{{\"connects\":{},\"failures\":{},\"leaks\":{},\"reaped\":{}}}",
              first_dest ? "" : ",", ep, get(d.connects), get(d.failures), get(d.leaks), get(d.reaped));
        first_dest = false;
    });
    w.put("}},\"policy\":{}}}\n",
          ctx.policy_json.empty() ? std::string_view("{}") : ctx.policy_json);
    return w.overflow ? 0 : w.used();
}

std::size_t render_stats_json(const Counters& c, std::string_view tag, long pid,
                              std::string_view policy_json, char* buf, std::size_t cap) {
    StatsContext ctx;
    ctx.tag = tag;
    ctx.pid = pid;
    ctx.policy_json = policy_json;
    return render_stats_json(c, ctx, buf, cap);
}

int LatencyHistogram::bucket_of(std::int64_t ns) {
    if (ns < 1000) return 0;
    // floor(log2(us)), then which quarter of [2^exp, 2^(exp+1)) us holds the value, in ns:
    // below 4 us the quarters are not whole microseconds (1999 ns is in [1.75, 2), not [1, 1.25)).
    auto us = static_cast<unsigned long long>(ns / 1000);
    int exp = 63 - __builtin_clzll(us);
    unsigned long long quarter_ns = 250ULL << exp;  // exp <= 53: no overflow
    auto above_ns = static_cast<unsigned long long>(ns) - 4 * quarter_ns;
    int sub = static_cast<int>(above_ns / quarter_ns);
    int b = 1 + exp * 4 + sub;
    return b < kBuckets ? b : kBuckets - 1;
}

double LatencyHistogram::upper_bound_us(int bucket) {
    if (bucket == 0) return 1.0;
    int exp = (bucket - 1) / 4, sub = (bucket - 1) % 4;
    return static_cast<double>(1ULL << exp) * (1.0 + (sub + 1) / 4.0);
}

void LatencyHistogram::record_ns(std::int64_t ns) {
    if (ns < 0) ns = 0;
    buckets_[bucket_of(ns)].fetch_add(1, std::memory_order_relaxed);
    std::int64_t seen = max_ns_.load(std::memory_order_relaxed);
    while (ns > seen && !max_ns_.compare_exchange_weak(seen, ns, std::memory_order_relaxed)) {
    }
}

std::uint64_t LatencyHistogram::count() const {
    std::uint64_t n = 0;
    for (const auto& b : buckets_) n += b.load(std::memory_order_relaxed);
    return n;
}

double LatencyHistogram::percentile_us(double fraction) const {
    std::uint64_t total = count();
    if (total == 0) return 0;
    auto rank = static_cast<std::uint64_t>(fraction * static_cast<double>(total) + 0.999999);
    if (rank == 0) rank = 1;
    std::uint64_t seen = 0;
    for (int b = 0; b < kBuckets; ++b) {
        seen += buckets_[b].load(std::memory_order_relaxed);
        if (seen < rank) continue;
        // The last bucket also holds every value past its upper bound: only the maximum bounds it.
        return b == kBuckets - 1 ? max_us() : std::min(upper_bound_us(b), max_us());
    }
    return max_us();
}

void LatencyHistogram::assign(const std::uint64_t* counts) {
    std::int64_t max_ns = 0;
    for (int b = 0; b < kBuckets; ++b) {
        buckets_[b].store(counts[b], std::memory_order_relaxed);
        if (counts[b] != 0) max_ns = static_cast<std::int64_t>(upper_bound_us(b) * 1000.0);
    }
    max_ns_.store(max_ns, std::memory_order_relaxed);
}

void LatencyHistogram::reset() {
    for (auto& b : buckets_) b.store(0, std::memory_order_relaxed);
    max_ns_.store(0, std::memory_order_relaxed);
}

std::string json_quote(std::string_view s) {
    std::string out = "\"";
    for (unsigned char ch : s) {
        switch (ch) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\t': out += "\\t"; break;
            default:
                if (ch < 0x20) out += fmt::format("\\u{:04x}", ch);
                else out += static_cast<char>(ch);
        }
    }
    out += '"';
    return out;
}

std::string errno_name(int err) {
    const char* name = errno_symbol(err);
    return name != nullptr ? std::string(name) : fmt::format("E{}", err);
}

}  // namespace tcpfix::policy
