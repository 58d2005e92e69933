// A share's layout and logic (policy/share.hpp) on a buffer standing in for
// the /dev/shm segment: validation of every header field, the destination
// table (lookups, a full table, entries a killed process left half-written,
// garbage), process slots (dead owners reclaimed), the common rate schedule
// and the common backoff (one schedule for a pool, a success ends it for all),
// repairs of corrupt timestamps, the snapshot `tcpfix top` reads, and the
// Prometheus textfile.
#include "policy/share.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "policy/prom.hpp"
#include "policy/storm.hpp"
#include "test_util.hpp"

namespace tcpfix::policy::share {
namespace {

using test::race;

constexpr std::int64_t kMs = 1'000'000;
constexpr std::int64_t kS = 1'000'000'000;
constexpr std::int64_t kT0 = 1'000 * kS;  // a CLOCK_MONOTONIC reading far from 0
constexpr std::uint32_t kUid = 1000;

// A zeroed, 64-byte aligned buffer holding a fresh segment, as a new file is.
class Buffer {
  public:
    Buffer(std::uint32_t entries, std::uint32_t procs, std::string_view name = "pool")
        : size_(segment_size(entries, procs)),
          mem_(static_cast<unsigned char*>(std::aligned_alloc(64, round(size_)))) {
        std::memset(mem_.get(), 0, round(size_));
        initialise(mem_.get(), entries, procs, name, kUid, 1'700'000'000);
    }
    void* base() { return mem_.get(); }
    std::size_t size() const { return size_; }
    Header& header() { return *static_cast<Header*>(base()); }
    Segment segment() {
        EXPECT_EQ(validate(base(), size(), kUid), Problem::None);
        return Segment(base());
    }
    void reseal() { header().checksum = header_checksum(header()); }

  private:
    static std::size_t round(std::size_t n) { return (n + 63) / 64 * 64; }
    struct Free {
        void operator()(unsigned char* p) const { std::free(p); }
    };
    std::size_t size_;
    std::unique_ptr<unsigned char, Free> mem_;
};

Endpoint ep(const char* ip, std::uint16_t port) {
    Endpoint e;
    e.addr = *parse_ip(ip);
    e.port = port;
    return e;
}

constexpr Backoff k10msTo1s{10 * kMs, 1 * kS};

// ---------------------------------------------------------------------------
// names and files

TEST(ShareName, AcceptsWhatTheVariableAccepts) {
    EXPECT_TRUE(valid_name("php-pool"));
    EXPECT_TRUE(valid_name("A.b_c-9"));
    EXPECT_TRUE(valid_name(std::string(64, 'x')));
    EXPECT_FALSE(valid_name(""));
    EXPECT_FALSE(valid_name(std::string(65, 'x')));
    EXPECT_FALSE(valid_name("a/b"));
    EXPECT_FALSE(valid_name("a b"));
    EXPECT_FALSE(valid_name("caf\xc3\xa9"));
}

TEST(ShareFile, NameCarriesUidNameAndLayoutVersion) {
    EXPECT_EQ(file_name(33, "php-pool"), "tcpfix-33-php-pool.v1");
    char buf[64];
    EXPECT_EQ(format_file_name(buf, sizeof buf, 0, "a.b"), std::strlen("tcpfix-0-a.b.v1"));
    EXPECT_STREQ(buf, "tcpfix-0-a.b.v1");
    EXPECT_EQ(format_file_name(buf, 8, 0, "long-name"), 7u);  // cut short, still terminated
    EXPECT_STREQ(buf, "tcpfix-");

    auto f = parse_file_name("tcpfix-33-php.pool.v1");
    ASSERT_TRUE(f);
    EXPECT_EQ(f->uid, 33u);
    EXPECT_EQ(f->name, "php.pool");
    EXPECT_EQ(f->version, 1u);
    auto v7 = parse_file_name("tcpfix-0-x.v7");
    ASSERT_TRUE(v7);
    EXPECT_EQ(v7->version, 7u);
    for (const char* bad :
         {"tcpfix-33-php", "tcpfix--x.v1", "tcpfix-a-x.v1", "tcpfix-1-.v1", "tcpfix-1-a b.v1",
          "other-1-x.v1", ".tcpfix-1-x.v1.4242.0", "tcpfix-1-x.v", "tcpfix-1-x.v1x"})
        EXPECT_FALSE(parse_file_name(bad)) << bad;
}

TEST(ShareProcStat, StartTimeIsField22EvenWithParenthesesInTheName) {
    std::string line =
        "4242 (php-fpm: pool (www)) S 1 4242 4242 0 -1 4194624 500 0 0 0 1 2 0 0 20 0 1 0 987654 "
        "12345 67 "
        "18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 1 0 0 0 0 0\n";
    EXPECT_EQ(parse_stat_start_ticks(line), 987654u);
    EXPECT_FALSE(parse_stat_start_ticks("4242 (x) S 1 2 3"));
    EXPECT_FALSE(parse_stat_start_ticks("no parenthesis"));
    EXPECT_FALSE(parse_stat_start_ticks("1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 abc 1"));
}

TEST(ShareIdentity, HoldsPidAndLowStartBits) {
    auto id = proc_identity(4242, 0x1'2345'6789ULL);
    EXPECT_EQ(identity_pid(id), 4242u);
    EXPECT_EQ(identity_start(id), 0x2345'6789u);
}

// ---------------------------------------------------------------------------
// validation: every field of the header

TEST(ShareValidate, AFreshSegmentIsValid) {
    Buffer b(kDefaultEntries, kDefaultProcs);
    EXPECT_EQ(validate(b.base(), b.size(), kUid), Problem::None);
    EXPECT_EQ(validate(b.base(), b.size(), kUid, "pool"), Problem::None);
    EXPECT_EQ(b.size(), segment_size(1024, 1024));
}

TEST(ShareValidate, EachDefectIsNamed) {
    struct Case {
        const char* why;
        void (*spoil)(Buffer&, std::size_t&);
        Problem expected;
    };
    const Case cases[] = {
        {"truncated below the header", [](Buffer&, std::size_t& n) { n = kHeaderSize - 1; },
         Problem::TooSmall},
        {"truncated within the tables", [](Buffer&, std::size_t& n) { n -= 64; }, Problem::Size},
        {"longer than declared", [](Buffer&, std::size_t& n) { n += 4096; }, Problem::Size},
        {"bad magic", [](Buffer& b, std::size_t&) { b.header().magic ^= 1; }, Problem::Magic},
        {"zeroed", [](Buffer& b, std::size_t&) { std::memset(b.base(), 0, kHeaderSize); },
         Problem::Magic},
        {"next layout version",
         [](Buffer& b, std::size_t&) { b.header().version = kLayoutVersion + 1; },
         Problem::Version},
        {"entry count not a power of two",
         [](Buffer& b, std::size_t&) {
             b.header().entry_count = 1000;
             b.reseal();
         },
         Problem::Geometry},
        {"entry count too small",
         [](Buffer& b, std::size_t&) {
             b.header().entry_count = 8;
             b.reseal();
         },
         Problem::Geometry},
        {"no process slots",
         [](Buffer& b, std::size_t&) {
             b.header().proc_count = 0;
             b.reseal();
         },
         Problem::Geometry},
        {"entry size of another layout",
         [](Buffer& b, std::size_t&) {
             b.header().entry_size = 64;
             b.reseal();
         },
         Problem::Geometry},
        {"procs offset inside the entries",
         [](Buffer& b, std::size_t&) {
             b.header().procs_offset -= 128;
             b.reseal();
         },
         Problem::Geometry},
        {"total size that does not add up",
         [](Buffer& b, std::size_t&) {
             b.header().total_size += 64;
             b.reseal();
         },
         Problem::Geometry},
        {"header altered without its checksum",
         [](Buffer& b, std::size_t&) { b.header().created_unix_s += 1; }, Problem::Checksum},
        {"name altered without its checksum",
         [](Buffer& b, std::size_t&) { b.header().name[0] = 'P'; }, Problem::Checksum},
        {"name without its terminator",
         [](Buffer& b, std::size_t&) {
             std::memset(b.header().name, 'a', sizeof b.header().name);
             b.reseal();
         },
         Problem::Name},
        {"name with a slash",
         [](Buffer& b, std::size_t&) {
             b.header().name[1] = '/';
             b.reseal();
         },
         Problem::Name},
        {"another user's",
         [](Buffer& b, std::size_t&) {
             b.header().uid = 0;
             b.reseal();
         },
         Problem::Owner},
    };
    for (const auto& c : cases) {
        Buffer b(64, 16);
        std::size_t n = b.size();
        c.spoil(b, n);
        EXPECT_EQ(validate(b.base(), n, kUid), c.expected) << c.why;
        EXPECT_FALSE(describe(c.expected).empty());
    }
    Buffer b(64, 16);
    EXPECT_EQ(validate(b.base(), b.size(), kUid, "other"), Problem::Name);
    EXPECT_EQ(validate(nullptr, b.size(), kUid), Problem::TooSmall);
}

// ---------------------------------------------------------------------------
// the destination table

TEST(ShareTable, OneEntryPerDestination) {
    Buffer b(1024, 16);
    Segment seg = b.segment();
    Entry* a = seg.find_or_add(ep("127.0.0.1", 6379), 1);
    Entry* a6 = seg.find_or_add(ep("::1", 6379), 1);
    Entry* c = seg.find_or_add(ep("127.0.0.1", 3306), 1);
    ASSERT_TRUE(a && a6 && c);
    EXPECT_NE(a, a6);
    EXPECT_NE(a, c);
    EXPECT_EQ(seg.find_or_add(ep("127.0.0.1", 6379), 2), a);
    EXPECT_EQ(seg.find_or_add(ep("::ffff:127.0.0.1", 6379), 2), a);  // mapped IPv4 is IPv4
    EXPECT_EQ(seg.find(ep("::1", 6379)), a6);
    EXPECT_EQ(seg.find(ep("10.0.0.1", 6379)), nullptr);
    EXPECT_EQ(b.header().table_full.load(), 0u);
}

TEST(ShareTable, KeysRoundTrip) {
    for (auto e : {ep("127.0.0.1", 1), ep("255.255.255.255", 65535), ep("::1", 6379),
                   ep("2001:db8::ff", 80)}) {
        auto back = endpoint_of(make_key(e));
        ASSERT_TRUE(back);
        EXPECT_EQ(*back, e);
    }
    EXPECT_FALSE(endpoint_of(Key{{0, 0, 0}}));                 // family 0
    EXPECT_FALSE(endpoint_of(Key{{0, 0, 7 | (1ULL << 16)}}));  // unknown family
    EXPECT_FALSE(endpoint_of(Key{{0, 1, AF_INET}}));           // IPv4 with bytes beyond the fourth
}

TEST(ShareTable, AThousandPortsOfOneAddressFitTheDefaultTable) {
    // The hash spreads destinations that differ in the port only.
    Buffer b(kDefaultEntries, 16);
    Segment seg = b.segment();
    std::set<Entry*> seen;
    for (int port = 1; port <= 900; ++port) {
        Entry* e = seg.find_or_add(ep("10.1.2.3", static_cast<std::uint16_t>(port)), 1);
        ASSERT_NE(e, nullptr) << "table full at port " << port;
        seen.insert(e);
    }
    EXPECT_EQ(seen.size(), 900u);
    for (int port = 1; port <= 900; ++port)
        EXPECT_NE(seg.find(ep("10.1.2.3", static_cast<std::uint16_t>(port))), nullptr);
}

TEST(ShareTable, AFullTableTurnsNewDestinationsAwayAndKeepsTheOld) {
    Buffer b(16, 4);
    Segment seg = b.segment();
    std::vector<Entry*> held;
    for (int port = 1; port <= 16; ++port)
        held.push_back(seg.find_or_add(ep("10.0.0.1", static_cast<std::uint16_t>(port)), 1));
    for (auto* e : held) ASSERT_NE(e, nullptr);
    EXPECT_EQ(seg.find_or_add(ep("10.0.0.2", 1), 1), nullptr);
    EXPECT_EQ(seg.find_or_add(ep("10.0.0.2", 2), 1), nullptr);
    EXPECT_EQ(b.header().table_full.load(), 2u);
    for (int port = 1; port <= 16; ++port)
        EXPECT_EQ(seg.find_or_add(ep("10.0.0.1", static_cast<std::uint16_t>(port)), 1),
                  held[port - 1]);
}

TEST(ShareTable, AnEntryAKilledProcessLeftHalfWrittenIsSkipped) {
    Buffer b(16, 4);
    Segment seg = b.segment();
    // Find where 127.0.0.1:6379 would go, then pretend a process died there
    // between claiming the entry and publishing its key.
    Entry* home = seg.find_or_add(ep("127.0.0.1", 6379), 1);
    ASSERT_NE(home, nullptr);
    Buffer fresh(16, 4);
    Segment s2 = fresh.segment();
    Entry& victim = s2.entry(seg.index_of(*home));
    victim.state.store(kEntryFillingTag | (4242ULL << 8));
    Entry* e = s2.find_or_add(ep("127.0.0.1", 6379), 1);
    ASSERT_NE(e, nullptr);
    EXPECT_NE(e, &victim);
    EXPECT_EQ(s2.find_or_add(ep("127.0.0.1", 6379), 2), e);  // and found there from now on
    EXPECT_EQ(s2.find(ep("127.0.0.1", 6379)), e);
    auto snap = snapshot(s2, [](std::uint64_t) { return true; });
    EXPECT_EQ(snap.filling, 1u);
    ASSERT_EQ(snap.entries.size(), 1u);
    EXPECT_EQ(snap.entries[0].dest, ep("127.0.0.1", 6379));
}

TEST(ShareTable, GarbageStatesAndKeysNeverMatchNorCrash) {
    Buffer b(16, 4);
    Segment seg = b.segment();
    std::uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (std::uint32_t i = 0; i < seg.entry_count(); ++i) {
        Entry& e = seg.entry(i);
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        e.state.store(x | 4);  // neither free, filling nor ready
        for (auto& k : e.key) k.store(x * 3);
    }
    EXPECT_EQ(seg.find_or_add(ep("127.0.0.1", 6379), 1), nullptr);  // full: a per-process fallback
    auto snap = snapshot(seg, [](std::uint64_t) { return true; });
    EXPECT_TRUE(snap.entries.empty());
    EXPECT_EQ(snap.unreadable, 16u);
    // Ready entries with keys of no known family are shown as unreadable.
    Buffer b2(16, 4);
    Segment s2 = b2.segment();
    s2.entry(3).state.store(kEntryReady);
    s2.entry(3).key[2].store(99);
    EXPECT_EQ(snapshot(s2, [](std::uint64_t) { return true; }).unreadable, 1u);
}

TEST(ShareTable, RacingProcessesAddingOneDestinationShareItsCounts) {
    Buffer b(1024, 16);
    Segment seg = b.segment();
    race(8, [&](int t) {
        for (int i = 0; i < 1000; ++i) {
            Entry* e = seg.find_or_add(ep("127.0.0.1", static_cast<std::uint16_t>(7000 + i % 10)),
                                       static_cast<std::uint32_t>(t + 1));
            ASSERT_NE(e, nullptr);
            e->connects.fetch_add(1);
        }
    });
    auto snap = snapshot(seg, [](std::uint64_t) { return true; });
    ASSERT_EQ(snap.entries.size(), 10u);  // a duplicate from a race is summed into one row
    for (const auto& v : snap.entries) EXPECT_EQ(v.connects, 800u) << fmt::format("{}", v.dest);
}

// ---------------------------------------------------------------------------
// process slots

TEST(ShareProcs, ClaimReleaseAndReclaimFromTheDead) {
    Buffer b(16, 2);
    Segment seg = b.segment();
    auto never_dead = [](std::uint64_t) { return false; };
    Proc* p1 = seg.claim_proc(proc_identity(100, 5), never_dead);
    Proc* p2 = seg.claim_proc(proc_identity(101, 6), never_dead);
    ASSERT_TRUE(p1 && p2);
    EXPECT_NE(p1, p2);
    EXPECT_EQ(seg.claim_proc(proc_identity(100, 5), never_dead),
              p1);  // the same process after exec
    EXPECT_EQ(seg.claim_proc(proc_identity(102, 7), never_dead), nullptr);  // all live
    EXPECT_EQ(mark_waiting(*p1, 3), 0);
    Proc* p3 = seg.claim_proc(proc_identity(102, 7),
                              [](std::uint64_t o) { return identity_pid(o) == 100; });
    EXPECT_EQ(p3, p1);  // the dead one's slot, its waits forgotten
    EXPECT_EQ(p3->waiting[0].load(), 0u);
    seg.release_proc(*p2, proc_identity(101, 6));
    EXPECT_EQ(p2->owner.load(), 0u);
    seg.release_proc(*p3, proc_identity(100, 5));  // not its owner any more: nothing happens
    EXPECT_EQ(p3->owner.load(), proc_identity(102, 7));
    EXPECT_EQ(b.header().attaches.load(), 3u);
}

TEST(ShareProcs, WaitingCountsOnlyLiveProcesses) {
    Buffer b(16, 4);
    Segment seg = b.segment();
    Entry* e = seg.find_or_add(ep("127.0.0.1", 6379), 1);
    const std::uint32_t at = seg.index_of(*e);
    Proc* live = seg.claim_proc(proc_identity(1, 1), [](std::uint64_t) { return false; });
    Proc* dead = seg.claim_proc(proc_identity(2, 2), [](std::uint64_t) { return false; });
    int r1 = mark_waiting(*live, at);
    int r2 = mark_waiting(*live, at);
    mark_waiting(*dead, at);
    EXPECT_EQ(r1, 0);
    EXPECT_EQ(r2, 1);
    dead->waiting[5].store(0xffffffffu);  // garbage index: ignored
    auto is_live = [](std::uint64_t o) { return identity_pid(o) == 1; };
    auto snap = snapshot(seg, is_live);
    ASSERT_EQ(snap.entries.size(), 1u);
    EXPECT_EQ(snap.entries[0].waiting, 2u);
    EXPECT_EQ(snap.processes.size(), 1u);
    unmark_waiting(*live, r1);
    unmark_waiting(*live, -1);  // a thread that got no record
    EXPECT_EQ(snapshot(seg, is_live).entries[0].waiting, 1u);
    for (int i = 0; i < kWaitRecords; ++i) mark_waiting(*live, at);
    EXPECT_EQ(mark_waiting(*live, at), -1);
}

// ---------------------------------------------------------------------------
// the common rate schedule

TEST(ShareRate, OneScheduleForEveryProcess) {
    Buffer b(16, 4);
    Segment seg = b.segment();
    Entry& e = *seg.find_or_add(ep("127.0.0.1", 6379), 1);
    // Three "processes" (the same entry, each with its own clock reading) at 50/s.
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0), 0);
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0 + 1 * kMs), 19 * kMs);
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0 + 2 * kMs), 38 * kMs);
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0 + 200 * kMs),
              0);  // idle long enough: no burst credit either
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0 + 200 * kMs), 20 * kMs);
}

