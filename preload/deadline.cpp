// Connect deadlines (incident 003). Socket options cannot bound a handshake
// below the kernel's 1 s initial RTO (KERNEL-FACTS 6), so tcpfix waits itself:
//  - a blocking caller: the socket is made non-blocking for the attempt, the
//    hook waits with ppoll() up to TCPFIX_CONNECT_TIMEOUT, and the caller's
//    file status flags are restored exactly;
//  - a non-blocking caller: attempts that have a retry after them are waited
//    for inside connect() (nobody polls the descriptor yet, so a fresh socket
//    can take its place); the last attempt returns EINPROGRESS at once and a
//    watchdog thread cuts it short at the deadline with connect(AF_UNSPEC),
//    which wakes the caller's poll/epoll (KERNEL-FACTS 7); SO_ERROR then
//    reads ETIMEDOUT. The thread starts only when a deadline is first armed.
#include <fcntl.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>

#include <atomic>
#include <climits>

#include "preload/connect_policy.hpp"
#include "preload/hold.hpp"
#include "preload/kernel.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"
#include "preload/stats_file.hpp"
#include "preload/storm.hpp"

namespace tcpfix::connect_policy {
namespace {

using runtime::call_errno;

// --- the watchdog -------------------------------------------------------

// An entry's state and a version in one word: the version grows at every
// claim, so a word read twice and found equal means the entry was not freed
// and claimed again in between (a seqlock), and a compare-exchange against
// the whole word cannot act on an entry re-armed for another connect.
// The other fields change only while the entry is kClaimed, by the thread
// that claimed it; everyone else reads them between two loads of the word.
enum EntryState : std::uint32_t { kFree = 0, kClaimed, kArmed, kFiring };

constexpr std::uint32_t state_of(std::uint32_t word) { return word & 3u; }
constexpr std::uint32_t with_state(std::uint32_t word, EntryState st) { return (word & ~3u) | st; }
constexpr std::uint32_t next_version(std::uint32_t word, EntryState st) { return ((word & ~3u) + 4u) | st; }

struct Entry {
    std::atomic<std::uint32_t> word{kFree};
    std::atomic<int> fd{-1};
    std::atomic<std::uint32_t> index{0};
    std::atomic<std::uint32_t> generation{0};
    std::atomic<std::int64_t> deadline_ns{0};
};

// True when `word` still holds the value read before the fields were: what
// was read between belongs to that arming.
bool unchanged(const Entry& e, std::uint32_t word) {
    std::atomic_thread_fence(std::memory_order_acquire);
    return e.word.load(std::memory_order_relaxed) == word;
}

constexpr int kEntries = 4096;
Entry g_entries[kEntries];
std::atomic<int> g_high_water{0};  // entries at or above are untouched
std::atomic<std::uint32_t> g_wake{0};
std::atomic<bool> g_thread_started{false};
// When the sleeping watchdog will look at its timers next; 0 while it is awake.
std::atomic<std::int64_t> g_planned_ns{0};

void futex_wake() {
    g_wake.fetch_add(1, std::memory_order_release);
    real::raw_syscall(SYS_futex, reinterpret_cast<long>(&g_wake), FUTEX_WAKE_PRIVATE, 1);
}

// Cuts a handshake short: wakes whoever polls the descriptor (POLLERR|POLLHUP)
// and leaves it able to connect again (KERNEL-FACTS 7). connect(AF_UNSPEC)
// does it; where that is refused (a sandbox), shutdown() does the same.
void abandon(int fd) {
    if (!kernel::lacks(policy::Facility::UnspecConnect)) {
        sockaddr unspec{};
        unspec.sa_family = AF_UNSPEC;
        int r = call_errno(real::connect.get(), fd, &unspec, static_cast<socklen_t>(sizeof unspec));
        if (r == 0 || r == -EBADF || r == -ENOTSOCK) return;
        kernel::missing(policy::Facility::UnspecConnect, -r);
    }
    ::shutdown(fd, SHUT_RDWR);
}

// Abandons the handshake of an entry the watchdog holds (kFiring) whose
// deadline passed.
void fire(const Entry& e) {
    int fd = e.fd.load(std::memory_order_relaxed);
    std::uint32_t index = e.index.load(std::memory_order_relaxed);
    if (fdtable::lookup(fd) != index) return;  // closed, or the number reused
    fdtable::Slot& s = fdtable::slot(index);
    if (s.generation != e.generation.load(std::memory_order_relaxed) ||
        (s.flags.load(std::memory_order_acquire) & fdtable::kConnectPending) == 0)
        return;
    tcp_info info{};
    socklen_t len = sizeof info;
    if (call_errno(real::getsockopt.get(), fd, IPPROTO_TCP, TCP_INFO, static_cast<void*>(&info), &len) != 0 ||
        (info.tcpi_state != TCP_SYN_SENT && info.tcpi_state != TCP_SYN_RECV))
        return;  // it connected (or failed) in time
    s.flags.fetch_or(fdtable::kTimedOut, std::memory_order_acq_rel);
    abandon(fd);
    policy::bump(runtime::counters().connect_timeouts);
    log::at(policy::LogLevel::Info, "connect fd {} to {}: no handshake within {}; abandoned (ETIMEDOUT)", fd,
            s.dest(), policy::format_duration(*runtime::config().connect_timeout_ns));
}

void* watchdog(void*) {
    for (;;) {
        std::uint32_t seen = g_wake.load(std::memory_order_acquire);
        std::int64_t now = runtime::now_ns(), next = INT64_MAX;
        int high = g_high_water.load(std::memory_order_acquire);
        for (int i = 0; i < high; ++i) {
            Entry& e = g_entries[i];
            std::uint32_t word = e.word.load(std::memory_order_acquire);
            if (state_of(word) != kArmed) continue;
            std::int64_t deadline = e.deadline_ns.load(std::memory_order_relaxed);
            if (!unchanged(e, word)) continue;  // disarmed meanwhile (or re-armed: woken again)
            if (deadline > now) {
                next = std::min(next, deadline);
                continue;
            }
            if (!e.word.compare_exchange_strong(word, with_state(word, kFiring), std::memory_order_acq_rel)) continue;
            fire(e);
            e.word.store(with_state(word, kFree), std::memory_order_release);
        }
        next = std::min(next, hold::on_timer(now));
        next = std::min(next, storm::on_timer(now));
        next = std::min(next, stats_file::on_timer(now));
        timespec ts{}, *timeout = nullptr;
        if (next != INT64_MAX) {
            std::int64_t wait = std::max<std::int64_t>(next - runtime::now_ns(), 0);
            ts = {static_cast<time_t>(wait / 1'000'000'000), static_cast<long>(wait % 1'000'000'000)};
            timeout = &ts;
        }
        g_planned_ns.store(next, std::memory_order_seq_cst);
        real::raw_syscall(SYS_futex, reinterpret_cast<long>(&g_wake), FUTEX_WAIT_PRIVATE, seen,
                          reinterpret_cast<long>(timeout));
        g_planned_ns.store(0, std::memory_order_seq_cst);
        // Before the next scan reads the timers: a publisher that read the
        // plan before this store sees it, or this scan sees its timer.
        std::atomic_thread_fence(std::memory_order_seq_cst);
    }
    return nullptr;
}

}  // namespace

void wake_timer_unless_due_by(std::int64_t due_ns) {
    // The caller's new timer is stored; the plan is read after it (a store
    // followed by a load of another variable needs a full fence), so either
    // the watchdog's next scan sees the timer or this reads 0 and wakes it.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    std::int64_t planned = g_planned_ns.load(std::memory_order_seq_cst);
    if (planned != 0 && planned <= due_ns) return;  // it looks by then and finds what is due
    futex_wake();
}

bool timer_running() { return g_thread_started.load(std::memory_order_acquire); }

bool start_timer() {
    if (g_thread_started.load(std::memory_order_acquire)) return true;
    if (g_thread_started.exchange(true, std::memory_order_acq_rel)) return true;
    // The thread takes no signal meant for the application.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int r = pthread_create(&thread, &attr, watchdog, nullptr);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (r != 0) {
        g_thread_started.store(false, std::memory_order_release);
        log::at(policy::LogLevel::Warn, "cannot start the connect watchdog ({}); non-blocking connects keep the kernel's timeout",
                policy::errno_name(r));
        return false;
    }
    return true;
}

