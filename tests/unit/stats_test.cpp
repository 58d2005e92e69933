// The stats JSON (TCPFIX_STATS): valid JSON, the SPEC's keys with the right
// figures, errno names, the fixed buffer's bound, and Counters::reset.
#include "policy/stats.hpp"

#include "policy/errno_names.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tcpfix::policy {
namespace {

// A strict reader for the JSON subset a stats file may hold (objects, arrays,
// strings, numbers, literals). Returns the top-level object's members as raw
// value text, or nullopt if `text` is not exactly one JSON object.
class JsonReader {
  public:
    static std::optional<std::map<std::string, std::string>> top_object(std::string_view text) {
        JsonReader r(text);
        std::map<std::string, std::string> members;
        r.skip_ws();
        if (!r.object(&members)) return std::nullopt;
        r.skip_ws();
        if (r.pos_ != text.size()) return std::nullopt;
        return members;
    }

  private:
    explicit JsonReader(std::string_view s) : s_(s) {}

    bool eat(char ch) {
        if (pos_ < s_.size() && s_[pos_] == ch) {
            ++pos_;
            return true;
        }
        return false;
    }
    void skip_ws() {
        while (pos_ < s_.size() && std::strchr(" \t\r\n", s_[pos_]) != nullptr) ++pos_;
    }

    bool object(std::map<std::string, std::string>* members) {
        if (!eat('{')) return false;
        skip_ws();
        if (eat('}')) return true;
        while (true) {
            skip_ws();
            std::string key;
            if (!string(&key)) return false;
            skip_ws();
            if (!eat(':')) return false;
            skip_ws();
            std::size_t start = pos_;
            if (!value()) return false;
            if (members != nullptr && !members->emplace(key, s_.substr(start, pos_ - start)).second)
                return false;  // duplicate key
            skip_ws();
            if (eat('}')) return true;
            if (!eat(',')) return false;
        }
    }

    bool array() {
        if (!eat('[')) return false;
        skip_ws();
        if (eat(']')) return true;
        while (true) {
            skip_ws();
            if (!value()) return false;
            skip_ws();
            if (eat(']')) return true;
            if (!eat(',')) return false;
        }
    }

    bool string(std::string* out) {
        if (!eat('"')) return false;
        while (pos_ < s_.size()) {
            char ch = s_[pos_++];
            if (ch == '"') return true;
            if (static_cast<unsigned char>(ch) < 0x20) return false;
            if (ch == '\\') {
                if (pos_ >= s_.size()) return false;
                char esc = s_[pos_++];
                if (esc == 'u') {
                    for (int i = 0; i < 4; ++i)
                        if (pos_ >= s_.size() ||
                            !std::isxdigit(static_cast<unsigned char>(s_[pos_++])))
                            return false;
                } else if (std::strchr("\"\\/bfnrt", esc) == nullptr) {
                    return false;
                }
            }
            if (out != nullptr) *out += ch;
        }
        return false;
    }

    bool number() {
        std::size_t start = pos_;
        eat('-');
        std::size_t digits = pos_;
        while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) ++pos_;
        if (pos_ == digits) return false;
        if (s_[digits] == '0' && pos_ - digits > 1) return false;  // no leading zeros
        if (eat('.')) {
            std::size_t frac = pos_;
            while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) ++pos_;
            if (pos_ == frac) return false;
        }
        return pos_ > start;
    }

    bool value() {
        if (pos_ >= s_.size()) return false;
        char ch = s_[pos_];
        if (ch == '{') return object(nullptr);
        if (ch == '[') return array();
        if (ch == '"') return string(nullptr);
        for (std::string_view lit : {"true", "false", "null"}) {
            if (s_.substr(pos_, lit.size()) == lit) {
                pos_ += lit.size();
                return true;
            }
        }
        return number();
    }

    std::string_view s_;
    std::size_t pos_ = 0;
};

