// Reconnect storms (policy/storm.hpp) with the clock as a plain number: the
// backoff delays, the schedule a storm of connects gets while a destination is
// failing, the connect rate (also under 8 racing threads), the judgement of an
// abandoned connection, the peer's FIN in bytes_received, and the bounded
// destination table.
#include "policy/storm.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace tcpfix::policy {
namespace {

using test::race;
using test::row_name;

constexpr std::int64_t kUs = 1'000;
constexpr std::int64_t kMs = 1'000'000;
constexpr std::int64_t kS = 1'000'000'000;

// TCPFIX_RECONNECT_BACKOFF=10ms:2s.
constexpr Backoff k10msTo2s{10 * kMs, 2 * kS};

// A CLOCK_MONOTONIC reading, far from 0 so that "now" and "no slot yet" differ.
constexpr std::int64_t kT0 = 1'000 * kS;

// n waits: first, first + step, first + 2 step, ...
std::vector<std::int64_t> spaced(std::int64_t first, std::int64_t step, int n) {
    std::vector<std::int64_t> out;
    for (int i = 0; i < n; ++i) out.push_back(first + i * step);
    return out;
}

// ---------------------------------------------------------------------------
// backoff_delay_ns: MIN doubling per consecutive failure, capped at MAX, then
// scaled by the jitter 0.5 + 0.5 * random01.

struct DelayCase {
    std::string why;
    Backoff backoff;
    std::uint32_t failures;
    double random01;
    std::int64_t expected_ns;
};

void PrintTo(const DelayCase& c, std::ostream* os) {
    *os << c.why << " (failures " << c.failures << ", random01 " << c.random01 << ", expect "
        << c.expected_ns << " ns)";
}

class BackoffDelay : public ::testing::TestWithParam<DelayCase> {};

TEST_P(BackoffDelay, Is) {
    const DelayCase& c = GetParam();
    EXPECT_EQ(backoff_delay_ns(c.backoff, c.failures, c.random01), c.expected_ns);
}

constexpr std::uint32_t kMaxFailures = std::numeric_limits<std::uint32_t>::max();

// random01 = 0: the jitter halves the delay, so 10 ms:2 s reads 5 ms, 10 ms, ... 1 s.
INSTANTIATE_TEST_SUITE_P(
    BackoffDelayHalfAtRandomZero, BackoffDelay,
    ::testing::Values(DelayCase{"no failure no wait", k10msTo2s, 0, 0.0, 0},
                      DelayCase{"no failure no wait whatever the jitter", k10msTo2s, 0, 0.9, 0},
                      DelayCase{"1 failure 10ms", k10msTo2s, 1, 0.0, 5 * kMs},
                      DelayCase{"2 failures 20ms", k10msTo2s, 2, 0.0, 10 * kMs},
                      DelayCase{"3 failures 40ms", k10msTo2s, 3, 0.0, 20 * kMs},
                      DelayCase{"4 failures 80ms", k10msTo2s, 4, 0.0, 40 * kMs},
                      DelayCase{"5 failures 160ms", k10msTo2s, 5, 0.0, 80 * kMs},
                      DelayCase{"6 failures 320ms", k10msTo2s, 6, 0.0, 160 * kMs},
                      DelayCase{"7 failures 640ms", k10msTo2s, 7, 0.0, 320 * kMs},
                      DelayCase{"8 failures 1280ms", k10msTo2s, 8, 0.0, 640 * kMs},
                      DelayCase{"9 failures capped at 2s", k10msTo2s, 9, 0.0, 1 * kS},
                      DelayCase{"10 failures capped", k10msTo2s, 10, 0.0, 1 * kS},
                      DelayCase{"40 failures capped", k10msTo2s, 40, 0.0, 1 * kS},
                      DelayCase{"63 failures no overflow", k10msTo2s, 63, 0.0, 1 * kS},
                      DelayCase{"64 failures no overflow", k10msTo2s, 64, 0.0, 1 * kS},
                      DelayCase{"uint32 max failures", k10msTo2s, kMaxFailures, 0.0, 1 * kS},
                      DelayCase{"negative random is clamped to 0", k10msTo2s, 1, -3.0, 5 * kMs}),
    [](const auto& info) { return row_name(info.index, info.param.why); });

// Jitter factors that are exact in binary: 0.75 and 0.875.
INSTANTIATE_TEST_SUITE_P(
    BackoffDelayExactJitter, BackoffDelay,
    ::testing::Values(DelayCase{"random half 1 failure", k10msTo2s, 1, 0.5, 7'500 * kUs},
                      DelayCase{"random half 2 failures", k10msTo2s, 2, 0.5, 15 * kMs},
                      DelayCase{"random half 8 failures", k10msTo2s, 8, 0.5, 960 * kMs},
                      DelayCase{"random half capped", k10msTo2s, 9, 0.5, 1'500 * kMs},
                      DelayCase{"random 3/4 1 failure", k10msTo2s, 1, 0.75, 8'750 * kUs},
                      DelayCase{"random 3/4 capped", k10msTo2s, 20, 0.75, 1'750 * kMs}),
    [](const auto& info) { return row_name(info.index, info.param.why); });

INSTANTIATE_TEST_SUITE_P(
    BackoffDelayOtherBounds, BackoffDelay,
    ::testing::Values(
        DelayCase{"max not a power of two times min", {10 * kMs, 25 * kMs}, 2, 0.5, 15 * kMs},
        DelayCase{"max not a power of two capped", {10 * kMs, 25 * kMs}, 3, 0.5, 18'750 * kUs},
        DelayCase{"min equals max first", {100 * kMs, 100 * kMs}, 1, 0.0, 50 * kMs},
        DelayCase{"min equals max later", {100 * kMs, 100 * kMs}, 20, 0.0, 50 * kMs},
        DelayCase{"1ns backoff never rounds to 0", {1, 1}, 1, 0.0, 1},
        DelayCase{"1ns doubling 30 times", {1, 2 * kS}, 31, 0.0, (std::int64_t{1} << 30) / 2},
        DelayCase{"1ns doubling capped", {1, 1 * kS}, 32, 0.0, 500 * kMs}),
    [](const auto& info) { return row_name(info.index, info.param.why); });

// random01 just below 1 (and out of range above): the delay reaches, but never
// passes, the undithered value, so no wait is ever longer than MAX.
TEST(BackoffDelayJitter, NearOneIsJustBelowTheFullDelay) {
    for (std::uint32_t failures = 1; failures <= 12; ++failures) {
        const std::int64_t full = std::min<std::int64_t>(10 * kMs << (failures - 1), 2 * kS);
        for (double r : {0.999999, 0.99999999, 1.0, 1.5}) {
            std::int64_t got = backoff_delay_ns(k10msTo2s, failures, r);
            EXPECT_LT(got, full) << "failures " << failures << " random01 " << r;
            EXPECT_GE(got, full - full / 1'000'000) << "failures " << failures << " random01 " << r;
        }
    }
}

TEST(BackoffDelayJitter, GrowsWithRandomAndWithFailuresWithinHalfToFull) {
    for (std::uint32_t failures = 1; failures <= 12; ++failures) {
        const std::int64_t full = std::min<std::int64_t>(10 * kMs << (failures - 1), 2 * kS);
        std::int64_t previous = 0;
        for (int i = 0; i < 100; ++i) {
            std::int64_t got = backoff_delay_ns(k10msTo2s, failures, i / 100.0);
            EXPECT_GE(got, full / 2) << failures << " " << i;
            EXPECT_LT(got, full) << failures << " " << i;
            EXPECT_GE(got, previous) << failures << " " << i;
            previous = got;
        }
        if (failures > 1) {
            EXPECT_GE(backoff_delay_ns(k10msTo2s, failures, 0.3),
                      backoff_delay_ns(k10msTo2s, failures - 1, 0.3))
                << failures;
        }
    }
}

// ---------------------------------------------------------------------------
// The schedule while a destination fails: record_failure, reserve_backoff_slot,
// record_success. random01 = 0 throughout unless said, so one failure means a
// 5 ms spacing, two 10 ms, three 20 ms.

class BackoffSchedule : public ::testing::Test {
  protected:
    // n connects arriving together at `now`: the waits they are given.
    std::vector<std::int64_t> storm(int n, std::int64_t now, double random01 = 0.0) {
        std::vector<std::int64_t> waits;
        for (int i = 0; i < n; ++i) waits.push_back(reserve_backoff_slot(d, b, now, random01));
        return waits;
    }

    DestinationState d;
    Backoff b = k10msTo2s;
};

TEST_F(BackoffSchedule, HealthyDestinationNeverWaitsNorReserves) {
    EXPECT_EQ(storm(20, kT0), std::vector<std::int64_t>(20, 0));
    EXPECT_EQ(d.backoff_next_ns.load(), 0) << "a healthy destination keeps no schedule";
    record_success(d);
    EXPECT_EQ(storm(5, kT0 + kS), std::vector<std::int64_t>(5, 0));
}

TEST_F(BackoffSchedule, FailureRecordsOneDelayFromNow) {
    record_failure(d, b, kT0, 0.0);
    EXPECT_EQ(d.consecutive_failures.load(), 1u);
    EXPECT_EQ(d.failures.load(), 1u);
    EXPECT_EQ(d.backoff_next_ns.load(), kT0 + 5 * kMs);
    record_failure(d, b, kT0 + 1 * kMs, 0.0);
    EXPECT_EQ(d.consecutive_failures.load(), 2u);
    EXPECT_EQ(d.failures.load(), 2u);
    EXPECT_EQ(d.backoff_next_ns.load(), kT0 + 11 * kMs) << "1 ms + the second failure's 10 ms";
}

// Incident 001: after a failure, a pool opening 20 connections at once.
TEST_F(BackoffSchedule, StormAtTheFailureIsSpacedFromItsDelay) {
    record_failure(d, b, kT0, 0.0);
    EXPECT_EQ(storm(20, kT0), spaced(5 * kMs, 5 * kMs, 20));
    EXPECT_EQ(d.backoff_next_ns.load(), kT0 + 105 * kMs);
}

TEST_F(BackoffSchedule, StormOnceTheDelayHasRunGetsZeroThenOneDelayEach) {
    record_failure(d, b, kT0, 0.0);
    EXPECT_EQ(storm(20, kT0 + 5 * kMs), spaced(0, 5 * kMs, 20));
}

// A failure is often judged late (an abandoned connection at 250 ms), so the
// spacing holds for every connect, also those arriving one by one.
TEST_F(BackoffSchedule, ConnectsArrivingOneByOneAreSpacedToo) {
    record_failure(d, b, kT0, 0.0);
    std::vector<std::int64_t> waits;
    for (int k = 0; k < 10; ++k)
        waits.push_back(reserve_backoff_slot(d, b, kT0 + 5 * kMs + k * kMs, 0.0));
    EXPECT_EQ(waits, spaced(0, 4 * kMs, 10)) << "slot k at 5k ms, arrival at k ms";
}

TEST_F(BackoffSchedule, LateConnectWaitsOnlyForWhatIsLeftOfItsSlot) {
    record_failure(d, b, kT0, 0.0);
    storm(20, kT0);  // the schedule runs to kT0 + 105 ms
    EXPECT_EQ(reserve_backoff_slot(d, b, kT0 + 200 * kMs, 0.0), 0) << "schedule long past";
    EXPECT_EQ(reserve_backoff_slot(d, b, kT0 + 202 * kMs, 0.0), 3 * kMs) << "due at 205 ms";
    EXPECT_EQ(reserve_backoff_slot(d, b, kT0 + 202 * kMs, 0.0), 8 * kMs);
}

TEST_F(BackoffSchedule, SpacingGrowsWithConsecutiveFailures) {
    for (int i = 0; i < 3; ++i) record_failure(d, b, kT0, 0.0);
    EXPECT_EQ(d.backoff_next_ns.load(), kT0 + 20 * kMs);
    EXPECT_EQ(storm(4, kT0), spaced(20 * kMs, 20 * kMs, 4));
}

TEST_F(BackoffSchedule, CappedSpacing) {
    for (int i = 0; i < 12; ++i) record_failure(d, b, kT0, 0.0);
    EXPECT_EQ(storm(5, kT0), spaced(1 * kS, 1 * kS, 5)) << "2 s cap, halved by the jitter";
}

TEST_F(BackoffSchedule, FailureNeverPullsTheScheduleEarlier) {
    record_failure(d, b, kT0, 0.0);
    storm(20, kT0);                            // to kT0 + 105 ms
    record_failure(d, b, kT0 + 1 * kMs, 0.0);  // its own delay ends at kT0 + 11 ms
    EXPECT_EQ(d.backoff_next_ns.load(), kT0 + 105 * kMs);
    EXPECT_EQ(reserve_backoff_slot(d, b, kT0 + 1 * kMs, 0.0), 104 * kMs);
}

TEST_F(BackoffSchedule, LaterFailurePushesTheScheduleOut) {
    record_failure(d, b, kT0, 0.0);
    record_failure(d, b, kT0 + 100 * kMs, 0.0);
    EXPECT_EQ(d.backoff_next_ns.load(), kT0 + 110 * kMs);
    EXPECT_EQ(storm(3, kT0 + 100 * kMs), spaced(10 * kMs, 10 * kMs, 3));
}

// The spacing after each connect is that connect's own jittered delay.
TEST_F(BackoffSchedule, EachConnectDrawsItsOwnJitter) {
    record_failure(d, b, kT0, 0.0);
    std::vector<std::int64_t> waits;
    for (double r : {0.0, 0.5, 0.0, 0.75, 0.0})
        waits.push_back(reserve_backoff_slot(d, b, kT0 + 5 * kMs, r));
    // spacings 5, 7.5, 5, 8.75 ms
    EXPECT_EQ(waits,
              (std::vector<std::int64_t>{0, 5 * kMs, 12'500 * kUs, 17'500 * kUs, 26'250 * kUs}));
}

TEST_F(BackoffSchedule, SuccessResetsSoTheNextConnectGoesAtOnce) {
    for (int i = 0; i < 3; ++i) record_failure(d, b, kT0, 0.0);
    storm(20, kT0);
    record_success(d);
    EXPECT_EQ(d.consecutive_failures.load(), 0u);
    EXPECT_EQ(d.backoff_next_ns.load(), 0);
    EXPECT_EQ(d.failures.load(), 3u) << "the total stays for the stats";
    EXPECT_EQ(storm(20, kT0), std::vector<std::int64_t>(20, 0));
}

TEST_F(BackoffSchedule, FailureAfterSuccessStartsOverAtMin) {
    for (int i = 0; i < 8; ++i) record_failure(d, b, kT0, 0.0);
    record_success(d);
    record_failure(d, b, kT0 + kS, 0.0);
    EXPECT_EQ(d.consecutive_failures.load(), 1u);
    EXPECT_EQ(d.backoff_next_ns.load(), kT0 + kS + 5 * kMs);
    EXPECT_EQ(storm(3, kT0 + kS), spaced(5 * kMs, 5 * kMs, 3));
}

TEST_F(BackoffSchedule, RacingThreadsGetDistinctSlotsOneDelayApart) {
    constexpr int kThreads = 8, kPerThread = 1000;
    record_failure(d, b, kT0, 0.0);
    std::vector<std::vector<std::int64_t>> waits(kThreads);
    race(kThreads, [&](int t) {
        for (int i = 0; i < kPerThread; ++i)
            waits[t].push_back(reserve_backoff_slot(d, b, kT0 + 5 * kMs, 0.0));
    });
    std::vector<std::int64_t> all;
    for (auto& w : waits) all.insert(all.end(), w.begin(), w.end());
    std::sort(all.begin(), all.end());
    EXPECT_EQ(all, spaced(0, 5 * kMs, kThreads * kPerThread));
}

// ---------------------------------------------------------------------------
// reserve_rate_slot: a slot every 1/rate, no burst; a caller waits for the
// first free slot at or after its arrival.

struct RateCase {
    std::string why;
    double per_second;
    std::vector<std::int64_t> arrivals;  // after kT0, in call order
    std::vector<std::int64_t> waits;
};

void PrintTo(const RateCase& c, std::ostream* os) {
    *os << c.why << " (" << c.per_second << "/s)";
}

class RateSchedule : public ::testing::TestWithParam<RateCase> {};

TEST_P(RateSchedule, Waits) {
    const RateCase& c = GetParam();
    DestinationState d;
    std::vector<std::int64_t> waits;
    for (std::int64_t at : c.arrivals)
        waits.push_back(reserve_rate_slot(d, c.per_second, kT0 + at));
    EXPECT_EQ(waits, c.waits);
}

INSTANTIATE_TEST_SUITE_P(
    RateTable, RateSchedule,
    ::testing::Values(RateCase{"100 per s simultaneous", 100, std::vector<std::int64_t>(10, 0),
                               spaced(0, 10 * kMs, 10)},
                      RateCase{"100 per s each at its slot", 100, spaced(0, 10 * kMs, 10),
                               std::vector<std::int64_t>(10, 0)},
                      RateCase{"100 per s each after its slot", 100, spaced(0, 15 * kMs, 10),
                               std::vector<std::int64_t>(10, 0)},
                      RateCase{"100 per s late caller waits the rest",
                               100,
                               {0, 10 * kMs, 25 * kMs, 30 * kMs},
                               {0, 0, 0, 5 * kMs}},
                      RateCase{"100 per s caller joins a queue",
                               100,
                               {0, 0, 0, 15 * kMs},
                               {0, 10 * kMs, 20 * kMs, 15 * kMs}},
                      RateCase{"no burst saved up while idle",
                               100,
                               {0, 10 * kS, 10 * kS, 10 * kS},
                               {0, 0, 10 * kMs, 20 * kMs}},
                      RateCase{"half per second", 0.5, {0, 0, 0}, {0, 2 * kS, 4 * kS}},
                      RateCase{"half per second arriving each second",
                               0.5,
                               {0, 1 * kS, 2 * kS, 3 * kS},
                               {0, 1 * kS, 2 * kS, 3 * kS}},
                      RateCase{"30 per min", 30 / 60.0, {0, 0}, {0, 2 * kS}},
                      RateCase{"1 per min", 1 / 60.0, {0, 0, 0}, {0, 60 * kS, 120 * kS}},
                      RateCase{"1 per s", 1, {0, 0, 500 * kMs}, {0, 1 * kS, 1'500 * kMs}},
                      RateCase{"4 per s", 4, {0, 0, 0}, {0, 250 * kMs, 500 * kMs}},
                      RateCase{"10 million per s", 1e7, {0, 0, 0}, {0, 100, 200}}),
    [](const auto& info) { return row_name(info.index, info.param.why); });

TEST(RateSlots, RateAndBackoffKeepSeparateSchedules) {
    DestinationState d;
    for (int i = 0; i < 5; ++i) reserve_rate_slot(d, 100, kT0);
    EXPECT_EQ(d.backoff_next_ns.load(), 0);
    EXPECT_EQ(d.consecutive_failures.load(), 0u);
    EXPECT_EQ(reserve_backoff_slot(d, k10msTo2s, kT0, 0.0), 0) << "throttled is not failing";
    record_failure(d, k10msTo2s, kT0, 0.0);
    reserve_backoff_slot(d, k10msTo2s, kT0, 0.0);
    EXPECT_EQ(reserve_rate_slot(d, 100, kT0), 50 * kMs) << "5 slots of 10 ms taken before";
    record_success(d);
    EXPECT_EQ(reserve_rate_slot(d, 100, kT0), 60 * kMs) << "success clears the backoff only";
}

TEST(RateSlots, DestinationsArePacedIndependently) {
    DestinationState a, b;
    EXPECT_EQ(reserve_rate_slot(a, 100, kT0), 0);
    EXPECT_EQ(reserve_rate_slot(a, 100, kT0), 10 * kMs);
    EXPECT_EQ(reserve_rate_slot(b, 100, kT0), 0);
    EXPECT_EQ(reserve_rate_slot(b, 100, kT0), 10 * kMs);
}

// 8 threads x 1000 connects at the same instant, released together; repeated
// so that the threads really overlap even on a small, busy machine.
TEST(RateSlots, RacingThreadsGetDistinctSlotsExactlyOneIntervalApart) {
    constexpr int kThreads = 8, kPerThread = 1000, kRounds = 20;
    for (int round = 0; round < kRounds; ++round) {
        DestinationState d;
        ASSERT_TRUE(d.next_rate_slot_ns.is_lock_free()) << "a signal handler may connect";
        std::vector<std::vector<std::int64_t>> waits(kThreads);
        race(kThreads, [&](int t) {
            waits[t].reserve(kPerThread);
            for (int i = 0; i < kPerThread; ++i) waits[t].push_back(reserve_rate_slot(d, 100, kT0));
        });
        std::vector<std::int64_t> all;
        for (auto& w : waits) {
            ASSERT_TRUE(std::is_sorted(w.begin(), w.end())) << "one thread's slots only move on";
            all.insert(all.end(), w.begin(), w.end());
        }
        std::sort(all.begin(), all.end());
        ASSERT_EQ(all, spaced(0, 10 * kMs, kThreads * kPerThread)) << "round " << round;
        ASSERT_EQ(d.next_rate_slot_ns.load(), kT0 + kThreads * kPerThread * 10 * kMs);
    }
}

// ---------------------------------------------------------------------------
// data_bytes_received: TCP_INFO counts the peer's FIN as one byte once it came.

struct FinCase {
    std::string why;
    TcpState state;
    std::uint64_t raw;
    std::uint64_t data;
};

void PrintTo(const FinCase& c, std::ostream* os) {
    *os << c.why;
}

class DataBytesReceived : public ::testing::TestWithParam<FinCase> {};

TEST_P(DataBytesReceived, Is) {
    EXPECT_EQ(data_bytes_received(GetParam().state, GetParam().raw), GetParam().data);
}

using S = TcpState;
constexpr std::uint64_t kU64Max = std::numeric_limits<std::uint64_t>::max();

INSTANTIATE_TEST_SUITE_P(
    StormFinByState, DataBytesReceived,
    ::testing::Values(
        FinCase{"established", S::Established, 10, 10},
        FinCase{"established nothing", S::Established, 0, 0},
        FinCase{"established huge", S::Established, kU64Max, kU64Max},
        FinCase{"syn sent", S::SynSent, 0, 0}, FinCase{"syn recv", S::SynRecv, 10, 10},
        FinCase{"fin wait1 our fin only", S::FinWait1, 10, 10},
        FinCase{"fin wait2 our fin only", S::FinWait2, 10, 10},
        FinCase{"close wait", S::CloseWait, 10, 9},
        FinCase{"close wait only the fin", S::CloseWait, 1, 0},
        FinCase{"close wait zero no underflow", S::CloseWait, 0, 0},
        FinCase{"close wait huge", S::CloseWait, kU64Max, kU64Max - 1},
        FinCase{"last ack", S::LastAck, 10, 9}, FinCase{"last ack zero", S::LastAck, 0, 0},
        FinCase{"closing", S::Closing, 10, 9}, FinCase{"time wait", S::TimeWait, 10, 9},
        FinCase{"time wait only the fin", S::TimeWait, 1, 0},
        FinCase{"close unknown fate", S::Close, 10, 10}, FinCase{"listen", S::Listen, 10, 10},
        FinCase{"unknown", S::Unknown, 10, 10}),
    [](const auto& info) { return row_name(info.index, info.param.why); });

// ---------------------------------------------------------------------------
// looks_abandoned and carried_data.

ConnectionUse use(TcpState state, std::int64_t age_ns, std::uint64_t received, std::uint64_t sent,
                  std::uint32_t unread) {
    ConnectionUse u;
    u.state = state;
    u.age_ns = age_ns;
    u.bytes_received = received;
    u.bytes_sent = sent;
    u.unread = unread;
    return u;
}

constexpr std::int64_t kOld = 300 * kMs;

struct UseCase {
    std::string why;
    ConnectionUse use;
    bool abandoned;
    bool carried;
};

void PrintTo(const UseCase& c, std::ostream* os) {
    *os << c.why << " (state " << static_cast<int>(c.use.state) << ", age " << c.use.age_ns
        << ", received " << c.use.bytes_received << ", sent " << c.use.bytes_sent << ", unread "
        << c.use.unread << ")";
}

class ConnectionJudgement : public ::testing::TestWithParam<UseCase> {};

TEST_P(ConnectionJudgement, Abandoned) {
    EXPECT_EQ(looks_abandoned(GetParam().use), GetParam().abandoned);
}

TEST_P(ConnectionJudgement, CarriedData) {
    EXPECT_EQ(carried_data(GetParam().use), GetParam().carried);
}

INSTANTIATE_TEST_SUITE_P(
    AbandonTruthTable, ConnectionJudgement,
    ::testing::Values(
        // The greeting case: the server spoke (MySQL handshake), the client never read.
        UseCase{"established greeting unread", use(S::Established, kOld, 10, 0, 10), true, false},
        UseCase{"just below the age", use(S::Established, kAbandonAgeNs - 1, 10, 0, 10), false,
                false},
        UseCase{"exactly the age is judged", use(S::Established, kAbandonAgeNs, 10, 0, 10), true,
                false},
        UseCase{"just above the age", use(S::Established, kAbandonAgeNs + 1, 10, 0, 10), true,
                false},
        UseCase{"brand new", use(S::Established, 0, 10, 0, 10), false, false},
        UseCase{"sent one byte", use(S::Established, kOld, 10, 1, 10), false, true},
        UseCase{"sent and nothing received", use(S::Established, kOld, 0, 5, 0), false, true},
        UseCase{"read some", use(S::Established, kOld, 10, 0, 4), false, true},
        UseCase{"read all", use(S::Established, kOld, 10, 0, 0), false, true},
        UseCase{"idle pool connection nothing either way", use(S::Established, kOld, 0, 0, 0),
                false, false},
        UseCase{"unread above received is not never read", use(S::Established, kOld, 3, 0, 4),
                false, false},
        UseCase{"close wait nothing unread", use(S::CloseWait, kOld, 0, 0, 0), true, false},
        UseCase{"close wait data unread", use(S::CloseWait, kOld, 10, 0, 10), true, false},
        UseCase{"close wait young", use(S::CloseWait, kAbandonAgeNs - 1, 0, 0, 0), false, false},
        UseCase{"close wait read some", use(S::CloseWait, kOld, 10, 0, 2), false, true},
        UseCase{"close wait after sending", use(S::CloseWait, kOld, 0, 7, 0), false, true},
        UseCase{"last ack nothing unread", use(S::LastAck, kOld, 0, 0, 0), true, false},
        UseCase{"last ack read some", use(S::LastAck, kOld, 10, 0, 0), false, true},
        UseCase{"syn sent", use(S::SynSent, 10 * kS, 0, 0, 0), false, false},
        UseCase{"syn recv", use(S::SynRecv, kOld, 0, 0, 0), false, false},
        UseCase{"fin wait1 we closed", use(S::FinWait1, kOld, 10, 0, 10), false, false},
        UseCase{"fin wait2 we closed", use(S::FinWait2, kOld, 10, 0, 10), false, false},
        UseCase{"closing we closed", use(S::Closing, kOld, 0, 0, 0), false, false},
        UseCase{"time wait", use(S::TimeWait, kOld, 0, 0, 0), false, false},
        UseCase{"close", use(S::Close, kOld, 0, 0, 0), false, false},
        UseCase{"unknown state", use(S::Unknown, kOld, 10, 0, 10), false, false}),
    [](const auto& info) { return row_name(info.index, info.param.why); });

// The preload feeds looks_abandoned the data alone: a leaked connection whose
// peer closed without a word (raw bytes_received 1: the FIN) is judged.
TEST(AbandonedWithFin, PeerClosedSilentlyIsAbandonedOnceTheFinIsDiscounted) {
    ConnectionUse u = use(S::CloseWait, kOld, 0, 0, 0);
    u.bytes_received = data_bytes_received(u.state, 1);
    EXPECT_TRUE(looks_abandoned(u));
    EXPECT_FALSE(carried_data(u));
    u.bytes_received = data_bytes_received(u.state, 11);  // 10 bytes of greeting, then the FIN
    u.unread = 10;
    EXPECT_TRUE(looks_abandoned(u));
    u.unread = 0;  // read it all, then never closed
    EXPECT_FALSE(looks_abandoned(u));
    EXPECT_TRUE(carried_data(u));
}

// probe_succeeded: a share counts a prober's clean close as the destination's
// recovery; never a connection that is not up, is old, or carried anything.
struct ProbeCase {
    std::string why;
    ConnectionUse use;
    bool succeeded;
};

class ProbeJudgement : public ::testing::TestWithParam<ProbeCase> {};

TEST_P(ProbeJudgement, Is) { EXPECT_EQ(probe_succeeded(GetParam().use), GetParam().succeeded); }

constexpr std::int64_t kYoung = 2 * kMs;

INSTANTIATE_TEST_SUITE_P(
    ProbeTruthTable, ProbeJudgement,
    ::testing::Values(
        ProbeCase{"connected and closed at once", use(S::Established, kYoung, 0, 0, 0), true},
        ProbeCase{"the server accepted and closed first", use(S::CloseWait, kYoung, 0, 0, 0), true},
        ProbeCase{"just below the age", use(S::Established, kAbandonAgeNs - 1, 0, 0, 0), true},
        ProbeCase{"at the age it is a connection, not a probe", use(S::Established, kAbandonAgeNs, 0, 0, 0),
                  false},
        ProbeCase{"the server spoke (an error before closing)", use(S::CloseWait, kYoung, 20, 0, 20), false},
        ProbeCase{"greeting unread", use(S::Established, kYoung, 10, 0, 10), false},
        ProbeCase{"wrote something", use(S::Established, kYoung, 0, 4, 0), false},
        ProbeCase{"handshake not complete", use(S::SynSent, kYoung, 0, 0, 0), false},
        ProbeCase{"reset or closed", use(S::Close, kYoung, 0, 0, 0), false},
        ProbeCase{"we half-closed", use(S::FinWait1, kYoung, 0, 0, 0), false},
        ProbeCase{"unknown", use(S::Unknown, kYoung, 0, 0, 0), false}),
    [](const auto& info) { return row_name(info.index, info.param.why); });

// ---------------------------------------------------------------------------
// Destinations: 256 entries, then one shared "other".

Endpoint ep(std::string_view ip, std::uint16_t port) {
    Endpoint e;
    e.addr = parse_ip(ip).value();
    e.port = port;
    return e;
}

// The i-th of many distinct IPv4 destinations.
Endpoint nth(int i) {
    Endpoint e;
    e.addr.family = AF_INET;
    e.addr.bytes[0] = 10;
    e.addr.bytes[2] = static_cast<std::uint8_t>(i >> 8);
    e.addr.bytes[3] = static_cast<std::uint8_t>(i);
    e.port = 3306;
    return e;
}

// n distinct destinations drawn at random (fixed seed), half IPv4, half IPv6:
// unlike nth(), their hashes collide, so the table has to probe past taken entries.
std::vector<Endpoint> random_endpoints(int n, unsigned seed) {
    std::mt19937 rng(seed);
    std::vector<Endpoint> out;
    std::set<std::pair<std::array<std::uint8_t, 16>, std::uint32_t>> taken;
    while (static_cast<int>(out.size()) < n) {
        Endpoint e;
        bool v6 = rng() % 2 == 0;
        e.addr.family = v6 ? AF_INET6 : AF_INET;
        for (int i = 0; i < (v6 ? 16 : 4); ++i) e.addr.bytes[i] = static_cast<std::uint8_t>(rng());
        e.port = static_cast<std::uint16_t>(rng());
        if (taken.insert({e.addr.bytes, e.port | (v6 ? 1u << 16 : 0u)}).second) out.push_back(e);
    }
    return out;
}

std::string key(const Endpoint& e) {
    return fmt::format("{}", e);
}

class DestinationsTable : public ::testing::Test {
  protected:
    // Every (endpoint, state) for_each visits, in order.
    std::vector<std::pair<Endpoint, const DestinationState*>> visit() const {
        std::vector<std::pair<Endpoint, const DestinationState*>> seen;
        const Destinations& c = *table;
        c.for_each([&](const Endpoint& e, const DestinationState& s) { seen.emplace_back(e, &s); });
        return seen;
    }

    std::unique_ptr<Destinations> table = std::make_unique<Destinations>();
};

TEST_F(DestinationsTable, SameEndpointSameStateDistinctEndpointsDistinctStates) {
    DestinationState* a = &table->get(ep("10.0.0.1", 3306));
    EXPECT_EQ(&table->get(ep("10.0.0.1", 3306)), a);
    DestinationState* other_port = &table->get(ep("10.0.0.1", 3307));
    DestinationState* other_ip = &table->get(ep("10.0.0.2", 3306));
    EXPECT_NE(other_port, a);
    EXPECT_NE(other_ip, a);
    EXPECT_NE(other_ip, other_port);
    a->connects.fetch_add(7);
    EXPECT_EQ(table->get(ep("10.0.0.1", 3306)).connects.load(), 7u);
    EXPECT_EQ(other_port->connects.load(), 0u);
}

// IPv4 10.0.0.1 and IPv6 a00:1:: hold the same sixteen bytes: only the
// family tells them apart. An IPv4-mapped IPv6 address is the IPv4 one.
TEST_F(DestinationsTable, ResetForgetsTheRememberedShareEntry) {
    // A forked child's reset: its entries may be reused for other destinations.
    DestinationState& a = table->get(ep("10.0.0.1", 3306));
    auto* remembered = reinterpret_cast<share::Entry*>(&a);  // any non-null address: never dereferenced
    a.shared.store(remembered);
    table->reset();
    EXPECT_EQ(table->get(ep("10.0.0.2", 3306)).shared.load(), nullptr);
    EXPECT_EQ(table->get(ep("10.0.0.1", 3306)).shared.load(), nullptr);
}

TEST_F(DestinationsTable, IPv4AndIPv6KeysDiffer) {
    Endpoint v4 = ep("10.0.0.1", 80), v6 = ep("a00:1::", 80);
    ASSERT_EQ(v4.addr.bytes, v6.addr.bytes) << "the point of this pair";
    DestinationState* s4 = &table->get(v4);
    DestinationState* s6 = &table->get(v6);
    EXPECT_NE(s4, s6);
    EXPECT_EQ(&table->get(ep("::ffff:10.0.0.1", 80)), s4);
    EXPECT_EQ(&table->get(ep("a00:1::", 80)), s6);
    DestinationState* loop6 = &table->get(ep("::1", 6379));
    EXPECT_NE(loop6, &table->get(ep("127.0.0.1", 6379)));
    EXPECT_NE(loop6, &table->get(ep("::1", 6380)));
    EXPECT_EQ(loop6, &table->get(ep("::1", 6379)));
}

TEST_F(DestinationsTable, ForEachVisitsEachDestinationOnceAndNoOtherWhileUnused) {
    std::map<std::string, const DestinationState*> used;
    for (auto e : {ep("10.0.0.1", 3306), ep("10.0.0.2", 3306), ep("::1", 6379)}) {
        DestinationState& s = table->get(e);
        s.connects.fetch_add(1);
        used[key(e)] = &s;
    }
    auto seen = visit();
    ASSERT_EQ(seen.size(), 3u);
    for (auto& [e, s] : seen) {
        ASSERT_EQ(used.count(key(e)), 1u) << key(e);
        EXPECT_EQ(used[key(e)], s) << key(e);
    }
}

TEST_F(DestinationsTable, ThreeHundredDestinationsOverflowIntoOtherVisitedLast) {
    std::vector<DestinationState*> states;
    for (int i = 0; i < 300; ++i) {
        states.push_back(&table->get(nth(i)));
        states.back()->connects.fetch_add(1);
    }
    std::set<DestinationState*> own(states.begin(), states.begin() + Destinations::kSize);
    EXPECT_EQ(own.size(), static_cast<std::size_t>(Destinations::kSize));
    DestinationState* other = states[Destinations::kSize];
    EXPECT_EQ(own.count(other), 0u);
    for (int i = Destinations::kSize; i < 300; ++i) EXPECT_EQ(states[i], other) << i;
    EXPECT_EQ(other->connects.load(), 300u - Destinations::kSize);
    // Only "other" says so: the share's entry is remembered on every state but that one.
    EXPECT_TRUE(table->is_other(*other));
    for (int i = 0; i < Destinations::kSize; ++i) EXPECT_FALSE(table->is_other(*states[i])) << i;
    for (int i = 0; i < Destinations::kSize; ++i)
        EXPECT_EQ(&table->get(nth(i)), states[i]) << "still its own entry: " << i;

    auto seen = visit();
    ASSERT_EQ(seen.size(), static_cast<std::size_t>(Destinations::kSize) + 1);
    EXPECT_EQ(seen.back().first.addr.family, 0) << "other";
    EXPECT_EQ(seen.back().second, other);
    EXPECT_EQ(key(seen.back().first), "other");
    std::set<std::string> table_keys;
    for (std::size_t i = 0; i + 1 < seen.size(); ++i) {
        EXPECT_NE(seen[i].first.addr.family, 0) << i;
        table_keys.insert(key(seen[i].first));
    }
    std::set<std::string> first_keys;
    for (int i = 0; i < Destinations::kSize; ++i) first_keys.insert(key(nth(i)));
    EXPECT_EQ(table_keys, first_keys) << "the first 256 keep their entries";

    // The non-const for_each agrees.
    std::vector<DestinationState*> mutable_order;
    table->for_each([&](const Endpoint&, DestinationState& s) { mutable_order.push_back(&s); });
    ASSERT_EQ(mutable_order.size(), seen.size());
    EXPECT_EQ(mutable_order.back(), other);
}

TEST_F(DestinationsTable, RandomDestinationsFillEveryEntryBeforeOther) {
    for (unsigned seed = 1; seed <= 5; ++seed) {
        table->reset();
        std::vector<Endpoint> eps = random_endpoints(Destinations::kSize + 1, seed);
        std::set<DestinationState*> own;
        for (int i = 0; i < Destinations::kSize; ++i) own.insert(&table->get(eps[i]));
        EXPECT_EQ(own.size(), static_cast<std::size_t>(Destinations::kSize)) << "seed " << seed;
        DestinationState* other = &table->get(eps.back());
        EXPECT_EQ(own.count(other), 0u) << "seed " << seed;
        for (int i = 0; i < Destinations::kSize; ++i)
            ASSERT_EQ(own.count(&table->get(eps[i])), 1u) << "seed " << seed << " endpoint " << i;
    }
}

TEST_F(DestinationsTable, ResetEmptiesEveryEntry) {
    for (int i = 0; i < 300; ++i) {
        DestinationState& s = table->get(nth(i));
        s.connects.fetch_add(1);
        s.failures.fetch_add(2);
        record_failure(s, k10msTo2s, kT0, 0.0);
        reserve_rate_slot(s, 100, kT0);
    }
    table->reset();
    EXPECT_TRUE(visit().empty());
    // Every slot is free again: 256 new destinations get entries of their own.
    std::set<DestinationState*> fresh;
    for (int i = 1000; i < 1000 + Destinations::kSize; ++i) {
        DestinationState& s = table->get(nth(i));
        EXPECT_EQ(s.connects.load(), 0u) << i;
        EXPECT_EQ(s.failures.load(), 0u) << i;
        EXPECT_EQ(s.consecutive_failures.load(), 0u) << i;
        EXPECT_EQ(s.backoff_next_ns.load(), 0) << i;
        EXPECT_EQ(s.next_rate_slot_ns.load(), 0) << i;
        fresh.insert(&s);
    }
    EXPECT_EQ(fresh.size(), static_cast<std::size_t>(Destinations::kSize));
}

// Racing first uses of the same destinations: one entry per destination, the
// same one for every thread, and no destination entered twice.
TEST_F(DestinationsTable, RacingThreadsAgreeOnEveryEntry) {
    constexpr int kThreads = 8, kEndpoints = 300;
    std::vector<std::vector<DestinationState*>> got(kThreads,
                                                    std::vector<DestinationState*>(kEndpoints));
    race(kThreads, [&](int t) {
        for (int k = 0; k < kEndpoints; ++k) {
            int i = (t % 2 == 0) ? k : kEndpoints - 1 - k;  // half the threads from the other end
            got[t][i] = &table->get(nth(i));
        }
    });
    std::map<DestinationState*, int> users;
    for (int i = 0; i < kEndpoints; ++i) {
        for (int t = 1; t < kThreads; ++t) EXPECT_EQ(got[t][i], got[0][i]) << "endpoint " << i;
        ++users[got[0][i]];
    }
    int shared = 0, own = 0;
    for (auto& [state, n] : users) {
        if (n == 1)
            ++own;
        else
            ++shared;
    }
    EXPECT_EQ(own, Destinations::kSize);
    EXPECT_EQ(shared, 1) << "only \"other\" serves several destinations";
}

// Threads entering different destinations that compete for the same free
// entries: each destination gets an entry of its own, which it keeps.
TEST_F(DestinationsTable, RacingThreadsNeverShareAnEntry) {
    constexpr int kThreads = 8, kEach = Destinations::kSize / kThreads, kRounds = 20;
    for (int round = 0; round < kRounds; ++round) {
        table->reset();
        std::vector<Endpoint> eps = random_endpoints(Destinations::kSize, 100 + round);
        std::vector<DestinationState*> got(eps.size());
        race(kThreads, [&](int t) {
            for (int k = 0; k < kEach; ++k) got[t * kEach + k] = &table->get(eps[t * kEach + k]);
        });
        std::set<DestinationState*> distinct(got.begin(), got.end());
        ASSERT_EQ(distinct.size(), eps.size()) << "round " << round;
        for (std::size_t i = 0; i < eps.size(); ++i)
            ASSERT_EQ(&table->get(eps[i]), got[i]) << "round " << round << " endpoint " << i;
    }
}


// Linux < 4.1: TCP_INFO has no byte counters (ConnectionUse::counters_known
// false). Only the peer-closed-with-data-unread case can be told; a young
// connection is never judged; a connection the application closes after its
// handshake counts as a success, one that never connected does not.
TEST(NoByteCounters, OnlyPeerClosedWithUnreadDataIsAbandoned) {
    auto blind = [](TcpState state, std::int64_t age_ns, std::uint32_t unread) {
        ConnectionUse u = use(state, age_ns, 0, 0, unread);
        u.counters_known = false;
        return u;
    };
    constexpr std::int64_t old = kAbandonAgeNs + 1;
    EXPECT_TRUE(looks_abandoned(blind(TcpState::CloseWait, old, 132)));
    EXPECT_TRUE(looks_abandoned(blind(TcpState::LastAck, old, 1)));
    EXPECT_FALSE(looks_abandoned(blind(TcpState::CloseWait, old, 0)));      // read it all: a normal end
    EXPECT_FALSE(looks_abandoned(blind(TcpState::Established, old, 132)));  // may have written: unknown
    EXPECT_FALSE(looks_abandoned(blind(TcpState::CloseWait, kAbandonAgeNs - 1, 132)));  // too young

    EXPECT_FALSE(carried_data(blind(TcpState::Established, old, 0)));  // never while open
    EXPECT_TRUE(succeeded_at_close(blind(TcpState::Established, old, 0)));
    EXPECT_TRUE(succeeded_at_close(blind(TcpState::FinWait2, old, 0)));
    EXPECT_TRUE(succeeded_at_close(blind(TcpState::CloseWait, old, 0)));
    EXPECT_FALSE(succeeded_at_close(blind(TcpState::CloseWait, old, 132)));
    EXPECT_FALSE(succeeded_at_close(blind(TcpState::SynSent, old, 0)));
    EXPECT_FALSE(succeeded_at_close(blind(TcpState::Close, old, 0)));
}

// With counters, succeeded_at_close is carried_data.
TEST(NoByteCounters, WithCountersSuccessAtCloseIsCarriedData) {
    ConnectionUse quiet = use(TcpState::Established, kAbandonAgeNs + 1, 0, 0, 0);
    ConnectionUse talked = use(TcpState::Established, kAbandonAgeNs + 1, 10, 5, 0);
    EXPECT_FALSE(succeeded_at_close(quiet));
    EXPECT_TRUE(succeeded_at_close(talked));
}

}  // namespace
}  // namespace tcpfix::policy
