// Helpers of the share tests (share_test.cpp, share_pacing_test.cpp): a
// buffer standing in for the /dev/shm segment, and destinations.
#pragma once

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string_view>

#include "policy/share.hpp"

namespace tcpfix::policy::share::test {

constexpr std::int64_t kMs = 1'000'000;
constexpr std::int64_t kS = 1'000'000'000;
constexpr std::int64_t kT0 = 1'000 * kS;  // a CLOCK_MONOTONIC reading far from 0
constexpr std::uint32_t kUid = 1000;

// A zeroed, 64-byte aligned buffer holding a fresh segment, as a new file is.
class Buffer {
  public:
    Buffer(std::uint32_t entries, std::uint32_t procs, std::string_view name = "pool")
        : size_(segment_size(entries, procs)),
          mem_(static_cast<unsigned char*>(std::aligned_alloc(64, round(size_)))) {
        std::memset(mem_.get(), 0, round(size_));
        initialise(mem_.get(), entries, procs, name, kUid, 1'700'000'000);
    }
    void* base() { return mem_.get(); }
    std::size_t size() const { return size_; }
    Header& header() { return *static_cast<Header*>(base()); }
    Segment segment() {
        EXPECT_EQ(validate(base(), size(), kUid), Problem::None);
        return Segment(base());
    }
    void reseal() { header().checksum = header_checksum(header()); }

  private:
    static std::size_t round(std::size_t n) { return (n + 63) / 64 * 64; }
    struct Free {
        void operator()(unsigned char* p) const { std::free(p); }
    };
    std::size_t size_;
    std::unique_ptr<unsigned char, Free> mem_;
};

inline Endpoint ep(const char* ip, std::uint16_t port) {
    Endpoint e;
    e.addr = *parse_ip(ip);
    e.port = port;
    return e;
}

constexpr Backoff k10msTo1s{10 * kMs, 1 * kS};

}  // namespace tcpfix::policy::share::test