std::string render(const Counters& c, std::string_view tag = "arm-b", long pid = 4242,
                   std::string_view policy = "") {
    std::vector<char> buf(64 * 1024);
    std::size_t n = render_stats_json(c, tag, pid, policy, buf.data(), buf.size());
    EXPECT_GT(n, 0u) << "a 64 KiB buffer must be enough";
    return std::string(buf.data(), n);
}

TEST(JsonReader, AcceptsAndRefuses) {  // the checker must itself be able to fail
    EXPECT_TRUE(JsonReader::top_object("{}").has_value());
    EXPECT_TRUE(JsonReader::top_object("{\"a\":{\"b\":[1,2.5,\"x\"]},\"c\":-3}\n").has_value());
    EXPECT_FALSE(JsonReader::top_object("{\"a\":1,}").has_value());
    EXPECT_FALSE(JsonReader::top_object("{\"a\":1").has_value());
    EXPECT_FALSE(JsonReader::top_object("{\"a\":01}").has_value());
    EXPECT_FALSE(JsonReader::top_object("{\"a\":1,\"a\":2}").has_value());
    EXPECT_FALSE(JsonReader::top_object("{\"a\":\"x\"y\"}").has_value());
    EXPECT_FALSE(JsonReader::top_object("{} {}").has_value());
}

TEST(StatsJson, FreshCountersAreValidJsonWithEverySpecKey) {
    Counters c;
    std::string json = render(c);
    EXPECT_EQ(json.front(), '{');
    EXPECT_TRUE(json.ends_with("}\n")) << "one line, newline-terminated";
    EXPECT_EQ(json.find('\n'), json.size() - 1);
    auto members = JsonReader::top_object(json);
    ASSERT_TRUE(members.has_value()) << json;
    for (const char* key :
         {"tag", "pid", "sockets", "connects", "connect_errors", "connect_timeouts",
          "connect_retries", "closes_rst", "closes_graceful_unsent", "throttled_ms",
          "close_wait_reaped", "source_addr_binds"}) {
        EXPECT_EQ(members->count(key), 1u) << "SPEC key missing: " << key;
    }
    EXPECT_EQ(members->at("tag"), "\"arm-b\"");
    EXPECT_EQ(members->at("pid"), "4242");
    EXPECT_EQ(members->at("connect_errors"), "{}");
    EXPECT_EQ(members->at("policy"), "{}");
    EXPECT_EQ(members->at("closes_rst"), "0");
}

// Each counter lands under its own key (a swapped format argument would not).
TEST(StatsJson, EveryCounterUnderItsKey) {
    struct Field {
        std::atomic<std::uint64_t> Counters::*member;
        const char* key;
    };
    const Field fields[] = {
        {&Counters::sockets, "sockets"},
        {&Counters::connects, "connects"},
        {&Counters::connects_matched, "connects_matched"},
        {&Counters::connect_timeouts, "connect_timeouts"},
        {&Counters::connect_retries, "connect_retries"},
        {&Counters::closes, "closes"},
        {&Counters::closes_rst, "closes_rst"},
        {&Counters::closes_rst_after_wait, "closes_rst_after_wait"},
        {&Counters::closes_graceful_unsent, "closes_graceful_unsent"},
        {&Counters::closes_graceful_shared, "closes_graceful_shared"},
        {&Counters::ack_wait_us, "ack_wait_us"},
        {&Counters::throttled_ms, "throttled_ms"},
        {&Counters::close_wait_reaped, "close_wait_reaped"},
        {&Counters::source_addr_binds, "source_addr_binds"},
    };
    Counters c;
    std::uint64_t value = 101;
    for (const auto& f : fields) bump(c.*(f.member), value++);
    auto members = JsonReader::top_object(render(c));
    ASSERT_TRUE(members.has_value());
    value = 101;
    for (const auto& f : fields) {
        ASSERT_EQ(members->count(f.key), 1u) << f.key;
        EXPECT_EQ(members->at(f.key), std::to_string(value++)) << f.key;
    }
}

