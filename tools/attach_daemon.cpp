#include "tools/attach_daemon.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <unordered_set>

#include "tools/attach_cgroup.hpp"
#include "tools/diag.hpp"

namespace tcpfix::tools::attach {
namespace {

constexpr std::uint8_t kFinWait2 = 5, kTimeWait = 6, kCloseWait = 8, kListen = 10;
constexpr std::uint8_t kTimeWaitTimer = 3;  // inet_diag's idiag_timer of a TIME_WAIT mini-socket

// A TIME_WAIT mini-socket. An orphaned socket whose FIN was acknowledged
// becomes one at once, still waiting for the peer's FIN: sock_diag reports
// that one as FIN_WAIT2 (its substate), with the TIME_WAIT timer.
bool is_time_wait_entry(const SocketInfo& s) {
    return s.timer == kTimeWaitTimer && (s.state == kTimeWait || s.state == kFinWait2);
}

std::uint64_t monotonic_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ULL +
           static_cast<std::uint64_t>(ts.tv_nsec);
}

SocketKey key_of(const tcpfix_event& e) {
    SocketKey k;
    k.family = e.family;
    std::memcpy(k.local, e.local, sizeof k.local);
    std::memcpy(k.remote, e.remote, sizeof k.remote);
    k.local_port = e.local_port;
    k.remote_port = e.remote_port;
    return k;
}

// The address as policy sees it (IPv4-mapped IPv6 as IPv4).
policy::Endpoint endpoint(std::uint8_t family, const std::uint8_t* addr, std::uint16_t port) {
    sockaddr_storage ss{};
    unsigned len;
    if (family == AF_INET) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        std::memcpy(&sin->sin_addr, addr, 4);
        len = sizeof *sin;
    } else {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        std::memcpy(&sin6->sin6_addr, addr, 16);
        len = sizeof *sin6;
    }
    auto ep = policy::endpoint_from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
    return ep ? *ep : policy::Endpoint{};
}

std::string comm_text(const char* comm, std::size_t size) {
    std::string out;
    for (std::size_t i = 0; i < size && comm[i] != '\0'; ++i)
        out += (comm[i] >= 0x20 && comm[i] < 0x7f && comm[i] != '"' && comm[i] != '\\') ? comm[i]
                                                                                        : '?';
    return out;
}

// TCPFIX_STATS's %p: the daemon's PID.
std::string expand_pid(const std::string& path) {
    std::string out;
    for (std::size_t i = 0; i < path.size(); ++i) {
        if (path[i] == '%' && i + 1 < path.size() && path[i + 1] == 'p') {
            out += std::to_string(::getpid());
            ++i;
        } else {
            out += path[i];
        }
    }
    return out;
}

}  // namespace

Daemon::Daemon(DaemonSettings settings, Programs& programs, Log& log)
    : s_(std::move(settings)),
      programs_(programs),
      log_(log),
      stats_(std::make_unique<policy::Counters>()) {
    reap_ns_ = s_.config.reap_close_wait_ns.value_or(0);
    if (!s_.config.stats_path.empty()) stats_path_ = expand_pid(s_.config.stats_path);
}

Daemon::~Daemon() = default;

void Daemon::count_foreign(const tcpfix_event& e) {
    if (foreign_netns_++ == 0)
        log_.line(policy::LogLevel::Warn,
                  fmt::format("a matched socket of the cgroup lives in another network namespace "
                              "(cookie {}): the SYN RTO and source addresses apply there, but "
                              "tcpfix attach removes TIME_WAIT entries and reaps CLOSE_WAIT only "
                              "in its own; run it in that namespace (nsenter --net=...)",
                              e.netns));
}

void Daemon::on_event(const tcpfix_event& e) {
    if (s_.own_netns != 0 && e.netns != 0 && e.netns != s_.own_netns) {
        count_foreign(e);
        return;
    }
    switch (e.kind) {
        case TCPFIX_EV_TIME_WAIT:
            on_time_wait(e);
            break;
        case TCPFIX_EV_CLOSE_WAIT: {
            if (reap_ns_ == 0) break;
            ++close_wait_seen_;
            Pending p;
            p.key = key_of(e);
            p.key.cookie = e.cookie;
            p.since_ns = e.time_ns;
            p.pid = e.pid;
            p.comm = comm_text(e.comm, sizeof e.comm);
            close_wait_[e.cookie] = std::move(p);
            deadlines_.emplace(e.time_ns + static_cast<std::uint64_t>(reap_ns_), e.cookie);
            break;
        }
        case TCPFIX_EV_LEFT_CLOSE_WAIT:
            if (close_wait_.erase(e.cookie) != 0) ++close_wait_left_;
            break;
        default:
            break;
    }
}

