// One line per event, prefixed "tcpfix[PID]", formatted into a stack buffer
// (no allocation) and written with a single write(2), behind a recursion guard.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>

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

// "127.0.0.1:3306" / "[::1]:6379" without allocating.
template <>
struct fmt::formatter<tcpfix::policy::Endpoint> {
    constexpr auto parse(format_parse_context& ctx) { return ctx.begin(); }
    template <typename Ctx>
    auto format(const tcpfix::policy::Endpoint& ep, Ctx& ctx) const {
        char ip[INET6_ADDRSTRLEN] = "?";
        if (ep.addr.family == AF_INET || ep.addr.family == AF_INET6)
            inet_ntop(ep.addr.family, ep.addr.bytes.data(), ip, sizeof ip);
        if (ep.addr.family == AF_INET6) return fmt::format_to(ctx.out(), "[{}]:{}", ip, ep.port);
        return fmt::format_to(ctx.out(), "{}:{}", ip, ep.port);
    }
};
