// Addresses, endpoints and TCPFIX_MATCH: parsing rules and matching real
// sockaddrs, IPv4-mapped destinations (dual-stack clients) included.
#include "policy/net.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <variant>

#include "policy/config.hpp"
#include "test_util.hpp"

namespace tcpfix::policy {
namespace {

using test::row_name;
using test::Vars;

IpAddr v4_addr(std::uint8_t a, std::uint8_t b, std::uint8_t c, std::uint8_t d) {
    IpAddr ip;
    ip.family = AF_INET;
    ip.bytes[0] = a;
    ip.bytes[1] = b;
    ip.bytes[2] = c;
    ip.bytes[3] = d;
    return ip;
}

IpAddr v6_addr(const char* text) {
    IpAddr ip;
    ip.family = AF_INET6;
    EXPECT_EQ(inet_pton(AF_INET6, text, ip.bytes.data()), 1) << text;
    return ip;
}

sockaddr_in sin_of(const char* addr, std::uint16_t port) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    EXPECT_EQ(inet_pton(AF_INET, addr, &sa.sin_addr), 1) << addr;
    return sa;
}

sockaddr_in6 sin6_of(const char* addr, std::uint16_t port) {
    sockaddr_in6 sa{};
    sa.sin6_family = AF_INET6;
    sa.sin6_port = htons(port);
    EXPECT_EQ(inet_pton(AF_INET6, addr, &sa.sin6_addr), 1) << addr;
    return sa;
}

// The destination the connect() hook would see for this address: AF_INET
// for dotted quads, AF_INET6 (mapped or not) for anything with a colon.
Endpoint dest(const char* addr, std::uint16_t port) {
    std::optional<Endpoint> ep;
    if (std::strchr(addr, ':') == nullptr) {
        auto sa = sin_of(addr, port);
        ep = endpoint_from_sockaddr(reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
    } else {
        auto sa = sin6_of(addr, port);
        ep = endpoint_from_sockaddr(reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
    }
    EXPECT_TRUE(ep.has_value()) << addr;
    return ep.value_or(Endpoint{});
}

// ---------------------------------------------------------------------------
// parse_ip

struct IpCase {
    std::string text;
    std::optional<IpAddr> ip;
};

void PrintTo(const IpCase& c, std::ostream* os) {
    *os << '"' << c.text << '"';
}

class ParseIp : public ::testing::TestWithParam<IpCase> {};

TEST_P(ParseIp, Parses) {
    auto got = parse_ip(GetParam().text);
    ASSERT_EQ(got.has_value(), GetParam().ip.has_value());
    if (got) {
        EXPECT_EQ(got->family, GetParam().ip->family);
        EXPECT_EQ(got->bytes, GetParam().ip->bytes);
    }
}

INSTANTIATE_TEST_SUITE_P(
    Table, ParseIp,
    ::testing::Values(IpCase{"127.0.0.1", v4_addr(127, 0, 0, 1)},
                      IpCase{"0.0.0.0", v4_addr(0, 0, 0, 0)},
                      IpCase{"255.255.255.255", v4_addr(255, 255, 255, 255)},
                      IpCase{"::1", v6_addr("::1")}, IpCase{"2001:db8::1", v6_addr("2001:db8::1")},
                      IpCase{"::ffff:127.0.0.1", v4_addr(127, 0, 0, 1)},
                      IpCase{"::ffff:7f00:1", v4_addr(127, 0, 0, 1)},
                      IpCase{"::ffff:10.1.2.3", v4_addr(10, 1, 2, 3)},
                      IpCase{"::127.0.0.1", v6_addr("::127.0.0.1")},  // compat, not mapped
                      IpCase{"", std::nullopt}, IpCase{"1.2.3", std::nullopt},
                      IpCase{"1.2.3.4.5", std::nullopt}, IpCase{"256.1.1.1", std::nullopt},
                      IpCase{" 1.2.3.4", std::nullopt}, IpCase{"1.2.3.4 ", std::nullopt},
                      IpCase{"1.2.3.4/32", std::nullopt}, IpCase{"[::1]", std::nullopt},
                      IpCase{"::1%lo", std::nullopt}, IpCase{"::g", std::nullopt},
                      IpCase{"localhost", std::nullopt},
                      IpCase{"1111:2222:3333:4444:5555:6666:7777:8888:9999", std::nullopt},
                      IpCase{std::string(60, '1'), std::nullopt}),
    [](const auto& info) { return row_name(info.index, info.param.text); });

// ---------------------------------------------------------------------------
// endpoint_from_sockaddr

TEST(EndpointFromSockaddr, Ipv4) {
    auto sa = sin_of("10.1.2.3", 3306);
    auto ep = endpoint_from_sockaddr(reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
    ASSERT_TRUE(ep.has_value());
    EXPECT_EQ(ep->addr, v4_addr(10, 1, 2, 3));
    EXPECT_EQ(ep->port, 3306);
    EXPECT_EQ(to_string(*ep), "10.1.2.3:3306");
}

TEST(EndpointFromSockaddr, Ipv6) {
    auto sa = sin6_of("::1", 6379);
    auto ep = endpoint_from_sockaddr(reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
    ASSERT_TRUE(ep.has_value());
    EXPECT_EQ(ep->addr, v6_addr("::1"));
    EXPECT_EQ(ep->port, 6379);
    EXPECT_EQ(to_string(*ep), "[::1]:6379");
}

TEST(EndpointFromSockaddr, Ipv4MappedBecomesIpv4) {
    auto sa = sin6_of("::ffff:127.0.0.1", 6379);
    auto ep = endpoint_from_sockaddr(reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
    ASSERT_TRUE(ep.has_value());
    EXPECT_EQ(ep->addr.family, AF_INET);
    EXPECT_EQ(ep->addr, v4_addr(127, 0, 0, 1));
    EXPECT_EQ(ep->port, 6379);
    EXPECT_EQ(to_string(*ep), "127.0.0.1:6379");
    // The same destination reached through AF_INET compares equal.
    EXPECT_EQ(*ep, dest("127.0.0.1", 6379));
}

TEST(EndpointFromSockaddr, RefusesOtherFamiliesAndShortLengths) {
    auto sa4 = sin_of("10.1.2.3", 80);
    auto sa6 = sin6_of("::1", 80);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::strcpy(un.sun_path, "/tmp/sock");
    sockaddr_in6 mislabelled = sin6_of("::1", 80);
    mislabelled.sin6_family = AF_INET;  // AF_INET in a larger buffer still reads as IPv4

    const auto* p4 = reinterpret_cast<const sockaddr*>(&sa4);
    const auto* p6 = reinterpret_cast<const sockaddr*>(&sa6);
    EXPECT_FALSE(endpoint_from_sockaddr(nullptr, sizeof sa4).has_value());
    EXPECT_FALSE(endpoint_from_sockaddr(p4, 0).has_value());
    EXPECT_FALSE(endpoint_from_sockaddr(p4, 1).has_value());
    EXPECT_FALSE(endpoint_from_sockaddr(p4, sizeof sa4 - 1).has_value());
    EXPECT_FALSE(endpoint_from_sockaddr(p6, sizeof sa4).has_value());
    EXPECT_FALSE(endpoint_from_sockaddr(p6, sizeof sa6 - 1).has_value());
    EXPECT_FALSE(
        endpoint_from_sockaddr(reinterpret_cast<const sockaddr*>(&un), sizeof un).has_value());
    EXPECT_TRUE(endpoint_from_sockaddr(p4, sizeof sa4).has_value());
    EXPECT_TRUE(endpoint_from_sockaddr(p6, sizeof sa6).has_value());
    EXPECT_TRUE(
        endpoint_from_sockaddr(reinterpret_cast<const sockaddr*>(&mislabelled), sizeof mislabelled)
            .has_value());
}

TEST(IpAddrToString, PrintsBothFamilies) {
    EXPECT_EQ(to_string(v4_addr(10, 0, 0, 1)), "10.0.0.1");
    EXPECT_EQ(to_string(v6_addr("2001:db8::1")), "2001:db8::1");
    EXPECT_EQ(to_string(IpAddr{}), "?");
}

// ---------------------------------------------------------------------------
// parse_match_rule: the rule each accepted form turns into.

struct RuleCase {
    std::string text;
    std::optional<MatchRule> rule;
};

void PrintTo(const RuleCase& c, std::ostream* os) {
    *os << '"' << c.text << '"';
}

MatchRule rule(IpAddr prefix, unsigned len, std::uint16_t port) {
    MatchRule r;
    r.prefix = prefix;
    r.prefix_len = len;
    r.port = port;
    return r;
}

MatchRule any_address(std::uint16_t port) {
    return rule(IpAddr{}, 0, port);
}

class ParseMatchRule : public ::testing::TestWithParam<RuleCase> {};

TEST_P(ParseMatchRule, Parses) {
    auto got = parse_match_rule(GetParam().text);
    ASSERT_EQ(got.has_value(), GetParam().rule.has_value());
    if (got) {
        const MatchRule& want = *GetParam().rule;
        EXPECT_EQ(got->prefix.family, want.prefix.family);
        EXPECT_EQ(to_string(got->prefix), to_string(want.prefix));
        EXPECT_EQ(got->prefix_len, want.prefix_len);
        EXPECT_EQ(got->port, want.port);
        EXPECT_TRUE(*got == want);
    }
}

INSTANTIATE_TEST_SUITE_P(
    Table, ParseMatchRule,
    ::testing::Values(
        RuleCase{":6379", any_address(6379)}, RuleCase{":1", any_address(1)},
        RuleCase{":65535", any_address(65535)},
        RuleCase{"127.0.0.1", rule(v4_addr(127, 0, 0, 1), 32, 0)},
        RuleCase{"127.0.0.1:6379", rule(v4_addr(127, 0, 0, 1), 32, 6379)},
        RuleCase{"10.0.0.0/8", rule(v4_addr(10, 0, 0, 0), 8, 0)},
        RuleCase{"10.0.0.0/8:3306", rule(v4_addr(10, 0, 0, 0), 8, 3306)},
        RuleCase{"10.128.0.0/9", rule(v4_addr(10, 128, 0, 0), 9, 0)},
        RuleCase{"0.0.0.0/0", rule(v4_addr(0, 0, 0, 0), 0, 0)},
        RuleCase{"[::1]", rule(v6_addr("::1"), 128, 0)},
        RuleCase{"[::1]:6379", rule(v6_addr("::1"), 128, 6379)},
        RuleCase{"[2001:db8::/32]:443", rule(v6_addr("2001:db8::"), 32, 443)},
        RuleCase{"2001:db8::/32", rule(v6_addr("2001:db8::"), 32, 0)},
        RuleCase{"2001:db8::1", rule(v6_addr("2001:db8::1"), 128, 0)},
        RuleCase{"::1", rule(v6_addr("::1"), 128, 0)}, RuleCase{"::/0", rule(v6_addr("::"), 0, 0)},
        RuleCase{"::ffff:10.0.0.0/104", rule(v4_addr(10, 0, 0, 0), 8, 0)},
        RuleCase{"::ffff:0:0/96", rule(v4_addr(0, 0, 0, 0), 0, 0)},
        RuleCase{"[::ffff:127.0.0.1]:6379", rule(v4_addr(127, 0, 0, 1), 32, 6379)},
        RuleCase{"::ffff:127.0.0.1", rule(v4_addr(127, 0, 0, 1), 32, 0)},
        RuleCase{"::1:6379/128", rule(v6_addr("::1:6379"), 128, 0)}, RuleCase{"", std::nullopt},
        RuleCase{":", std::nullopt}, RuleCase{":0", std::nullopt}, RuleCase{":65536", std::nullopt},
        RuleCase{"10.0.0.1/8", std::nullopt}, RuleCase{"10.0.0.0/33", std::nullopt},
        RuleCase{"10.0.0.0/8:0", std::nullopt}, RuleCase{"::1:6379", std::nullopt},
        RuleCase{"2001:db8::1:443", std::nullopt}, RuleCase{"fe80::1:22", std::nullopt},
        RuleCase{"2001:db8::/32:443", std::nullopt}, RuleCase{"[::1]:", std::nullopt},
        RuleCase{"[::1", std::nullopt}, RuleCase{"[10.0.0.1]:80", std::nullopt},
        RuleCase{"::ffff:10.0.0.0/95", std::nullopt}, RuleCase{"::ffff:10.0.0.1/104", std::nullopt},
        RuleCase{"[::1/129]", std::nullopt}, RuleCase{"2001:db8::1/32", std::nullopt}),
    [](const auto& info) { return row_name(info.index, info.param.text); });

// ---------------------------------------------------------------------------
// Matching: TCPFIX_MATCH (through parse_config, as the library reads it)
// against destinations built as the sockaddrs connect() receives.

struct MatchCase {
    std::string why;
    std::string match;  // TCPFIX_MATCH; empty: unset
    std::string addr;   // dotted quad: sockaddr_in; with a colon: sockaddr_in6
    std::uint16_t port;
    bool matched;
};

void PrintTo(const MatchCase& c, std::ostream* os) {
    *os << "TCPFIX_MATCH=\"" << c.match << "\" vs " << c.addr << " port " << c.port;
}

class Matching : public ::testing::TestWithParam<MatchCase> {};

TEST_P(Matching, DecidesTheDestination) {
    const MatchCase& c = GetParam();
    Vars vars = {{"TCPFIX_MATCH", c.match}};
    auto parsed = parse_config(vars);
    ASSERT_TRUE(std::holds_alternative<Config>(parsed)) << std::get<std::string>(parsed);
    const Matcher& matcher = std::get<Config>(parsed).match;
    Endpoint ep = dest(c.addr.c_str(), c.port);
    EXPECT_EQ(matcher.matches(ep), c.matched) << to_string(ep);
}

MatchCase yes(std::string why, std::string match, std::string addr, std::uint16_t port) {
    return {std::move(why), std::move(match), std::move(addr), port, true};
}
MatchCase no(std::string why, std::string match, std::string addr, std::uint16_t port) {
    return {std::move(why), std::move(match), std::move(addr), port, false};
}

INSTANTIATE_TEST_SUITE_P(
    Table, Matching,
    ::testing::Values(yes("unset matches ipv4", "", "192.0.2.1", 80),
                      yes("unset matches ipv6", "", "2001:db8::1", 443),
                      yes("unset matches mapped", "", "::ffff:192.0.2.1", 80),

                      yes("cidr8 inside", "10.0.0.0/8", "10.1.2.3", 80),
                      yes("cidr8 edge", "10.0.0.0/8", "10.255.255.255", 1),
                      no("cidr8 outside", "10.0.0.0/8", "11.0.0.1", 80),
                      yes("cidr8 mapped destination", "10.0.0.0/8", "::ffff:10.1.2.3", 80),
                      no("cidr8 same low bytes not mapped", "10.0.0.0/8", "::a01:203", 80),
                      yes("cidr9 upper half", "10.128.0.0/9", "10.200.0.1", 80),
                      no("cidr9 lower half", "10.128.0.0/9", "10.127.255.255", 80),
                      yes("cidr31 first", "10.1.2.2/31", "10.1.2.2", 80),
                      yes("cidr31 second", "10.1.2.2/31", "10.1.2.3", 80),
                      no("cidr31 next", "10.1.2.2/31", "10.1.2.4", 80),
                      yes("all ipv4", "0.0.0.0/0", "203.0.113.9", 9),
                      yes("all ipv4 mapped", "0.0.0.0/0", "::ffff:203.0.113.9", 9),
                      no("all ipv4 not ipv6", "0.0.0.0/0", "::1", 9),

                      yes("host port", "127.0.0.1:6379", "127.0.0.1", 6379),
                      no("host other port", "127.0.0.1:6379", "127.0.0.1", 6380),
                      no("host other host", "127.0.0.1:6379", "127.0.0.2", 6379),
                      yes("host port mapped jvm", "127.0.0.1:6379", "::ffff:127.0.0.1", 6379),
                      no("host port mapped other port", "127.0.0.1:6379", "::ffff:127.0.0.1", 6380),
                      no("ipv4 rule not ipv6 loopback", "127.0.0.1:6379", "::1", 6379),
                      yes("host any port", "127.0.0.1", "127.0.0.1", 1),

                      yes("port only ipv4", ":6379", "127.0.0.1", 6379),
                      yes("port only ipv6", ":6379", "::1", 6379),
                      yes("port only mapped", ":6379", "::ffff:10.0.0.1", 6379),
                      no("port only other port", ":6379", "127.0.0.1", 6380),

                      yes("v6 host port", "[::1]:6379", "::1", 6379),
                      no("v6 host other port", "[::1]:6379", "::1", 6380),
                      no("v6 rule not ipv4", "[::1]:6379", "127.0.0.1", 6379),
                      no("v6 rule not mapped", "[::1]:6379", "::ffff:127.0.0.1", 6379),
                      yes("v6 bracket any port", "[::1]", "::1", 9),
                      yes("v6 bare loopback", "::1", "::1", 9),
                      yes("v6 cidr32 inside", "2001:db8::/32", "2001:db8:ffff::1", 80),
                      no("v6 cidr32 outside", "2001:db8::/32", "2001:db9::1", 80),
                      yes("v6 cidr10 low", "[fe80::/10]:22", "fe80::1", 22),
                      yes("v6 cidr10 high", "[fe80::/10]:22", "febf::1", 22),
                      no("v6 cidr10 beyond", "[fe80::/10]:22", "fec0::1", 22),
                      no("v6 cidr10 other port", "[fe80::/10]:22", "fe80::1", 23),
                      yes("all ipv6", "::/0", "2001:db8::1", 80),
                      no("all ipv6 not ipv4", "::/0", "127.0.0.1", 80),
                      no("all ipv6 not mapped ipv4", "::/0", "::ffff:127.0.0.1", 80),

                      yes("mapped rule ipv4 destination", "::ffff:10.0.0.0/104", "10.9.9.9", 80),
                      yes("mapped rule mapped destination", "::ffff:10.0.0.0/104",
                          "::ffff:10.9.9.9", 80),
                      no("mapped rule outside", "::ffff:10.0.0.0/104", "11.0.0.1", 80),
                      yes("mapped bracket rule ipv4", "[::ffff:127.0.0.1]:6379", "127.0.0.1", 6379),

                      yes("list first", "10.0.0.0/8:3306,[::1]:6379", "10.0.0.5", 3306),
                      no("list first wrong port", "10.0.0.0/8:3306,[::1]:6379", "10.0.0.5", 6379),
                      yes("list second", "10.0.0.0/8:3306,[::1]:6379", "::1", 6379),
                      no("list second wrong port", "10.0.0.0/8:3306,[::1]:6379", "::1", 3306),
                      no("list neither", "10.0.0.0/8:3306,[::1]:6379", "192.0.2.1", 3306)),
    [](const auto& info) { return row_name(info.index, info.param.why); });

TEST(Matcher, EmptyMatchesEverything) {
    Matcher m;
    EXPECT_TRUE(m.matches_everything());
    EXPECT_TRUE(m.rules().empty());
    EXPECT_TRUE(m.matches(dest("192.0.2.1", 1)));
    EXPECT_TRUE(m.matches(dest("2001:db8::1", 65535)));
}

TEST(Matcher, RulesAreKeptInOrder) {
    Matcher m({*parse_match_rule(":80"), *parse_match_rule("10.0.0.0/8")});
    EXPECT_FALSE(m.matches_everything());
    ASSERT_EQ(m.rules().size(), 2u);
    EXPECT_EQ(m.rules()[0].port, 80);
    EXPECT_EQ(m.rules()[1].prefix_len, 8u);
    EXPECT_TRUE(m.matches(dest("192.0.2.1", 80)));
    EXPECT_TRUE(m.matches(dest("10.0.0.1", 81)));
    EXPECT_FALSE(m.matches(dest("192.0.2.1", 81)));
}

}  // namespace
}  // namespace tcpfix::policy
