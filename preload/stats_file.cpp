#include "preload/stats_file.hpp"

#include <fcntl.h>
#include <sched.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstring>
#include <ctime>
#include <string>

#include <fmt/format.h>

#include "policy/prom.hpp"
#include "preload/connect_policy.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

namespace tcpfix::stats_file {

std::atomic<bool> detail::g_enabled{false};

namespace {

constexpr std::int64_t kRefreshNs = 2'000'000'000;

using detail::g_enabled;
std::atomic<bool> g_writing{false};
std::atomic<std::int64_t> g_last_write_ns{0};
std::atomic<std::uint64_t> g_activity_written{0};  // connects + closes as of the last write
const std::string* g_template = nullptr;  // TCPFIX_STATS as given
bool g_prometheus = false;                 // ... ends in ".prom": exposition format, not JSON
// {"TCPFIX_CLOSE":"rst",...}. A plain buffer: a static std::string would be
// destroyed by exit() before the library's destructor writes the final stats.
char g_policy_json[4096];
std::size_t g_policy_json_len = 0;
std::string_view g_source_names[policy::Counters::kMaxSourceAddrs];
std::size_t g_source_count = 0;
char g_path[PATH_MAX];
timespec g_started{};  // when this process (or forked child) began counting

void expand_path() {
    std::string_view t = *g_template;
    char* out = g_path;
    char* end = g_path + sizeof g_path - 1;
    for (std::size_t i = 0; i < t.size() && out < end; ++i) {
        if (t[i] == '%' && i + 1 < t.size() && t[i + 1] == 'p') {
            auto r = fmt::format_to_n(out, static_cast<std::size_t>(end - out), "{}", runtime::pid());
            out += r.size < static_cast<std::size_t>(end - out) ? r.size : static_cast<std::size_t>(end - out);
            ++i;
        } else {
            *out++ = t[i];
        }
    }
    *out = '\0';
}

// A process that did nothing must not overwrite counters another process of
// the same run (same path, no %p) wrote since it started — a shell wrapper
// exits after the client it ran.
bool would_clobber_with_nothing() {
    const auto& c = runtime::counters();
    if (c.sockets.load(std::memory_order_relaxed) != 0 ||
        c.connects.load(std::memory_order_relaxed) != 0)
        return false;
    struct stat st;  // not stat(): glibc 2.33's symbol; the library runs on 2.17
    if (real::raw_syscall(SYS_newfstatat, AT_FDCWD, reinterpret_cast<long>(g_path),
                          reinterpret_cast<long>(&st), 0) != 0)
        return false;
    return st.st_mtim.tv_sec > g_started.tv_sec ||
           (st.st_mtim.tv_sec == g_started.tv_sec && st.st_mtim.tv_nsec >= g_started.tv_nsec);
}

// Big enough for every destination the table holds; static rather than on
// the stack (this runs on the close path, on whatever stack the caller has),
// and only ever used under g_writing.
char g_json[65536];

void write_file() {
    char* json = g_json;
    policy::StatsContext ctx;
    ctx.tag = runtime::config().tag;
    ctx.pid = runtime::pid();
    ctx.policy_json = std::string_view(g_policy_json, g_policy_json_len);
    ctx.source_addr_names = g_source_names;
    ctx.source_addr_count = g_source_count;
    std::size_t n = g_prometheus ? policy::render_stats_prom(runtime::counters(), ctx,
                                                             runtime::config().given, json,
                                                             sizeof g_json)
                                 : policy::render_stats_json(runtime::counters(), ctx, json,
                                                             sizeof g_json);
    if (n == 0 || would_clobber_with_nothing()) return;
    char tmp[PATH_MAX + 32];
    auto r = fmt::format_to_n(tmp, sizeof tmp - 1, "{}.tmp.{}", g_path, runtime::pid());
    tmp[r.size < sizeof tmp - 1 ? r.size : sizeof tmp - 1] = '\0';
    unlink(tmp);
    // A .prom file is there for another user (node_exporter's textfile
    // collector), so it is 0644: its directory decides who reaches it. The
    // temporary name does not end in .prom, so the collector never reads half
    // a file. JSON stays 0600.
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                  g_prometheus ? 0644 : 0600);
    if (fd < 0) {
        log::at(policy::LogLevel::Warn, "cannot write TCPFIX_STATS {}: {}", tmp,
                policy::errno_name(errno));
        return;
    }
    bool ok = true;
    for (std::size_t off = 0; off < n;) {
        ssize_t w = write(fd, json + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            ok = false;
            break;
        }
        off += static_cast<std::size_t>(w);
    }
    real::close.get()(fd);
    if (!ok || rename(tmp, g_path) != 0) {
        log::at(policy::LogLevel::Warn, "cannot write TCPFIX_STATS {}: {}", g_path,
                policy::errno_name(errno));
        unlink(tmp);
    }
}

// Writes unless another write is under way; with `wait`, waits for that one
// to finish and then writes (the exit handler: the refresher thread dies at
// exit mid-write, so its write cannot stand for the last one).
void write_locked(bool wait = false) {
    if (!g_enabled.load(std::memory_order_acquire)) return;
    while (g_writing.exchange(true, std::memory_order_acquire)) {
        if (!wait) return;  // someone else is at it
        sched_yield();
    }
    runtime::ErrnoGuard keep_errno;
    g_last_write_ns.store(runtime::now_ns(), std::memory_order_relaxed);
    const auto& c = runtime::counters();
    g_activity_written.store(c.connects.load(std::memory_order_relaxed) + c.closes.load(std::memory_order_relaxed),
                             std::memory_order_relaxed);
    write_file();
    g_writing.store(false, std::memory_order_release);
}

}  // namespace

