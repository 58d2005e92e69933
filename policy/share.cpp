#include "policy/share.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <limits>
#include <utility>

#include "policy/storm.hpp"

namespace tcpfix::policy::share {
namespace {

// Fibonacci-style multiply-xor over the three key words: a dozen
// instructions, no byte loop (the connect path runs it).
std::uint64_t mix(const Key& k) {
    std::uint64_t h = k.w[0] * 0x9E3779B97F4A7C15ULL;
    h ^= k.w[1] * 0xC2B2AE3D27D4EB4FULL;
    h ^= k.w[2] * 0x165667B19E3779F9ULL;
    h ^= h >> 29;
    return h * 0xBF58476D1CE4E5B9ULL;
}

bool is_power_of_two(std::uint32_t v) {
    return v != 0 && (v & (v - 1)) == 0;
}

unsigned log2_of(std::uint32_t v) {
    unsigned n = 0;
    while ((1u << n) < v) ++n;
    return n;
}

bool key_is(const Entry& e, const Key& k) {
    return e.key[0].load(std::memory_order_relaxed) == k.w[0] &&
           e.key[1].load(std::memory_order_relaxed) == k.w[1] &&
           e.key[2].load(std::memory_order_relaxed) == k.w[2];
}

// The longest a rate interval is taken to be: a rate below one an hour is
// one an hour (and the arithmetic below stays far from overflow).
std::int64_t rate_interval_ns(double per_second) {
    if (!(per_second > 0)) return kMaxAheadNs;
    double ns = 1e9 / per_second;
    if (!(ns < static_cast<double>(kMaxAheadNs))) return kMaxAheadNs;
    return std::max<std::int64_t>(static_cast<std::int64_t>(ns), 1);
}

// `t` lies so far beyond `now` that no process wrote it: corruption.
bool beyond(std::int64_t t, std::int64_t now, std::int64_t max_ahead) {
    return t > now && t - now > max_ahead;
}

}  // namespace

std::optional<std::uint64_t> parse_stat_start_ticks(std::string_view stat) {
    auto paren = stat.rfind(')');
    if (paren == std::string_view::npos) return std::nullopt;
    std::string_view rest = stat.substr(paren + 1);
    // Fields after the command: 3 (state) ... 22 (starttime).
    for (int field = 3; field <= 22; ++field) {
        while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
        auto end = rest.find(' ');
        std::string_view value = rest.substr(0, end);
        if (value.empty()) return std::nullopt;
        if (field == 22) {
            std::uint64_t ticks = 0;
            auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), ticks);
            if (ec != std::errc() || ptr != value.data() + value.size()) return std::nullopt;
            return ticks;
        }
        if (end == std::string_view::npos) return std::nullopt;
        rest.remove_prefix(end);
    }
    return std::nullopt;
}

bool valid_name(std::string_view name) {
    if (name.empty() || name.size() > kMaxNameLength) return false;
    return std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '.' || c == '_' || c == '-';
    });
}

std::string file_name(std::uint32_t uid, std::string_view name) {
    return fmt::format("tcpfix-{}-{}.v{}", uid, name, kLayoutVersion);
}

std::size_t format_file_name(char* out, std::size_t cap, std::uint32_t uid, std::string_view name) {
    if (cap == 0) return 0;
    auto r = fmt::format_to_n(out, cap - 1, "tcpfix-{}-{}.v{}", uid, name, kLayoutVersion);
    std::size_t n = r.size < cap - 1 ? r.size : cap - 1;
    out[n] = '\0';
    return n;
}

std::optional<FileName> parse_file_name(std::string_view file) {
    constexpr std::string_view kPrefix = "tcpfix-";
    if (!file.starts_with(kPrefix)) return std::nullopt;
    file.remove_prefix(kPrefix.size());
    FileName out;
    auto [uid_end, ec] = std::from_chars(file.data(), file.data() + file.size(), out.uid);
    if (ec != std::errc() || uid_end == file.data() || uid_end == file.data() + file.size() ||
        *uid_end != '-')
        return std::nullopt;
    file.remove_prefix(static_cast<std::size_t>(uid_end - file.data()) + 1);
    auto dot_v = file.rfind(".v");
    if (dot_v == std::string_view::npos) return std::nullopt;
    std::string_view version = file.substr(dot_v + 2);
    auto [v_end, v_ec] =
        std::from_chars(version.data(), version.data() + version.size(), out.version);
    if (version.empty() || v_ec != std::errc() || v_end != version.data() + version.size())
        return std::nullopt;
    out.name = std::string(file.substr(0, dot_v));
    if (!valid_name(out.name)) return std::nullopt;
    return out;
}

