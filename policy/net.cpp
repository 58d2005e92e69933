#include "policy/net.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <charconv>
#include <cstring>

#include <fmt/format.h>

namespace tcpfix::policy {
namespace {

constexpr std::array<std::uint8_t, 12> kMappedPrefix = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

IpAddr normalise_v6(const std::uint8_t* b) {
    IpAddr ip;
    if (std::memcmp(b, kMappedPrefix.data(), kMappedPrefix.size()) == 0) {
        ip.family = AF_INET;
        std::memcpy(ip.bytes.data(), b + 12, 4);
    } else {
        ip.family = AF_INET6;
        std::memcpy(ip.bytes.data(), b, 16);
    }
    return ip;
}

// Strict unsigned parse: digits only, whole string, within [lo, hi].
std::optional<unsigned> parse_bounded(std::string_view s, unsigned lo, unsigned hi) {
    if (s.empty() || s.size() > 5) return std::nullopt;
    unsigned v = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || ptr != s.data() + s.size() || v < lo || v > hi) return std::nullopt;
    return v;
}

bool prefix_equal(const IpAddr& a, const IpAddr& b, unsigned len) {
    unsigned full = len / 8, rest = len % 8;
    if (std::memcmp(a.bytes.data(), b.bytes.data(), full) != 0) return false;
    if (rest == 0) return true;
    std::uint8_t mask = static_cast<std::uint8_t>(0xff << (8 - rest));
    return (a.bytes[full] & mask) == (b.bytes[full] & mask);
}

bool host_bits_clear(const IpAddr& a, unsigned len, unsigned width) {
    for (unsigned bit = len; bit < width; ++bit)
        if (a.bytes[bit / 8] & (0x80 >> (bit % 8))) return false;
    return true;
}

std::optional<MatchRule> parse_cidr(std::string_view text, bool want_v6) {
    std::string_view addr = text;
    std::optional<unsigned> len;
    if (auto slash = text.find('/'); slash != std::string_view::npos) {
        addr = text.substr(0, slash);
        len = parse_bounded(text.substr(slash + 1), 0, want_v6 ? 128 : 32);
        if (!len) return std::nullopt;
    }
    auto ip = parse_ip(addr);
    if (!ip) return std::nullopt;
    // An IPv4-mapped literal normalises to IPv4; its prefix length counts in IPv6 bits.
    bool literal_v6 = addr.find(':') != std::string_view::npos;
    if (literal_v6 != want_v6) return std::nullopt;
    unsigned width = ip->family == AF_INET ? 32 : 128;
    unsigned plen = len.value_or(literal_v6 ? 128 : 32);
    if (literal_v6 && ip->family == AF_INET) {
        if (plen < 96) return std::nullopt;  // a mapped prefix wider than ::ffff:0:0/96 is not IPv4
        plen -= 96;
    }
    if (plen > width || !host_bits_clear(*ip, plen, width)) return std::nullopt;
    MatchRule r;
    r.prefix = *ip;
    r.prefix_len = plen;
    return r;
}

}  // namespace

std::optional<IpAddr> parse_ip(std::string_view text) {
    if (text.empty() || text.size() >= INET6_ADDRSTRLEN) return std::nullopt;
    char buf[INET6_ADDRSTRLEN];
    std::memcpy(buf, text.data(), text.size());
    buf[text.size()] = '\0';
    IpAddr ip;
    if (text.find(':') == std::string_view::npos) {
        if (inet_pton(AF_INET, buf, ip.bytes.data()) != 1) return std::nullopt;
        ip.family = AF_INET;
        return ip;
    }
    std::uint8_t b[16];
    if (inet_pton(AF_INET6, buf, b) != 1) return std::nullopt;
    return normalise_v6(b);
}

