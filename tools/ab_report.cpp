// `tcpfix ab`'s output: the side-by-side table of medians, the JSON, and the
// plot (drawn by a small matplotlib script run with /usr/bin/python3).
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <stdexcept>

#include "policy/stats.hpp"
#include "tools/ab.hpp"
#include "tools/fd.hpp"

namespace tcpfix::tools::ab {
namespace {

constexpr const char* kPython = "/usr/bin/python3";

// Counters shown first, in this order, with their row labels.
constexpr std::pair<const char*, const char*> kMainCounters[] = {
    {"connects", "connects"},
    {"connect_timeouts", "connect timeouts"},
    {"connect_retries", "connect retries"},
    {"closes_rst", "RSTs sent (closes_rst)"},
};

// Fields of the stats file that are not counters to sum.
bool is_counter(const std::string& key) {
    return key != "pid";
}

std::vector<const Run*> runs_of(const Experiment& e, const std::string& arm) {
    std::vector<const Run*> out;
    for (const auto& r : e.runs)
        if (r.arm == arm) out.push_back(&r);
    return out;
}

// One row's values for one arm: nullopt per run that has no stats.
using Getter = std::optional<double> (*)(const Run&, const std::string&);

std::optional<double> counter(const Run& r, const std::string& key) {
    if (r.processes == 0) return std::nullopt;
    auto it = r.counters.find(key);
    return it == r.counters.end() ? 0.0 : it->second;
}

std::optional<double> error_count(const Run& r, const std::string& key) {
    if (r.processes == 0) return std::nullopt;
    auto it = r.connect_errors.find(key);
    return it == r.connect_errors.end() ? 0.0 : it->second;
}

std::optional<double> errors_total(const Run& r, const std::string&) {
    if (r.processes == 0) return std::nullopt;
    double sum = 0;
    for (const auto& [k, v] : r.connect_errors) sum += v;
    return sum;
}

std::optional<double> wall(const Run& r, const std::string&) {
    return r.wall_s;
}
std::optional<double> time_wait(const Run& r, const std::string&) {
    return r.time_wait_left;
}
std::optional<double> processes(const Run& r, const std::string&) {
    return r.processes;
}

std::vector<double> values(const Experiment& e, const std::string& arm, Getter get,
                           const std::string& key) {
    std::vector<double> out;
    for (const auto* r : runs_of(e, arm))
        if (auto v = get(*r, key)) out.push_back(*v);
    return out;
}

std::string number(double v, bool seconds) {
    if (seconds) return fmt::format("{:.3f}", v);
    if (v == static_cast<double>(static_cast<long long>(v)))
        return fmt::format("{}", static_cast<long long>(v));
    return fmt::format("{:.1f}", v);
}

// "50" or "50 (48-52)"; "-" without values.
std::string cell(const std::vector<double>& v, bool seconds = false) {
    if (v.empty()) return "-";
    auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    auto m = number(median(v), seconds);
    if (*lo == *hi) return m;
    return fmt::format("{} ({}-{})", m, number(*lo, seconds), number(*hi, seconds));
}

std::string json_number(double v) {
    if (v == static_cast<double>(static_cast<long long>(v)))
        return fmt::format("{}", static_cast<long long>(v));
    return fmt::format("{:.6g}", v);
}

std::string json_map(const std::map<std::string, double>& m) {
    std::string out = "{";
    for (const auto& [k, v] : m)
        out += fmt::format("{}{}:{}", out.size() > 1 ? "," : "", policy::json_quote(k),
                           json_number(v));
    return out + "}";
}

std::string json_median(const std::vector<double>& v) {
    return v.empty() ? "null" : json_number(median(v));
}

// Runs a program with `input` on its stdin, its stdout/stderr as given (-1:
// /dev/null); returns its exit status (128 + signal), or -1 when it could not
// start.
int run_program(const std::vector<std::string>& args, const std::string& input, bool quiet) {
    int pipefd[2];
    if (::pipe2(pipefd, O_CLOEXEC) != 0) throw_errno("pipe2");
    Fd read_end(pipefd[0]), write_end(pipefd[1]);
    std::vector<char*> argv;
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) throw_errno("fork");
    if (pid == 0) {
        sigset_t none;  // ab blocks SIGINT/SIGTERM for itself, not for its helpers
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::dup2(read_end.get(), STDIN_FILENO);
        if (quiet) {
            int null = ::open("/dev/null", O_WRONLY);
            ::dup2(null, STDOUT_FILENO);
            ::dup2(null, STDERR_FILENO);
        } else {
            ::dup2(STDERR_FILENO, STDOUT_FILENO);
        }
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    read_end.reset();
    // A plotter that dies early must not kill tcpfix with SIGPIPE.
    struct sigaction ignore {
    }, old{};
    ignore.sa_handler = SIG_IGN;
    ::sigaction(SIGPIPE, &ignore, &old);
    for (std::size_t off = 0; off < input.size();) {
        ssize_t n = ::write(write_end.get(), input.data() + off, input.size() - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        off += static_cast<std::size_t>(n);
    }
    write_end.reset();
    ::sigaction(SIGPIPE, &old, nullptr);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) throw_errno("waitpid");
    if (WIFEXITED(status)) return WEXITSTATUS(status) == 127 ? -1 : WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

constexpr const char* kPlotScript = R"PY(
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

d = json.load(sys.stdin)
metrics = [("wall_s", "wall time (s)"), ("connects", "connects"),
           ("connect_errors", "connect errors"), ("connect_timeouts", "connect timeouts"),
           ("connect_retries", "connect retries"), ("closes_rst", "RSTs sent"),
           ("time_wait_left", "TIME_WAIT left")]

def value(run, key):
    if key in ("wall_s", "time_wait_left"):
        return run[key]
    if run["processes"] == 0:
        return None
    if key == "connect_errors":
        return sum(run["connect_errors"].values())
    return run["counters"].get(key, 0)

def median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2

colors = {"a": "#4c72b0", "b": "#dd8452"}
fig, axes = plt.subplots(1, len(metrics), figsize=(2.1 * len(metrics), 3.8))
for ax, (key, label) in zip(axes, metrics):
    for i, arm in enumerate(("a", "b")):
        vals = [v for v in (value(r, key) for r in d["arms"][arm]["runs"]) if v is not None]
        if not vals:
            continue
        ax.bar(i, median(vals), color=colors[arm], width=0.6, alpha=0.85)
        ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["a", "b"])
    ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1))
    ax.set_title(label, fontsize=9)
    ax.tick_params(labelsize=8)
