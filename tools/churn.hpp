// `tcpfix churn`: the options, what each worker thread counts, and the loop
// a worker runs. churn.cpp parses and reports; churn_worker.cpp connects.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <string>

#include "tools/histogram.hpp"
#include "tools/net.hpp"

namespace tcpfix::tools {

struct ChurnOptions {
    std::string host;
    int port = 0;
    double rate_per_s = 0;  // 0: as fast as possible
    std::int64_t duration_ns = 5'000'000'000;
    std::int64_t count = 0;  // 0: no limit but the duration
    int concurrency = 1;
    std::string request;  // unescaped bytes to write after connect; may be empty
    bool read = false;
    std::int64_t connect_timeout_ns = 1'000'000'000;
    bool close_rst = false;
    bool json = false;
    bool ipv4 = false, ipv6 = false;
};

// What one worker saw. attempts == ok + the sum of errors, always.
struct ChurnTotals {
    std::uint64_t attempts = 0;
    std::uint64_t ok = 0;           // connected, and the request/reply (if any) went through
    std::uint64_t connects_ok = 0;  // handshakes completed (ok + errors after connect)
    std::uint64_t replies = 0;      // attempts that read at least one byte
    std::uint64_t bytes_sent = 0;
    std::uint64_t bytes_received = 0;
    // By errno name; errors after the handshake carry their phase: "write:EPIPE".
    std::map<std::string, std::uint64_t> errors;
    Histogram latency;  // of completed handshakes

    void merge(const ChurnTotals& other);
};

// Shared by all workers: the schedule and the ways to stop.
struct ChurnPlan {
    Address to;
    std::int64_t start_ns = 0;
    std::int64_t end_ns = 0;  // no attempt starts at or after this
    int stop_fd = -1;         // readable once SIGINT/SIGTERM arrived
    std::atomic<std::uint64_t> next_ticket{0};
    std::atomic<bool> stop{false};
};

// Runs attempts until the schedule, the count or a signal ends them.
void churn_worker(const ChurnOptions& o, ChurnPlan& plan, ChurnTotals& totals);

}  // namespace tcpfix::tools
