// `tcpfix attach (--cgroup PATH | --unit NAME.service | -- CMD [ARGS]) [options]`:
// the policies the kernel can carry, applied by BPF to every program in a
// cgroup, including those LD_PRELOAD cannot reach (static and Go binaries,
// set-user-ID programs, services whose environment nobody can change).
//
// What the kernel carries, and how (bpf/attach.bpf.c, tools/attach_daemon.cpp):
//   --connect-timeout D    the SYN's initial retransmission timeout (sock_ops
//                          TIMEOUT_INIT), not a deadline
//   --source-addrs LIST    bind in cgroup/connect4/6, port 0 (NO_PORT semantics)
//   --reap-close-wait D    destroy (SOCK_DESTROY) matched sockets left in
//                          CLOSE_WAIT longer than D, each logged as a leak
//   --close rst            destroy a matched connection's TIME_WAIT entry as
//                          soon as it appears
//   --match, --log, --log-file, --stats, --tag, --disable as for `tcpfix run`.
// Refused at start, one line each: --connect-retries, --reconnect-backoff,
// --connect-rate, --close rst-always, --bind-no-port, --port-range.
#pragma once

#include <string>
#include <vector>

#include "policy/config.hpp"

namespace tcpfix::tools::attach {

// Why attach cannot carry what `config` asks for: one line per option
// (prefixed "tcpfix: attach: "), empty when it can carry all of it.
std::vector<std::string> uncarried(const policy::Config& config);

}  // namespace tcpfix::tools::attach
