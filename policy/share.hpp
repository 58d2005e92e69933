// TCPFIX_SHARE: the layout of a share — one budget per destination for every
// process of a user that names it — and everything done to it. Pure: the
// segment is a span of memory handed in (preload/share.cpp maps it from
// /dev/shm, the unit tests and the fuzzer use a buffer), the clock and the
// randomness are arguments, and whether a process is alive is a callback.
//
// Safe against a process killed at any instruction: nothing here takes a
// lock. Every update is one atomic operation (an add, a store, or a
// compare-exchange), so a process that dies leaves at most that one update
// undone; readers never wait for a writer. Every field a reader takes from the
// segment is treated as untrusted: the header is validated once (magic,
// layout version, sizes, a checksum of its fixed part), and every later read
// of the mutable tables is bounds-checked and clamped, so a corrupted
// segment can make a share wrong but never makes a process crash or wait
// without end.
#pragma once

#include <string.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policy/config.hpp"
#include "policy/net.hpp"

namespace tcpfix::policy::share {

constexpr std::uint64_t kMagic = 0x5248535846504354ULL;  // "TCPFXSHR" in memory order
constexpr std::uint32_t kLayoutVersion = 1;
constexpr std::size_t kHeaderSize = 4096;
constexpr std::size_t kMaxNameLength = 64;

// What a share holds by default: destinations and processes attached at once.
constexpr std::uint32_t kDefaultEntries = 1024;
constexpr std::uint32_t kDefaultProcs = 1024;
// What a valid segment may declare (the fuzzer's and the tests' small ones included).
constexpr std::uint32_t kMinEntries = 16, kMaxEntries = 65536;
constexpr std::uint32_t kMinProcs = 1, kMaxProcs = 65536;
// A destination is looked for in at most this many entries from its hash
// position; when they are all taken by others, the table counts as full
// for it (around 90 % occupancy with the default size).
constexpr std::uint32_t kMaxProbes = 128;

// Threads of one process that can be counted as waiting at once.
constexpr int kWaitRecords = 14;

// No timestamp a valid process writes lies further ahead than this (the
// longest duration the configuration accepts is one hour); a value beyond it
// is corruption and is repaired rather than waited for.
constexpr std::int64_t kMaxAheadNs = 3600LL * 1'000'000'000 + 1'000'000'000;
// A rate slot reserved further ahead than this many intervals is corruption.
constexpr std::int64_t kMaxQueuedSlots = 4096;

// Entry::state values. A process that dies between claiming an entry and
// publishing its key leaves it "filling" for good: readers skip it and the
// destination goes to the next entry (one entry lost, nobody waits).
constexpr std::uint64_t kEntryFree = 0;
constexpr std::uint64_t kEntryReady = 2;
constexpr std::uint64_t kEntryFillingTag = 1;  // low byte; the filler's PID above it

// The fixed part of the header is covered by `checksum`; the counters after
// it change while processes run.
struct Header {
    std::uint64_t magic;
    std::uint32_t version;
    std::uint32_t header_size;
    std::uint64_t total_size;
    std::uint32_t entry_count;
    std::uint32_t entry_size;
    std::uint64_t entries_offset;
    std::uint32_t proc_count;
    std::uint32_t proc_size;
    std::uint64_t procs_offset;
    std::uint32_t uid;  // the user whose processes share it
    std::uint32_t reserved;
    std::int64_t created_unix_s;
    char name[72];           // NUL-terminated
    std::uint64_t checksum;  // FNV-1a 64 of every byte above

