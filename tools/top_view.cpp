// `tcpfix top`'s output: a top-like screen, one JSON object, the listing of
// shares. Pure formatting of what top.cpp read.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <tuple>

#include "policy/stats.hpp"
#include "tools/top.hpp"

namespace tcpfix::tools::top {
namespace {

using Key = std::tuple<std::uint64_t, std::uint64_t, std::uint64_t>;

Key key_of(const policy::Endpoint& ep) {
    auto k = policy::share::make_key(ep);
    return {k.w[0], k.w[1], k.w[2]};
}

std::uint64_t minus(std::uint64_t after, std::uint64_t before) {
    return after > before ? after - before : 0;
}

// "-" when healthy, else "400ms", "1.5s", "25us".
std::string short_duration(std::int64_t ns) {
    if (ns <= 0) return "-";
    if (ns >= 1'000'000'000) return fmt::format("{:.3g}s", static_cast<double>(ns) / 1e9);
    if (ns >= 1'000'000) return fmt::format("{:.3g}ms", static_cast<double>(ns) / 1e6);
    return fmt::format("{:.3g}us", static_cast<double>(ns) / 1e3);
}

std::string pids_json(const std::vector<std::uint64_t>& identities) {
    std::string out = "[";
    for (std::size_t i = 0; i < identities.size(); ++i)
        out += fmt::format("{}{}", i ? "," : "", policy::share::identity_pid(identities[i]));
    return out + "]";
}

double round3(double x) {
    return static_cast<double>(static_cast<long long>(x * 1000 + (x < 0 ? -0.5 : 0.5))) / 1000;
}

}  // namespace

std::vector<Row> rows_between(const policy::share::Snapshot& before,
                              const policy::share::Snapshot& after, double seconds) {
    std::map<Key, const policy::share::EntryView*> earlier;
    for (const auto& e : before.entries) earlier[key_of(e.dest)] = &e;
    std::vector<Row> rows;
    const double dt = seconds > 0 ? seconds : 1;
    for (const auto& e : after.entries) {
        Row r;
        r.now = e;
        policy::share::EntryView zero;
        auto it = earlier.find(key_of(e.dest));
        const policy::share::EntryView& b = it != earlier.end() ? *it->second : zero;
        r.connects_per_s = static_cast<double>(minus(e.connects, b.connects)) / dt;
        r.failures_per_s = static_cast<double>(minus(e.failures, b.failures)) / dt;
        r.throttled_ms_per_s =
            static_cast<double>(minus(e.throttled_us, b.throttled_us)) / 1000.0 / dt;
        rows.push_back(r);
    }
    std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
        if (a.connects_per_s != b.connects_per_s) return a.connects_per_s > b.connects_per_s;
        return a.now.connects > b.now.connects;
    });
    return rows;
}

std::string render_screen(const View& v, const std::string& clock, int max_rows) {
    const auto& s = v.snapshot;
    double conn = 0, fail = 0;
    std::uint64_t waiting = 0;
    std::int64_t worst_backoff = 0;
    for (const auto& r : v.rows) {
        conn += r.connects_per_s;
        fail += r.failures_per_s;
        waiting += r.now.waiting;
        worst_backoff = std::max(worst_backoff, r.now.backoff_delay_ns);
    }
    std::string out =
        fmt::format("tcpfix top - share {} (uid {}) - {}\n{}\n", s.name, s.uid, clock, v.path);
    out += fmt::format(
        "processes attached: {}   destinations: {} of {}   table full: {}   interval: {:.1f} s\n",
        s.processes.size(), s.entries.size(), s.capacity, s.table_full, v.interval_s);
    out += fmt::format(
        "connects: {:.1f}/s   failures: {:.1f}/s   waiting now: {}   longest backoff: {}\n", conn,
        fail, waiting, short_duration(worst_backoff));
    if (s.filling != 0 || s.unreadable != 0)
        out += fmt::format(
            "entries lost to processes killed mid-insert: {}   unreadable entries: {}\n", s.filling,
            s.unreadable);
    if (!v.time_wait_known) out += fmt::format("TIME_WAIT unknown: {}\n", v.time_wait_error);
    out += "\n";
    out += fmt::format("{:<28} {:>9} {:>9} {:>8} {:>8} {:>13} {:>8} {:>10} {:>11} {:>10}\n",
                       "DESTINATION", "CONN/s", "FAIL/s", "BACKOFF", "WAITING", "THROTTLEDms/s",
                       "REAPED", "TIME_WAIT", "CONNECTS", "FAILURES");
    int shown = 0;
    for (const auto& r : v.rows) {
        if (max_rows > 0 && shown == max_rows) {
            out += fmt::format("... {} more destinations\n",
                               v.rows.size() - static_cast<std::size_t>(shown));
            break;
        }
        ++shown;
        std::string tw = r.now.time_wait >= 0 ? fmt::format("{}", r.now.time_wait) : "?";
        out += fmt::format(
            "{:<28} {:>9.1f} {:>9.1f} {:>8} {:>8} {:>13.1f} {:>8} {:>10} {:>11} {:>10}\n",
            fmt::format("{}", r.now.dest), r.connects_per_s, r.failures_per_s,
            short_duration(r.now.backoff_delay_ns), r.now.waiting, r.throttled_ms_per_s,
            r.now.reaped, tw, r.now.connects, r.now.failures);
    }
    if (v.rows.empty()) out += "(no destination yet)\n";
    return out;
}

