// `tcpfix ab --a 'VAR=V ...' --b 'VAR=V ...' [-n RUNS] -- CMD [ARGS]`: CMD
// run alternately (a b a b ...) under the two variable sets with libtcpfix.so
// preloaded, each run tagged and counted: wall time, the library's stats
// summed over the run's processes, and the TIME_WAIT entries it left on the
// host (read with sock_diag before and after).
#include "tools/ab.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <thread>
#include <unordered_set>

#include "policy/config.hpp"
#include "tools/ab_json.hpp"
#include "tools/diag.hpp"
#include "tools/fd.hpp"
#include "tools/interrupt.hpp"
#include "tools/net.hpp"
#include "tools/run.hpp"

extern char** environ;

namespace tcpfix::tools {
namespace {

namespace fs = std::filesystem;
using namespace ab;

constexpr int kMaxRuns = 1000;
constexpr std::int64_t kKillGraceNs = 3'000'000'000;  // SIGTERM, then this, then SIGKILL
constexpr int kExitNotFound = 127;

struct AbOptions {
    std::string a, b;
    int runs = 3;
    bool json = false;
    std::string plot;
    std::string library;
    std::string dir;
    std::int64_t timeout_ns = 0;
    std::vector<std::string> command;
};

// Words of an arm as a shell would split them: blanks separate, '...' is
// literal, "..." allows \" and \\, a backslash outside quotes escapes.
std::vector<std::string> split_words(std::string_view text, const std::string& arm) {
    std::vector<std::string> words;
    std::string word;
    bool in_word = false;
    for (std::size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (c == ' ' || c == '\t' || c == '\n') {
            if (in_word) words.push_back(std::exchange(word, {}));
            in_word = false;
            continue;
        }
        in_word = true;
        if (c == '\'') {
            auto end = text.find('\'', i + 1);
            if (end == std::string_view::npos)
                throw UsageError(fmt::format("ab: --{}: unterminated '", arm));
            word += text.substr(i + 1, end - i - 1);
            i = end;
        } else if (c == '"') {
            for (++i;; ++i) {
                if (i >= text.size())
                    throw UsageError(fmt::format("ab: --{}: unterminated \"", arm));
                if (text[i] == '"') break;
                if (text[i] == '\\' && i + 1 < text.size() &&
                    (text[i + 1] == '"' || text[i + 1] == '\\'))
                    ++i;
                word += text[i];
            }
        } else if (c == '\\' && i + 1 < text.size()) {
            word += text[++i];
        } else {
            word += c;
        }
    }
    if (in_word) words.push_back(word);
    return words;
}

bool valid_name(std::string_view name) {
    if (name.empty() || (name[0] >= '0' && name[0] <= '9')) return false;
    return std::all_of(name.begin(), name.end(), [](char c) {
        return c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
               (c >= '0' && c <= '9');
    });
}

// The arm's variables, checked; the library's own refusal line for a bad
// TCPFIX_* value (returned through `refusal`, so main prints it as the
// library would and exits 2).
Arm parse_arm(const std::string& name, const std::string& spec, std::string& refusal) {
    Arm arm;
    arm.name = name;
    arm.spec = spec;
    for (const auto& word : split_words(spec, name)) {
        auto eq = word.find('=');
        if (eq == std::string::npos || !valid_name(std::string_view(word).substr(0, eq)))
            throw UsageError(fmt::format(
                "ab: --{}: \"{}\": expected VARIABLE=VALUE, e.g. --{} 'TCPFIX_CLOSE=rst'", name,
                word, name));
        auto var = word.substr(0, eq);
        auto value = word.substr(eq + 1);
        if (var == "TCPFIX_STATS" || var == "TCPFIX_TAG")
            throw UsageError(
                fmt::format("ab: --{}: {} is set by ab itself (TCPFIX_TAG={}, "
                            "TCPFIX_STATS=<dir>/{}-<run>-%p.json)",
                            name, var, name, name));
        if (var.starts_with("TCPFIX_") && refusal.empty()) {
            if (auto r = policy::check_variable(var, value)) refusal = *r;
        }
        if (var == "TCPFIX_DISABLE" && value == "1") arm.disabled = true;
        auto same = std::find_if(arm.variables.begin(), arm.variables.end(),
                                 [&](const auto& kv) { return kv.first == var; });
        if (same != arm.variables.end())
            same->second = value;
        else
            arm.variables.emplace_back(var, value);
    }
    return arm;
}

// Where the stats files and each run's output go; removed at the end unless
// the user named it.
class WorkDir {
  public:
    explicit WorkDir(const std::string& given) {
        if (!given.empty()) {
            path_ = given;
            std::error_code ec;
            fs::create_directories(path_, ec);
            if (ec) throw std::system_error(ec, "ab: --dir " + given);
            for (const auto& e : fs::directory_iterator(path_)) {
                auto n = e.path().filename().string();
                if ((n.starts_with("a-") || n.starts_with("b-")) && n.ends_with(".json"))
                    throw UsageError(fmt::format(
                        "ab: --dir {} already holds stats files ({}): give an empty directory",
                        given, n));
            }
            return;
        }
        const char* tmp = std::getenv("TMPDIR");
        std::string pattern = fmt::format("{}/tcpfix-ab-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (::mkdtemp(pattern.data()) == nullptr) throw_errno("mkdtemp");
        path_ = pattern;
        temporary_ = true;
    }
    ~WorkDir() {
        if (!temporary_) return;
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    WorkDir(const WorkDir&) = delete;
    WorkDir& operator=(const WorkDir&) = delete;
    const std::string& path() const { return path_; }
    bool temporary() const { return temporary_; }

  private:
    std::string path_;
    bool temporary_ = false;
};

// The environment of one run: this process's, minus any TCPFIX_* (both arms
// start equal), plus the arm's variables, the tag, the stats path and the
// library first in LD_PRELOAD.
std::vector<std::string> run_environment(const Arm& arm, int index, const std::string& library,
                                         const std::string& dir) {
    std::vector<std::string> env;
    std::string preload;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
        std::string_view kv(*e);
        if (kv.starts_with("TCPFIX_")) continue;
        if (kv.starts_with("LD_PRELOAD=")) {
            preload = kv.substr(11);
            continue;
        }
        auto eq = kv.find('=');
        auto name = kv.substr(0, eq);
        bool overridden = std::any_of(arm.variables.begin(), arm.variables.end(),
                                      [&](const auto& v) { return v.first == name; });
        if (!overridden) env.emplace_back(kv);
    }
    for (const auto& [name, value] : arm.variables) {
        if (name == "LD_PRELOAD")
            preload = value;
        else
            env.push_back(name + "=" + value);
    }
    env.push_back("LD_PRELOAD=" + prepend_preload(library, preload));
    env.push_back("TCPFIX_TAG=" + arm.name);
    env.push_back(fmt::format("TCPFIX_STATS={}/{}-{}-%p.json", dir, arm.name, index));
    return env;
}

std::string tw_key(const diag::TcpSocket& s) {
    return policy::to_string(s.local) + ">" + policy::to_string(s.remote);
}

std::unordered_set<std::string> time_wait_now() {
    std::unordered_set<std::string> keys;
    for (const auto& s : diag::dump_tcp(diag::state_bit(diag::kTimeWait))) keys.insert(tw_key(s));
    return keys;
}

int new_entries(const std::unordered_set<std::string>& before) {
    int n = 0;
    for (const auto& k : time_wait_now())
        if (!before.contains(k)) ++n;
    return n;
}

// TIME_WAIT entries the run left, once its close handshakes are over: a
// moment, then until two reads 100 ms apart agree (at most ~2 s). Entries
// live 60 s, so waiting cannot hide one.
int settled_new_time_wait(const std::unordered_set<std::string>& before) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    int last = new_entries(before);
    for (int i = 0; i < 18; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        int now = new_entries(before);
        if (now == last) break;
        last = now;
    }
    return last;
}

// Sums every stats file of one run: numeric top-level fields and the
// connect_errors object.
void collect_stats(const std::string& dir, Run& run) {
    auto prefix = fmt::format("{}-{}-", run.arm, run.index);
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        auto name = e.path().filename().string();
        if (!name.starts_with(prefix) || !name.ends_with(".json")) continue;
        std::string text;
        {
            Fd fd(::open(e.path().c_str(), O_RDONLY | O_CLOEXEC));
            char buf[8192];
            ssize_t n;
            while (fd && (n = ::read(fd.get(), buf, sizeof buf)) > 0)
                text.append(buf, static_cast<std::size_t>(n));
        }
        std::string error;
        auto doc = json::parse(text, &error);
        if (!doc || !doc->is_object()) {
            fmt::print(stderr, "tcpfix ab: warning: {}: not a stats file ({})\n", name, error);
            continue;
        }
        ++run.processes;
        for (const auto& [key, value] : doc->object) {
            if (key == "pid") continue;
            if (value.is_number()) run.counters[key] += value.number;
            if (key == "connect_errors" && value.is_object())
                for (const auto& [err, n] : value.object)
                    if (n.is_number()) run.connect_errors[err] += n.number;
        }
    }
}

// Waits for the run's process group to end; SIGTERM (then SIGKILL) on the
// deadline or when tcpfix is asked to stop. Returns the wait status.
int wait_run(pid_t pid, std::int64_t deadline_ns, const Interrupt& interrupt, Run& run,
             bool& interrupted) {
    Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    std::int64_t kill_at = 0;  // when SIGKILL follows the SIGTERM already sent
    while (true) {
        int status = 0;
        pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (r < 0 && errno != EINTR) throw_errno("waitpid");
        auto now = mono_ns();
        if (kill_at == 0 &&
            ((deadline_ns > 0 && now >= deadline_ns) || (interrupt.pending() && !interrupted))) {
            if (interrupt.pending())
                interrupted = true;
            else
                run.timed_out = true;
            ::kill(-pid, SIGTERM);
            kill_at = now + kKillGraceNs;
        } else if (kill_at != 0 && now >= kill_at) {
            ::kill(-pid, SIGKILL);
            kill_at = now + 3600'000'000'000LL;
        }
        std::int64_t until = kill_at != 0 ? kill_at : deadline_ns;
        int timeout_ms = 100;
        if (until > 0)
            timeout_ms =
                static_cast<int>(std::clamp<std::int64_t>((until - now) / 1'000'000 + 1, 1, 100));
        pollfd fds[2] = {{pidfd.get(), POLLIN, 0}, {interrupted ? -1 : interrupt.fd(), POLLIN, 0}};
        if (!pidfd) fds[0].fd = -1;
        ::poll(fds, 2, timeout_ms);
    }
}

// One run of the command under `arm`.
Run run_once(const AbOptions& o, const Arm& arm, int index, const std::string& target,
             const std::string& library, const WorkDir& dir, const Interrupt& interrupt,
             bool& interrupted) {
    Run run;
    run.arm = arm.name;
    run.index = index;
    auto env = run_environment(arm, index, library, dir.path());
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    auto argv_strings = o.command;
    std::vector<char*> argv;
    for (auto& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    auto out_path = fmt::format("{}/{}-{}.out", dir.path(), arm.name, index);
    Fd out(::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!out) throw_errno("open run output");
    Fd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!null) throw_errno("open /dev/null");

    auto before = time_wait_now();
    auto start = mono_ns();
    pid_t pid = ::fork();
    if (pid < 0) throw_errno("fork");
    if (pid == 0) {
        // The child: its own process group (so a timeout ends all of it),
        // signals as a shell would leave them, output to the run's file.
        ::setpgid(0, 0);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::dup2(null.get(), STDIN_FILENO);
        ::dup2(out.get(), STDOUT_FILENO);
        ::dup2(out.get(), STDERR_FILENO);
        ::execve(target.c_str(), argv.data(), envp.data());
        dprintf(STDERR_FILENO, "tcpfix ab: cannot execute %s: %s\n", target.c_str(),
                strerror(errno));
        ::_exit(kExitNotFound);
    }
    ::setpgid(pid, pid);  // also here: whichever runs first
    auto deadline = o.timeout_ns > 0 ? start + o.timeout_ns : 0;
    int status = wait_run(pid, deadline, interrupt, run, interrupted);
    run.wall_s = static_cast<double>(mono_ns() - start) / 1e9;
    run.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    run.time_wait_left = settled_new_time_wait(before);
    collect_stats(dir.path(), run);
    return run;
}

// The last lines of a failed run's output, for stderr.
std::string tail_of(const std::string& path, std::size_t lines) {
    std::string text;
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    char buf[8192];
    ssize_t n;
    while (fd && (n = ::read(fd.get(), buf, sizeof buf)) > 0) {
        text.append(buf, static_cast<std::size_t>(n));
        if (text.size() > 65536) text.erase(0, text.size() - 65536);
    }
    std::vector<std::string> all;
    for (std::size_t at = 0; at < text.size();) {
        auto nl = text.find('\n', at);
        if (nl == std::string::npos) nl = text.size();
        all.push_back(text.substr(at, nl - at));
        at = nl + 1;
    }
    std::string out;
    for (std::size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i)
        out += (out.empty() ? "" : "\n") + all[i];
    return out;
}

int run_ab(const AbOptions& o) {
    std::string refusal;
    Experiment e;
    e.arms[0] = parse_arm("a", o.a, refusal);
    e.arms[1] = parse_arm("b", o.b, refusal);
    if (!refusal.empty()) {
        fmt::print(stderr, "{}\n", refusal);
        return kExitUsage;
    }
    if (o.command.empty())
        throw UsageError("ab: no command given (tcpfix ab --a ... --b ... -- CMD)");
    e.command = o.command;
    e.runs_per_arm = o.runs;
    if (!o.plot.empty()) check_plotting();
    auto library = o.library.empty() ? find_library() : fs::canonical(o.library).string();
    if (library.find_first_of(" :") != std::string::npos)
        throw std::runtime_error(fmt::format(
            "{}: LD_PRELOAD cannot carry a path containing a space or a colon", library));
    auto target = find_in_path(o.command[0]);
    if (!target) {
        fmt::print(stderr, "tcpfix: {}: command not found\n", o.command[0]);
        return kExitNotFound;
    }
    for (const auto& why : preload_obstacles(*target))
        fmt::print(stderr,
                   "tcpfix ab: warning: {}; the preload's policies will not apply to it (`tcpfix "
                   "attach` can carry some, from the kernel)\n",
                   why);
    for (const auto& arm : e.arms)
        if (arm.disabled)
            fmt::print(stderr,
                       "tcpfix ab: note: arm {} sets TCPFIX_DISABLE=1: the library writes no "
                       "counters for it (give --{} '' for a counting control arm)\n",
                       arm.name, arm.name);

    WorkDir dir(o.dir);
    Interrupt interrupt;
    bool interrupted = false;
    for (int i = 1; i <= o.runs && !interrupted; ++i) {
        for (const auto& arm : e.arms) {
            auto run = run_once(o, arm, i, *target, library, dir, interrupt, interrupted);
            auto out_path = fmt::format("{}/{}-{}.out", dir.path(), arm.name, i);
            fmt::print(
                stderr, "tcpfix ab: {}{}: {:.3f} s, exit {}{}, {} connects, {} TIME_WAIT left\n",
                arm.name, i, run.wall_s, run.exit_status, run.timed_out ? " (timed out)" : "",
                run.counters.contains("connects") ? fmt::format("{:g}", run.counters["connects"])
                                                  : "-",
                run.time_wait_left);
            if (run.exit_status != 0 && !interrupted) {
                auto tail = tail_of(out_path, 5);
                if (!tail.empty()) fmt::print(stderr, "{}\n", tail);
            }
            e.runs.push_back(std::move(run));
            if (interrupted) break;
        }
    }
    e.interrupted = interrupted;
    if (interrupted) fmt::print(stderr, "tcpfix ab: interrupted; the runs so far:\n");
    if (!dir.temporary())
        fmt::print(stderr, "tcpfix ab: stats files and run output in {}\n", dir.path());
    if (o.json)
        print_json(e);
    else
        print_table(e);
    if (!o.plot.empty()) {
        plot(e, o.plot);
        fmt::print(stderr, "tcpfix ab: plot written to {}\n", o.plot);
    }
    return interrupted ? 130 : 0;
}

}  // namespace

