// One line per event, prefixed "tcpfix[PID]", formatted into a stack buffer
// (no allocation) and written with a single write(2), behind a recursion guard.
#pragma once

#include <string_view>

#include <fmt/format.h>

#include "policy/config.hpp"
#include "policy/net.hpp"

namespace tcpfix::log {

// Opens TCPFIX_LOG_FILE (0600, O_APPEND, no symlink followed) unless `secure`.
void init(const policy::Config& config, bool secure);

bool enabled(policy::LogLevel level);

// Writes "tcpfix[PID] [tag=T ]LEVEL: msg\n".
void write_line(policy::LogLevel level, std::string_view msg);

// The application closed or replaced the log file's descriptor number.
void forget_fd(int fd);

template <typename... T>
void at(policy::LogLevel level, fmt::format_string<T...> f, T&&... args) {
    if (!enabled(level)) return;
    char buf[900];
    auto r = fmt::format_to_n(buf, sizeof buf, f, std::forward<T>(args)...);
    write_line(level, std::string_view(buf, r.size < sizeof buf ? r.size : sizeof buf));
}

// The refusal path before main: one line on stderr, exit status 2.
[[noreturn]] void refuse(std::string_view line);

}  // namespace tcpfix::log
