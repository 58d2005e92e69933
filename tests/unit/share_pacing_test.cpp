// A share's schedules (policy/share.hpp): the common rate schedule, the
// common backoff (one schedule for a pool, a success ends it for all), the
// repairs of corrupt timestamps, a process killed inside an update, and what
// `tcpfix top` and the Prometheus textfile read.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "policy/prom.hpp"
#include "policy/share.hpp"
#include "policy/storm.hpp"
#include "share_buffer.hpp"
#include "test_util.hpp"

namespace tcpfix::policy::share {
namespace {

using namespace test;
using tcpfix::test::race;

// ---------------------------------------------------------------------------
// the common rate schedule

TEST(ShareRate, OneScheduleForEveryProcess) {
    Buffer b(16, 4);
    Segment seg = b.segment();
    Entry& e = *seg.find_or_add(ep("127.0.0.1", 6379), 1);
    // Three "processes" (the same entry, each with its own clock reading) at 50/s.
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0), 0);
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0 + 1 * kMs), 19 * kMs);
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0 + 2 * kMs), 38 * kMs);
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0 + 200 * kMs),
              0);  // idle long enough: no burst credit either
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0 + 200 * kMs), 20 * kMs);
}

TEST(ShareRate, RacingReservationsGetDistinctEvenlySpacedSlots) {
    Buffer b(16, 4);
    Segment seg = b.segment();
    Entry& e = *seg.find_or_add(ep("127.0.0.1", 6379), 1);
    std::vector<std::int64_t> waits[8];
    race(8, [&](int t) {
        for (int i = 0; i < 500; ++i) waits[t].push_back(reserve_rate_slot(e, 1000, kT0));
    });
    std::vector<std::int64_t> all;
    for (auto& w : waits) all.insert(all.end(), w.begin(), w.end());
    std::sort(all.begin(), all.end());
    for (std::size_t i = 0; i < all.size(); ++i)
        ASSERT_EQ(all[i], static_cast<std::int64_t>(i) * kMs);
}

TEST(ShareRate, ACorruptSlotFarAheadIsRepairedNotWaitedFor) {
    Buffer b(16, 4);
    Segment seg = b.segment();
    Entry& e = *seg.find_or_add(ep("127.0.0.1", 6379), 1);
    e.next_rate_slot_ns.store(std::numeric_limits<std::int64_t>::max());
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0), 0);
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0), 20 * kMs);
    e.next_rate_slot_ns.store(
        std::numeric_limits<std::int64_t>::min());  // far in the past: simply due
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0), 0);
    // A legitimately long queue is kept: 100 waiters ahead at 50/s is 2 s.
    e.next_rate_slot_ns.store(kT0 + 2 * kS);
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0), 2 * kS);
    // A rate below one an hour is one an hour (no overflow).
    EXPECT_EQ(reserve_rate_slot(e, 1e-30, kT0 + 10 * kS), 0);
}

// ---------------------------------------------------------------------------
// the common backoff

TEST(ShareBackoff, HealthyDestinationsNeverWait) {
    Buffer b(16, 4);
    Entry& e = *b.segment().find_or_add(ep("127.0.0.1", 6379), 1);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(claim_backoff_turn(e, k10msTo1s, kT0 + i, 0.3), 0);
}

TEST(ShareBackoff, AFailureSeenByOneDelaysEveryOther) {
    Buffer b(16, 4);
    Entry& e = *b.segment().find_or_add(ep("127.0.0.1", 6379), 1);
    record_failure(e, k10msTo1s, kT0, 0.999999);  // delay(1) = 10 ms, jitter ~1
    EXPECT_EQ(e.failures.load(), 1u);
    EXPECT_EQ(e.backoff_delay_ns.load(), 10 * kMs);
    // Any process, any time before the turn: wait for it.
    std::int64_t w = claim_backoff_turn(e, k10msTo1s, kT0 + 2 * kMs, 0.5);
    EXPECT_GT(w, 7 * kMs);
    EXPECT_LE(w, 8 * kMs);
    // At the turn: the first asker goes, and the next turn is a delay away.
    EXPECT_EQ(claim_backoff_turn(e, k10msTo1s, kT0 + 10 * kMs, 0.999999), 0);
    std::int64_t w2 = claim_backoff_turn(e, k10msTo1s, kT0 + 10 * kMs, 0.999999);
    EXPECT_GT(w2, 9 * kMs);
    EXPECT_LE(w2, 10 * kMs);
}

