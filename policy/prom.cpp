#include "policy/prom.hpp"

#include "policy/errno_names.hpp"

#include <fmt/format.h>

#include <cstring>

namespace tcpfix::policy {
namespace {

std::uint64_t get(const std::atomic<std::uint64_t>& a) {
    return a.load(std::memory_order_relaxed);
}

// Appends text to a fixed buffer; remembers whether it ran out.
class Writer {
  public:
    Writer(char* buf, std::size_t cap) : start_(buf), out_(buf), left_(cap) {}

    template <typename... T>
    void put(fmt::format_string<T...> f, T&&... args) {
        auto r = fmt::format_to_n(out_, left_, f, std::forward<T>(args)...);
        advance(r.size);
    }

    // A label value, escaped as the format requires: \\, \" and \n.
    void label_value(std::string_view v) {
        for (char ch : v) {
            const char* esc = ch == '\\'   ? "\\\\"
                              : ch == '"'  ? "\\\""
                              : ch == '\n' ? "\\n"
                                           : nullptr;
            if (esc != nullptr) {
                if (left_ < 2) return fail();
                std::memcpy(out_, esc, 2);
                advance(2);
            } else {
                if (left_ < 1) return fail();
                *out_ = ch;
                advance(1);
            }
        }
    }

    // `# HELP` and `# TYPE`, once per family, before its samples.
    void family(std::string_view name, std::string_view type, std::string_view help) {
        put("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    }

    // name{tag="...",[key="value"]} value
    template <typename V>
    void sample(std::string_view name, std::string_view tag, V value, std::string_view key = {},
                std::string_view key_value = {}) {
        put("{}{{tag=\"", name);
        label_value(tag);
        if (!key.empty()) {
            put("\",{}=\"", key);
            label_value(key_value);
        }
        put("\"}} {}\n", value);
    }

    // A family with a single sample, labelled by tag only.
    void counter(std::string_view name, std::string_view help, std::string_view tag,
                 std::uint64_t value) {
        family(name, "counter", help);
        sample(name, tag, value);
    }

    bool overflow() const { return overflow_; }
    std::size_t used() const { return static_cast<std::size_t>(out_ - start_); }

  private:
    void advance(std::size_t n) {
        if (n > left_) return fail();
        out_ += n;
        left_ -= n;
    }
    void fail() {
        overflow_ = true;
        left_ = 0;
    }

    char* start_;
    char* out_;
    std::size_t left_;
    bool overflow_ = false;
};

// One destination's counts, read once so every family shows the same moment.
struct DestinationCounts {
    Endpoint endpoint;
    std::uint64_t connects = 0, failures = 0, leaks = 0, reaped = 0;

    void add(const DestinationCounts& o) {
        connects += o.connects;
        failures += o.failures;
        leaks += o.leaks;
        reaped += o.reaped;
    }
};

// The kPromTopDestinations destinations with the most connects, in that
// order (ties: table order), and everything else summed. A fixed array and an
// insertion: no allocation.
struct TopDestinations {
    DestinationCounts top[kPromTopDestinations];
    int count = 0;
    DestinationCounts other;
    bool has_other = false;

    void offer(const DestinationCounts& d) {
        if (d.endpoint.addr.family == 0) {  // the table's own overflow entry
            add_other(d);
            return;
        }
        if (count == kPromTopDestinations && d.connects <= top[count - 1].connects) {
            add_other(d);
            return;
        }
        if (count == kPromTopDestinations) add_other(top[--count]);  // evicted
        int i = count++;
        while (i > 0 && top[i - 1].connects < d.connects) {
            top[i] = top[i - 1];
            --i;
        }
        top[i] = d;
    }

  private:
    void add_other(const DestinationCounts& d) {
        other.add(d);
        has_other = true;
    }
};

void destination_family(Writer& w, std::string_view name, std::string_view help,
                        std::string_view tag, const TopDestinations& dests,
                        std::uint64_t DestinationCounts::*field) {
    w.family(name, "counter", help);
    char label[64];
    for (int i = 0; i < dests.count; ++i) {
        auto r = fmt::format_to_n(label, sizeof label - 1, "{}", dests.top[i].endpoint);
        w.sample(name, tag, dests.top[i].*field, "destination",
                 std::string_view(label, r.size < sizeof label ? r.size : sizeof label - 1));
    }
    if (dests.has_other) w.sample(name, tag, dests.other.*field, "destination", "other");
}

}  // namespace

std::size_t render_stats_prom(const Counters& c, const StatsContext& ctx,
                              std::span<const std::pair<std::string, std::string>> policy,
                              char* buf, std::size_t cap) {
    Writer w(buf, cap);
    const std::string_view tag = ctx.tag;

    w.family("tcpfix_info", "gauge", "The process whose counters these are (always 1).");
    w.put("tcpfix_info{{tag=\"");
    w.label_value(tag);
    w.put("\",pid=\"{}\"}} 1\n", ctx.pid);

    w.family("tcpfix_policy_info", "gauge", "A TCPFIX_* variable in force, as given (always 1).");
    for (const auto& [name, value] : policy) {
        w.put("tcpfix_policy_info{{tag=\"");
        w.label_value(tag);
        w.put("\",variable=\"");
        w.label_value(name);
        w.put("\",value=\"");
        w.label_value(value);
        w.put("\"}} 1\n");
    }

    w.counter("tcpfix_sockets_total", "TCP sockets created.", tag, get(c.sockets));
    w.counter("tcpfix_connects_total", "connect() calls on TCP sockets.", tag, get(c.connects));
    w.counter("tcpfix_connects_matched_total",
              "connect() calls whose destination passes TCPFIX_MATCH.", tag,
              get(c.connects_matched));

    w.family("tcpfix_connect_errors_total", "counter",
             "Failed connects by errno name (EINPROGRESS is not a failure).");
    for (int e = 1; e < Counters::kMaxErrno; ++e) {
        auto n = get(c.connect_errors[e]);
        if (n == 0) continue;
        char unnamed[16];
        const char* name = errno_symbol(e);
        if (name == nullptr) {
            auto r = fmt::format_to_n(unnamed, sizeof unnamed - 1, "E{}", e);
            unnamed[r.size] = '\0';
            name = unnamed;
        }
        w.sample("tcpfix_connect_errors_total", tag, n, "errno", name);
    }
    w.counter("tcpfix_connect_timeouts_total", "Connects that ran past TCPFIX_CONNECT_TIMEOUT.",
              tag, get(c.connect_timeouts));
    w.counter("tcpfix_connect_retries_total", "Attempts made again after a timeout.", tag,
              get(c.connect_retries));

    // Gauges, not a summary: the histogram keeps no sum, and a summary without
    // one would be a lie (and a gauge may not carry a quantile label).
    const LatencyHistogram& lat = c.connect_latency;
    w.family("tcpfix_connect_latency_p50_seconds", "gauge",
             "Median connect latency since the process started.");
    w.sample("tcpfix_connect_latency_p50_seconds", tag, lat.percentile_us(0.50) / 1e6);
    w.family("tcpfix_connect_latency_p99_seconds", "gauge",
             "99th percentile of connect latency since the process started.");
    w.sample("tcpfix_connect_latency_p99_seconds", tag, lat.percentile_us(0.99) / 1e6);
    w.family("tcpfix_connect_latency_max_seconds", "gauge",
             "Longest connect since the process started.");
    w.sample("tcpfix_connect_latency_max_seconds", tag, lat.max_us() / 1e6);
    w.counter("tcpfix_connects_completed_total",
              "Connects that completed, as tcpfix saw them (the latency figures' samples).", tag,
              lat.count());

    w.counter("tcpfix_closes_total", "Tracked TCP sockets closed.", tag, get(c.closes));
    w.counter("tcpfix_closes_rst_total", "Closes that ended with RST.", tag, get(c.closes_rst));
    w.counter("tcpfix_closes_rst_after_wait_total",
              "Closes that ended with RST after waiting for the peer's ACK.", tag,
              get(c.closes_rst_after_wait));
    w.counter("tcpfix_closes_graceful_unsent_total",
              "RST refused: data was unacknowledged (nothing is lost).", tag,
              get(c.closes_graceful_unsent));
    w.counter("tcpfix_closes_graceful_shared_total",
              "RST refused: the socket was shared across fork().", tag,
              get(c.closes_graceful_shared));
    w.family("tcpfix_close_ack_wait_seconds_total", "counter",
             "Time close() spent waiting for ACKs.");
    w.sample("tcpfix_close_ack_wait_seconds_total", tag,
             static_cast<double>(get(c.ack_wait_us)) / 1e6);
    w.counter("tcpfix_closes_rst_dup2_total", "RSTs of sockets replaced by dup2() or dup3().", tag,
              get(c.closes_rst_dup2));
    w.counter("tcpfix_closes_at_exit_total", "Matched connections still open when the process exited.",
              tag, get(c.closes_at_exit));
    w.counter("tcpfix_closes_rst_at_exit_total", "Connections open at exit that ended with RST.", tag,
              get(c.closes_rst_at_exit));
    w.counter("tcpfix_closes_held_total",
              "Closes whose last ACK was still due: the socket was held and decided in the background.",
              tag, get(c.closes_held));
    w.family("tcpfix_closes_held_max", "gauge", "Most sockets held for a background decision at once.");
    w.sample("tcpfix_closes_held_max", tag, get(c.closes_held_max));
    w.counter("tcpfix_closes_held_full_total",
              "Closes decided on the spot: as many sockets held as may be, or no background thread yet.", tag,
              get(c.closes_held_full));
    w.counter("tcpfix_closes_rst_background_total", "RSTs decided in the background, once the last ACK came.",
              tag, get(c.closes_rst_background));
    w.counter("tcpfix_closes_held_peer_closed_total",
              "Held sockets the peer closed first: closed normally, no TIME_WAIT to avoid.", tag,
              get(c.closes_held_peer_closed));
    w.family("tcpfix_held_ack_wait_seconds_total", "counter",
             "Time held sockets waited for ACKs in the background.");
    w.sample("tcpfix_held_ack_wait_seconds_total", tag, static_cast<double>(get(c.held_wait_us)) / 1e6);
    w.family("tcpfix_throttled_seconds_total", "counter",
             "Time connects waited for TCPFIX_RECONNECT_BACKOFF or TCPFIX_CONNECT_RATE.");
    w.sample("tcpfix_throttled_seconds_total", tag, static_cast<double>(get(c.throttled_ms)) / 1e3);
    w.counter("tcpfix_close_wait_reaped_total",
              "Sockets left in CLOSE_WAIT by the application, shut down to free their port.", tag,
              get(c.close_wait_reaped));

    std::size_t sources =
        ctx.source_addr_count < static_cast<std::size_t>(Counters::kMaxSourceAddrs)
            ? ctx.source_addr_count
            : static_cast<std::size_t>(Counters::kMaxSourceAddrs);
    w.family("tcpfix_source_addr_binds_total", "counter",
             "Matched connects bound to a TCPFIX_SOURCE_ADDRS address.");
    for (std::size_t i = 0; i < sources; ++i)
        w.sample("tcpfix_source_addr_binds_total", tag, get(c.source_addr_binds_by[i]), "source",
                 ctx.source_addr_names[i]);
    w.family("tcpfix_source_addr_eaddrnotavail_total", "counter",
             "Times a TCPFIX_SOURCE_ADDRS address was out of ports.");
    for (std::size_t i = 0; i < sources; ++i)
        w.sample("tcpfix_source_addr_eaddrnotavail_total", tag, get(c.source_addr_exhausted_by[i]),
                 "source", ctx.source_addr_names[i]);

    TopDestinations dests;
    c.destinations.for_each([&](const Endpoint& ep, const DestinationState& d) {
        dests.offer({ep, get(d.connects), get(d.failures), get(d.leaks), get(d.reaped)});
    });
    destination_family(w, "tcpfix_destination_connects_total", "Connects to this destination.", tag,
                       dests, &DestinationCounts::connects);
    destination_family(w, "tcpfix_destination_failures_total",
                       "Connect errors and abandoned connections to this destination.", tag, dests,
                       &DestinationCounts::failures);
    destination_family(w, "tcpfix_destination_leaks_total",
                       "Connections to this destination the application abandoned.", tag, dests,
                       &DestinationCounts::leaks);
    destination_family(w, "tcpfix_destination_reaped_total",
                       "Connections to this destination shut down in CLOSE_WAIT.", tag, dests,
                       &DestinationCounts::reaped);

    return w.overflow() ? 0 : w.used();
}

}  // namespace tcpfix::policy
