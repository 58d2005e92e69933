#include "tools/diag.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string_view>
#include <unordered_set>

#include "tools/fd.hpp"

namespace tcpfix::tools::diag {
namespace {

struct DumpRequest {
    nlmsghdr header;
    inet_diag_req_v2 body;
};

policy::Endpoint endpoint(int family, const __be32 (&addr)[4], __be16 port) {
    sockaddr_storage ss{};
    unsigned len = 0;
    if (family == AF_INET) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
        sin->sin_family = AF_INET;
        sin->sin_port = port;
        std::memcpy(&sin->sin_addr, addr, 4);
        len = sizeof *sin;
    } else {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = port;
        std::memcpy(&sin6->sin6_addr, addr, 16);
        len = sizeof *sin6;
    }
    auto ep = policy::endpoint_from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
    return ep ? *ep : policy::Endpoint{};
}

// One family's dump, appended to `out`.
void dump_family(int nl, int family, std::uint32_t states, std::uint32_t seq,
                 std::vector<TcpSocket>& out) {
    DumpRequest request{};
    request.header.nlmsg_len = sizeof request;
    request.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.header.nlmsg_seq = seq;
    request.body.sdiag_family = static_cast<std::uint8_t>(family);
    request.body.sdiag_protocol = IPPROTO_TCP;
    request.body.idiag_states = states;
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(nl, &request, sizeof request, 0, reinterpret_cast<sockaddr*>(&kernel),
                 sizeof kernel) < 0)
        throw_errno("sock_diag sendto");

    // 32 KiB is what the kernel fills per recv for a dump; more is harmless.
    constexpr std::size_t kBuffer = 64 * 1024;
    auto buffer = std::make_unique<std::uint8_t[]>(kBuffer);
    while (true) {
        ssize_t n = ::recv(nl, buffer.get(), kBuffer, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_errno("sock_diag recv");
        }
        if (n == 0) throw std::runtime_error("sock_diag: the kernel closed the dump");
        auto left = static_cast<int>(n);
        for (auto* h = reinterpret_cast<nlmsghdr*>(buffer.get()); NLMSG_OK(h, left);
             h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_seq != seq) continue;
            if (h->nlmsg_type == NLMSG_DONE) return;
            if (h->nlmsg_type == NLMSG_ERROR) {
                auto* err = static_cast<nlmsgerr*>(NLMSG_DATA(h));
                errno = err->error < 0 ? -err->error : EPROTO;
                throw_errno("sock_diag dump");
            }
            if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
                h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg)))
                continue;
            auto* m = static_cast<inet_diag_msg*>(NLMSG_DATA(h));
            TcpSocket s;
            s.state = m->idiag_state;
            s.local = endpoint(m->idiag_family, m->id.idiag_src, m->id.idiag_sport);
            s.remote = endpoint(m->idiag_family, m->id.idiag_dst, m->id.idiag_dport);
            s.cookie =
                std::uint64_t{m->id.idiag_cookie[0]} | (std::uint64_t{m->id.idiag_cookie[1]} << 32);
            s.inode = m->idiag_inode;
            s.uid = m->idiag_uid;
            s.rqueue = m->idiag_rqueue;
            s.wqueue = m->idiag_wqueue;
            s.expires_ms = m->idiag_expires;
            out.push_back(s);
        }
    }
}

bool all_digits(const char* s) {
    if (*s == '\0') return false;
    for (; *s != '\0'; ++s)
        if (*s < '0' || *s > '9') return false;
    return true;
}

// The inode of a "socket:[12345]" link target, or 0.
std::uint32_t socket_inode(std::string_view link) {
    constexpr std::string_view kPrefix = "socket:[";
    if (!link.starts_with(kPrefix) || !link.ends_with(']')) return 0;
    link.remove_prefix(kPrefix.size());
    link.remove_suffix(1);
    std::uint32_t inode = 0;
    auto [end, ec] = std::from_chars(link.data(), link.data() + link.size(), inode);
    return ec == std::errc() && end == link.data() + link.size() ? inode : 0;
}

std::string read_comm(int proc, const char* pid) {
    std::string path = std::string(pid) + "/comm";
    Fd fd(::openat(proc, path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return "?";
    char buf[64] = {};
    ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
    if (n <= 0) return "?";
    std::string comm(buf, static_cast<std::size_t>(n));
    while (!comm.empty() && comm.back() == '\n') comm.pop_back();
    return comm;
}

}  // namespace

const char* state_name(unsigned state) {
    static constexpr const char* kNames[] = {
        "UNKNOWN", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",   "TIME_WAIT",
        "CLOSE",   "CLOSE_WAIT",  "LAST_ACK", "LISTEN",   "CLOSING",   "NEW_SYN_RECV"};
    return state < kStateCount ? kNames[state] : "UNKNOWN";
}

std::vector<TcpSocket> dump_tcp(std::uint32_t states) {
    Fd nl(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
    if (!nl) throw_errno("socket(AF_NETLINK, NETLINK_SOCK_DIAG)");
    std::vector<TcpSocket> out;
    dump_family(nl.get(), AF_INET, states, 1, out);
    dump_family(nl.get(), AF_INET6, states, 2, out);
    return out;
}

std::unordered_map<std::uint32_t, Owner> socket_owners(const std::vector<std::uint32_t>& wanted) {
    std::unordered_set<std::uint32_t> want(wanted.begin(), wanted.end());
    want.erase(0);
    std::unordered_map<std::uint32_t, Owner> owners;
    if (want.empty() && !wanted.empty()) return owners;
    Fd proc(::open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!proc) return owners;
    std::unique_ptr<DIR, int (*)(DIR*)> dir(::fdopendir(::dup(proc.get())), ::closedir);
    if (!dir) return owners;
    std::vector<int> pids;
    while (auto* e = ::readdir(dir.get()))
        if (all_digits(e->d_name)) pids.push_back(std::atoi(e->d_name));
    std::sort(pids.begin(), pids.end());  // lowest PID first: the parent of a fork, usually
    for (int pid : pids) {
        auto name = std::to_string(pid);
        int fd_dir =
            ::openat(proc.get(), (name + "/fd").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd_dir < 0) continue;  // gone, or not ours to look at
        std::unique_ptr<DIR, int (*)(DIR*)> fds(::fdopendir(fd_dir), ::closedir);
        if (!fds) {
            ::close(fd_dir);
            continue;
        }
        std::string comm;
        while (auto* e = ::readdir(fds.get())) {
            if (e->d_name[0] == '.') continue;
            char link[64];
            ssize_t n = ::readlinkat(fd_dir, e->d_name, link, sizeof link);
            if (n <= 0 || n == static_cast<ssize_t>(sizeof link)) continue;
            auto inode = socket_inode(std::string_view(link, static_cast<std::size_t>(n)));
            if (inode == 0 || (!want.empty() && !want.contains(inode))) continue;
            if (owners.contains(inode)) continue;
            if (comm.empty()) comm = read_comm(proc.get(), name.c_str());
            owners.emplace(inode, Owner{pid, comm});
        }
    }
    return owners;
}

}  // namespace tcpfix::tools::diag