TEST(ShareRate, RacingReservationsGetDistinctEvenlySpacedSlots) {
    Buffer b(16, 4);
    Segment seg = b.segment();
    Entry& e = *seg.find_or_add(ep("127.0.0.1", 6379), 1);
    std::vector<std::int64_t> waits[8];
    race(8, [&](int t) {
        for (int i = 0; i < 500; ++i) waits[t].push_back(reserve_rate_slot(e, 1000, kT0));
    });
    std::vector<std::int64_t> all;
    for (auto& w : waits) all.insert(all.end(), w.begin(), w.end());
    std::sort(all.begin(), all.end());
    for (std::size_t i = 0; i < all.size(); ++i)
        ASSERT_EQ(all[i], static_cast<std::int64_t>(i) * kMs);
}

TEST(ShareRate, ACorruptSlotFarAheadIsRepairedNotWaitedFor) {
    Buffer b(16, 4);
    Segment seg = b.segment();
    Entry& e = *seg.find_or_add(ep("127.0.0.1", 6379), 1);
    e.next_rate_slot_ns.store(std::numeric_limits<std::int64_t>::max());
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0), 0);
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0), 20 * kMs);
    e.next_rate_slot_ns.store(
        std::numeric_limits<std::int64_t>::min());  // far in the past: simply due
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0), 0);
    // A legitimately long queue is kept: 100 waiters ahead at 50/s is 2 s.
    e.next_rate_slot_ns.store(kT0 + 2 * kS);
    EXPECT_EQ(reserve_rate_slot(e, 50, kT0), 2 * kS);
    // A rate below one an hour is one an hour (no overflow).
    EXPECT_EQ(reserve_rate_slot(e, 1e-30, kT0 + 10 * kS), 0);
}

