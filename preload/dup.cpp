// dup(), dup2(), dup3(), fcntl(F_DUPFD*): a copied descriptor shares its
// socket's slot; a descriptor replaced by dup2/dup3 is closed by the call,
// so TCPFIX_CLOSE applies to it exactly as to close() (same rules: the last
// descriptor of a matched connection, active close, nothing lost).
#include <fcntl.h>
#include <sys/socket.h>

#include <cstdarg>

#include "preload/fdtable.hpp"
#include "preload/hooks.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

namespace tcpfix::hooks {

using runtime::call_errno;

namespace {

// Whether dup2/dup3 onto an open descriptor will succeed: the policy is
// applied to the replaced socket only then (a failed call leaves the
// application its socket, which must not have been given an RST).
bool will_replace(int from, int flags, bool is_dup2) {
    if (!is_dup2 && (flags & ~O_CLOEXEC) != 0) return false;
    return call_errno(real::fcntl.get(), from, F_GETFD) >= 0;
}

// Whether TCPFIX_CLOSE may do more than count when the slot's descriptor is
// replaced: only then is it worth a system call to make sure the replacing
// succeeds (a copy of a socket dup2'ed over another copy, the common case
// of dup2 on sockets, needs none).
bool may_act(std::uint32_t index) {
    const policy::CloseMode mode = runtime::config().close;
    const fdtable::Slot& s = fdtable::slot(index);
    const std::uint32_t flags = s.flags.load(std::memory_order_acquire);
    constexpr std::uint32_t kConnectedMatched = fdtable::kConnectCalled | fdtable::kMatched;
    return mode != policy::CloseMode::Keep && (flags & kConnectedMatched) == kConnectedMatched &&
           closing_ends_connection(mode, s);
}

// The common case of dup2 on sockets: `to` holds a copy of the socket
// `from` refers to (the slots of both looked up already), so its close is
// not the socket's last and the table already says what it will say after
// the call. When that close would only be counted (the same question
// dup3_onto() asks), it is. False when this is not that case.
__attribute__((always_inline)) inline bool dup_over_copy(int from, int to, int flags, bool is_dup2,
                                                         std::uint32_t from_slot, std::uint32_t to_slot, int& r) {
    if (to_slot == 0 || to_slot == fdtable::kOwned || to_slot != from_slot || from == to ||
        !closing_only_counts(runtime::config(), fdtable::slot(to_slot)))
        return false;
    r = is_dup2 ? runtime::call_direct(real::dup2.get(), from, to)
                : runtime::call_direct(real::dup3.get(), from, to, flags);
    if (r >= 0) policy::bump(runtime::counters().closes);
    return true;
}

// The call failed after all: the socket goes back to the application as it was.
void undo(int fd, const CloseApplied& applied) {
    if (applied.linger) {
        linger off{0, 0};
        call_errno(real::setsockopt.get(), fd, SOL_SOCKET, SO_LINGER, static_cast<const void*>(&off),
                   static_cast<socklen_t>(sizeof off));
    }
    if (applied.held >= 0) hold::cancel(applied.held);
}

// The call itself, TCPFIX_CLOSE applied to what it replaces (`replaced`,
// taken out of the table); undone if the call fails after all.
__attribute__((always_inline)) inline int dup3_call(int from, int to, int flags, bool is_dup2, std::uint32_t replaced,
                                                    const CloseApplied& applied) {
    fdtable::wait_not_busy(replaced);
    // The result goes back to the application: a failure's errno is its own.
    int r = is_dup2 ? runtime::call_direct(real::dup2.get(), from, to)
                    : runtime::call_direct(real::dup3.get(), from, to, flags);
    if (r < 0) {
        undo(to, applied);
        fdtable::restore(to, replaced);
        return r;
    }
    if (replaced == fdtable::kOwned) log::forget_fd(to);
    if (applied.held >= 0) hold::publish(applied.held);
    fdtable::release(replaced);
    fdtable::share_taken(from, to, replaced);
    return r;
}

// dup3_onto() where the replaced descriptor's close does more than count:
// TCPFIX_CLOSE applied as close() would (the JDK's sockets end this way: a
// marker descriptor dup2'ed over the socket, then closed).
__attribute__((noinline)) int dup3_replacing(int from, int to, int flags, bool is_dup2, std::uint32_t replaced) {
    CloseApplied applied;
    if (replaced == fdtable::kOwned)
        hold::forget_fd(to);
    else if (replaced != 0 && (!may_act(replaced) || will_replace(from, flags, is_dup2)))
        applied = apply_close_policy(to, replaced, hold::Origin::Dup2);
    return dup3_call(from, to, flags, is_dup2, replaced, applied);
}

// dup2/dup3 onto another descriptor than `from`, not a copy of its socket.
// `to` is closed by the call: it is taken out of the table first. A close
// that is only counted (another socket's copy, the common case) stays inline.
__attribute__((always_inline)) inline int dup3_onto(int from, int to, int flags, bool is_dup2) {
    std::uint32_t replaced = fdtable::take(to);
    if (replaced == 0 || replaced == fdtable::kOwned ||
        !closing_only_counts(runtime::config(), fdtable::slot(replaced)))
        return dup3_replacing(from, to, flags, is_dup2, replaced);
    policy::bump(runtime::counters().closes);
    return dup3_call(from, to, flags, is_dup2, replaced, CloseApplied{});
}

}  // namespace

int do_dup(int fd) {
    int copy = call_errno(real::dup.get(), fd);
    if (copy >= 0) fdtable::share(fd, copy);
    return copy;
}

int do_dup3(int from, int to, int flags, bool is_dup2) {
    if (from == to) return is_dup2 ? call_errno(real::dup2.get(), from, to) : call_errno(real::dup3.get(), from, to, flags);
    if (int r; dup_over_copy(from, to, flags, is_dup2, fdtable::lookup(from), fdtable::lookup(to), r)) return r;
    return dup3_onto(from, to, flags, is_dup2);
}

int do_fcntl_dupfd(int fd, int cmd, int min_fd) {
    int copy = call_errno(real::fcntl.get(), fd, cmd, min_fd);
    if (copy >= 0) fdtable::share(fd, copy);
    return copy;
}

}  // namespace tcpfix::hooks