TEST(ShareBackoff, AtATurnExactlyOneRacingProcessGoes) {
    Buffer b(16, 4);
    Entry& e = *b.segment().find_or_add(ep("127.0.0.1", 6379), 1);
    record_failure(e, k10msTo1s, kT0, 0.5);
    std::atomic<int> went{0};
    race(8, [&](int) {
        if (claim_backoff_turn(e, k10msTo1s, kT0 + 1 * kS, 0.5) == 0) went.fetch_add(1);
    });
    EXPECT_EQ(went.load(), 1);
}

TEST(ShareBackoff, ASuccessAnywhereEndsTheSpellForAll) {
    Buffer b(16, 4);
    Entry& e = *b.segment().find_or_add(ep("127.0.0.1", 6379), 1);
    for (int i = 0; i < 5; ++i) record_failure(e, k10msTo1s, kT0, 0.5);
    EXPECT_EQ(e.backoff_delay_ns.load(), 160 * kMs);
    std::uint32_t wake = e.wake.load();
    EXPECT_TRUE(record_success(e));
    EXPECT_EQ(e.wake.load(), wake + 1);  // waiters are told
    EXPECT_FALSE(record_success(e));     // nothing more to end: no second wake
    EXPECT_EQ(e.wake.load(), wake + 1);
    EXPECT_EQ(claim_backoff_turn(e, k10msTo1s, kT0 + 1, 0.5), 0);
    EXPECT_EQ(e.backoff_delay_ns.load(), 0);
}

// Simulated time, millisecond steps: `procs` processes each try to connect
// to a dead destination whenever they are not waiting; every attempt fails
// at once. Counts attempts over `window`.
int attempts_in(int procs, bool shared, std::int64_t window, std::uint64_t seed) {
    Buffer b(16, 4);
    Segment seg = b.segment();
    std::vector<Entry*> entries;
    std::vector<std::unique_ptr<Buffer>> own;
    for (int p = 0; p < procs; ++p) {
        if (shared) {
            entries.push_back(seg.find_or_add(ep("127.0.0.1", 6379), 1));
        } else {
            own.push_back(std::make_unique<Buffer>(16, 4));
            entries.push_back(own.back()->segment().find_or_add(ep("127.0.0.1", 6379), 1));
        }
    }
    std::vector<std::int64_t> wake_at(static_cast<std::size_t>(procs), kT0);
    std::uint64_t x = seed;
    auto rnd = [&] {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        return static_cast<double>(x >> 11) / 9007199254740992.0;
    };
    int attempts = 0;
    for (std::int64_t now = kT0; now < kT0 + window; now += kMs) {
        for (int p = 0; p < procs; ++p) {
            if (wake_at[p] > now) continue;
            std::int64_t w = claim_backoff_turn(*entries[p], k10msTo1s, now, rnd());
            if (w > 0) {
                wake_at[p] = now + w;
                continue;
            }
            ++attempts;
            record_failure(*entries[p], k10msTo1s, now, rnd());
        }
    }
    return attempts;
}

TEST(ShareBackoff, APoolMakesTheAttemptsOfOneScheduleNotOnePerProcess) {
    const std::int64_t window = 6 * kS;
    for (std::uint64_t seed : {1u, 2u, 3u}) {
        int one = attempts_in(1, true, window, seed);
        int pool_shared = attempts_in(16, true, window, seed);
        int pool_alone = attempts_in(16, false, window, seed);
        // One process: 10 ms doubling to 1 s with jitter in [0.5, 1): 10 to 17 attempts in 6 s.
        EXPECT_GE(one, 10);
        EXPECT_LE(one, 17);
        // The pool shares it: within one schedule (plus the first instant, when all 16 go).
        EXPECT_LE(pool_shared, 17 + 16) << "seed " << seed;
        EXPECT_GE(pool_alone, 16 * 10) << "seed " << seed;
    }
}