namespace {

void arm(int fd, std::uint32_t index, fdtable::Slot& s, std::int64_t deadline_ns) {
    if (!start_timer()) return;
    for (int i = 0; i < kEntries; ++i) {
        Entry& e = g_entries[i];
        std::uint32_t word = e.word.load(std::memory_order_relaxed);
        if (state_of(word) != kFree ||
            !e.word.compare_exchange_strong(word, next_version(word, kClaimed), std::memory_order_acq_rel))
            continue;
        std::uint32_t claimed = next_version(word, kClaimed);
        e.fd.store(fd, std::memory_order_relaxed);
        e.index.store(index, std::memory_order_relaxed);
        e.generation.store(s.generation, std::memory_order_relaxed);
        e.deadline_ns.store(deadline_ns, std::memory_order_relaxed);
        e.word.store(with_state(claimed, kArmed), std::memory_order_release);
        int high = g_high_water.load(std::memory_order_relaxed);
        while (high <= i && !g_high_water.compare_exchange_weak(high, i + 1, std::memory_order_acq_rel)) {
        }
        s.flags.fetch_or(fdtable::kDeadlineArmed, std::memory_order_release);
        futex_wake();
        return;
    }
    log::at(policy::LogLevel::Warn, "more than {} connects pending at once; fd {} keeps the kernel's timeout",
            kEntries, fd);
}

// --- waiting inside connect() --------------------------------------------

// The caller's own SO_SNDTIMEO, which bounds a blocking connect in the kernel.
std::int64_t app_send_timeout_ns(int fd) {
    timeval tv{};
    socklen_t len = sizeof tv;
    if (call_errno(real::getsockopt.get(), fd, SOL_SOCKET, SO_SNDTIMEO, static_cast<void*>(&tv), &len) != 0)
        return 0;
    return static_cast<std::int64_t>(tv.tv_sec) * 1'000'000'000 + tv.tv_usec * 1000;
}

int so_error(int fd) {
    int err = 0;
    socklen_t len = sizeof err;
    if (call_errno(real::getsockopt.get(), fd, SOL_SOCKET, SO_ERROR, static_cast<void*>(&err), &len) != 0)
        return EIO;
    return err;
}

}  // namespace

