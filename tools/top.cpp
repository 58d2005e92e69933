// `tcpfix top [NAME]`: reads a share's segment (read-only, after the same
// checks the library makes) twice an interval apart and shows, per
// destination, what every process attached to it is doing, refreshed like
// top; TIME_WAIT entries come from NETLINK_SOCK_DIAG (tools/diag). Without
// NAME it lists the shares in /dev/shm. `--prom FILE` also writes the
// counters as a Prometheus textfile (policy/prom.cpp) at every refresh.
#include "tools/top.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <map>
#include <memory>

#include "policy/prom.hpp"
#include "tools/diag.hpp"
#include "tools/fd.hpp"
#include "tools/interrupt.hpp"

namespace tcpfix::tools {
namespace {

namespace ps = policy::share;

constexpr std::uint32_t kPidMaxLimit = 4 * 1024 * 1024;

struct TopOptions {
    std::string name;
    bool once = false;
    bool json = false;
    std::int64_t interval_ns = 1'000'000'000;
    int count = 0;
    std::string prom;
    std::optional<std::uint32_t> uid;
};

// A read-only mapping of a segment that passed validation.
class Mapping {
  public:
    Mapping(void* base, std::size_t size) : base_(base), size_(size) {}
    ~Mapping() { ::munmap(base_, size_); }
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ps::Segment segment() const { return ps::Segment(base_); }

  private:
    void* base_;
    std::size_t size_;
};

std::uint64_t start_ticks(std::uint32_t pid) {
    Fd fd(::open(fmt::format("/proc/{}/stat", pid).c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return 0;
    char buf[1024];
    ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
    if (n <= 0) return 0;
    return ps::parse_stat_start_ticks(std::string_view(buf, static_cast<std::size_t>(n)))
        .value_or(0);
}

// The process in a slot is still there: its PID exists (in this PID
// namespace) and started when the slot says.
bool is_live(std::uint64_t owner) {
    std::uint32_t pid = ps::identity_pid(owner);
    if (pid == 0 || pid > kPidMaxLimit) return false;
    if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno != EPERM) return false;
    std::uint32_t start = ps::identity_start(owner);
    if (start == 0) return true;
    std::uint64_t now = start_ticks(pid);
    return now == 0 || static_cast<std::uint32_t>(now) == start;
}

ps::Snapshot take(const Mapping& m) {
    auto s = ps::snapshot(m.segment(), is_live);
    std::sort(s.processes.begin(), s.processes.end());
    s.processes.erase(std::unique(s.processes.begin(), s.processes.end()), s.processes.end());
    return s;
}

std::string path_of(std::uint32_t uid, const std::string& name) {
    return fmt::format("{}/{}", top::kShmDir, ps::file_name(uid, name));
}

// Opens and validates a segment; throws UsageError saying what is wrong.
std::unique_ptr<Mapping> open_share(const std::string& path, std::uint32_t uid,
                                    std::string_view name) {
    Fd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY));
    if (!fd) {
        if (errno == ENOENT)
            throw UsageError(fmt::format(
                "{}: no such share (no process of uid {} has used TCPFIX_SHARE={} since "
                "the host booted; `tcpfix top` lists the shares there are)",
                path, uid, name));
        if (errno == ELOOP)
            throw UsageError(fmt::format("{}: is a symbolic link; not followed", path));
        throw_errno(path.c_str());
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) throw_errno(path.c_str());
    if (!S_ISREG(st.st_mode)) throw UsageError(fmt::format("{}: not a regular file", path));
    if (st.st_uid != uid)
        throw UsageError(fmt::format("{}: belongs to uid {}, not {}: not a share tcpfix made", path,
                                     st.st_uid, uid));
    if ((st.st_mode & 077) != 0)
        throw UsageError(
            fmt::format("{}: is open to other users (mode {:04o}); the library does not use it",
                        path, st.st_mode & 07777));
    const auto size = static_cast<std::size_t>(st.st_size);
    if (st.st_size < static_cast<off_t>(ps::kHeaderSize) ||
        size > ps::segment_size(ps::kMaxEntries, ps::kMaxProcs))
        throw UsageError(fmt::format("{}: the share {}", path, ps::describe(ps::Problem::Size)));
    void* base = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
    if (base == MAP_FAILED) throw_errno("mmap");
    auto m = std::make_unique<Mapping>(base, size);
    if (auto p = ps::validate(base, size, uid, name); p != ps::Problem::None)
        throw UsageError(fmt::format("{}: the share {}", path, ps::describe(p)));
    return m;
}

std::vector<top::Listed> list_shares() {
    std::vector<top::Listed> out;
    std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(top::kShmDir), ::closedir);
    if (!dir) throw_errno(top::kShmDir);
    const std::uint32_t me = ::geteuid();
    while (auto* e = ::readdir(dir.get())) {
        auto file = ps::parse_file_name(e->d_name);
        if (!file || (me != 0 && file->uid != me)) continue;
        top::Listed l;
        l.path = fmt::format("{}/{}", top::kShmDir, e->d_name);
        l.file = *file;
        if (file->version != ps::kLayoutVersion) {
            l.problem = fmt::format("layout version {}: another tcpfix version (this one reads {})",
                                    file->version, ps::kLayoutVersion);
        } else {
            try {
                auto m = open_share(l.path, file->uid, file->name);
                l.snapshot = take(*m);
            } catch (const std::exception& ex) {
                l.problem = ex.what();
            }
        }
        out.push_back(std::move(l));
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
        return std::tie(a.file.uid, a.file.name, a.file.version) <
               std::tie(b.file.uid, b.file.name, b.file.version);
    });
    return out;
}

