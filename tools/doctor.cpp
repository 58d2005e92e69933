// `tcpfix doctor [HOST:PORT]` and `tcpfix doctor --binary PATH`: the command
// line, and the report in plain sentences or JSON.
#include "tools/doctor.hpp"

#include <fmt/format.h>
#include <netdb.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>

#include "policy/stats.hpp"
#include "tools/command.hpp"

namespace tcpfix::tools {
namespace {

using namespace doctor;

constexpr std::size_t kWidth = 96;
constexpr std::size_t kShownDestinations = 10;
constexpr int kExitFindings = 1;

struct DoctorOptions {
    std::string target;
    std::string binary;
    bool json = false;
};

// "HOST:PORT" or "[IPv6]:PORT" resolved to every address of HOST.
std::vector<policy::Endpoint> parse_target(const std::string& text) {
    std::string host;
    std::string port_text;
    if (text.starts_with('[')) {
        auto close = text.find(']');
        if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
            throw UsageError(fmt::format("doctor: \"{}\": expected [IPv6]:PORT", text));
        host = text.substr(1, close - 1);
        port_text = text.substr(close + 2);
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string::npos || colon == 0)
            throw UsageError(fmt::format("doctor: \"{}\": expected HOST:PORT", text));
        host = text.substr(0, colon);
        if (host.find(':') != std::string::npos)
            throw UsageError(fmt::format(
                "doctor: \"{}\": write an IPv6 address in brackets: [ADDR]:PORT", text));
        port_text = text.substr(colon + 1);
    }
    int port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || port < 1 || port > 65535)
        throw UsageError(fmt::format("doctor: \"{}\": the port must be 1-65535", text));
    // Every address of HOST, without AI_ADDRCONFIG: "localhost" must give ::1
    // too, even in a namespace whose only IPv6 address is loopback.
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* list = nullptr;
    if (int rc = ::getaddrinfo(host.c_str(), port_text.c_str(), &hints, &list); rc != 0)
        throw UsageError(fmt::format("doctor: cannot resolve {}: {}", host,
                                     rc == EAI_SYSTEM ? std::strerror(errno) : gai_strerror(rc)));
    std::vector<policy::Endpoint> out;
    for (auto* ai = list; ai != nullptr; ai = ai->ai_next) {
        auto ep = policy::endpoint_from_sockaddr(ai->ai_addr, ai->ai_addrlen);
        if (ep && std::find(out.begin(), out.end(), *ep) == out.end()) out.push_back(*ep);
    }
    ::freeaddrinfo(list);
    return out;
}

// Words of `text` in lines of at most kWidth, each starting with `indent`.
std::string wrap(std::string_view text, std::string_view indent) {
    std::string out, line(indent);
    while (!text.empty()) {
        auto space = text.find(' ');
        auto word = text.substr(0, space);
        if (line.size() > indent.size() && line.size() + 1 + word.size() > kWidth) {
            out += line + "\n";
            line = indent;
        }
        if (line.size() > indent.size()) line += ' ';
        line += word;
        if (space == std::string_view::npos) break;
        text.remove_prefix(space + 1);
    }
    if (line.size() > indent.size()) out += line + "\n";
    return out;
}

std::string states_text(const std::array<int, diag::kStateCount>& states) {
    std::string out;
    for (unsigned s : {diag::kEstablished, diag::kTimeWait, diag::kCloseWait, diag::kSynSent,
                       diag::kSynRecv, diag::kFinWait1, diag::kFinWait2, diag::kLastAck,
                       diag::kClosing, diag::kClose, diag::kListen})
        if (states[s] > 0)
            out += fmt::format("{}{} {}", out.empty() ? "" : ", ", diag::state_name(s), states[s]);
    return out.empty() ? "none" : out;
}

// A rate in new connections a second, without the unit.
std::string rate_text(double per_s) {
    return per_s >= 100 ? fmt::format("{:.0f}", per_s) : fmt::format("{:.2f}", per_s);
}

std::string sustainable_sentence(const Destination& d, const Settings& st) {
    int sources = std::max(d.sources, 1);
    if (d.tw_reuse)
        return fmt::format(
            "Sustainable short-connection rate: {} x {} ports, reusable after 1 s with "
            "tcp_tw_reuse={} = about {} new connections a second.",
            sources == 1 ? "1 source address" : fmt::format("{} source addresses", sources),
            st.usable_ports(), st.tw_reuse, rate_text(d.sustainable_per_s));
    return fmt::format(
        "Sustainable short-connection rate: {} x {} ports / {} s of TIME_WAIT = {} new "
        "connections a second.",
        sources == 1 ? "1 source address" : fmt::format("{} source addresses", sources),
        st.usable_ports(), kTimeWaitSeconds, rate_text(d.sustainable_per_s));
}