std::string render_json(const View& v) {
    const auto& s = v.snapshot;
    std::string out = fmt::format(
        "{{\"share\":{},\"uid\":{},\"path\":{},\"created_unix_s\":{},\"interval_s\":{},"
        "\"processes\":{},"
        "\"pids\":{},\"capacity\":{},\"destinations_used\":{},\"table_full\":{},\"entries_lost\":{}"
        ","
        "\"unreadable_entries\":{},\"time_wait_known\":{},\"destinations\":[",
        policy::json_quote(s.name), s.uid, policy::json_quote(v.path), s.created_unix_s,
        round3(v.interval_s), s.processes.size(), pids_json(s.processes), s.capacity,
        s.entries.size(), s.table_full, s.filling, s.unreadable,
        v.time_wait_known ? "true" : "false");
    bool first = true;
    for (const auto& r : v.rows) {
        const auto& e = r.now;
        out += fmt::format(
            "{}{{\"destination\":{},\"connects\":{},\"failures\":{},\"leaks\":{},\"reaped\":{},"
            "\"throttled_ms\":{},\"connects_per_s\":{},\"failures_per_s\":{},\"throttled_ms_per_"
            "s\":{},"
            "\"consecutive_failures\":{},\"backoff_delay_ms\":{},\"waiting\":{},\"time_wait\":{}}}",
            first ? "" : ",", policy::json_quote(fmt::format("{}", e.dest)), e.connects, e.failures,
            e.leaks, e.reaped, round3(static_cast<double>(e.throttled_us) / 1000.0),
            round3(r.connects_per_s), round3(r.failures_per_s), round3(r.throttled_ms_per_s),
            e.consecutive_failures, round3(static_cast<double>(e.backoff_delay_ns) / 1e6),
            e.waiting, e.time_wait >= 0 ? fmt::format("{}", e.time_wait) : std::string("null"));
        first = false;
    }
    return out + "]}";
}

std::string render_list(const std::vector<Listed>& shares) {
    if (shares.empty())
        return "no shares on this host (none in /dev/shm: no process has used TCPFIX_SHARE)\n";
    std::string out = fmt::format("{:<24} {:>6} {:>9} {:>12} {:>12} {:>12}  {}\n", "SHARE", "UID",
                                  "PROCESSES", "DESTINATIONS", "CONNECTS", "FAILURES", "PATH");
    for (const auto& l : shares) {
        if (!l.snapshot) {
            out += fmt::format("{:<24} {:>6} {:>9} {:>12} {:>12} {:>12}  {} ({})\n", l.file.name,
                               l.file.uid, "?", "?", "?", "?", l.path, l.problem);
            continue;
        }
        std::uint64_t connects = 0, failures = 0;
        for (const auto& e : l.snapshot->entries) {
            connects += e.connects;
            failures += e.failures;
        }
        out += fmt::format("{:<24} {:>6} {:>9} {:>12} {:>12} {:>12}  {}\n", l.file.name, l.file.uid,
                           l.snapshot->processes.size(), l.snapshot->entries.size(), connects,
                           failures, l.path);
    }
    return out;
}

std::string render_list_json(const std::vector<Listed>& shares) {
    std::string out = "{\"shares\":[";
    bool first = true;
    for (const auto& l : shares) {
        out += first ? "" : ",";
        first = false;
        out += fmt::format("{{\"share\":{},\"uid\":{},\"layout_version\":{},\"path\":{}",
                           policy::json_quote(l.file.name), l.file.uid, l.file.version,
                           policy::json_quote(l.path));
        if (!l.snapshot) {
            out +=
                fmt::format(",\"readable\":false,\"problem\":{}}}", policy::json_quote(l.problem));
            continue;
        }
        std::uint64_t connects = 0, failures = 0;
        for (const auto& e : l.snapshot->entries) {
            connects += e.connects;
            failures += e.failures;
        }
        out += fmt::format(
            ",\"readable\":true,\"processes\":{},\"pids\":{},\"destinations\":{},\"connects\":{},"
            "\"failures\":{},\"created_unix_s\":{}}}",
            l.snapshot->processes.size(), pids_json(l.snapshot->processes),
            l.snapshot->entries.size(), connects, failures, l.snapshot->created_unix_s);
    }
    return out + "]}";
}

}  // namespace tcpfix::tools::top
