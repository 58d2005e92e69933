// tcpfix_stress: stress programs for libtcpfix.so, each run under a supervisor.
//
// usage: tcpfix_stress [--timeout SECONDS] MODE [OPTIONS]
//   threads      16 threads x 20,000 socket/connect/close cycles with the
//                descriptor edge cases mixed in (see threads.cpp)
//   soak         the same with 4 threads, 20,000 cycles in all, and resident
//                memory and the descriptor count checked flat;
//                `soak --total-cycles 1000000` is the long soak, run by hand
//   fork         a multi-threaded parent forking, vforking, posix_spawning
//   signals      --scenario timed|throttled|scan: handlers that close sockets
//                while the thread they interrupt is inside a hooked call
//   nothing-lost 1,000 write-then-close trials; the peer must get every byte
//
// The supervisor (this process) runs the mode in a child process with
// TCPFIX_STATS and TCPFIX_LOG_FILE pointed into a scratch directory (unless
// set already), and fails when the child
//   - does not finish within the timeout (a deadlock: the threads' stacks are
//     printed with gdb when it is installed, then the child is killed),
//   - dies of a signal, or exits non-zero (its own checks failed),
//   - wrote expectations that tcpfix's stats file does not meet.
// The preload comes from the environment (ctest sets LD_PRELOAD and the
// TCPFIX_* variables per test); without it the modes run as a baseline.
// Exit status: 0 pass, 1 a check failed, 2 a crash or deadlock, 64 usage.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "tests/stress/common.hpp"
#include "tests/stress/modes.hpp"