void print_settings(const Settings& st, int time_wait_now) {
    fmt::print("Kernel settings (this network namespace)\n");
    auto row = [](std::string_view name, std::string value, std::string meaning) {
        fmt::print("  {:<34} {:<13} {}\n", name, value, meaning);
    };
    if (st.range_size() > 0)
        row("net.ipv4.ip_local_port_range", fmt::format("{} {}", st.port_lo, st.port_hi),
            fmt::format("{} ports; {}", st.range_size(),
                        st.parity_ok() ? "one bound even, one odd, as the kernel advises"
                                       : "both bounds of the same parity: the kernel advises one "
                                         "even, one odd (connect() and bind() search opposite "
                                         "halves)"));
    else
        row("net.ipv4.ip_local_port_range", "?", "unreadable");
    row("net.ipv4.ip_local_reserved_ports", std::to_string(st.reserved_in_range),
        "reserved ports inside the range");
    row("net.ipv4.tcp_tw_reuse", std::to_string(st.tw_reuse),
        st.tw_reuse == 0   ? "connect() never reuses the port of a TIME_WAIT entry"
        : st.tw_reuse == 1 ? "connect() reuses a TIME_WAIT entry's port once it is 1 s old"
                           : "as 1, for loopback connections only");
    row("net.ipv4.tcp_fin_timeout", fmt::format("{} s", st.fin_timeout_s),
        fmt::format("the FIN_WAIT2 timeout; TIME_WAIT is a fixed {} s (TCP_TIMEWAIT_LEN), "
                    "whatever this says",
                    kTimeWaitSeconds));
    row("net.ipv4.tcp_max_tw_buckets", std::to_string(st.max_tw_buckets),
        fmt::format("TIME_WAIT entries kept at most (now {}); beyond, new ones are dropped",
                    time_wait_now));
    long give_up =
        st.syn_retries >= 0 && st.syn_retries < 30 ? (1L << (st.syn_retries + 1)) - 1 : -1;
    row("net.ipv4.tcp_syn_retries", std::to_string(st.syn_retries),
        fmt::format("a connect nobody answers gives up after about {} s{}", give_up,
                    st.syn_retries >= kSynRetriesHigh
                        ? "; a lost SYN costs 1 s (TCPFIX_CONNECT_TIMEOUT bounds it)"
                        : ""));
    row("net.core.somaxconn", std::to_string(st.somaxconn), "the cap on every listen() backlog");
}

void print_destination_table(const HostReport& r) {
    fmt::print("\nDestinations this host connected to ({} of {})\n",
               std::min(kShownDestinations, r.destinations.size()), r.destinations.size());
    if (r.destinations.empty()) return;
    fmt::print("  {:<28} {:>6} {:>6} {:>9} {:>10} {:>8} {:>6} {:>7} {:>16} {:>10}\n", "DESTINATION",
               "TOTAL", "ESTAB", "TIME_WAIT", "CLOSE_WAIT", "SYN_SENT", "OTHER", "SOURCES",
               "PORTS IN USE", "MAX RATE");
    for (std::size_t i = 0; i < r.destinations.size() && i < kShownDestinations; ++i) {
        const auto& d = r.destinations[i];
        int other = d.total - d.count(diag::kEstablished) - d.count(diag::kTimeWait) -
                    d.count(diag::kCloseWait) - d.count(diag::kSynSent);
        fmt::print("  {:<28} {:>6} {:>6} {:>9} {:>10} {:>8} {:>6} {:>7} {:>16} {:>10}\n", d.text,
                   d.total, d.count(diag::kEstablished), d.count(diag::kTimeWait),
                   d.count(diag::kCloseWait), d.count(diag::kSynSent), other, d.sources,
                   fmt::format("{}/{} ({:.0f}%)", d.ports_in_range, d.capacity, 100 * d.share()),
                   rate_text(d.sustainable_per_s) + "/s");
    }
}