// Writes a textfile atomically (a temporary name the collector ignores, then
// rename), 0644 as node_exporter's textfile collector reads it as another user.
void write_prom(const std::string& path, const std::string& text) {
    auto slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
    std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    std::string tmp = fmt::format("{}/.{}.tmp.{}", dir, base, ::getpid());
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (!fd) throw_errno(tmp.c_str());
    ::fchmod(fd.get(), 0644);
    for (std::size_t off = 0; off < text.size();) {
        ssize_t n = ::write(fd.get(), text.data() + off, text.size() - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int err = errno;
            ::unlink(tmp.c_str());
            errno = err;
            throw_errno(tmp.c_str());
        }
        off += static_cast<std::size_t>(n);
    }
    fd.reset();
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        int err = errno;
        ::unlink(tmp.c_str());
        errno = err;
        throw_errno(path.c_str());
    }
}

// TIME_WAIT entries per remote endpoint, in this network namespace.
std::map<std::tuple<std::uint64_t, std::uint64_t, std::uint64_t>, std::int64_t>
time_wait_by_destination() {
    std::map<std::tuple<std::uint64_t, std::uint64_t, std::uint64_t>, std::int64_t> out;
    for (const auto& s : diag::dump_tcp(diag::state_bit(diag::kTimeWait))) {
        auto k = ps::make_key(s.remote);
        ++out[{k.w[0], k.w[1], k.w[2]}];
    }
    return out;
}

void fill_time_wait(top::View& v) {
    try {
        auto tw = time_wait_by_destination();
        for (auto& e : v.snapshot.entries) {
            auto k = ps::make_key(e.dest);
            auto it = tw.find({k.w[0], k.w[1], k.w[2]});
            e.time_wait = it != tw.end() ? it->second : 0;
        }
        for (auto& r : v.rows) {
            auto k = ps::make_key(r.now.dest);
            auto it = tw.find({k.w[0], k.w[1], k.w[2]});
            r.now.time_wait = it != tw.end() ? it->second : 0;
        }
        v.time_wait_known = true;
    } catch (const std::exception& ex) {
        v.time_wait_known = false;
        v.time_wait_error = ex.what();
    }
}