TEST(StatsJson, ExactSubstrings) {
    Counters c;
    bump(c.closes_rst, 3);
    c.count_connect_error(ECONNREFUSED);
    c.count_connect_error(ECONNREFUSED);
    std::string json = render(c);
    EXPECT_NE(json.find("\"closes_rst\":3"), std::string::npos) << json;
    EXPECT_NE(json.find("\"connect_errors\":{\"ECONNREFUSED\":2}"), std::string::npos) << json;
    EXPECT_NE(json.find("\"tag\":\"arm-b\",\"pid\":4242"), std::string::npos) << json;
}

TEST(StatsJson, ErrorsInErrnoOrderAndHugeValues) {
    Counters c;
    c.count_connect_error(ECONNREFUSED);  // 111
    c.count_connect_error(ETIMEDOUT);     // 110
    c.count_connect_error(EADDRNOTAVAIL);
    bump(c.connect_errors[ECONNREFUSED], 1);
    bump(c.sockets, UINT64_MAX);
    std::string json = render(c);
    EXPECT_NE(json.find("\"connect_errors\":{\"EADDRNOTAVAIL\":1,\"ETIMEDOUT\":1,"
                        "\"ECONNREFUSED\":2}"),
              std::string::npos)
        << json;
    EXPECT_NE(json.find("\"sockets\":18446744073709551615"), std::string::npos) << json;
    ASSERT_TRUE(JsonReader::top_object(json).has_value()) << json;
}

TEST(StatsJson, OutOfRangeErrnoIsNotCounted) {
    Counters c;
    for (int err : {0, -1, -ECONNREFUSED, Counters::kMaxErrno, 1000}) c.count_connect_error(err);
    auto members = JsonReader::top_object(render(c));
    ASSERT_TRUE(members.has_value());
    EXPECT_EQ(members->at("connect_errors"), "{}");
}

TEST(StatsJson, PolicyObjectIsEmbedded) {
    Counters c;
    std::string json = render(c, "t", 1, "{\"TCPFIX_CLOSE\":\"rst\",\"TCPFIX_MATCH\":\":6379\"}");
    auto members = JsonReader::top_object(json);
    ASSERT_TRUE(members.has_value()) << json;
    EXPECT_EQ(members->at("policy"), "{\"TCPFIX_CLOSE\":\"rst\",\"TCPFIX_MATCH\":\":6379\"}");
}

TEST(StatsJson, EmptyTagIsAnEmptyString) {
    Counters c;
    auto members = JsonReader::top_object(render(c, ""));
    ASSERT_TRUE(members.has_value());
    EXPECT_EQ(members->at("tag"), "\"\"");
}

TEST(StatsJson, TooSmallBufferYieldsZeroAndStaysInBounds) {
    Counters c;
    c.count_connect_error(ECONNREFUSED);
    bump(c.closes_rst, 3);
    std::string full = render(c);
    const std::size_t need = full.size();

    for (std::size_t cap : {std::size_t{0}, std::size_t{1}, std::size_t{10}, need / 2, need - 1}) {
        SCOPED_TRACE("cap " + std::to_string(cap));
        std::vector<char> buf(need + 16, '#');
        EXPECT_EQ(render_stats_json(c, "arm-b", 4242, "", buf.data(), cap), 0u);
        for (std::size_t i = cap; i < buf.size(); ++i)
            ASSERT_EQ(buf[i], '#') << "wrote past cap at " << i;
    }
    std::vector<char> exact(need + 16, '#');
    EXPECT_EQ(render_stats_json(c, "arm-b", 4242, "", exact.data(), need), need);
    EXPECT_EQ(std::string(exact.data(), need), full);
    EXPECT_EQ(exact[need], '#');
}

TEST(StatsJson, ZeroCapWithNullBufferIsSafe) {
    Counters c;
    EXPECT_EQ(render_stats_json(c, "t", 1, "", nullptr, 0), 0u);
}

