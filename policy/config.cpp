#include "policy/config.hpp"

#include <fmt/format.h>
#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>

#include "policy/share.hpp"

namespace tcpfix::policy {
namespace {

constexpr std::int64_t kMaxDurationNs = 3600LL * 1000 * 1000 * 1000;  // one hour
constexpr std::size_t kMaxTagLength = 64;

constexpr std::array<VariableInfo, 16> kVariables = {{
    {"TCPFIX_CLOSE", "close", "keep, rst or rst-always", "rst",
     "a matched connection ended by close(), dup2() or exit ends with RST instead of leaving TIME_WAIT "
     "(incident 000)",
     false},
    {"TCPFIX_CONNECT_TIMEOUT", "connect-timeout", "a duration such as 250ms or 2s", "100ms",
     "a matched connect() not completed within this time fails with ETIMEDOUT (incident 003)",
     false},
    {"TCPFIX_CONNECT_RETRIES", "connect-retries", "a whole number from 0 to 10", "3",
     "retries after a timed-out connect, each on a fresh socket and source port (incident 003)",
     false},
    {"TCPFIX_BIND_NO_PORT", "bind-no-port", "0 or 1", "1",
     "IP_BIND_ADDRESS_NO_PORT before the application's bind() to port 0 (incident 002)", true},
    {"TCPFIX_SOURCE_ADDRS", "source-addrs",
     "a comma-separated list of IP addresses such as 127.0.0.2,127.0.0.3", "127.0.0.2,127.0.0.3",
     "spread matched connects over these local source addresses (incident 002)", false},
    {"TCPFIX_PORT_RANGE", "port-range", "LO-HI with 1 <= LO <= HI <= 65535, such as 40000-49999",
     "40000-49999", "per-socket ephemeral port range, IP_LOCAL_PORT_RANGE (incident 002)", false},
    {"TCPFIX_RECONNECT_BACKOFF", "reconnect-backoff",
     "MIN:MAX durations with MIN <= MAX, such as 10ms:2s", "10ms:2s",
     "after a failed connect to a destination, later connects wait, doubling (incident 001)",
     false},
    {"TCPFIX_CONNECT_RATE", "connect-rate", "a positive rate such as 100/s or 30/min", "100/s",
     "at most this many new connects to one destination; the excess waits (incident 001)", false},
    {"TCPFIX_REAP_CLOSE_WAIT", "reap-close-wait", "a duration such as 5s", "5s",
     "shut down sockets left in CLOSE_WAIT this long, freeing their ports (incident 001)", false},
    {"TCPFIX_MATCH", "match",
     "a comma-separated list of CIDR, CIDR:PORT, :PORT or [IPv6-CIDR]:PORT, such as "
     "10.0.0.0/8:3306,[::1]:6379",
     "127.0.0.1:6379", "only connections to these destinations get the policies", false},
    {"TCPFIX_LOG", "log", "off, error, warn, info or debug", "info",
     "what the library writes, one line per event", false},
    {"TCPFIX_LOG_FILE", "log-file", "a file path", "/tmp/tcpfix.log", "log there instead of stderr",
     false},
    {"TCPFIX_STATS", "stats", "a file path (%p becomes the PID)", "/tmp/tcpfix-%p.json",
     "the process's counters as JSON, atomically at exit and refreshed while it runs", false},
    {"TCPFIX_TAG", "tag", "a label of 1 to 64 printable characters without spaces or quotes",
     "arm-b", "carried in every log line and in the stats", false},
    {"TCPFIX_DISABLE", "disable", "0 or 1", "1", "pure pass-through (the control arm)", true},
    {"TCPFIX_SHARE", "share",
     "a name of 1 to 64 letters, digits, '.', '_' or '-', such as php-pool", "php-pool",
     "processes of this user naming the same share pace and back off together; `tcpfix top NAME` "
     "shows it",
     false},
}};

std::optional<unsigned> parse_uint(std::string_view s, unsigned lo, unsigned hi) {
    if (s.empty() || s.size() > 10) return std::nullopt;
    unsigned v = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || ptr != s.data() + s.size() || v < lo || v > hi) return std::nullopt;
    return v;
}

std::optional<bool> parse_bool01(std::string_view s) {
    if (s == "0") return false;
    if (s == "1") return true;
    return std::nullopt;
}

// Splits on ',' and refuses empty items ("a,,b", "a,").
std::optional<std::vector<std::string_view>> split_list(std::string_view s) {
    std::vector<std::string_view> out;
    while (true) {
        auto comma = s.find(',');
        auto item = s.substr(0, comma);
        if (item.empty()) return std::nullopt;
        out.push_back(item);
        if (comma == std::string_view::npos) return out;
        s.remove_prefix(comma + 1);
    }
}

// A decimal number "123" or "1.25" as an exact fraction num/10^scale.
struct Decimal {
    std::uint64_t num = 0;
    unsigned scale = 0;
};

std::optional<Decimal> parse_decimal(std::string_view s) {
    Decimal d;
    bool digits = false, dot = false;
    for (char c : s) {
        if (c == '.' && !dot) {
            dot = true;
            continue;
        }
        if (c < '0' || c > '9') return std::nullopt;
        if (d.num > 100'000'000'000'000ULL) return std::nullopt;  // far beyond any range we take
        d.num = d.num * 10 + static_cast<unsigned>(c - '0');
        digits = true;
        if (dot) ++d.scale;
    }
    if (!digits || (dot && d.scale == 0) || s.front() == '.') return std::nullopt;
    return d;
}

using Setter = bool (*)(Config&, std::string_view);

bool set_close(Config& c, std::string_view v) {
    if (v == "keep") c.close = CloseMode::Keep;
    else if (v == "rst") c.close = CloseMode::Rst;
    else if (v == "rst-always") c.close = CloseMode::RstAlways;
    else return false;
    return true;
}

bool set_connect_timeout(Config& c, std::string_view v) {
    c.connect_timeout_ns = parse_duration_ns(v);
    return c.connect_timeout_ns.has_value();
}

bool set_connect_retries(Config& c, std::string_view v) {
    auto n = parse_uint(v, 0, 10);
    if (n) c.connect_retries = *n;
    return n.has_value();
}

bool set_bind_no_port(Config& c, std::string_view v) {
    auto b = parse_bool01(v);
    if (b) c.bind_no_port = *b;
    return b.has_value();
}

bool set_source_addrs(Config& c, std::string_view v) {
    auto items = split_list(v);
    if (!items) return false;
    for (auto item : *items) {
        auto ip = parse_ip(item);
        if (!ip) return false;
        if (std::find(c.source_addrs.begin(), c.source_addrs.end(), *ip) != c.source_addrs.end())
            return false;  // a duplicate would silently skew the spread
        c.source_addrs.push_back(*ip);
    }
    return true;
}

bool set_port_range(Config& c, std::string_view v) {
    auto dash = v.find('-');
    if (dash == std::string_view::npos) return false;
    auto lo = parse_uint(v.substr(0, dash), 1, 65535);
    auto hi = parse_uint(v.substr(dash + 1), 1, 65535);
    if (!lo || !hi || *lo > *hi) return false;
    c.port_range = PortRange{static_cast<std::uint16_t>(*lo), static_cast<std::uint16_t>(*hi)};
    return true;
}

bool set_reconnect_backoff(Config& c, std::string_view v) {
    auto colon = v.find(':');
    if (colon == std::string_view::npos) return false;
    auto lo = parse_duration_ns(v.substr(0, colon));
    auto hi = parse_duration_ns(v.substr(colon + 1));
    if (!lo || !hi || *lo > *hi) return false;
    c.reconnect_backoff = Backoff{*lo, *hi};
    return true;
}

bool set_connect_rate(Config& c, std::string_view v) {
    c.connect_rate_per_s = parse_rate_per_s(v);
    return c.connect_rate_per_s.has_value();
}

bool set_reap_close_wait(Config& c, std::string_view v) {
    c.reap_close_wait_ns = parse_duration_ns(v);
    return c.reap_close_wait_ns.has_value();
}

bool set_match(Config& c, std::string_view v) {
    auto items = split_list(v);
    if (!items) return false;
    std::vector<MatchRule> rules;
    for (auto item : *items) {
        auto rule = parse_match_rule(item);
        if (!rule) return false;
        rules.push_back(*rule);
    }
    c.match = Matcher(std::move(rules));
    return true;
}

bool set_log(Config& c, std::string_view v) {
    static constexpr std::array<std::pair<std::string_view, LogLevel>, 5> kLevels = {{
        {"off", LogLevel::Off},
        {"error", LogLevel::Error},
        {"warn", LogLevel::Warn},
        {"info", LogLevel::Info},
        {"debug", LogLevel::Debug},
    }};
    for (auto [name, level] : kLevels) {
        if (v == name) {
            c.log = level;
            return true;
        }
    }
    return false;
}

bool printable_path(std::string_view v) {
    return std::all_of(v.begin(), v.end(), [](char ch) { return ch >= 0x20 && ch != 0x7f; });
}

bool set_log_file(Config& c, std::string_view v) {
    if (!printable_path(v) || v.back() == '/') return false;  // a directory is not a file
    c.log_file = std::string(v);
    return true;
}

bool set_stats(Config& c, std::string_view v) {
    if (!printable_path(v) || v.back() == '/') return false;
    c.stats_path = std::string(v);
    return true;
}

bool set_tag(Config& c, std::string_view v) {
    if (v.size() > kMaxTagLength) return false;
    bool ok = std::all_of(v.begin(), v.end(), [](char ch) {
        return ch > 0x20 && ch < 0x7f && ch != '"' && ch != '\'' && ch != '\\';
    });
    if (ok) c.tag = std::string(v);
    return ok;
}

bool set_disable(Config& c, std::string_view v) {
    auto b = parse_bool01(v);
    if (b) c.disabled = *b;
    return b.has_value();
}

// Letters, digits, '.', '_', '-': the name becomes part of a file name in /dev/shm.
bool set_share(Config& c, std::string_view v) {
    if (!share::valid_name(v)) return false;
    c.share = std::string(v);
    return true;
}

constexpr std::array<Setter, kVariables.size()> kSetters = {
    set_close,
    set_connect_timeout,
    set_connect_retries,
    set_bind_no_port,
    set_source_addrs,
    set_port_range,
    set_reconnect_backoff,
    set_connect_rate,
    set_reap_close_wait,
    set_match,
    set_log,
    set_log_file,
    set_stats,
    set_tag,
    set_disable,
    set_share,
};

std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diag = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            std::size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
            diag = up;
        }
    }
    return row[b.size()];
}

