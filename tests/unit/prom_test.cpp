// The Prometheus stats (TCPFIX_STATS=....prom): exposition-format grammar,
// every family's HELP/TYPE once before its samples, label escaping, the top
// destinations plus "other", the fixed buffer's bound, and no allocation.
// (The integration test test_prom_stats.py checks a real process's file with
// a stricter validator and promtool.)
#include <algorithm>
#include "policy/prom.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <memory>
#include <new>
#include <regex>
#include <set>
#include <string>
#include <utility>
#include <vector>

// Counts allocations made while g_count_allocations is set: render_stats_prom
// runs on the close path and must not allocate.
namespace {
std::atomic<bool> g_count_allocations{false};
std::atomic<int> g_allocations{0};
}  // namespace

// Out of line: inlined into a delete expression, GCC 12 takes the free() for
// a mismatched deallocation (-Wmismatched-new-delete).
[[gnu::noinline]] void* operator new(std::size_t n) {
    if (g_count_allocations.load(std::memory_order_relaxed)) g_allocations.fetch_add(1);
    if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
    throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept {
    std::free(p);
}
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}

namespace tcpfix::policy {
namespace {

using Policy = std::vector<std::pair<std::string, std::string>>;

// The exposition text parsed strictly: returns "" and fills `samples`
// ("name{labels}" as written -> value) and `types`, or the first problem.
struct Exposition {
    std::map<std::string, std::string> samples;
    std::map<std::string, std::string> types;
    std::vector<std::string> family_order;
};

std::string parse_exposition(const std::string& text, Exposition* out) {
    static const std::regex help(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) \S.*)");
    static const std::regex type(
        R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|summary|histogram|untyped))");
    static const std::regex label(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)")re");
    static const std::regex sample(
        R"re(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ([-+]?(?:[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?|Inf|NaN)))re");
    if (text.empty() || text.back() != '\n') return "no trailing newline";
    std::set<std::string> helped;
    std::size_t start = 0;
    while (start < text.size()) {
        std::size_t end = text.find('\n', start);
        std::string line = text.substr(start, end - start);
        start = end + 1;
        std::smatch m;
        if (std::regex_match(line, m, help)) {
            if (!helped.insert(m[1]).second) return "second HELP: " + line;
        } else if (std::regex_match(line, m, type)) {
            if (out->types.count(m[1]) != 0) return "second TYPE: " + line;
            if (helped.count(m[1]) == 0) return "TYPE without HELP first: " + line;
            out->types[m[1]] = m[2];
            out->family_order.push_back(m[1]);
        } else if (std::regex_match(line, m, sample)) {
            std::string name = m[1];
            if (out->family_order.empty() || out->family_order.back() != name)
                return "sample outside its family: " + line;
            std::string labels = m[3];
            std::set<std::string> names;
            for (std::size_t pos = 0; pos < labels.size();) {
                std::smatch lm;
                std::string rest = labels.substr(pos);
                if (!std::regex_search(rest, lm, label, std::regex_constants::match_continuous))
                    return "bad label in: " + line;
                if (!names.insert(lm[1]).second) return "repeated label in: " + line;
                pos += static_cast<std::size_t>(lm.length(0));
                if (pos < labels.size()) {
                    if (labels[pos] != ',') return "labels not separated by ',': " + line;
                    ++pos;
                }
            }
            std::string series = name + "{" + labels + "}";
            if (!out->samples.emplace(series, m[4]).second) return "duplicate series: " + line;
        } else {
            return "not a valid line: '" + line + "'";
        }
    }
    return "";
}

Endpoint ep4(const char* ip, std::uint16_t port) {
    return Endpoint{*parse_ip(ip), port};
}

std::string render(const Counters& c, const StatsContext& ctx, const Policy& policy = {},
                   std::size_t cap = 65536) {
    std::string buf(cap, '\0');
    std::size_t n = render_stats_prom(c, ctx, policy, buf.data(), buf.size());
    buf.resize(n);
    return buf;
}

