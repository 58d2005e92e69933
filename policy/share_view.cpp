// The read side of a share (policy/share.hpp): what `tcpfix top` and the
// Prometheus textfile take from a segment. Not linked into the library,
// which only writes.
#include <algorithm>
#include <utility>
#include <vector>

#include "policy/share.hpp"

namespace tcpfix::policy::share {

std::uint32_t count_waiting_into(const Segment& seg, const Proc& p,
                                 std::vector<std::uint32_t>& per_entry) {
    std::uint32_t n = 0;
    for (const auto& w : p.waiting) {
        std::uint32_t v = w.load(std::memory_order_acquire);
        if (v == 0 || v > seg.entry_count() || v > per_entry.size()) continue;
        ++per_entry[v - 1];
        ++n;
    }
    return n;
}

EntryView read_entry(const Segment& seg, std::uint32_t index, EntryKind& kind) {
    EntryView v;
    v.index = index;
    const Entry& e = seg.entry(index);
    std::uint64_t state = e.state.load(std::memory_order_acquire);
    if (state == kEntryFree) {
        kind = EntryKind::Free;
        return v;
    }
    if (state != kEntryReady) {
        kind = (state & 0xff) == kEntryFillingTag ? EntryKind::Filling : EntryKind::Corrupt;
        return v;
    }
    Key k{{e.key[0].load(std::memory_order_relaxed), e.key[1].load(std::memory_order_relaxed),
           e.key[2].load(std::memory_order_relaxed)}};
    auto ep = endpoint_of(k);
    if (!ep) {
        kind = EntryKind::Corrupt;
        return v;
    }
    kind = EntryKind::Ready;
    v.dest = *ep;
    v.connects = e.connects.load(std::memory_order_relaxed);
    v.failures = e.failures.load(std::memory_order_relaxed);
    v.leaks = e.leaks.load(std::memory_order_relaxed);
    v.reaped = e.reaped.load(std::memory_order_relaxed);
    v.throttled_us = e.throttled_us.load(std::memory_order_relaxed);
    v.consecutive_failures = e.consecutive_failures.load(std::memory_order_relaxed);
    v.backoff_delay_ns =
        v.consecutive_failures == 0 ? 0 : e.backoff_delay_ns.load(std::memory_order_relaxed);
    v.backoff_next_ns = e.backoff_next_ns.load(std::memory_order_relaxed);
    return v;
}

void merge_duplicates(std::vector<EntryView>& entries) {
    // Sorted by destination (then table order), each run of equal ones
    // summed into its first; the survivors keep table order.
    std::vector<std::pair<Key, std::size_t>> order;
    order.reserve(entries.size());
    for (std::size_t i = 0; i < entries.size(); ++i)
        order.emplace_back(make_key(entries[i].dest), i);
    std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
        if (a.first.w[0] != b.first.w[0]) return a.first.w[0] < b.first.w[0];
        if (a.first.w[1] != b.first.w[1]) return a.first.w[1] < b.first.w[1];
        if (a.first.w[2] != b.first.w[2]) return a.first.w[2] < b.first.w[2];
        return a.second < b.second;
    });
    std::vector<bool> gone(entries.size(), false);
    for (std::size_t i = 0; i < order.size();) {
        std::size_t j = i + 1;
        EntryView& m = entries[order[i].second];
        for (; j < order.size() && order[j].first == order[i].first; ++j) {
            const EntryView& v = entries[order[j].second];
            m.connects += v.connects;
            m.failures += v.failures;
            m.leaks += v.leaks;
            m.reaped += v.reaped;
            m.throttled_us += v.throttled_us;
            m.waiting += v.waiting;
            m.consecutive_failures = std::max(m.consecutive_failures, v.consecutive_failures);
            m.backoff_delay_ns = std::max(m.backoff_delay_ns, v.backoff_delay_ns);
            m.backoff_next_ns = std::max(m.backoff_next_ns, v.backoff_next_ns);
            gone[order[j].second] = true;
        }
        i = j;
    }
    std::size_t out = 0;
    for (std::size_t i = 0; i < entries.size(); ++i)
        if (!gone[i]) entries[out++] = entries[i];
    entries.resize(out);
}

}  // namespace tcpfix::policy::share