// ASCII control characters (a newline included) shown as '?'; bytes from
// 0x80 up kept, so a UTF-8 path reads as the user typed it.
std::string one_line(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (char ch : text) {
        auto byte = static_cast<unsigned char>(ch);
        out += (byte >= 0x20 && byte != 0x7f) ? ch : '?';
    }
    return out;
}

// "tcpfix: NAME="value": TEXT", kept on one line whatever the name or the
// value holds (execve() lets a name carry a newline: "TCPFIX_CLOSE\nX=rst").
std::string refusal_line(std::string_view name, std::string_view value, std::string_view text) {
    return fmt::format("tcpfix: {}=\"{}\": {}", one_line(name), one_line(value), text);
}

std::string unknown_refusal(std::string_view name, std::string_view value) {
    const VariableInfo* best = nullptr;
    std::size_t best_distance = 4;  // suggest only near misses
    constexpr std::size_t kPrefix = std::string_view("TCPFIX_").size();
    for (const auto& v : kVariables) {
        auto d = edit_distance(name, v.name);
        // Retyping a whole short suffix ("TCPFIX_" -> TCPFIX_LOG) is no near miss.
        if (d < best_distance && d < v.name.size() - kPrefix) {
            best = &v;
            best_distance = d;
        }
    }
    if (best != nullptr)
        return refusal_line(name, value,
                            fmt::format("no such variable; did you mean {}?", best->name));
    return refusal_line(name, value, "no such variable; the README lists every TCPFIX_ variable");
}

}  // namespace

