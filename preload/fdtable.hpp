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

#include <sys/socket.h>

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
    kInet6 = 1u << 15,          // made as AF_INET6 (else AF_INET)
};


// A socket option the application set (or, with level kBoundLevel, the
// address it bound to), kept out of line so a fresh socket can get it too.
// Nodes come from a pool of their own; a socket without options holds none.
constexpr int kBoundLevel = -1;
constexpr unsigned kMaxSavedOptions = 16;  // per socket; more sets kOptionsLost

struct SavedOption {
    int level = 0;
    int name = 0;
    std::uint8_t len = 0;
    std::uint8_t value[31] = {};
    std::atomic<std::uint32_t> next{0};  // the socket's next option; in the pool, the next free node
};
static_assert(sizeof(SavedOption) == 44);

// The state of one socket: 56 bytes, so a tracked socket costs 60 with its
// descriptor-table entry. Everything an application rarely sets (options,
// its bind address) is a SavedOption chain.
struct Slot {
    std::atomic<std::int64_t> connect_start_ns{0};
    std::atomic<std::uint32_t> refs{0};
    std::atomic<std::uint32_t> flags{0};
    // Read by background threads while an application thread may reuse the
    // slot, hence atomic.
    std::atomic<std::uint32_t> generation{0};  // bumped each time the slot is reused
    std::uint32_t fork_epoch = 0;   // the process's fork count when the socket was made
    std::uint32_t spawn_epoch = 0;  // ... and its count of programs spawned (exec'd children)
    std::atomic<std::uint32_t> options{0};  // first SavedOption, 0 for none
    // In use: when it was first seen in CLOSE_WAIT (kCloseWaitSeen), in ms of
    // the monotonic clock, modulo 2^32. Free: the next free slot.
    std::atomic<std::uint32_t> aux{0};
    std::uint8_t dest_addr[16] = {};  // valid once kConnectCalled is set
    std::uint16_t dest_port = 0;
    std::uint8_t dest_family = 0;
    std::atomic<std::uint8_t> busy{0};  // how many background scans act on its descriptor right now

    policy::Endpoint dest() const {
        policy::Endpoint ep;
        ep.addr.family = dest_family;
        __builtin_memcpy(ep.addr.bytes.data(), dest_addr, sizeof dest_addr);
        ep.port = dest_port;
        return ep;
    }
    void set_dest(const policy::Endpoint& ep) {
        dest_family = static_cast<std::uint8_t>(ep.addr.family);
        __builtin_memcpy(dest_addr, ep.addr.bytes.data(), sizeof dest_addr);
        dest_port = ep.port;
    }
    bool dest_is(const policy::Endpoint& ep) const {
        return dest_family == ep.addr.family && dest_port == ep.port &&
               __builtin_memcmp(dest_addr, ep.addr.bytes.data(), sizeof dest_addr) == 0;
    }
    int domain() const;
};
static_assert(sizeof(Slot) == 56);
inline int Slot::domain() const { return (flags.load(std::memory_order_relaxed) & kInet6) != 0 ? AF_INET6 : AF_INET; }

constexpr unsigned kSlotChunkBits = 10;
constexpr unsigned kMaxSlotChunks = 4096;  // up to ~4 million live sockets

namespace detail {
extern std::atomic<std::atomic<std::uint32_t>*> g_chunks[kMaxChunks];
extern std::atomic<Slot*> g_slot_chunks[kMaxSlotChunks];
extern std::atomic<std::uint32_t> g_fork_epoch;
extern std::atomic<std::uint32_t> g_spawn_epoch;
void free_slot(std::uint32_t index);
void clear_slow(int fd);

// fd's entry in the table; nullptr when fd is out of range or its chunk was
// never mapped (so the entry is 0).
inline std::atomic<std::uint32_t>* entry(int fd) {
    unsigned u = static_cast<unsigned>(fd);
    if (u >= kMaxFd) return nullptr;
    std::atomic<std::uint32_t>* chunk = g_chunks[u >> kChunkBits].load(std::memory_order_acquire);
    return chunk == nullptr ? nullptr : &chunk[u & (kChunkSize - 1)];
}
}  // namespace detail

// The slot index for fd, or 0. The hot path of every hooked close().
inline std::uint32_t lookup(int fd) {
    std::atomic<std::uint32_t>* e = detail::entry(fd);
    return e == nullptr ? 0 : e->load(std::memory_order_acquire);
}