std::optional<Endpoint> endpoint_from_sockaddr(const sockaddr* sa, unsigned len) {
    if (sa == nullptr || len < sizeof(sa_family_t)) return std::nullopt;
    Endpoint ep;
    if (sa->sa_family == AF_INET && len >= sizeof(sockaddr_in)) {
        sockaddr_in in;
        std::memcpy(&in, sa, sizeof in);
        ep.addr.family = AF_INET;
        std::memcpy(ep.addr.bytes.data(), &in.sin_addr, 4);
        ep.port = ntohs(in.sin_port);
        return ep;
    }
    if (sa->sa_family == AF_INET6 && len >= sizeof(sockaddr_in6)) {
        sockaddr_in6 in6;
        std::memcpy(&in6, sa, sizeof in6);
        ep.addr = normalise_v6(in6.sin6_addr.s6_addr);
        ep.port = ntohs(in6.sin6_port);
        return ep;
    }
    return std::nullopt;
}

void format_ip(const IpAddr& ip, char* buf, std::size_t size) {
    if (ip.family == AF_INET || ip.family == AF_INET6)
        inet_ntop(ip.family, ip.bytes.data(), buf, static_cast<socklen_t>(size));
}

std::string to_string(const IpAddr& ip) {
    char buf[INET6_ADDRSTRLEN] = "?";
    if (ip.family == AF_INET || ip.family == AF_INET6)
        inet_ntop(ip.family, ip.bytes.data(), buf, sizeof buf);
    return buf;
}

std::string to_string(const Endpoint& ep) {
    if (ep.addr.family == AF_INET6) return fmt::format("[{}]:{}", to_string(ep.addr), ep.port);
    return fmt::format("{}:{}", to_string(ep.addr), ep.port);
}

bool MatchRule::matches(const Endpoint& ep) const {
    if (port != 0 && port != ep.port) return false;
    if (prefix.family == 0) return true;
    return prefix.family == ep.addr.family && prefix_equal(prefix, ep.addr, prefix_len);
}

bool Matcher::matches_a_rule(const Endpoint& ep) const {
    for (const auto& r : rules_)
        if (r.matches(ep)) return true;
    return false;
}

namespace {

// "::1:6379" and "2001:db8::1:443" are IPv6 addresses, but a user who writes
// them almost surely means a port: an unbracketed IPv6 item without a prefix
// length whose last group is decimal and whose rest is itself an address is refused.
bool ambiguous_v6_port(std::string_view item) {
    if (item.find('/') != std::string_view::npos) return false;
    auto last = item.rfind(':');
    auto tail = item.substr(last + 1);
    if (tail.empty() || tail.find_first_not_of("0123456789") != std::string_view::npos)
        return false;
    auto head = item.substr(0, last);
    return head.find(':') != std::string_view::npos && parse_ip(head).has_value();
}

}  // namespace

std::optional<MatchRule> parse_match_rule(std::string_view item) {
    if (item.empty()) return std::nullopt;
    auto colons = std::count(item.begin(), item.end(), ':');
    if (item.front() == ':' && colons == 1) {  // ":6379"; "::1" is a bare IPv6 address
        auto port = parse_bounded(item.substr(1), 1, 65535);
        if (!port) return std::nullopt;
        MatchRule r;
        r.port = static_cast<std::uint16_t>(*port);
        return r;
    }
    if (item.front() == '[') {
        auto close = item.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        auto rule = parse_cidr(item.substr(1, close - 1), true);
        if (!rule) return std::nullopt;
        auto rest = item.substr(close + 1);
        if (rest.empty()) return rule;
        if (rest.front() != ':') return std::nullopt;
        auto port = parse_bounded(rest.substr(1), 1, 65535);
        if (!port) return std::nullopt;
        rule->port = static_cast<std::uint16_t>(*port);
        return rule;
    }
    if (colons > 1) {  // bare IPv6 CIDR, no port
        if (ambiguous_v6_port(item)) return std::nullopt;
        return parse_cidr(item, true);
    }
    if (colons == 0) return parse_cidr(item, false);
    auto colon = item.find(':');
    auto rule = parse_cidr(item.substr(0, colon), false);
    auto port = parse_bounded(item.substr(colon + 1), 1, 65535);
    if (!rule || !port) return std::nullopt;
    rule->port = static_cast<std::uint16_t>(*port);
    return rule;
}

}  // namespace tcpfix::policy
