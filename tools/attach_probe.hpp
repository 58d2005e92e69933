// What this kernel can do for `tcpfix attach`, found out before anything is
// attached. Each missing facility becomes one line naming the option it
// affects and the kernel that has it (the README's table of minimums).
#pragma once

#include <string>
#include <vector>

namespace tcpfix::tools::attach {

struct Needs {
    bool source_addrs = false;       // cgroup/connect4/6 + bpf_bind()
    bool destroy = false;            // SOCK_DESTROY (--reap-close-wait, --close rst)
    bool destroy_time_wait = false;  // SOCK_DESTROY of a TIME_WAIT entry (--close rst)
};

struct Facilities {
    std::vector<std::string> refusals;  // empty: everything needed is there
    bool record_pid = false;            // sock_ops may call bpf_get_current_pid_tgid()
    bool record_netns = false;          // sock_ops may call bpf_get_netns_cookie()
};

Facilities probe_kernel(const Needs& needs);

// The kernel's CONFIG_HZ is readable (/proc/config.gz or
// /boot/config-RELEASE), as libbpf's __kconfig needs it.
bool kernel_config_readable();

// The cookie of this process's network namespace (SO_NETNS_COOKIE, Linux
// 5.14), 0 when the kernel cannot say.
unsigned long long own_netns_cookie();

}  // namespace tcpfix::tools::attach
