// Fuzz target over a share's segment (policy/share.*): the bytes a process
// finds in /dev/shm/tcpfix-<uid>-<name>.v1, which another process of the
// same user (or a bug, or a disk error) may have written anything into.
//
// Input: one control byte, then the segment's bytes.
//   bit 0     recompute the header checksum before validating (so altered
//             geometry reaches the geometry checks, not just the checksum)
//   bit 1     make the header geometry valid for a small table (entries
//             16 << bits 2-3, process slots 1 + bits 4-6), so the mutated
//             tables behind it are what gets exercised; the buffer is then
//             exactly that size (input bytes copied in, zero-padded)
//   bit 7     set the uid to the expected one
// Checked on every input:
//   - validate() never reads outside the buffer (ASan) and never accepts a
//     header whose fields do not add up to the buffer's size;
//   - on a segment it accepts, everything a process does through the share
//     (look up and add destinations, claim a process slot, mark waits, take
//     rate slots and backoff turns, record failures and successes) and
//     everything `tcpfix top` does (snapshot, the Prometheus textfile) never
//     crashes, never loops, and never asks anyone to wait longer than the
//     documented bounds (a rate slot at most 4096 intervals ahead, a backoff
//     turn at most an hour), whatever the tables hold;
//   - the snapshot shows only in-range entries, counts waits only for slots
//     that exist, and every destination it shows has a known family.
// A violation prints what broke and aborts (a libFuzzer crash).
//
// Built like config_fuzz (tests/fuzz/CMakeLists.txt): a libFuzzer target,
// and with TCPFIX_FUZZ_STANDALONE a plain program that replays the corpus and
// runs N random mutations; `share_fuzz_standalone -make_seeds DIR` writes the
// seed corpus (tests/fuzz/corpus/share).
#include <sys/socket.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "policy/config.hpp"
#include "policy/prom.hpp"
#include "policy/share.hpp"

namespace {

using namespace tcpfix::policy;
using namespace tcpfix::policy::share;

constexpr std::uint32_t kUid = 1000;
constexpr std::int64_t kNow = 5'000LL * 1'000'000'000;  // a CLOCK_MONOTONIC reading
constexpr std::size_t kMaxSegment = 1 << 20;

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "share_fuzz: %s\n", what);
    std::abort();
}

#define require(cond, what)      \
    do {                         \
        if (!(cond)) fail(what); \
    } while (0)

struct Aligned {
    explicit Aligned(std::size_t n)
        : size(n),
          mem(static_cast<unsigned char*>(std::aligned_alloc(64, (n + 63) / 64 * 64 + 64))) {
        std::memset(mem, 0, (n + 63) / 64 * 64 + 64);
    }
    ~Aligned() { std::free(mem); }
    Aligned(const Aligned&) = delete;
    Aligned& operator=(const Aligned&) = delete;
    std::size_t size;
    unsigned char* mem;
};

Endpoint endpoint(std::uint8_t a, std::uint16_t port, bool v6) {
    Endpoint e;
    e.addr.family = v6 ? AF_INET6 : AF_INET;
    if (v6) {
        e.addr.bytes[0] = 0x20;
        e.addr.bytes[1] = 0x01;
        e.addr.bytes[15] = a;
    } else {
        e.addr.bytes = {127, 0, 0, a};
    }
    e.port = port;
    return e;
}