using namespace tcpfix;

namespace {

// The table changes only for tracked descriptors, and never from a child that
// may share the parent's memory (vfork).
bool acts_on(int a, int b) {
    return runtime::active() && (fdtable::lookup(a) != 0 || fdtable::lookup(b) != 0) &&
           !runtime::in_unannounced_child();
}

// dup2() and dup3(): acts_on() with the two lookups kept for the common case.
__attribute__((always_inline)) inline int dup3_hook(int from, int to, int flags, bool is_dup2) {
    if (runtime::active()) {
        const std::uint32_t from_slot = fdtable::lookup(from), to_slot = fdtable::lookup(to);
        if ((from_slot | to_slot) != 0 && !runtime::in_unannounced_child()) {
            int r;
            if (!hooks::dup_over_copy(from, to, flags, is_dup2, from_slot, to_slot, r))
                r = from == to ? hooks::do_dup3(from, to, flags, is_dup2) : hooks::dup3_onto(from, to, flags, is_dup2);
            return runtime::to_c(r);
        }
    }
    return is_dup2 ? real::dup2.get()(from, to) : real::dup3.get()(from, to, flags);
}

// fcntl and fcntl64 take their third argument as glibc does: one pointer-sized word.
int fcntl_common(decltype(real::fcntl)& real_fn, int fd, int cmd, void* arg) {
    if ((cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && acts_on(fd, fd)) {
        int copy = runtime::call_errno(real_fn.get(), fd, cmd, static_cast<int>(reinterpret_cast<long>(arg)));
        if (copy >= 0) fdtable::share(fd, copy);
        return runtime::to_c(copy);
    }
    return real_fn.get()(fd, cmd, arg);
}

}  // namespace

// Returns the new descriptor, or -1 with errno as the real dup() set it.
extern "C" __attribute__((visibility("default"))) int dup(int fd) noexcept {
    if (!acts_on(fd, fd)) return real::dup.get()(fd);
    return runtime::to_c(hooks::do_dup(fd));
}

// Returns `to`, or -1 with errno as the real dup2() set it.
extern "C" __attribute__((visibility("default"))) int dup2(int from, int to) noexcept {
    return dup3_hook(from, to, 0, true);
}

// Returns `to`, or -1 with errno as the real dup3() set it.
extern "C" __attribute__((visibility("default"))) int dup3(int from, int to, int flags) noexcept {
    return dup3_hook(from, to, flags, false);
}

// Whatever the real fcntl() returns; F_DUPFD and F_DUPFD_CLOEXEC copies are tracked.
extern "C" __attribute__((visibility("default"))) int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void* arg = va_arg(ap, void*);
    va_end(ap);
    return fcntl_common(real::fcntl, fd, cmd, arg);
}

// The same for programs built with _FILE_OFFSET_BITS=64 (glibc 2.28+).
extern "C" __attribute__((visibility("default"))) int fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void* arg = va_arg(ap, void*);
    va_end(ap);
    return fcntl_common(real::fcntl64.peek() != nullptr || real::fcntl64.get() != nullptr ? real::fcntl64 : real::fcntl,
                        fd, cmd, arg);
}
