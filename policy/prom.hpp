// The process's counters in Prometheus's text exposition format (version
// 0.0.4), written when TCPFIX_STATS ends in ".prom" so that node_exporter's
// textfile collector can pick the file up. Like the JSON it renders into a
// caller's buffer and never allocates: it runs on the close path and in an
// exit handler.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "policy/share.hpp"
#include "policy/stats.hpp"

namespace tcpfix::policy {

// Destinations named in the output, by connects (the table holds up to
// Destinations::kSize); the rest are summed into destination="other".
constexpr int kPromTopDestinations = 20;

// True when a TCPFIX_STATS path asks for the exposition format.
constexpr bool wants_prometheus(std::string_view stats_path) {
    return stats_path.ends_with(".prom");
}

// Writes the counters as exposition text into buf: every family with its
// # HELP and # TYPE lines, a `tag` label on every sample, the PID only in
// tcpfix_info (a label per PID would make a new series for every process).
// `policy` is the variables in force, as given (Config::given). Returns the
// length written, or 0 if cap is too small.
std::size_t render_stats_prom(const Counters& c, const StatsContext& ctx,
                              std::span<const std::pair<std::string, std::string>> policy,
                              char* buf, std::size_t cap);

// The counters of shares (TCPFIX_SHARE) as exposition text, what `tcpfix top
// --prom FILE` writes for node_exporter's textfile collector: per share
// (label `share`) the processes attached and the table's use, and per
// destination (the kPromTopDestinations with the most connects; the rest
// summed, gauges maxed, into destination="other") its counters (totals since
// the share was created: the segment outlives its processes) and gauges (the
// backoff delay, connects waiting, TIME_WAIT entries when known). For tools:
// it allocates.
std::string render_shares_prom(std::span<const share::Snapshot> shares);

}  // namespace tcpfix::policy