std::uint64_t header_checksum(const Header& h) {
    const auto* p = reinterpret_cast<const unsigned char*>(&h);
    std::uint64_t sum = 0xcbf29ce484222325ULL;
    for (std::size_t i = 0; i < offsetof(Header, checksum); ++i) {
        sum ^= p[i];
        sum *= 0x100000001b3ULL;
    }
    return sum;
}

void initialise(void* mem, std::uint32_t entries, std::uint32_t procs, std::string_view name,
                std::uint32_t uid, std::int64_t created_unix_s) {
    auto* h = static_cast<Header*>(mem);
    h->magic = kMagic;
    h->version = kLayoutVersion;
    h->header_size = kHeaderSize;
    h->entry_count = entries;
    h->entry_size = sizeof(Entry);
    h->entries_offset = kHeaderSize;
    h->proc_count = procs;
    h->proc_size = sizeof(Proc);
    h->procs_offset = kHeaderSize + std::uint64_t{entries} * sizeof(Entry);
    h->total_size = segment_size(entries, procs);
    h->uid = uid;
    h->reserved = 0;
    h->created_unix_s = created_unix_s;
    std::memset(h->name, 0, sizeof h->name);
    std::memcpy(h->name, name.data(), std::min(name.size(), kMaxNameLength));
    h->checksum = header_checksum(*h);
}

std::string_view describe(Problem p) {
    switch (p) {
        case Problem::None:
            return "is valid";
        case Problem::TooSmall:
            return "is shorter than its header (truncated?)";
        case Problem::Magic:
            return "is not a tcpfix share (bad magic)";
        case Problem::Version:
            return "has another layout version (another tcpfix version?)";
        case Problem::Geometry:
            return "declares sizes or offsets that do not add up (corrupted?)";
        case Problem::Size:
            return "is not the size its header declares (truncated or corrupted?)";
        case Problem::Checksum:
            return "has a header that fails its checksum (corrupted?)";
        case Problem::Name:
            return "carries another or an invalid share name (corrupted?)";
        case Problem::Owner:
            return "was made for another user";
    }
    return "is invalid";
}

Problem validate(const void* base, std::size_t size, std::uint32_t uid, std::string_view name) {
    if (base == nullptr || size < kHeaderSize) return Problem::TooSmall;
    const auto* h = static_cast<const Header*>(base);
    if (h->magic != kMagic) return Problem::Magic;
    if (h->version != kLayoutVersion) return Problem::Version;
    if (h->header_size != kHeaderSize || h->entry_size != sizeof(Entry) ||
        h->proc_size != sizeof(Proc) || !is_power_of_two(h->entry_count) ||
        h->entry_count < kMinEntries || h->entry_count > kMaxEntries || h->proc_count < kMinProcs ||
        h->proc_count > kMaxProcs || h->entries_offset != kHeaderSize ||
        h->procs_offset != kHeaderSize + std::uint64_t{h->entry_count} * sizeof(Entry) ||
        h->total_size != segment_size(h->entry_count, h->proc_count))
        return Problem::Geometry;
    if (h->total_size != size) return Problem::Size;
    if (h->checksum != header_checksum(*h)) return Problem::Checksum;
    std::size_t len = ::strnlen(h->name, sizeof h->name);
    std::string_view stored(h->name, len);
    if (len == sizeof h->name || !valid_name(stored) || (!name.empty() && stored != name))
        return Problem::Name;
    if (h->uid != uid) return Problem::Owner;
    return Problem::None;
}

