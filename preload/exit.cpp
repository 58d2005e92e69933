// Connections a process still has open when it exits. The kernel closes
// them after the process is gone, too late for any policy; so the library's
// destructor — which runs in exit() after the application's own atexit
// handlers and its C++ static destructors (glibc runs those first, then the
// shared objects' destructors) — applies TCPFIX_CLOSE to every matched
// connection still open, with the same rules as close(), and settles the
// sockets held for a background decision. The application keeps its
// descriptors: tcpfix only sets SO_LINGER {1,0} where an RST loses nothing,
// and the kernel's close at exit then sends it.
//
// Bounded: exit waits at most kExitWaitNs (50 ms) in all for ACKs still due,
// all sockets at once, then lets the kernel close what is left normally.
// 50 ms covers a LAN peer's delayed ACK (40 ms: a server in interactive mode
// that got a final message and sends no reply) and costs nothing when every
// byte is acknowledged already, the usual case at exit. _exit(), death by a
// signal and quick_exit() run no destructor: out of reach.
//
// Also here: fdopen(). stdio flushes its buffers after every exit handler,
// so a socket wrapped in a FILE may still get bytes after this decision:
// such a socket is left to the kernel at exit.
#include <pthread.h>
#include <signal.h>
#include <stdio.h>

#include <algorithm>

#include "preload/fdtable.hpp"
#include "preload/hold.hpp"
#include "preload/hooks.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