// The kernel restarts a blocking connect after a handler with SA_RESTART and fails it with EINTR
// otherwise; which signal came is unknown here, so restart only when every
// installed handler asks for restarts.
bool handlers_restart() {
    for (int sig = 1; sig < NSIG; ++sig) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        struct sigaction sa;
        if (sigaction(sig, nullptr, &sa) != 0) continue;
        if (sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN) continue;
        if ((sa.sa_flags & SA_RESTART) == 0) return false;
    }
    return true;
}

AttemptResult timed_connect(int fd, std::uint32_t index, fdtable::Slot& s, const sockaddr* addr, socklen_t len,
                            bool last) {
    const std::int64_t timeout = *runtime::config().connect_timeout_ns;
    AttemptResult out;
    int status = call_errno(real::fcntl.get(), fd, F_GETFL);
    if (status < 0) {
        out.result = call_errno(real::connect.get(), fd, addr, len);
        return out;
    }
    const bool nonblocking = (status & O_NONBLOCK) != 0;
    const std::int64_t start = runtime::now_ns();

    if (nonblocking && last) {
        out.result = call_errno(real::connect.get(), fd, addr, len);
        if (out.result == -EINPROGRESS) {
            s.flags.fetch_or(fdtable::kConnectPending, std::memory_order_release);
            arm(fd, index, s, start + timeout);
        }
        return out;
    }

    // A signal handler may close the descriptor (and the number be reused)
    // while we wait: after every wait, act on it only if it is still ours.
    const std::uint32_t generation = s.generation.load();
    auto still_ours = [&] { return fdtable::lookup(fd) == index && s.generation.load() == generation; };

    std::int64_t app_deadline = 0;
    if (!nonblocking) {
        if (std::int64_t t = app_send_timeout_ns(fd); t > 0) app_deadline = start + t;
        call_errno(real::fcntl.get(), fd, F_SETFL, status | O_NONBLOCK);
    }
    int r = call_errno(real::connect.get(), fd, addr, len);
    if (r == -EINPROGRESS) {
        const std::int64_t deadline = start + timeout;
        for (;;) {
            std::int64_t now = runtime::now_ns();
            std::int64_t until = app_deadline != 0 ? std::min(deadline, app_deadline) : deadline;
            if (now >= until) {
                if (app_deadline != 0 && app_deadline <= deadline) {
                    // The caller's own SO_SNDTIMEO ran out first: the kernel says EINPROGRESS.
                    s.flags.fetch_or(fdtable::kConnectPending, std::memory_order_release);
                    r = -EINPROGRESS;
                } else {
                    abandon(fd);
                    policy::bump(runtime::counters().connect_timeouts);
                    out.timed_out = true;
                    r = -ETIMEDOUT;
                }
                break;
            }
            std::int64_t wait = until - now;
            timespec ts{static_cast<time_t>(wait / 1'000'000'000), static_cast<long>(wait % 1'000'000'000)};
            pollfd p{fd, POLLOUT, 0};
            int n = ppoll(&p, 1, &ts, nullptr);
            int wait_errno = errno;
            if (!still_ours()) {
                // As the kernel: EINTR, or after a restart the call meets whatever
                // the number is now. Nothing of ours to restore on it.
                bool restart = wait_errno == EINTR && !nonblocking && app_deadline == 0 && handlers_restart();
                out.result = restart ? call_errno(real::connect.get(), fd, addr, len) : -EINTR;
                return out;
            }
            if (n > 0) {
                int err = so_error(fd);
                r = err == 0 ? 0 : -err;
                break;
            }
            // The kernel restarts a blocking connect only when its wait is
            // unbounded: with the caller's own SO_SNDTIMEO a signal always ends it.
            if (n < 0 && wait_errno == EINTR && !nonblocking && (app_deadline != 0 || !handlers_restart())) {
                // As without tcpfix: EINTR, and the handshake goes on in the background.
                s.flags.fetch_or(fdtable::kConnectPending, std::memory_order_release);
                r = -EINTR;
                break;
            }
        }
    }
    if (!nonblocking) call_errno(real::fcntl.get(), fd, F_SETFL, status);
    out.result = r;
    return out;
}