Key make_key(const Endpoint& ep) {
    Key k{};
    std::memcpy(&k.w[0], ep.addr.bytes.data(), 8);
    std::memcpy(&k.w[1], ep.addr.bytes.data() + 8, 8);
    k.w[2] = (static_cast<std::uint64_t>(static_cast<std::uint32_t>(ep.addr.family)) & 0xffff) |
             static_cast<std::uint64_t>(ep.port) << 16;
    return k;
}

std::optional<Endpoint> endpoint_of(const Key& k) {
    Endpoint ep;
    ep.addr.family = static_cast<int>(k.w[2] & 0xffff);
    if ((ep.addr.family != AF_INET && ep.addr.family != AF_INET6) || (k.w[2] >> 32) != 0)
        return std::nullopt;
    std::memcpy(ep.addr.bytes.data(), &k.w[0], 8);
    std::memcpy(ep.addr.bytes.data() + 8, &k.w[1], 8);
    if (ep.addr.family == AF_INET && k.w[1] != 0) return std::nullopt;
    if (ep.addr.family == AF_INET && (k.w[0] >> 32) != 0) return std::nullopt;
    ep.port = static_cast<std::uint16_t>(k.w[2] >> 16);
    return ep;
}

Segment::Segment(void* base) {
    auto* bytes = static_cast<unsigned char*>(base);
    header_ = static_cast<Header*>(base);
    entries_ = reinterpret_cast<Entry*>(bytes + header_->entries_offset);
    procs_ = reinterpret_cast<Proc*>(bytes + header_->procs_offset);
    entry_mask_ = header_->entry_count - 1;
    proc_count_ = header_->proc_count;
    hash_shift_ = 64 - log2_of(header_->entry_count);
}

Entry* Segment::probe(const Key& key, std::uint32_t pid, bool add) const {
    const std::uint32_t start = static_cast<std::uint32_t>(mix(key) >> hash_shift_);
    const std::uint32_t limit = std::min(kMaxProbes, entry_mask_ + 1);
    for (std::uint32_t i = 0; i < limit; ++i) {
        Entry& e = entries_[(start + i) & entry_mask_];
        std::uint64_t state = e.state.load(std::memory_order_acquire);
        if (state == kEntryReady) {
            if (key_is(e, key)) return &e;
            continue;
        }
        // Half-written (its writer may have died) or corrupt: not ours to
        // wait for. A destination being added by two processes at once can
        // end up in two entries; lookups find the first, and `tcpfix top`
        // adds the two up.
        if (state != kEntryFree) continue;
        if (!add) return nullptr;  // entries are never removed: the key is not further on
        const std::uint64_t filling = kEntryFillingTag | static_cast<std::uint64_t>(pid) << 8;
        if (!e.state.compare_exchange_strong(state, filling, std::memory_order_acq_rel)) {
            if (state == kEntryReady && key_is(e, key)) return &e;
            continue;
        }
        for (int w = 0; w < 3; ++w) e.key[w].store(key.w[w], std::memory_order_relaxed);
        e.state.store(kEntryReady, std::memory_order_release);
        return &e;
    }
    if (add) header_->table_full.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
}

Entry* Segment::find_or_add(const Endpoint& dest, std::uint32_t pid) const {
    return probe(make_key(dest), pid, true);
}

Entry* Segment::find(const Endpoint& dest) const {
    return probe(make_key(dest), 0, false);
}

Proc* Segment::claim_free_or_own(std::uint64_t identity) const {
    std::uint32_t first_free = proc_count_;
    for (std::uint32_t i = 0; i < proc_count_; ++i) {
        std::uint64_t owner = procs_[i].owner.load(std::memory_order_acquire);
        if (owner == identity) {
            // This very process before an exec: its waiting threads are gone.
            for (auto& w : procs_[i].waiting) w.store(0, std::memory_order_relaxed);
            return &procs_[i];
        }
        if (owner == 0 && first_free == proc_count_) first_free = i;
    }
    for (std::uint32_t i = first_free; i < proc_count_; ++i) {
        std::uint64_t expected = 0;
        if (procs_[i].owner.compare_exchange_strong(expected, identity,
                                                    std::memory_order_acq_rel)) {
            for (auto& w : procs_[i].waiting) w.store(0, std::memory_order_relaxed);
            header_->attaches.fetch_add(1, std::memory_order_relaxed);
            return &procs_[i];
        }
    }
    return nullptr;
}