std::span<const VariableInfo> variables() { return kVariables; }

const VariableInfo* find_variable(std::string_view name) {
    for (const auto& v : kVariables)
        if (v.name == name) return &v;
    return nullptr;
}

std::string refusal(std::string_view name, std::string_view value, std::string_view expected) {
    return refusal_line(name, value, fmt::format("expected {}", expected));
}

std::optional<std::string> check_variable(std::string_view name, std::string_view value) {
    const VariableInfo* info = find_variable(name);
    if (info == nullptr) return unknown_refusal(name, value);
    if (value.empty()) return std::nullopt;
    Config scratch;
    if (kSetters[static_cast<std::size_t>(info - kVariables.data())](scratch, value))
        return std::nullopt;
    return refusal(name, value, info->expected);
}

std::variant<Config, std::string> parse_config(
    std::span<const std::pair<std::string_view, std::string_view>> vars) {
    Config config;
    // Unknown names first: a typo must not hide behind another variable's error.
    for (auto [name, value] : vars) {
        if (name.rfind("TCPFIX_", 0) != 0) continue;
        if (find_variable(name) == nullptr) return unknown_refusal(name, value);
    }
    for (std::size_t i = 0; i < kVariables.size(); ++i) {
        for (auto [name, value] : vars) {
            if (name != kVariables[i].name || value.empty()) continue;
            if (!kSetters[i](config, value)) return refusal(name, value, kVariables[i].expected);
            config.given.emplace_back(name, value);
        }
    }
    return config;
}