    alignas(64) std::atomic<std::uint64_t> table_full;  // new destinations turned away: table full
    std::atomic<std::uint64_t> attaches;                // processes that ever attached
};

// One destination's common state. 128 bytes, two cache lines.
struct alignas(64) Entry {
    std::atomic<std::uint64_t> state;   // kEntryFree, filling, kEntryReady
    std::atomic<std::uint64_t> key[3];  // the destination (make_key), written before kEntryReady
    std::atomic<std::int64_t> next_rate_slot_ns;  // TCPFIX_CONNECT_RATE: the next free slot
    std::atomic<std::int64_t> backoff_next_ns;   // while failing: the next attempt's earliest start
    std::atomic<std::int64_t> backoff_delay_ns;  // the current delay, for `tcpfix top` (0: healthy)
    std::atomic<std::uint32_t> consecutive_failures;
    std::atomic<std::uint32_t> wake;  // futex word, bumped when a failing spell ends
    std::atomic<std::uint64_t> connects;
    std::atomic<std::uint64_t> failures;      // errors and abandoned connections
    std::atomic<std::uint64_t> leaks;         // connections the application abandoned
    std::atomic<std::uint64_t> reaped;        // ... shut down in CLOSE_WAIT
    std::atomic<std::uint64_t> throttled_us;  // time connects waited for backoff or rate
};

// A process attached to the share. 64 bytes, one cache line.
struct alignas(64) Proc {
    std::atomic<std::uint64_t> owner;  // 0: free; else proc_identity()
    std::atomic<std::uint32_t>
        waiting[kWaitRecords];  // entry index + 1 per waiting thread, 0: none
};

static_assert(sizeof(Header) <= kHeaderSize);
static_assert(sizeof(Entry) == 128);
static_assert(sizeof(Proc) == 64);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "the share needs address-free (lock-free) atomics");

// A process's identity in the share: its PID and the low 32 bits of its start
// time (clock ticks since boot, /proc/PID/stat field 22), so a PID the kernel
// hands to another process later is not taken for the first.
constexpr std::uint64_t proc_identity(std::uint32_t pid, std::uint64_t start_ticks) {
    return static_cast<std::uint64_t>(pid) | (start_ticks & 0xffffffffULL) << 32;
}
constexpr std::uint32_t identity_pid(std::uint64_t identity) {
    return static_cast<std::uint32_t>(identity);
}
constexpr std::uint32_t identity_start(std::uint64_t identity) {
    return static_cast<std::uint32_t>(identity >> 32);
}

// Field 22 (starttime) of a /proc/PID/stat line; nullopt if it does not parse.
std::optional<std::uint64_t> parse_stat_start_ticks(std::string_view stat);

// True for a name TCPFIX_SHARE accepts: 1 to 64 letters, digits, '.', '_', '-'.
bool valid_name(std::string_view name);

// The segment's file name in /dev/shm for a user and a share name:
// "tcpfix-<uid>-<name>.v<layout version>". Versions have files of their own,
// so two tcpfix versions side by side during an upgrade each keep a share.
std::string file_name(std::uint32_t uid, std::string_view name);
// The same into a caller's buffer, NUL-terminated, without allocating;
// returns its length (cut short if cap is too small).
std::size_t format_file_name(char* out, std::size_t cap, std::uint32_t uid, std::string_view name);
// The file name's parts, for `tcpfix top` listing /dev/shm; nullopt for other files.
struct FileName {
    std::uint32_t uid = 0;
    std::string name;
    std::uint32_t version = 0;
};
std::optional<FileName> parse_file_name(std::string_view file);

constexpr std::size_t segment_size(std::uint32_t entries, std::uint32_t procs) {
    return kHeaderSize + std::size_t{entries} * sizeof(Entry) + std::size_t{procs} * sizeof(Proc);
}

// Writes a fresh segment into `mem` (zeroed by the caller, as a new file is;
// size == segment_size(entries, procs), 64-byte aligned). entries must be a
// power of two within bounds.
void initialise(void* mem, std::uint32_t entries, std::uint32_t procs, std::string_view name,
                std::uint32_t uid, std::int64_t created_unix_s);

enum class Problem {
    None,
    TooSmall,  // shorter than a header (a truncated file)
    Magic,     // not a tcpfix share
    Version,   // another layout version
    Geometry,  // sizes or offsets that do not add up
    Size,      // the header's total size is not the file's
    Checksum,  // the fixed header was altered
    Name,      // the name is not a valid share name, or not the one asked for
    Owner,     // made for another user
};

// "is shorter than its header (truncated?)" and so on: completes "the share ... ".
std::string_view describe(Problem p);

// Checks a segment before anything else reads it. `base` is 64-byte
// aligned; `name` empty accepts any valid name.
Problem validate(const void* base, std::size_t size, std::uint32_t uid, std::string_view name = {});

// The header's checksum as initialise() computes it.
std::uint64_t header_checksum(const Header& h);