// ---------------------------------------------------------------------------
// the common backoff

TEST(ShareBackoff, HealthyDestinationsNeverWait) {
    Buffer b(16, 4);
    Entry& e = *b.segment().find_or_add(ep("127.0.0.1", 6379), 1);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(claim_backoff_turn(e, k10msTo1s, kT0 + i, 0.3), 0);
}

TEST(ShareBackoff, AFailureSeenByOneDelaysEveryOther) {
    Buffer b(16, 4);
    Entry& e = *b.segment().find_or_add(ep("127.0.0.1", 6379), 1);
    record_failure(e, k10msTo1s, kT0, 0.999999);  // delay(1) = 10 ms, jitter ~1
    EXPECT_EQ(e.failures.load(), 1u);
    EXPECT_EQ(e.backoff_delay_ns.load(), 10 * kMs);
    // Any process, any time before the turn: wait for it.
    std::int64_t w = claim_backoff_turn(e, k10msTo1s, kT0 + 2 * kMs, 0.5);
    EXPECT_GT(w, 7 * kMs);
    EXPECT_LE(w, 8 * kMs);
    // At the turn: the first asker goes, and the next turn is a delay away.
    EXPECT_EQ(claim_backoff_turn(e, k10msTo1s, kT0 + 10 * kMs, 0.999999), 0);
    std::int64_t w2 = claim_backoff_turn(e, k10msTo1s, kT0 + 10 * kMs, 0.999999);
    EXPECT_GT(w2, 9 * kMs);
    EXPECT_LE(w2, 10 * kMs);
}

