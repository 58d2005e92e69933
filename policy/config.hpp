// The configuration surface of SPEC.md: every TCPFIX_* variable, parsed strictly.
// Pure: name/value pairs go in, a Config or a one-line error comes out. The
// same table drives the library, `tcpfix run`'s options and the manuals.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "policy/net.hpp"

namespace tcpfix::policy {

enum class CloseMode : std::uint8_t { Keep, Rst, RstAlways };
enum class LogLevel : std::uint8_t { Off, Error, Warn, Info, Debug };

struct PortRange {
    std::uint16_t lo = 0, hi = 0;
    bool operator==(const PortRange&) const = default;
};

struct Backoff {
    std::int64_t min_ns = 0, max_ns = 0;
    bool operator==(const Backoff&) const = default;
};

struct Config {
    bool disabled = false;  // TCPFIX_DISABLE=1: pure pass-through
    CloseMode close = CloseMode::Keep;
    std::optional<std::int64_t> connect_timeout_ns;
    unsigned connect_retries = 0;
    bool bind_no_port = false;
    std::vector<IpAddr> source_addrs;
    std::optional<PortRange> port_range;
    std::optional<Backoff> reconnect_backoff;
    std::optional<double> connect_rate_per_s;
    std::optional<std::int64_t> reap_close_wait_ns;
    Matcher match;
    LogLevel log = LogLevel::Warn;
    std::string log_file;
    std::string stats_path;
    std::string tag;
    std::string share;  // TCPFIX_SHARE: the name of the share, or empty
    // Every TCPFIX_* variable that was set, as given, in table order.
    std::vector<std::pair<std::string, std::string>> given;

    // True when the library has anything to do: some variable set, not disabled.
    bool active() const { return !disabled && !given.empty(); }
};

// One variable of the surface. `cli` is its `tcpfix run` option; a flag
// variable (0/1) becomes an option without a value that sets it to 1.
struct VariableInfo {
    std::string_view name;
    std::string_view cli;
    std::string_view expected;  // completes "expected ..."
    std::string_view example;
    std::string_view summary;
    bool flag;
};

// Every variable, in the order SPEC.md lists them.
std::span<const VariableInfo> variables();
const VariableInfo* find_variable(std::string_view name);

// The SPEC's one-line refusal, without a trailing newline:
// tcpfix: NAME="value": expected ...
std::string refusal(std::string_view name, std::string_view value, std::string_view expected);

// Checks one variable's value; returns the refusal line, or nullopt when it
// parses. Unknown names are refused with the closest known name suggested.
std::optional<std::string> check_variable(std::string_view name, std::string_view value);

// Parses every TCPFIX_* pair (other names are ignored). An empty value counts
// as unset. Returns the first refusal in table order, so the message is stable.
std::variant<Config, std::string> parse_config(
    std::span<const std::pair<std::string_view, std::string_view>> vars);

// Duration grammar shared by the library and the CLI: a decimal number and a
// unit (ns, us, ms, s), e.g. 250ms, 2s, 1.5s, 500us; strictly positive.
std::optional<std::int64_t> parse_duration_ns(std::string_view text);

// "N/s" or "N/min" with N > 0; returns connects per second.
std::optional<double> parse_rate_per_s(std::string_view text);

// "1.5 s", "250 ms", "40 us" for humans.
std::string format_duration(std::int64_t ns);

std::string_view to_string(CloseMode mode);
std::string_view to_string(LogLevel level);

}  // namespace tcpfix::policy
