// The BPF programs' twins of policy/ logic (bpf/attach.h), compiled here as
// C++ and held against policy's own: the latency buckets the kernel counts
// in must be policy::LatencyHistogram's, and a destination must match in the
// kernel exactly when policy::Matcher says so (with the conversion
// tools/attach_rules.hpp makes for the daemon).
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bpf/attach.h"
#include "policy/net.hpp"
#include "policy/stats.hpp"
#include "tools/attach_rules.hpp"

namespace tcpfix {
namespace {

TEST(AttachLatencyBucket, IsLatencyHistogramsBucket) {
    std::vector<std::uint64_t> values = {
        0,    1,    999,  1000,      1001,       1249,       1250,          1999,
        2000, 3999, 4000, 1'000'000, 20'000'000, 60'000'000, 1'000'000'000, 3'600'000'000'000ULL};
    for (int exp = 0; exp < 50; ++exp)
        for (std::uint64_t base : {1000ULL << exp, (1000ULL << exp) * 5 / 4})
            for (std::int64_t d : {-1, 0, 1})
                values.push_back(base + static_cast<std::uint64_t>(d));
    std::mt19937_64 rng(42);
    for (int i = 0; i < 100000; ++i) values.push_back(rng() >> (rng() % 64));
    for (auto ns : values) {
        if (ns > static_cast<std::uint64_t>(INT64_MAX)) continue;
        ASSERT_EQ(
            tcpfix_latency_bucket(ns),
            static_cast<__u32>(policy::LatencyHistogram::bucket_of(static_cast<std::int64_t>(ns))))
            << ns;
    }
}

TEST(AttachLatencyBucket, AssignKeepsCountsAndBoundsTheMaximum) {
    std::uint64_t counts[policy::LatencyHistogram::kBuckets] = {};
    counts[tcpfix_latency_bucket(100'000)] = 98;    // 0.1 ms
    counts[tcpfix_latency_bucket(40'000'000)] = 2;  // 40 ms
    policy::LatencyHistogram h;
    h.assign(counts);
    EXPECT_EQ(h.count(), 100u);
    EXPECT_NEAR(h.percentile_us(0.5), 100, 25);
    EXPECT_GE(h.max_us(), 40'000);
    EXPECT_LE(h.max_us(), 50'000);
    EXPECT_EQ(h.percentile_us(0.99), h.max_us());
}

bool bpf_matches(const policy::MatchRule& rule, const policy::Endpoint& ep) {
    tcpfix_rule r = tools::attach::to_bpf_rule(rule);
    __u8 addr[16];
    tools::attach::to_bpf_addr(addr, ep.addr);
    return tcpfix_rule_matches(&r, static_cast<__u8>(ep.addr.family), addr, ep.port) != 0;
}

policy::Endpoint endpoint(const std::string& ip, std::uint16_t port) {
    auto addr = policy::parse_ip(ip);
    EXPECT_TRUE(addr.has_value()) << ip;
    return {*addr, port};
}

TEST(AttachRuleMatch, AgreesWithPolicyOnChosenCases) {
    const char* rules[] = {"10.0.0.0/8",      "10.1.2.3:3306", ":6379",          "[::1]:6379",
                           "[2001:db8::/32]", "2001:db8::/32", "127.0.0.0/8:80", "0.0.0.0/0",
                           "10.1.2.0/23",     "[::/0]:443",    "192.168.1.7/32", "::1"};
    const std::pair<const char*, std::uint16_t> endpoints[] = {
        {"10.1.2.3", 3306},   {"10.1.3.255", 80}, {"11.0.0.1", 6379},
        {"::1", 6379},        {"::1", 6380},      {"2001:db8::5", 1},
        {"2001:db9::5", 1},   {"127.0.0.1", 80},  {"::ffff:10.1.2.3", 3306},
        {"192.168.1.7", 443}, {"fe80::1", 443},   {"10.1.1.255", 1},
        {"10.1.2.0", 1},      {"0.0.0.0", 0}};
    for (const char* text : rules) {
        auto rule = policy::parse_match_rule(text);
        ASSERT_TRUE(rule.has_value()) << text;
        for (auto [ip, port] : endpoints) {
            auto ep = endpoint(ip, port);
            EXPECT_EQ(bpf_matches(*rule, ep), rule->matches(ep))
                << text << " vs " << ip << ":" << port;
        }
    }
}

TEST(AttachRuleMatch, AgreesWithPolicyOnRandomPrefixes) {
    std::mt19937 rng(7);
    for (int i = 0; i < 20000; ++i) {
        bool v6 = rng() % 2;
        policy::MatchRule rule;
        rule.port = rng() % 3 == 0 ? 0 : static_cast<std::uint16_t>(rng() % 4);
        policy::Endpoint ep;
        ep.port = static_cast<std::uint16_t>(rng() % 4);
        ep.addr.family = v6 ? AF_INET6 : AF_INET;
        rule.prefix.family = rng() % 5 == 0 ? 0 : (v6 ^ (rng() % 7 == 0) ? AF_INET6 : AF_INET);
        int len = rule.prefix.family == AF_INET6 ? 16 : 4;
        rule.prefix_len = rule.prefix.family == 0 ? 0 : rng() % (len * 8 + 1);
        for (int b = 0; b < (v6 ? 16 : 4); ++b) ep.addr.bytes[b] = static_cast<std::uint8_t>(rng());
        // A prefix near the address (so that matches happen), host bits cleared.
        rule.prefix.bytes = ep.addr.bytes;
        if (rng() % 2)
            rule.prefix.bytes[rng() % len] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
        for (int bit = static_cast<int>(rule.prefix_len); bit < len * 8; ++bit)
            rule.prefix.bytes[bit / 8] &= static_cast<std::uint8_t>(~(0x80u >> (bit % 8)));
        if (rule.prefix.family == 0) rule.prefix.bytes = {};
        ASSERT_EQ(bpf_matches(rule, ep), rule.matches(ep))
            << i << " len " << rule.prefix_len << " family " << rule.prefix.family;
    }
}

}  // namespace
}  // namespace tcpfix