void exercise(void* base, std::size_t size, std::string_view tail) {
    Segment seg(base);
    require(seg.entry_count() >= kMinEntries && seg.entry_count() <= kMaxEntries,
            "entry count out of bounds");
    require(segment_size(seg.entry_count(), seg.proc_count()) == size,
            "accepted geometry is not the buffer's size");
    const Backoff backoff{10'000'000, 1'000'000'000};
    std::uint64_t seed = 0x9e3779b97f4a7c15ULL;
    for (unsigned char c : tail.substr(0, 64)) seed = (seed ^ c) * 0x100000001b3ULL;
    auto rnd = [&] {
        seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
        return seed;
    };

    // A process's work through the share.
    Proc* p =
        seg.claim_proc(proc_identity(4242, 77), [&](std::uint64_t) { return (rnd() & 1) != 0; });
    for (int i = 0; i < 24; ++i) {
        Endpoint ep = endpoint(static_cast<std::uint8_t>(rnd() % 8),
                               static_cast<std::uint16_t>(6379 + rnd() % 4), (rnd() & 3) == 0);
        Entry* e = (rnd() & 1) ? seg.find_or_add(ep, 4242) : seg.find(ep);
        if (e == nullptr) continue;
        require(seg.index_of(*e) < seg.entry_count(), "entry outside the table");
        const std::int64_t now = kNow + static_cast<std::int64_t>(rnd() % 1'000'000'000);
        std::int64_t w = reserve_rate_slot(*e, 50.0, now);
        require(w >= 0 && w <= 20'000'000LL * kMaxQueuedSlots, "rate wait out of bounds");
        std::int64_t b =
            claim_backoff_turn(*e, backoff, now, static_cast<double>(rnd() % 1000) / 1000.0);
        require(b >= 0 && b <= kMaxAheadNs, "backoff wait out of bounds");
        if (rnd() & 1) record_failure(*e, backoff, now, 0.5);
        if ((rnd() & 3) == 0) record_success(*e);
        e->connects.fetch_add(1, std::memory_order_relaxed);
        if (p != nullptr) {
            int r = mark_waiting(*p, seg.index_of(*e));
            require(r >= -1 && r < kWaitRecords, "wait record out of range");
            if (rnd() & 1) unmark_waiting(*p, r);
        }
    }
    if (p != nullptr && (rnd() & 1)) seg.release_proc(*p, proc_identity(4242, 77));

    // What `tcpfix top` reads.
    auto snap = snapshot(seg, [&](std::uint64_t owner) { return (owner & 1) != 0; });
    require(snap.capacity == seg.entry_count(), "snapshot capacity");
    require(snap.entries.size() + snap.filling + snap.unreadable <= seg.entry_count(),
            "more entries than the table");
    std::uint64_t waits = 0;
    for (const auto& v : snap.entries) {
        require(v.index < seg.entry_count(), "snapshot entry index");
        require(v.dest.addr.family == AF_INET || v.dest.addr.family == AF_INET6,
                "snapshot entry of unknown family");
        waits += v.waiting;
    }
    require(waits <= std::uint64_t{seg.proc_count()} * kWaitRecords, "more waits than records");
    std::string prom = render_shares_prom(std::span<const Snapshot>(&snap, 1));
    require(prom.find("# TYPE tcpfix_share_connects_total counter") != std::string::npos,
            "textfile incomplete");
}

void run_one(const std::uint8_t* data, std::size_t n) {
    if (n == 0) return;
    const std::uint8_t control = data[0];
    ++data;
    --n;
    std::string_view text(reinterpret_cast<const char*>(data), std::min<std::size_t>(n, 512));
    (void)parse_file_name(text);
    (void)parse_stat_start_ticks(text);
    (void)valid_name(text);

    std::size_t size = std::min(n, kMaxSegment);
    std::uint32_t entries = 0, procs = 0;
    if (control & 2) {
        entries = 16u << ((control >> 2) & 3);
        procs = 1u + ((control >> 4) & 7);
        size = segment_size(entries, procs);
    }
    Aligned buf(size);
    std::memcpy(buf.mem, data, std::min(n, size));
    if (size >= kHeaderSize) {
        auto* h = reinterpret_cast<Header*>(buf.mem);
        if (control & 2) {
            h->magic = kMagic;
            h->version = kLayoutVersion;
            h->header_size = kHeaderSize;
            h->entry_count = entries;
            h->entry_size = sizeof(Entry);
            h->entries_offset = kHeaderSize;
            h->proc_count = procs;
            h->proc_size = sizeof(Proc);
            h->procs_offset = kHeaderSize + std::uint64_t{entries} * sizeof(Entry);
            h->total_size = size;
        }
        if (control & 0x80) h->uid = kUid;
        if (control & 3) h->checksum = header_checksum(*h);
    }
    Problem p = validate(buf.mem, size, kUid);
    require(!describe(p).empty(), "a problem without a description");
    if (p == Problem::None) {
        const auto* h = reinterpret_cast<const Header*>(buf.mem);
        require(h->total_size == size && h->magic == kMagic && h->version == kLayoutVersion,
                "accepted a bad header");
        exercise(buf.mem, size, text);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    run_one(data, size);
    return 0;
}

#ifdef TCPFIX_FUZZ_STANDALONE
// share_fuzz_standalone [-runs=N] [-seed=S] DIR_OR_FILE...   replay, then mutate
// share_fuzz_standalone -make_seeds DIR                      write the seed corpus
#include <dirent.h>
#include <sys/stat.h>

#include <fstream>
#include <random>
#include <sstream>

namespace {

std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void collect(const std::string& path, std::vector<std::string>& out) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) return;
    if (S_ISREG(st.st_mode)) {
        out.push_back(slurp(path));
        return;
    }
    DIR* d = opendir(path.c_str());
    if (d == nullptr) return;
    std::vector<std::string> names;
    while (dirent* e = readdir(d))
        if (e->d_name[0] != '.') names.push_back(e->d_name);
    closedir(d);
    std::sort(names.begin(), names.end());
    for (const auto& name : names) collect(path + "/" + name, out);
}

// A valid segment with some life in it, behind a control byte.
std::string seed(std::uint32_t entries, std::uint32_t procs, std::uint8_t control, int destinations,
                 bool failing) {
    Aligned buf(segment_size(entries, procs));
    initialise(buf.mem, entries, procs, "fuzz", kUid, 1'700'000'000);
    Segment seg(buf.mem);
    Proc* p = seg.claim_proc(proc_identity(100, 1), [](std::uint64_t) { return false; });
    for (int i = 0; i < destinations; ++i) {
        Entry* e = seg.find_or_add(endpoint(static_cast<std::uint8_t>(1 + i % 8),
                                            static_cast<std::uint16_t>(6379 + i / 8), i % 3 == 0),
                                   100);
        if (e == nullptr) break;
        e->connects.store(10 + static_cast<std::uint64_t>(i));
        reserve_rate_slot(*e, 50, kNow);
        if (failing) record_failure(*e, Backoff{10'000'000, 1'000'000'000}, kNow, 0.5);
        if (p != nullptr && i < kWaitRecords) mark_waiting(*p, seg.index_of(*e));
    }
    std::string out(1, static_cast<char>(control));
    out.append(reinterpret_cast<const char*>(buf.mem), buf.size);
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 3 && std::string(argv[1]) == "-make_seeds") {
        const std::string dir = argv[2];
        struct Seed {
            const char* name;
            std::string bytes;
        } seeds[] = {
            {"valid-16x1-empty", seed(16, 1, 0x80, 0, false)},
            {"valid-16x2-busy", seed(16, 2, 0x80, 12, true)},
            {"valid-32x4-full", seed(32, 4, 0x80, 40, false)},
            {"valid-64x8-failing", seed(64, 8, 0x80, 20, true)},
            {"geometry-fixed-16x1", seed(16, 1, 0x83, 5, true)},
            {"checksum-fixed-32x3", seed(32, 3, 0x81, 9, false)},
        };
        for (const auto& s : seeds) {
            std::ofstream f(dir + "/" + s.name, std::ios::binary);
            f.write(s.bytes.data(), static_cast<std::streamsize>(s.bytes.size()));
            if (!f) {
                std::fprintf(stderr, "share_fuzz: cannot write %s/%s\n", dir.c_str(), s.name);
                return 1;
            }
        }
        return 0;
    }
    long runs = 2000;
    unsigned long seed_value = 1;
    std::vector<std::string> corpus;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a.rfind("-runs=", 0) == 0)
            runs = std::stol(a.substr(6));
        else if (a.rfind("-seed=", 0) == 0)
            seed_value = std::stoul(a.substr(6));
        else if (a[0] == '-')
            std::fprintf(stderr, "share_fuzz: ignoring %s\n", a.c_str());
        else
            collect(a, corpus);
    }
    if (corpus.empty()) corpus.push_back(seed(16, 1, 0x80, 3, true));
    for (const auto& c : corpus) run_one(reinterpret_cast<const std::uint8_t*>(c.data()), c.size());
    std::fprintf(stderr, "share_fuzz: replayed %zu corpus inputs\n", corpus.size());
    std::mt19937_64 rng(seed_value);
    for (long r = 0; r < runs; ++r) {
        std::string s = corpus[rng() % corpus.size()];
        int steps = 1 + static_cast<int>(rng() % 16);
        for (int k = 0; k < steps && !s.empty(); ++k) {
            std::size_t at = rng() % s.size();
            switch (rng() % 5) {
                case 0:
                    s[at] = static_cast<char>(s[at] ^ (1u << (rng() % 8)));
                    break;  // a bit
                case 1:
                    s[at] = static_cast<char>(rng());
                    break;  // a byte
                case 2:
                    std::memset(&s[at], 0xff, std::min<std::size_t>(8, s.size() - at));
                    break;
                case 3:
                    s.resize(at);
                    break;  // truncated
                case 4:
                    s[0] = static_cast<char>(rng());
                    break;  // the control byte
            }
        }
        run_one(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
    }
    std::fprintf(stderr, "share_fuzz: %ld mutations (seed %lu): no failure\n", runs, seed_value);
    return 0;
}
#endif