std::string clock_now() {
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    ::localtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%H:%M:%S", &tm);
    return buf;
}

// stdin without line buffering or echo while the live view runs, so one
// keystroke ('q') ends it; restored on the way out.
class RawKeys {
  public:
    RawKeys() {
        if (!::isatty(0) || ::tcgetattr(0, &saved_) != 0) return;
        termios raw = saved_;
        raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
        raw.c_cc[VMIN] = 0;
        raw.c_cc[VTIME] = 0;
        active_ = ::tcsetattr(0, TCSANOW, &raw) == 0;
    }
    ~RawKeys() {
        if (active_) ::tcsetattr(0, TCSANOW, &saved_);
    }
    RawKeys(const RawKeys&) = delete;
    RawKeys& operator=(const RawKeys&) = delete;
    bool active() const { return active_; }

  private:
    termios saved_{};
    bool active_ = false;
};

// Waits one interval; false when the user asked to stop (q, SIGINT, SIGTERM).
bool wait_interval(std::int64_t ns, const Interrupt& interrupt, bool keys) {
    timespec start{};
    ::clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        timespec now{};
        ::clock_gettime(CLOCK_MONOTONIC, &now);
        std::int64_t spent =
            (now.tv_sec - start.tv_sec) * 1'000'000'000LL + (now.tv_nsec - start.tv_nsec);
        if (spent >= ns) return true;
        pollfd p[2] = {{interrupt.fd(), POLLIN, 0}, {0, POLLIN, 0}};
        int n = ::poll(p, keys ? 2 : 1, static_cast<int>((ns - spent + 999'999) / 1'000'000));
        if (n < 0 && errno != EINTR) throw_errno("poll");
        if (n <= 0) continue;
        if (p[0].revents != 0) return false;
        if (keys && p[1].revents != 0) {
            char c = 0;
            if (::read(0, &c, 1) == 1 && (c == 'q' || c == 'Q')) return false;
        }
    }
}

int terminal_rows() {
    winsize ws{};
    if (::ioctl(1, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0) return ws.ws_row;
    return 0;
}

int run_list(const TopOptions& o) {
    auto shares = list_shares();
    if (o.json)
        fmt::print("{}\n", top::render_list_json(shares));
    else
        fmt::print("{}", top::render_list(shares));
    if (!o.prom.empty()) {
        std::vector<ps::Snapshot> readable;
        for (const auto& l : shares)
            if (l.snapshot) readable.push_back(*l.snapshot);
        write_prom(o.prom, policy::render_shares_prom(readable));
    }
    return 0;
}

// The uid whose share NAME is: --uid, else this user's; root, lacking one
// of its own, takes the one user's share of that name if there is one.
std::uint32_t resolve_uid(const TopOptions& o) {
    if (o.uid) return *o.uid;
    const std::uint32_t me = ::geteuid();
    if (me != 0 || ::access(path_of(me, o.name).c_str(), F_OK) == 0) return me;
    std::vector<std::uint32_t> found;
    std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(top::kShmDir), ::closedir);
    if (dir)
        while (auto* e = ::readdir(dir.get())) {
            auto f = ps::parse_file_name(e->d_name);
            if (f && f->name == o.name && f->version == ps::kLayoutVersion) found.push_back(f->uid);
        }
    if (found.size() == 1) return found[0];
    if (found.size() > 1)
        throw UsageError(
            fmt::format("several users have a share named {}; choose one with --uid", o.name));
    return me;
}

int run_top(const TopOptions& o) {
    if (o.name.empty()) return run_list(o);
    if (!ps::valid_name(o.name))
        throw UsageError(fmt::format(
            "\"{}\": a share name is 1 to 64 letters, digits, '.', '_' or '-'", o.name));
    const std::uint32_t uid = resolve_uid(o);
    top::View view;
    view.path = path_of(uid, o.name);
    auto mapping = open_share(view.path, uid, o.name);

    Interrupt interrupt;
    const bool live = !o.once && !o.json;
    const bool tty = ::isatty(1) != 0;
    std::unique_ptr<RawKeys> keys;
    if (live) keys = std::make_unique<RawKeys>();

    auto before = take(*mapping);
    timespec t0{};
    ::clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int screens = 0;;) {
        if (!wait_interval(o.interval_ns, interrupt, keys && keys->active())) break;
        auto after = take(*mapping);
        timespec t1{};
        ::clock_gettime(CLOCK_MONOTONIC, &t1);
        view.interval_s = static_cast<double>(t1.tv_sec - t0.tv_sec) +
                          static_cast<double>(t1.tv_nsec - t0.tv_nsec) / 1e9;
        view.rows = top::rows_between(before, after, view.interval_s);
        view.snapshot = after;
        fill_time_wait(view);
        if (o.json) {
            fmt::print("{}\n", top::render_json(view));
        } else {
            int rows = live && tty ? std::max(terminal_rows() - 9, 1) : 0;
            std::string screen = top::render_screen(view, clock_now(), rows);
            if (live && tty)
                fmt::print("\x1b[H\x1b[2J{}", screen);
            else
                fmt::print("{}{}", screens > 0 ? "\n" : "", screen);
        }
        std::fflush(stdout);
        if (!o.prom.empty()) {
            ps::Snapshot with_tw = view.snapshot;
            write_prom(o.prom,
                       policy::render_shares_prom(std::span<const ps::Snapshot>(&with_tw, 1)));
        }
        ++screens;
        if (o.once || (o.count > 0 && screens >= o.count)) break;
        before = std::move(after);
        t0 = t1;
    }
    return 0;
}

}  // namespace