TEST(ShareBackoff, AtATurnExactlyOneRacingProcessGoes) {
    Buffer b(16, 4);
    Entry& e = *b.segment().find_or_add(ep("127.0.0.1", 6379), 1);
    record_failure(e, k10msTo1s, kT0, 0.5);
    std::atomic<int> went{0};
    race(8, [&](int) {
        if (claim_backoff_turn(e, k10msTo1s, kT0 + 1 * kS, 0.5) == 0) went.fetch_add(1);
    });
    EXPECT_EQ(went.load(), 1);
}

TEST(ShareBackoff, ASuccessAnywhereEndsTheSpellForAll) {
    Buffer b(16, 4);
    Entry& e = *b.segment().find_or_add(ep("127.0.0.1", 6379), 1);
    for (int i = 0; i < 5; ++i) record_failure(e, k10msTo1s, kT0, 0.5);
    EXPECT_EQ(e.backoff_delay_ns.load(), 160 * kMs);
    std::uint32_t wake = e.wake.load();
    EXPECT_TRUE(record_success(e));
    EXPECT_EQ(e.wake.load(), wake + 1);  // waiters are told
    EXPECT_FALSE(record_success(e));     // nothing more to end: no second wake
    EXPECT_EQ(e.wake.load(), wake + 1);
    EXPECT_EQ(claim_backoff_turn(e, k10msTo1s, kT0 + 1, 0.5), 0);
    EXPECT_EQ(e.backoff_delay_ns.load(), 0);
}

