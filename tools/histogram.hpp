// Latencies in bounded memory: log-linear buckets (64 per power of two, so a
// percentile is within 1.6 % of the truth), exact min and max. Churn may
// record millions of connects an hour; a vector of them would not be bounded.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <limits>

namespace tcpfix::tools {

class Histogram {
  public:
    void record(std::int64_t ns) {
        auto v = static_cast<std::uint64_t>(std::max<std::int64_t>(ns, 0));
        ++buckets_[index(v)];
        ++count_;
        min_ = std::min(min_, v);
        max_ = std::max(max_, v);
    }

    void merge(const Histogram& other) {
        for (std::size_t i = 0; i < kBuckets; ++i) buckets_[i] += other.buckets_[i];
        count_ += other.count_;
        min_ = std::min(min_, other.min_);
        max_ = std::max(max_, other.max_);
    }

    std::uint64_t count() const { return count_; }
    std::int64_t min() const { return count_ ? static_cast<std::int64_t>(min_) : 0; }
    std::int64_t max() const { return static_cast<std::int64_t>(max_); }

    // The nearest-rank percentile (0 < p <= 100) as its bucket's midpoint,
    // clamped to [min, max]; 0 when empty.
    std::int64_t percentile(double p) const {
        if (count_ == 0) return 0;
        auto rank = static_cast<std::uint64_t>(p / 100.0 * static_cast<double>(count_) + 0.999999);
        rank = std::clamp<std::uint64_t>(rank, 1, count_);
        std::uint64_t seen = 0;
        for (std::size_t i = 0; i < kBuckets; ++i) {
            seen += buckets_[i];
            if (seen >= rank) {
                auto mid = lower(i) + (lower(i + 1) - lower(i)) / 2;
                return static_cast<std::int64_t>(std::clamp(mid, min_, max_));
            }
        }
        return max();
    }

  private:
    static constexpr unsigned kSub = 64;  // buckets per power of two
    static constexpr std::size_t kBuckets = (64 - 6 + 1) * kSub;

    static std::size_t index(std::uint64_t v) {
        if (v < kSub) return v;
        unsigned e = static_cast<unsigned>(std::bit_width(v)) - 1;  // >= 6
        return (e - 5) * kSub + ((v >> (e - 6)) & (kSub - 1));
    }
    static std::uint64_t lower(std::size_t i) {
        if (i < kSub) return i;
        unsigned e = static_cast<unsigned>(i / kSub) + 5;
        if (e >= 64) return std::numeric_limits<std::uint64_t>::max();
        return (kSub + i % kSub) << (e - 6);
    }

    std::array<std::uint64_t, kBuckets> buckets_{};
    std::uint64_t count_ = 0;
    std::uint64_t min_ = std::numeric_limits<std::uint64_t>::max();
    std::uint64_t max_ = 0;
};

}  // namespace tcpfix::tools