StatsContext context(std::string_view tag = "arm-b", long pid = 4242) {
    StatsContext ctx;
    ctx.tag = tag;
    ctx.pid = pid;
    return ctx;
}

TEST(PromValidator, RefusesWhatTheFormatForbids) {  // the checker must itself be able to fail
    Exposition e;
    EXPECT_EQ(parse_exposition("# HELP a x\n# TYPE a gauge\na 1\n", &e), "");
    for (const char* bad : {
             "# HELP a x\n# TYPE a gauge\na 1",                           // no newline at end
             "# HELP a x\n# TYPE a gauge\na{b=\"1\"} 1\na{b=\"1\"} 2\n",  // duplicate series
             "# HELP a x\n# TYPE a gauge\n# HELP a x\n",                  // second HELP
             "a 1\n",                                                     // no TYPE
             "# HELP a x\n# TYPE a gauge\na{b=\"\"\"} 1\n",               // unescaped quote
             "# HELP a x\n# TYPE a gauge\na{b=\"\\t\"} 1\n",              // unknown escape
             "# HELP a x\n# TYPE a gauge\na{1b=\"x\"} 1\n",               // label name
             "# HELP a x\n# TYPE a gauge\na one\n",                       // value
             "# HELP a-b x\n# TYPE a-b gauge\na-b 1\n",                   // metric name
             "# HELP a x\n# TYPE a gauge\na{b=\"1\",b=\"2\"} 1\n",        // repeated label
         }) {
        Exposition f;
        EXPECT_NE(parse_exposition(bad, &f), "") << bad;
    }
}

TEST(StatsProm, FreshCountersParseWithEveryFamilyTyped) {
    auto c = std::make_unique<Counters>();
    std::string text = render(*c, context());
    Exposition e;
    ASSERT_EQ(parse_exposition(text, &e), "") << text;
    EXPECT_EQ(e.samples.at("tcpfix_info{tag=\"arm-b\",pid=\"4242\"}"), "1");
    EXPECT_EQ(e.samples.at("tcpfix_sockets_total{tag=\"arm-b\"}"), "0");
    EXPECT_EQ(e.samples.at("tcpfix_connect_latency_p50_seconds{tag=\"arm-b\"}"), "0");
    for (const auto& [name, type] : e.types) {
        EXPECT_EQ(name.rfind("tcpfix_", 0), 0u) << name;
        // Counters, and only counters, end in _total.
        bool total = name.size() > 6 && name.compare(name.size() - 6, 6, "_total") == 0;
        EXPECT_EQ(total, type == "counter") << name << " is a " << type;
    }
    for (const char* family :
         {"tcpfix_info", "tcpfix_policy_info", "tcpfix_connects_total",
          "tcpfix_connect_errors_total", "tcpfix_closes_rst_total",
          "tcpfix_closes_graceful_unsent_total", "tcpfix_throttled_seconds_total",
          "tcpfix_close_wait_reaped_total", "tcpfix_source_addr_binds_total",
          "tcpfix_destination_connects_total", "tcpfix_destination_failures_total",
          "tcpfix_destination_leaks_total", "tcpfix_destination_reaped_total"})
        EXPECT_EQ(e.types.count(family), 1u) << family;
    // No destination yet: no "other" either.
    EXPECT_EQ(text.find("destination="), std::string::npos);
}