void init(const policy::Config& config, bool secure) {
    clock_gettime(CLOCK_REALTIME, &g_started);
    if (config.stats_path.empty()) return;
    if (secure) {
        log::write_line(policy::LogLevel::Warn,
                        "TCPFIX_STATS ignored in a set-user-ID or otherwise secure process");
        return;
    }
    g_template = &config.stats_path;
    g_prometheus = policy::wants_prometheus(config.stats_path);
    std::string policy_json = "{";
    for (const auto& [name, value] : config.given) {
        if (policy_json.size() > 1) policy_json += ',';
        policy_json += policy::json_quote(name) + ":" + policy::json_quote(value);
    }
    policy_json += "}";
    if (policy_json.size() <= sizeof g_policy_json) {
        std::memcpy(g_policy_json, policy_json.data(), policy_json.size());
        g_policy_json_len = policy_json.size();
    }
    for (const auto& ip : config.source_addrs) {
        if (g_source_count == policy::Counters::kMaxSourceAddrs) break;
        g_source_names[g_source_count++] = *new std::string(policy::to_string(ip));  // lives as long as the process
    }
    expand_path();
    g_last_write_ns.store(runtime::now_ns(), std::memory_order_relaxed);  // first refresh one interval in
    g_enabled.store(true, std::memory_order_release);
}

void after_fork_in_child() {
    g_writing.store(false, std::memory_order_relaxed);
    clock_gettime(CLOCK_REALTIME, &g_started);
    g_last_write_ns.store(runtime::now_ns(), std::memory_order_relaxed);
    if (g_template == nullptr) return;
    if (g_template->find("%p") == std::string::npos) {
        g_enabled.store(false, std::memory_order_release);
        return;
    }
    expand_path();
}

void detail::refresh_if_due() {
    std::int64_t now = runtime::now_ns();
    if (now - g_last_write_ns.load(std::memory_order_relaxed) < kRefreshNs) return;
    write_locked();
}

std::int64_t on_timer(std::int64_t now) {
    if (!g_enabled.load(std::memory_order_relaxed)) return INT64_MAX;
    std::int64_t last = g_last_write_ns.load(std::memory_order_relaxed);
    if (now - last < kRefreshNs) return last + kRefreshNs;
    // Only when something happened since the last write: an idle process stays quiet.
    const auto& c = runtime::counters();
    std::uint64_t activity = c.connects.load(std::memory_order_relaxed) + c.closes.load(std::memory_order_relaxed);
    if (activity != g_activity_written.load(std::memory_order_relaxed)) write_locked();
    return now + kRefreshNs;
}

void start_refresher() {
    if (g_enabled.load(std::memory_order_relaxed)) connect_policy::start_timer();
}

void write_now() { write_locked(true); }

}  // namespace tcpfix::stats_file