void print_host(const HostReport& r) {
    const auto& st = r.settings;
    fmt::print("tcpfix doctor: {} TCP sockets in this network namespace (read with sock_diag)\n\n",
               r.total);
    print_settings(st, r.states[diag::kTimeWait]);

    fmt::print("\nSockets\n");
    fmt::print("  by state: {}\n", states_text(r.states));
    if (st.usable_ports() > 0)
        fmt::print("  ports of the range in use: {} of {} ({:.0f}%)\n", r.ports_in_use,
                   st.usable_ports(), 100.0 * r.ports_in_use / st.usable_ports());
    fmt::print("  TIME_WAIT of accepted connections (this host served and closed first): {}\n",
               r.inbound_time_wait);
    if (st.usable_ports() > 0)
        fmt::print("{}",
                   wrap(fmt::format("Per source address and destination, {} ports / {} s of "
                                    "TIME_WAIT = at most {} new short connections a second "
                                    "(TIME_WAIT lasts a fixed {} s on Linux; tcp_fin_timeout does "
                                    "not shorten it).",
                                    st.usable_ports(), kTimeWaitSeconds,
                                    rate_text(double(st.usable_ports()) / kTimeWaitSeconds),
                                    kTimeWaitSeconds),
                        "  "));

    print_destination_table(r);

    if (!r.close_wait.empty()) {
        fmt::print("\nCLOSE_WAIT held by processes\n");
        for (const auto& h : r.close_wait) {
            std::string where;
            for (std::size_t i = 0; i < h.destinations.size() && i < 3; ++i)
                where += fmt::format("{}{} to {}", i == 0 ? "" : ", ", h.destinations[i].second,
                                     h.destinations[i].first);
            fmt::print("  {}: {} {} in CLOSE_WAIT, {} bytes unread ({})\n",
                       h.pid > 0 ? fmt::format("{} (pid {})", h.command, h.pid)
                                 : std::string("owner not visible"),
                       h.sockets, h.outbound ? "connections it opened" : "accepted connections",
                       h.unread, where);
        }
    }
    if (!r.owners_complete)
        fmt::print(
            "  (some sockets' owners are not visible to this user: run as root to see "
            "them)\n");

    for (const auto& d : r.targets) {
        fmt::print("\nToward {}\n", d.text);
        fmt::print("{}",
                   wrap(fmt::format("{} connections from this host ({}), from {}; {} of the {} "
                                    "ports usable toward it are taken ({:.0f}%).",
                                    d.total, states_text(d.states),
                                    d.sources == 1 ? std::string("1 source address")
                                                   : fmt::format("{} source addresses", d.sources),
                                    d.ports_in_range, d.capacity, 100 * d.share()),
                        "  "));
        fmt::print("{}", wrap(sustainable_sentence(d, st), "  "));
    }

    fmt::print("\nDiagnosis\n");
    if (r.findings.empty())
        fmt::print("{}", wrap("Nothing here matches the four incidents tcpfix knows: no "
                              "destination's ports are filling with TIME_WAIT, no process holds "
                              "leaked CLOSE_WAIT sockets, no handshakes are piling up, and the "
                              "port range has room.",
                              "  "));
    for (const auto& f : r.findings) {
        fmt::print("  [{}] {}{}\n", f.severity,
                   f.incident.empty() ? std::string() : fmt::format("incident {}: ", f.incident),
                   f.subject);
        fmt::print("{}", wrap(f.text, "    "));
        if (!f.cures.empty()) {
            std::string cures;
            for (const auto& c : f.cures) cures += (cures.empty() ? "" : ", ") + c;
            fmt::print("    cure: {}\n", cures);
        }
    }
}

std::string json_string_list(const std::vector<std::string>& v) {
    std::string out = "[";
    for (const auto& s : v) out += (out.size() > 1 ? "," : "") + policy::json_quote(s);
    return out + "]";
}

std::string json_states(const std::array<int, diag::kStateCount>& states) {
    std::string out = "{";
    for (unsigned s = 1; s < diag::kStateCount; ++s)
        if (states[s] > 0)
            out += fmt::format("{}\"{}\":{}", out.size() > 1 ? "," : "", diag::state_name(s),
                               states[s]);
    return out + "}";
}

std::string json_findings(const std::vector<Finding>& findings) {
    std::string out = "[";
    for (const auto& f : findings)
        out += fmt::format(
            "{}{{\"incident\":{},\"severity\":\"{}\",\"kind\":\"{}\",\"subject\":{},\"cures\":{},"
            "\"text\":{}}}",
            out.size() > 1 ? "," : "", f.incident.empty() ? "null" : policy::json_quote(f.incident),
            f.severity, f.kind, policy::json_quote(f.subject), json_string_list(f.cures),
            policy::json_quote(f.text));
    return out + "]";
}

