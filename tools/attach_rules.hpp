// policy's TCPFIX_MATCH rules and addresses in the layout the BPF programs
// read (bpf/attach.h). Header-only: the unit tests check the BPF matcher
// against policy::MatchRule with exactly this conversion.
#pragma once

#include <cstring>

#include "bpf/attach.h"
#include "policy/net.hpp"

namespace tcpfix::tools::attach {

inline tcpfix_rule to_bpf_rule(const policy::MatchRule& rule) {
    tcpfix_rule r{};
    r.family = static_cast<__u8>(rule.prefix.family);
    r.prefix_len = static_cast<__u8>(rule.prefix_len);
    r.port = rule.port;
    std::memcpy(r.addr, rule.prefix.bytes.data(), rule.prefix.family == AF_INET ? 4 : 16);
    return r;
}

inline void to_bpf_addr(__u8 (&out)[16], const policy::IpAddr& ip) {
    std::memset(out, 0, sizeof out);
    std::memcpy(out, ip.bytes.data(), ip.family == AF_INET ? 4 : 16);
}

}  // namespace tcpfix::tools::attach
