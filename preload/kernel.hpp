// What this kernel lacks, learnt once per facility: the first call that meets
// a missing facility records it and logs the one warning that says what
// tcpfix does instead (policy/facilities.*; an info line where only the cost
// changes); later calls take the fallback without asking the kernel again.
// Lock-free, allocation-free: callable from any hook.
#pragma once

#include <atomic>
#include <cstddef>

#include "policy/facilities.hpp"

namespace tcpfix::kernel {

namespace detail {
extern std::atomic<bool> g_lacks[static_cast<unsigned>(policy::Facility::Count)];
}

// True once `f` was seen missing. Inline: it sits on the close path.
inline bool lacks(policy::Facility f) {
    return detail::g_lacks[static_cast<unsigned>(f)].load(std::memory_order_relaxed);
}

// Records that the kernel lacks `f` and logs the warning the first time,
// with what the call answered (`err`, a positive errno, or `observed`).
void missing(policy::Facility f, int err);
void missing(policy::Facility f, const char* observed);

// close_range(2), probed once (a call that closes nothing).
bool has_close_range();

// Marks [page, page + len) MADV_WIPEONFORK (Linux 4.14+): zero in every child
// that gets a copy of this memory. False, and the lack recorded, where the
// kernel refuses it.
bool wipe_on_fork(void* page, std::size_t len);

}  // namespace tcpfix::kernel