// A destination as three words: address bytes 0-7, 8-15, family | port << 16.
struct Key {
    std::uint64_t w[3];
    bool operator==(const Key&) const = default;
};
Key make_key(const Endpoint& ep);
// The destination a key holds; nullopt when the family is neither IPv4 nor IPv6.
std::optional<Endpoint> endpoint_of(const Key& k);

// A validated segment. Copyable view: it owns nothing.
class Segment {
  public:
    Segment() = default;
    // Only for memory validate() accepted.
    explicit Segment(void* base);

    bool valid() const { return header_ != nullptr; }
    Header& header() const { return *header_; }
    std::uint32_t entry_count() const { return entry_mask_ + 1; }
    std::uint32_t proc_count() const { return proc_count_; }
    Entry& entry(std::uint32_t index) const { return entries_[index & entry_mask_]; }
    Proc& proc(std::uint32_t index) const { return procs_[index]; }
    std::uint32_t index_of(const Entry& e) const {
        return static_cast<std::uint32_t>(&e - entries_);
    }

    // The entry of `dest`, added if absent (`pid` marks a half-written one).
    // nullptr when no entry is free within kMaxProbes of its position: the
    // table is full for it (counted in header().table_full).
    Entry* find_or_add(const Endpoint& dest, std::uint32_t pid) const;
    // The entry of `dest`, or nullptr.
    Entry* find(const Endpoint& dest) const;

    // A process slot for `identity`: the one it already holds (the same
    // process after exec), else a free one, else one whose owner
    // `is_dead(owner)` says has gone. nullptr when every slot has a live owner.
    template <typename IsDead>
    Proc* claim_proc(std::uint64_t identity, IsDead&& is_dead) const;
    // Gives the slot back (at exit).
    void release_proc(Proc& p, std::uint64_t identity) const;

  private:
    Entry* probe(const Key& key, std::uint32_t pid, bool add) const;
    Proc* claim_free_or_own(std::uint64_t identity) const;

    Header* header_ = nullptr;
    Entry* entries_ = nullptr;
    Proc* procs_ = nullptr;
    std::uint32_t entry_mask_ = 0;
    std::uint32_t proc_count_ = 0;
    std::uint32_t hash_shift_ = 64;
};

// A thread of this process starts waiting for the entry at `entry_index`:
// the record it took (for unmark_waiting), or -1 when all are taken.
int mark_waiting(Proc& p, std::uint32_t entry_index);
void unmark_waiting(Proc& p, int record);

// ---- pacing on the common state --------------------------------------------

// TCPFIX_CONNECT_RATE, one schedule for every process: reserves the next slot
// (spacing 1/rate, no burst) and returns how long the caller waits for it
// from `now`. A slot reserved by a process that died is simply not used.
std::int64_t reserve_rate_slot(Entry& e, double per_second, std::int64_t now_ns);

// TCPFIX_RECONNECT_BACKOFF, one schedule for every process. While the
// destination has failures not cleared by a success, at most one connect
// goes per current delay: 0 when the caller may go now (it took the turn,
// and the next one is a delay away); else how long until the next turn
// could be free — wait that long (or until `wake` moves) and ask again.
// Waiting and asking again, instead of booking a turn ahead, means a
// failure seen meanwhile stretches the next turn for everyone, so the pool
// makes the attempts of one backoff schedule, not of one per process.
std::int64_t claim_backoff_turn(Entry& e, const Backoff& b, std::int64_t now_ns, double random01);

// A failed connect or an abandoned connection to this destination at `now`:
// one more consecutive failure, and no attempt before now + its delay.
void record_failure(Entry& e, const Backoff& b, std::int64_t now_ns, double random01);

// A connection carried data (or, for a share, closed cleanly while
// established): the destination is healthy for every process. True when this
// ended a failing spell: the caller then wakes the waiters (`wake` moved).
bool record_success(Entry& e);

// The delay after `failures` consecutive failures without jitter: MIN doubling
// up to MAX; what `tcpfix top` shows.
std::int64_t nominal_delay_ns(const Backoff& b, std::uint32_t failures);

// ---- reading a share (tcpfix top, the Prometheus textfile) -----------------

