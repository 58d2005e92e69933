// syscall(): programs that bypass libc's wrappers (libuv, and so node, closes
// with syscall(SYS_close, fd)) still go through the same hooks.
#include <sched.h>
#include <sys/syscall.h>

#include <cstdarg>

#include "preload/fdtable.hpp"
#include "preload/hooks.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

#ifndef SYS_clone3
#define SYS_clone3 435
#endif

using namespace tcpfix;

namespace {

template <typename T>
T as(long v) {
    return reinterpret_cast<T>(v);
}

// Whether tcpfix handles system call n (cheap: most syscall() calls are not its business).
bool hooked(long n) {
    switch (n) {
        case SYS_close: case SYS_close_range: case SYS_socket: case SYS_connect: case SYS_bind:
        case SYS_accept: case SYS_accept4: case SYS_dup: case SYS_dup3: case SYS_fcntl:
        case SYS_setsockopt: case SYS_getsockopt:
#ifdef SYS_dup2
        case SYS_dup2:
#endif
            return true;
        default: return false;
    }
}

// A child made by the system call itself. One sharing this memory (vfork, or
// clone with CLONE_VM and without CLONE_THREAD) makes every hook ask getpid()
// from now on; clone3's flags sit behind a pointer only the kernel may
// trust, so it counts as one. A child with a copy of the memory (fork, clone
// without CLONE_VM) needs nothing: the kernel wipes the fork marker in it.
bool makes_child(long n) {
#ifdef SYS_vfork  // not on every architecture (aarch64 has clone only)
    if (n == SYS_vfork) return true;
#endif
    return n == SYS_clone || n == SYS_clone3;
}

void before_child(long n, const long* a) {
    if (n == SYS_clone && (a[0] & (CLONE_VM | CLONE_THREAD)) != CLONE_VM) return;
    runtime::shared_memory_child();
}

// The hooked system calls, or false to leave the call to libc untouched.
bool dispatch(long n, const long* a, long& result) {
    int r;
    switch (n) {
        case SYS_close: r = hooks::do_close(static_cast<int>(a[0])); break;
        case SYS_close_range:
            r = hooks::do_close_range(static_cast<unsigned>(a[0]), static_cast<unsigned>(a[1]),
                                      static_cast<int>(a[2]));
            break;
        case SYS_socket:
            r = hooks::do_socket(static_cast<int>(a[0]), static_cast<int>(a[1]), static_cast<int>(a[2]));
            break;
        case SYS_connect:
            r = hooks::do_connect(static_cast<int>(a[0]), as<const sockaddr*>(a[1]),
                                  static_cast<socklen_t>(a[2]));
            break;
        case SYS_bind:
            r = hooks::do_bind(static_cast<int>(a[0]), as<const sockaddr*>(a[1]), static_cast<socklen_t>(a[2]));
            break;
        case SYS_accept:
            r = hooks::do_accept4(static_cast<int>(a[0]), as<sockaddr*>(a[1]), as<socklen_t*>(a[2]), 0, true);
            break;
        case SYS_accept4:
            r = hooks::do_accept4(static_cast<int>(a[0]), as<sockaddr*>(a[1]), as<socklen_t*>(a[2]),
                                  static_cast<int>(a[3]), false);
            break;
        case SYS_dup: r = hooks::do_dup(static_cast<int>(a[0])); break;
#ifdef SYS_dup2
        case SYS_dup2: r = hooks::do_dup3(static_cast<int>(a[0]), static_cast<int>(a[1]), 0, true); break;
#endif
        case SYS_dup3:
            r = hooks::do_dup3(static_cast<int>(a[0]), static_cast<int>(a[1]), static_cast<int>(a[2]), false);
            break;
        case SYS_fcntl:
            if (a[1] != F_DUPFD && a[1] != F_DUPFD_CLOEXEC) return false;
            r = hooks::do_fcntl_dupfd(static_cast<int>(a[0]), static_cast<int>(a[1]), static_cast<int>(a[2]));
            break;
        case SYS_setsockopt:
            r = hooks::do_setsockopt(static_cast<int>(a[0]), static_cast<int>(a[1]), static_cast<int>(a[2]),
                                     as<const void*>(a[3]), static_cast<socklen_t>(a[4]));
            break;
        case SYS_getsockopt:
            r = hooks::do_getsockopt(static_cast<int>(a[0]), static_cast<int>(a[1]), static_cast<int>(a[2]),
                                     as<void*>(a[3]), as<socklen_t*>(a[4]));
            break;
        default: return false;
    }
    result = r;
    return true;
}

}  // namespace

// As libc's syscall(): the result, or -1 with errno set.
extern "C" __attribute__((visibility("default"))) long syscall(long n, ...) noexcept {
    va_list ap;
    va_start(ap, n);
    long a[6];
    for (long& v : a) v = va_arg(ap, long);
    va_end(ap);
    long result;
    if (__builtin_expect(makes_child(n), 0) && runtime::active()) before_child(n, a);
    // syscall(SYS_close) of an untracked descriptor (libuv closes everything
    // this way) costs one table lookup, as close() does.
    bool untracked_close = n == SYS_close && fdtable::lookup(static_cast<int>(a[0])) == 0;
    if (runtime::active() && hooked(n) && !untracked_close && !runtime::in_unannounced_child() &&
        dispatch(n, a, result)) {
        if (result < 0) {
            errno = static_cast<int>(-result);
            return -1;
        }
        return result;
    }
    return real::syscall.get()(n, a[0], a[1], a[2], a[3], a[4], a[5]);
}
