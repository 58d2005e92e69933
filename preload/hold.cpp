// The held sockets (see hold.hpp): a fixed table of places, each a versioned
// state word (as the connect watchdog's entries) and a descriptor of
// tcpfix's own. Nothing here allocates; every wait is bounded.
//
// Who touches a place:
//  - claim()/publish()/cancel(): the application's thread in close()/dup2();
//  - on_timer(): the watchdog thread; settle_round(): the exiting thread;
//    either decides a place only after moving it from kHeld to kDeciding;
//  - forget_fd(): an application thread whose close/dup2/close_range hit
//    one of tcpfix's numbers (it never opened it: a bash-style dup2 to a
//    fixed number, or a closefrom). It takes the number out of the table
//    first; a decider checks the table before it touches the descriptor,
//    and forget_fd waits while a decider is at work, so the descriptor is
//    never acted on after it changed hands.
#include "preload/hold.hpp"

#include <fcntl.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <climits>

#include "preload/connect_policy.hpp"
#include "preload/hooks.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

namespace tcpfix::hold {

std::atomic<bool> detail::g_thread_wanted{false};

namespace {

using runtime::call_errno;

enum PlaceState : std::uint32_t { kFree = 0, kClaimed, kHeld, kDeciding };

constexpr std::uint32_t state_of(std::uint32_t word) { return word & 3u; }
constexpr std::uint32_t with_state(std::uint32_t word, PlaceState st) { return (word & ~3u) | st; }
constexpr std::uint32_t next_version(std::uint32_t word, PlaceState st) { return ((word & ~3u) + 4u) | st; }

// The first look comes soon (on loopback the ACK is microseconds away),
// then less and less often, never more than 2 ms apart: an RST at most 2 ms
// after the ACK, at a cost of one system call a look (TCP_INFO; two for a
// half-closed socket, three on Linux < 4.6: hooks::probe_socket).
constexpr std::int64_t kFirstLookNs = 100'000;
constexpr std::int64_t kMaxStepNs = 2'000'000;

struct Place {
    std::atomic<std::uint32_t> word{kFree};
    std::atomic<int> fd{-1};              // tcpfix's descriptor of the socket
    std::atomic<std::int64_t> next_ns{0};  // when to look again
    // Written only by the thread that holds the place in kClaimed or kDeciding.
    std::int64_t held_ns = 0;  // when the application let go
    std::int64_t step_ns = 0;
    Origin origin = Origin::Close;
    policy::Endpoint dest;
};

constexpr int kPlaces = 256;  // policy::max_held_sockets() never allows more
Place g_places[kPlaces];
std::atomic<int> g_high_water{0};  // places at or above are untouched
std::atomic<int> g_held{0};        // places not free
std::atomic<bool> g_stopped{false};
using detail::g_thread_wanted;

bool unchanged(const Place& p, std::uint32_t word) {
    std::atomic_thread_fence(std::memory_order_acquire);
    return p.word.load(std::memory_order_relaxed) == word;
}

void free_place(Place& p, std::uint32_t word) {
    p.fd.store(-1, std::memory_order_relaxed);
    p.word.store(with_state(word, kFree), std::memory_order_release);
    g_held.fetch_sub(1, std::memory_order_acq_rel);
}

// Closes tcpfix's descriptor, unless the application took the number meanwhile
// (then its own close or dup2 closes it).
void close_ours(int fd) {
    if (fdtable::take(fd) == fdtable::kOwned) call_errno(real::close.get(), fd);
}

// Decides a place the caller moved to kDeciding (`word` is that state).
// Past `forced_ns` an unacknowledged socket closes normally at once.
void decide(Place& p, std::uint32_t word, std::int64_t now, std::int64_t forced_ns) {
    const int fd = p.fd.load(std::memory_order_relaxed);
    if (fdtable::lookup(fd) != fdtable::kOwned) {
        free_place(p, word);  // the application took the number: not ours to act on
        return;
    }
    auto& counters = runtime::counters();
    const std::int64_t waited = now - p.held_ns;
    policy::SocketProbe probe;
    if (!hooks::probe_socket(fd, probe)) {
        close_ours(fd);
        free_place(p, word);
        return;
    }
    policy::SocketBookkeeping book;  // claim() took only a matched connection's last descriptor
    book.connect_called = book.matched = true;
    policy::CloseDecision d = policy::decide_close(runtime::config().close, book, &probe,
                                                   now >= forced_ns ? INT64_MAX : waited,
                                                   policy::WaitBudget::Background);
    switch (d.action) {
        case policy::CloseAction::WaitForAck:
            p.next_ns.store(now + p.step_ns, std::memory_order_relaxed);
            p.step_ns = std::min(p.step_ns * 2, kMaxStepNs);
            p.word.store(with_state(word, kHeld), std::memory_order_release);
            return;
        case policy::CloseAction::Rst: {
            linger l{1, 0};
            if (call_errno(real::setsockopt.get(), fd, SOL_SOCKET, SO_LINGER, static_cast<const void*>(&l),
                           static_cast<socklen_t>(sizeof l)) != 0)
                break;
            policy::bump(counters.closes_rst);
            policy::bump(counters.closes_rst_after_wait);
            policy::bump(counters.closes_rst_background);
            if (p.origin == Origin::Dup2) policy::bump(counters.closes_rst_dup2);
            policy::bump(counters.held_wait_us, static_cast<std::uint64_t>(waited / 1000));
            log::at(policy::LogLevel::Debug, "held socket to {}: RST ({}; {} us after the close)", p.dest, d.reason,
                    waited / 1000);
            break;
        }
        case policy::CloseAction::GracefulUnsent:
            policy::bump(counters.closes_graceful_unsent);
            policy::bump(counters.held_wait_us, static_cast<std::uint64_t>(waited / 1000));
            log::at(policy::LogLevel::Info,
                    "held socket to {}: graceful, not RST: {} ({} {} unacknowledged {} us after the close)",
                    p.dest, d.reason, probe.unacked, policy::unacked_unit(probe), waited / 1000);
            break;
        default:
            if (probe.state == policy::TcpState::CloseWait || probe.state == policy::TcpState::LastAck)
                policy::bump(counters.closes_held_peer_closed);
            log::at(policy::LogLevel::Debug, "held socket to {}: normal close ({}; {} us after the close)", p.dest,
                    d.reason, waited / 1000);
            break;
    }
    close_ours(fd);
    free_place(p, word);
}

}  // namespace

int claim(int fd, const fdtable::Slot& s, const policy::SocketProbe& probe, Origin origin) {
    if (g_stopped.load(std::memory_order_acquire)) return -1;
    runtime::ErrnoGuard keep_errno;
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
    const int max = std::min(policy::max_held_sockets(rl.rlim_cur), kPlaces);
    const int floor = policy::held_fd_floor(rl.rlim_cur, max);
    int held = g_held.load(std::memory_order_relaxed);
    do {
        if (held >= max || floor < 0) {
            policy::bump(runtime::counters().closes_held_full);
            return -1;
        }
    } while (!g_held.compare_exchange_weak(held, held + 1, std::memory_order_acq_rel));
    // Started by the next matched connect (hooks::do_connect): never here,
    // where a signal handler's close() may be. This close decides on the spot.
    if (!connect_policy::timer_running()) {
        g_thread_wanted.store(true, std::memory_order_relaxed);
        g_held.fetch_sub(1, std::memory_order_acq_rel);
        policy::bump(runtime::counters().closes_held_full);
        return -1;
    }
    for (int i = 0; i < kPlaces; ++i) {
        Place& p = g_places[i];
        std::uint32_t word = p.word.load(std::memory_order_relaxed);
        if (state_of(word) != kFree ||
            !p.word.compare_exchange_strong(word, next_version(word, kClaimed), std::memory_order_acq_rel))
            continue;
        word = next_version(word, kClaimed);
        int copy = call_errno(real::fcntl.get(), fd, F_DUPFD_CLOEXEC, floor);
        if (copy < 0) {
            log::at(policy::LogLevel::Debug, "close fd {} to {}: no descriptor to hold it ({}); deciding now", fd,
                    s.dest(), policy::errno_name(-copy));
            free_place(p, word);
            return -1;
        }
        fdtable::track_owned(copy);
        p.held_ns = runtime::now_ns();
        p.step_ns = kFirstLookNs;
        p.origin = origin;
        p.dest = s.dest();
        p.fd.store(copy, std::memory_order_relaxed);
        int high = g_high_water.load(std::memory_order_relaxed);
        while (high <= i && !g_high_water.compare_exchange_weak(high, i + 1, std::memory_order_acq_rel)) {
        }
        log::at(policy::LogLevel::Debug, "close fd {} to {}: {} {} not yet acknowledged; held as fd {}", fd,
                s.dest(), probe.unacked, policy::unacked_unit(probe), copy);
        return i;
    }
    g_held.fetch_sub(1, std::memory_order_acq_rel);  // cannot happen: held < max <= kPlaces
    return -1;
}

void publish(int place) {
    Place& p = g_places[place];
    std::uint32_t word = p.word.load(std::memory_order_relaxed);
    // Once published, the place is the background thread's: it may decide,
    // free it and see it claimed again before this thread goes on, so
    // nothing of the place is read after the store below.
    const std::int64_t first_look = p.held_ns + kFirstLookNs;
    p.next_ns.store(first_look, std::memory_order_relaxed);
    p.word.store(with_state(word, kHeld), std::memory_order_release);
    auto& counters = runtime::counters();
    policy::bump(counters.closes_held);
    policy::raise_to(counters.closes_held_max, static_cast<std::uint64_t>(g_held.load(std::memory_order_relaxed)));
    connect_policy::wake_timer_unless_due_by(first_look + kMaxStepNs);
}

void cancel(int place) {
    Place& p = g_places[place];
    std::uint32_t word = p.word.load(std::memory_order_relaxed);
    close_ours(p.fd.load(std::memory_order_relaxed));
    free_place(p, word);
}

std::int64_t on_timer(std::int64_t now) {
    if (g_held.load(std::memory_order_acquire) == 0) return INT64_MAX;
    runtime::ErrnoGuard keep_errno;
    std::int64_t next = INT64_MAX;
    const int high = g_high_water.load(std::memory_order_acquire);
    for (int i = 0; i < high; ++i) {
        Place& p = g_places[i];
        std::uint32_t word = p.word.load(std::memory_order_acquire);
        if (state_of(word) != kHeld) continue;
        std::int64_t due = p.next_ns.load(std::memory_order_relaxed);
        if (!unchanged(p, word)) continue;
        if (due > now) {
            next = std::min(next, due);
            continue;
        }
        if (!p.word.compare_exchange_strong(word, with_state(word, kDeciding), std::memory_order_acq_rel)) continue;
        decide(p, with_state(word, kDeciding), now, INT64_MAX);
        std::uint32_t after = p.word.load(std::memory_order_acquire);
        if (state_of(after) == kHeld) next = std::min(next, p.next_ns.load(std::memory_order_relaxed));
    }
    return next;
}

void forget_fd(int fd) {
    const int high = g_high_water.load(std::memory_order_acquire);
    for (int i = 0; i < high; ++i) {
        Place& p = g_places[i];
        for (;;) {
            std::uint32_t word = p.word.load(std::memory_order_acquire);
            std::uint32_t st = state_of(word);
            if (st != kHeld && st != kDeciding) break;
            if (p.fd.load(std::memory_order_relaxed) != fd || !unchanged(p, word)) break;
            if (st == kDeciding) {
                // A decider blocks every signal while it works, so this never
                // waits on its own thread; it sees the number gone and lets go.
                while (p.word.load(std::memory_order_acquire) == word) {
                }
                continue;
            }
            if (p.word.compare_exchange_strong(word, with_state(word, kDeciding), std::memory_order_acq_rel)) {
                const policy::Endpoint dest = p.dest;  // the place is another close's once freed
                free_place(p, with_state(word, kDeciding));
                log::at(policy::LogLevel::Info,
                        "the application closed fd {}, which tcpfix held for a socket to {}; that socket "
                        "closes normally",
                        fd, dest);
                return;
            }
        }
    }
}


void stop_holding() { g_stopped.store(true, std::memory_order_release); }

bool settle_round(std::int64_t now, std::int64_t deadline) {
    if (g_held.load(std::memory_order_acquire) == 0) return false;
    bool left = false;
    const int high = g_high_water.load(std::memory_order_acquire);
    for (int i = 0; i < high; ++i) {
        Place& p = g_places[i];
        std::uint32_t word = p.word.load(std::memory_order_acquire);
        std::uint32_t st = state_of(word);
        if (st == kFree) continue;
        if (st == kHeld &&
            p.word.compare_exchange_strong(word, with_state(word, kDeciding), std::memory_order_acq_rel)) {
            decide(p, with_state(word, kDeciding), now, deadline);
            st = state_of(p.word.load(std::memory_order_acquire));
        }
        if (st != kFree) left = true;  // still waiting, or another thread is at it
    }
    return left;
}

void after_fork_in_child() {
    const int high = g_high_water.load(std::memory_order_relaxed);
    for (int i = 0; i < high; ++i) {
        Place& p = g_places[i];
        std::uint32_t word = p.word.load(std::memory_order_relaxed);
        if (state_of(word) == kFree) continue;
        int fd = p.fd.load(std::memory_order_relaxed);
        if (fd >= 0 && fdtable::take(fd) == fdtable::kOwned) real::close.get()(fd);
        p.fd.store(-1, std::memory_order_relaxed);
        p.word.store(with_state(word, kFree), std::memory_order_relaxed);
    }
    g_held.store(0, std::memory_order_relaxed);
    g_high_water.store(0, std::memory_order_relaxed);
}

}  // namespace tcpfix::hold