TEST(StatsProm, EveryCounterUnderItsName) {
    auto c = std::make_unique<Counters>();
    bump(c->sockets, 11);
    bump(c->connects, 12);
    bump(c->connects_matched, 13);
    c->count_connect_error(ECONNREFUSED);
    c->count_connect_error(ECONNREFUSED);
    c->count_connect_error(ETIMEDOUT);
    bump(c->connect_timeouts, 14);
    bump(c->connect_retries, 15);
    bump(c->closes, 16);
    bump(c->closes_rst, 17);
    bump(c->closes_rst_after_wait, 18);
    bump(c->closes_graceful_unsent, 19);
    bump(c->closes_graceful_shared, 20);
    bump(c->ack_wait_us, 1'500'000);
    bump(c->closes_rst_dup2, 31);
    bump(c->closes_at_exit, 32);
    bump(c->closes_rst_at_exit, 33);
    bump(c->closes_held, 34);
    bump(c->closes_held_max, 35);
    bump(c->closes_held_full, 36);
    bump(c->closes_rst_background, 37);
    bump(c->closes_held_peer_closed, 38);
    bump(c->held_wait_us, 2'500'000);
    bump(c->throttled_ms, 2500);
    bump(c->close_wait_reaped, 21);
    bump(c->source_addr_binds_by[0], 22);
    bump(c->source_addr_binds_by[1], 23);
    bump(c->source_addr_exhausted_by[1], 24);
    c->connect_latency.record_ns(1'000'000'000);  // 1 s: max and median of one sample
    std::string_view names[] = {"127.0.0.2", "::1"};
    auto ctx = context("t");
    ctx.source_addr_names = names;
    ctx.source_addr_count = 2;
    std::string text = render(*c, ctx);
    Exposition e;
    ASSERT_EQ(parse_exposition(text, &e), "") << text;
    const std::map<std::string, std::string> want = {
        {"tcpfix_sockets_total{tag=\"t\"}", "11"},
        {"tcpfix_connects_total{tag=\"t\"}", "12"},
        {"tcpfix_connects_matched_total{tag=\"t\"}", "13"},
        {"tcpfix_connect_errors_total{tag=\"t\",errno=\"ECONNREFUSED\"}", "2"},
        {"tcpfix_connect_errors_total{tag=\"t\",errno=\"ETIMEDOUT\"}", "1"},
        {"tcpfix_connect_timeouts_total{tag=\"t\"}", "14"},
        {"tcpfix_connect_retries_total{tag=\"t\"}", "15"},
        {"tcpfix_connect_latency_max_seconds{tag=\"t\"}", "1"},
        {"tcpfix_connect_latency_p50_seconds{tag=\"t\"}", "1"},
        {"tcpfix_connects_completed_total{tag=\"t\"}", "1"},
        {"tcpfix_closes_total{tag=\"t\"}", "16"},
        {"tcpfix_closes_rst_total{tag=\"t\"}", "17"},
        {"tcpfix_closes_rst_after_wait_total{tag=\"t\"}", "18"},
        {"tcpfix_closes_graceful_unsent_total{tag=\"t\"}", "19"},
        {"tcpfix_closes_graceful_shared_total{tag=\"t\"}", "20"},
        {"tcpfix_close_ack_wait_seconds_total{tag=\"t\"}", "1.5"},
        {"tcpfix_closes_rst_dup2_total{tag=\"t\"}", "31"},
        {"tcpfix_closes_at_exit_total{tag=\"t\"}", "32"},
        {"tcpfix_closes_rst_at_exit_total{tag=\"t\"}", "33"},
        {"tcpfix_closes_held_total{tag=\"t\"}", "34"},
        {"tcpfix_closes_held_max{tag=\"t\"}", "35"},
        {"tcpfix_closes_held_full_total{tag=\"t\"}", "36"},
        {"tcpfix_closes_rst_background_total{tag=\"t\"}", "37"},
        {"tcpfix_closes_held_peer_closed_total{tag=\"t\"}", "38"},
        {"tcpfix_held_ack_wait_seconds_total{tag=\"t\"}", "2.5"},
        {"tcpfix_throttled_seconds_total{tag=\"t\"}", "2.5"},
        {"tcpfix_close_wait_reaped_total{tag=\"t\"}", "21"},
        {"tcpfix_source_addr_binds_total{tag=\"t\",source=\"127.0.0.2\"}", "22"},
        {"tcpfix_source_addr_binds_total{tag=\"t\",source=\"::1\"}", "23"},
        {"tcpfix_source_addr_eaddrnotavail_total{tag=\"t\",source=\"127.0.0.2\"}", "0"},
        {"tcpfix_source_addr_eaddrnotavail_total{tag=\"t\",source=\"::1\"}", "24"},
    };
    for (const auto& [series, value] : want) {
        ASSERT_EQ(e.samples.count(series), 1u) << series << " missing in\n" << text;
        EXPECT_EQ(e.samples.at(series), value) << series;
    }
}

TEST(StatsProm, LabelValuesAreEscaped) {
    auto c = std::make_unique<Counters>();
    // The library refuses such a tag; the renderer must still not break the format.
    Policy policy = {{"TCPFIX_LOG_FILE", "/tmp/a \"b\"\\c\nd"}, {"TCPFIX_TAG", "x"}};
    std::string text = render(*c, context("q\"b\\n\nl"), policy);
    Exposition e;
    ASSERT_EQ(parse_exposition(text, &e), "") << text;
    EXPECT_EQ(e.samples.count(R"(tcpfix_info{tag="q\"b\\n\nl",pid="4242"})"), 1u) << text;
    EXPECT_EQ(
        e.samples.count(
            R"(tcpfix_policy_info{tag="q\"b\\n\nl",variable="TCPFIX_LOG_FILE",value="/tmp/a \"b\"\\c\nd"})"),
        1u)
        << text;
}