TEST(ShareBackoff, ACorruptNextTurnFarAheadIsRepairedNotWaitedFor) {
    Buffer b(16, 4);
    Entry& e = *b.segment().find_or_add(ep("127.0.0.1", 6379), 1);
    record_failure(e, k10msTo1s, kT0, 0.5);
    e.backoff_next_ns.store(std::numeric_limits<std::int64_t>::max());
    EXPECT_EQ(claim_backoff_turn(e, k10msTo1s, kT0, 0.5), 0);
    // An absurd failure count is still capped at MAX.
    e.consecutive_failures.store(std::numeric_limits<std::uint32_t>::max());
    std::int64_t w = claim_backoff_turn(e, k10msTo1s, kT0 + 1, 0.999999);
    EXPECT_GT(w, 0);
    EXPECT_LE(w, 1 * kS);
    record_failure(e, k10msTo1s, kT0 + 2, 0.5);  // saturates: never wraps to "healthy"
    EXPECT_EQ(e.consecutive_failures.load(), std::numeric_limits<std::uint32_t>::max());
    EXPECT_LE(claim_backoff_turn(e, k10msTo1s, kT0 + 3, 0.5), 1 * kS);
}

TEST(ShareBackoff, AProcessKilledInsideRecordFailureCostsAtMostOneExtraAttempt) {
    Buffer b(16, 4);
    Entry& e = *b.segment().find_or_add(ep("127.0.0.1", 6379), 1);
    record_failure(e, k10msTo1s, kT0, 0.5);
    ASSERT_EQ(claim_backoff_turn(e, k10msTo1s, kT0 + 1 * kS, 0.5),
              0);  // a process takes the turn ...
    // ... fails, and is killed after counting the failure but before moving the next turn.
    e.failures.fetch_add(1);
    e.consecutive_failures.fetch_add(1);
    // The others: the turn its claim set still holds; at it, one goes; then
    // the next failure doubles as usual.
    std::int64_t w = claim_backoff_turn(e, k10msTo1s, kT0 + 1 * kS + 1, 0.5);
    EXPECT_GT(w, 0);
    EXPECT_EQ(claim_backoff_turn(e, k10msTo1s, kT0 + 1 * kS + 1 + w, 0.5), 0);
    record_failure(e, k10msTo1s, kT0 + 1 * kS + 1 + w, 0.999999);
    EXPECT_EQ(e.backoff_delay_ns.load(), 40 * kMs);
}