command = " ".join(d["command"])
if len(command) > 90:
    command = command[:87] + "..."
spec = lambda arm: d["arms"][arm]["spec"] or "(no variables)"
fig.suptitle("tcpfix ab: %s\na: %s    b: %s    (bars: median of %d runs; dots: runs)"
             % (command, spec("a"), spec("b"), d["runs_per_arm"]), fontsize=9)
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=100)
)PY";

}  // namespace

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    auto n = v.size();
    return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::vector<std::string> counter_rows(const Experiment& e) {
    std::vector<std::string> rows;
    for (const auto& [key, label] : kMainCounters) rows.emplace_back(key);
    std::set<std::string> others;
    for (const auto& r : e.runs)
        for (const auto& [key, v] : r.counters)
            if (v != 0 && is_counter(key) && std::find(rows.begin(), rows.end(), key) == rows.end())
                others.insert(key);
    rows.insert(rows.end(), others.begin(), others.end());
    return rows;
}

std::vector<std::string> error_rows(const Experiment& e) {
    std::set<std::string> names;
    for (const auto& r : e.runs)
        for (const auto& [name, v] : r.connect_errors)
            if (v != 0) names.insert(name);
    return {names.begin(), names.end()};
}

void print_table(const Experiment& e) {
    std::string command;
    for (const auto& c : e.command) command += (command.empty() ? "" : " ") + c;
    std::string order;
    for (const auto& r : e.runs)
        order += fmt::format("{}{}{}", order.empty() ? "" : " ", r.arm, r.index);
    fmt::print("tcpfix ab: {}\n", command);
    fmt::print("  {} run{} per arm, in this order: {}{}\n", e.runs_per_arm,
               e.runs_per_arm == 1 ? "" : "s", order, e.interrupted ? " (interrupted)" : "");
    for (const auto& arm : e.arms)
        fmt::print("  {}: {}\n", arm.name,
                   arm.spec.empty() ? "(no variables: counting only)" : arm.spec);
    fmt::print("\n");
    constexpr int kLabel = 30, kCell = 24;
    auto row = [&](const std::string& label, const std::string& a, const std::string& b) {
        fmt::print("{:<{}} {:<{}} {}\n", label, kLabel, a, kCell, b);
    };
    row("median (min-max)", "a", "b");
    auto both = [&](const std::string& label, Getter get, const std::string& key,
                    bool seconds = false) {
        row(label, cell(values(e, "a", get, key), seconds),
            cell(values(e, "b", get, key), seconds));
    };
    both("wall time (s)", wall, "", true);
    auto statuses = [&](const std::string& arm) {
        std::string s;
        for (const auto* r : runs_of(e, arm))
            s += fmt::format("{}{}{}", s.empty() ? "" : " ", r->exit_status,
                             r->timed_out ? "(t)" : "");
        return s.empty() ? std::string("-") : s;
    };
    row("exit status of each run", statuses("a"), statuses("b"));
    both("processes counted", processes, "");
    for (const auto& key : counter_rows(e)) {
        auto it = std::find_if(std::begin(kMainCounters), std::end(kMainCounters),
                               [&](const auto& kv) { return key == kv.first; });
        std::string label = it != std::end(kMainCounters) ? it->second : key;
        both(label, counter, key);
        if (key == "connects") {
            both("connect errors", errors_total, "");
            for (const auto& name : error_rows(e)) both("  " + name, error_count, name);
        }
    }
    both("TIME_WAIT left on the host", time_wait, "");
    if (std::any_of(e.runs.begin(), e.runs.end(), [](const Run& r) { return r.processes == 0; }))
        fmt::print(
            "\n'-' or a low process count: some runs left no stats file. A process writes one when "
            "it exits normally (or every 2 s while it works): not with TCPFIX_DISABLE=1, not when "
            "killed before its first refresh or ending with _exit(), and not when the library "
            "never loaded (a static or set-user-ID program).\n");
}