TEST(StatsProm, TopDestinationsByConnectsAndTheRestAsOther) {
    auto c = std::make_unique<Counters>();
    // 300 destinations (more than the table's 256: the excess share its own
    // "other" entry); destination i gets i+1 connects, i failures.
    std::uint64_t total = 0, total_failures = 0;
    for (int i = 0; i < 300; ++i) {
        auto& d = c->destinations.get(ep4("127.0.0.1", static_cast<std::uint16_t>(1000 + i)));
        bump(d.connects, static_cast<std::uint64_t>(i + 1));
        bump(d.failures, static_cast<std::uint64_t>(i));
        total += static_cast<std::uint64_t>(i + 1);
        total_failures += static_cast<std::uint64_t>(i);
    }
    std::string text = render(*c, context());
    Exposition e;
    ASSERT_EQ(parse_exposition(text, &e), "") << text;
    // Named: the 20 busiest of the 256 the table names (ports 1236..1255),
    // busiest first; everything else is "other".
    std::vector<std::string> named;
    std::uint64_t sum = 0, failures = 0;
    for (const auto& [series, value] : e.samples) {
        if (series.rfind("tcpfix_destination_connects_total{", 0) == 0) sum += std::stoull(value);
        if (series.rfind("tcpfix_destination_failures_total{", 0) == 0)
            failures += std::stoull(value);
    }
    EXPECT_EQ(sum, total);
    EXPECT_EQ(failures, total_failures);
    std::size_t pos = 0;
    for (int port = 1255; port > 1235; --port) {
        std::string series =
            "tcpfix_destination_connects_total{tag=\"arm-b\",destination=\"127.0.0.1:" +
            std::to_string(port) + "\"} " + std::to_string(port - 1000 + 1) + "\n";
        auto at = text.find(series);
        ASSERT_NE(at, std::string::npos) << series;
        EXPECT_GT(at, pos) << "not in descending order: " << series;
        pos = at;
    }
    std::size_t destination_series = 0;
    for (const auto& [series, value] : e.samples)
        if (series.rfind("tcpfix_destination_connects_total{", 0) == 0) ++destination_series;
    EXPECT_EQ(destination_series, static_cast<std::size_t>(kPromTopDestinations) + 1);
    EXPECT_EQ(
        e.samples.count("tcpfix_destination_leaks_total{tag=\"arm-b\",destination=\"other\"}"), 1u);
}

