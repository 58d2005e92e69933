#include "tools/attach_probe.hpp"

#include <arpa/inet.h>
#include <bpf/libbpf.h>
#include <fmt/format.h>
#include <linux/capability.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "tools/attach_sockdiag.hpp"
#include "tools/fd.hpp"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

namespace tcpfix::tools::attach {
namespace {

constexpr int kCapBpf = 39;  // CAP_BPF, Linux 5.8; CAP_SYS_ADMIN stands in before

bool has_capability(int cap) {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2] = {};
    if (::syscall(SYS_capget, &header, data) != 0) return false;
    return (data[cap / 32].effective & (1u << (cap % 32))) != 0;
}

bool file_exists(const char* path) {
    return ::access(path, F_OK) == 0;
}

// Release "6.1.0-18-amd64" at least major.minor.
bool kernel_at_least(int major, int minor) {
    utsname u{};
    if (::uname(&u) != 0) return false;
    int ma = 0, mi = 0;
    if (std::sscanf(u.release, "%d.%d", &ma, &mi) != 2) return false;
    return ma > major || (ma == major && mi >= minor);
}

// In a child with a network namespace of its own: a loopback connection
// closed by the client first leaves a TIME_WAIT entry, which SOCK_DESTROY is
// asked to remove. Exit status: 0 removed, 1 refused (EOPNOTSUPP), 2 the
// experiment itself could not run (no CAP_SYS_ADMIN for unshare, ...).
int time_wait_destroy_child() {
    if (::unshare(CLONE_NEWNET) != 0) return 2;
    Fd ctl(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (!ctl || ::ioctl(ctl.get(), SIOCGIFFLAGS, &ifr) != 0) return 2;
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
    if (::ioctl(ctl.get(), SIOCSIFFLAGS, &ifr) != 0) return 2;
    Fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (!listener || ::bind(listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(listener.get(), 1) != 0 ||
        ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
        return 2;
    Fd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!client || ::connect(client.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
        return 2;
    sockaddr_in local{};
    len = sizeof local;
    ::getsockname(client.get(), reinterpret_cast<sockaddr*>(&local), &len);
    Fd server(::accept(listener.get(), nullptr, nullptr));
    if (!server) return 2;
    client.reset();  // the client closes first: its side keeps the TIME_WAIT entry
    char byte;
    if (::read(server.get(), &byte, 1) != 0) return 2;  // the client's FIN
    server.reset();
    try {
        SockDiag diag;
        SocketKey key;
        key.family = AF_INET;
        std::memcpy(key.local, &local.sin_addr, 4);
        std::memcpy(key.remote, &a.sin_addr, 4);
        key.local_port = ntohs(local.sin_port);
        key.remote_port = ntohs(a.sin_port);
        for (int i = 0; i < 200; ++i) {  // the last ACK is on its way: at most ~1 s
            auto found = diag.lookup(key);
            if (found && found->state == 6 /* TIME_WAIT */) {
                key.cookie = found->key.cookie;
                int err = diag.destroy(key);
                if (err == EOPNOTSUPP) return 1;
                return err == 0 && !diag.lookup(key) ? 0 : 2;
            }
            ::usleep(5000);
        }
    } catch (...) {
    }
    return 2;
}

// 1 yes, 0 no, -1 could not tell.
int can_destroy_time_wait() {
    pid_t pid = ::fork();
    if (pid < 0) return -1;
    if (pid == 0) ::_exit(time_wait_destroy_child());
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status)) return -1;
    switch (WEXITSTATUS(status)) {
        case 0:
            return 1;
        case 1:
            return 0;
        default:
            return -1;
    }
}

}  // namespace

bool kernel_config_readable() {
    utsname u{};
    ::uname(&u);
    return file_exists("/proc/config.gz") ||
           file_exists(fmt::format("/boot/config-{}", u.release).c_str());
}

unsigned long long own_netns_cookie() {
    Fd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    unsigned long long cookie = 0;
    socklen_t len = sizeof cookie;
    if (!s || ::getsockopt(s.get(), SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) != 0) return 0;
    return cookie;
}

Facilities probe_kernel(const Needs& needs) {
    Facilities f;
    auto refuse = [&](std::string line) { f.refusals.push_back(std::move(line)); };
    if (!(has_capability(kCapBpf) || has_capability(CAP_SYS_ADMIN)) ||
        !has_capability(CAP_NET_ADMIN)) {
        refuse(
            "attach: needs root: CAP_BPF (or CAP_SYS_ADMIN before Linux 5.8) and "
            "CAP_NET_ADMIN");
        return f;  // the probes below would all fail for the same reason
    }
    if (!file_exists("/sys/kernel/btf/vmlinux"))
        refuse(
            "attach: this kernel has no BTF (/sys/kernel/btf/vmlinux): tcpfix attach needs "
            "Linux 5.9+ built with CONFIG_DEBUG_INFO_BTF");
    if (libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SOCK_OPS, nullptr) != 1)
        refuse(
            "attach: this kernel cannot run sock_ops programs (Linux 4.13+, "
            "CONFIG_CGROUP_BPF); tcpfix attach needs Linux 5.9+");
    if (libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, nullptr) != 1)
        refuse("attach: this kernel has no BPF ring buffer; tcpfix attach needs Linux 5.9+");
    if (libbpf_probe_bpf_map_type(BPF_MAP_TYPE_SK_STORAGE, nullptr) != 1)
        refuse("attach: this kernel has no BPF socket storage; tcpfix attach needs Linux 5.9+");
    if (libbpf_probe_bpf_helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_skc_to_tcp_sock, nullptr) != 1)
        refuse(
            "attach: sock_ops programs cannot call bpf_skc_to_tcp_sock() here; tcpfix attach "
            "needs Linux 5.9+");
    f.record_pid =
        libbpf_probe_bpf_helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_get_current_pid_tgid, nullptr) ==
            1 &&
        libbpf_probe_bpf_helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_get_current_comm, nullptr) == 1;
    f.record_netns =
        libbpf_probe_bpf_helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_get_netns_cookie, nullptr) == 1;
    if (needs.source_addrs &&
        (libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, nullptr) != 1 ||
         libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_bind, nullptr) != 1))
        refuse(
            "attach: --source-addrs: this kernel cannot bind from cgroup/connect4 programs "
            "(bpf_bind(); tcpfix attach's needs Linux 5.12+)");
    if (needs.destroy) {
        try {
            SockDiag diag;
            SocketKey nobody;  // 0.0.0.0:0 -> 0.0.0.0:0 exists nowhere
            nobody.family = AF_INET;
            int err = diag.destroy(nobody);
            if (err == EOPNOTSUPP)
                refuse(
                    "attach: --reap-close-wait and --close rst need SOCK_DESTROY, which this "
                    "kernel was built without (CONFIG_INET_DIAG_DESTROY, Linux 4.5+)");
        } catch (const std::exception& e) {
            refuse(fmt::format("attach: --reap-close-wait and --close rst need sock_diag: {}",
                               e.what()));
        }
    }
    if (needs.destroy_time_wait && f.refusals.empty()) {
        int can = can_destroy_time_wait();
        if (can == 0 || (can < 0 && !kernel_at_least(6, 0)))
            refuse(
                "attach: --close rst: this kernel cannot destroy TIME_WAIT entries over "
                "sock_diag (Linux 6.0+)");
    }
    return f;
}

}  // namespace tcpfix::tools::attach