void Daemon::on_time_wait(const tcpfix_event& e) {
    ++time_wait_events_;
    auto key = key_of(e);
    // The TIME_WAIT entry has a cookie of its own: find it by 4-tuple, and
    // act only on a TIME_WAIT entry, with that cookie.
    std::optional<SocketInfo> found;
    try {
        found = diag_.lookup(key);
    } catch (const std::exception& ex) {
        ++time_wait_failed_;
        log_.line(policy::LogLevel::Warn, fmt::format("TIME_WAIT lookup failed: {}", ex.what()));
        return;
    }
    if (!found || !is_time_wait_entry(*found)) {
        ++time_wait_gone_;  // reset by the peer, or already reused: nothing to remove
        return;
    }
    key.cookie = found->key.cookie;
    int err = diag_.destroy(key);
    if (err == 0) {
        ++time_wait_destroyed_;
        std::uint64_t now = monotonic_ns();
        time_wait_lifetime_.record_ns(
            static_cast<std::int64_t>(now - std::min<std::uint64_t>(now, e.time_ns)));
        if (log_.enabled(policy::LogLevel::Debug))
            log_.line(policy::LogLevel::Debug,
                      fmt::format("TIME_WAIT entry {} -> {} destroyed",
                                  endpoint(e.family, e.local, e.local_port),
                                  endpoint(e.family, e.remote, e.remote_port)));
    } else if (err == ENOENT || err == ESTALE) {
        ++time_wait_gone_;
    } else if (time_wait_failed_++ == 0) {
        log_.line(policy::LogLevel::Warn,
                  fmt::format("cannot destroy a TIME_WAIT entry: {}", policy::errno_name(err)));
    }
}

void Daemon::reap_due(std::uint64_t now) {
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
        auto cookie = deadlines_.begin()->second;
        deadlines_.erase(deadlines_.begin());
        auto it = close_wait_.find(cookie);
        if (it == close_wait_.end()) continue;  // the application closed it in time
        // A sweep may have found the socket just before its own event came
        // in, with a later time: that event's deadline is the one to keep.
        if (it->second.since_ns + static_cast<std::uint64_t>(reap_ns_) > now) continue;
        reap(it->second, now);
        close_wait_.erase(it);
    }
}

void Daemon::reap(Pending& p, std::uint64_t now) {
    std::optional<SocketInfo> found;
    try {
        found = diag_.lookup(p.key);  // with its cookie: this socket, no other
    } catch (const std::exception& ex) {
        ++close_wait_failed_;
        log_.line(policy::LogLevel::Warn, fmt::format("CLOSE_WAIT lookup failed: {}", ex.what()));
        return;
    }
    if (!found || found->state != kCloseWait) return;  // gone, or closed by the application
    int err = diag_.destroy(p.key);
    if (err == ENOENT || err == ESTALE) return;
    if (err != 0) {
        if (close_wait_failed_++ == 0)
            log_.line(
                policy::LogLevel::Warn,
                fmt::format("cannot destroy a socket in CLOSE_WAIT: {}", policy::errno_name(err)));
        return;
    }
    ++close_wait_reaped_;
    auto local = endpoint(p.key.family, p.key.local, p.key.local_port);
    auto remote = endpoint(p.key.family, p.key.remote, p.key.remote_port);
    auto& d = stats_->destinations.get(remote);
    policy::bump(d.leaks);
    policy::bump(d.reaped);
    int pid = static_cast<int>(p.pid);
    std::string comm = p.comm;
    if (pid == 0 && found->inode != 0) {  // connected before the attach, or no pid in sock_ops
        auto owners = diag::socket_owners({found->inode});
        if (auto o = owners.find(found->inode); o != owners.end()) {
            pid = o->second.pid;
            comm = o->second.command;
        }
    }
    auto age_ns = static_cast<std::int64_t>(now - std::min(now, p.since_ns));
    // sock_diag's receive queue is rcv_nxt - copied_seq: in CLOSE_WAIT the
    // peer's FIN is one of those sequence numbers, not a byte to read.
    std::uint32_t unread = found->rqueue > 0 ? found->rqueue - 1 : 0;
    std::string who = pid != 0 ? fmt::format("{} (pid {})", comm, pid) : "a process (pid unknown)";
    log_.line(policy::LogLevel::Warn,
              fmt::format("leak: {} left its connection {} -> {} in CLOSE_WAIT for {}{} (the peer "
                          "closed, the application never did){}; destroyed, its port is free",
                          who, local, remote, p.from_sweep ? "at least " : "",
                          policy::format_duration(age_ns),
                          unread != 0 ? fmt::format(", {} unread bytes", unread) : std::string()));
    log_.event(fmt::format(
        "{{\"event\":\"leak\",\"pid\":{},\"comm\":{},\"local\":{},\"remote\":{},\"age_ms\":{:.1f},"
        "\"unread\":{},\"before_attach\":{}}}",
        pid, policy::json_quote(comm), policy::json_quote(policy::to_string(local)),
        policy::json_quote(policy::to_string(remote)), static_cast<double>(age_ns) / 1e6, unread,
        p.from_sweep));
}