TEST(StatsProm, TiesKeepTableOrderAndIPv6IsBracketed) {
    auto c = std::make_unique<Counters>();
    bump(c->destinations.get(ep4("10.0.0.1", 5432)).connects, 3);
    bump(c->destinations.get(Endpoint{*parse_ip("::1"), 6379}).connects, 3);
    bump(c->destinations.get(ep4("10.0.0.2", 5432)).connects, 7);
    std::string text = render(*c, context());
    Exposition e;
    ASSERT_EQ(parse_exposition(text, &e), "") << text;
    auto a = text.find("destination=\"10.0.0.2:5432\"} 7");
    auto b = text.find("destination=\"10.0.0.1:5432\"} 3");
    auto v6 = text.find("destination=\"[::1]:6379\"} 3");
    ASSERT_NE(a, std::string::npos);
    ASSERT_NE(b, std::string::npos);
    ASSERT_NE(v6, std::string::npos) << text;
    EXPECT_LT(a, b);
    EXPECT_LT(a, v6);
    // The two tied at 3 come in the table's own order (which the hash decides).
    std::vector<std::string> table_order;
    c->destinations.for_each([&](const Endpoint& ep, const auto&) { table_order.push_back(to_string(ep)); });
    auto pos = [&](const std::string& name) {
        return std::find(table_order.begin(), table_order.end(), name) - table_order.begin();
    };
    ASSERT_NE(pos("10.0.0.1:5432"), pos("[::1]:6379"));
    EXPECT_EQ(b < v6, pos("10.0.0.1:5432") < pos("[::1]:6379")) << text;
    EXPECT_EQ(text.find("destination=\"other\""), std::string::npos);  // nothing beyond the top
}

TEST(StatsProm, TooSmallBufferYieldsZeroAndStaysInBounds) {
    auto c = std::make_unique<Counters>();
    for (int i = 0; i < 40; ++i)
        bump(c->destinations.get(ep4("127.0.0.1", static_cast<std::uint16_t>(2000 + i))).connects);
    std::string full = render(*c, context());
    ASSERT_GT(full.size(), 0u);
    for (std::size_t cap : {std::size_t{0}, std::size_t{1}, std::size_t{64}, full.size() - 1}) {
        std::vector<char> buf(cap + 16, '#');
        EXPECT_EQ(render_stats_prom(*c, context(), {}, buf.data(), cap), 0u) << cap;
        for (std::size_t i = cap; i < buf.size(); ++i)
            ASSERT_EQ(buf[i], '#') << "wrote past " << cap;
    }
    std::vector<char> exact(full.size());
    EXPECT_EQ(render_stats_prom(*c, context(), {}, exact.data(), exact.size()), full.size());
}

TEST(StatsProm, RendersWithoutAllocating) {
    auto c = std::make_unique<Counters>();
    for (int i = 0; i < 256; ++i)
        bump(c->destinations.get(ep4("127.0.0.1", static_cast<std::uint16_t>(3000 + i))).connects,
             static_cast<std::uint64_t>(i % 37));
    c->count_connect_error(ECONNREFUSED);
    c->connect_latency.record_ns(63'000);
    Policy policy = {{"TCPFIX_CLOSE", "rst"}, {"TCPFIX_STATS", "/tmp/x-%p.prom"}};
    std::string_view names[] = {"127.0.0.2"};
    auto ctx = context();
    ctx.source_addr_names = names;
    ctx.source_addr_count = 1;
    std::vector<char> buf(65536);
    g_allocations = 0;
    g_count_allocations = true;
    ::operator delete(::operator new(4));  // the counter works (a new-expression may be elided)
    ASSERT_EQ(g_allocations.exchange(0), 1);
    std::size_t n = render_stats_prom(*c, ctx, policy, buf.data(), buf.size());
    g_count_allocations = false;
    EXPECT_GT(n, 0u);
    EXPECT_EQ(g_allocations.load(), 0);
}

TEST(StatsProm, WantsPrometheusOnlyForDotProm) {
    EXPECT_TRUE(wants_prometheus("/var/lib/node_exporter/tcpfix-%p.prom"));
    EXPECT_TRUE(wants_prometheus("x.prom"));
    EXPECT_FALSE(wants_prometheus("/tmp/tcpfix.json"));
    EXPECT_FALSE(wants_prometheus("/tmp/tcpfix.prom.json"));
    EXPECT_FALSE(wants_prometheus("/tmp/prom"));
    EXPECT_FALSE(wants_prometheus(""));
}

}  // namespace
}  // namespace tcpfix::policy
