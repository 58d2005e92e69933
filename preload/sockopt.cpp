// setsockopt() and bind(): what the application chose for its socket, which
// the close policy must respect (its own SO_LINGER, an explicit local port).
#include <netinet/in.h>

#include "preload/fdtable.hpp"
#include "preload/hooks.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

namespace tcpfix::hooks {

using runtime::call_errno;

int do_setsockopt(int fd, int level, int name, const void* value, socklen_t len) {
    int r = call_errno(real::setsockopt.get(), fd, level, name, value, len);
    if (r != 0 || level != SOL_SOCKET || name != SO_LINGER || len < sizeof(linger)) return r;
    std::uint32_t index = fdtable::lookup(fd);
    if (index == 0 || index == fdtable::kOwned) return r;
    const auto* l = static_cast<const linger*>(value);
    if (l->l_onoff != 0) fdtable::slot(index).flags.fetch_or(fdtable::kAppLinger);
    else fdtable::slot(index).flags.fetch_and(~fdtable::kAppLinger);
    return r;
}

int do_bind(int fd, const sockaddr* addr, socklen_t len) {
    int r = call_errno(real::bind.get(), fd, addr, len);
    if (r != 0) return r;
    std::uint32_t index = fdtable::lookup(fd);
    if (index == 0 || index == fdtable::kOwned) return r;
    auto local = policy::endpoint_from_sockaddr(addr, len);
    if (local && local->port != 0) fdtable::slot(index).flags.fetch_or(fdtable::kExplicitPort);
    return r;
}

}  // namespace tcpfix::hooks

using namespace tcpfix;

// Returns 0, or -1 with errno exactly as the real setsockopt() set it.
extern "C" __attribute__((visibility("default"))) int setsockopt(int fd, int level, int name, const void* value,
                                                                 socklen_t len) noexcept {
    if (!runtime::active()) return real::setsockopt.get()(fd, level, name, value, len);
    return runtime::to_c(hooks::do_setsockopt(fd, level, name, value, len));
}

// Returns 0, or -1 with errno exactly as the real bind() set it.
extern "C" __attribute__((visibility("default"))) int bind(int fd, const sockaddr* addr, socklen_t len) noexcept {
    if (!runtime::active()) return real::bind.get()(fd, addr, len);
    return runtime::to_c(hooks::do_bind(fd, addr, len));
}