void disarm(std::uint32_t index, fdtable::Slot& s) {
    if ((s.flags.fetch_and(~fdtable::kDeadlineArmed, std::memory_order_acq_rel) & fdtable::kDeadlineArmed) == 0)
        return;
    int high = g_high_water.load(std::memory_order_acquire);
    for (int i = 0; i < high; ++i) {
        Entry& e = g_entries[i];
        std::uint32_t word = e.word.load(std::memory_order_acquire);
        if (state_of(word) != kArmed && state_of(word) != kFiring) continue;
        bool ours = e.index.load(std::memory_order_relaxed) == index &&
                    e.generation.load(std::memory_order_relaxed) == s.generation;
        // Changed meanwhile: freed by the watchdog, or claimed for another
        // connect (ours is armed once, by this slot's owner, so it cannot be
        // the new arming).
        if (!ours || !unchanged(e, word)) continue;
        if (state_of(word) == kArmed &&
            e.word.compare_exchange_strong(word, with_state(word, kFree), std::memory_order_acq_rel))
            return;
        // The watchdog is firing it right now (the watchdog blocks every
        // signal, so this never waits on its own thread): let it finish
        // before the descriptor goes.
        while (e.word.load(std::memory_order_acquire) == with_state(word, kFiring)) {
        }
        return;
    }
}

int translate_so_error(fdtable::Slot& s, int err) {
    if ((s.flags.fetch_and(~fdtable::kTimedOut, std::memory_order_acq_rel) & fdtable::kTimedOut) != 0)
        return ETIMEDOUT;
    return err;
}

void after_fork_in_child() {
    g_thread_started.store(false, std::memory_order_relaxed);
    int high = g_high_water.load(std::memory_order_relaxed);
    for (int i = 0; i < high; ++i) {
        std::uint32_t word = g_entries[i].word.load(std::memory_order_relaxed);
        g_entries[i].word.store(with_state(word, kFree), std::memory_order_relaxed);
    }
    g_high_water.store(0, std::memory_order_relaxed);
}

}  // namespace tcpfix::connect_policy