// Simulated time, millisecond steps: `procs` processes each try to connect
// to a dead destination whenever they are not waiting; every attempt fails
// at once. Counts attempts over `window`.
int attempts_in(int procs, bool shared, std::int64_t window, std::uint64_t seed) {
    Buffer b(16, 4);
    Segment seg = b.segment();
    std::vector<Entry*> entries;
    std::vector<std::unique_ptr<Buffer>> own;
    for (int p = 0; p < procs; ++p) {
        if (shared) {
            entries.push_back(seg.find_or_add(ep("127.0.0.1", 6379), 1));
        } else {
            own.push_back(std::make_unique<Buffer>(16, 4));
            entries.push_back(own.back()->segment().find_or_add(ep("127.0.0.1", 6379), 1));
        }
    }
    std::vector<std::int64_t> wake_at(static_cast<std::size_t>(procs), kT0);
    std::uint64_t x = seed;
    auto rnd = [&] {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        return static_cast<double>(x >> 11) / 9007199254740992.0;
    };
    int attempts = 0;
    for (std::int64_t now = kT0; now < kT0 + window; now += kMs) {
        for (int p = 0; p < procs; ++p) {
            if (wake_at[p] > now) continue;
            std::int64_t w = claim_backoff_turn(*entries[p], k10msTo1s, now, rnd());
            if (w > 0) {
                wake_at[p] = now + w;
                continue;
            }
            ++attempts;
            record_failure(*entries[p], k10msTo1s, now, rnd());
        }
    }
    return attempts;
}

