// socket(), accept(), accept4(): start tracking TCP sockets this process makes;
// accepted connections are never the application's active opens, so they only
// clear a stale entry.
#include <netinet/in.h>

#include "preload/fdtable.hpp"
#include "preload/hooks.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

namespace tcpfix::hooks {

using runtime::call_errno;

namespace {

// The bodies, inlined into the exported functions (the hot path of every
// connection) and into the out-of-line do_* that syscall() uses.
__attribute__((always_inline)) inline int socket_body(int domain, int type, int protocol) {
    int fd = runtime::call_direct(real::socket.get(), domain, type, protocol);
    if (fd < 0) return fd;
    bool tcp = (domain == AF_INET || domain == AF_INET6) && (type & 0xf) == SOCK_STREAM &&
               (protocol == 0 || protocol == IPPROTO_TCP);
    if (tcp && fdtable::track_new(fd, domain) != 0) policy::bump(runtime::counters().sockets);
    if (!tcp) fdtable::clear(fd);
    return fd;
}

__attribute__((always_inline)) inline int accept_body(int fd, sockaddr* addr, socklen_t* len, int flags,
                                                      bool plain_accept) {
    int conn = plain_accept ? runtime::call_direct(real::accept.get(), fd, addr, len)
                            : runtime::call_direct(real::accept4.get(), fd, addr, len, flags);
    if (conn >= 0) fdtable::clear(conn);
    return conn;
}

}  // namespace

int do_socket(int domain, int type, int protocol) { return socket_body(domain, type, protocol); }

int do_accept4(int fd, sockaddr* addr, socklen_t* len, int flags, bool plain_accept) {
    return accept_body(fd, addr, len, flags, plain_accept);
}

}  // namespace tcpfix::hooks

using namespace tcpfix;

// Returns the new descriptor, or -1 with errno as libc sets it.
extern "C" __attribute__((visibility("default"))) int socket(int domain, int type, int protocol) noexcept {
    if (!runtime::active()) return real::socket.get()(domain, type, protocol);
    return runtime::to_c(hooks::socket_body(domain, type, protocol));
}

// Returns the accepted descriptor, or -1 with errno as libc sets it.
extern "C" __attribute__((visibility("default"))) int accept(int fd, sockaddr* addr, socklen_t* len) {
    if (!runtime::active()) return real::accept.get()(fd, addr, len);
    return runtime::to_c(hooks::accept_body(fd, addr, len, 0, true));
}

// Returns the accepted descriptor, or -1 with errno as libc sets it.
extern "C" __attribute__((visibility("default"))) int accept4(int fd, sockaddr* addr, socklen_t* len, int flags) {
    if (!runtime::active()) return real::accept4.get()(fd, addr, len, flags);
    return runtime::to_c(hooks::accept_body(fd, addr, len, flags, false));
}
