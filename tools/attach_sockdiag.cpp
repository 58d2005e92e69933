#include "tools/attach_sockdiag.hpp"

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>

#ifndef INET_DIAG_CGROUP_ID
#define INET_DIAG_CGROUP_ID 21  // Linux 5.9
#endif

namespace tcpfix::tools::attach {
namespace {

struct Request {
    nlmsghdr header;
    inet_diag_req_v2 body;
};

void fill_id(inet_diag_sockid& id, const SocketKey& k) {
    id.idiag_sport = htons(k.local_port);
    id.idiag_dport = htons(k.remote_port);
    std::memcpy(id.idiag_src, k.local, k.family == AF_INET ? 4 : 16);
    std::memcpy(id.idiag_dst, k.remote, k.family == AF_INET ? 4 : 16);
    id.idiag_if = 0;
    id.idiag_cookie[0] = static_cast<std::uint32_t>(k.cookie);
    id.idiag_cookie[1] = static_cast<std::uint32_t>(k.cookie >> 32);
}

SocketInfo parse(const nlmsghdr* h) {
    auto* m = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
    SocketInfo s;
    s.key.family = m->idiag_family;
    std::size_t n = m->idiag_family == AF_INET ? 4 : 16;
    std::memcpy(s.key.local, m->id.idiag_src, n);
    std::memcpy(s.key.remote, m->id.idiag_dst, n);
    s.key.local_port = ntohs(m->id.idiag_sport);
    s.key.remote_port = ntohs(m->id.idiag_dport);
    s.key.cookie =
        std::uint64_t{m->id.idiag_cookie[0]} | (std::uint64_t{m->id.idiag_cookie[1]} << 32);
    s.state = m->idiag_state;
    s.timer = m->idiag_timer;
    s.inode = m->idiag_inode;
    s.rqueue = m->idiag_rqueue;
    auto attr_len = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof *m));
    for (auto* a = reinterpret_cast<const rtattr*>(m + 1); RTA_OK(a, attr_len);
         a = RTA_NEXT(a, attr_len)) {
        if (a->rta_type == INET_DIAG_CGROUP_ID && RTA_PAYLOAD(a) >= sizeof(std::uint64_t))
            std::memcpy(&s.cgroup_id, RTA_DATA(a), sizeof s.cgroup_id);
    }
    return s;
}

}  // namespace

SockDiag::SockDiag() : nl_(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG)) {
    if (!nl_) throw_errno("socket(AF_NETLINK, NETLINK_SOCK_DIAG)");
    int size = 1 << 20;
    ::setsockopt(nl_.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    sockaddr_nl local{};
    local.nl_family = AF_NETLINK;
    if (::bind(nl_.get(), reinterpret_cast<sockaddr*>(&local), sizeof local) != 0)
        throw_errno("bind(NETLINK_SOCK_DIAG)");
}

// Sends one request and reads its answer: messages into `out` (when given),
// and the errno of an NLMSG_ERROR (0 for an ACK or a finished dump).
int SockDiag::request(std::uint16_t type, std::uint16_t flags, const SocketKey& key,
                      std::uint32_t states, std::vector<SocketInfo>* out) {
    Request r{};
    r.header.nlmsg_len = sizeof r;
    r.header.nlmsg_type = type;
    r.header.nlmsg_flags = static_cast<std::uint16_t>(NLM_F_REQUEST | flags);
    r.header.nlmsg_seq = ++seq_;
    r.body.sdiag_family = key.family;
    r.body.sdiag_protocol = IPPROTO_TCP;
    r.body.idiag_states = states;
    fill_id(r.body.id, key);
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    while (::sendto(nl_.get(), &r, sizeof r, 0, reinterpret_cast<sockaddr*>(&kernel),
                    sizeof kernel) < 0) {
        if (errno != EINTR) throw_errno("sock_diag sendto");
    }
    bool dump = (flags & NLM_F_DUMP) != 0;
    constexpr std::size_t kBuffer = 64 * 1024;
    auto buffer = std::make_unique<std::uint8_t[]>(kBuffer);
    while (true) {
        ssize_t n = ::recv(nl_.get(), buffer.get(), kBuffer, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_errno("sock_diag recv");
        }
        if (n == 0) throw std::runtime_error("sock_diag: the kernel closed the socket");
        auto left = static_cast<int>(n);
        for (auto* h = reinterpret_cast<nlmsghdr*>(buffer.get()); NLMSG_OK(h, left);
             h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_seq != seq_) continue;  // a late answer to an earlier request
            if (h->nlmsg_type == NLMSG_DONE) return 0;
            if (h->nlmsg_type == NLMSG_ERROR) {
                auto* err = static_cast<nlmsgerr*>(NLMSG_DATA(h));
                return err->error < 0 ? -err->error : err->error;
            }
            if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
                h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg)))
                continue;
            if (out != nullptr) out->push_back(parse(h));
            if (!dump) return 0;  // an exact lookup answers with one message
        }
    }
}

std::optional<SocketInfo> SockDiag::lookup(const SocketKey& key) {
    std::vector<SocketInfo> found;
    int err = request(SOCK_DIAG_BY_FAMILY, 0, key, ~0u, &found);
    if (err == ENOENT || err == ESTALE) return std::nullopt;
    if (err != 0) {
        errno = err;
        throw_errno("sock_diag lookup");
    }
    if (found.empty()) return std::nullopt;
    return found.front();
}

int SockDiag::destroy(const SocketKey& key) {
    return request(SOCK_DESTROY, NLM_F_ACK, key, ~0u, nullptr);
}

std::vector<SocketInfo> SockDiag::dump(std::uint32_t states) {
    std::vector<SocketInfo> out;
    for (std::uint8_t family : {std::uint8_t{AF_INET}, std::uint8_t{AF_INET6}}) {
        SocketKey any;
        any.family = family;
        int err = request(SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, any, states, &out);
        if (err != 0) {
            errno = err;
            throw_errno("sock_diag dump");
        }
    }
    return out;
}

}  // namespace tcpfix::tools::attach