std::optional<std::int64_t> parse_duration_ns(std::string_view text) {
    static constexpr std::array<std::pair<std::string_view, std::int64_t>, 4> kUnits = {{
        {"ns", 1}, {"us", 1000}, {"ms", 1000 * 1000}, {"s", 1000 * 1000 * 1000}}};
    for (auto [unit, factor] : kUnits) {
        if (text.size() <= unit.size() || text.substr(text.size() - unit.size()) != unit) continue;
        auto number = text.substr(0, text.size() - unit.size());
        if (number.back() < '0' || number.back() > '9') continue;  // "1ms" is not "1m" + "s"
        auto d = parse_decimal(number);
        if (!d) return std::nullopt;
        // value = num * factor / 10^scale, exact when it is a whole number of ns.
        long double ns = static_cast<long double>(d->num) * factor;
        for (unsigned i = 0; i < d->scale; ++i) ns /= 10;
        if (ns < 1 || ns > kMaxDurationNs || ns != std::floor(ns)) return std::nullopt;
        return static_cast<std::int64_t>(ns);
    }
    return std::nullopt;
}

std::optional<double> parse_rate_per_s(std::string_view text) {
    auto slash = text.find('/');
    if (slash == std::string_view::npos) return std::nullopt;
    auto unit = text.substr(slash + 1);
    double per;
    if (unit == "s") per = 1;
    else if (unit == "min") per = 60;
    else return std::nullopt;
    auto d = parse_decimal(text.substr(0, slash));
    if (!d || d->num == 0) return std::nullopt;
    double divisor = 1;  // 10^scale, exact for every scale a value can have
    for (unsigned i = 0; i < d->scale; ++i) divisor *= 10;
    double n = static_cast<double>(d->num) / divisor;
    double rate = n / per;
    if (rate > 10'000'000) return std::nullopt;
    return rate;
}

std::string format_duration(std::int64_t ns) {
    if (ns >= 1'000'000'000) return fmt::format("{:g} s", static_cast<double>(ns) / 1e9);
    if (ns >= 1'000'000) return fmt::format("{:g} ms", static_cast<double>(ns) / 1e6);
    if (ns >= 1'000) return fmt::format("{:g} us", static_cast<double>(ns) / 1e3);
    return fmt::format("{} ns", ns);
}

std::string_view to_string(CloseMode mode) {
    switch (mode) {
        case CloseMode::Keep: return "keep";
        case CloseMode::Rst: return "rst";
        case CloseMode::RstAlways: return "rst-always";
    }
    return "?";
}

std::string_view to_string(LogLevel level) {
    switch (level) {
        case LogLevel::Off: return "off";
        case LogLevel::Error: return "error";
        case LogLevel::Warn: return "warn";
        case LogLevel::Info: return "info";
        case LogLevel::Debug: return "debug";
    }
    return "?";
}

}  // namespace tcpfix::policy