TEST(ShareBackoff, APoolMakesTheAttemptsOfOneScheduleNotOnePerProcess) {
    const std::int64_t window = 6 * kS;
    for (std::uint64_t seed : {1u, 2u, 3u}) {
        int one = attempts_in(1, true, window, seed);
        int pool_shared = attempts_in(16, true, window, seed);
        int pool_alone = attempts_in(16, false, window, seed);
        // One process: 10 ms doubling to 1 s with jitter in [0.5, 1): 10 to 17 attempts in 6 s.
        EXPECT_GE(one, 10);
        EXPECT_LE(one, 17);
        // The pool shares it: within one schedule (plus the first instant, when all 16 go).
        EXPECT_LE(pool_shared, 17 + 16) << "seed " << seed;
        EXPECT_GE(pool_alone, 16 * 10) << "seed " << seed;
    }
}

TEST(ShareBackoff, ACorruptNextTurnFarAheadIsRepairedNotWaitedFor) {
    Buffer b(16, 4);
    Entry& e = *b.segment().find_or_add(ep("127.0.0.1", 6379), 1);
    record_failure(e, k10msTo1s, kT0, 0.5);
    e.backoff_next_ns.store(std::numeric_limits<std::int64_t>::max());
    EXPECT_EQ(claim_backoff_turn(e, k10msTo1s, kT0, 0.5), 0);
    // An absurd failure count is still capped at MAX.
    e.consecutive_failures.store(std::numeric_limits<std::uint32_t>::max());
    std::int64_t w = claim_backoff_turn(e, k10msTo1s, kT0 + 1, 0.999999);
    EXPECT_GT(w, 0);
    EXPECT_LE(w, 1 * kS);
    record_failure(e, k10msTo1s, kT0 + 2, 0.5);  // saturates: never wraps to "healthy"
    EXPECT_EQ(e.consecutive_failures.load(), std::numeric_limits<std::uint32_t>::max());
    EXPECT_LE(claim_backoff_turn(e, k10msTo1s, kT0 + 3, 0.5), 1 * kS);
}

