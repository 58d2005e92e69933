#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>

#include "policy/stats.hpp"
#include "tools/churn.hpp"

namespace tcpfix::tools {
namespace {

constexpr std::int64_t kIoBudgetNs = 1'000'000'000;  // for the request and for the reply

// Writes all of `data`; returns 0 or the errno (ETIMEDOUT past the budget).
int send_all(int fd, std::string_view data, int stop_fd, std::uint64_t& sent) {
    auto deadline = mono_ns() + kIoBudgetNs;
    while (!data.empty()) {
        auto n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n > 0) {
            sent += static_cast<std::uint64_t>(n);
            data.remove_prefix(static_cast<std::size_t>(n));
        } else if (errno == EAGAIN || errno == EINTR) {
            if (int err = wait_fd(fd, POLLOUT, deadline, stop_fd); err != 0) return err;
        } else {
            return errno;
        }
    }
    return 0;
}

// Reads until EOF or for at most the budget (the end of the budget is not an
// error: the reply may simply not close). Returns 0 or the errno.
int read_reply(int fd, int stop_fd, ChurnTotals& t) {
    auto deadline = mono_ns() + kIoBudgetNs;
    bool got = false;
    char buf[16384];
    while (true) {
        int err = wait_fd(fd, POLLIN, deadline, stop_fd);
        if (err == ETIMEDOUT) break;
        if (err != 0) return err;
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n == 0) break;
        if (n < 0 && errno != EAGAIN && errno != EINTR) return errno;
        if (n > 0) {
            t.bytes_received += static_cast<std::uint64_t>(n);
            got = true;
        }
    }
    if (got) ++t.replies;
    return 0;
}

void count_error(ChurnTotals& t, std::string_view phase, int err) {
    auto name = policy::errno_name(err);
    ++t.errors[phase.empty() ? name : fmt::format("{}:{}", phase, name)];
}

// One attempt, accounted exactly once: as ok or as a named error.
void attempt(const ChurnOptions& o, ChurnPlan& plan, ChurnTotals& t) {
    ++t.attempts;
    auto r = timed_connect(plan.to, mono_ns() + o.connect_timeout_ns, plan.stop_fd);
    int err = r.err;
    std::string_view phase;
    if (err == 0) {
        ++t.connects_ok;
        t.latency.record(r.latency_ns);
        if (!o.request.empty()) {
            err = send_all(r.fd.get(), o.request, plan.stop_fd, t.bytes_sent);
            phase = "write";
        }
        if (err == 0 && o.read) {
            err = read_reply(r.fd.get(), plan.stop_fd, t);
            phase = "read";
        }
    }
    if (o.close_rst)
        close_rst(std::move(r.fd));
    else
        r.fd.reset();
    if (err == 0) {
        ++t.ok;
        return;
    }
    count_error(t, phase, err);
    if (err == EINTR) plan.stop = true;  // our own stop signal, not the network's
}

}  // namespace

void ChurnTotals::merge(const ChurnTotals& other) {
    attempts += other.attempts;
    ok += other.ok;
    connects_ok += other.connects_ok;
    replies += other.replies;
    bytes_sent += other.bytes_sent;
    bytes_received += other.bytes_received;
    for (const auto& [name, n] : other.errors) errors[name] += n;
    latency.merge(other.latency);
}

void churn_worker(const ChurnOptions& o, ChurnPlan& plan, ChurnTotals& t) {
    const long double period_ns = o.rate_per_s > 0 ? 1e9L / o.rate_per_s : 0;
    while (!plan.stop) {
        auto ticket = plan.next_ticket.fetch_add(1);
        if (o.count > 0 && ticket >= static_cast<std::uint64_t>(o.count)) break;
        if (period_ns > 0) {
            // An absolute schedule: attempt N is due at start + N * period, so
            // a late attempt does not push back the ones after it.
            auto due = plan.start_ns + static_cast<std::int64_t>(ticket * period_ns);
            if (due >= plan.end_ns) break;
            if (wait_fd(plan.stop_fd, POLLIN, due, -1) == 0) {
                plan.stop = true;
                break;
            }
        }
        if (mono_ns() >= plan.end_ns || plan.stop) break;
        attempt(o, plan, t);
    }
}

}  // namespace tcpfix::tools
