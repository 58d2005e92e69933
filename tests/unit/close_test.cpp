// The abortive-close decision (TCPFIX_CLOSE): every mode, every bookkeeping
// flag, every TCP state, the FIN in SIOCOUTQ, the segment count of TCP_INFO
// against the byte counts of the ioctls, and the bounded wait for ACKs.
#include "policy/close.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "test_util.hpp"

namespace tcpfix::policy {
namespace {

using test::row_name;

constexpr std::int64_t kMs = 1'000'000;

const char* name_of(CloseAction a) {
    switch (a) {
        case CloseAction::Passthrough:
            return "Passthrough";
        case CloseAction::Probe:
            return "Probe";
        case CloseAction::Rst:
            return "Rst";
        case CloseAction::WaitForAck:
            return "WaitForAck";
        case CloseAction::GracefulUnsent:
            return "GracefulUnsent";
        case CloseAction::GracefulShared:
            return "GracefulShared";
    }
    return "?";
}

// A connection this process made to a matched destination, sole descriptor.
SocketBookkeeping ours() {
    SocketBookkeeping b;
    b.connect_called = true;
    b.matched = true;
    return b;
}

SocketBookkeeping ours_with(bool SocketBookkeeping::*flag, bool value) {
    SocketBookkeeping b = ours();
    b.*flag = value;
    return b;
}

// As the ioctls answer: SIOCOUTQ (unacknowledged bytes, unsent ones and a FIN
// included) and SIOCOUTQNSD.
SocketProbe probe(TcpState state, std::uint32_t unacked = 0, std::uint32_t unsent = 0,
                  std::uint32_t srtt_us = 50, std::uint32_t mss = 0) {
    SocketProbe p;
    p.mss = mss;
    p.state = state;
    p.unacked = unacked;
    p.unacked_in = Unacked::Bytes;
    p.unsent_bytes = unsent;
    p.srtt_us = srtt_us;
    return p;
}

// As TCP_INFO answers on Linux 4.6+: tcpi_unacked (segments sent, not yet
// acknowledged) and tcpi_notsent_bytes.
SocketProbe segs(TcpState state, std::uint32_t unacked_segments = 0, std::uint32_t unsent = 0,
                 std::uint32_t srtt_us = 50, std::uint32_t mss = 0) {
    SocketProbe p = probe(state, unacked_segments, unsent, srtt_us, mss);
    p.unacked_in = Unacked::Segments;
    return p;
}

struct CloseCase {
    std::string why;
    CloseMode mode;
    SocketBookkeeping book;
    std::optional<SocketProbe> probe;
    std::int64_t waited_ns;
    CloseAction expected;
};

void PrintTo(const CloseCase& c, std::ostream* os) {
    *os << c.why << " (expect " << name_of(c.expected) << ")";
}

class DecideClose : public ::testing::TestWithParam<CloseCase> {};

TEST_P(DecideClose, Decides) {
    const CloseCase& c = GetParam();
    const SocketProbe* p = c.probe ? &*c.probe : nullptr;
    CloseDecision d = decide_close(c.mode, c.book, p, c.waited_ns);
    EXPECT_EQ(d.action, c.expected) << "got " << name_of(d.action) << " (" << d.reason << ")";
    ASSERT_NE(d.reason, nullptr);
    EXPECT_STRNE(d.reason, "") << "every decision says why (it is logged)";
}

CloseCase row(std::string why, CloseMode mode, SocketBookkeeping book, std::optional<SocketProbe> p,
              std::int64_t waited, CloseAction expected) {
    return {std::move(why), mode, book, p, waited, expected};
}

using A = CloseAction;
using M = CloseMode;
using S = TcpState;
using B = SocketBookkeeping;

// Budget for srtt 50 us: 2 * 50 us + 2 ms = 2.1 ms.
constexpr std::int64_t kBudget50 = 2'100'000;

INSTANTIATE_TEST_SUITE_P(
    Modes, DecideClose,
    ::testing::Values(
        row("keep never acts", M::Keep, ours(), probe(S::Established), 0, A::Passthrough),
        row("keep without probe", M::Keep, ours(), std::nullopt, 0, A::Passthrough),
        row("keep even with unsent data", M::Keep, ours(), probe(S::Established, 9, 9), 0,
            A::Passthrough),
        row("rst always without probe", M::RstAlways, ours(), std::nullopt, 0, A::Rst),
        row("rst always with unsent data", M::RstAlways, ours(), probe(S::Established, 9, 9), 0,
            A::Rst),
        row("rst always in close wait", M::RstAlways, ours(), probe(S::CloseWait), 0, A::Rst),
        row("rst without probe asks for one", M::Rst, ours(), std::nullopt, 0, A::Probe),
        row("rst established clean", M::Rst, ours(), probe(S::Established), 0, A::Rst)),
    [](const auto& info) { return row_name(info.index, info.param.why); });

INSTANTIATE_TEST_SUITE_P(
    Bookkeeping, DecideClose,
    ::testing::Values(row("rst not connected by us", M::Rst, ours_with(&B::connect_called, false),
                          probe(S::Established), 0, A::Passthrough),
                      row("rst always not connected by us", M::RstAlways,
                          ours_with(&B::connect_called, false), std::nullopt, 0, A::Passthrough),
                      row("rst not matched", M::Rst, ours_with(&B::matched, false),
                          probe(S::Established), 0, A::Passthrough),
                      row("rst always not matched", M::RstAlways, ours_with(&B::matched, false),
                          std::nullopt, 0, A::Passthrough),
                      row("rst default bookkeeping is not ours", M::Rst, SocketBookkeeping{},
                          probe(S::Established), 0, A::Passthrough),
                      row("rst not last reference", M::Rst, ours_with(&B::last_reference, false),
                          probe(S::Established), 0, A::Passthrough),
                      row("rst not last reference no probe", M::Rst,
                          ours_with(&B::last_reference, false), std::nullopt, 0, A::Passthrough),
                      row("rst always not last reference", M::RstAlways,
                          ours_with(&B::last_reference, false), std::nullopt, 0, A::Rst),
                      row("rst app set linger", M::Rst, ours_with(&B::app_set_linger, true),
                          probe(S::Established), 0, A::Passthrough),
                      row("rst always app set linger", M::RstAlways,
                          ours_with(&B::app_set_linger, true), std::nullopt, 0, A::Rst),
                      row("rst maybe shared after fork", M::Rst, ours_with(&B::maybe_shared, true),
                          std::nullopt, 0, A::GracefulShared),
                      row("rst maybe shared even if clean", M::Rst,
                          ours_with(&B::maybe_shared, true), probe(S::Established), 0,
                          A::GracefulShared),
                      row("rst always maybe shared", M::RstAlways,
                          ours_with(&B::maybe_shared, true), std::nullopt, 0, A::Rst),
                      row(
                          "rst shared and not last reference", M::Rst,
                          [] {
                              B b = ours_with(&B::maybe_shared, true);
                              b.last_reference = false;
                              return b;
                          }(),
                          std::nullopt, 0, A::Passthrough),
                      row(
                          "rst shared and app linger", M::Rst,
                          [] {
                              B b = ours_with(&B::maybe_shared, true);
                              b.app_set_linger = true;
                              return b;
                          }(),
                          std::nullopt, 0, A::Passthrough)),
    [](const auto& info) { return row_name(info.index, info.param.why); });

INSTANTIATE_TEST_SUITE_P(
    States, DecideClose,
    ::testing::Values(
        row("established clean", M::Rst, ours(), probe(S::Established), 0, A::Rst),
        row("established unsent", M::Rst, ours(), probe(S::Established, 10, 10), 0,
            A::GracefulUnsent),
        row("established unsent one byte", M::Rst, ours(), probe(S::Established, 1, 1), 0,
            A::GracefulUnsent),
        row("established unsent never waits", M::Rst, ours(), probe(S::Established, 10, 4), 0,
            A::GracefulUnsent),
        row("established unsent a full segment never waits", M::Rst, ours(),
            probe(S::Established, 3000, 1000, 50, 1000), 0, A::GracefulUnsent),
        row("established unsent nothing in flight never waits", M::Rst, ours(),
            probe(S::Established, 4, 4, 50, 1000), 0, A::GracefulUnsent),
        row("established nagle tail waits", M::Rst, ours(), probe(S::Established, 10, 4, 50, 1000), 0,
            A::WaitForAck),
        row("established nagle tail just inside budget", M::Rst, ours(),
            probe(S::Established, 10, 4, 50, 1000), kBudget50 - 1, A::WaitForAck),
        row("established nagle tail at budget", M::Rst, ours(), probe(S::Established, 10, 4, 50, 1000),
            kBudget50, A::GracefulUnsent),
        row("fin wait1 tail never waits", M::Rst, ours(), probe(S::FinWait1, 10, 5, 50, 1000), 0,
            A::GracefulUnsent),
        row("established unacked waits", M::Rst, ours(), probe(S::Established, 5), 0,
            A::WaitForAck),
        row("established unacked just inside budget", M::Rst, ours(), probe(S::Established, 5),
            kBudget50 - 1, A::WaitForAck),
        row("established unacked at budget", M::Rst, ours(), probe(S::Established, 5), kBudget50,
            A::GracefulUnsent),
        row("established unacked long after", M::Rst, ours(), probe(S::Established, 5), 1000 * kMs,
            A::GracefulUnsent),
        row("established acked after wait", M::Rst, ours(), probe(S::Established), 1 * kMs, A::Rst),
        row("established slow rtt waits longer", M::Rst, ours(), probe(S::Established, 5, 0, 9000),
            19 * kMs, A::WaitForAck),
        row("established slow rtt capped", M::Rst, ours(), probe(S::Established, 5, 0, 9000),
            20 * kMs, A::GracefulUnsent),

        row("fin wait1 only the fin", M::Rst, ours(), probe(S::FinWait1, 1), 0, A::Rst),
        row("fin wait1 zero no underflow", M::Rst, ours(), probe(S::FinWait1, 0), 0, A::Rst),
        row("fin wait1 data and fin unacked", M::Rst, ours(), probe(S::FinWait1, 2), 0,
            A::WaitForAck),
        row("fin wait1 data unacked after budget", M::Rst, ours(), probe(S::FinWait1, 2), kBudget50,
            A::GracefulUnsent),
        row("fin wait1 fin unsent", M::Rst, ours(), probe(S::FinWait1, 1, 1), 0, A::GracefulUnsent),
        row("fin wait1 data unsent", M::Rst, ours(), probe(S::FinWait1, 6, 6), 0,
            A::GracefulUnsent),
        row("fin wait2 clean", M::Rst, ours(), probe(S::FinWait2), 0, A::Rst),
        row("fin wait2 counts every byte", M::Rst, ours(), probe(S::FinWait2, 1), 0, A::WaitForAck),

        row("close wait", M::Rst, ours(), probe(S::CloseWait), 0, A::Passthrough),
        row("close wait segments", M::Rst, ours(), segs(S::CloseWait, 3, 4), 0, A::Passthrough),
        // TCP_INFO of a listener aliases tcpi_unacked to its accept backlog.
        row("listen backlog in tcpi_unacked", M::Rst, ours(), segs(S::Listen, 5), 0,
            A::Passthrough),
        row("close wait with unsent", M::Rst, ours(), probe(S::CloseWait, 4, 4), 0, A::Passthrough),
        row("last ack", M::Rst, ours(), probe(S::LastAck, 1), 0, A::Passthrough),
        row("closing", M::Rst, ours(), probe(S::Closing, 1), 0, A::Passthrough),
        row("time wait", M::Rst, ours(), probe(S::TimeWait), 0, A::Passthrough),
        row("close", M::Rst, ours(), probe(S::Close), 0, A::Passthrough),
        row("syn sent", M::Rst, ours(), probe(S::SynSent), 0, A::Passthrough),
        row("syn recv", M::Rst, ours(), probe(S::SynRecv), 0, A::Passthrough),
        row("listen", M::Rst, ours(), probe(S::Listen), 0, A::Passthrough),
        row("unknown", M::Rst, ours(), probe(S::Unknown), 0, A::Passthrough),
        row("out of range state", M::Rst, ours(), probe(static_cast<S>(42)), 0, A::Passthrough)),
    [](const auto& info) { return row_name(info.index, info.param.why); });

// The one-call probe: TCP_INFO's segment count and unsent bytes.
INSTANTIATE_TEST_SUITE_P(
    TcpInfoSegments, DecideClose,
    ::testing::Values(
        row("established clean", M::Rst, ours(), segs(S::Established), 0, A::Rst),
        row("established in flight waits", M::Rst, ours(), segs(S::Established, 1), 0,
            A::WaitForAck),
        row("established many in flight waits", M::Rst, ours(), segs(S::Established, 40), 0,
            A::WaitForAck),
        row("established in flight at budget", M::Rst, ours(), segs(S::Established, 1), kBudget50,
            A::GracefulUnsent),
        row("established acked after wait", M::Rst, ours(), segs(S::Established), 1 * kMs, A::Rst),
        row("established unsent", M::Rst, ours(), segs(S::Established, 0, 10), 0,
            A::GracefulUnsent),
        row("established unsent and in flight", M::Rst, ours(), segs(S::Established, 2, 10), 0,
            A::GracefulUnsent),
        row("established nagle tail waits", M::Rst, ours(), segs(S::Established, 1, 5, 50, 65483), 0,
            A::WaitForAck),
        row("established nagle tail at budget", M::Rst, ours(), segs(S::Established, 1, 5, 50, 65483),
            kBudget50, A::GracefulUnsent),
        row("established tail with nothing in flight", M::Rst, ours(), segs(S::Established, 0, 5, 50, 65483),
            0, A::GracefulUnsent),
        // A segment count cannot tell a lone FIN from data with it: as data.
        row("fin wait1 in flight counts as data", M::Rst, ours(), segs(S::FinWait1, 1), 0,
            A::WaitForAck),
        row("fin wait1 in flight after budget", M::Rst, ours(), segs(S::FinWait1, 1), kBudget50,
            A::GracefulUnsent),
        row("fin wait1 fin unsent", M::Rst, ours(), segs(S::FinWait1, 0, 1), 0, A::GracefulUnsent),
        row("fin wait1 data unsent", M::Rst, ours(), segs(S::FinWait1, 2, 6), 0, A::GracefulUnsent),
        row("fin wait2 clean", M::Rst, ours(), segs(S::FinWait2), 0, A::Rst),
        row("rst always ignores segments", M::RstAlways, ours(), segs(S::Established, 3, 9), 0,
            A::Rst)),
    [](const auto& info) { return row_name(info.index, info.param.why); });

// When the hook must ask SIOCOUTQ after TCP_INFO: half-closed, all sent,
// segments in flight. Nowhere else.
TEST(NeedsUnackedBytes, OnlyAHalfClosedSocketWithSegmentsInFlight) {
    EXPECT_TRUE(needs_unacked_bytes(segs(TcpState::FinWait1, 1)));
    EXPECT_TRUE(needs_unacked_bytes(segs(TcpState::FinWait1, 7)));
    EXPECT_FALSE(needs_unacked_bytes(segs(TcpState::FinWait1, 0, 1)))
        << "the FIN is unsent: graceful";
    EXPECT_FALSE(needs_unacked_bytes(segs(TcpState::FinWait1, 2, 5))) << "data unsent: graceful";
    EXPECT_FALSE(needs_unacked_bytes(probe(TcpState::FinWait1, 2))) << "bytes already";
    for (int st = 0; st <= 12; ++st) {
        auto state = static_cast<TcpState>(st);
        if (state == TcpState::FinWait1) continue;
        EXPECT_FALSE(needs_unacked_bytes(segs(state, 3))) << "state " << st;
        EXPECT_FALSE(needs_unacked_bytes(segs(state, 0))) << "state " << st;
    }
}

TEST(NeedsUnackedBytes, UnitsAreNamedForTheLog) {
    EXPECT_STREQ(unacked_unit(probe(TcpState::Established, 3)), "bytes");
    EXPECT_STREQ(unacked_unit(segs(TcpState::Established, 3)), "segments");
}

// The kernel's send sequence space at close time, as both probes see it.
struct SendSpace {
    TcpState state;
    std::uint32_t data_in_flight;  // data bytes sent, not yet acknowledged
    std::uint32_t data_unsent;     // data bytes queued, not yet sent
    bool fin_queued;               // the application half-closed (FIN_WAIT1)
    bool fin_sent;                 // ... and the FIN went out, not yet acknowledged
    bool fin_with_data;            // ... riding on the last data segment
};

// The three-call probe: SIOCOUTQ = write_seq - snd_una, SIOCOUTQNSD =
// write_seq - snd_nxt (tcp_ioctl); a FIN takes one sequence number.
SocketProbe by_ioctls(const SendSpace& k) {
    std::uint32_t fin_unsent = k.fin_queued && !k.fin_sent ? 1 : 0;
    std::uint32_t fin_out = k.fin_sent ? 1 : 0;
    return probe(k.state, k.data_in_flight + fin_out + k.data_unsent + fin_unsent,
                 k.data_unsent + fin_unsent);
}

// The one-call probe: tcpi_notsent_bytes = write_seq - snd_nxt, tcpi_unacked =
// packets_out (one segment per 1000 bytes here; a FIN sent alone is one more).
// Then what the hook does: SIOCOUTQ where needs_unacked_bytes() says so.
SocketProbe by_tcp_info(const SendSpace& k) {
    std::uint32_t fin_unsent = k.fin_queued && !k.fin_sent ? 1 : 0;
    std::uint32_t segments = (k.data_in_flight + 999) / 1000;
    if (k.fin_sent && (!k.fin_with_data || k.data_in_flight == 0)) ++segments;
    SocketProbe p = segs(k.state, segments, k.data_unsent + fin_unsent);
    if (needs_unacked_bytes(p)) p = probe(k.state, by_ioctls(k).unacked, p.unsent_bytes);
    return p;
}

// However the bytes lie, the one-call probe decides exactly as the three calls
// did, before the wait budget and after it, on the spot and in the background.
TEST(OneCallProbe, DecidesAsTheIoctlsDo) {
    int compared = 0;
    for (TcpState state : {TcpState::Established, TcpState::FinWait1, TcpState::FinWait2})
        for (std::uint32_t in_flight : {0u, 1u, 6u, 1000u, 1001u, 65536u})
            for (std::uint32_t unsent : {0u, 1u, 4096u})
                for (int fin = 0; fin < 4; ++fin) {
                    SendSpace k{state, in_flight, unsent, false, false, false};
                    if (state == TcpState::FinWait1) {
                        k.fin_queued = true;
                        k.fin_sent = fin >= 1 && unsent == 0;  // a FIN goes out after all data
                        k.fin_with_data = fin >= 2;
                    } else if (fin > 0) {
                        continue;
                    }
                    if (state == TcpState::FinWait2 && (in_flight > 0 || unsent > 0))
                        continue;  // all acked
                    const SocketProbe a = by_ioctls(k), b = by_tcp_info(k);
                    for (std::int64_t waited :
                         {std::int64_t{0}, kBudget50 - 1, kBudget50, 300 * kMs})
                        for (WaitBudget budget : {WaitBudget::OnTheSpot, WaitBudget::Background}) {
                            auto da = decide_close(CloseMode::Rst, ours(), &a, waited, budget);
                            auto db = decide_close(CloseMode::Rst, ours(), &b, waited, budget);
                            EXPECT_EQ(da.action, db.action)
                                << "state " << static_cast<int>(state) << ", " << in_flight
                                << " in flight, " << unsent << " unsent, fin " << fin << ", waited "
                                << waited << ": ioctls " << name_of(da.action) << ", TCP_INFO "
                                << name_of(db.action);
                            ++compared;
                        }
                }
    EXPECT_GT(compared, 200);
}

// Only a close while the connection is still ours to end (ESTABLISHED, or
// half-closed by us before the peer's FIN) avoids a TIME_WAIT by an RST.
TEST(DecideCloseStates, OnlyActiveCloseStatesGetAnRst) {
    for (int s = 0; s <= 12; ++s) {
        auto state = static_cast<TcpState>(s);
        SocketProbe p = probe(state);
        bool active = state == TcpState::Established || state == TcpState::FinWait1 ||
                      state == TcpState::FinWait2;
        auto d = decide_close(CloseMode::Rst, ours(), &p, 0);
        EXPECT_EQ(d.action, active ? CloseAction::Rst : CloseAction::Passthrough)
            << "state " << s << ": " << name_of(d.action) << " (" << d.reason << ")";
        // rst-always does not look at the state at all.
        EXPECT_EQ(decide_close(CloseMode::RstAlways, ours(), &p, 0).action, CloseAction::Rst)
            << "state " << s;
    }
}

// The hook's loop: probe, wait while the ACK is due, then RST once it came.
TEST(DecideCloseStates, WaitThenRstOnceAcked) {
    SocketBookkeeping b = ours();
    EXPECT_EQ(decide_close(CloseMode::Rst, b, nullptr, 0).action, CloseAction::Probe);
    SocketProbe in_flight = probe(TcpState::Established, 7, 0, 100);
    EXPECT_EQ(decide_close(CloseMode::Rst, b, &in_flight, 0).action, CloseAction::WaitForAck);
    EXPECT_EQ(decide_close(CloseMode::Rst, b, &in_flight, 1 * kMs).action, CloseAction::WaitForAck);
    SocketProbe acked = probe(TcpState::Established, 0, 0, 100);
    EXPECT_EQ(decide_close(CloseMode::Rst, b, &acked, 1 * kMs).action, CloseAction::Rst);
}

// ---------------------------------------------------------------------------
// ack_wait_budget_ns: 2 * srtt + 2 ms, at most 20 ms.

struct BudgetCase {
    std::uint32_t srtt_us;
    std::int64_t budget_ns;
};

void PrintTo(const BudgetCase& c, std::ostream* os) {
    *os << "srtt " << c.srtt_us << " us";
}

class AckWaitBudget : public ::testing::TestWithParam<BudgetCase> {};

TEST_P(AckWaitBudget, Is) {
    EXPECT_EQ(ack_wait_budget_ns(GetParam().srtt_us), GetParam().budget_ns);
}

INSTANTIATE_TEST_SUITE_P(
    Table, AckWaitBudget,
    ::testing::Values(BudgetCase{0, 2 * kMs}, BudgetCase{1, 2'002'000}, BudgetCase{50, 2'100'000},
                      BudgetCase{1000, 4 * kMs}, BudgetCase{8999, 19'998'000},
                      BudgetCase{9000, 20 * kMs}, BudgetCase{9001, 20 * kMs},
                      BudgetCase{200'000, 20 * kMs},
                      BudgetCase{std::numeric_limits<std::uint32_t>::max(), 20 * kMs}),
    [](const auto& info) { return "srtt_" + std::to_string(info.param.srtt_us) + "us"; });

TEST(AckWaitBudgetBounds, StaysWithinTwoAndTwentyMsAndNeverShrinks) {
    std::int64_t previous = 0;
    for (std::uint64_t srtt = 0; srtt <= std::numeric_limits<std::uint32_t>::max();
         srtt = srtt * 3 + 1) {
        auto budget = ack_wait_budget_ns(static_cast<std::uint32_t>(srtt));
        EXPECT_GE(budget, 2 * kMs) << srtt;
        EXPECT_LE(budget, 20 * kMs) << srtt;
        EXPECT_GE(budget, previous) << srtt;
        previous = budget;
    }
}

// The background budget: 2 * srtt + 250 ms, at most 1 s — past a peer's
// longest delayed ACK (200 ms), however slow the server's reply.
TEST(BackgroundBudget, CoversTheLongestDelayedAckAndStaysBounded) {
    EXPECT_EQ(ack_wait_budget_ns(0, WaitBudget::Background), 250 * kMs);
    EXPECT_EQ(ack_wait_budget_ns(50, WaitBudget::Background), 250'100'000);
    EXPECT_EQ(ack_wait_budget_ns(100'000, WaitBudget::Background), 450 * kMs);
    EXPECT_EQ(ack_wait_budget_ns(375'000, WaitBudget::Background), 1000 * kMs);
    EXPECT_EQ(ack_wait_budget_ns(std::numeric_limits<std::uint32_t>::max(), WaitBudget::Background), 1000 * kMs);
    for (std::uint64_t srtt = 0; srtt <= std::numeric_limits<std::uint32_t>::max(); srtt = srtt * 3 + 1) {
        auto s = static_cast<std::uint32_t>(srtt);
        EXPECT_GT(ack_wait_budget_ns(s, WaitBudget::Background), ack_wait_budget_ns(s)) << srtt;
    }
}

// What the background thread decides for a held socket: the same rules,
// the longer budget.
TEST(BackgroundBudget, HeldSocketWaitsPastTheOnTheSpotBudget) {
    SocketBookkeeping b = ours();
    SocketProbe in_flight = probe(TcpState::Established, 5, 0, 50);
    EXPECT_EQ(decide_close(CloseMode::Rst, b, &in_flight, 30 * kMs).action, CloseAction::GracefulUnsent);
    EXPECT_EQ(decide_close(CloseMode::Rst, b, &in_flight, 30 * kMs, WaitBudget::Background).action,
              CloseAction::WaitForAck);
    EXPECT_EQ(decide_close(CloseMode::Rst, b, &in_flight, 251 * kMs, WaitBudget::Background).action,
              CloseAction::GracefulUnsent);
    SocketProbe acked = probe(TcpState::Established, 0, 0, 50);
    EXPECT_EQ(decide_close(CloseMode::Rst, b, &acked, 30 * kMs, WaitBudget::Background).action, CloseAction::Rst);
    // The peer's FIN came first (with the ACK): a normal close, nothing to avoid.
    SocketProbe peer_closed = probe(TcpState::CloseWait, 0, 0, 50);
    EXPECT_EQ(decide_close(CloseMode::Rst, b, &peer_closed, 30 * kMs, WaitBudget::Background).action,
              CloseAction::Passthrough);
    // Its FIN came after ours was sent (a half-closing client): TIME_WAIT is certain.
    SocketProbe closing = probe(TcpState::Closing, 1, 0, 50);
    EXPECT_EQ(decide_close(CloseMode::Rst, b, &closing, 30 * kMs, WaitBudget::Background).action,
              CloseAction::Passthrough);
}

// ---------------------------------------------------------------------------
// How many sockets may be held, and at which descriptor numbers.

TEST(HeldSockets, AtMost256AndASixteenthOfTheLimit) {
    EXPECT_EQ(max_held_sockets(0), 0);
    EXPECT_EQ(max_held_sockets(15), 0);
    EXPECT_EQ(max_held_sockets(16), 1);
    EXPECT_EQ(max_held_sockets(1024), 64);
    EXPECT_EQ(max_held_sockets(4096), 256);
    EXPECT_EQ(max_held_sockets(1'048'576), 256);
    EXPECT_EQ(max_held_sockets(std::numeric_limits<std::uint64_t>::max()), 256);
}

TEST(HeldSockets, AboveWhatSelectWatchesWhenTheLimitAllows) {
    EXPECT_EQ(held_fd_floor(20000, 256), 1024);
    EXPECT_EQ(held_fd_floor(1024 + 512, 256), 1024);
    EXPECT_EQ(held_fd_floor(std::numeric_limits<std::uint64_t>::max(), 256), 1024);
    // The common soft limit of 1024: the top 64 numbers.
    EXPECT_EQ(held_fd_floor(1024, max_held_sockets(1024)), 960);
    EXPECT_EQ(held_fd_floor(1024 + 511, 256), 1024 + 511 - 256);
    EXPECT_EQ(held_fd_floor(100, 6), 94);
    EXPECT_EQ(held_fd_floor(10, 0), -1);
    EXPECT_EQ(held_fd_floor(3, 5), -1);
    for (std::uint64_t limit = 16; limit < 100'000; limit = limit * 5 / 4 + 1) {
        int max = max_held_sockets(limit);
        int floor = held_fd_floor(limit, max);
        ASSERT_GE(floor, 0) << limit;
        EXPECT_LE(static_cast<std::uint64_t>(floor) + static_cast<std::uint64_t>(max), limit) << limit;
    }
}

}  // namespace
}  // namespace tcpfix::policy