void Daemon::sweep(std::uint64_t now) {
    next_sweep_ns_ = now + static_cast<std::uint64_t>(std::clamp<std::int64_t>(
                               reap_ns_ / 2, 1'000'000'000, 10'000'000'000));
    std::vector<SocketInfo> sockets;
    try {
        sockets = diag_.dump((1u << kCloseWait) | (1u << kListen));
    } catch (const std::exception& ex) {
        log_.line(policy::LogLevel::Warn, fmt::format("CLOSE_WAIT sweep failed: {}", ex.what()));
        return;
    }
    auto ids = subtree_ids(s_.cgroup);
    std::unordered_set<std::uint64_t> ours(ids.begin(), ids.end());
    std::unordered_set<std::uint32_t> listening;  // a socket on a listening port was accepted
    for (const auto& s : sockets)
        if (s.state == kListen) listening.insert(s.key.local_port);
    for (const auto& s : sockets) {
        if (s.state != kCloseWait || s.cgroup_id == 0 || !ours.contains(s.cgroup_id)) continue;
        if (listening.contains(s.key.local_port) || close_wait_.contains(s.key.cookie)) continue;
        if (!s_.config.match.matches(endpoint(s.key.family, s.key.remote, s.key.remote_port)))
            continue;
        Pending p;
        p.key = s.key;
        p.since_ns = now;
        p.from_sweep = true;
        ++close_wait_swept_;
        close_wait_[s.key.cookie] = std::move(p);
        deadlines_.emplace(now + static_cast<std::uint64_t>(reap_ns_), s.key.cookie);
    }
}

void Daemon::follow_cgroup(std::uint64_t now) {
    next_follow_ns_ = now + 1'000'000'000;
    struct stat st {};
    bool there = ::stat(s_.cgroup.c_str(), &st) == 0;
    std::uint64_t id = there ? st.st_ino : 0;
    if (id == cgroup_id_) return;
    if (cgroup_id_ != 0) {
        programs_.detach();
        log_.line(policy::LogLevel::Warn,
                  there ? fmt::format("{} was made anew (its unit restarted?): attaching again",
                                      s_.cgroup)
                        : fmt::format("{} is gone (its unit stopped?): detached; attaching again "
                                      "when it is back",
                                      s_.cgroup));
    }
    cgroup_id_ = 0;
    if (!there) return;
    try {
        Fd dir = open_cgroup(s_.cgroup);
        programs_.attach(dir.get());
        cgroup_id_ = id;
        log_.line(policy::LogLevel::Info, fmt::format("attached to {} again", s_.cgroup));
        log_.event(fmt::format("{{\"event\":\"attached\",\"cgroup\":{},\"again\":true}}",
                               policy::json_quote(s_.cgroup)));
    } catch (const std::exception& e) {
        log_.line(policy::LogLevel::Warn,
                  fmt::format("cannot attach to {} again: {}", s_.cgroup, e.what()));
    }
}

