// The configuration surface of SPEC.md: every TCPFIX_* variable, good and
// malformed values, the refusal line, unknown names, and the parsed Config.
#include "policy/config.hpp"

#include <gtest/gtest.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "policy/net.hpp"
#include "test_util.hpp"

namespace tcpfix::policy {
namespace {

using test::row_name;
using test::Vars;

// ---------------------------------------------------------------------------
// The variable table itself.

TEST(Variables, AreExactlyTheSpecNamesInSpecOrder) {
    const std::vector<std::string_view> spec = {
        "TCPFIX_CLOSE",
        "TCPFIX_CONNECT_TIMEOUT",
        "TCPFIX_CONNECT_RETRIES",
        "TCPFIX_BIND_NO_PORT",
        "TCPFIX_SOURCE_ADDRS",
        "TCPFIX_PORT_RANGE",
        "TCPFIX_RECONNECT_BACKOFF",
        "TCPFIX_CONNECT_RATE",
        "TCPFIX_REAP_CLOSE_WAIT",
        "TCPFIX_MATCH",
        "TCPFIX_LOG",
        "TCPFIX_LOG_FILE",
        "TCPFIX_STATS",
        "TCPFIX_TAG",
        "TCPFIX_DISABLE",
        "TCPFIX_SHARE",
    };
    std::vector<std::string_view> names;
    for (const auto& v : variables()) names.push_back(v.name);
    EXPECT_EQ(names, spec);
}

TEST(Variables, DescriptorsAreCompleteAndUnique) {
    std::set<std::string_view> names, clis;
    for (const auto& v : variables()) {
        SCOPED_TRACE(std::string(v.name));
        EXPECT_TRUE(v.name.starts_with("TCPFIX_"));
        EXPECT_FALSE(v.cli.empty());
        EXPECT_EQ(v.cli.find('_'), std::string_view::npos) << "CLI options use dashes";
        EXPECT_FALSE(v.expected.empty());
        EXPECT_FALSE(v.example.empty());
        EXPECT_FALSE(v.summary.empty());
        EXPECT_TRUE(names.insert(v.name).second) << "duplicate name";
        EXPECT_TRUE(clis.insert(v.cli).second) << "duplicate CLI option";
        EXPECT_EQ(find_variable(v.name), &v);
    }
}

TEST(Variables, EveryExampleParses) {
    for (const auto& v : variables()) {
        auto err = check_variable(v.name, v.example);
        EXPECT_FALSE(err.has_value()) << v.name << "=" << v.example << ": " << err.value_or("");
    }
}

TEST(Variables, FlagsAreTheZeroOrOneVariables) {
    std::vector<std::string_view> flags;
    for (const auto& v : variables()) {
        if (!v.flag) continue;
        flags.push_back(v.name);
        EXPECT_EQ(v.example, "1") << v.name;
        EXPECT_FALSE(check_variable(v.name, "0").has_value()) << v.name;
        EXPECT_FALSE(check_variable(v.name, "1").has_value()) << v.name;
        EXPECT_TRUE(check_variable(v.name, "2").has_value()) << v.name;
    }
    EXPECT_EQ(flags, (std::vector<std::string_view>{"TCPFIX_BIND_NO_PORT", "TCPFIX_DISABLE"}));
}

TEST(Variables, FindVariableIsExact) {
    EXPECT_NE(find_variable("TCPFIX_CLOSE"), nullptr);
    EXPECT_EQ(find_variable("TCPFIX_CLOSED"), nullptr);
    EXPECT_EQ(find_variable("tcpfix_close"), nullptr);
    EXPECT_EQ(find_variable("TCPFIX_CLOSE "), nullptr);
    EXPECT_EQ(find_variable(""), nullptr);
}

// ---------------------------------------------------------------------------
// Every variable, good and malformed values: check_variable and parse_config
// must agree, and a refusal is the SPEC's one line.

struct ValueCase {
    std::string var;
    std::string value;
    bool ok;
    std::string why;
};

void PrintTo(const ValueCase& c, std::ostream* os) {
    *os << c.var << "=\"" << c.value << "\" (" << c.why << ")";
}

ValueCase good(std::string var, std::string value, std::string why) {
    return {"TCPFIX_" + std::move(var), std::move(value), true, std::move(why)};
}
ValueCase bad(std::string var, std::string value, std::string why) {
    return {"TCPFIX_" + std::move(var), std::move(value), false, std::move(why)};
}

const std::vector<ValueCase>& value_cases() {
    static const std::vector<ValueCase> cases = {
        // TCPFIX_CLOSE
        good("CLOSE", "keep", "close keep"),
        good("CLOSE", "rst", "close rst"),
        good("CLOSE", "rst-always", "close rst-always"),
        bad("CLOSE", "RST", "close upper case"),
        bad("CLOSE", " rst", "close leading space"),
        bad("CLOSE", "rst ", "close trailing space"),
        bad("CLOSE", "rst-alway", "close truncated"),
        bad("CLOSE", "rst,keep", "close list"),
        bad("CLOSE", "1", "close number"),
        bad("CLOSE", "yes", "close yes"),

        // TCPFIX_CONNECT_TIMEOUT
        good("CONNECT_TIMEOUT", "250ms", "timeout ms"),
        good("CONNECT_TIMEOUT", "2s", "timeout s"),
        good("CONNECT_TIMEOUT", "500us", "timeout us"),
        good("CONNECT_TIMEOUT", "1.5s", "timeout decimal"),
        good("CONNECT_TIMEOUT", "1ns", "timeout smallest"),
        good("CONNECT_TIMEOUT", "3600s", "timeout one hour"),
        good("CONNECT_TIMEOUT", "0.5ms", "timeout leading zero decimal"),
        bad("CONNECT_TIMEOUT", "fast", "timeout word"),
        bad("CONNECT_TIMEOUT", "250", "timeout missing unit"),
        bad("CONNECT_TIMEOUT", "5m", "timeout wrong unit m"),
        bad("CONNECT_TIMEOUT", "1min", "timeout wrong unit min"),
        bad("CONNECT_TIMEOUT", "1h", "timeout wrong unit h"),
        bad("CONNECT_TIMEOUT", "2S", "timeout upper case unit"),
        bad("CONNECT_TIMEOUT", "0ms", "timeout zero"),
        bad("CONNECT_TIMEOUT", "0.5ns", "timeout below one ns"),
        bad("CONNECT_TIMEOUT", "-1s", "timeout negative"),
        bad("CONNECT_TIMEOUT", "+1s", "timeout plus sign"),
        bad("CONNECT_TIMEOUT", " 1s", "timeout leading space"),
        bad("CONNECT_TIMEOUT", "1s ", "timeout trailing space"),
        bad("CONNECT_TIMEOUT", "1 s", "timeout space before unit"),
        bad("CONNECT_TIMEOUT", "1.s", "timeout dot without decimals"),
        bad("CONNECT_TIMEOUT", ".5s", "timeout dot without integer"),
        bad("CONNECT_TIMEOUT", "1.5.5s", "timeout two dots"),
        bad("CONNECT_TIMEOUT", "1,5s", "timeout decimal comma"),
        bad("CONNECT_TIMEOUT", "1e3ms", "timeout exponent"),
        bad("CONNECT_TIMEOUT", "3601s", "timeout above one hour"),
        bad("CONNECT_TIMEOUT", "99999999999999999999999s", "timeout overflow"),
        bad("CONNECT_TIMEOUT", "ms", "timeout unit only"),
        bad("CONNECT_TIMEOUT", "250ms,1s", "timeout list"),

        // TCPFIX_CONNECT_RETRIES
        good("CONNECT_RETRIES", "0", "retries zero"),
        good("CONNECT_RETRIES", "3", "retries three"),
        good("CONNECT_RETRIES", "10", "retries ten"),
        bad("CONNECT_RETRIES", "11", "retries eleven"),
        bad("CONNECT_RETRIES", "-1", "retries negative"),
        bad("CONNECT_RETRIES", "+1", "retries plus sign"),
        bad("CONNECT_RETRIES", " 1", "retries leading space"),
        bad("CONNECT_RETRIES", "1 ", "retries trailing space"),
        bad("CONNECT_RETRIES", "1.0", "retries decimal"),
        bad("CONNECT_RETRIES", "0x3", "retries hex"),
        bad("CONNECT_RETRIES", "ten", "retries word"),
        bad("CONNECT_RETRIES", "4294967297", "retries wraps 32 bits"),
        bad("CONNECT_RETRIES", "99999999999999999999", "retries overflow"),

        // TCPFIX_BIND_NO_PORT
        good("BIND_NO_PORT", "0", "bind no port 0"),
        good("BIND_NO_PORT", "1", "bind no port 1"),
        bad("BIND_NO_PORT", "2", "bind no port 2"),
        bad("BIND_NO_PORT", "true", "bind no port true"),
        bad("BIND_NO_PORT", "yes", "bind no port yes"),
        bad("BIND_NO_PORT", "01", "bind no port leading zero"),
        bad("BIND_NO_PORT", "-1", "bind no port negative"),
        bad("BIND_NO_PORT", "1 ", "bind no port trailing space"),

        // TCPFIX_SOURCE_ADDRS
        good("SOURCE_ADDRS", "127.0.0.2", "sources one"),
        good("SOURCE_ADDRS", "127.0.0.2,127.0.0.3", "sources two"),
        good("SOURCE_ADDRS", "::1", "sources ipv6"),
        good("SOURCE_ADDRS", "127.0.0.2,2001:db8::2", "sources mixed families"),
        good("SOURCE_ADDRS", "::ffff:127.0.0.2", "sources ipv4 mapped"),
        bad("SOURCE_ADDRS", "127.0.0.2,,127.0.0.3", "sources empty item"),
        bad("SOURCE_ADDRS", "127.0.0.2,", "sources trailing comma"),
        bad("SOURCE_ADDRS", ",127.0.0.2", "sources leading comma"),
        bad("SOURCE_ADDRS", ",", "sources comma only"),
        bad("SOURCE_ADDRS", "127.0.0.2, 127.0.0.3", "sources space after comma"),
        bad("SOURCE_ADDRS", "127.0.0.2,127.0.0.2", "sources duplicate"),
        bad("SOURCE_ADDRS", "127.0.0.2,::ffff:127.0.0.2", "sources duplicate through mapping"),
        bad("SOURCE_ADDRS", "::1,0::1", "sources duplicate ipv6 spelled twice"),
        bad("SOURCE_ADDRS", "[::1]", "sources brackets"),
        bad("SOURCE_ADDRS", "127.0.0.2:80", "sources with port"),
        bad("SOURCE_ADDRS", "10.0.0.0/8", "sources cidr"),
        bad("SOURCE_ADDRS", "localhost", "sources host name"),
        bad("SOURCE_ADDRS", "256.0.0.1", "sources octet out of range"),
        bad("SOURCE_ADDRS", "127.1", "sources short ipv4"),
        bad("SOURCE_ADDRS", "fe80::1%lo", "sources scope id"),

        // TCPFIX_PORT_RANGE
        good("PORT_RANGE", "40000-49999", "range typical"),
        good("PORT_RANGE", "1-65535", "range widest"),
        good("PORT_RANGE", "5000-5000", "range single port"),
        bad("PORT_RANGE", "50000-40000", "range lo above hi"),
        bad("PORT_RANGE", "0-100", "range lo zero"),
        bad("PORT_RANGE", "1-65536", "range hi above 65535"),
        bad("PORT_RANGE", "40000", "range single number"),
        bad("PORT_RANGE", "40000-", "range missing hi"),
        bad("PORT_RANGE", "-49999", "range missing lo"),
        bad("PORT_RANGE", "40000 - 49999", "range spaces"),
        bad("PORT_RANGE", "+40000-49999", "range plus sign"),
        bad("PORT_RANGE", "40000:49999", "range colon"),
        bad("PORT_RANGE", "40000-49999-1", "range three parts"),
        bad("PORT_RANGE", "4294967297-4294967298", "range wraps 32 bits"),
        bad("PORT_RANGE", "99999999999999999999-1", "range overflow"),

        // TCPFIX_RECONNECT_BACKOFF
        good("RECONNECT_BACKOFF", "10ms:2s", "backoff typical"),
        good("RECONNECT_BACKOFF", "1s:1s", "backoff min equals max"),
        good("RECONNECT_BACKOFF", "500us:1.5s", "backoff decimals"),
        bad("RECONNECT_BACKOFF", "2s:10ms", "backoff min above max"),
        bad("RECONNECT_BACKOFF", "10ms", "backoff single duration"),
        bad("RECONNECT_BACKOFF", "10ms:", "backoff missing max"),
        bad("RECONNECT_BACKOFF", ":2s", "backoff missing min"),
        bad("RECONNECT_BACKOFF", "10:2000", "backoff missing units"),
        bad("RECONNECT_BACKOFF", "10ms:2s:4s", "backoff three parts"),
        bad("RECONNECT_BACKOFF", "0ms:2s", "backoff zero min"),
        bad("RECONNECT_BACKOFF", "10ms-2s", "backoff dash"),
        bad("RECONNECT_BACKOFF", "10ms: 2s", "backoff space"),
        bad("RECONNECT_BACKOFF", "10ms:5m", "backoff wrong unit"),
        bad("RECONNECT_BACKOFF", "10ms:3601s", "backoff max above one hour"),

        // TCPFIX_CONNECT_RATE
        good("CONNECT_RATE", "100/s", "rate per second"),
        good("CONNECT_RATE", "30/min", "rate per minute"),
        good("CONNECT_RATE", "1/s", "rate one"),
        good("CONNECT_RATE", "0.5/s", "rate decimal"),
        bad("CONNECT_RATE", "100", "rate missing unit"),
        bad("CONNECT_RATE", "0/s", "rate zero"),
        bad("CONNECT_RATE", "-1/s", "rate negative"),
        bad("CONNECT_RATE", "+5/s", "rate plus sign"),
        bad("CONNECT_RATE", "100/m", "rate wrong unit m"),
        bad("CONNECT_RATE", "100/sec", "rate wrong unit sec"),
        bad("CONNECT_RATE", "100/S", "rate upper case unit"),
        bad("CONNECT_RATE", "100 /s", "rate space"),
        bad("CONNECT_RATE", "/s", "rate missing number"),
        bad("CONNECT_RATE", "100/", "rate empty unit"),
        bad("CONNECT_RATE", "1e3/s", "rate exponent"),
        bad("CONNECT_RATE", "100/s/s", "rate two slashes"),
        bad("CONNECT_RATE", "20000000/s", "rate out of range"),
        bad("CONNECT_RATE", "99999999999999999999/s", "rate overflow"),

        // TCPFIX_REAP_CLOSE_WAIT
        good("REAP_CLOSE_WAIT", "5s", "reap seconds"),
        good("REAP_CLOSE_WAIT", "100ms", "reap ms"),
        good("REAP_CLOSE_WAIT", "3600s", "reap one hour"),
        bad("REAP_CLOSE_WAIT", "5", "reap missing unit"),
        bad("REAP_CLOSE_WAIT", "5m", "reap wrong unit"),
        bad("REAP_CLOSE_WAIT", "0s", "reap zero"),
        bad("REAP_CLOSE_WAIT", "-5s", "reap negative"),
        bad("REAP_CLOSE_WAIT", "forever", "reap word"),
        bad("REAP_CLOSE_WAIT", "3601s", "reap above one hour"),

        // TCPFIX_MATCH
        good("MATCH", "127.0.0.1:6379", "match host and port"),
        good("MATCH", "127.0.0.1", "match host"),
        good("MATCH", "10.0.0.0/8", "match cidr"),
        good("MATCH", "10.0.0.0/8:3306", "match cidr and port"),
        good("MATCH", ":6379", "match port only"),
        good("MATCH", "[::1]:6379", "match bracketed ipv6 and port"),
        good("MATCH", "[::1]", "match bracketed ipv6"),
        good("MATCH", "[2001:db8::/32]:443", "match bracketed ipv6 cidr and port"),
        good("MATCH", "2001:db8::/32", "match bare ipv6 cidr"),
        good("MATCH", "::1", "match bare ipv6 loopback"),
        good("MATCH", "::/0", "match every ipv6"),
        good("MATCH", "::ffff:10.0.0.0/104", "match ipv4 mapped cidr"),
        good("MATCH", "[::ffff:127.0.0.1]:6379", "match ipv4 mapped bracketed"),
        good("MATCH", "0.0.0.0/0", "match every ipv4"),
        good("MATCH", "10.0.0.0/8:3306,[::1]:6379", "match list"),
        good("MATCH", "::1:6379/128", "match bare ipv6 made unambiguous by length"),
        bad("MATCH", "10.0.0.0/8,,[::1]:6379", "match empty item"),
        bad("MATCH", "10.0.0.0/8,", "match trailing comma"),
        bad("MATCH", ",:80", "match leading comma"),
        bad("MATCH", "10.0.0.0/8, :80", "match space after comma"),
        bad("MATCH", " 10.0.0.0/8", "match leading space"),
        bad("MATCH", "10.0.0.1/8", "match host bits set"),
        bad("MATCH", "10.1.2.3/31", "match host bit set in last bit"),
        bad("MATCH", "10.0.0.0/33", "match ipv4 prefix too long"),
        bad("MATCH", "10.0.0.0/", "match empty prefix length"),
        bad("MATCH", "10.0.0.0/-8", "match negative prefix length"),
        bad("MATCH", "/8", "match prefix without address"),
        bad("MATCH", "10.0.0.0/8:0", "match port zero"),
        bad("MATCH", "10.0.0.0/8:65536", "match port too big"),
        bad("MATCH", "10.0.0.0/8:", "match empty port"),
        bad("MATCH", "10.0.0.0/8:+80", "match port plus sign"),
        bad("MATCH", "10.0.0.0/8:-1", "match port negative"),
        bad("MATCH", ":0", "match port only zero"),
        bad("MATCH", ":", "match colon only"),
        bad("MATCH", ":http", "match service name"),
        bad("MATCH", "::1:6379", "match ipv6 without brackets with port"),
        bad("MATCH", "2001:db8::1:443", "match ipv6 address without brackets with port"),
        bad("MATCH", "2001:db8::/32:443", "match ipv6 cidr without brackets with port"),
        bad("MATCH", "[::1]:", "match bracketed empty port"),
        bad("MATCH", "[::1]:0", "match bracketed port zero"),
        bad("MATCH", "[::1", "match unclosed bracket"),
        bad("MATCH", "[::1]6379", "match missing colon after bracket"),
        bad("MATCH", "[::1]/128", "match prefix outside brackets"),
        bad("MATCH", "[::1/129]", "match ipv6 prefix too long"),
        bad("MATCH", "[2001:db8::1/32]", "match ipv6 host bits set"),
        bad("MATCH", "[10.0.0.1]:80", "match ipv4 in brackets"),
        bad("MATCH", "[]:80", "match empty brackets"),
        bad("MATCH", "::ffff:10.0.0.0/95", "match mapped prefix wider than ipv4"),
        bad("MATCH", "::ffff:10.0.0.1/104", "match mapped host bits set"),
        bad("MATCH", "localhost:6379", "match host name"),
        bad("MATCH", "fe80::1%lo", "match scope id"),

        // TCPFIX_LOG
        good("LOG", "off", "log off"),
        good("LOG", "error", "log error"),
        good("LOG", "warn", "log warn"),
        good("LOG", "info", "log info"),
        good("LOG", "debug", "log debug"),
        bad("LOG", "INFO", "log upper case"),
        bad("LOG", "warning", "log warning"),
        bad("LOG", "verbose", "log verbose"),
        bad("LOG", "3", "log number"),
        bad("LOG", " info", "log leading space"),

        // TCPFIX_LOG_FILE
        good("LOG_FILE", "/tmp/tcpfix.log", "log file absolute"),
        good("LOG_FILE", "tcpfix.log", "log file relative"),
        good("LOG_FILE", "/tmp/with space.log", "log file with space"),
        bad("LOG_FILE", "/tmp/a\nb.log", "log file newline"),
        bad("LOG_FILE", "\t", "log file tab"),
        bad("LOG_FILE", "/tmp/a\x7f", "log file delete character"),
        bad("LOG_FILE", "/tmp/", "log file directory"),

        // TCPFIX_STATS
        good("STATS", "/tmp/tcpfix-%p.json", "stats with pid"),
        good("STATS", "/tmp/stats.json", "stats plain"),
        good("STATS", "stats.json", "stats relative"),
        bad("STATS", "/tmp/", "stats directory"),
        bad("STATS", "/tmp/a\x01.json", "stats control character"),
        bad("STATS", "/tmp/a\r.json", "stats carriage return"),

        // TCPFIX_TAG
        good("TAG", "arm-b", "tag typical"),
        good("TAG", "x", "tag one character"),
        good("TAG", "A_1.x+y:z/w", "tag punctuation"),
        good("TAG", std::string(64, 't'), "tag 64 characters"),
        bad("TAG", std::string(65, 't'), "tag 65 characters"),
        bad("TAG", "arm b", "tag space"),
        bad("TAG", " arm", "tag leading space"),
        bad("TAG", "arm\"b", "tag double quote"),
        bad("TAG", "'arm'", "tag single quotes"),
        bad("TAG", "arm\\b", "tag backslash"),
        bad("TAG", "arm\tb", "tag tab"),
        bad("TAG", "caf\xc3\xa9", "tag non ascii"),

        // TCPFIX_DISABLE
        good("DISABLE", "0", "disable 0"),
        good("DISABLE", "1", "disable 1"),
        bad("DISABLE", "2", "disable 2"),
        bad("DISABLE", "true", "disable true"),
        bad("DISABLE", "yes", "disable yes"),
        bad("DISABLE", " 1", "disable leading space"),

        // TCPFIX_SHARE: becomes part of a file name in /dev/shm
        good("SHARE", "php-pool", "share typical"),
        good("SHARE", "a", "share one character"),
        good("SHARE", "Pool_2.prod-eu", "share every allowed character class"),
        good("SHARE", "..", "share dots only (never a path: the file is tcpfix-UID-NAME.v1)"),
        good("SHARE", std::string(64, 's'), "share 64 characters"),
        bad("SHARE", std::string(65, 's'), "share 65 characters"),
        bad("SHARE", "../etc", "share slash"),
        bad("SHARE", "a/b", "share inner slash"),
        bad("SHARE", "pool a", "share space"),
        bad("SHARE", "pool:1", "share colon"),
        bad("SHARE", "caf\xc3\xa9", "share non ascii"),
        bad("SHARE", "pool\n", "share newline"),
    };
    return cases;
}

class VariableValue : public ::testing::TestWithParam<ValueCase> {};

TEST_P(VariableValue, CheckVariableAndParseConfigAgree) {
    const ValueCase& c = GetParam();
    const VariableInfo* info = find_variable(c.var);
    ASSERT_NE(info, nullptr) << "the table names a variable the library does not know";

    auto checked = check_variable(c.var, c.value);
    Vars vars = {{c.var, c.value}};
    auto parsed = parse_config(vars);

    if (c.ok) {
        EXPECT_FALSE(checked.has_value()) << checked.value_or("");
        ASSERT_TRUE(std::holds_alternative<Config>(parsed)) << std::get<std::string>(parsed);
        const Config& config = std::get<Config>(parsed);
        ASSERT_EQ(config.given.size(), 1u);
        EXPECT_EQ(config.given[0].first, c.var);
        EXPECT_EQ(config.given[0].second, c.value);
        return;
    }
    ASSERT_TRUE(checked.has_value()) << "malformed value accepted";
    const std::string& line = *checked;
    EXPECT_TRUE(line.starts_with("tcpfix: " + c.var + "=\"")) << line;
    EXPECT_TRUE(line.ends_with("\": expected " + std::string(info->expected))) << line;
    EXPECT_EQ(line.find('\n'), std::string::npos) << "the refusal must stay on one line";
    EXPECT_EQ(line.find('\r'), std::string::npos) << "the refusal must stay on one line";
    ASSERT_TRUE(std::holds_alternative<std::string>(parsed)) << "parse_config accepted it";
    EXPECT_EQ(std::get<std::string>(parsed), line);
}

INSTANTIATE_TEST_SUITE_P(Table, VariableValue, ::testing::ValuesIn(value_cases()),
                         [](const auto& info) { return row_name(info.index, info.param.why); });

TEST(VariableValue, TableCoversEveryVariable) {
    for (const auto& v : variables()) {
        auto rows = [&](bool ok) {
            return std::count_if(value_cases().begin(), value_cases().end(),
                                 [&](const ValueCase& c) { return c.var == v.name && c.ok == ok; });
        };
        EXPECT_GE(rows(true), 2) << v.name << " needs good values in the table";
        EXPECT_GE(rows(false), 3) << v.name << " needs malformed values in the table";
    }
}

TEST(VariableValue, EmptyValueIsUnsetForEveryVariable) {
    for (const auto& v : variables()) {
        SCOPED_TRACE(std::string(v.name));
        EXPECT_FALSE(check_variable(v.name, "").has_value());
        Vars vars = {{v.name, ""}};
        auto parsed = parse_config(vars);
        ASSERT_TRUE(std::holds_alternative<Config>(parsed)) << std::get<std::string>(parsed);
        const Config& config = std::get<Config>(parsed);
        EXPECT_TRUE(config.given.empty());
        EXPECT_FALSE(config.active());
        EXPECT_EQ(config.close, CloseMode::Keep);
        EXPECT_EQ(config.log, LogLevel::Warn);
    }
}

// ---------------------------------------------------------------------------
// Exact refusal lines.

struct RefusalCase {
    std::string why;
    std::vector<std::pair<std::string, std::string>> vars;
    std::string line;
};

void PrintTo(const RefusalCase& c, std::ostream* os) {
    *os << c.why;
}

class ExactRefusal : public ::testing::TestWithParam<RefusalCase> {};

TEST_P(ExactRefusal, IsTheSpecLine) {
    const RefusalCase& c = GetParam();
    Vars vars;
    for (const auto& [n, v] : c.vars) vars.emplace_back(n, v);
    auto parsed = parse_config(vars);
    ASSERT_TRUE(std::holds_alternative<std::string>(parsed)) << "accepted";
    EXPECT_EQ(std::get<std::string>(parsed), c.line);
    if (c.vars.size() == 1) {  // check_variable gives the same line for one variable
        EXPECT_EQ(check_variable(c.vars[0].first, c.vars[0].second), c.line);
    }
}

INSTANTIATE_TEST_SUITE_P(
    Table, ExactRefusal,
    ::testing::Values(
        RefusalCase{"spec example",
                    {{"TCPFIX_CONNECT_TIMEOUT", "fast"}},
                    "tcpfix: TCPFIX_CONNECT_TIMEOUT=\"fast\": expected a duration such as 250ms "
                    "or 2s"},
        RefusalCase{"close",
                    {{"TCPFIX_CLOSE", "reset"}},
                    "tcpfix: TCPFIX_CLOSE=\"reset\": expected keep, rst or rst-always"},
        RefusalCase{"retries 11",
                    {{"TCPFIX_CONNECT_RETRIES", "11"}},
                    "tcpfix: TCPFIX_CONNECT_RETRIES=\"11\": expected a whole number from 0 to 10"},
        RefusalCase{"port range lo above hi",
                    {{"TCPFIX_PORT_RANGE", "50000-40000"}},
                    "tcpfix: TCPFIX_PORT_RANGE=\"50000-40000\": expected LO-HI with 1 <= LO <= "
                    "HI <= 65535, such as 40000-49999"},
        RefusalCase{"backoff min above max",
                    {{"TCPFIX_RECONNECT_BACKOFF", "2s:10ms"}},
                    "tcpfix: TCPFIX_RECONNECT_BACKOFF=\"2s:10ms\": expected MIN:MAX durations "
                    "with MIN <= MAX, such as 10ms:2s"},
        RefusalCase{"match host bits",
                    {{"TCPFIX_MATCH", "10.0.0.1/8"}},
                    "tcpfix: TCPFIX_MATCH=\"10.0.0.1/8\": expected a comma-separated list of "
                    "CIDR, CIDR:PORT, :PORT or [IPv6-CIDR]:PORT, such as "
                    "10.0.0.0/8:3306,[::1]:6379"},
        RefusalCase{"control character shown as question mark",
                    {{"TCPFIX_LOG_FILE", "/tmp/a\nb"}},
                    "tcpfix: TCPFIX_LOG_FILE=\"/tmp/a?b\": expected a file path"},
        RefusalCase{"control character in a name shown as question mark",
                    {{"TCPFIX_CLOSE\nX", "rst"}},
                    "tcpfix: TCPFIX_CLOSE?X=\"rst\": no such variable; did you mean "
                    "TCPFIX_CLOSE?"},
        RefusalCase{"utf-8 in a value kept as written",
                    {{"TCPFIX_STATS", "/tmp/caf\xc3\xa9/"}},
                    "tcpfix: TCPFIX_STATS=\"/tmp/caf\xc3\xa9/\": expected a file path (%p becomes "
                    "the PID)"},
        RefusalCase{"unknown name suggests the close one",
                    {{"TCPFIX_CLOSED", "rst"}},
                    "tcpfix: TCPFIX_CLOSED=\"rst\": no such variable; did you mean "
                    "TCPFIX_CLOSE?"},
        RefusalCase{"unknown far name lists none",
                    {{"TCPFIX_BANANA", "1"}},
                    "tcpfix: TCPFIX_BANANA=\"1\": no such variable; the README lists every "
                    "TCPFIX_ variable"},
        RefusalCase{"first refusal in table order not input order",
                    {{"TCPFIX_TAG", "a b"}, {"TCPFIX_CLOSE", "nope"}},
                    "tcpfix: TCPFIX_CLOSE=\"nope\": expected keep, rst or rst-always"},
        RefusalCase{"unknown name wins over a malformed value",
                    {{"TCPFIX_CLOSE", "nope"}, {"TCPFIX_TIMEOUTS", "1s"}},
                    "tcpfix: TCPFIX_TIMEOUTS=\"1s\": no such variable; the README lists every "
                    "TCPFIX_ variable"}),
    [](const auto& info) { return row_name(info.index, info.param.why); });

// ---------------------------------------------------------------------------
// Unknown names: refused, with the nearest real name when it is a near miss.

struct UnknownCase {
    std::string name;
    std::string suggestion;  // empty: no suggestion expected
};

void PrintTo(const UnknownCase& c, std::ostream* os) {
    *os << c.name;
}

class UnknownName : public ::testing::TestWithParam<UnknownCase> {};

TEST_P(UnknownName, IsRefusedWithDidYouMean) {
    const UnknownCase& c = GetParam();
    for (std::string value : {"1", ""}) {  // even when empty: a typo must not pass silently
        SCOPED_TRACE("value \"" + value + "\"");
        Vars vars = {{"PATH", "/usr/bin"}, {c.name, value}};
        auto parsed = parse_config(vars);
        ASSERT_TRUE(std::holds_alternative<std::string>(parsed)) << "unknown name accepted";
        const std::string& line = std::get<std::string>(parsed);
        EXPECT_TRUE(line.starts_with("tcpfix: " + c.name + "=\"" + value + "\": no such variable"))
            << line;
        if (c.suggestion.empty()) {
            EXPECT_EQ(line.find("did you mean"), std::string::npos) << line;
        } else {
            EXPECT_TRUE(line.ends_with("did you mean " + c.suggestion + "?")) << line;
        }
        EXPECT_EQ(check_variable(c.name, value), line);
    }
}

INSTANTIATE_TEST_SUITE_P(
    Table, UnknownName,
    ::testing::Values(UnknownCase{"TCPFIX_CLOSED", "TCPFIX_CLOSE"},
                      UnknownCase{"TCPFIX_CLOS", "TCPFIX_CLOSE"},
                      UnknownCase{"TCPFIX_LOGFILE", "TCPFIX_LOG_FILE"},
                      UnknownCase{"TCPFIX_CONNECT_RETRY", "TCPFIX_CONNECT_RETRIES"},
                      UnknownCase{"TCPFIX_CONECT_TIMEOUT", "TCPFIX_CONNECT_TIMEOUT"},
                      UnknownCase{"TCPFIX_SOURCE_ADDR", "TCPFIX_SOURCE_ADDRS"},
                      UnknownCase{"TCPFIX_MATCHES", "TCPFIX_MATCH"},
                      UnknownCase{"TCPFIX_DISABLED", "TCPFIX_DISABLE"},
                      UnknownCase{"TCPFIX_PORTRANGE", "TCPFIX_PORT_RANGE"},
                      UnknownCase{"TCPFIX_BANANA", ""}, UnknownCase{"TCPFIX_", ""},
                      UnknownCase{"TCPFIX_X", ""}, UnknownCase{"TCPFIX_LGO", "TCPFIX_LOG"},
                      UnknownCase{"TCPFIX_TAGS", "TCPFIX_TAG"}),
    [](const auto& info) { return row_name(info.index, info.param.name); });

// ---------------------------------------------------------------------------
// parse_config as a whole.

TEST(ParseConfig, NothingSetIsInactiveWithDefaults) {
    auto parsed = parse_config(Vars{});
    ASSERT_TRUE(std::holds_alternative<Config>(parsed));
    const Config& c = std::get<Config>(parsed);
    EXPECT_FALSE(c.active());
    EXPECT_FALSE(c.disabled);
    EXPECT_EQ(c.close, CloseMode::Keep);
    EXPECT_FALSE(c.connect_timeout_ns.has_value());
    EXPECT_EQ(c.connect_retries, 0u);
    EXPECT_FALSE(c.bind_no_port);
    EXPECT_TRUE(c.source_addrs.empty());
    EXPECT_FALSE(c.port_range.has_value());
    EXPECT_FALSE(c.reconnect_backoff.has_value());
    EXPECT_FALSE(c.connect_rate_per_s.has_value());
    EXPECT_FALSE(c.reap_close_wait_ns.has_value());
    EXPECT_TRUE(c.match.matches_everything());
    EXPECT_EQ(c.log, LogLevel::Warn);
    EXPECT_TRUE(c.log_file.empty());
    EXPECT_TRUE(c.stats_path.empty());
    EXPECT_TRUE(c.tag.empty());
}

TEST(ParseConfig, OtherNamesAreIgnored) {
    Vars vars = {{"PATH", "/usr/bin:/bin"},  {"LD_PRELOAD", "/x/libtcpfix.so"},
                 {"TCPFIX", "garbage"},      {"XTCPFIX_CLOSE", "garbage"},
                 {"MY_TCPFIX_CLOSE", "rst"}, {"HOME", ""}};
    auto parsed = parse_config(vars);
    ASSERT_TRUE(std::holds_alternative<Config>(parsed)) << std::get<std::string>(parsed);
    EXPECT_TRUE(std::get<Config>(parsed).given.empty());
    EXPECT_EQ(std::get<Config>(parsed).close, CloseMode::Keep);
}

TEST(ParseConfig, EveryVariableAtOnce) {
    Vars vars = {
        {"TCPFIX_DISABLE", "0"},  // input order differs from table order on purpose
        {"TCPFIX_TAG", "arm-b"},
        {"TCPFIX_STATS", "/tmp/s-%p.json"},
        {"TCPFIX_LOG_FILE", "/tmp/t.log"},
        {"TCPFIX_LOG", "debug"},
        {"TCPFIX_MATCH", "10.0.0.0/8:3306,[::1]:6379"},
        {"TCPFIX_REAP_CLOSE_WAIT", "5s"},
        {"TCPFIX_CONNECT_RATE", "30/min"},
        {"TCPFIX_RECONNECT_BACKOFF", "10ms:2s"},
        {"TCPFIX_PORT_RANGE", "40000-49999"},
        {"TCPFIX_SOURCE_ADDRS", "127.0.0.3,::ffff:127.0.0.2,::2"},
        {"TCPFIX_BIND_NO_PORT", "1"},
        {"TCPFIX_CONNECT_RETRIES", "3"},
        {"TCPFIX_CONNECT_TIMEOUT", "1.5s"},
        {"TCPFIX_CLOSE", "rst"},
        {"TCPFIX_SHARE", "php-pool"},
    };
    auto parsed = parse_config(vars);
    ASSERT_TRUE(std::holds_alternative<Config>(parsed)) << std::get<std::string>(parsed);
    const Config& c = std::get<Config>(parsed);
    EXPECT_TRUE(c.active());
    EXPECT_EQ(c.share, "php-pool");
    EXPECT_FALSE(c.disabled);
    EXPECT_EQ(c.close, CloseMode::Rst);
    EXPECT_EQ(c.connect_timeout_ns, 1'500'000'000);
    EXPECT_EQ(c.connect_retries, 3u);
    EXPECT_TRUE(c.bind_no_port);
    ASSERT_EQ(c.source_addrs.size(), 3u);
    EXPECT_EQ(c.source_addrs[0], parse_ip("127.0.0.3"));  // order kept: it is the spread order
    EXPECT_EQ(c.source_addrs[1].family, AF_INET);         // mapped address normalised
    EXPECT_EQ(c.source_addrs[1], parse_ip("127.0.0.2"));
    EXPECT_EQ(c.source_addrs[2].family, AF_INET6);
    EXPECT_EQ(c.port_range, (PortRange{40000, 49999}));
    EXPECT_EQ(c.reconnect_backoff, (Backoff{10'000'000, 2'000'000'000}));
    ASSERT_TRUE(c.connect_rate_per_s.has_value());
    EXPECT_DOUBLE_EQ(*c.connect_rate_per_s, 0.5);
    EXPECT_EQ(c.reap_close_wait_ns, 5'000'000'000);
    EXPECT_FALSE(c.match.matches_everything());
    EXPECT_EQ(c.match.rules().size(), 2u);
    EXPECT_EQ(c.log, LogLevel::Debug);
    EXPECT_EQ(c.log_file, "/tmp/t.log");
    EXPECT_EQ(c.stats_path, "/tmp/s-%p.json");
    EXPECT_EQ(c.tag, "arm-b");

    // `given` lists what was set, as given, in table order.
    ASSERT_EQ(c.given.size(), variables().size());
    for (std::size_t i = 0; i < c.given.size(); ++i) {
        EXPECT_EQ(c.given[i].first, variables()[i].name);
        auto it = std::find_if(vars.begin(), vars.end(),
                               [&](const auto& p) { return p.first == c.given[i].first; });
        ASSERT_NE(it, vars.end());
        EXPECT_EQ(c.given[i].second, it->second);
    }
}

TEST(ParseConfig, DisableMakesItInactive) {
    Vars vars = {{"TCPFIX_CLOSE", "rst"}, {"TCPFIX_DISABLE", "1"}};
    auto parsed = parse_config(vars);
    ASSERT_TRUE(std::holds_alternative<Config>(parsed));
    EXPECT_TRUE(std::get<Config>(parsed).disabled);
    EXPECT_FALSE(std::get<Config>(parsed).active());

    Vars enabled = {{"TCPFIX_CLOSE", "rst"}, {"TCPFIX_DISABLE", "0"}};
    auto parsed_enabled = parse_config(enabled);
    ASSERT_TRUE(std::holds_alternative<Config>(parsed_enabled));
    EXPECT_FALSE(std::get<Config>(parsed_enabled).disabled);
    EXPECT_TRUE(std::get<Config>(parsed_enabled).active());
}

TEST(ParseConfig, DisableStillValidatesTheOthers) {
    // A control arm with a typo'd policy must fail just like the treatment arm.
    Vars vars = {{"TCPFIX_DISABLE", "1"}, {"TCPFIX_CLOSE", "rts"}};
    auto parsed = parse_config(vars);
    ASSERT_TRUE(std::holds_alternative<std::string>(parsed));
    EXPECT_TRUE(std::get<std::string>(parsed).starts_with("tcpfix: TCPFIX_CLOSE=\"rts\""));
}

TEST(ParseConfig, EmptyValueLeavesTheDefaultAmongOthers) {
    Vars vars = {{"TCPFIX_CLOSE", ""}, {"TCPFIX_LOG", "info"}, {"TCPFIX_MATCH", ""}};
    auto parsed = parse_config(vars);
    ASSERT_TRUE(std::holds_alternative<Config>(parsed)) << std::get<std::string>(parsed);
    const Config& c = std::get<Config>(parsed);
    EXPECT_EQ(c.close, CloseMode::Keep);
    EXPECT_TRUE(c.match.matches_everything());
    EXPECT_EQ(c.log, LogLevel::Info);
    ASSERT_EQ(c.given.size(), 1u);
    EXPECT_EQ(c.given[0].first, "TCPFIX_LOG");
}

TEST(ParseConfig, ModeNamesRoundTrip) {
    for (CloseMode mode : {CloseMode::Keep, CloseMode::Rst, CloseMode::RstAlways}) {
        std::string name(to_string(mode));
        Vars vars = {{"TCPFIX_CLOSE", name}};
        auto parsed = parse_config(vars);
        ASSERT_TRUE(std::holds_alternative<Config>(parsed)) << name;
        EXPECT_EQ(std::get<Config>(parsed).close, mode) << name;
    }
    for (LogLevel level :
         {LogLevel::Off, LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug}) {
        std::string name(to_string(level));
        Vars vars = {{"TCPFIX_LOG", name}};
        auto parsed = parse_config(vars);
        ASSERT_TRUE(std::holds_alternative<Config>(parsed)) << name;
        EXPECT_EQ(std::get<Config>(parsed).log, level) << name;
    }
}

TEST(Refusal, FormatsTheSpecLine) {
    EXPECT_EQ(refusal("TCPFIX_X", "v", "something"), "tcpfix: TCPFIX_X=\"v\": expected something");
    EXPECT_EQ(refusal("TCPFIX_X", "a\tb\x7f", "y"), "tcpfix: TCPFIX_X=\"a?b?\": expected y");
}

// ---------------------------------------------------------------------------
// The duration and rate grammars, with their exact values.

struct DurationCase {
    std::string text;
    std::optional<std::int64_t> ns;
};

void PrintTo(const DurationCase& c, std::ostream* os) {
    *os << '"' << c.text << '"';
}

class Duration : public ::testing::TestWithParam<DurationCase> {};

TEST_P(Duration, ParsesExactly) {
    EXPECT_EQ(parse_duration_ns(GetParam().text), GetParam().ns);
}

constexpr std::int64_t kUs = 1000, kMs = 1000 * kUs, kS = 1000 * kMs;

INSTANTIATE_TEST_SUITE_P(
    Table, Duration,
    ::testing::Values(
        DurationCase{"250ms", 250 * kMs}, DurationCase{"2s", 2 * kS},
        DurationCase{"500us", 500 * kUs}, DurationCase{"1.5s", 1500 * kMs}, DurationCase{"1ns", 1},
        DurationCase{"0.5us", 500}, DurationCase{"1.25ms", 1250 * kUs}, DurationCase{"0.001s", kMs},
        DurationCase{"0.000000001s", 1}, DurationCase{"007ms", 7 * kMs},
        DurationCase{"3600s", 3600 * kS}, DurationCase{"3600000ms", 3600 * kS},
        DurationCase{"3599.999999999s", 3600 * kS - 1},
        DurationCase{"3600.000000001s", std::nullopt}, DurationCase{"3601s", std::nullopt},
        DurationCase{"0.0000000001s", std::nullopt}, DurationCase{"1.5ns", std::nullopt},
        DurationCase{"0s", std::nullopt}, DurationCase{"0.0ms", std::nullopt},
        DurationCase{"250", std::nullopt}, DurationCase{"5m", std::nullopt},
        DurationCase{"", std::nullopt}, DurationCase{"s", std::nullopt},
        DurationCase{"-1ms", std::nullopt}, DurationCase{"1..5s", std::nullopt},
        DurationCase{"1.5", std::nullopt}, DurationCase{"nanms", std::nullopt},
        DurationCase{"18446744073709551617ns", std::nullopt}, DurationCase{"1ms1s", std::nullopt}),
    [](const auto& info) { return row_name(info.index, info.param.text); });

struct RateCase {
    std::string text;
    std::optional<double> per_s;
};

void PrintTo(const RateCase& c, std::ostream* os) {
    *os << '"' << c.text << '"';
}

class Rate : public ::testing::TestWithParam<RateCase> {};

TEST_P(Rate, ParsesToPerSecond) {
    auto got = parse_rate_per_s(GetParam().text);
    ASSERT_EQ(got.has_value(), GetParam().per_s.has_value()) << got.value_or(-1);
    if (got) {
        EXPECT_DOUBLE_EQ(*got, *GetParam().per_s);
    }
}

INSTANTIATE_TEST_SUITE_P(
    Table, Rate,
    ::testing::Values(RateCase{"100/s", 100}, RateCase{"30/min", 0.5}, RateCase{"1/s", 1},
                      RateCase{"1.5/s", 1.5}, RateCase{"90/min", 1.5},
                      RateCase{"10000000/s", 10'000'000}, RateCase{"600000000/min", 10'000'000},
                      RateCase{"10000001/s", std::nullopt}, RateCase{"0/s", std::nullopt},
                      RateCase{"0.0/min", std::nullopt}, RateCase{"100", std::nullopt},
                      RateCase{"100/h", std::nullopt}, RateCase{"/min", std::nullopt},
                      RateCase{"", std::nullopt}),
    [](const auto& info) { return row_name(info.index, info.param.text); });

TEST(FormatDuration, IsReadable) {
    EXPECT_EQ(format_duration(1'500'000'000), "1.5 s");
    EXPECT_EQ(format_duration(2'000'000'000), "2 s");
    EXPECT_EQ(format_duration(250'000'000), "250 ms");
    EXPECT_EQ(format_duration(40'000), "40 us");
    EXPECT_EQ(format_duration(999), "999 ns");
    EXPECT_EQ(format_duration(1), "1 ns");
}

TEST(FormatDuration, RoundTripsThroughTheParser) {
    for (std::int64_t ns : {1LL, 999LL, 40'000LL, 250'000'000LL, 1'500'000'000LL}) {
        std::string text = format_duration(ns);
        text.erase(std::remove(text.begin(), text.end(), ' '), text.end());
        EXPECT_EQ(parse_duration_ns(text), ns) << text;
    }
}

}  // namespace
}  // namespace tcpfix::policy
