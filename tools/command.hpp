// The subcommands of `tcpfix` and the option helpers they share.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace tcpfix::tools {

// Exit statuses shared by every subcommand (probe gives 1 and 2 its own meaning).
inline constexpr int kExitUsage = 2;
inline constexpr int kExitFailure = 3;

// A value the user gave that cannot be used; main prints "tcpfix: what()".
class UsageError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// One registered subcommand: its parser, what to run once it parsed, and the
// exit status of a usage error (probe keeps 2 for "timed out").
struct Command {
    CLI::App* app = nullptr;
    std::function<int()> action;
    int usage_status = kExitUsage;
};

Command add_run(CLI::App& parent);
Command add_probe(CLI::App& parent);
Command add_churn(CLI::App& parent);
Command add_attach(CLI::App& parent);

// --NAME DURATION in the library's grammar (250ms, 2s, 500us; at most 1 h),
// stored in nanoseconds. `fallback` is shown in --help as the default.
CLI::Option* add_duration(CLI::App& app, const std::string& name, std::int64_t& ns,
                          const std::string& description, std::string_view fallback);

// A rate for churn: "N/s", "N/min", a bare N (per second), or 0 for "as fast
// as possible" (returned as 0). nullopt when it does not parse.
std::optional<double> parse_churn_rate(std::string_view text);

// C escapes in a request text: \r \n \t \0 \\ \xHH. nullopt on a bad escape.
std::optional<std::string> unescape(std::string_view text);

}  // namespace tcpfix::tools
