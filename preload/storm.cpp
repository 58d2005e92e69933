// Reconnect storms (incident 001): pace connects per destination
// (TCPFIX_RECONNECT_BACKOFF, TCPFIX_CONNECT_RATE), recognise connections the
// application abandoned, and shut down sockets it left in CLOSE_WAIT
// (TCPFIX_REAP_CLOSE_WAIT) so their ports go back to the system while the
// descriptors stay the application's.
//
// With TCPFIX_SHARE the pacing state of a destination lives in the share
// (preload/share.cpp, policy/share.*): one rate schedule and one backoff for
// every process naming it, and the counts add up there too. This process's
// own counters (TCPFIX_STATS) are kept as without a share.
//
// The scan reads TCP_INFO of this process's matched connections. It runs
// from matched connects, at most once per scan interval, and — only when
// reaping is on — from the connect watchdog's thread at the same interval: a
// process that leaked and stopped connecting still holds the ports, and only
// a timer can give them back.
#include "preload/storm.hpp"

#include <fcntl.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>

#include "preload/connect_policy.hpp"
#include "preload/hooks.hpp"
#include "preload/kernel.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"
#include "preload/share.hpp"

namespace tcpfix::storm {
namespace {

using runtime::call_errno;

constexpr std::uint64_t kReapsLoggedOneByOne = 10;  // per destination, then summaries
constexpr std::int64_t kSummaryEveryNs = 10'000'000'000;

constexpr std::int64_t kJudgeEveryNs = 50'000'000;

std::atomic<bool> g_scanning{false};
std::atomic<std::uint32_t> g_busy_index{0};  // the one slot a scan marks busy, if any
std::atomic<std::int64_t> g_last_judge_ns{0};
std::atomic<std::int64_t> g_last_reap_ns{0};
std::atomic<std::int64_t> g_last_summary_ns{0};

double random01() {
    thread_local std::uint64_t state = 0;
    if (state == 0) state = static_cast<std::uint64_t>(runtime::now_ns()) ^ (static_cast<std::uint64_t>(runtime::pid()) << 32) ^ 0x9e3779b97f4a7c15ULL;
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return static_cast<double>(state >> 11) / 9007199254740992.0;
}

bool enabled() {
    const auto& c = runtime::config();
    return c.reconnect_backoff || c.reap_close_wait_ns;
}

bool read_use(int fd, const fdtable::Slot& s, std::int64_t now, policy::ConnectionUse& use) {
    tcp_info info{};
    socklen_t len = sizeof info;
    if (call_errno(real::getsockopt.get(), fd, IPPROTO_TCP, TCP_INFO, static_cast<void*>(&info), &len) != 0)
        return false;
    int unread = 0;
    if (ioctl(fd, SIOCINQ, &unread) != 0) unread = 0;
    use.state = static_cast<policy::TcpState>(info.tcpi_state);
    use.age_ns = now - s.connect_start_ns;
    if (len < offsetof(tcp_info, tcpi_bytes_received) + sizeof info.tcpi_bytes_received) {
        // Linux < 4.1: no byte counters (policy::looks_abandoned says what is judged then).
        kernel::missing(policy::Facility::TcpInfoBytes, "TCP_INFO is shorter");
        use.counters_known = false;
        use.unread = static_cast<std::uint32_t>(std::max(unread, 0));
        return true;
    }
    use.bytes_received = policy::data_bytes_received(use.state, info.tcpi_bytes_received);
    // tcpi_bytes_sent needs Linux 4.19; before it, bytes_acked is the best sign of a write.
    use.bytes_sent = len >= offsetof(tcp_info, tcpi_bytes_sent) + sizeof info.tcpi_bytes_sent
                         ? info.tcpi_bytes_sent
                         : info.tcpi_bytes_acked;
    use.unread = static_cast<std::uint32_t>(std::max(unread, 0));
    return true;
}

void log_reaped(int fd, const fdtable::Slot& s, policy::DestinationState& d, const policy::ConnectionUse& use,
                std::int64_t now) {
    std::uint64_t reaped = d.reaped.load(std::memory_order_relaxed);
    if (reaped <= kReapsLoggedOneByOne) {
        d.reaped_logged.store(reaped, std::memory_order_relaxed);
        log::at(policy::LogLevel::Warn,
                "leak: fd {} to {} sat in CLOSE_WAIT (the peer closed, the application never did) "
                "{} after its connect, {} unread bytes; shut down to free its port{}",
                fd, s.dest(), policy::format_duration(use.age_ns), use.unread,
                reaped == kReapsLoggedOneByOne ? " (further leaks to it are summarised)" : "");
        return;
    }
    std::int64_t last = g_last_summary_ns.load(std::memory_order_relaxed);
    if (now - last >= kSummaryEveryNs && g_last_summary_ns.compare_exchange_strong(last, now)) summarise();
}

// A connection to a shared destination went well: healthy for every process,
// and whoever waits for a backoff turn goes now.
void succeed_shared(policy::share::Entry& e) {
    if (policy::share::record_success(e)) share::wake_all(e);
}

// Classifies one connection (`judging`) and reaps it if it has sat in
// CLOSE_WAIT too long (`reaping`).
void scan_one(int fd, std::uint32_t index, std::int64_t now, bool judging, bool reaping) {
    const policy::Config& config = runtime::config();
    fdtable::Slot& s = fdtable::slot(index);
    std::uint32_t flags = s.flags.load(std::memory_order_acquire);
    // A connect still pending is in SYN_SENT: neither abandoned nor in
    // CLOSE_WAIT, whatever its flag says (the application may never read SO_ERROR).
    if ((flags & fdtable::kConnectCalled) == 0 || (flags & fdtable::kMatched) == 0 ||
        (flags & fdtable::kReaped) != 0)
        return;
    bool judge = judging && config.reconnect_backoff && (flags & fdtable::kJudged) == 0;
    bool reap = reaping && config.reap_close_wait_ns && (flags & fdtable::kExplicitPort) == 0;
    if (!judge && !reap) return;

    // Never act on a descriptor the application is closing: close() takes the
    // number out of the table first, then waits for busy to clear.
    g_busy_index.store(index, std::memory_order_relaxed);
    s.busy.fetch_add(1, std::memory_order_seq_cst);
    if (fdtable::lookup(fd) == index) {
        policy::ConnectionUse use;
        if (read_use(fd, s, now, use)) {
            policy::DestinationState& d = runtime::counters().destinations.get(s.dest());
            policy::share::Entry* shared = share::entry(s.dest(), d);
            if (judge && policy::looks_abandoned(use)) {
                s.flags.fetch_or(fdtable::kJudged | fdtable::kAbandoned, std::memory_order_acq_rel);
                policy::bump(d.leaks);
                policy::record_failure(d, *config.reconnect_backoff, now, random01());
                if (shared != nullptr) {
                    shared->leaks.fetch_add(1, std::memory_order_relaxed);
                    policy::share::record_failure(*shared, *config.reconnect_backoff, now,
                                                  random01());
                }
                log::at(policy::LogLevel::Info, "fd {} to {}: abandoned by the application ({} unread bytes, nothing written)",
                        fd, s.dest(), use.unread);
            } else if (judge && policy::carried_data(use)) {
                s.flags.fetch_or(fdtable::kJudged, std::memory_order_acq_rel);
                policy::record_success(d);
                if (shared != nullptr) succeed_shared(*shared);
            }
            if (reap && use.state == policy::TcpState::CloseWait) {
                if ((flags & fdtable::kCloseWaitSeen) == 0) {
                    s.aux.store(static_cast<std::uint32_t>(now / 1'000'000), std::memory_order_relaxed);
                    s.flags.fetch_or(fdtable::kCloseWaitSeen, std::memory_order_acq_rel);
                } else if (std::int64_t{static_cast<std::uint32_t>(now / 1'000'000) -
                                        s.aux.load(std::memory_order_relaxed)} * 1'000'000 >=
                               *config.reap_close_wait_ns &&
                           call_errno(::shutdown, fd, SHUT_RDWR) == 0) {
                    s.flags.fetch_or(fdtable::kReaped, std::memory_order_acq_rel);
                    bool new_leak = (s.flags.load() & fdtable::kAbandoned) == 0;
                    if (new_leak) policy::bump(d.leaks);
                    policy::bump(d.reaped);
                    if (shared != nullptr) {
                        if (new_leak) shared->leaks.fetch_add(1, std::memory_order_relaxed);
                        shared->reaped.fetch_add(1, std::memory_order_relaxed);
                    }
                    policy::bump(runtime::counters().close_wait_reaped);
                    log_reaped(fd, s, d, use, now);
                }
            }
        }
    }
    s.busy.fetch_sub(1, std::memory_order_seq_cst);
    g_busy_index.store(0, std::memory_order_relaxed);
}

// Whether the application made fd non-blocking: asked only when a connect
// is about to wait (a signal then ends a blocking caller's wait, EINTR).
bool is_nonblocking(int fd) {
    int status = call_errno(real::fcntl.get(), fd, F_GETFL);
    return status >= 0 && (status & O_NONBLOCK) != 0;
}

// Sleeps until `until`; false when a signal should end the wait with EINTR.
bool sleep_until(std::int64_t until, bool nonblocking) {
    for (;;) {
        std::int64_t left = until - runtime::now_ns();
        if (left <= 0) return true;
        timespec ts{static_cast<time_t>(left / 1'000'000'000), static_cast<long>(left % 1'000'000'000)};
        if (nanosleep(&ts, nullptr) == 0) return true;
        if (errno != EINTR) return true;
        if (!nonblocking && !connect_policy::handlers_restart()) return false;
    }
}

// The share's schedules for a connect to `e`: the backoff turn (waiting
// until it is free, or until a success anywhere ends the failing spell), then
// the rate slot. Returns 0, or -EINTR as sleep_until.
int pace_shared(int fd, fdtable::Slot& s, policy::share::Entry& e, std::int64_t start) {
    const policy::Config& config = runtime::config();
    std::int64_t now = start;
    int record = -1;
    bool waited = false, interrupted = false, nonblocking = false;
    auto begin_wait = [&] {
        if (!waited) {
            record = share::mark_waiting(e);
            nonblocking = is_nonblocking(fd);
        }
        waited = true;
    };
    if (config.reconnect_backoff) {
        for (;;) {
            std::uint32_t seen = e.wake.load(std::memory_order_acquire);
            std::int64_t wait =
                policy::share::claim_backoff_turn(e, *config.reconnect_backoff, now, random01());
            if (wait == 0) break;
            begin_wait();
            if (!share::wait_for_wake(e, seen, now + wait, nonblocking)) {
                interrupted = true;
                break;
            }
            now = runtime::now_ns();
        }
    }
    if (!interrupted && config.connect_rate_per_s) {
        std::int64_t wait = policy::share::reserve_rate_slot(e, *config.connect_rate_per_s, now);
        if (wait > 0) {
            begin_wait();
            interrupted = !sleep_until(now + wait, nonblocking);
        }
    }
    if (!waited) return 0;
    share::unmark_waiting(record);
    std::int64_t after = runtime::now_ns();
    s.connect_start_ns.store(after, std::memory_order_relaxed);  // the handshake starts after the wait
    std::int64_t spent = after - start;
    policy::bump(runtime::counters().throttled_ms, static_cast<std::uint64_t>(spent / 1'000'000));
    e.throttled_us.fetch_add(static_cast<std::uint64_t>(spent / 1000), std::memory_order_relaxed);
    log::at(policy::LogLevel::Debug, "connect fd {} to {}: paced by the share, waited {}", fd,
            s.dest(), policy::format_duration(spent));
    return interrupted ? -EINTR : 0;
}

}  // namespace

std::int64_t scan_interval_ns() {
    const auto& c = runtime::config();
    if (!c.reap_close_wait_ns) return kJudgeEveryNs;
    return std::clamp<std::int64_t>(*c.reap_close_wait_ns / 4, 10'000'000, 1'000'000'000);
}

void scan(std::int64_t now) {
    const policy::Config& config = runtime::config();
    bool judging = config.reconnect_backoff && now - g_last_judge_ns.load(std::memory_order_relaxed) >= kJudgeEveryNs;
    bool reaping = config.reap_close_wait_ns && now - g_last_reap_ns.load(std::memory_order_relaxed) >= scan_interval_ns();
    if (!judging && !reaping) return;
    if (g_scanning.exchange(true, std::memory_order_acquire)) return;
    runtime::ErrnoGuard keep_errno;
    // No signal handler runs in this thread during the scan: one that closed
    // the descriptor being scanned would wait for this very thread.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (judging) g_last_judge_ns.store(now, std::memory_order_relaxed);
    if (reaping) g_last_reap_ns.store(now, std::memory_order_relaxed);
    fdtable::for_each(0, fdtable::kMaxFd - 1, [=](int fd, std::uint32_t index) {
        if (index != fdtable::kOwned) scan_one(fd, index, now, judging, reaping);
    });
    g_scanning.store(false, std::memory_order_release);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

std::int64_t on_timer(std::int64_t now) {
    if (!runtime::config().reap_close_wait_ns) return INT64_MAX;
    scan(now);
    return g_last_reap_ns.load(std::memory_order_relaxed) + scan_interval_ns();
}

int before_connect(int fd, fdtable::Slot& s, policy::DestinationState& d) {
    const policy::Config& config = runtime::config();
    policy::share::Entry* shared = share::entry(s.dest(), d);
    if (shared != nullptr) shared->connects.fetch_add(1, std::memory_order_relaxed);
    if (!enabled() && !config.connect_rate_per_s) return 0;
    std::int64_t now = runtime::now_ns();
    if (enabled()) {
        if (config.reap_close_wait_ns) connect_policy::start_timer();
        scan(now);
    }
    if (shared != nullptr) return pace_shared(fd, s, *shared, now);
    std::int64_t until = now;
    if (config.reconnect_backoff)
        until += policy::reserve_backoff_slot(d, *config.reconnect_backoff, now, random01());
    if (config.connect_rate_per_s) until += policy::reserve_rate_slot(d, *config.connect_rate_per_s, until);
    if (until <= now) return 0;
    log::at(policy::LogLevel::Debug, "connect fd {} to {}: paced, waiting {}", fd, s.dest(),
            policy::format_duration(until - now));
    bool done = sleep_until(until, is_nonblocking(fd));
    std::int64_t after = runtime::now_ns();
    s.connect_start_ns.store(after, std::memory_order_relaxed);  // the handshake starts after the wait
    policy::bump(runtime::counters().throttled_ms, static_cast<std::uint64_t>((after - now) / 1'000'000));
    return done ? 0 : -EINTR;
}

void after_failure(const fdtable::Slot& s) {
    const policy::Config& config = runtime::config();
    policy::DestinationState& d = runtime::counters().destinations.get(s.dest());
    const bool matched = (s.flags.load(std::memory_order_relaxed) & fdtable::kMatched) != 0;
    if (config.reconnect_backoff && matched)
        policy::record_failure(d, *config.reconnect_backoff, runtime::now_ns(), random01());
    else
        policy::bump(d.failures);  // counted for the stats all the same
    if (!matched) return;
    if (policy::share::Entry* shared = share::entry(s.dest(), d)) {
        if (config.reconnect_backoff)
            policy::share::record_failure(*shared, *config.reconnect_backoff, runtime::now_ns(),
                                          random01());
        else
            shared->failures.fetch_add(1, std::memory_order_relaxed);
    }
}

void on_close_backoff(int fd, fdtable::Slot& s) {
    const policy::Config& config = runtime::config();
    std::uint32_t flags = s.flags.load(std::memory_order_acquire);
    if (!config.reconnect_backoff || (flags & fdtable::kConnectCalled) == 0 || (flags & fdtable::kMatched) == 0 ||
        (flags & fdtable::kJudged) != 0)
        return;
    // Judged when the connection ends; a copy closed before then changes nothing.
    if (!hooks::closing_ends_connection(config.close, s)) return;
    policy::DestinationState& d = runtime::counters().destinations.get(s.dest());
    policy::share::Entry* shared = share::entry(s.dest(), d);
    const bool failing = d.consecutive_failures.load(std::memory_order_relaxed) != 0;
    const bool shared_failing =
        shared != nullptr && shared->consecutive_failures.load(std::memory_order_relaxed) != 0;
    if (!failing && !shared_failing) return;  // nothing to reset
    runtime::ErrnoGuard keep_errno;
    policy::ConnectionUse use;
    if (!read_use(fd, s, runtime::now_ns(), use)) return;
    if (policy::succeeded_at_close(use)) {
        policy::record_success(d);
        if (shared_failing) succeed_shared(*shared);
    } else if (shared_failing && policy::probe_succeeded(use)) {
        // Not a success for this process's own backoff (a prober's dies with
        // it), but for a share: the loop's next prober must not inherit a
        // backoff from a server that has come back.
        succeed_shared(*shared);
    }
}

void after_fork_in_child() {
    // A scan under way in another thread at the fork never finishes here.
    std::uint32_t busy = g_busy_index.exchange(0, std::memory_order_relaxed);
    if (busy != 0) fdtable::slot(busy).busy.store(0, std::memory_order_relaxed);
    g_scanning.store(false, std::memory_order_relaxed);
}

void summarise() {
    runtime::counters().destinations.for_each([](const policy::Endpoint& ep, policy::DestinationState& d) {
        std::uint64_t reaped = d.reaped.load(std::memory_order_relaxed);
        if (reaped <= d.reaped_logged.load(std::memory_order_relaxed)) return;
        d.reaped_logged.store(reaped, std::memory_order_relaxed);
        log::at(policy::LogLevel::Warn, "{}: {} sockets leaked by the application in CLOSE_WAIT, reaped", ep, reaped);
    });
}

}  // namespace tcpfix::storm
