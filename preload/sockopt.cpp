// setsockopt() and bind(): what the application chose for its socket. The
// close policy respects its own SO_LINGER; a retry replays its options and
// its bind on the fresh socket.
#include <netinet/in.h>

#include "preload/connect_policy.hpp"
#include "preload/fdtable.hpp"
#include "preload/hooks.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

namespace tcpfix::hooks {
namespace {

fdtable::Slot* tracked(int fd) {
    std::uint32_t index = fdtable::lookup(fd);
    return index == 0 || index == fdtable::kOwned ? nullptr : &fdtable::slot(index);
}

void remember_option(fdtable::Slot& s, int level, int name, const void* value, socklen_t len) {
    if (!fdtable::save_option(s, level, name, value, len)) s.flags.fetch_or(fdtable::kOptionsLost);
}

}  // namespace

int do_setsockopt(int fd, int level, int name, const void* value, socklen_t len) {
    int r = runtime::call_errno(real::setsockopt.get(), fd, level, name, value, len);
    if (r != 0 || value == nullptr) return r;
    fdtable::Slot* s = tracked(fd);
    if (s == nullptr) return r;
    remember_option(*s, level, name, value, len);
    if (level == SOL_SOCKET && name == SO_LINGER && len >= sizeof(linger)) {
        if (static_cast<const linger*>(value)->l_onoff != 0) s->flags.fetch_or(fdtable::kAppLinger);
        else s->flags.fetch_and(~fdtable::kAppLinger);
    }
    return r;
}

int do_bind(int fd, const sockaddr* addr, socklen_t len) {
    return connect_policy::bind_like_app(fd, tracked(fd), addr, len);
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
