// tcpfix attach's BPF programs (bpf/attach.bpf.c) as the daemon holds them:
// configured and loaded once, attached to one cgroup by BPF links (so a
// daemon that dies, however it dies, leaves nothing attached: the kernel
// drops a link with its last descriptor), their events and counters read.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bpf/attach.h"
#include "policy/net.hpp"

struct tcpfix_attach;  // the skeleton (attach.skel.h)
struct ring_buffer;

namespace tcpfix::tools::attach {

struct BpfSettings {
    std::optional<std::int64_t> syn_rto_ns;  // --connect-timeout
    bool want_time_wait = false;             // --close rst
    bool want_close_wait = false;            // --reap-close-wait
    std::vector<policy::MatchRule> rules;    // --match (empty: everything)
    std::vector<policy::IpAddr> sources;     // --source-addrs, in the order given
    bool record_pid = false;                 // sock_ops may call bpf_get_current_pid_tgid()
    bool record_netns = false;               // sock_ops may call bpf_get_netns_cookie()
    bool kernel_config = true;  // /proc/config.gz or /boot/config-*: CONFIG_HZ for libbpf
};

// The BPF counters summed over CPUs.
struct BpfTotals {
    std::uint64_t c[TCPFIX_C_COUNT] = {};
};

class Programs {
  public:
    // Opens the embedded object, writes the settings into its read-only
    // data, loads only the programs the settings need. Throws
    // std::runtime_error with libbpf's reason.
    explicit Programs(const BpfSettings& settings);
    ~Programs();
    Programs(const Programs&) = delete;
    Programs& operator=(const Programs&) = delete;

    // Attaches by link to the cgroup (an open directory descriptor).
    void attach(int cgroup_fd);
    // Destroys the links: no program of ours runs from here on.
    void detach();
    bool attached() const { return attached_; }

    // Readable when events wait; consume() hands each to the callback.
    int events_fd() const;
    int consume(const std::function<void(const tcpfix_event&)>& on_event);

    BpfTotals totals() const;
    int hz() const;                     // the kernel's CONFIG_HZ (libbpf's __kconfig)
    std::uint32_t rto_jiffies() const;  // what TIMEOUT_INIT answers (0 until asked once)
    // IDs of the loaded programs (for the log, and `bpftool prog show id`).
    std::vector<std::uint32_t> program_ids() const;

  private:
    tcpfix_attach* skel_ = nullptr;
    ring_buffer* ring_ = nullptr;
    std::function<void(const tcpfix_event&)> handler_;
    bool attached_ = false;
    BpfSettings settings_;
};

// libbpf's messages (warnings and errors) are kept, not printed: the last
// one explains a failed load. Cleared by each Programs constructor.
std::string last_libbpf_message();

}  // namespace tcpfix::tools::attach