inline Slot& slot(std::uint32_t index) {
    return detail::g_slot_chunks[index >> kSlotChunkBits].load(
        std::memory_order_acquire)[index & ((1u << kSlotChunkBits) - 1)];
}

// Tracks a new socket at fd: a fresh slot with one reference. Returns its
// index, or 0 when no memory could be had (the socket then passes through).
std::uint32_t track_new(int fd, int domain);

// Marks fd as a descriptor tcpfix holds.
void track_owned(int fd);

// Removes fd from the table and returns what it held (0, kOwned or a slot
// index whose reference the caller now owns and must release()).
inline std::uint32_t take(int fd) {
    std::atomic<std::uint32_t>* e = detail::entry(fd);
    return e == nullptr ? 0 : e->exchange(0, std::memory_order_acq_rel);
}

// The slot `from` refers to, with one more reference taken for a copy about
// to be installed; 0 when `from` is untracked, or tcpfix's own descriptor
// (a copy of which is the application's).
inline std::uint32_t reference_for_copy(int from) {
    std::uint32_t index = lookup(from);
    if (index == kOwned) return 0;
    if (index != 0) slot(index).refs.fetch_add(1, std::memory_order_acq_rel);
    return index;
}

// fd now refers to the same socket as `from` (dup semantics); whatever fd
// held before is released. A no-op pair when `from` is untracked.
void share(int from, int fd);

// share() onto a descriptor whose entry this thread has just take()n
// (`taken`; 0 falls back to share()) ahead of a dup2 that succeeded: the
// number stayed open all along, so no other thread can have installed
// anything there, and the entry is written without a locked exchange. (An
// application racing a raw close of that number could have; its slot would
// then leak, never be used twice.)
inline void share_taken(int from, int fd, std::uint32_t taken) {
    if (taken == 0) {
        share(from, fd);
        return;
    }
    std::atomic<std::uint32_t>* e = detail::entry(fd);
    if (e == nullptr) __builtin_unreachable();  // take() found something there: the entry exists
    e->store(reference_for_copy(from), std::memory_order_release);
}

// fd was just handed out by the kernel for something tcpfix does not track:
// drop any stale entry left by a close tcpfix never saw.
inline void clear(int fd) {
    if (__builtin_expect(lookup(fd) != 0, 0)) detail::clear_slow(fd);
}

// Puts back an entry take() removed, when the call that would have closed
// the descriptor failed.
void restore(int fd, std::uint32_t index);

// The application's options on the slot's socket, in the order first set:
// remembers one (a later set of the same level and name replaces its
// value). False when it cannot be kept: longer than a SavedOption holds,
// past kMaxSavedOptions, or no memory.
bool save_option(Slot& s, int level, int name, const void* value, unsigned len);

// Calls f(const SavedOption&) for each saved option (kBoundLevel included).
template <typename F>
void for_each_option(const Slot& s, F&& f);

// Waits while a background scan acts on the slot's descriptor; called after
// take() and before the descriptor is really closed, so tcpfix never acts on
// a number the application has given up.
inline void wait_not_busy(std::uint32_t index) {
    if (index == 0 || index == kOwned) return;
    while (slot(index).busy.load(std::memory_order_seq_cst) != 0) {
    }
}

// Drops one reference; the slot is recycled when none remain.
inline void release(std::uint32_t index) {
    if (index == 0 || index == kOwned) return;
    if (slot(index).refs.fetch_sub(1, std::memory_order_acq_rel) == 1) detail::free_slot(index);
}

// The current fork epoch; a socket made in an earlier epoch may be shared with
// another process.
inline std::uint32_t fork_epoch() { return detail::g_fork_epoch.load(std::memory_order_acquire); }
void bump_fork_epoch();

// The spawn epoch: bumped whenever this process starts a program in a child
// without fork() handlers running (posix_spawn, system, popen, vfork + exec).
// A socket made in an earlier spawn epoch and lacking FD_CLOEXEC may be held
// by that program.
inline std::uint32_t spawn_epoch() { return detail::g_spawn_epoch.load(std::memory_order_acquire); }
void bump_spawn_epoch();

const SavedOption& option(std::uint32_t index);

template <typename F>
void for_each_option(const Slot& s, F&& f) {
    for (std::uint32_t i = s.options.load(std::memory_order_acquire); i != 0;) {
        const SavedOption& o = option(i);
        f(o);
        i = o.next.load(std::memory_order_acquire);
    }
}

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