std::string json_destination(const Destination& d) {
    std::string processes = "[";
    for (const auto& p : d.processes)
        processes += fmt::format("{}{{\"pid\":{},\"command\":{},\"sockets\":{}}}",
                                 processes.size() > 1 ? "," : "", p.pid,
                                 policy::json_quote(p.command), p.sockets);
    processes += "]";
    return fmt::format(
        "{{\"destination\":{},\"total\":{},\"states\":{},\"time_wait\":{},\"close_wait\":{},"
        "\"syn_sent\":{},\"established\":{},\"source_addresses\":{},\"ports_in_use\":{},"
        "\"capacity\":{},\"tw_reuse\":{},\"sustainable_per_s\":{:.3f},\"close_wait_unread\":{},"
        "\"processes\":{}}}",
        policy::json_quote(d.text), d.total, json_states(d.states), d.count(diag::kTimeWait),
        d.count(diag::kCloseWait), d.count(diag::kSynSent), d.count(diag::kEstablished), d.sources,
        d.ports_in_range, d.capacity, d.tw_reuse, d.sustainable_per_s, d.close_wait_unread,
        processes);
}

void print_host_json(const HostReport& r) {
    const auto& st = r.settings;
    std::string out = fmt::format(
        "{{\"settings\":{{\"ip_local_port_range\":[{},{}],\"port_range_size\":{},"
        "\"reserved_in_range\":{},\"usable_ports\":{},\"port_range_parity_ok\":{},"
        "\"tcp_tw_reuse\":{},\"tcp_timestamps\":{},\"tcp_fin_timeout_s\":{},"
        "\"tcp_max_tw_buckets\":{},\"tcp_syn_retries\":{},\"somaxconn\":{},"
        "\"time_wait_s\":{}}},",
        st.port_lo, st.port_hi, st.range_size(), st.reserved_in_range, st.usable_ports(),
        st.parity_ok(), st.tw_reuse, st.timestamps, st.fin_timeout_s, st.max_tw_buckets,
        st.syn_retries, st.somaxconn, kTimeWaitSeconds);
    out += fmt::format(
        "\"sockets\":{{\"total\":{},\"states\":{},\"ports_in_use\":{},\"inbound_time_wait\":{},"
        "\"owners_complete\":{}}},",
        r.total, json_states(r.states), r.ports_in_use, r.inbound_time_wait, r.owners_complete);
    out += "\"destinations\":[";
    for (std::size_t i = 0; i < r.destinations.size(); ++i)
        out += (i ? "," : "") + json_destination(r.destinations[i]);
    out += "],\"close_wait\":[";
    for (std::size_t i = 0; i < r.close_wait.size(); ++i) {
        const auto& h = r.close_wait[i];
        std::string where = "{";
        for (const auto& [dest, n] : h.destinations)
            where +=
                fmt::format("{}{}:{}", where.size() > 1 ? "," : "", policy::json_quote(dest), n);
        where += "}";
        out += fmt::format(
            "{}{{\"pid\":{},\"command\":{},\"outbound\":{},\"sockets\":{},\"unread\":{},"
            "\"destinations\":{}}}",
            i ? "," : "", h.pid > 0 ? std::to_string(h.pid) : "null",
            h.pid > 0 ? policy::json_quote(h.command) : "null", h.outbound, h.sockets, h.unread,
            where);
    }
    out += "],\"full_listeners\":[";
    for (std::size_t i = 0; i < r.full_listeners.size(); ++i)
        out += fmt::format("{}{{\"local\":{},\"queued\":{},\"backlog\":{}}}", i ? "," : "",
                           policy::json_quote(r.full_listeners[i].local),
                           r.full_listeners[i].queued, r.full_listeners[i].backlog);
    out += "],\"targets\":[";
    for (std::size_t i = 0; i < r.targets.size(); ++i)
        out += (i ? "," : "") + json_destination(r.targets[i]);
    out += "],\"findings\":" + json_findings(r.findings) + "}\n";
    fmt::print("{}", out);
}

bool serious(const std::vector<Finding>& findings) {
    return std::any_of(findings.begin(), findings.end(),
                       [](const auto& f) { return f.severity != "info"; });
}