TEST(ShareBackoff, NominalDelayDoublesToMax) {
    EXPECT_EQ(nominal_delay_ns(k10msTo1s, 0), 0);
    EXPECT_EQ(nominal_delay_ns(k10msTo1s, 1), 10 * kMs);
    EXPECT_EQ(nominal_delay_ns(k10msTo1s, 4), 80 * kMs);
    EXPECT_EQ(nominal_delay_ns(k10msTo1s, 8), 1 * kS);
    EXPECT_EQ(nominal_delay_ns(k10msTo1s, 4'000'000'000u), 1 * kS);
    EXPECT_EQ(nominal_delay_ns(Backoff{3 * kS, 3 * kS}, 9), 3 * kS);
}

// ---------------------------------------------------------------------------
// what tcpfix top and the textfile read

TEST(ShareSnapshot, ReadsEveryCounterAndTheHeader) {
    Buffer b(64, 8, "php-pool");
    Segment seg = b.segment();
    Entry& e = *seg.find_or_add(ep("127.0.0.1", 6379), 1);
    e.connects.store(10);
    e.leaks.store(2);
    e.reaped.store(1);
    e.throttled_us.store(1500);
    record_failure(e, k10msTo1s, kT0, 0.5);
    seg.find_or_add(ep("::1", 11211), 1)->connects.store(3);
    seg.claim_proc(proc_identity(7, 7), [](std::uint64_t) { return false; });
    auto s = snapshot(seg, [](std::uint64_t) { return true; });
    EXPECT_EQ(s.name, "php-pool");
    EXPECT_EQ(s.uid, kUid);
    EXPECT_EQ(s.created_unix_s, 1'700'000'000);
    EXPECT_EQ(s.capacity, 64u);
    EXPECT_EQ(s.processes, (std::vector<std::uint64_t>{proc_identity(7, 7)}));
    ASSERT_EQ(s.entries.size(), 2u);
    auto it = std::find_if(s.entries.begin(), s.entries.end(),
                           [](auto& v) { return v.dest.port == 6379; });
    ASSERT_NE(it, s.entries.end());
    EXPECT_EQ(it->connects, 10u);
    EXPECT_EQ(it->failures, 1u);
    EXPECT_EQ(it->leaks, 2u);
    EXPECT_EQ(it->reaped, 1u);
    EXPECT_EQ(it->throttled_us, 1500u);
    EXPECT_EQ(it->consecutive_failures, 1u);
    EXPECT_EQ(it->backoff_delay_ns, 10 * kMs);
    EXPECT_EQ(it->time_wait, -1);
}

TEST(ShareProm, TextfileNamesEachShareAndDestination) {
    Buffer b(64, 8, "php-pool");
    Segment seg = b.segment();
    for (int port = 1; port <= 25; ++port)
        seg.find_or_add(ep("10.0.0.1", static_cast<std::uint16_t>(port)), 1)
            ->connects.store(static_cast<std::uint64_t>(port));
    Entry& redis = *seg.find_or_add(ep("127.0.0.1", 6379), 1);
    redis.connects.store(1000);
    record_failure(redis, k10msTo1s, kT0, 0.5);
    auto s = snapshot(seg, [](std::uint64_t) { return true; });
    for (auto& v : s.entries) v.time_wait = v.dest.port == 6379 ? 7 : 0;
    std::string text = render_shares_prom(std::span<const Snapshot>(&s, 1));
    EXPECT_NE(text.find("tcpfix_share_info{share=\"php-pool\",uid=\"1000\"} 1\n"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("tcpfix_share_connects_total{share=\"php-pool\",destination=\"127.0.0.1:"
                        "6379\"} 1000\n"),
              std::string::npos);
    EXPECT_NE(text.find("tcpfix_share_backoff_delay_seconds{share=\"php-pool\",destination=\"127.0."
                        "0.1:6379\"} 0.01\n"),
              std::string::npos);
    EXPECT_NE(text.find("tcpfix_share_time_wait_sockets{share=\"php-pool\",destination=\"127.0.0.1:"
                        "6379\"} 7\n"),
              std::string::npos);
    // 26 destinations: the 20 busiest named, 6 summed: 1+2+...+6 connects.
    EXPECT_NE(
        text.find("tcpfix_share_connects_total{share=\"php-pool\",destination=\"other\"} 21\n"),
        std::string::npos)
        << text;
    EXPECT_EQ(text.find("destination=\"10.0.0.1:6\""), std::string::npos);
    // Every family's # TYPE exactly once.
    std::set<std::string> types;
    std::size_t at = 0;
    while ((at = text.find("# TYPE ", at)) != std::string::npos) {
        auto end = text.find(' ', at + 7);
        EXPECT_TRUE(types.insert(text.substr(at + 7, end - at - 7)).second);
        at = end;
    }
    EXPECT_EQ(types.size(), 14u);
    // No shares: families without samples, still valid.
    EXPECT_NE(render_shares_prom({}).find("# TYPE tcpfix_share_processes gauge"),
              std::string::npos);
}

}  // namespace
}  // namespace tcpfix::policy::share
