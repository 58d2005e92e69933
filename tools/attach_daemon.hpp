// The foreground loop of `tcpfix attach`: reads the programs' events, acts
// on them over sock_diag, keeps the counters and the log.
//
// - TIME_WAIT (--close rst): a matched connection whose socket went
//   FIN_WAIT2/CLOSING -> CLOSE has a TIME_WAIT entry in its place; it is
//   looked up by 4-tuple, and destroyed if it is a TIME_WAIT entry (with its
//   cookie: a new connection that took the 4-tuple meanwhile is refused by
//   the kernel, ESTALE).
// - CLOSE_WAIT (--reap-close-wait D): a matched socket that entered
//   CLOSE_WAIT is remembered; if it is still in CLOSE_WAIT (same cookie) D
//   later, it is destroyed and logged as a leak with the process that
//   connected it. Sockets of the cgroup that predate the attach are found by
//   a sweep of CLOSE_WAIT sockets by cgroup id (at start, then now and then).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "bpf/attach.h"
#include "policy/config.hpp"
#include "policy/stats.hpp"
#include "tools/attach_bpf.hpp"
#include "tools/attach_sockdiag.hpp"
#include "tools/fd.hpp"

namespace tcpfix::tools::attach {

// Lines "tcpfix[PID] LEVEL: ...", as the library writes them, to stderr or
// --log-file; with --json, events also as JSON objects on stdout.
class Log {
  public:
    Log(const policy::Config& config, bool json);
    bool enabled(policy::LogLevel level) const;
    void line(policy::LogLevel level, const std::string& text);
    void event(const std::string& json_object);  // only with --json

  private:
    policy::LogLevel level_;
    std::string tag_;
    Fd file_;
    bool json_;
};

struct DaemonSettings {
    policy::Config config;
    std::string cgroup;  // the directory attached to
    bool sweep = true;   // look for CLOSE_WAIT sockets older than the attach
    pid_t child = -1;    // `-- CMD`: its PID; the loop ends when it exits
    std::uint64_t own_netns = 0;
    // --cgroup/--unit: when the directory goes (systemd removes a stopped
    // unit's cgroup) the links are dropped; when it comes back (restarted),
    // the programs are attached to the new one.
    bool follow = false;
};

class Daemon {
  public:
    Daemon(DaemonSettings settings, Programs& programs, Log& log);
    ~Daemon();

    // Runs until SIGTERM/SIGINT/SIGHUP (returns 0) or, with a child, until
    // it exits (returns its status: the exit code, or 128 + signal). With a
    // child, those signals are passed on to it instead. `signals` is a
    // signalfd for them and SIGCHLD. Detaches before returning.
    int run(int signals);

    // Writes the stats file now (also called at the end of run()).
    void write_stats();

  private:
    static constexpr std::uint64_t kStatsRefreshNs = 2'000'000'000;

    struct Pending {  // a socket in CLOSE_WAIT, waiting for its deadline
        SocketKey key;
        std::uint64_t since_ns = 0;
        std::uint32_t pid = 0;
        std::string comm;
        bool from_sweep = false;
    };

    void on_event(const tcpfix_event& e);
    void on_time_wait(const tcpfix_event& e);
    void reap_due(std::uint64_t now);
    void reap(Pending& p, std::uint64_t now);
    void sweep(std::uint64_t now);
    void follow_cgroup(std::uint64_t now);
    void maybe_write_stats(std::uint64_t now);
    void count_foreign(const tcpfix_event& e);
    std::string render_stats() const;

    DaemonSettings s_;
    Programs& programs_;
    Log& log_;
    SockDiag diag_;
    std::int64_t reap_ns_ = 0;
    std::unordered_map<std::uint64_t, Pending> close_wait_;  // by cookie
    std::multimap<std::uint64_t, std::uint64_t> deadlines_;  // deadline -> cookie
    std::uint64_t next_sweep_ns_ = 0;
    std::uint64_t next_follow_ns_ = 0;
    std::uint64_t cgroup_id_ = 0;  // of the directory attached to; 0 while it is gone
    std::uint64_t next_stats_ns_ = 0;
    std::uint64_t events_lost_seen_ = 0;
    std::string stats_path_;

    // What the daemon did (the BPF side counts the rest).
    std::uint64_t time_wait_events_ = 0, time_wait_destroyed_ = 0, time_wait_gone_ = 0,
                  time_wait_failed_ = 0;
    std::uint64_t close_wait_seen_ = 0, close_wait_left_ = 0, close_wait_reaped_ = 0,
                  close_wait_swept_ = 0, close_wait_failed_ = 0;
    std::uint64_t foreign_netns_ = 0;
    // From the state change's event to the TIME_WAIT entry's destruction.
    policy::LatencyHistogram time_wait_lifetime_;
    std::uint64_t stats_activity_ = ~std::uint64_t{0};
    std::unique_ptr<policy::Counters>
        stats_;  // rendered by the preload's code; per-destination leaks
};

}  // namespace tcpfix::tools::attach
