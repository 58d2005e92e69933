// `tcpfix probe`: incident 000's prober done right. Bounded wait, nothing
// written, and closed with RST so no TIME_WAIT is left however often it runs.
#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "policy/stats.hpp"
#include "tools/command.hpp"
#include "tools/interrupt.hpp"
#include "tools/net.hpp"

namespace tcpfix::tools {
namespace {

constexpr int kExitInterrupted = 130;  // 128 + SIGINT, as a shell reports it

enum class Outcome { Open = 0, Refused = 1, TimedOut = 2, Error = 3 };

struct ProbeOptions {
    std::string host;
    int port = 0;
    std::int64_t timeout_ns = 2'000'000'000;
    int count = 1;
    std::int64_t interval_ns = 1'000'000'000;
    bool json = false;
    bool ipv4 = false, ipv6 = false;
};

struct Probe {
    int seq = 0;
    Outcome outcome = Outcome::Error;
    int err = 0;
    double latency_ms = 0;
    std::string address;
};

Outcome classify(int err) {
    if (err == 0) return Outcome::Open;
    if (err == ECONNREFUSED) return Outcome::Refused;
    if (err == ETIMEDOUT) return Outcome::TimedOut;
    return Outcome::Error;
}

std::string describe(const Probe& p) {
    switch (p.outcome) {
        case Outcome::Open:
            return "open";
        case Outcome::Refused:
            return "refused";
        case Outcome::TimedOut:
            return "timed out";
        case Outcome::Error:
            return "error: " + policy::errno_name(p.err);
    }
    return "?";
}

// One probe: the addresses in the resolver's order until one is open, all
// within one deadline. Returns nullopt when interrupted.
std::optional<Probe> probe_once(const std::vector<Address>& addresses, std::int64_t timeout_ns,
                                int stop_fd) {
    auto deadline = mono_ns() + timeout_ns;
    Probe p;
    for (const auto& address : addresses) {
        auto r = timed_connect(address, deadline, stop_fd);
        // Nothing was written, so RST loses nothing, and leaves no TIME_WAIT.
        close_rst(std::move(r.fd));
        if (r.err == EINTR) return std::nullopt;
        p.outcome = classify(r.err);
        p.err = r.err;
        p.latency_ms = static_cast<double>(r.latency_ns) / 1e6;
        p.address = address.text;
        if (p.outcome == Outcome::Open || mono_ns() >= deadline) break;
    }
    return p;
}

struct Summary {
    int counts[4] = {};
    std::vector<double> open_ms;  // sorted
};

Summary summarize(const std::vector<Probe>& probes) {
    Summary s;
    for (const auto& p : probes) {
        ++s.counts[static_cast<int>(p.outcome)];
        if (p.outcome == Outcome::Open) s.open_ms.push_back(p.latency_ms);
    }
    std::sort(s.open_ms.begin(), s.open_ms.end());
    return s;
}

double p50(const std::vector<double>& sorted) {
    return sorted[(sorted.size() - 1) / 2];
}

void print_text_summary(const ProbeOptions& o, const std::vector<Probe>& probes) {
    auto s = summarize(probes);
    fmt::print("--- {} port {}: {} probes: {} open, {} refused, {} timed out, {} error", o.host,
               o.port, probes.size(), s.counts[0], s.counts[1], s.counts[2], s.counts[3]);
    if (!s.open_ms.empty())
        fmt::print("; connect ms min/p50/max {:.3f}/{:.3f}/{:.3f}", s.open_ms.front(),
                   p50(s.open_ms), s.open_ms.back());
    fmt::print("\n");
}

void print_json(const ProbeOptions& o, const std::vector<Probe>& probes, bool interrupted) {
    auto s = summarize(probes);
    std::string out =
        fmt::format("{{\"host\":{},\"port\":{},\"probes\":[", policy::json_quote(o.host), o.port);
    for (const auto& p : probes) {
        static constexpr const char* kResult[] = {"open", "refused", "timed out", "error"};
        out += fmt::format(
            "{}{{\"seq\":{},\"result\":\"{}\",\"errno\":{},\"latency_ms\":{:.3f},\"address\":{}}}",
            p.seq == 1 ? "" : ",", p.seq, kResult[static_cast<int>(p.outcome)],
            p.err ? policy::json_quote(policy::errno_name(p.err)) : "null", p.latency_ms,
            policy::json_quote(p.address));
    }
    out += fmt::format(
        "],\"summary\":{{\"open\":{},\"refused\":{},\"timed_out\":{},\"error\":{},\"latency_ms\":",
        s.counts[0], s.counts[1], s.counts[2], s.counts[3]);
    if (s.open_ms.empty())
        out += "{\"min\":null,\"p50\":null,\"max\":null}";
    else
        out += fmt::format("{{\"min\":{:.3f},\"p50\":{:.3f},\"max\":{:.3f}}}", s.open_ms.front(),
                           p50(s.open_ms), s.open_ms.back());
    out += fmt::format("}},\"interrupted\":{}}}\n", interrupted);
    fmt::print("{}", out);
}

int run_probe(const ProbeOptions& o) {
    int family = o.ipv4 ? AF_INET : o.ipv6 ? AF_INET6 : AF_UNSPEC;
    auto addresses = resolve(o.host, static_cast<std::uint16_t>(o.port), family);
    Interrupt interrupt;
    std::vector<Probe> probes;
    bool interrupted = false;
    auto start = mono_ns();
    for (int seq = 1; seq <= o.count; ++seq) {
        if (seq > 1) {
            // An absolute schedule: probe N starts at start + (N-1) * interval.
            auto due = start + static_cast<std::int64_t>(seq - 1) * o.interval_ns;
            if (wait_fd(interrupt.fd(), POLLIN, due, -1) == 0) {
                interrupted = true;
                break;
            }
        }
        auto p = probe_once(addresses, o.timeout_ns, interrupt.fd());
        if (!p) {
            interrupted = true;
            break;
        }
        p->seq = seq;
        if (!o.json) {
            fmt::print("{} {} {:.3f} ms\n", describe(*p), p->address, p->latency_ms);
            std::fflush(stdout);
        }
        probes.push_back(std::move(*p));
    }
    if (o.json)
        print_json(o, probes, interrupted);
    else if (o.count > 1 || interrupted)
        print_text_summary(o, probes);
    if (probes.empty()) return kExitInterrupted;
    return static_cast<int>(probes.back().outcome);
}

}  // namespace

Command add_probe(CLI::App& parent) {
    auto o = std::make_shared<ProbeOptions>();
    auto* app = parent.add_subcommand(
        "probe", "Check whether a TCP port accepts connections, leaving no TIME_WAIT behind");
    app->add_option("HOST", o->host, "host name or numeric IPv4/IPv6 address")->required();
    app->add_option("PORT", o->port, "TCP port")->required()->check(CLI::Range(1, 65535));
    add_duration(*app, "--timeout", o->timeout_ns,
                 "how long one probe waits for the handshake (shared by all of HOST's "
                 "addresses)",
                 "2s");
    app->add_option("--count", o->count, "number of probes")
        ->default_str("1")
        ->check(CLI::Range(1, 1'000'000));
    add_duration(*app, "--interval", o->interval_ns,
                 "time from the start of one probe to the start of the next", "1s");
    app->add_flag("--json", o->json, "print one JSON object at the end instead of lines");
    auto* v4 = app->add_flag("-4,--ipv4", o->ipv4, "use IPv4 addresses only");
    app->add_flag("-6,--ipv6", o->ipv6, "use IPv6 addresses only")->excludes(v4);
    app->footer(
        "Each probe resolves HOST's addresses once, connects without blocking, waits at most\n"
        "--timeout for the handshake (trying the next address after a refusal), writes\n"
        "nothing and closes with RST (SO_LINGER {1,0}), so no TIME_WAIT entry is left.\n"
        "'open' means the handshake completed; the server's application is not asked.\n"
        "One line per probe: result, address, connect latency in ms. The summary's latency\n"
        "is over open probes.\n"
        "\n"
        "Exit status, of the LAST probe: 0 open, 1 refused, 2 timed out, 3 any other error\n"
        "(also a usage error or a name that does not resolve); 130 when interrupted before\n"
        "the first probe finished. SIGINT or SIGTERM stops at once and prints the summary\n"
        "so far (an unfinished probe is dropped).");
    return {app, [o] { return run_probe(*o); }, kExitFailure};
}

}  // namespace tcpfix::tools