Command add_ab(CLI::App& parent) {
    auto o = std::make_shared<AbOptions>();
    auto* app = parent.add_subcommand(
        "ab", "Run CMD under two policy sets, alternating, and compare them side by side");
    app->add_option("--a", o->a, "arm a's variables, 'VAR=V VAR2=V2' ('' for none)")
        ->required()
        ->type_name("'VAR=V ...'");
    app->add_option("--b", o->b, "arm b's variables, 'VAR=V VAR2=V2'")
        ->required()
        ->type_name("'VAR=V ...'");
    app->add_option("-n,--runs", o->runs, "runs per arm")
        ->default_str("3")
        ->check(CLI::Range(1, kMaxRuns));
    app->add_flag("--json", o->json, "one JSON object instead of the table");
    app->add_option("--plot", o->plot, "also draw the comparison into this PNG (needs matplotlib)")
        ->type_name("FILE.png");
    add_duration(*app, "--timeout", o->timeout_ns,
                 "end a run that takes longer (SIGTERM to its process group, SIGKILL 3 s later)",
                 "none");
    app->add_option("--dir", o->dir,
                    "keep the stats files and each run's output (<arm>-<run>.out) here "
                    "(default: a temporary directory, removed)")
        ->type_name("DIR");
    app->add_option("--library", o->library,
                    "the libtcpfix.so to preload (default: found as `tcpfix run` finds it)")
        ->check(CLI::ExistingFile)
        ->type_name("PATH");
    app->add_option("CMD", o->command, "the command and its arguments");
    app->positionals_at_end();
    app->footer(
        "Usage: tcpfix ab --a 'VAR=V ...' --b 'VAR=V ...' [-n RUNS] [--json] [--plot FILE.png] -- "
        "CMD [ARGS...]\n"
        "Runs CMD 2 x RUNS times, alternating a b a b ..., each with libtcpfix.so first in\n"
        "LD_PRELOAD, the arm's variables (TCPFIX_* values checked as the library checks them,\n"
        "before anything runs; inherited TCPFIX_* variables are dropped so both arms start\n"
        "equal), TCPFIX_TAG=a|b and TCPFIX_STATS=<dir>/<arm>-<run>-%p.json. CMD's output goes to\n"
        "<dir>/<arm>-<run>.out, its stdin is /dev/null; each run is its own process group.\n"
        "Per run: wall time, exit status, the stats of every process that loaded the library\n"
        "(summed), and the TIME_WAIT entries on the host after the run that were not there\n"
        "before it (sock_diag; run ab in a quiet network namespace, `ip netns exec NS tcpfix\n"
        "ab ...`, so other traffic does not count). The table shows each arm's median over its\n"
        "runs, with min-max. --plot draws the same with /usr/bin/python3 and matplotlib\n"
        "(python3-matplotlib).\n"
        "Exit status: 0 the experiment ran (whatever CMD's statuses, shown in the table),\n"
        "2 bad option or variable, 3 failure, 127 CMD not found, 130 interrupted.");
    return {app, [o] { return run_ab(*o); }};
}

}  // namespace tcpfix::tools
