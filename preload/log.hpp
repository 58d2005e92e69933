// One line per event, prefixed "tcpfix[PID]", formatted into a stack buffer
// (no allocation) and written with a single write(2), behind a recursion guard.
#pragma once

#include <atomic>
#include <string_view>

#include <fmt/format.h>

#include "policy/config.hpp"
#include "policy/net.hpp"

namespace tcpfix::log {

// Opens TCPFIX_LOG_FILE (0600, O_APPEND, no symlink followed) unless `secure`.
void init(const policy::Config& config, bool secure);

namespace detail {
extern std::atomic<int> g_level;
}

inline bool enabled(policy::LogLevel level) {
    return static_cast<int>(level) <= detail::g_level.load(std::memory_order_relaxed) &&
           level != policy::LogLevel::Off;
}

// Writes "tcpfix[PID] [tag=T ]LEVEL: msg\n".
void write_line(policy::LogLevel level, std::string_view msg);

// The application closed or replaced the log file's descriptor number.
void forget_fd(int fd);

template <typename... T>
__attribute__((noinline, cold)) void format_and_write(policy::LogLevel level, fmt::format_string<T...> f,
                                                      T&&... args) {
    char buf[900];
    auto r = fmt::format_to_n(buf, sizeof buf, f, std::forward<T>(args)...);
    write_line(level, std::string_view(buf, r.size < sizeof buf ? r.size : sizeof buf));
}

// The level check is inline: a line below the level costs two loads.
template <typename... T>
__attribute__((always_inline)) inline void at(policy::LogLevel level, fmt::format_string<T...> f, T&&... args) {
    if (__builtin_expect(enabled(level), 0)) format_and_write<T...>(level, f, std::forward<T>(args)...);
}

// The refusal path before main: one line on stderr, exit status 2.
[[noreturn]] void refuse(std::string_view line);

}  // namespace tcpfix::log
