// close(), close_range(), closefrom(): apply TCPFIX_CLOSE to a tracked socket
// while its descriptor is still the application's, then close. A socket
// whose last ACK is still due is handed to the background thread (hold.cpp)
// and close() returns at once. A descriptor that is not a tracked socket
// costs one table lookup. Nothing here allocates or locks.
#include <linux/close_range.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

#include <fcntl.h>

#include <algorithm>
#include <cstddef>

#include "policy/close.hpp"
#include "preload/connect_policy.hpp"
#include "preload/fdtable.hpp"
#include "preload/hold.hpp"
#include "preload/hooks.hpp"
#include "preload/kernel.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"
#include "preload/stats_file.hpp"
#include "preload/storm.hpp"

namespace tcpfix::hooks {
namespace {

using policy::CloseAction;

void sleep_ns(std::int64_t ns) {
    timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    nanosleep(&ts, nullptr);  // a signal cuts it short; the caller re-measures
}

// Closes a descriptor taken out of the table.
__attribute__((always_inline)) inline int close_taken(int fd, std::uint32_t index) {
    if (index == fdtable::kOwned) {
        forget_owned(fd);
    } else if (index != 0) {
        const policy::Config& config = runtime::config();
        CloseApplied applied;
        if (closing_only_counts(config, fdtable::slot(index)))
            policy::bump(runtime::counters().closes);
        else
            applied = apply_close_policy(fd, index, hold::Origin::Close);
        fdtable::wait_not_busy(index);
        fdtable::release(index);
        int r = runtime::call_direct(real::close.get(), fd);
        // Linux releases the descriptor even when close() reports an error.
        if (applied.held >= 0) hold::publish(applied.held);
        stats_file::maybe_refresh();
        return r;
    }
    return runtime::call_errno(real::close.get(), fd);
}

}  // namespace

namespace {

// TCP_INFO up to tcpi_notsent_bytes (Linux 4.6+): all the close decision reads.
constexpr socklen_t kTcpInfoNotsentLen =
    offsetof(tcp_info, tcpi_notsent_bytes) + sizeof(tcp_info::tcpi_notsent_bytes);

// SIOCOUTQ: bytes not yet acknowledged, unsent ones and a FIN included.
bool ask_outq(int fd, policy::SocketProbe& probe) {
    int unacked = 0;
    if (ioctl(fd, SIOCOUTQ, &unacked) != 0) return false;
    probe.unacked = static_cast<std::uint32_t>(std::max(unacked, 0));
    probe.unacked_in = policy::Unacked::Bytes;
    return true;
}

}  // namespace

bool probe_socket(int fd, policy::SocketProbe& probe) {
    // Not zeroed up front (some 35 instructions on every close under rst):
    // only what the kernel did not fill is, below.
    tcp_info info;
    socklen_t len = kTcpInfoNotsentLen;
    if (real::getsockopt.get()(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return false;
    if (__builtin_expect(len < kTcpInfoNotsentLen, 0))
        __builtin_memset(reinterpret_cast<char*>(&info) + len, 0, kTcpInfoNotsentLen - len);
    probe.state = static_cast<policy::TcpState>(info.tcpi_state);
    probe.srtt_us = info.tcpi_rtt;
    probe.mss = info.tcpi_snd_mss;
    if (len >= kTcpInfoNotsentLen) {
        // One call: tcpi_notsent_bytes is SIOCOUTQNSD (write_seq - snd_nxt),
        // and tcpi_unacked is zero exactly when everything sent is acknowledged.
        probe.unsent_bytes = info.tcpi_notsent_bytes;
        probe.unacked = info.tcpi_unacked;
        probe.unacked_in = policy::Unacked::Segments;
        // Half-closed with segments in flight: only SIOCOUTQ tells a lone FIN from data.
        return !policy::needs_unacked_bytes(probe) || ask_outq(fd, probe);
    }
    // Linux < 4.6: the two ioctls, as TCP_INFO cannot answer.
    if (!kernel::lacks(policy::Facility::TcpInfoNotsent))
        kernel::missing(policy::Facility::TcpInfoNotsent, "TCP_INFO is shorter");
    if (!ask_outq(fd, probe)) return false;
    // Without SIOCOUTQNSD (Linux < 2.6.36) every queued byte counts as
    // unacknowledged: the close waits for all of it, and never cuts any off.
    int unsent = 0;
    if (!kernel::lacks(policy::Facility::OutqNsd) && ioctl(fd, SIOCOUTQNSD, &unsent) != 0) {
        kernel::missing(policy::Facility::OutqNsd, errno);
        unsent = 0;
    }
    probe.unsent_bytes = static_cast<std::uint32_t>(std::max(unsent, 0));
    return true;
}

void forget_owned(int fd) {
    log::forget_fd(fd);
    hold::forget_fd(fd);
}

namespace {

// bookkeeping(), inlined into the close path.
__attribute__((always_inline)) inline policy::SocketBookkeeping gather(int fd, const fdtable::Slot& s,
                                                                       std::uint32_t flags) {
    policy::SocketBookkeeping book;
    book.connect_called = (flags & fdtable::kConnectCalled) != 0;
    book.matched = (flags & fdtable::kMatched) != 0;
    book.last_reference = s.refs.load(std::memory_order_acquire) == 1;
    book.maybe_shared = s.fork_epoch != fdtable::fork_epoch();
    if (!book.maybe_shared && s.spawn_epoch != fdtable::spawn_epoch()) {
        // A program was spawned since the socket was made: it holds the socket
        // unless the descriptor is close-on-exec.
        int fd_flags = real::fcntl.get()(fd, F_GETFD);
        book.maybe_shared = fd_flags < 0 || (fd_flags & FD_CLOEXEC) == 0;
    }
    book.app_set_linger = (flags & fdtable::kAppLinger) != 0;
    return book;
}

}  // namespace

policy::SocketBookkeeping bookkeeping(int fd, const fdtable::Slot& s, std::uint32_t flags) {
    return gather(fd, s, flags);
}

CloseApplied apply_close_policy(int fd, std::uint32_t index, hold::Origin origin) {
    const policy::Config& config = runtime::config();
    auto& counters = runtime::counters();
    fdtable::Slot& s = fdtable::slot(index);
    std::uint32_t flags = s.flags.load(std::memory_order_acquire);
    if ((flags & fdtable::kDeadlineArmed) != 0) connect_policy::disarm(index, s);
    storm::on_close(fd, s, config);
    policy::bump(counters.closes);
    CloseApplied applied;
    // Never connected by this process (a listener, a socket closed before its
    // connect): nothing to decide, in any mode.
    if (config.close == policy::CloseMode::Keep || (flags & fdtable::kConnectCalled) == 0) return applied;
    if (config.close == policy::CloseMode::Rst && s.refs.load(std::memory_order_acquire) != 1) {
        // Not the last descriptor (a copy dup2'ed over another, one of two
        // closed): the socket lives on. The common case of dup2 on sockets,
        // so decided before anything is gathered.
        if (log::enabled(policy::LogLevel::Debug))
            log::at(policy::LogLevel::Debug, "{} {} to {}: normal close (another descriptor still refers to it)",
                    origin == hold::Origin::Dup2 ? "dup2 over fd" : "close fd", fd, s.dest());
        return applied;
    }

    runtime::ErrnoGuard keep_errno;
    const policy::SocketBookkeeping book = gather(fd, s, flags);
    const char* how = origin == hold::Origin::Dup2 ? "dup2 over fd" : "close fd";
    policy::SocketProbe probe;
    bool probed = false;
    std::int64_t started = 0, waited = 0, step = 20'000;
    for (;;) {
        policy::CloseDecision d = policy::decide_close(config.close, book, probed ? &probe : nullptr, waited);
        switch (d.action) {
            case CloseAction::Passthrough:
                if (book.connect_called)
                    log::at(policy::LogLevel::Debug, "{} {} to {}: normal close ({})", how, fd, s.dest(), d.reason);
                return applied;
            case CloseAction::Probe:
                if (!probe_socket(fd, probe)) return applied;
                probed = true;
                continue;
            case CloseAction::WaitForAck: {
                // The ACK is due: let the background thread wait for it, so
                // close() returns at once. Only when it holds all it may (or
                // cannot), wait here, as briefly as before.
                if (waited == 0) {
                    applied.held = hold::claim(fd, s, probe, origin);
                    if (applied.held >= 0) return applied;
                    started = runtime::now_ns();  // the wait is this close()'s own: timed from here
                }
                std::int64_t budget = policy::ack_wait_budget_ns(probe.srtt_us);
                sleep_ns(std::min(step, std::max<std::int64_t>(budget - waited, 1000)));
                step = std::min<std::int64_t>(step * 2, 1'000'000);
                waited = std::max<std::int64_t>(runtime::now_ns() - started, 1);
                if (!probe_socket(fd, probe)) return applied;
                continue;
            }
            case CloseAction::Rst: {
                linger l{1, 0};
                if (real::setsockopt.get()(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) != 0) return applied;
                applied.linger = true;
                policy::bump(counters.closes_rst);
                if (origin == hold::Origin::Dup2) policy::bump(counters.closes_rst_dup2);
                if (waited > 0) {
                    policy::bump(counters.closes_rst_after_wait);
                    policy::bump(counters.ack_wait_us, static_cast<std::uint64_t>(waited / 1000));
                }
                log::at(policy::LogLevel::Debug, "{} {} to {}: RST ({}; waited {} us)", how, fd, s.dest(), d.reason,
                        waited / 1000);
                return applied;
            }
            case CloseAction::GracefulUnsent:
                policy::bump(counters.closes_graceful_unsent);
                policy::bump(counters.ack_wait_us, static_cast<std::uint64_t>(waited / 1000));
                log::at(policy::LogLevel::Info,
                        "{} {} to {}: graceful, not RST: {} ({} bytes unsent, {} {} unacknowledged, "
                        "waited {} us)",
                        how, fd, s.dest(), d.reason, probe.unsent_bytes, probe.unacked, policy::unacked_unit(probe),
                        waited / 1000);
                return applied;
            case CloseAction::GracefulShared:
                policy::bump(counters.closes_graceful_shared);
                log::at(policy::LogLevel::Debug, "{} {} to {}: graceful, not RST: {}", how, fd, s.dest(), d.reason);
                return applied;
        }
    }
}

// Applies the policy to every tracked descriptor in [first, last] and takes
// them out of the table, ahead of a close_range()/closefrom().
void take_range(unsigned first, unsigned last) {
    fdtable::for_each(first, last, [](int fd, std::uint32_t) {
        std::uint32_t index = fdtable::take(fd);
        if (index == fdtable::kOwned) {
            forget_owned(fd);
        } else if (index != 0) {
            CloseApplied applied = apply_close_policy(fd, index, hold::Origin::Close);
            fdtable::wait_not_busy(index);
            fdtable::release(index);
            // Published before the descriptor closes: the background thread
            // then acts on the socket, never on the application's number.
            if (applied.held >= 0) hold::publish(applied.held);
        }
    });
}

int do_close(int fd) { return close_taken(fd, fdtable::take(fd)); }

int do_close_range(unsigned first, unsigned last, int flags) {
    constexpr int kKnown = CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC;
    // Invalid arguments fail in the kernel with nothing closed, and so does
    // every call on a kernel without close_range (ENOSYS; the application
    // then closes one by one, through close()): leave the table alone.
    if (first <= last && (flags & ~kKnown) == 0 && (flags & CLOSE_RANGE_CLOEXEC) == 0 &&
        kernel::has_close_range())
        take_range(first, last);
    if (auto* fn = real::close_range.get()) return runtime::call_errno(fn, first, last, flags);
    long r = real::raw_syscall(SYS_close_range, first, last, flags);
    return static_cast<int>(r);
}

}  // namespace tcpfix::hooks

using namespace tcpfix;

namespace {

// Out of line, so close() itself stays a table lookup and a tail call: a
// close before libc's close() is resolved (dlsym re-entered us: no libc
// symbol yet), or of a tracked descriptor where the hooks stand aside.
__attribute__((noinline, cold)) int close_untracked(int fd) {
    if (real::close.peek() == nullptr && real::resolving())
        return runtime::to_c(static_cast<int>(real::raw_syscall(SYS_close, fd)));
    return real::close.get()(fd);
}

// A descriptor the table holds (a moment ago): the policy, then the close.
__attribute__((noinline)) int close_tracked(int fd) {
    if (runtime::active() && !runtime::in_unannounced_child())
        return runtime::to_c(hooks::close_taken(fd, fdtable::take(fd)));
    return close_untracked(fd);
}

}  // namespace

// Returns 0, or -1 with errno exactly as the real close() set it. The table
// is empty unless the library is active, so one lookup decides.
extern "C" __attribute__((visibility("default"))) int close(int fd) {
    if (__builtin_expect(fdtable::lookup(fd) != 0, 0)) return close_tracked(fd);
    if (auto* fn = real::close.peek(); __builtin_expect(fn != nullptr, 1)) return fn(fd);
    return close_untracked(fd);
}

// Returns 0, or -1 with errno exactly as the real close_range() set it.
extern "C" __attribute__((visibility("default"))) int close_range(unsigned first, unsigned last, int flags) noexcept {
    if (!runtime::active() || runtime::in_unannounced_child()) {
        if (auto* fn = real::close_range.get()) return fn(first, last, flags);
        return runtime::to_c(static_cast<int>(real::raw_syscall(SYS_close_range, first, last, flags)));
    }
    return runtime::to_c(hooks::do_close_range(first, last, flags));
}

// Closes every descriptor from lowfd up, as glibc's closefrom() does.
extern "C" __attribute__((visibility("default"))) void closefrom(int lowfd) noexcept {
    if (runtime::active() && lowfd >= 0 && !runtime::in_unannounced_child())
        hooks::take_range(static_cast<unsigned>(lowfd), ~0u);
    if (auto* fn = real::closefrom.get()) return fn(lowfd);
    (void)real::raw_syscall(SYS_close_range, lowfd, ~0u, 0);
}
