#include "policy/prom.hpp"

#include "policy/errno_names.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <vector>

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

    // name{k1="v1"[,k2="v2"]} value
    template <typename V>
    void labelled(std::string_view name, std::string_view k1, std::string_view v1,
                  std::string_view k2, std::string_view v2, V value) {
        put("{}{{{}=\"", name, k1);
        label_value(v1);
        if (!k2.empty()) {
            put("\",{}=\"", k2);
            label_value(v2);
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

namespace {

// One share's destinations as the textfile names them.
struct ShareRows {
    const share::Snapshot* snapshot;
    std::vector<std::pair<std::string, share::EntryView>> rows;  // label, values
};

ShareRows rows_of(const share::Snapshot& s) {
    ShareRows out{&s, {}};
    std::vector<share::EntryView> sorted = s.entries;
    // Busiest first, ties in table order (std::sort: no temporary buffer).
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
        return a.connects != b.connects ? a.connects > b.connects : a.index < b.index;
    });
    share::EntryView other;
    bool has_other = false;
    for (std::size_t i = 0; i < sorted.size(); ++i) {
        const auto& v = sorted[i];
        if (static_cast<int>(i) < kPromTopDestinations) {
            out.rows.emplace_back(fmt::format("{}", v.dest), v);
            continue;
        }
        has_other = true;
        other.connects += v.connects;
        other.failures += v.failures;
        other.leaks += v.leaks;
        other.reaped += v.reaped;
        other.throttled_us += v.throttled_us;
        other.waiting += v.waiting;
        other.consecutive_failures = std::max(other.consecutive_failures, v.consecutive_failures);
        other.backoff_delay_ns = std::max(other.backoff_delay_ns, v.backoff_delay_ns);
        if (v.time_wait >= 0)
            other.time_wait = std::max<std::int64_t>(other.time_wait, 0) + v.time_wait;
    }
    if (has_other) out.rows.emplace_back("other", other);
    return out;
}

void render_shares(Writer& w, const std::vector<ShareRows>& shares) {
    w.family("tcpfix_share_info", "gauge",
             "A share of tcpfix processes (TCPFIX_SHARE) on this host (always 1).");
    for (const auto& s : shares) {
        w.put("tcpfix_share_info{{share=\"");
        w.label_value(s.snapshot->name);
        w.put("\",uid=\"{}\"}} 1\n", s.snapshot->uid);
    }
    auto per_share = [&](std::string_view name, std::string_view type, std::string_view help,
                         auto value) {
        w.family(name, type, help);
        for (const auto& s : shares)
            w.labelled(name, "share", s.snapshot->name, {}, {}, value(*s.snapshot));
    };
    per_share("tcpfix_share_processes", "gauge", "Live processes attached to the share.",
              [](const share::Snapshot& s) { return s.processes.size(); });
    per_share("tcpfix_share_destinations", "gauge", "Destinations the share's table holds.",
              [](const share::Snapshot& s) { return s.entries.size(); });
    per_share("tcpfix_share_destinations_capacity", "gauge",
              "Destinations the share's table can hold.",
              [](const share::Snapshot& s) { return s.capacity; });
    per_share("tcpfix_share_table_full_total", "counter",
              "Connects to a new destination the full table could not take (paced per process).",
              [](const share::Snapshot& s) { return s.table_full; });

    auto per_destination = [&](std::string_view name, std::string_view type, std::string_view help,
                               auto value) {
        w.family(name, type, help);
        for (const auto& s : shares)
            for (const auto& [label, v] : s.rows) {
                auto x = value(v);
                if (x < 0) continue;  // unknown
                w.labelled(name, "share", s.snapshot->name, "destination", label, x);
            }
    };
    per_destination("tcpfix_share_connects_total", "counter",
                    "Matched connects to the destination, all processes.",
                    [](const share::EntryView& v) { return static_cast<double>(v.connects); });
    per_destination("tcpfix_share_failures_total", "counter",
                    "Connect errors and abandoned connections to the destination, all processes.",
                    [](const share::EntryView& v) { return static_cast<double>(v.failures); });
    per_destination("tcpfix_share_leaks_total", "counter",
                    "Connections to the destination the applications abandoned.",
                    [](const share::EntryView& v) { return static_cast<double>(v.leaks); });
    per_destination("tcpfix_share_close_wait_reaped_total", "counter",
                    "Connections to the destination shut down in CLOSE_WAIT to free their port.",
                    [](const share::EntryView& v) { return static_cast<double>(v.reaped); });
    per_destination(
        "tcpfix_share_throttled_seconds_total", "counter",
        "Time connects to the destination waited for the backoff or the connect rate.",
        [](const share::EntryView& v) { return static_cast<double>(v.throttled_us) / 1e6; });
    per_destination(
        "tcpfix_share_backoff_delay_seconds", "gauge",
        "The destination's current reconnect backoff delay (0: healthy).",
        [](const share::EntryView& v) { return static_cast<double>(v.backoff_delay_ns) / 1e9; });
    per_destination(
        "tcpfix_share_consecutive_failures", "gauge",
        "Failures to the destination since its last success.",
        [](const share::EntryView& v) { return static_cast<double>(v.consecutive_failures); });
    per_destination("tcpfix_share_waiting_connects", "gauge",
                    "Connects to the destination waiting for their turn right now.",
                    [](const share::EntryView& v) { return static_cast<double>(v.waiting); });
    per_destination("tcpfix_share_time_wait_sockets", "gauge",
                    "TIME_WAIT entries toward the destination in this network namespace now.",
                    [](const share::EntryView& v) { return static_cast<double>(v.time_wait); });
}

}  // namespace

std::string render_shares_prom(std::span<const share::Snapshot> shares) {
    std::vector<ShareRows> rows;
    std::size_t estimate = 8192;
    for (const auto& s : shares) {
        rows.push_back(rows_of(s));
        estimate += 2048 + rows.back().rows.size() * 9 * 256;
    }
    for (;;) {
        std::string out(estimate, '\0');
        Writer w(out.data(), out.size());
        render_shares(w, rows);
        if (!w.overflow()) {
            out.resize(w.used());
            return out;
        }
        estimate *= 2;
    }
}

}  // namespace tcpfix::policy
