// A share's layout (policy/share.hpp) on a buffer standing in for the
// /dev/shm segment: names and files, validation of every header field, the
// destination table (lookups, a full table, entries a killed process left
// half-written, garbage, races) and the process slots (dead owners
// reclaimed, waits counted for the living only). The schedules are in
// share_pacing_test.cpp.
#include "policy/share.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "share_buffer.hpp"
#include "test_util.hpp"

namespace tcpfix::policy::share {
namespace {

using namespace test;
using tcpfix::test::race;

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

}  // namespace
}  // namespace tcpfix::policy::share