std::string to_json(const Experiment& e) {
    std::string out = "{\"command\":[";
    for (std::size_t i = 0; i < e.command.size(); ++i)
        out += (i ? "," : "") + policy::json_quote(e.command[i]);
    out += fmt::format("],\"runs_per_arm\":{},\"interrupted\":{},\"order\":[", e.runs_per_arm,
                       e.interrupted);
    for (std::size_t i = 0; i < e.runs.size(); ++i)
        out += fmt::format("{}\"{}{}\"", i ? "," : "", e.runs[i].arm, e.runs[i].index);
    out += "],\"arms\":{";
    for (int a = 0; a < 2; ++a) {
        const auto& arm = e.arms[a];
        std::string vars = "{";
        for (const auto& [k, v] : arm.variables)
            vars += fmt::format("{}{}:{}", vars.size() > 1 ? "," : "", policy::json_quote(k),
                                policy::json_quote(v));
        vars += "}";
        out += fmt::format("{}\"{}\":{{\"spec\":{},\"variables\":{},\"runs\":[", a ? "," : "",
                           arm.name, policy::json_quote(arm.spec), vars);
        auto runs = runs_of(e, arm.name);
        for (std::size_t i = 0; i < runs.size(); ++i) {
            const auto& r = *runs[i];
            out += fmt::format(
                "{}{{\"run\":{},\"wall_s\":{:.6f},\"exit_status\":{},\"timed_out\":{},"
                "\"processes\":{},\"time_wait_left\":{},\"counters\":{},\"connect_errors\":{}}}",
                i ? "," : "", r.index, r.wall_s, r.exit_status, r.timed_out, r.processes,
                r.time_wait_left, json_map(r.counters), json_map(r.connect_errors));
        }
        std::string counters = "{";
        for (const auto& key : counter_rows(e))
            counters +=
                fmt::format("{}{}:{}", counters.size() > 1 ? "," : "", policy::json_quote(key),
                            json_median(values(e, arm.name, counter, key)));
        counters += "}";
        std::string errors = "{";
        for (const auto& name : error_rows(e))
            errors += fmt::format("{}{}:{}", errors.size() > 1 ? "," : "", policy::json_quote(name),
                                  json_median(values(e, arm.name, error_count, name)));
        errors += "}";
        out += fmt::format(
            "],\"median\":{{\"wall_s\":{},\"time_wait_left\":{},\"processes\":{},"
            "\"connect_errors\":{},\"connect_errors_by_errno\":{},\"counters\":{}}}}}",
            json_median(values(e, arm.name, wall, "")),
            json_median(values(e, arm.name, time_wait, "")),
            json_median(values(e, arm.name, processes, "")),
            json_median(values(e, arm.name, errors_total, "")), errors, counters);
    }
    out += "}}";
    return out;
}

void print_json(const Experiment& e) {
    fmt::print("{}\n", to_json(e));
}

void check_plotting() {
    if (run_program({kPython, "-c", "import matplotlib"}, "", true) != 0)
        throw std::runtime_error(
            "ab: --plot needs matplotlib for /usr/bin/python3 (apt-get install -y "
            "python3-matplotlib), or leave --plot out");
}

void plot(const Experiment& e, const std::string& png_path) {
    int status = run_program({kPython, "-c", kPlotScript, png_path}, to_json(e), false);
    if (status != 0)
        throw std::runtime_error(
            fmt::format("ab: --plot {}: {} exited with status {} (its message is above)", png_path,
                        kPython, status));
}

}  // namespace tcpfix::tools::ab
