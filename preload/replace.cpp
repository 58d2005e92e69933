// A fresh socket in the application's descriptor, for a retry or the next
// source address: the descriptor number, the O_NONBLOCK state, close-on-exec
// and the application's options all stay as they were (STYLE.md, rule 6).
#include <fcntl.h>

#include "preload/connect_policy.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

namespace tcpfix::connect_policy {

using runtime::call_errno;

int replace_socket(int fd, fdtable::Slot& s) {
    if (s.refs.load(std::memory_order_acquire) != 1) return -EBUSY;  // a dup would keep the old one
    int status = call_errno(real::fcntl.get(), fd, F_GETFL);
    int fd_flags = call_errno(real::fcntl.get(), fd, F_GETFD);
    if (status < 0 || fd_flags < 0) return status < 0 ? status : fd_flags;

    int fresh = call_errno(real::socket.get(), s.domain(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fresh < 0) return fresh;
    const fdtable::SavedOption* bound = nullptr;
    fdtable::for_each_option(s, [&](const fdtable::SavedOption& o) {
        if (o.level == fdtable::kBoundLevel) {
            bound = &o;
        } else if (call_errno(real::setsockopt.get(), fresh, o.level, o.name, static_cast<const void*>(o.value),
                              static_cast<socklen_t>(o.len)) != 0) {
            log::at(policy::LogLevel::Debug, "retry socket: option {}/{} not replayed", o.level, o.name);
        }
    });
    if ((s.flags.load(std::memory_order_relaxed) & fdtable::kOptionsLost) != 0)
        log::at(policy::LogLevel::Info,
                "retry socket for fd {}: more than {} options set (or one longer than {} bytes); the rest are "
                "not replayed",
                fd, fdtable::kMaxSavedOptions, sizeof(fdtable::SavedOption::value));
    int r = call_errno(real::fcntl.get(), fresh, F_SETFL, status);
    if (r == 0) r = call_errno(real::dup3.get(), fresh, fd, (fd_flags & FD_CLOEXEC) ? O_CLOEXEC : 0);
    call_errno(real::close.get(), fresh);
    if (r < 0) return r;
    if ((s.flags.load(std::memory_order_relaxed) & fdtable::kAppBound) != 0 && bound != nullptr)
        return bind_like_app(fd, nullptr, reinterpret_cast<const sockaddr*>(bound->value), bound->len);
    return 0;
}

}  // namespace tcpfix::connect_policy