void Segment::release_proc(Proc& p, std::uint64_t identity) const {
    for (auto& w : p.waiting) w.store(0, std::memory_order_relaxed);
    std::uint64_t expected = identity;
    p.owner.compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
}

int mark_waiting(Proc& p, std::uint32_t entry_index) {
    for (int r = 0; r < kWaitRecords; ++r) {
        std::uint32_t expected = 0;
        if (p.waiting[r].compare_exchange_strong(expected, entry_index + 1,
                                                 std::memory_order_acq_rel))
            return r;
    }
    return -1;
}

void unmark_waiting(Proc& p, int record) {
    if (record >= 0 && record < kWaitRecords) p.waiting[record].store(0, std::memory_order_release);
}

std::int64_t reserve_rate_slot(Entry& e, double per_second, std::int64_t now_ns) {
    const std::int64_t interval = rate_interval_ns(per_second);
    const std::int64_t max_ahead = interval * kMaxQueuedSlots;
    std::int64_t slot = e.next_rate_slot_ns.load(std::memory_order_acquire);
    for (;;) {
        std::int64_t mine = beyond(slot, now_ns, max_ahead) ? now_ns : std::max(slot, now_ns);
        if (e.next_rate_slot_ns.compare_exchange_weak(slot, mine + interval,
                                                      std::memory_order_acq_rel))
            return mine - now_ns;
    }
}

std::int64_t claim_backoff_turn(Entry& e, const Backoff& b, std::int64_t now_ns, double random01) {
    std::uint32_t n = e.consecutive_failures.load(std::memory_order_acquire);
    if (n == 0) return 0;
    std::int64_t next = e.backoff_next_ns.load(std::memory_order_acquire);
    for (;;) {
        if (next > now_ns && !beyond(next, now_ns, kMaxAheadNs)) return next - now_ns;
        std::int64_t delay = backoff_delay_ns(b, n, random01);
        if (e.backoff_next_ns.compare_exchange_weak(next, now_ns + delay,
                                                    std::memory_order_acq_rel))
            return 0;
        n = e.consecutive_failures.load(std::memory_order_acquire);
        if (n == 0) return 0;  // healthy again meanwhile
    }
}

void record_failure(Entry& e, const Backoff& b, std::int64_t now_ns, double random01) {
    e.failures.fetch_add(1, std::memory_order_relaxed);
    // Saturating: a count that wrapped to 0 would read as healthy.
    std::uint32_t n = e.consecutive_failures.load(std::memory_order_relaxed), more;
    do {
        more = n == std::numeric_limits<std::uint32_t>::max() ? n : n + 1;
    } while (!e.consecutive_failures.compare_exchange_weak(n, more, std::memory_order_acq_rel));
    n = more;
    std::int64_t until = now_ns + backoff_delay_ns(b, n, random01);
    std::int64_t seen = e.backoff_next_ns.load(std::memory_order_relaxed);
    while ((until > seen || beyond(seen, now_ns, kMaxAheadNs)) &&
           !e.backoff_next_ns.compare_exchange_weak(seen, until, std::memory_order_acq_rel)) {
    }
    e.backoff_delay_ns.store(nominal_delay_ns(b, n), std::memory_order_relaxed);
}

bool record_success(Entry& e) {
    if (e.consecutive_failures.load(std::memory_order_relaxed) == 0) return false;
    std::uint32_t was = e.consecutive_failures.exchange(0, std::memory_order_acq_rel);
    e.backoff_next_ns.store(0, std::memory_order_release);
    e.backoff_delay_ns.store(0, std::memory_order_relaxed);
    if (was == 0) return false;
    e.wake.fetch_add(1, std::memory_order_release);
    return true;
}

std::int64_t nominal_delay_ns(const Backoff& b, std::uint32_t failures) {
    if (failures == 0) return 0;
    std::int64_t d = b.min_ns;
    for (std::uint32_t i = 1; i < failures && d < b.max_ns; ++i)
        d = d > b.max_ns / 2 ? b.max_ns : d * 2;
    return std::min(d, b.max_ns);
}

}  // namespace tcpfix::policy::share
