// `fork`: a multi-threaded parent that forks while its other threads connect
// and close, and while it holds many connections (so tcpfix's background scan,
// when TCPFIX_REAP_CLOSE_WAIT or TCPFIX_RECONNECT_BACKOFF is set, is busy with
// them at the moment of the fork). The children, in turn:
//   0  close every inherited descriptor (close_range(3, ~0U)), then connect
//   1  connect at once, close, and close an inherited connection
//   2  fork + exec of a program that inherits LD_PRELOAD and connects
//   3  vfork + exec of the same
//   4  posix_spawn of the same
// Each child must finish promptly with status 0, and its own stats must show
// only its own connection, closed with RST under TCPFIX_CLOSE=rst; inherited
// connections are never reset by a child. A child that hangs is shown with
// gdb and reported.
#include <fcntl.h>
#include <linux/close_range.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "tests/stress/common.hpp"
#include "tests/stress/modes.hpp"

extern char** environ;

namespace stress {
namespace {

constexpr int kKinds = 5;
const char* kKindNames[kKinds] = {"fork, close everything, connect", "fork, connect at once",
                                  "fork + exec", "vfork + exec", "posix_spawn"};

// One connect and close in a child; returns 0 or a small error code.
int child_connect(std::uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 10;
    sockaddr_in to = loopback(port);
    if (connect_wait(fd, to, false) != 0) return 11;
    if (close(fd) != 0) return 12;
    errno = 0;
    if (close(fd) != -1 || errno != EBADF) return 13;
    return 0;
}

// vfork + execve, in a function of its own: nothing of the caller's frame is
// live across the vfork.
__attribute__((noinline)) pid_t vfork_exec(const char* exe, char* const* argv) {
    pid_t pid = vfork();
    if (pid == 0) {
        execve(exe, argv, environ);
        _exit(127);
    }
    return pid;
}

}  // namespace

int run_exec_child(const std::vector<std::string>& args) {
    std::uint16_t port = 0;
    bool expect_tcpfix = false;
    for (std::size_t i = 0; i + 1 < args.size(); i += 2) {
        if (args[i] == "--port") port = static_cast<std::uint16_t>(std::stoi(args[i + 1]));
        if (args[i] == "--expect-tcpfix") expect_tcpfix = args[i + 1] == "1";
    }
    if (library_loaded("libtcpfix") != expect_tcpfix) {
        fmt::print(stderr, "exec-child: libtcpfix {} loaded, expected {}\n", library_loaded("libtcpfix") ? "is" : "is not",
                   expect_tcpfix ? "loaded" : "not");
        return 20;
    }
    return child_connect(port);
}

int run_fork(const std::vector<std::string>& args) {
    int forks = 100, held_count = 1000, churners = 4;
    for (std::size_t i = 0; i + 1 < args.size(); i += 2) {
        if (args[i] == "--forks") forks = std::stoi(args[i + 1]);
        else if (args[i] == "--held") held_count = std::stoi(args[i + 1]);
        else if (args[i] == "--threads") churners = std::stoi(args[i + 1]);
        else {
            fmt::print(stderr, "fork: unknown option {}\n", args[i]);
            return 64;
        }
    }
    Policy policy = read_policy();
    raise_fd_limit(nullptr);
    Server server;
    server.start();
    const std::uint16_t port = server.data_port();
    const sockaddr_in to = loopback(port);
    std::set<int> fds_before = open_fds();

    // Connections held across every fork.
    std::vector<int> held;
    for (int i = 0; i < held_count; ++i) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        STRESS_CHECK(fd >= 0 && connect_wait(fd, to, false) == 0, "held connection {}", i);
        held.push_back(fd);
    }
    // One of them inherited without close-on-exec, as daemons hand sockets down.
    int inherited = -1;
    if (!held.empty()) {
        inherited = dup(held[0]);
        STRESS_CHECK(inherited >= 0, "dup");
    }

    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> churn_cycles{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < churners; ++t) {
        threads.emplace_back([&] {
            block_signal(SIGCHLD);
            while (!stop.load()) {
                int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                STRESS_CHECK(fd >= 0, "socket");
                int err = connect_wait(fd, to, false);
                STRESS_CHECK(err == 0, "churn connect: {}", strerrordesc_np(err));
                STRESS_CHECK(close(fd) == 0, "churn close");
                churn_cycles.fetch_add(1);
            }
        });
    }