Command add_top(CLI::App& parent) {
    auto o = std::make_shared<TopOptions>();
    auto* app = parent.add_subcommand(
        "top",
        "Show a share (TCPFIX_SHARE) live: per destination, what all its processes are doing");
    app->add_option("NAME", o->name,
                    "the share's name (TCPFIX_SHARE); without it, list the shares on this host");
    app->add_flag("--once", o->once, "print one screen (one interval's rates) and exit");
    app->add_flag("--json", o->json,
                  "one JSON object per interval instead of a screen (with --once: one)");
    add_duration(*app, "--interval", o->interval_ns,
                 "time between refreshes (the rates are over it)", "1s");
    app->add_option("-n,--count", o->count, "exit after this many screens (0: until q or Ctrl-C)")
        ->check(CLI::Range(0, 1'000'000'000));
    app->add_option(
           "--prom", o->prom,
           "also write the share's counters as a Prometheus textfile at PATH at every refresh "
           "(without NAME: every share listed, once)")
        ->type_name("PATH");
    app->add_option("--uid", o->uid, "the user whose share NAME is (default: this user's)");
    app->footer(
        "Columns: CONN/s and FAIL/s over the last interval, all processes together; BACKOFF the\n"
        "destination's current reconnect delay ('-': healthy); WAITING connects of live processes\n"
        "waiting for their turn now; THROTTLEDms/s time spent waiting per second; REAPED sockets\n"
        "shut down in CLOSE_WAIT (total); TIME_WAIT entries toward the destination in this "
        "network\n"
        "namespace now (sock_diag); CONNECTS and FAILURES totals since the share was created.\n"
        "Processes attached: live processes that connected through the share.\n"
        "The live view refreshes every --interval; q or Ctrl-C ends it. --prom PATH writes the\n"
        "counters atomically (0644) for node_exporter's textfile collector, e.g.\n"
        "  tcpfix top php-pool --once --prom "
        "/var/lib/prometheus/node-exporter/tcpfix-php-pool.prom\n"
        "from cron or a timer.");
    return {app, [o] { return run_top(*o); }, kExitUsage};
}

}  // namespace tcpfix::tools