TEST(CountersReset, ZeroesEverything) {
    Counters fresh;
    const std::string zero = render(fresh);

    Counters c;
    for (auto* a : {&c.sockets, &c.connects, &c.connects_matched, &c.connect_timeouts,
                    &c.connect_retries, &c.closes, &c.closes_rst, &c.closes_rst_after_wait,
                    &c.closes_graceful_unsent, &c.closes_graceful_shared, &c.ack_wait_us,
                    &c.throttled_ms, &c.close_wait_reaped, &c.source_addr_binds})
        bump(*a, 7);
    for (int e = 1; e < Counters::kMaxErrno; ++e) c.count_connect_error(e);
    ASSERT_NE(render(c), zero);

    c.reset();
    EXPECT_EQ(render(c), zero);
    for (int e = 0; e < Counters::kMaxErrno; ++e) EXPECT_EQ(c.connect_errors[e].load(), 0u) << e;
}

// ---------------------------------------------------------------------------

struct QuoteCase {
    std::string in;
    std::string out;
};

TEST(JsonQuote, EscapesWhatJsonRequires) {
    const QuoteCase cases[] = {
        {"", "\"\""},
        {"arm-b", "\"arm-b\""},
        {"a\"b", "\"a\\\"b\""},
        {"a\\b", "\"a\\\\b\""},
        {"a\nb", "\"a\\nb\""},
        {"a\tb", "\"a\\tb\""},
        {std::string("a\0b", 3), "\"a\\u0000b\""},
        {"\x01", "\"\\u0001\""},
        {"\x1f", "\"\\u001f\""},
        {"\r", "\"\\u000d\""},
        {"/tmp/x.json", "\"/tmp/x.json\""},
        {"caf\xc3\xa9", "\"caf\xc3\xa9\""},
    };
    for (const auto& c : cases) {
        EXPECT_EQ(json_quote(c.in), c.out) << "input of " << c.in.size() << " bytes";
        auto members = JsonReader::top_object("{\"k\":" + json_quote(c.in) + "}");
        EXPECT_TRUE(members.has_value()) << json_quote(c.in);
    }
}

TEST(ErrnoName, NamesAndFallbacks) {
    EXPECT_EQ(errno_name(ECONNREFUSED), "ECONNREFUSED");
    EXPECT_EQ(errno_name(ETIMEDOUT), "ETIMEDOUT");
    EXPECT_EQ(errno_name(EADDRNOTAVAIL), "EADDRNOTAVAIL");
    EXPECT_EQ(errno_name(ECONNRESET), "ECONNRESET");
    EXPECT_EQ(errno_name(EHOSTUNREACH), "EHOSTUNREACH");
    EXPECT_EQ(errno_name(9999), "E9999");
    EXPECT_EQ(errno_name(-1), "E-1");
}

TEST(ErrnoName, MatchesTheStatsKeys) {
    // Every errno the stats can name renders under errno_name's spelling.
    for (int e = 1; e < Counters::kMaxErrno; ++e) {
        Counters c;
        c.count_connect_error(e);
        auto members = JsonReader::top_object(render(c));
        ASSERT_TRUE(members.has_value()) << e;
        EXPECT_EQ(members->at("connect_errors"), "{\"" + errno_name(e) + "\":1}") << e;
    }
}

}  // namespace
}  // namespace tcpfix::policy

// The library's own table (glibc's strerrorname_np is 2.32, above the floor)
// names every errno exactly as the build machine's glibc does.
TEST(ErrnoName, SameAsGlibc) {
    int named = 0;
    EXPECT_EQ(tcpfix::policy::errno_symbol(0), nullptr);  // glibc says "0": not an error
    EXPECT_EQ(tcpfix::policy::errno_symbol(-1), nullptr);
    for (int e = 1; e < 300; ++e) {
        const char* ours = tcpfix::policy::errno_symbol(e);
        const char* glibc = strerrorname_np(e);
        if (glibc == nullptr) {
            EXPECT_EQ(ours, nullptr) << e;
            continue;
        }
        ASSERT_NE(ours, nullptr) << e << " is " << glibc;
        EXPECT_STREQ(ours, glibc) << e;
        ++named;
    }
    EXPECT_GE(named, 130);
}