    std::string exe(4096, '\0');
    ssize_t n = readlink("/proc/self/exe", exe.data(), exe.size() - 1);
    exe.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    std::string port_text = std::to_string(port);
    std::string expect_text = policy.loaded ? "1" : "0";
    const char* child_argv[] = {"tcpfix_stress", "exec-child", "--port", port_text.c_str(), "--expect-tcpfix",
                                expect_text.c_str(), nullptr};

    struct Child {
        pid_t pid;
        int kind;
    };
    std::vector<Child> children;
    int hung = 0;
    long children_rst = 0;
    std::int64_t started = now_ns();
    bool kind_hung[kKinds] = {};
    for (int k = 0; k < forks && failures().count() < 20; ++k) {
        int kind = k % kKinds;
        if (kind_hung[kind]) continue;  // one hang of a kind is enough to report
        pid_t pid = -1;
        switch (kind) {
            case 0:
                pid = fork();
                if (pid == 0) {
                    alarm(60);
                    // A daemon's first act: close whatever it inherited.
                    if (close_range(3, ~0U, 0) != 0) _exit(30);
                    int r = child_connect(port);
                    exit(r);  // exit(), not _exit(): tcpfix writes the child's stats
                }
                break;
            case 1:
                pid = fork();
                if (pid == 0) {
                    alarm(60);
                    int r = child_connect(port);
                    // Both descriptors of an inherited connection: the second
                    // close is the child's last reference, still shared with the parent.
                    if (r == 0 && inherited >= 0 && (close(held[0]) != 0 || close(inherited) != 0)) r = 31;
                    exit(r);
                }
                break;
            case 2:
                pid = fork();
                if (pid == 0) {
                    execve(exe.c_str(), const_cast<char**>(child_argv), environ);
                    _exit(127);
                }
                break;
            case 3:
                pid = vfork_exec(exe.c_str(), const_cast<char**>(child_argv));
                break;
            case 4: {
                posix_spawn_file_actions_t fa;
                posix_spawn_file_actions_init(&fa);
                if (inherited >= 0) posix_spawn_file_actions_addclose(&fa, inherited);
                int r = posix_spawn(&pid, exe.c_str(), &fa, nullptr, const_cast<char**>(child_argv), environ);
                posix_spawn_file_actions_destroy(&fa);
                STRESS_CHECK(r == 0, "posix_spawn: {}", strerror(r));
                if (r != 0) pid = -1;
                break;
            }
        }
        STRESS_CHECK(pid > 0, "{} failed", kKindNames[kind]);
        if (pid <= 0) continue;
        // Wait for it; a child still running after 10 s is stuck.
        int status = 0;
        std::int64_t deadline = now_ns() + 10'000'000'000LL;
        pid_t r = 0;
        while ((r = waitpid(pid, &status, WNOHANG)) == 0 && now_ns() < deadline) sleep_ms(2);
        if (r == 0) {
            ++hung;
            kind_hung[kind] = true;
            failures().add("child {} ({}) still running after 10 s: hung after fork (fork #{})", pid, kKindNames[kind],
                           k);
            if (hung == 1 && access("/usr/bin/gdb", X_OK) == 0) {
                std::string cmd = fmt::format(
                    "env -i PATH=/usr/bin:/bin timeout 60 /usr/bin/gdb -nx -batch -p {} -ex 'thread apply all bt 25' </dev/null 2>&1 | "
                    "grep -v '^\\[New LWP' 1>&2",
                    pid);
                (void)!system(cmd.c_str());
            }
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            continue;
        }
        if (WIFSIGNALED(status)) {
            failures().add("child {} ({}) died of signal {}", pid, kKindNames[kind], WTERMSIG(status));
            continue;
        }
        STRESS_CHECK(WEXITSTATUS(status) == 0, "child {} ({}) exited {}", pid, kKindNames[kind], WEXITSTATUS(status));
        children.push_back({pid, kind});
    }
    double fork_secs = static_cast<double>(now_ns() - started) / 1e9;