namespace stress {
namespace {

int usage() {
    fmt::print(stderr,
               "usage: tcpfix_stress [--timeout SECONDS] threads|soak|fork|signals|nothing-lost [OPTIONS]\n");
    return 64;
}

int run_mode(const std::string& mode, const std::vector<std::string>& args) {
    if (mode == "threads") return run_threads(args, false);
    if (mode == "soak") return run_threads(args, true);
    if (mode == "fork") return run_fork(args);
    if (mode == "signals") return run_signals(args);
    if (mode == "nothing-lost") return run_nothing_lost(args);
    if (mode == "exec-child") return run_exec_child(args);
    return usage();
}

// One side of an expectation: a sum of integers and stats keys. A key nested
// in an object that leaves out zero entries (connect_errors.X) counts 0 when absent.
bool evaluate(const std::string& side, const std::string& json, long long& out, std::string& why) {
    out = 0;
    std::stringstream ss(side);
    std::string term;
    while (std::getline(ss, term, '+')) {
        while (!term.empty() && term.front() == ' ') term.erase(0, 1);
        while (!term.empty() && term.back() == ' ') term.pop_back();
        if (term.empty()) continue;
        if (isdigit(static_cast<unsigned char>(term[0]))) {
            out += std::stoll(term);
            continue;
        }
        auto v = json_number(json, term);
        if (!v) {
            if (term.find('.') == std::string::npos) {
                why = "stats have no " + term;
                return false;
            }
            v = 0;
        }
        out += *v;
    }
    return true;
}

bool check_expectations(pid_t pid, const std::string& dir) {
    std::string expect_path = fmt::format("{}/expect-{}.txt", dir, pid);
    std::ifstream in(expect_path);
    if (!in) {
        fmt::print(stderr, "FAIL: the worker wrote no expectations ({})\n", expect_path);
        return false;
    }
    std::string stats_path = fmt::format("{}/stats-{}.json", dir, pid);
    std::string json = read_file(stats_path);
    bool ok = true, needs_stats = false;
    std::string line;
    std::vector<std::string> lines;
    while (std::getline(in, line)) lines.push_back(line);
    for (const auto& l : lines)
        if (!l.empty() && l[0] != '#') needs_stats = true;
    if (needs_stats && json.empty()) {
        fmt::print(stderr, "FAIL: no stats file {} (is libtcpfix.so preloaded?)\n", stats_path);
        return false;
    }
    for (const auto& l : lines) {
        if (l.empty()) continue;
        if (l[0] == '#') {
            fmt::print("expect {}\n", l);
            continue;
        }
        std::string op;
        std::size_t at = std::string::npos;
        for (const char* candidate : {" == ", " <= ", " >= "}) {
            at = l.find(candidate);
            if (at != std::string::npos) {
                op = std::string(candidate).substr(1, 2);
                break;
            }
        }
        long long lhs = 0, rhs = 0;
        std::string why;
        if (at == std::string::npos || !evaluate(l.substr(0, at), json, lhs, why) ||
            !evaluate(l.substr(at + 4), json, rhs, why)) {
            fmt::print(stderr, "FAIL: expectation `{}`: {}\n", l, why.empty() ? "malformed" : why);
            ok = false;
            continue;
        }
        bool pass = op == "==" ? lhs == rhs : op == "<=" ? lhs <= rhs : lhs >= rhs;
        fmt::print("{} {}  ({} {} {})\n", pass ? "ok  " : "FAIL", l, lhs, op, rhs);
        ok &= pass;
    }
    if (!ok) fmt::print(stderr, "stats: {}\n", json);
    return ok;
}

void dump_stacks(pid_t pid) {
    fmt::print(stderr, "--- threads of the stuck worker {} ---\n", pid);
    if (access("/usr/bin/gdb", X_OK) == 0) {
        std::string cmd = fmt::format(
            "env -i PATH=/usr/bin:/bin timeout 60 /usr/bin/gdb -nx -batch -p {} -ex 'set pagination off' -ex 'thread apply all bt 30' "
            "</dev/null 2>&1 | grep -v '^\\[New LWP' 1>&2",
            pid);
        if (system(cmd.c_str()) == 0) return;
    }
    std::string cmd = fmt::format(
        "for t in /proc/{}/task/*; do echo \"$t $(cat $t/comm) wchan=$(cat $t/wchan) syscall=$(cut -d' ' -f1 "
        "$t/syscall)\"; done 1>&2",
        pid);
    (void)!system(cmd.c_str());
}

void show_log(const std::string& dir) {
    std::string log = read_file(dir + "/tcpfix.log");
    if (log.empty()) return;
    if (log.size() > 4000) log = "...\n" + log.substr(log.size() - 4000);
    fmt::print(stderr, "--- tcpfix log (tail) ---\n{}\n", log);
}

int supervise(int timeout_s, const std::string& mode, const std::vector<std::string>& args) {
    std::string dir;
    bool own_dir = false;
    if (const char* d = getenv("STRESS_DIR")) {
        dir = d;
        mkdir(dir.c_str(), 0700);
    } else {
        char tmpl[] = "/tmp/tcpfix-stress-XXXXXX";
        if (mkdtemp(tmpl) == nullptr) {
            perror("mkdtemp");
            return 2;
        }
        dir = tmpl;
        own_dir = true;
    }
    setenv("STRESS_DIR", dir.c_str(), 1);
    setenv("STRESS_WORKER", "1", 1);
    setenv("TCPFIX_STATS", (dir + "/stats-%p.json").c_str(), 1);
    if (getenv("TCPFIX_LOG_FILE") == nullptr) setenv("TCPFIX_LOG_FILE", (dir + "/tcpfix.log").c_str(), 1);

    std::int64_t started = now_ns();
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        setpgid(0, 0);
        std::vector<char*> argv;
        static std::string self = "tcpfix_stress";
        argv.push_back(self.data());
        std::string m = mode;
        argv.push_back(m.data());
        std::vector<std::string> copy = args;
        for (auto& a : copy) argv.push_back(a.data());
        argv.push_back(nullptr);
        execv("/proc/self/exe", argv.data());
        perror("exec");
        _exit(127);
    }
    setpgid(pid, pid);
    int status = 0;
    bool finished = false;
    std::int64_t deadline = started + static_cast<std::int64_t>(timeout_s) * 1'000'000'000;
    while (now_ns() < deadline) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            finished = true;
            break;
        }
        sleep_ms(50);
    }
    double secs = static_cast<double>(now_ns() - started) / 1e9;
    if (!finished) {
        fmt::print(stderr, "FAIL {}: no result after {} s: deadlock or livelock\n", mode, timeout_s);
        dump_stacks(pid);
        kill(-pid, SIGKILL);
        waitpid(pid, &status, 0);
        show_log(dir);
        fmt::print(stderr, "scratch directory kept: {}\n", dir);
        return 2;
    }
    if (WIFSIGNALED(status)) {
        fmt::print(stderr, "FAIL {}: the worker died of signal {} ({})\n", mode, WTERMSIG(status),
                   strsignal(WTERMSIG(status)));
        show_log(dir);
        fmt::print(stderr, "scratch directory kept: {}\n", dir);
        return 2;
    }
    bool ok = WEXITSTATUS(status) == 0;
    if (!ok) fmt::print(stderr, "FAIL {}: the worker exited {}\n", mode, WEXITSTATUS(status));
    if (ok) ok = check_expectations(pid, dir);
    fmt::print("{} {} in {:.1f} s\n", ok ? "PASS" : "FAIL", mode, secs);
    if (!ok) {
        show_log(dir);
        fmt::print(stderr, "scratch directory kept: {}\n", dir);
        return 1;
    }
    if (own_dir) (void)!system(fmt::format("rm -rf '{}'", dir).c_str());
    return 0;
}

}  // namespace
}  // namespace stress

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    int timeout_s = 300;
    if (args.size() >= 2 && args[0] == "--timeout") {
        timeout_s = std::atoi(args[1].c_str());
        args.erase(args.begin(), args.begin() + 2);
    }
    if (args.empty()) return stress::usage();
    std::string mode = args[0];
    args.erase(args.begin());
    setvbuf(stdout, nullptr, _IOLBF, 0);
    if (mode == "exec-child" || getenv("STRESS_WORKER") != nullptr) return stress::run_mode(mode, args);
    return stress::supervise(timeout_s, mode, args);
}
