// The connect-latency histogram (policy/stats.hpp LatencyHistogram): where
// each value lands, percentiles never below the true value and at most one
// bucket (25%) above it on known distributions, the exact maximum, the empty
// and reset histogram, values beyond the last bucket, and racing recorders.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "policy/stats.hpp"
#include "test_util.hpp"

namespace tcpfix::policy {
namespace {

using test::race;
using test::row_name;

constexpr std::int64_t kUs = 1'000;
constexpr std::int64_t kMs = 1'000'000;
constexpr std::int64_t kS = 1'000'000'000;
constexpr int kLast = LatencyHistogram::kBuckets - 1;

// The histogram is 1.3 KB of atomics: keep it off the test's stack frame.
std::unique_ptr<LatencyHistogram> histogram_of(const std::vector<std::int64_t>& ns) {
    auto h = std::make_unique<LatencyHistogram>();
    for (auto v : ns) h->record_ns(v);
    return h;
}

// A bucket's lower bound in us (bucket 0 starts at 0).
double lower_bound_us(int bucket) {
    return bucket == 0 ? 0.0 : LatencyHistogram::upper_bound_us(bucket - 1);
}

// ---------------------------------------------------------------------------
// Buckets: 1 us, then 4 per power of two.

struct BucketCase {
    std::int64_t ns;
    int bucket;
};

void PrintTo(const BucketCase& c, std::ostream* os) {
    *os << c.ns << " ns";
}

class LatencyBucketOf : public ::testing::TestWithParam<BucketCase> {};

TEST_P(LatencyBucketOf, Is) {
    EXPECT_EQ(LatencyHistogram::bucket_of(GetParam().ns), GetParam().bucket);
}

INSTANTIATE_TEST_SUITE_P(
    LatencyBucketTable, LatencyBucketOf,
    ::testing::Values(BucketCase{std::numeric_limits<std::int64_t>::min(), 0}, BucketCase{-1, 0},
                      BucketCase{0, 0}, BucketCase{999, 0},
                      // [1, 2) us in quarters of a microsecond
                      BucketCase{1000, 1}, BucketCase{1249, 1}, BucketCase{1250, 2},
                      BucketCase{1499, 2}, BucketCase{1500, 3}, BucketCase{1749, 3},
                      BucketCase{1750, 4}, BucketCase{1999, 4},
                      // [2, 4) us in halves
                      BucketCase{2000, 5}, BucketCase{2499, 5}, BucketCase{2500, 6},
                      BucketCase{2999, 6}, BucketCase{3000, 7}, BucketCase{3500, 8},
                      BucketCase{3999, 8},
                      // [4, 8) us in whole microseconds
                      BucketCase{4000, 9}, BucketCase{4999, 9}, BucketCase{5000, 10},
                      BucketCase{7999, 12}, BucketCase{8000, 13},
                      // 1 ms lies in [896, 1024) us; 1 s in [917504, 1048576) us
                      BucketCase{1 * kMs, 40}, BucketCase{1 * kS, 80},
                      BucketCase{std::numeric_limits<std::int64_t>::max(), kLast}),
    [](const auto& info) {
        return row_name(info.index, (info.param.ns < 0 ? "minus " : "") +
                                        std::to_string(info.param.ns < 0 ? 0 : info.param.ns) +
                                        " ns");
    });

TEST(LatencyBuckets, UpperBoundsRiseByAtMostAQuarter) {
    EXPECT_EQ(LatencyHistogram::upper_bound_us(0), 1.0);
    EXPECT_EQ(LatencyHistogram::upper_bound_us(1), 1.25);
    EXPECT_EQ(LatencyHistogram::upper_bound_us(4), 2.0);
    EXPECT_EQ(LatencyHistogram::upper_bound_us(40), 1024.0);
    for (int b = 1; b < LatencyHistogram::kBuckets; ++b) {
        double lo = LatencyHistogram::upper_bound_us(b - 1),
               hi = LatencyHistogram::upper_bound_us(b);
        EXPECT_GT(hi, lo) << b;
        EXPECT_LE(hi, lo * 1.25) << b;
    }
}

// Every value lands in the bucket whose bounds hold it: lower <= v < upper.
// Walks every nanosecond up to 2 ms, then a geometric sweep to the last bucket.
TEST(LatencyBuckets, EveryValueLiesWithinItsBucket) {
    auto check = [](std::int64_t ns) {
        int b = LatencyHistogram::bucket_of(ns);
        double us = static_cast<double>(ns) / 1000.0;
        ASSERT_GE(b, 0) << ns;
        ASSERT_LT(b, kLast) << ns;
        ASSERT_LE(lower_bound_us(b), us) << ns << " ns in bucket " << b;
        ASSERT_LT(us, LatencyHistogram::upper_bound_us(b)) << ns << " ns in bucket " << b;
    };
    for (std::int64_t ns = 0; ns <= 2 * kMs; ++ns) {
        check(ns);
        if (::testing::Test::HasFatalFailure()) return;
    }
    const auto last_lower_ns = static_cast<std::int64_t>(lower_bound_us(kLast) * 1000.0);
    for (double x = 2e6; x < static_cast<double>(last_lower_ns); x *= 1.0007) {
        check(static_cast<std::int64_t>(x));
        check(static_cast<std::int64_t>(x) + 1);
        if (::testing::Test::HasFatalFailure()) return;
    }
}

TEST(LatencyBuckets, BucketOfNeverGoesDownAndReachesEveryBucket) {
    int previous = 0;
    for (double x = 1; x < 1e18; x *= 1.01) {
        int b = LatencyHistogram::bucket_of(static_cast<std::int64_t>(x));
        EXPECT_GE(b, previous) << x;
        previous = b;
    }
    for (int b = 1; b < LatencyHistogram::kBuckets; ++b) {
        auto lower_ns = static_cast<std::int64_t>(lower_bound_us(b) * 1000.0);
        EXPECT_EQ(LatencyHistogram::bucket_of(lower_ns), b) << "lower bound of " << b;
        EXPECT_EQ(LatencyHistogram::bucket_of(lower_ns - 1), b - 1) << "just below " << b;
    }
}

// ---------------------------------------------------------------------------
// Percentiles against the truth: for the sample of rank ceil(f * n), the
// histogram answers its bucket's upper bound (at most the maximum), so never
// less than the sample and at most 25% more (at most 1 us below 1 us).

struct Distribution {
    std::string why;
    std::function<std::vector<std::int64_t>()> samples_ns;
};

void PrintTo(const Distribution& d, std::ostream* os) {
    *os << d.why;
}

class LatencyPercentiles : public ::testing::TestWithParam<Distribution> {};

TEST_P(LatencyPercentiles, WithinOneBucketOfTheTruth) {
    std::vector<std::int64_t> samples = GetParam().samples_ns();
    auto h = histogram_of(samples);
    std::sort(samples.begin(), samples.end());
    const auto n = static_cast<double>(samples.size());
    ASSERT_EQ(h->count(), samples.size());
    EXPECT_EQ(h->max_us(), static_cast<double>(samples.back()) / 1000.0) << "the maximum is exact";
    double previous = 0;
    for (double f : {0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0}) {
        auto rank = std::max<std::size_t>(1, static_cast<std::size_t>(std::ceil(f * n - 1e-6)));
        double truth = static_cast<double>(samples[rank - 1]) / 1000.0;
        double got = h->percentile_us(f);
        EXPECT_GE(got, truth) << "p" << f * 100;
        EXPECT_LE(got, std::max(truth * 1.25, 1.0)) << "p" << f * 100;
        EXPECT_LE(got, h->max_us()) << "p" << f * 100;
        EXPECT_GE(got, previous) << "p" << f * 100 << " below a lower percentile";
        previous = got;
    }
    EXPECT_EQ(h->percentile_us(1.0), h->max_us());
    EXPECT_EQ(h->percentile_us(2.0), h->max_us()) << "past 1 is the maximum";
}

std::vector<std::int64_t> uniform_us_1_to_1000() {
    std::vector<std::int64_t> out;
    for (int us = 1; us <= 1000; ++us) out.push_back(us * kUs);
    return out;
}

// Fixed seeds: the same samples on every run.
template <typename Dist>
std::vector<std::int64_t> drawn(Dist dist, int n, unsigned seed) {
    std::mt19937_64 rng(seed);
    std::vector<std::int64_t> out;
    for (int i = 0; i < n; ++i) out.push_back(static_cast<std::int64_t>(dist(rng)));
    return out;
}

INSTANTIATE_TEST_SUITE_P(
    LatencyKnown, LatencyPercentiles,
    ::testing::Values(
        Distribution{"uniform 1 to 1000 us", uniform_us_1_to_1000},
        Distribution{"uniform ns up to 10 ms",
                     [] {
                         return drawn(std::uniform_int_distribution<std::int64_t>(0, 10 * kMs),
                                      100'000, 1);
                     }},
        Distribution{"uniform ns 1 to 4 us",
                     [] {
                         return drawn(std::uniform_int_distribution<std::int64_t>(1000, 3999),
                                      10'000, 2);
                     }},
        Distribution{"log uniform 500 ns to 30 s",
                     [] {
                         std::mt19937_64 rng(3);
                         std::uniform_real_distribution<double> log_ns(std::log(500.0),
                                                                       std::log(30e9));
                         std::vector<std::int64_t> out;
                         for (int i = 0; i < 50'000; ++i)
                             out.push_back(static_cast<std::int64_t>(std::exp(log_ns(rng))));
                         return out;
                     }},
        Distribution{"exponential mean 200 us",
                     [] {
                         return drawn(std::exponential_distribution<double>(1.0 / (200 * kUs)),
                                      50'000, 4);
                     }},
        Distribution{"bimodal loopback and syn retry",
                     [] {
                         std::vector<std::int64_t> out(990, 40 * kUs + 321);
                         out.insert(out.end(), 10, 3 * kS + 17);
                         return out;
                     }},
        Distribution{"one sample", [] { return std::vector<std::int64_t>{123'456}; }},
        Distribution{"seven samples ranks between samples",
                     [] {
                         return std::vector<std::int64_t>{70 * kUs, 10 * kUs, 60 * kUs, 20 * kUs,
                                                          50 * kUs, 30 * kUs, 40 * kUs};
                     }},
        Distribution{"sub microsecond only",
                     [] {
                         return std::vector<std::int64_t>{0, 10, 500, 999};
                     }}),
    [](const auto& info) { return row_name(info.index, info.param.why); });

TEST(LatencyPercentilesExact, UniformOneToThousandMicroseconds) {
    auto h = histogram_of(uniform_us_1_to_1000());
    EXPECT_EQ(h->count(), 1000u);
    EXPECT_EQ(h->percentile_us(0.50), 512.0) << "500 us lies in [448, 512)";
    EXPECT_EQ(h->percentile_us(0.99), 1000.0) << "990 us lies in [896, 1024), capped at the max";
    EXPECT_EQ(h->percentile_us(0.25), 256.0) << "250 us lies in [224, 256)";
    EXPECT_EQ(h->percentile_us(0.001), 1.25) << "1 us lies in [1, 1.25)";
    EXPECT_EQ(h->max_us(), 1000.0);
}

TEST(LatencyPercentilesExact, BimodalSplitsWhereTheModesDo) {
    std::vector<std::int64_t> samples(990, 40 * kUs);
    samples.insert(samples.end(), 10, 3 * kS);
    auto h = histogram_of(samples);
    EXPECT_EQ(h->percentile_us(0.5), 48.0) << "40 us lies in [40, 48)";
    EXPECT_EQ(h->percentile_us(0.99), 48.0) << "rank 990 is still the fast mode";
    EXPECT_EQ(h->percentile_us(0.991), 3e6) << "rank 991 is the slow mode, capped at the max";
    EXPECT_EQ(h->max_us(), 3e6);
}

// The percentile is the sample of rank ceil(f * n): the median of seven is the
// fourth, p10 the first, p90 the seventh.
TEST(LatencyPercentilesExact, RankRoundsUp) {
    auto h = histogram_of({10 * kUs, 20 * kUs, 30 * kUs, 40 * kUs, 50 * kUs, 60 * kUs, 70 * kUs});
    EXPECT_EQ(h->percentile_us(0.5), 48.0) << "40 us lies in [40, 48)";
    EXPECT_EQ(h->percentile_us(0.1), 12.0) << "10 us lies in [10, 12)";
    EXPECT_EQ(h->percentile_us(0.9), 70.0) << "70 us lies in [64, 80), capped at the max";
    EXPECT_EQ(h->percentile_us(3.0 / 7.0), 32.0) << "exactly the third: 30 us lies in [28, 32)";
}

TEST(LatencyPercentilesExact, MaximumIsExactToTheNanosecond) {
    auto h = histogram_of({5 * kUs, 1'234'567, 17});
    EXPECT_EQ(h->max_us(), 1234.567);
    h->record_ns(1'234'566);
    EXPECT_EQ(h->max_us(), 1234.567) << "a smaller value leaves it";
}

// ---------------------------------------------------------------------------
// Edges.

TEST(LatencyEdges, EmptyHistogramAnswersZero) {
    LatencyHistogram h;
    EXPECT_EQ(h.count(), 0u);
    EXPECT_EQ(h.max_us(), 0.0);
    for (double f : {0.0, 0.5, 0.99, 1.0, 2.0}) EXPECT_EQ(h.percentile_us(f), 0.0) << f;
}

TEST(LatencyEdges, NegativeDurationCountsAsZero) {
    LatencyHistogram h;
    h.record_ns(-5);
    EXPECT_EQ(h.count(), 1u);
    EXPECT_EQ(h.max_us(), 0.0);
    EXPECT_EQ(h.percentile_us(0.5), 0.0);
}

// Beyond the last bucket's nominal range (about 11 days) values share it; the
// percentile then answers the exact maximum, never a bound below the samples.
TEST(LatencyEdges, HugeValuesClampToTheLastBucket) {
    const std::int64_t beyond =
        static_cast<std::int64_t>(LatencyHistogram::upper_bound_us(kLast)) * 1000;
    EXPECT_EQ(LatencyHistogram::bucket_of(beyond), kLast);
    EXPECT_EQ(LatencyHistogram::bucket_of(beyond * 100), kLast);

    LatencyHistogram h;
    const std::int64_t huge = std::numeric_limits<std::int64_t>::max();
    h.record_ns(huge);
    EXPECT_EQ(h.count(), 1u);
    EXPECT_EQ(h.max_us(), static_cast<double>(huge) / 1000.0);
    EXPECT_EQ(h.percentile_us(0.5), h.max_us());
    EXPECT_GE(h.percentile_us(0.5), LatencyHistogram::upper_bound_us(kLast));

    for (int i = 0; i < 99; ++i) h.record_ns(10 * kUs);
    EXPECT_EQ(h.percentile_us(0.99), 12.0) << "10 us lies in [10, 12)";
    EXPECT_EQ(h.percentile_us(1.0), h.max_us());
}

TEST(LatencyEdges, ResetForgetsEverything) {
    LatencyHistogram h;
    for (int i = 1; i <= 100; ++i) h.record_ns(i * kMs);
    h.reset();
    EXPECT_EQ(h.count(), 0u);
    EXPECT_EQ(h.max_us(), 0.0);
    EXPECT_EQ(h.percentile_us(0.5), 0.0);
    h.record_ns(5 * kUs);
    EXPECT_EQ(h.count(), 1u);
    EXPECT_EQ(h.max_us(), 5.0) << "not the 100 ms from before the reset";
    EXPECT_EQ(h.percentile_us(0.99), 5.0);
}

// Eight threads record into the same bucket at once: no count is lost.
TEST(LatencyEdges, RacingRecordersLoseNoCount) {
    constexpr int kThreads = 8, kPerThread = 20'000, kRounds = 5;
    for (int round = 0; round < kRounds; ++round) {
        LatencyHistogram h;
        race(kThreads, [&h](int) {
            for (int i = 0; i < kPerThread; ++i) h.record_ns(5 * kUs + i % 100);
        });
        ASSERT_EQ(h.count(), static_cast<std::uint64_t>(kThreads) * kPerThread)
            << "round " << round;
        ASSERT_EQ(h.percentile_us(1.0), 5.099) << "round " << round;
    }
}

// The maximum only ever grows: once record_ns(v) has returned, max_us() is at
// least v, whatever the other threads record meanwhile; and the largest of
// all stays at the end.
TEST(LatencyEdges, RacingRecordersNeverLowerTheMaximum) {
    constexpr int kThreads = 8, kPerThread = 50'000;
    LatencyHistogram h;
    std::atomic<int> lowered{0};
    race(kThreads, [&](int t) {
        for (int i = 0; i < kPerThread; ++i) {
            std::int64_t v = (static_cast<std::int64_t>(i) * kThreads + t) * kUs;
            h.record_ns(v);
            if (h.max_us() * 1000.0 < static_cast<double>(v)) lowered.fetch_add(1);
        }
    });
    EXPECT_EQ(lowered.load(), 0) << "times a thread saw the maximum below its own value";
    EXPECT_EQ(h.max_us(), static_cast<double>(kPerThread * kThreads - 1));
    EXPECT_EQ(h.count(), static_cast<std::uint64_t>(kThreads) * kPerThread);
}

}  // namespace
}  // namespace tcpfix::policy
