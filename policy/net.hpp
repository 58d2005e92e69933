// Addresses, endpoints and the destination matcher (TCPFIX_MATCH). Pure: no syscalls.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <sys/socket.h>

namespace tcpfix::policy {

// An IPv4 or IPv6 address. IPv4 is kept in the first four bytes; IPv4-mapped
// IPv6 addresses (::ffff:a.b.c.d) are normalised to IPv4 so one rule serves both.
struct IpAddr {
    int family = 0;  // AF_INET, AF_INET6, or 0 for "none"
    std::array<std::uint8_t, 16> bytes{};

    bool operator==(const IpAddr&) const = default;
};

// A destination: address and port in host byte order.
struct Endpoint {
    IpAddr addr;
    std::uint16_t port = 0;

    bool operator==(const Endpoint&) const = default;
};

// Parses a numeric IPv4 or IPv6 address (no brackets, no port); IPv4-mapped
// IPv6 becomes IPv4. Returns nullopt for anything else.
std::optional<IpAddr> parse_ip(std::string_view text);

// The endpoint in a sockaddr of family AF_INET or AF_INET6 (IPv4-mapped
// normalised), or nullopt for other families or a too-short length.
std::optional<Endpoint> endpoint_from_sockaddr(const sockaddr* sa, unsigned len);

// "127.0.0.1:3306", "[::1]:6379".
std::string to_string(const Endpoint& ep);
// Writes the address as text into buf (inet_ntop); no allocation.
void format_ip(const IpAddr& ip, char* buf, std::size_t size);
std::string to_string(const IpAddr& ip);

// One TCPFIX_MATCH item: an address prefix (or any address), and a port (or any).
struct MatchRule {
    IpAddr prefix;        // family 0: any address
    unsigned prefix_len = 0;
    std::uint16_t port = 0;  // 0: any port

    bool matches(const Endpoint& ep) const;
    bool operator==(const MatchRule&) const = default;
};

// The destinations that get the policies. Empty means "every TCP destination".
class Matcher {
public:
    Matcher() = default;
    explicit Matcher(std::vector<MatchRule> rules) : rules_(std::move(rules)) {}

    // True when the destination gets the policies.
    bool matches(const Endpoint& ep) const { return rules_.empty() || matches_a_rule(ep); }
    bool matches_everything() const { return rules_.empty(); }
    const std::vector<MatchRule>& rules() const { return rules_; }

private:
    bool matches_a_rule(const Endpoint& ep) const;

    std::vector<MatchRule> rules_;
};

// Parses "CIDR", "CIDR:PORT", ":PORT", "[IPv6-CIDR]:PORT", "[IPv6-CIDR]" or a
// bare IPv6 CIDR. Host bits set beyond the prefix are an error, and so is a
// bare IPv6 item that reads as an address plus a port ("::1:6379": write
// "[::1]:6379", or "::1:6379/128" if the address is meant).
std::optional<MatchRule> parse_match_rule(std::string_view item);

}  // namespace tcpfix::policy

// "127.0.0.1:3306" / "[::1]:6379" without allocating; family 0 prints "other".
template <>
struct fmt::formatter<tcpfix::policy::Endpoint> {
    constexpr auto parse(format_parse_context& ctx) { return ctx.begin(); }
    template <typename Ctx>
    auto format(const tcpfix::policy::Endpoint& ep, Ctx& ctx) const {
        char ip[46] = "other";
        tcpfix::policy::format_ip(ep.addr, ip, sizeof ip);
        if (ep.addr.family == 0) return fmt::format_to(ctx.out(), "other");
        if (ep.addr.family == AF_INET6) return fmt::format_to(ctx.out(), "[{}]:{}", ip, ep.port);  // AF_INET6
        return fmt::format_to(ctx.out(), "{}:{}", ip, ep.port);
    }
};