TEST(ShareBackoff, AProcessKilledInsideRecordFailureCostsAtMostOneExtraAttempt) {
    Buffer b(16, 4);
    Entry& e = *b.segment().find_or_add(ep("127.0.0.1", 6379), 1);
    record_failure(e, k10msTo1s, kT0, 0.5);
    ASSERT_EQ(claim_backoff_turn(e, k10msTo1s, kT0 + 1 * kS, 0.5),
              0);  // a process takes the turn ...
    // ... fails, and is killed after counting the failure but before moving the next turn.
    e.failures.fetch_add(1);
    e.consecutive_failures.fetch_add(1);
    // The others: the turn its claim set still holds; at it, one goes; then
    // the next failure doubles as usual.
    std::int64_t w = claim_backoff_turn(e, k10msTo1s, kT0 + 1 * kS + 1, 0.5);
    EXPECT_GT(w, 0);
    EXPECT_EQ(claim_backoff_turn(e, k10msTo1s, kT0 + 1 * kS + 1 + w, 0.5), 0);
    record_failure(e, k10msTo1s, kT0 + 1 * kS + 1 + w, 0.999999);
    EXPECT_EQ(e.backoff_delay_ns.load(), 40 * kMs);
}

TEST(ShareBackoff, NominalDelayDoublesToMax) {
    EXPECT_EQ(nominal_delay_ns(k10msTo1s, 0), 0);
    EXPECT_EQ(nominal_delay_ns(k10msTo1s, 1), 10 * kMs);
    EXPECT_EQ(nominal_delay_ns(k10msTo1s, 4), 80 * kMs);
    EXPECT_EQ(nominal_delay_ns(k10msTo1s, 8), 1 * kS);
    EXPECT_EQ(nominal_delay_ns(k10msTo1s, 4'000'000'000u), 1 * kS);
    EXPECT_EQ(nominal_delay_ns(Backoff{3 * kS, 3 * kS}, 9), 3 * kS);
}

// ---------------------------------------------------------------------------
// what tcpfix top and the textfile read

TEST(ShareSnapshot, ReadsEveryCounterAndTheHeader) {
    Buffer b(64, 8, "php-pool");
    Segment seg = b.segment();
    Entry& e = *seg.find_or_add(ep("127.0.0.1", 6379), 1);
    e.connects.store(10);
    e.leaks.store(2);
    e.reaped.store(1);
    e.throttled_us.store(1500);
    record_failure(e, k10msTo1s, kT0, 0.5);
    seg.find_or_add(ep("::1", 11211), 1)->connects.store(3);
    seg.claim_proc(proc_identity(7, 7), [](std::uint64_t) { return false; });
    auto s = snapshot(seg, [](std::uint64_t) { return true; });
    EXPECT_EQ(s.name, "php-pool");
    EXPECT_EQ(s.uid, kUid);
    EXPECT_EQ(s.created_unix_s, 1'700'000'000);
    EXPECT_EQ(s.capacity, 64u);
    EXPECT_EQ(s.processes, (std::vector<std::uint64_t>{proc_identity(7, 7)}));
    ASSERT_EQ(s.entries.size(), 2u);
    auto it = std::find_if(s.entries.begin(), s.entries.end(),
                           [](auto& v) { return v.dest.port == 6379; });
    ASSERT_NE(it, s.entries.end());
    EXPECT_EQ(it->connects, 10u);
    EXPECT_EQ(it->failures, 1u);
    EXPECT_EQ(it->leaks, 2u);
    EXPECT_EQ(it->reaped, 1u);
    EXPECT_EQ(it->throttled_us, 1500u);
    EXPECT_EQ(it->consecutive_failures, 1u);
    EXPECT_EQ(it->backoff_delay_ns, 10 * kMs);
    EXPECT_EQ(it->time_wait, -1);
}

TEST(ShareProm, TextfileNamesEachShareAndDestination) {
    Buffer b(64, 8, "php-pool");
    Segment seg = b.segment();
    for (int port = 1; port <= 25; ++port)
        seg.find_or_add(ep("10.0.0.1", static_cast<std::uint16_t>(port)), 1)
            ->connects.store(static_cast<std::uint64_t>(port));
    Entry& redis = *seg.find_or_add(ep("127.0.0.1", 6379), 1);
    redis.connects.store(1000);
    record_failure(redis, k10msTo1s, kT0, 0.5);
    auto s = snapshot(seg, [](std::uint64_t) { return true; });
    for (auto& v : s.entries) v.time_wait = v.dest.port == 6379 ? 7 : 0;
    std::string text = render_shares_prom(std::span<const Snapshot>(&s, 1));
    EXPECT_NE(text.find("tcpfix_share_info{share=\"php-pool\",uid=\"1000\"} 1\n"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("tcpfix_share_connects_total{share=\"php-pool\",destination=\"127.0.0.1:"
                        "6379\"} 1000\n"),
              std::string::npos);
    EXPECT_NE(text.find("tcpfix_share_backoff_delay_seconds{share=\"php-pool\",destination=\"127.0."
                        "0.1:6379\"} 0.01\n"),
              std::string::npos);
    EXPECT_NE(text.find("tcpfix_share_time_wait_sockets{share=\"php-pool\",destination=\"127.0.0.1:"
                        "6379\"} 7\n"),
              std::string::npos);
    // 26 destinations: the 20 busiest named, 6 summed: 1+2+...+6 connects.
    EXPECT_NE(
        text.find("tcpfix_share_connects_total{share=\"php-pool\",destination=\"other\"} 21\n"),
        std::string::npos)
        << text;
    EXPECT_EQ(text.find("destination=\"10.0.0.1:6\""), std::string::npos);
    // Every family's # TYPE exactly once.
    std::set<std::string> types;
    std::size_t at = 0;
    while ((at = text.find("# TYPE ", at)) != std::string::npos) {
        auto end = text.find(' ', at + 7);
        EXPECT_TRUE(types.insert(text.substr(at + 7, end - at - 7)).second);
        at = end;
    }
    EXPECT_EQ(types.size(), 14u);
    // No shares: families without samples, still valid.
    EXPECT_NE(render_shares_prom({}).find("# TYPE tcpfix_share_processes gauge"),
              std::string::npos);
}

}  // namespace
}  // namespace tcpfix::policy::share