int Daemon::run(int signals) {
    Fd ep(::epoll_create1(EPOLL_CLOEXEC));
    if (!ep) throw_errno("epoll_create1");
    for (int fd : {programs_.events_fd(), signals}) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) != 0) throw_errno("epoll_ctl");
    }
    auto handle = [this](const tcpfix_event& e) { on_event(e); };
    std::uint64_t now = monotonic_ns();
    bool sweeping = reap_ns_ > 0 && s_.sweep;
    if (sweeping) sweep(now);
    next_stats_ns_ = now + kStatsRefreshNs;
    if (s_.follow) {
        cgroup_id_ = cgroup_id(s_.cgroup);  // main() attached to it
        next_follow_ns_ = now + 1'000'000'000;
    }
    int status = 0;
    bool stop = false;
    std::string reason;
    while (!stop) {
        std::uint64_t wake = now + 1'000'000'000;
        if (!deadlines_.empty()) wake = std::min<std::uint64_t>(wake, deadlines_.begin()->first);
        if (sweeping) wake = std::min(wake, next_sweep_ns_);
        if (!stats_path_.empty()) wake = std::min(wake, next_stats_ns_);
        if (s_.follow) wake = std::min(wake, next_follow_ns_);
        int timeout_ms = wake <= now ? 0 : static_cast<int>((wake - now + 999'999) / 1'000'000);
        epoll_event evs[4];
        int n = ::epoll_wait(ep.get(), evs, 4, timeout_ms);
        if (n < 0 && errno != EINTR) throw_errno("epoll_wait");
        programs_.consume(handle);
        auto lost = programs_.totals().c[TCPFIX_C_EVENTS_LOST];
        if (lost != events_lost_seen_) {
            log_.line(policy::LogLevel::Warn,
                      fmt::format("{} events were lost (the ring buffer was full); CLOSE_WAIT "
                                  "sockets are swept for instead",
                                  lost - events_lost_seen_));
            events_lost_seen_ = lost;
            if (reap_ns_ > 0) next_sweep_ns_ = 0, sweeping = true;
        }
        signalfd_siginfo si{};
        while (::read(signals, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
            int sig = static_cast<int>(si.ssi_signo);
            if (sig == SIGCHLD) {
                if (s_.child <= 0) continue;
                int st = 0;
                pid_t r = ::waitpid(s_.child, &st, WNOHANG);
                if (r == s_.child) {
                    status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                    reason = WIFEXITED(st)
                                 ? fmt::format("the command exited with status {}", WEXITSTATUS(st))
                                 : fmt::format("the command was killed by signal {}", WTERMSIG(st));
                    s_.child = -1;
                    stop = true;
                }
                continue;
            }
            if (s_.child > 0) {
                log_.line(policy::LogLevel::Info,
                          fmt::format("{}: passed on to the command (pid {}); detaching when it "
                                      "exits",
                                      ::strsignal(sig), s_.child));
                ::kill(s_.child, sig);
                continue;
            }
            reason = ::strsignal(sig);
            stop = true;
        }
        now = monotonic_ns();
        reap_due(now);
        if (sweeping && now >= next_sweep_ns_) sweep(now);
        if (s_.follow && now >= next_follow_ns_) follow_cgroup(now);
        maybe_write_stats(now);
    }
    // Detach first: no new event after this. Then what was already queued:
    // TIME_WAIT entries reported before the detach still go.
    programs_.detach();
    programs_.consume(handle);
    write_stats();
    log_.line(policy::LogLevel::Info,
              fmt::format("detached from {} ({}); {} TIME_WAIT entries destroyed, {} CLOSE_WAIT "
                          "leaks reaped{}",
                          s_.cgroup, reason, time_wait_destroyed_, close_wait_reaped_,
                          close_wait_.empty()
                              ? std::string()
                              : fmt::format(", {} sockets in CLOSE_WAIT not yet due left as they "
                                            "are",
                                            close_wait_.size())));
    log_.event(fmt::format("{{\"event\":\"detached\",\"cgroup\":{},\"reason\":{},\"status\":{}}}",
                           policy::json_quote(s_.cgroup), policy::json_quote(reason), status));
    return status;
}

}  // namespace tcpfix::tools::attach