    stop.store(true);
    for (auto& t : threads) t.join();

    // Each child's own counts: only its own connection is tcpfix's to reset.
    if (policy.active) {
        for (const auto& c : children) {
            std::string json = read_file(stats_path_for(c.pid));
            if (json.empty()) {
                failures().add("child {} ({}) left no stats file", c.pid, kKindNames[c.kind]);
                continue;
            }
            auto get = [&](const char* key) { return json_number(json, key).value_or(-1); };
            STRESS_CHECK(get("sockets") == 1 && get("connects") == 1, "child {} ({}): {}", c.pid, kKindNames[c.kind],
                         json);
            if (policy.rst()) {
                STRESS_CHECK(get("closes_rst") == 1, "child {} ({}) reset {} connections, expected only its own: {}",
                             c.pid, kKindNames[c.kind], get("closes_rst"), json);
                if (c.kind == 1)
                    STRESS_CHECK(get("closes_graceful_shared") == 1 && get("closes") == 3,
                                 "child {} closed an inherited connection: expected it graceful (shared): {}", c.pid,
                                 json);
            }
            children_rst += std::max<long>(get("closes_rst"), 0);
        }
    }

    for (int fd : held) STRESS_CHECK(close(fd) == 0, "close held");
    if (inherited >= 0) STRESS_CHECK(close(inherited) == 0, "close inherited");
    STRESS_CHECK(server.wait_quiet(20000), "server still holds {} connections", server.open_conns.load());
    std::set<int> fds_after = open_fds();
    for (int fd : fds_after)
        if (!fds_before.count(fd)) failures().add("descriptor {} ({}) left open", fd, describe_fd(fd));
    server.stop();
    std::uint64_t rst_seen = server.ended_rst.load();
    STRESS_CHECK(server.ended_other.load() == 0, "{} connections ended neither by FIN nor RST", server.ended_other.load());
    int listeners = server.close_listeners();

    std::uint64_t cycles = churn_cycles.load();
    // Connections the client saw established but the server never accepted
    // (its queue overflowed while the parent forked): they end unseen.
    std::uint64_t made = cycles + held.size() + children.size();
    std::uint64_t never_accepted = made > server.accepted_data.load() ? made - server.accepted_data.load() : 0;
    if (never_accepted != 0)
        fmt::print("note: {} connections the server never accepted (queue overflow under load)\n", never_accepted);
    fmt::print("fork: {} children in {:.1f} s ({} hung), {} churn cycles meanwhile, {} held connections; peer saw {} "
               "RST, {} FIN\n",
               children.size(), fork_secs, hung, cycles, held.size(), rst_seen, server.ended_eof.load());

    Expectations ex;
    if (policy.active) {
        std::uint64_t sockets = cycles + held.size() + listeners;
        ex.eq("sockets", std::to_string(sockets));
        ex.eq("connects", std::to_string(cycles + held.size()));
        ex.eq("closes", std::to_string(cycles + held.size() + (inherited >= 0) + listeners));
        if (policy.rst()) {
            // Every RST the peer saw came from the parent or one of the children.
            std::uint64_t parent_seen = rst_seen - static_cast<std::uint64_t>(children_rst);
            ex.ge("closes_rst", std::to_string(parent_seen));
            ex.le("closes_rst", fmt::format("{} + {}", parent_seen, never_accepted));
            // Sockets made before a fork close gracefully (shared); the rest with
            // RST. held[0] closes first while its dup `inherited` still refers
            // to the socket: that close is neither.
            ex.eq("closes_rst + closes_graceful_shared", std::to_string(cycles + held.size()));
        }
    }
    ex.write();
    return failures().report("fork") ? 0 : 1;
}

}  // namespace stress
