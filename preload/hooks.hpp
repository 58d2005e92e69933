// The internal side of every hook: returns the result or -errno and never
// touches errno, so the exported shims and syscall() share one body.
#pragma once

#include <sys/socket.h>

#include <cstdint>

namespace tcpfix::hooks {

int do_socket(int domain, int type, int protocol);
int do_accept4(int fd, sockaddr* addr, socklen_t* len, int flags, bool plain_accept);
int do_connect(int fd, const sockaddr* addr, socklen_t len);
int do_bind(int fd, const sockaddr* addr, socklen_t len);
int do_setsockopt(int fd, int level, int name, const void* value, socklen_t len);
int do_getsockopt(int fd, int level, int name, void* value, socklen_t* len);
int do_close(int fd);
int do_close_range(unsigned first, unsigned last, int flags);
int do_dup(int fd);
int do_dup3(int from, int to, int flags, bool is_dup2);
int do_fcntl_dupfd(int fd, int cmd, int min_fd);

// Applies the policy to every tracked descriptor in [first, last] and takes
// them out of the table, ahead of a close_range() or closefrom().
void take_range(unsigned first, unsigned last);

// Applies TCPFIX_CLOSE to a socket about to be closed; `index` is the slot
// just taken out of the table for fd (the caller releases it).
void apply_close_policy(int fd, std::uint32_t index);

}  // namespace tcpfix::hooks
