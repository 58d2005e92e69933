// `tcpfix doctor` on the host: the kernel's settings, this network
// namespace's TCP sockets grouped by destination and by owner, and the
// findings they add up to, each in plain sentences naming the incident and
// the tcpfix setting that cures it.
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <map>
#include <set>
#include <unordered_map>

#include "tools/doctor.hpp"
#include "tools/fd.hpp"

namespace tcpfix::tools::doctor {
namespace {

using diag::TcpSocket;

std::optional<std::string> read_text(const char* path) {
    Fd fd(::open(path, O_RDONLY | O_CLOEXEC));
    if (!fd) return std::nullopt;
    std::string out;
    char buf[4096];
    while (true) {
        ssize_t n = ::read(fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
}

// The whitespace-separated integers of a /proc/sys file.
std::vector<long> read_longs(const char* path) {
    std::vector<long> out;
    auto text = read_text(path);
    if (!text) return out;
    const char* p = text->data();
    const char* end = p + text->size();
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n')) ++p;
        long v = 0;
        auto [next, ec] = std::from_chars(p, end, v);
        if (ec != std::errc()) break;
        out.push_back(v);
        p = next;
    }
    return out;
}

long read_long(const char* path) {
    auto v = read_longs(path);
    return v.empty() ? -1 : v[0];
}

// How many ports of "1000,2000-2010" lie in [lo, hi].
int reserved_inside(std::string_view list, int lo, int hi) {
    int n = 0;
    while (!list.empty()) {
        auto cut = list.find(',');
        auto item = list.substr(0, cut);
        while (!item.empty() && (item.back() == '\n' || item.back() == ' ')) item.remove_suffix(1);
        int a = 0, b = 0;
        auto dash = item.find('-');
        auto first = item.substr(0, dash);
        if (std::from_chars(first.data(), first.data() + first.size(), a).ec == std::errc()) {
            b = a;
            if (dash != std::string_view::npos) {
                auto second = item.substr(dash + 1);
                if (std::from_chars(second.data(), second.data() + second.size(), b).ec !=
                    std::errc())
                    b = a;
            }
            n += std::max(0, std::min(b, hi) - std::max(a, lo) + 1);
        }
        if (cut == std::string_view::npos) break;
        list.remove_prefix(cut + 1);
    }
    return n;
}

bool is_wildcard(const policy::IpAddr& a) {
    return std::all_of(a.bytes.begin(), a.bytes.end(), [](auto b) { return b == 0; });
}

bool is_loopback(const policy::IpAddr& a) {
    if (a.family == AF_INET) return a.bytes[0] == 127;
    if (a.family != AF_INET6) return false;
    for (int i = 0; i < 15; ++i)
        if (a.bytes[i] != 0) return false;
    return a.bytes[15] == 1;
}

// Programs that half-close toward their backends (incident 002's pattern):
// /proc/PID/comm, at most 15 characters.
bool is_known_proxy(const std::string& command) {
    static constexpr std::string_view kProxies[] = {
        "haproxy",     "nginx", "envoy",    "traefik", "pgbouncer", "proxysql",
        "mysqlrouter", "squid", "varnishd", "caddy",   "odyssey",   "sslh"};
    return std::any_of(std::begin(kProxies), std::end(kProxies),
                       [&](std::string_view p) { return command.starts_with(p); });
}

std::string plural(long n, std::string_view one, std::string_view many) {
    return fmt::format("{} {}", n, n == 1 ? one : many);
}

std::string percent(double share) {
    return fmt::format("{:.0f}%", 100.0 * share);
}

std::string rate(double per_s) {
    if (per_s >= 100) return fmt::format("{:.0f}", per_s);
    if (per_s >= 10) return fmt::format("{:.1f}", per_s);
    return fmt::format("{:.2f}", per_s);
}

// A connect to a host that never answers gives up after the first SYN and
// `retries` retransmissions, the timeout doubling from 1 s: 2^(r+1) - 1 s.
long syn_give_up_s(int retries) {
    return retries < 0 || retries > 30 ? -1 : (1L << (retries + 1)) - 1;
}

// Which listener, if any, accepted this socket: its local port is a
// listening port on its address or on the wildcard address.
class Listeners {
  public:
    void add(const TcpSocket& s) { by_port_[s.local.port].push_back(s.local.addr); }
    bool accepted(const TcpSocket& s) const {
        auto it = by_port_.find(s.local.port);
        if (it == by_port_.end()) return false;
        return std::any_of(it->second.begin(), it->second.end(), [&](const policy::IpAddr& a) {
            return is_wildcard(a) || a == s.local.addr;
        });
    }

  private:
    std::unordered_map<std::uint16_t, std::vector<policy::IpAddr>> by_port_;
};

std::vector<ProcessCount> by_count(const std::map<int, ProcessCount>& m) {
    std::vector<ProcessCount> out;
    for (const auto& [pid, p] : m) out.push_back(p);
    std::stable_sort(out.begin(), out.end(),
                     [](const auto& a, const auto& b) { return a.sockets > b.sockets; });
    return out;
}

std::string processes_text(const std::vector<ProcessCount>& ps, std::size_t max = 3) {
    std::string out;
    for (std::size_t i = 0; i < ps.size() && i < max; ++i)
        out += fmt::format("{}{} (pid {}, {})", i == 0 ? "" : ", ", ps[i].command, ps[i].pid,
                           plural(ps[i].sockets, "socket", "sockets"));
    if (ps.size() > max) out += fmt::format(" and {} more", ps.size() - max);
    return out;
}

// What the kernel allows toward one destination, filled in once counted.
void finish_destination(Destination& d, const std::set<std::string>& sources,
                        const std::map<int, ProcessCount>& owners, const Settings& st) {
    d.sources = static_cast<int>(sources.size());
    bool loopback = is_loopback(d.endpoint.addr);
    for (const auto& s : sources)
        if (auto ip = policy::parse_ip(s); ip && is_loopback(*ip)) loopback = true;
    d.tw_reuse = st.timestamps != 0 && (st.tw_reuse == 1 || (st.tw_reuse == 2 && loopback));
    d.capacity = std::max(d.sources, 1) * st.usable_ports();
    d.sustainable_per_s = double(d.capacity) / (d.tw_reuse ? 1.0 : kTimeWaitSeconds);
    d.processes = by_count(owners);
}

// -- findings ------------------------------------------------------------------------------

void time_wait_finding(const Destination& d, const Settings& st, std::vector<Finding>& out) {
    int tw = d.count(diag::kTimeWait);
    if (tw < kMinHotTimeWait || d.capacity == 0) return;
    if (double(tw) / d.capacity < kHotTimeWaitShare) return;
    bool proxy = std::any_of(d.processes.begin(), d.processes.end(),
                             [](const auto& p) { return is_known_proxy(p.command); });
    Finding f;
    f.kind = "time_wait";
    f.subject = d.text;
    f.incident = proxy ? "002" : "000";
    f.severity = d.tw_reuse ? "info" : d.share() >= kCriticalShare ? "critical" : "warn";
    auto& t = f.text;
    t = fmt::format(
        "{} toward {} hold {} of the {} ports this host can use toward it ({} x {} ports). "
        "Linux keeps each TIME_WAIT entry a fixed {} s, so at most {} x {} / {} s = {} new "
        "connections a second to {} can be sustained; these entries alone mean about {} a "
        "second over the last minute.",
        plural(tw, "TIME_WAIT entry", "TIME_WAIT entries"), d.text,
        percent(double(tw) / d.capacity), d.capacity,
        plural(std::max(d.sources, 1), "source address", "source addresses"), st.usable_ports(),
        kTimeWaitSeconds, std::max(d.sources, 1), st.usable_ports(), kTimeWaitSeconds,
        rate(double(d.capacity) / kTimeWaitSeconds), d.text, rate(double(tw) / kTimeWaitSeconds));
    if (d.tw_reuse)
        t += fmt::format(
            " tcp_tw_reuse={} lets connect() take over such a port once its entry is 1 s old, so "
            "they do not exhaust the range yet.",
            st.tw_reuse);
    else if (d.share() >= kCriticalShare)
        t += fmt::format(
            " {} of its ports are taken: new connections to {} are about to fail with "
            "EADDRNOTAVAIL (Cannot assign requested address), as the prober's did in incident 000.",
            percent(d.share()), d.text);
    if (!d.processes.empty())
        t +=
            fmt::format(" Processes with live connections to it: {}.", processes_text(d.processes));
    t += fmt::format(
        " This host closed these connections first. If the program closes while the connection "
        "is ESTABLISHED (a prober, a client such as php-redis: incident 000), TCPFIX_CLOSE=rst "
        "ends them with RST when nothing can be lost, and no TIME_WAIT is left. If it half-closes "
        "first (shutdown(SHUT_WR), as haproxy does toward its backends: incident 002), the entry "
        "exists before close() and rst cannot help: TCPFIX_SOURCE_ADDRS gives it more 4-tuples "
        "(each local address brings its own {} ports), with TCPFIX_BIND_NO_PORT=1 if it binds "
        "a source address itself.",
        st.usable_ports());
    if (proxy)
        f.cures = {"TCPFIX_SOURCE_ADDRS", "TCPFIX_BIND_NO_PORT=1", "TCPFIX_CLOSE=rst"};
    else
        f.cures = {"TCPFIX_CLOSE=rst", "TCPFIX_SOURCE_ADDRS"};
    out.push_back(std::move(f));
}

void close_wait_finding(const CloseWaitHolder& h, const std::vector<Destination>& dests,
                        std::vector<Finding>& out) {
    if (h.sockets < kMinCloseWaitLeak) return;
    std::string where;
    for (std::size_t i = 0; i < h.destinations.size() && i < 3; ++i)
        where += fmt::format("{}{} to {}", i == 0 ? "" : ", ", h.destinations[i].second,
                             h.destinations[i].first);
    if (h.destinations.size() > 3)
        where += fmt::format(", {} more destinations", h.destinations.size() - 3);
    std::string who = h.pid > 0 ? fmt::format("{} (pid {})", h.command, h.pid)
                                : std::string("a process this user cannot see");
    Finding f;
    f.kind = "close_wait";
    f.subject = h.pid > 0 ? fmt::format("{} (pid {})", h.command, h.pid) : "unknown process";
    f.severity = "warn";
    if (!h.outbound) {
        f.text = fmt::format(
            "{} holds {} in CLOSE_WAIT ({}), {} bytes never read: the clients closed them and the "
            "server never did. tcpfix does not act on accepted connections; the server must close "
            "them.",
            who, plural(h.sockets, "accepted connection", "accepted connections"), where, h.unread);
        out.push_back(std::move(f));
        return;
    }
    for (const auto& d : dests)
        for (const auto& [text, n] : h.destinations)
            if (d.text == text && d.share() >= kCriticalShare) f.severity = "critical";
    f.incident = "001";
    f.text = fmt::format(
        "{} holds {} it opened in CLOSE_WAIT ({}), with {} never read: the peer closed them and "
        "the program never did. That is a leak, as in incident 001 (sysbench's reconnect loop "
        "abandoning each try): every such socket keeps its local port until the process exits, "
        "and a loop that leaks them fast empties the port range. TCPFIX_REAP_CLOSE_WAIT=5s shuts "
        "down sockets left in CLOSE_WAIT longer than 5 s, so their ports come back (each is "
        "logged as a leak, naming the destination), and TCPFIX_RECONNECT_BACKOFF=10ms:2s spaces "
        "the reconnects that make them.",
        who, plural(h.sockets, "connection", "connections"), where,
        plural(static_cast<long>(h.unread), "byte", "bytes"));
    if (h.pid == 0) f.text += " Run tcpfix doctor as root to see which process it is.";
    f.cures = {"TCPFIX_REAP_CLOSE_WAIT=5s", "TCPFIX_RECONNECT_BACKOFF=10ms:2s"};
    out.push_back(std::move(f));
}

void syn_sent_finding(const Destination& d, const Settings& st, std::vector<Finding>& out) {
    int n = d.count(diag::kSynSent);
    if (n < kMinSynSentPileUp) return;
    Finding f;
    f.kind = "syn_sent";
    f.subject = d.text;
    f.incident = "003";
    f.severity = "warn";
    f.text = fmt::format(
        "{} to {} are waiting for the server's answer to their SYN (SYN_SENT). A SYN that is "
        "lost or dropped costs a retransmit timeout of 1 s, then 2 s, 4 s, ...",
        plural(n, "connection", "connections"), d.text);
    if (auto give_up = syn_give_up_s(st.syn_retries); give_up > 0)
        f.text += fmt::format(
            "; with tcp_syn_retries={} a connect to a host that never answers gives up only after "
            "about {} s",
            st.syn_retries, give_up);
    f.text +=
        ". A client with a short connect budget reports \"connection timed out\" although the "
        "server is fine (incident 003). TCPFIX_CONNECT_TIMEOUT=100ms with "
        "TCPFIX_CONNECT_RETRIES=3 abandons a handshake that has not completed in time and retries "
        "on a fresh socket and port, so a lost SYN costs milliseconds, not a second.";
    f.cures = {"TCPFIX_CONNECT_TIMEOUT=100ms", "TCPFIX_CONNECT_RETRIES=3"};
    out.push_back(std::move(f));
}

void accept_queue_finding(const FullListener& l, const Settings& st, std::vector<Finding>& out) {
    Finding f;
    f.kind = "accept_queue";
    f.subject = l.local;
    f.incident = "003";
    f.severity = "warn";
    f.text = fmt::format(
        "The listener {} has {} waiting to be accepted, more than its backlog of {}{}: the "
        "kernel drops further SYNs to it, and each client's connect waits a retransmit timeout "
        "(1 s, then 2 s, ...) — incident 003 seen from the server. The server should accept "
        "faster or listen with a larger backlog; clients can bound their wait with "
        "TCPFIX_CONNECT_TIMEOUT and TCPFIX_CONNECT_RETRIES.",
        l.local, plural(l.queued, "connection", "connections"), l.backlog,
        st.somaxconn >= 0 ? fmt::format(" (net.core.somaxconn={} caps every backlog)", st.somaxconn)
                          : "");
    f.cures = {"TCPFIX_CONNECT_TIMEOUT=100ms", "TCPFIX_CONNECT_RETRIES=3"};
    out.push_back(std::move(f));
}

void range_finding(const HostReport& r, const std::array<int, diag::kStateCount>& in_range,
                   std::vector<Finding>& out) {
    const auto& st = r.settings;
    if (st.usable_ports() == 0) return;
    double share = double(r.ports_in_use) / st.usable_ports();
    if (share < kRangeNearlyFull) return;
    unsigned top = 0;
    for (unsigned s = 1; s < diag::kStateCount; ++s)
        if (in_range[s] > in_range[top]) top = s;
    Finding f;
    f.kind = "port_range";
    f.subject = "net.ipv4.ip_local_port_range";
    f.severity = share >= 0.95 ? "critical" : "warn";
    f.text = fmt::format(
        "{} of the {} ports of ip_local_port_range ({}-{}{}) are in use ({}), most by sockets in "
        "{}. connect() can still reuse a port toward another destination, but a program that "
        "bind()s a source address before connect() needs a port free toward every destination "
        "and gets EADDRINUSE: TCPFIX_BIND_NO_PORT=1 lets the kernel choose the port at connect() "
        "time.",
        r.ports_in_use, st.usable_ports(), st.port_lo, st.port_hi,
        st.reserved_in_range > 0 ? fmt::format(", {} reserved", st.reserved_in_range) : "",
        percent(share), diag::state_name(top));
    if (top == diag::kTimeWait) {
        f.incident = "000";
        f.text += " The TIME_WAIT entries are the ones to remove: TCPFIX_CLOSE=rst (incident 000).";
        f.cures = {"TCPFIX_CLOSE=rst", "TCPFIX_BIND_NO_PORT=1"};
    } else if (top == diag::kCloseWait) {
        f.incident = "001";
        f.text +=
            " The CLOSE_WAIT sockets are leaked: TCPFIX_REAP_CLOSE_WAIT gives their ports back "
            "(incident 001).";
        f.cures = {"TCPFIX_REAP_CLOSE_WAIT=5s", "TCPFIX_BIND_NO_PORT=1"};
    } else {
        f.text += " If this use is legitimate, widen the range.";
        f.cures = {"TCPFIX_BIND_NO_PORT=1"};
    }
    out.push_back(std::move(f));
}

}  // namespace

Settings read_settings() {
    Settings s;
    auto range = read_longs("/proc/sys/net/ipv4/ip_local_port_range");
    if (range.size() == 2 && range[0] <= range[1]) {
        s.port_lo = static_cast<int>(range[0]);
        s.port_hi = static_cast<int>(range[1]);
        if (auto reserved = read_text("/proc/sys/net/ipv4/ip_local_reserved_ports"))
            s.reserved_in_range = reserved_inside(*reserved, s.port_lo, s.port_hi);
    }
    s.tw_reuse = static_cast<int>(read_long("/proc/sys/net/ipv4/tcp_tw_reuse"));
    s.timestamps = static_cast<int>(read_long("/proc/sys/net/ipv4/tcp_timestamps"));
    s.fin_timeout_s = static_cast<int>(read_long("/proc/sys/net/ipv4/tcp_fin_timeout"));
    s.max_tw_buckets = read_long("/proc/sys/net/ipv4/tcp_max_tw_buckets");
    s.syn_retries = static_cast<int>(read_long("/proc/sys/net/ipv4/tcp_syn_retries"));
    s.somaxconn = static_cast<int>(read_long("/proc/sys/net/core/somaxconn"));
    return s;
}

HostReport examine_host(const std::vector<policy::Endpoint>& targets) {
    HostReport r;
    r.settings = read_settings();
    const auto& st = r.settings;
    auto sockets = diag::dump_tcp();

    Listeners listeners;
    std::vector<std::uint32_t> inodes;
    std::vector<bool> port_used(65536, false);
    std::array<int, diag::kStateCount> in_range{};
    for (const auto& s : sockets) {
        ++r.total;
        if (s.state < diag::kStateCount) ++r.states[s.state];
        if (st.in_range(s.local.port) && !port_used[s.local.port]) {
            port_used[s.local.port] = true;
            ++r.ports_in_use;
        }
        if (st.in_range(s.local.port) && s.state < diag::kStateCount) ++in_range[s.state];
        if (s.state == diag::kListen) {
            listeners.add(s);
            // The accept queue is full once it holds more than the backlog.
            if (s.rqueue > s.wqueue)
                r.full_listeners.push_back({policy::to_string(s.local), s.rqueue, s.wqueue});
        } else if (s.inode != 0) {
            inodes.push_back(s.inode);
        }
    }
    // An empty list would ask for every socket's owner.
    auto owners =
        inodes.empty() ? decltype(diag::socket_owners(inodes)){} : diag::socket_owners(inodes);

    struct Pending {
        Destination d;
        std::set<std::string> sources;
        std::map<int, ProcessCount> owners;
    };
    std::map<std::string, Pending> dests;
    struct HolderKey {
        int pid;
        bool outbound;
        auto operator<=>(const HolderKey&) const = default;
    };
    std::map<HolderKey, std::pair<CloseWaitHolder, std::map<std::string, int>>> holders;

    for (const auto& s : sockets) {
        if (s.state == diag::kListen) continue;
        const diag::Owner* owner = nullptr;
        if (s.inode != 0) {
            auto it = owners.find(s.inode);
            if (it != owners.end())
                owner = &it->second;
            else
                r.owners_complete = false;
        }
        bool outbound = !listeners.accepted(s);
        // In CLOSE_WAIT the peer's FIN counts in the receive queue as one
        // sequence number until the program reads the end of the stream.
        std::uint64_t unread = s.state == diag::kCloseWait && s.rqueue > 0 ? s.rqueue - 1 : 0;
        if (s.state == diag::kCloseWait) {
            auto& [h, where] = holders[{owner ? owner->pid : 0, outbound}];
            h.pid = owner ? owner->pid : 0;
            h.command = owner ? owner->command : "";
            h.outbound = outbound;
            ++h.sockets;
            h.unread += unread;
            ++where[policy::to_string(s.remote)];
        }
        if (!outbound) {
            if (s.state == diag::kTimeWait) ++r.inbound_time_wait;
            continue;
        }
        if (s.remote.port == 0) continue;  // bound, never connected
        auto key = policy::to_string(s.remote);
        auto& p = dests[key];
        auto& d = p.d;
        if (d.total == 0) {
            d.endpoint = s.remote;
            d.text = key;
        }
        ++d.total;
        if (s.state < diag::kStateCount) ++d.states[s.state];
        p.sources.insert(policy::to_string(s.local.addr));
        if (st.in_range(s.local.port)) ++d.ports_in_range;
        d.close_wait_unread += unread;
        if (owner) {
            auto& pc = p.owners[owner->pid];
            pc.pid = owner->pid;
            pc.command = owner->command;
            ++pc.sockets;
        }
    }

    for (auto& [key, p] : dests) {
        finish_destination(p.d, p.sources, p.owners, st);
        r.destinations.push_back(std::move(p.d));
    }
    std::stable_sort(r.destinations.begin(), r.destinations.end(),
                     [](const auto& a, const auto& b) { return a.total > b.total; });
    for (const auto& t : targets) {
        auto it = std::find_if(r.destinations.begin(), r.destinations.end(),
                               [&](const auto& d) { return d.endpoint == t; });
        if (it != r.destinations.end()) {
            r.targets.push_back(*it);
            continue;
        }
        Destination d;
        d.endpoint = t;
        d.text = policy::to_string(t);
        finish_destination(d, {}, {}, st);
        r.targets.push_back(std::move(d));
    }
    for (auto& [key, hw] : holders) {
        auto& [h, where] = hw;
        for (const auto& [dest, n] : where) h.destinations.emplace_back(dest, n);
        std::stable_sort(h.destinations.begin(), h.destinations.end(),
                         [](const auto& a, const auto& b) { return a.second > b.second; });
        r.close_wait.push_back(std::move(h));
    }
    std::stable_sort(r.close_wait.begin(), r.close_wait.end(),
                     [](const auto& a, const auto& b) { return a.sockets > b.sockets; });

    for (const auto& d : r.destinations) time_wait_finding(d, st, r.findings);
    for (const auto& h : r.close_wait) close_wait_finding(h, r.destinations, r.findings);
    for (const auto& d : r.destinations) syn_sent_finding(d, st, r.findings);
    for (const auto& l : r.full_listeners) accept_queue_finding(l, st, r.findings);
    range_finding(r, in_range, r.findings);
    return r;
}

}  // namespace tcpfix::tools::doctor
