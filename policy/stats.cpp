#include "policy/stats.hpp"

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
}

std::size_t render_stats_json(const Counters& c, std::string_view tag, long pid,
                              std::string_view policy_json, char* buf, std::size_t cap) {
    auto get = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
    BoundedWriter w{buf, cap};
    // tag is validated printable without quotes or backslashes (config.cpp).
    w.put("{{\"tag\":\"{}\",\"pid\":{},\"sockets\":{},\"connects\":{},\"connects_matched\":{},"
        "\"connect_errors\":{{",
        tag, pid, get(c.sockets), get(c.connects), get(c.connects_matched));
    bool first = true;
    for (int e = 1; e < Counters::kMaxErrno; ++e) {
        auto n = get(c.connect_errors[e]);
        if (n == 0) continue;
        const char* name = strerrorname_np(e);
        if (name != nullptr) w.put("{}\"{}\":{}", first ? "" : ",", name, n);
        else w.put("{}\"E{}\":{}", first ? "" : ",", e, n);
        first = false;
    }
    w.put("}},\"connect_timeouts\":{},\"connect_retries\":{},\"closes\":{},\"closes_rst\":{},"
        "\"closes_rst_after_wait\":{},\"closes_graceful_unsent\":{},\"closes_graceful_shared\":{},"
        "\"ack_wait_us\":{},\"throttled_ms\":{},\"close_wait_reaped\":{},\"source_addr_binds\":{},"
        "\"policy\":{}}}\n",
        get(c.connect_timeouts), get(c.connect_retries), get(c.closes), get(c.closes_rst),
        get(c.closes_rst_after_wait), get(c.closes_graceful_unsent), get(c.closes_graceful_shared),
        get(c.ack_wait_us), get(c.throttled_ms), get(c.close_wait_reaped),
        get(c.source_addr_binds), policy_json.empty() ? std::string_view("{}") : policy_json);
    return w.overflow ? 0 : w.used();
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
    const char* name = strerrorname_np(err);
    return name != nullptr ? std::string(name) : fmt::format("E{}", err);
}

}  // namespace tcpfix::policy