int run_binary(const DoctorOptions& o) {
    auto r = examine_binary(o.binary);
    bool reached = !std::any_of(r.findings.begin(), r.findings.end(),
                                [](const auto& f) { return f.severity == "critical"; });
    if (o.json) {
        // "instead": what reaches a program the preload cannot (the kernel's
        // policies, by cgroup).
        fmt::print(
            "{{\"binary\":{},\"checked\":{},\"findings\":{},\"notes\":{},\"preload_reaches\":{}"
            "{}}}\n",
            policy::json_quote(r.path), json_string_list(r.checked), json_findings(r.findings),
            json_string_list(r.notes), reached, reached ? "" : ",\"instead\":\"tcpfix attach\"");
        return serious(r.findings) ? kExitFindings : 0;
    }
    fmt::print("tcpfix doctor --binary {}\n", r.path);
    if (r.checked.size() == 1)
        fmt::print("  examined {} (it needs no library)\n", r.checked.front());
    else if (!r.checked.empty())
        fmt::print("  examined {} and {} it needs\n", r.checked.front(),
                   r.checked.size() == 2 ? std::string("1 library")
                                         : fmt::format("{} libraries", r.checked.size() - 1));
    for (const auto& f : r.findings)
        fmt::print("{}", wrap(fmt::format("[{}] {}", f.severity, f.text), "  "));
    for (const auto& n : r.notes) fmt::print("{}", wrap("note: " + n, "  "));
    if (r.findings.empty())
        fmt::print("  LD_PRELOAD reaches it: tcpfix's policies will apply.\n");
    else if (reached)
        fmt::print("  LD_PRELOAD reaches it, with the limit above.\n");
    else
        fmt::print(
            "{}",
            wrap(fmt::format("LD_PRELOAD does not reach it. `tcpfix attach` does, from the kernel "
                             "(BPF, as root): the SYN retransmission timeout (--connect-timeout), "
                             "source addresses (--source-addrs), CLOSE_WAIT reaping "
                             "(--reap-close-wait) and TIME_WAIT removal (--close rst) for every "
                             "program in a cgroup, e.g. `tcpfix attach --close rst -- {}` or "
                             "`tcpfix attach --close rst --unit NAME.service`.",
                             r.path),
                 "  "));
    return serious(r.findings) ? kExitFindings : 0;
}

int run_doctor(const DoctorOptions& o) {
    if (!o.binary.empty()) return run_binary(o);
    std::vector<policy::Endpoint> targets;
    if (!o.target.empty()) targets = parse_target(o.target);
    auto r = examine_host(targets);
    if (o.json)
        print_host_json(r);
    else
        print_host(r);
    return serious(r.findings) ? kExitFindings : 0;
}

}  // namespace

Command add_doctor(CLI::App& parent) {
    auto o = std::make_shared<DoctorOptions>();
    auto* app = parent.add_subcommand(
        "doctor", "Diagnose this host's TCP settings and sockets, or a program before preloading");
    auto* target = app->add_option("HOST:PORT", o->target,
                                   "a destination to report on ([IPv6]:PORT for IPv6)");
    app->add_option("--binary", o->binary,
                    "check a program instead: can LD_PRELOAD reach it? (PATH is searched)")
        ->type_name("PATH")
        ->excludes(target);
    app->add_flag("--json", o->json, "one JSON object instead of sentences");
    app->footer(fmt::format(
        "Reads the kernel's settings and this network namespace's TCP sockets through netlink\n"
        "sock_diag (as ss does; run it inside a namespace with `ip netns exec NS tcpfix doctor`),\n"
        "and the owners of sockets from /proc/*/fd where this user may look. Connections this\n"
        "host initiated are grouped by destination; a socket whose local port is a listening\n"
        "port is an accepted one. TIME_WAIT lasts a fixed {} s on Linux (tcp_fin_timeout does\n"
        "not shorten it), so one source address sustains (usable ports / {} s) new connections\n"
        "a second to one destination.\n"
        "\n"
        "Findings, each naming the incident and the TCPFIX_* cure:\n"
        "  time_wait     >= {} TIME_WAIT entries toward one destination, holding >= {:.0f}% of\n"
        "                its ports (critical at {:.0f}%): incident 000 (or 002 for proxies)\n"
        "  close_wait    a process holds >= {} connections in CLOSE_WAIT: incident 001\n"
        "  syn_sent      >= {} handshakes waiting toward one destination: incident 003\n"
        "  accept_queue  a listener's accept queue is over its backlog: incident 003\n"
        "  port_range    >= {:.0f}% of the ephemeral range in use\n"
        "\n"
        "--binary PATH warns about set-user-ID, set-group-ID and file-capability programs,\n"
        "static binaries and Go programs (LD_PRELOAD cannot reach them: `tcpfix attach` can,\n"
        "from the kernel), and calls to dlopen()\n"
        "with RTLD_DEEPBIND in the program and its libraries (x86-64 code: a constant flags\n"
        "argument loaded just before the call; elsewhere PHP < 8.5 by its version text).\n"
        "\n"
        "Exit status: 0 nothing found, 1 a warning or critical finding, 2 usage, 3 failure.",
        kTimeWaitSeconds, kTimeWaitSeconds, kMinHotTimeWait, 100 * kHotTimeWaitShare,
        100 * kCriticalShare, kMinCloseWaitLeak, kMinSynSentPileUp, 100 * kRangeNearlyFull));
    return {app, [o] { return run_doctor(*o); }};
}

}  // namespace tcpfix::tools
