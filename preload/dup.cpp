// dup(), dup2(), dup3(), fcntl(F_DUPFD*): a copied descriptor shares its
// socket's slot; a descriptor replaced by dup2/dup3 is released (its socket
// closes only if that was its last descriptor: no policy is applied to that
// implicit close, which is the safe choice).
#include <cstdarg>

#include "preload/fdtable.hpp"
#include "preload/hooks.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

namespace tcpfix::hooks {

using runtime::call_errno;

int do_dup(int fd) {
    int copy = call_errno(real::dup.get(), fd);
    if (copy >= 0) fdtable::share(fd, copy);
    return copy;
}

int do_dup3(int from, int to, int flags, bool is_dup2) {
    if (from == to) return is_dup2 ? call_errno(real::dup2.get(), from, to) : call_errno(real::dup3.get(), from, to, flags);
    // `to` is closed by the call: take it out of the table first, as close() does.
    std::uint32_t replaced = fdtable::take(to);
    fdtable::wait_not_busy(replaced);
    int r = is_dup2 ? call_errno(real::dup2.get(), from, to) : call_errno(real::dup3.get(), from, to, flags);
    if (r < 0) {
        fdtable::restore(to, replaced);
        return r;
    }
    if (replaced == fdtable::kOwned) log::forget_fd(to);
    fdtable::release(replaced);
    fdtable::share(from, to);
    return r;
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
    if (!acts_on(from, to)) return real::dup2.get()(from, to);
    return runtime::to_c(hooks::do_dup3(from, to, 0, true));
}

// Returns `to`, or -1 with errno as the real dup3() set it.
extern "C" __attribute__((visibility("default"))) int dup3(int from, int to, int flags) noexcept {
    if (!acts_on(from, to)) return real::dup3.get()(from, to, flags);
    return runtime::to_c(hooks::do_dup3(from, to, flags, false));
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
