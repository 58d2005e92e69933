#include "tools/attach.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>

#include "tools/attach_bpf.hpp"
#include "tools/attach_cgroup.hpp"
#include "tools/attach_daemon.hpp"
#include "tools/attach_probe.hpp"
#include "tools/command.hpp"
#include "tools/fd.hpp"
#include "tools/policy_options.hpp"

extern char** environ;

namespace tcpfix::tools {
namespace attach {
namespace {

constexpr int kExitNotFound = 127;
constexpr int kExitCannotExec = 126;

struct AttachOptions {
    PolicyOptions policy;
    std::string cgroup;
    std::string unit;
    std::vector<std::string> command;
    bool json = false;
};

// The TCPFIX_* variables of the environment, then the options over them.
std::vector<std::pair<std::string, std::string>> variables(const AttachOptions& o) {
    std::vector<std::pair<std::string, std::string>> out;
    auto given = o.policy.given();
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
        std::string_view entry(*e);
        if (!entry.starts_with("TCPFIX_")) continue;
        auto eq = entry.find('=');
        std::string name(entry.substr(0, eq));
        std::string value(eq == std::string_view::npos ? "" : entry.substr(eq + 1));
        bool overridden = false;
        for (const auto& g : given) overridden = overridden || g.first == name;
        if (!overridden) out.emplace_back(std::move(name), std::move(value));
    }
    for (auto& g : given) out.push_back(std::move(g));
    return out;
}

// "--connect-retries (TCPFIX_CONNECT_RETRIES=3)"
std::string named(const policy::Config& c, std::string_view variable) {
    const auto* v = policy::find_variable(variable);
    std::string value;
    for (const auto& [name, given] : c.given)
        if (name == variable) value = given;
    return fmt::format("--{} ({}={})", v != nullptr ? v->cli : "?", variable, value);
}

sockaddr_storage socket_address(const policy::IpAddr& ip, socklen_t& len) {
    sockaddr_storage ss{};
    if (ip.family == AF_INET) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
        sin->sin_family = AF_INET;
        std::memcpy(&sin->sin_addr, ip.bytes.data(), 4);
        len = sizeof *sin;
    } else {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
        sin6->sin6_family = AF_INET6;
        std::memcpy(&sin6->sin6_addr, ip.bytes.data(), 16);
        len = sizeof *sin6;
    }
    return ss;
}

// The library's own check: each source address must be one of this host's
// (in this network namespace). Returns the refusal line, or "".
std::string non_local_source(const policy::Config& c) {
    for (const auto& ip : c.source_addrs) {
        Fd s(::socket(ip.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (!s) continue;
        int one = 1;
        ::setsockopt(s.get(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        socklen_t len = 0;
        auto sa = socket_address(ip, len);
        if (::bind(s.get(), reinterpret_cast<sockaddr*>(&sa), len) != 0 && errno == EADDRNOTAVAIL) {
            std::string value;
            for (const auto& [name, v] : c.given)
                if (name == "TCPFIX_SOURCE_ADDRS") value = v;
            return policy::refusal(
                "TCPFIX_SOURCE_ADDRS", value,
                "addresses of this host; " + policy::to_string(ip) + " is not one");
        }
    }
    return "";
}

sigset_t daemon_signals() {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGCHLD}) sigaddset(&set, sig);
    return set;
}

// Forks CMD into the cgroup: the child enters it before exec, so every
// socket the command makes belongs to it. Returns the child's PID; reports a
// failed exec through the pipe (errno), as the parent cannot see it otherwise.
pid_t start_command(const std::vector<std::string>& command, const ChildCgroup& cgroup,
                    const sigset_t& blocked, int& exec_error) {
    int report[2];
    if (::pipe2(report, O_CLOEXEC) != 0) throw_errno("pipe2");
    std::vector<std::string> args = command;
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) throw_errno("fork");
    if (pid == 0) {
        ::close(report[0]);
        int err = cgroup.enter_self();
        if (err == 0) {
            ::sigprocmask(SIG_UNBLOCK, &blocked, nullptr);
            ::execvp(argv[0], argv.data());
            err = errno;
        } else {
            err = -err;  // negative: the cgroup, not the exec
        }
        (void)!::write(report[1], &err, sizeof err);
        ::_exit(err == ENOENT ? kExitNotFound : kExitCannotExec);
    }
    ::close(report[1]);
    exec_error = 0;
    int err = 0;
    if (::read(report[0], &err, sizeof err) == static_cast<ssize_t>(sizeof err)) exec_error = err;
    ::close(report[0]);
    return pid;
}

// --disable: nothing attached. With a command, it simply runs (in no cgroup
// of ours); otherwise wait for a stop signal, as a disabled service would.
int run_disabled(const AttachOptions& o, Log& log) {
    log.line(policy::LogLevel::Info, "TCPFIX_DISABLE=1: nothing attached");
    if (!o.command.empty()) {
        std::vector<std::string> args = o.command;
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        ::execvp(argv[0], argv.data());
        int err = errno;
        fmt::print(stderr, "tcpfix: cannot execute {}: {}\n", o.command[0], std::strerror(err));
        return err == ENOENT ? kExitNotFound : kExitCannotExec;
    }
    auto set = daemon_signals();
    ::sigprocmask(SIG_BLOCK, &set, nullptr);
    int sig = 0;
    do {
        ::sigwait(&set, &sig);
    } while (sig == SIGCHLD);
    return 0;
}

int run_attach(AttachOptions& o) {
    auto pairs = variables(o);
    std::vector<std::pair<std::string_view, std::string_view>> views(pairs.begin(), pairs.end());
    auto parsed = policy::parse_config(views);
    if (auto* refusal = std::get_if<std::string>(&parsed)) {
        fmt::print(stderr, "{}\n", *refusal);
        return kExitUsage;
    }
    auto config = std::get<policy::Config>(std::move(parsed));
    for (const auto& line : uncarried(config)) {
        fmt::print(stderr, "{}\n", line);
        return kExitUsage;  // the first is enough: nothing has been touched
    }
    int targets = !o.cgroup.empty() + !o.unit.empty() + !o.command.empty();
    if (targets == 0)
        throw UsageError("attach: say where: --cgroup PATH, --unit NAME.service or -- CMD [ARGS]");
    if (targets > 1) throw UsageError("attach: one of --cgroup, --unit or -- CMD, not several");
    bool rst = config.close == policy::CloseMode::Rst;
    bool anything = config.connect_timeout_ns || !config.source_addrs.empty() ||
                    config.reap_close_wait_ns || rst;
    if (!anything && !config.disabled)
        throw UsageError(
            "attach: nothing to apply: give --connect-timeout, --source-addrs, "
            "--reap-close-wait or --close rst (or the TCPFIX_* variables)");
    if (auto line = non_local_source(config); !line.empty()) {
        fmt::print(stderr, "{}\n", line);
        return kExitUsage;
    }
    Log log(config, o.json);
    if (config.disabled) return run_disabled(o, log);

    auto mount = cgroup2_mount();
    std::string target;
    if (!o.cgroup.empty()) target = resolve_cgroup(o.cgroup, mount);
    if (!o.unit.empty()) target = resolve_unit(o.unit, mount);

    Needs needs;
    needs.source_addrs = !config.source_addrs.empty();
    needs.destroy = rst || config.reap_close_wait_ns.has_value();
    needs.destroy_time_wait = rst;
    auto facilities = probe_kernel(needs);
    if (!facilities.refusals.empty()) {
        for (const auto& line : facilities.refusals) fmt::print(stderr, "tcpfix: {}\n", line);
        return kExitFailure;
    }
    if (config.connect_timeout_ns && !kernel_config_readable()) {
        fmt::print(stderr,
                   "tcpfix: attach: --connect-timeout: the kernel's CONFIG_HZ is needed to turn it "
                   "into jiffies, and neither /proc/config.gz nor /boot/config-$(uname -r) is "
                   "there\n");
        return kExitFailure;
    }

    BpfSettings bpf;
    bpf.syn_rto_ns = config.connect_timeout_ns;
    bpf.want_time_wait = rst;
    bpf.want_close_wait = config.reap_close_wait_ns.has_value();
    bpf.rules = config.match.rules();
    bpf.sources = config.source_addrs;
    bpf.record_pid = facilities.record_pid;
    bpf.record_netns = facilities.record_netns;
    bpf.kernel_config = kernel_config_readable();
    Programs programs(bpf);

    // Every stop signal arrives through the descriptor, from here on.
    auto blocked = daemon_signals();
    if (::sigprocmask(SIG_BLOCK, &blocked, nullptr) != 0) throw_errno("sigprocmask");
    Fd signals(::signalfd(-1, &blocked, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!signals) throw_errno("signalfd");

    std::optional<ChildCgroup> child_cgroup;
    if (!o.command.empty()) {
        child_cgroup.emplace(mount, ::getpid());
        target = child_cgroup->path();
    }
    {
        Fd dir = open_cgroup(target);
        programs.attach(dir.get());
    }
    auto ids = programs.program_ids();
    std::string what;
    if (config.connect_timeout_ns)
        what += fmt::format(
            ", SYN RTO {} ({} jiffies at HZ={})",
            policy::format_duration(*config.connect_timeout_ns),
            (static_cast<long long>(*config.connect_timeout_ns) * programs.hz() + 999'999'999) /
                1'000'000'000,
            programs.hz());
    if (!config.source_addrs.empty())
        what += fmt::format(", {} source addresses", config.source_addrs.size());
    if (config.reap_close_wait_ns)
        what += fmt::format(", CLOSE_WAIT reaped after {}",
                            policy::format_duration(*config.reap_close_wait_ns));
    if (rst) what += ", TIME_WAIT entries removed";
    if (!config.match.matches_everything())
        what += fmt::format(", {} --match rules", config.match.rules().size());
    log.line(policy::LogLevel::Info,
             fmt::format("attached to {}{} (BPF programs {}; links, no pins)", target, what,
                         fmt::join(ids, ",")));
    log.event(fmt::format("{{\"event\":\"attached\",\"cgroup\":{},\"programs\":[{}],\"hz\":{}}}",
                          policy::json_quote(target), fmt::join(ids, ","), programs.hz()));

    DaemonSettings ds;
    ds.config = config;
    ds.cgroup = target;
    ds.sweep = o.command.empty();  // a fresh cgroup holds nothing older than the attach
    ds.follow = o.command.empty();
    ds.own_netns = own_netns_cookie();
    if (!o.command.empty()) {
        int exec_error = 0;
        ds.child = start_command(o.command, *child_cgroup, blocked, exec_error);
        if (exec_error != 0) {
            int st = 0;
            ::waitpid(ds.child, &st, 0);
            programs.detach();
            child_cgroup->remove();
            if (exec_error < 0) {
                fmt::print(stderr, "tcpfix: attach: cannot move the command into {}: {}\n", target,
                           std::strerror(-exec_error));
                return kExitFailure;
            }
            fmt::print(stderr, "tcpfix: cannot execute {}: {}\n", o.command[0],
                       std::strerror(exec_error));
            return exec_error == ENOENT ? kExitNotFound : kExitCannotExec;
        }
    }
    Daemon daemon(std::move(ds), programs, log);
    int status = daemon.run(signals.get());
    if (child_cgroup) {
        try {
            if (int moved = child_cgroup->remove(); moved > 0)
                log.line(policy::LogLevel::Info,
                         fmt::format("{} processes the command left behind were moved out of its "
                                     "cgroup before it was removed",
                                     moved));
        } catch (const std::exception& e) {
            log.line(policy::LogLevel::Warn, e.what());
        }
    }
    return status;
}

}  // namespace

std::vector<std::string> uncarried(const policy::Config& c) {
    std::vector<std::string> out;
    auto line = [&](std::string_view variable, std::string_view why) {
        out.push_back(fmt::format("tcpfix: attach: {}: {}", named(c, variable), why));
    };
    if (c.close == policy::CloseMode::RstAlways)
        line("TCPFIX_CLOSE",
             "the kernel cannot make a close abortive for a program (sock_ops may not set "
             "SO_LINGER); --close rst removes the TIME_WAIT entry instead");
    if (c.connect_retries > 0)
        line("TCPFIX_CONNECT_RETRIES",
             "the kernel cannot retry a connect on a fresh socket; --connect-timeout alone "
             "shortens the SYN's retransmission timeout, `tcpfix run` can retry");
    if (c.reconnect_backoff)
        line("TCPFIX_RECONNECT_BACKOFF",
             "a BPF program cannot delay a connect (cgroup/connect4 cannot sleep); only "
             "`tcpfix run` can pace reconnects");
    if (c.connect_rate_per_s)
        line("TCPFIX_CONNECT_RATE",
             "a BPF program cannot delay a connect (cgroup/connect4 cannot sleep); only "
             "`tcpfix run` can pace connects");
    if (c.bind_no_port)
        line("TCPFIX_BIND_NO_PORT",
             "BPF cannot set IP_BIND_ADDRESS_NO_PORT before the application's own bind(); "
             "--source-addrs already binds with ports chosen per destination");
    if (c.port_range)
        line("TCPFIX_PORT_RANGE",
             "BPF cannot set IP_LOCAL_PORT_RANGE on a program's socket; use the "
             "net.ipv4.ip_local_port_range sysctl, or `tcpfix run`");
    if (!c.share.empty())
        line("TCPFIX_SHARE",
             "a share holds the pacing of preloaded processes, and a BPF program cannot delay a "
             "connect; `tcpfix run --share` shares it");
    return out;
}

}  // namespace attach

Command add_attach(CLI::App& parent) {
    auto o = std::make_shared<attach::AttachOptions>();
    auto* app = parent.add_subcommand(
        "attach",
        "As root: apply the policies the kernel can carry, by BPF, to every program in a cgroup");
    o->policy.add_to(*app);
    auto* cgroup = app->add_option("--cgroup", o->cgroup,
                                   "a cgroup v2 directory, as a path or relative to the cgroup2 "
                                   "mount (/system.slice/x.service)")
                       ->type_name("PATH");
    app->add_option("--unit", o->unit,
                    "a systemd unit's cgroup (NAME.service; without systemd running, "
                    "system.slice/NAME under the cgroup2 mount)")
        ->type_name("NAME")
        ->excludes(cgroup);
    app->add_flag("--json", o->json,
                  "events (attached, leak, detached) as JSON objects on stdout, one a line");
    app->add_option("CMD", o->command, "a command to run in a fresh cgroup of its own");
    app->positionals_at_end();
    app->footer(
        "Usage: tcpfix attach (--cgroup PATH | --unit NAME.service | [--] CMD [ARGS...]) "
        "[OPTIONS]\n"
        "Runs in the foreground until SIGTERM/SIGINT/SIGHUP, or until CMD exits (its status\n"
        "is tcpfix's; those signals are passed on to it). The BPF programs are attached by\n"
        "links, not pins: when tcpfix exits, or dies, nothing stays attached.\n"
        "The options are `tcpfix run`'s (and TCPFIX_* variables in the environment count,\n"
        "the options over them), checked as the library checks them. What the kernel carries:\n"
        "  --connect-timeout D   the SYN's initial retransmission timeout (not a deadline)\n"
        "  --source-addrs LIST   bound in cgroup/connect4/6 with port 0, per destination\n"
        "  --reap-close-wait D   matched sockets in CLOSE_WAIT longer than D are destroyed,\n"
        "                        each logged as a leak with its process and destination\n"
        "  --close rst           a matched connection's TIME_WAIT entry is destroyed as soon\n"
        "                        as it appears\n"
        "  --match, --log, --log-file, --stats, --tag, --disable as for `tcpfix run`.\n"
        "Refused (exit 2): --connect-retries, --reconnect-backoff, --connect-rate,\n"
        "--close rst-always, --bind-no-port, --port-range. A kernel without a facility an\n"
        "option needs is refused at start, one line naming the kernel that has it (exit 3).\n"
        "Acts on sockets in its own network namespace (nsenter --net=... to change it).");
    return {app, [o] { return attach::run_attach(*o); }};
}

}  // namespace tcpfix::tools
