#include "preload/kernel.hpp"

#include <sys/mman.h>
#include <sys/syscall.h>

#include <atomic>
#include <cerrno>

#include <fmt/format.h>

#include "policy/errno_names.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif

namespace tcpfix::kernel {

namespace detail {
std::atomic<bool> g_lacks[static_cast<unsigned>(policy::Facility::Count)];
}

namespace {

enum : int { kUnknown = 0, kYes = 1, kNo = 2 };
std::atomic<int> g_close_range{kUnknown};

}  // namespace

void missing(policy::Facility f, const char* observed) {
    if (detail::g_lacks[static_cast<unsigned>(f)].exchange(true, std::memory_order_relaxed)) return;
    const auto& info = policy::facility_info(f);
    log::at(info.cost_only ? policy::LogLevel::Info : policy::LogLevel::Warn,
            "this kernel lacks {} (Linux {}; {}): {}", info.name, info.minimum, observed, info.without_it);
}

void missing(policy::Facility f, int err) {
    const char* name = policy::errno_symbol(err);
    char text[48];
    auto r = fmt::format_to_n(text, sizeof text - 1, "the call failed with {}", name != nullptr ? name : "?");
    text[r.size < sizeof text ? r.size : sizeof text - 1] = '\0';
    missing(f, text);
}

bool has_close_range() {
    int known = g_close_range.load(std::memory_order_relaxed);
    if (known != kUnknown) return known == kYes;
    // first == last == the highest number: nothing is open there, nothing closes.
    long r = real::raw_syscall(SYS_close_range, ~0u, ~0u, 0);
    bool yes = r == 0 || r != -ENOSYS;
    g_close_range.store(yes ? kYes : kNo, std::memory_order_relaxed);
    if (!yes) missing(policy::Facility::CloseRange, ENOSYS);
    return yes;
}

bool wipe_on_fork(void* page, std::size_t len) {
    long r = real::raw_syscall(SYS_madvise, reinterpret_cast<long>(page), static_cast<long>(len),
                               MADV_WIPEONFORK);
    if (r == 0) return true;
    missing(policy::Facility::WipeOnFork, static_cast<int>(-r));
    return false;
}

}  // namespace tcpfix::kernel