struct EntryView {
    std::uint32_t index = 0;
    Endpoint dest;
    std::uint64_t connects = 0, failures = 0, leaks = 0, reaped = 0, throttled_us = 0;
    std::uint32_t consecutive_failures = 0;
    std::int64_t backoff_delay_ns = 0;  // 0: healthy
    std::int64_t backoff_next_ns = 0;   // CLOCK_MONOTONIC
    std::uint32_t waiting = 0;          // connects of live processes waiting now
    std::int64_t time_wait = -1;  // TIME_WAIT entries to it now; -1: unknown (filled by the reader)
};

struct Snapshot {
    std::string name;
    std::uint32_t uid = 0;
    std::int64_t created_unix_s = 0;
    std::uint32_t capacity = 0;  // entries
    std::uint32_t proc_capacity = 0;
    std::uint32_t filling = 0;     // entries left half-written by a process that died
    std::uint32_t unreadable = 0;  // entries whose state or key is corrupt
    std::uint64_t table_full = 0;
    std::uint64_t attaches = 0;
    std::vector<std::uint64_t> processes;  // identities of the live processes attached
    std::vector<EntryView> entries;        // in table order
};

// Reads every entry and process slot once. `is_live(owner)` decides which
// process slots count (and whose waiting connects are counted).
template <typename IsLive>
Snapshot snapshot(const Segment& seg, IsLive&& is_live);

// ---- template definitions --------------------------------------------------

template <typename IsDead>
Proc* Segment::claim_proc(std::uint64_t identity, IsDead&& is_dead) const {
    if (Proc* p = claim_free_or_own(identity)) return p;
    for (std::uint32_t i = 0; i < proc_count_; ++i) {
        Proc& p = procs_[i];
        std::uint64_t owner = p.owner.load(std::memory_order_acquire);
        if (owner == 0 || owner == identity || !is_dead(owner)) continue;
        if (p.owner.compare_exchange_strong(owner, identity, std::memory_order_acq_rel)) {
            for (auto& w : p.waiting) w.store(0, std::memory_order_relaxed);  // the dead one's
            header_->attaches.fetch_add(1, std::memory_order_relaxed);
            return &p;
        }
    }
    return nullptr;
}

// Adds p's waiting records to per_entry (sized entry_count()); returns how many it had.
std::uint32_t count_waiting_into(const Segment& seg, const Proc& p,
                                 std::vector<std::uint32_t>& per_entry);

// Entries holding the same destination (two processes added it at the same
// moment) summed into the first.
void merge_duplicates(std::vector<EntryView>& entries);

enum class EntryKind { Free, Filling, Ready, Corrupt };
// One entry's fields, each read once; `kind` says whether it holds a destination.
EntryView read_entry(const Segment& seg, std::uint32_t index, EntryKind& kind);

template <typename IsLive>
Snapshot snapshot(const Segment& seg, IsLive&& is_live) {
    Snapshot s;
    const Header& h = seg.header();
    s.name = std::string(h.name, ::strnlen(h.name, sizeof h.name));
    s.uid = h.uid;
    s.created_unix_s = h.created_unix_s;
    s.capacity = seg.entry_count();
    s.proc_capacity = seg.proc_count();
    s.table_full = h.table_full.load(std::memory_order_relaxed);
    s.attaches = h.attaches.load(std::memory_order_relaxed);
    std::vector<std::uint32_t> waiting(seg.entry_count(), 0);
    for (std::uint32_t i = 0; i < seg.proc_count(); ++i) {
        const Proc& p = seg.proc(i);
        std::uint64_t owner = p.owner.load(std::memory_order_acquire);
        if (owner == 0 || !is_live(owner)) continue;
        s.processes.push_back(owner);
        count_waiting_into(seg, p, waiting);
    }
    for (std::uint32_t i = 0; i < seg.entry_count(); ++i) {
        EntryKind kind = EntryKind::Free;
        EntryView v = read_entry(seg, i, kind);
        if (kind == EntryKind::Filling) ++s.filling;
        if (kind == EntryKind::Corrupt) ++s.unreadable;
        if (kind != EntryKind::Ready) continue;
        v.waiting = waiting[i];
        s.entries.push_back(v);
    }
    merge_duplicates(s.entries);
    return s;
}

}  // namespace tcpfix::policy::share