namespace tcpfix::hooks {
namespace {

using policy::CloseAction;

constexpr std::int64_t kExitWaitNs = 50'000'000;

// A connection still waiting for its ACK at exit. Static: the handler runs
// once, on whatever stack exit() has.
struct Pending {
    int fd;
    std::uint32_t index;
    std::uint32_t generation;
};
constexpr int kMaxPending = 4096;
Pending g_pending[kMaxPending];

// Decides the connection at fd unless its number changed hands (a close in
// another thread). Returns true while it waits for an ACK; once `forced`
// (the deadline passed) it waits no more.
bool decide_at_exit(int fd, std::uint32_t index, std::uint32_t generation, std::int64_t waited, bool forced) {
    fdtable::Slot& s = fdtable::slot(index);
    // As the storm scan: never act on a descriptor another thread is closing;
    // close() takes the number out of the table first, then waits for busy.
    s.busy.fetch_add(1, std::memory_order_seq_cst);
    bool waiting = false;
    if (fdtable::lookup(fd) == index && s.generation.load(std::memory_order_acquire) == generation) {
        std::uint32_t flags = s.flags.load(std::memory_order_acquire);
        policy::SocketBookkeeping book = bookkeeping(fd, s, flags);
        book.last_reference = true;  // every descriptor of the socket closes now
        policy::SocketProbe probe;
        if (probe_socket(fd, probe)) {
            auto& counters = runtime::counters();
            policy::CloseDecision d = policy::decide_close(runtime::config().close, book, &probe,
                                                           forced ? INT64_MAX : waited,
                                                           policy::WaitBudget::Background);
            switch (d.action) {
                case CloseAction::WaitForAck:
                    waiting = true;
                    break;
                case CloseAction::Rst: {
                    linger l{1, 0};
                    if (real::setsockopt.get()(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) != 0) break;
                    policy::bump(counters.closes_rst);
                    policy::bump(counters.closes_rst_at_exit);
                    if (waited > 0) {
                        policy::bump(counters.closes_rst_after_wait);
                        policy::bump(counters.ack_wait_us, static_cast<std::uint64_t>(waited / 1000));
                    }
                    log::at(policy::LogLevel::Debug, "exit with fd {} to {} open: RST ({}; waited {} us)", fd,
                            s.dest(), d.reason, waited / 1000);
                    break;
                }
                case CloseAction::GracefulUnsent:
                    policy::bump(counters.closes_graceful_unsent);
                    policy::bump(counters.ack_wait_us, static_cast<std::uint64_t>(waited / 1000));
                    log::at(policy::LogLevel::Info,
                            "exit with fd {} to {} open: graceful, not RST: {} ({} bytes unsent, {} {} "
                            "unacknowledged, waited {} us)",
                            fd, s.dest(), d.reason, probe.unsent_bytes, probe.unacked, policy::unacked_unit(probe),
                            waited / 1000);
                    break;
                default:
                    log::at(policy::LogLevel::Debug, "exit with fd {} to {} open: normal close ({})", fd, s.dest(),
                            d.reason);
                    break;
            }
        }
    }
    s.busy.fetch_sub(1, std::memory_order_seq_cst);
    return waiting;
}

void sleep_ns(std::int64_t ns) {
    timespec ts{0, static_cast<long>(ns)};
    nanosleep(&ts, nullptr);
}

// Settles the held sockets and waits for the pending connections, until
// none is left or the deadline passed.
void wait_out(int pending, std::int64_t started, std::int64_t deadline) {
    std::int64_t step = 20'000;
    for (;;) {
        std::int64_t now = runtime::now_ns();
        bool left = hold::settle_round(now, deadline);
        int kept = 0;
        for (int i = 0; i < pending; ++i) {
            const Pending& p = g_pending[i];
            std::int64_t waited = std::max<std::int64_t>(now - started, 1);
            if (decide_at_exit(p.fd, p.index, p.generation, waited, now >= deadline)) g_pending[kept++] = p;
        }
        pending = kept;
        // Past the deadline only a place another thread is deciding right now
        // (microseconds) can be left; give it 5 ms, never more.
        if ((!left && pending == 0) || now >= deadline + 5'000'000) return;
        sleep_ns(std::min<std::int64_t>(step, std::max<std::int64_t>(deadline - now, 20'000)));
        step = std::min<std::int64_t>(step * 2, 1'000'000);
    }
}

// Runs `f` with every signal blocked: a handler that closed a socket this
// thread is deciding would wait for this very thread.
template <typename F>
void with_signals_blocked(F&& f) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    f();
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

}  // namespace

void close_open_at_exit() {
    if (runtime::config().close == policy::CloseMode::Keep || runtime::in_unannounced_child()) return;
    runtime::ErrnoGuard keep_errno;
    with_signals_blocked([] {
        hold::stop_holding();  // closes from other threads decide on the spot from now on
        const std::int64_t started = runtime::now_ns();
        int pending = 0;
        fdtable::for_each(0, fdtable::kMaxFd - 1, [&](int fd, std::uint32_t index) {
            if (index == fdtable::kOwned) return;
            fdtable::Slot& s = fdtable::slot(index);
            std::uint32_t flags = s.flags.load(std::memory_order_acquire);
            if ((flags & fdtable::kConnectCalled) == 0 || (flags & fdtable::kMatched) == 0) return;
            // Several descriptors of one socket: decided once.
            if ((s.flags.fetch_or(fdtable::kExitDecided, std::memory_order_acq_rel) & fdtable::kExitDecided) != 0)
                return;
            policy::bump(runtime::counters().closes_at_exit);
            if ((flags & fdtable::kStdio) != 0) {
                log::at(policy::LogLevel::Debug,
                        "exit with fd {} to {} open: left to the kernel (a stdio stream may still flush into it)",
                        fd, s.dest());
                return;
            }
            std::uint32_t generation = s.generation.load(std::memory_order_acquire);
            if (decide_at_exit(fd, index, generation, 0, false) && pending < kMaxPending)
                g_pending[pending++] = {fd, index, generation};
        });
        wait_out(pending, started, started + kExitWaitNs);
    });
}

void settle_before_exec() {
    if (!runtime::active() || runtime::in_unannounced_child()) return;
    runtime::ErrnoGuard keep_errno;
    with_signals_blocked([] {
        const std::int64_t started = runtime::now_ns();
        wait_out(0, started, started + kExitWaitNs);
    });
}

}  // namespace tcpfix::hooks

using namespace tcpfix;

// As the real fdopen(); remembers that a tracked socket is now a stdio stream.
extern "C" __attribute__((visibility("default"))) FILE* fdopen(int fd, const char* mode) noexcept {
    FILE* f = real::fdopen.get()(fd, mode);
    if (f != nullptr && runtime::active()) {
        std::uint32_t index = fdtable::lookup(fd);
        if (index != 0 && index != fdtable::kOwned)
            fdtable::slot(index).flags.fetch_or(fdtable::kStdio, std::memory_order_acq_rel);
    }
    return f;
}
