// The descriptor table: fd number -> slot of a tracked TCP socket.
//
// A flat, lazily mapped array indexed by fd (4096 descriptors a chunk) holds a
// slot index per fd; 0 means "not tracked", so a close() of a file costs one
// or two loads. A slot is the state of one socket (an open file description)
// and is shared, reference-counted, by every descriptor dup'ed from it.
// Everything is lock-free: a signal handler may call close() at any moment.
// Memory comes from mmap and is never returned, so a stale index is never a
// dangling pointer.
#pragma once

#include <atomic>
#include <cstdint>

#include "policy/net.hpp"

namespace tcpfix::fdtable {

constexpr unsigned kChunkBits = 12;
constexpr unsigned kChunkSize = 1u << kChunkBits;
constexpr unsigned kMaxChunks = 4096;  // descriptors up to 16,777,215 are tracked
constexpr unsigned kMaxFd = kChunkSize * kMaxChunks;

// A descriptor tcpfix itself holds (its log file, a socket held for a
// background decision): closing it goes the slow path so tcpfix learns the
// application took the number back.
constexpr std::uint32_t kOwned = 0xffffffffu;

enum SlotFlag : std::uint32_t {
    kConnectCalled = 1u << 0,   // connect() was called on it by this process
    kMatched = 1u << 1,         // its destination passes TCPFIX_MATCH
    kConnectPending = 1u << 2,  // a non-blocking connect whose outcome is not yet read
    kAppLinger = 1u << 3,       // the application set SO_LINGER itself
    kExplicitPort = 1u << 4,    // bound to an explicit local port
    kAppBound = 1u << 5,        // the application bound it (bound_addr holds where)
    kOptionsLost = 1u << 6,     // more options than a slot keeps: a retry cannot replay them all
    kTimedOut = 1u << 7,        // tcpfix abandoned its connect: SO_ERROR reads ETIMEDOUT
    kDeadlineArmed = 1u << 8,   // the connect watchdog holds a deadline for it
    kJudged = 1u << 9,          // storm detection has classified it (used, or abandoned)
    kAbandoned = 1u << 10,      // ... as abandoned by the application
    kCloseWaitSeen = 1u << 11,  // found in CLOSE_WAIT at close_wait_seen_ns
    kReaped = 1u << 12,         // shut down after too long in CLOSE_WAIT
    kStdio = 1u << 13,          // wrapped in a stdio FILE (fdopen): stdio may flush into it after exit handlers
    kExitDecided = 1u << 14,    // the exit handler has decided it (once per socket, not per descriptor)
};

// A socket option the application set, kept so a fresh socket can get it too.
struct SavedOption {
    int level = 0;
    int name = 0;
    std::uint8_t len = 0;
    std::uint8_t value[31] = {};
};

struct Slot {
    std::atomic<std::uint32_t> refs{0};
    std::atomic<std::uint32_t> busy{0};  // how many background scans act on its descriptor right now
    std::int64_t close_wait_seen_ns = 0;
    std::atomic<std::uint32_t> flags{0};
    std::atomic<std::uint32_t> next_free{0};
    std::uint32_t fork_epoch = 0;   // the process's fork count when the socket was made
    std::uint32_t spawn_epoch = 0;  // ... and its count of programs spawned (exec'd children)
    // Read by the watchdog thread while an application thread may reuse the
    // slot, hence atomic.
    std::atomic<std::uint32_t> generation{0};  // bumped each time the slot is reused
    int domain = 0;                // AF_INET or AF_INET6
    int type = 0;                  // SOCK_STREAM plus SOCK_NONBLOCK / SOCK_CLOEXEC as created
    policy::Endpoint dest;         // valid once kConnectCalled is set
    std::atomic<std::int64_t> connect_start_ns{0};
    unsigned char bound_addr[28] = {};  // sockaddr_in / sockaddr_in6 of the application's bind()
    std::uint8_t bound_len = 0;
    std::uint8_t option_count = 0;
    SavedOption options[8];
};

namespace detail {
extern std::atomic<std::atomic<std::uint32_t>*> g_chunks[kMaxChunks];
}

// The slot index for fd, or 0. The hot path of every hooked close().
inline std::uint32_t lookup(int fd) {
    unsigned u = static_cast<unsigned>(fd);
    if (u >= kMaxFd) return 0;
    std::atomic<std::uint32_t>* chunk = detail::g_chunks[u >> kChunkBits].load(std::memory_order_acquire);
    if (chunk == nullptr) return 0;
    return chunk[u & (kChunkSize - 1)].load(std::memory_order_acquire);
}

Slot& slot(std::uint32_t index);

// Tracks a new socket at fd: a fresh slot with one reference. Returns its
// index, or 0 when no memory could be had (the socket then passes through).
std::uint32_t track_new(int fd, int domain = 0, int type = 0);

// Marks fd as a descriptor tcpfix holds.
void track_owned(int fd);

// Removes fd from the table and returns what it held (0, kOwned or a slot
// index whose reference the caller now owns and must release()).
std::uint32_t take(int fd);

// fd now refers to the same socket as `from` (dup semantics); whatever fd
// held before is released. A no-op pair when `from` is untracked.
void share(int from, int fd);

// fd was just handed out by the kernel for something tcpfix does not track:
// drop any stale entry left by a close tcpfix never saw.
void clear(int fd);

// Puts back an entry take() removed, when the call that would have closed
// the descriptor failed.
void restore(int fd, std::uint32_t index);

// Waits while a background scan acts on the slot's descriptor; called after
// take() and before the descriptor is really closed, so tcpfix never acts on
// a number the application has given up.
void wait_not_busy(std::uint32_t index);

// Drops one reference; the slot is recycled when none remain.
void release(std::uint32_t index);

// The current fork epoch; a socket made in an earlier epoch may be shared with
// another process.
std::uint32_t fork_epoch();
void bump_fork_epoch();

// The spawn epoch: bumped whenever this process starts a program in a child
// without fork() handlers running (posix_spawn, system, popen, vfork + exec).
// A socket made in an earlier spawn epoch and lacking FD_CLOEXEC may be held
// by that program.
std::uint32_t spawn_epoch();
void bump_spawn_epoch();

// Calls f(fd, index) for every tracked descriptor in [first, last], in order.
template <typename F>
void for_each(unsigned first, unsigned last, F&& f) {
    if (last >= kMaxFd) last = kMaxFd - 1;
    for (unsigned c = first >> kChunkBits; c <= (last >> kChunkBits) && first <= last; ++c) {
        std::atomic<std::uint32_t>* chunk = detail::g_chunks[c].load(std::memory_order_acquire);
        if (chunk == nullptr) continue;
        unsigned lo = c == (first >> kChunkBits) ? first & (kChunkSize - 1) : 0;
        unsigned hi = c == (last >> kChunkBits) ? last & (kChunkSize - 1) : kChunkSize - 1;
        for (unsigned i = lo; i <= hi; ++i) {
            std::uint32_t index = chunk[i].load(std::memory_order_acquire);
            if (index != 0) f(static_cast<int>((c << kChunkBits) | i), index);
        }
    }
}

}  // namespace tcpfix::fdtable
