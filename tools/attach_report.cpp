// What the daemon reports: its log lines (and --json events), and its
// counters as the preload's stats file (the same JSON or Prometheus text,
// from policy/), with what only attach knows added under "attach".
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "policy/prom.hpp"
#include "tools/attach_daemon.hpp"

namespace tcpfix::tools::attach {
namespace {

constexpr std::string_view kLevelNames[] = {"off", "error", "warn", "info", "debug"};

}  // namespace

Log::Log(const policy::Config& config, bool json)
    : level_(config.log), tag_(config.tag), json_(json) {
    if (config.log_file.empty() || level_ == policy::LogLevel::Off) return;
    file_.reset(::open(config.log_file.c_str(),
                       O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!file_)
        line(policy::LogLevel::Warn,
             fmt::format("cannot open TCPFIX_LOG_FILE {}: {}; logging to stderr", config.log_file,
                         policy::errno_name(errno)));
}

bool Log::enabled(policy::LogLevel level) const {
    return level != policy::LogLevel::Off && static_cast<int>(level) <= static_cast<int>(level_);
}

void Log::line(policy::LogLevel level, const std::string& text) {
    if (!enabled(level)) return;
    auto out = tag_.empty() ? fmt::format("tcpfix[{}] {}: {}\n", ::getpid(),
                                          kLevelNames[static_cast<int>(level)], text)
                            : fmt::format("tcpfix[{}] tag={} {}: {}\n", ::getpid(), tag_,
                                          kLevelNames[static_cast<int>(level)], text);
    int fd = file_ ? file_.get() : 2;
    for (std::size_t off = 0; off < out.size();) {
        ssize_t n = ::write(fd, out.data() + off, out.size() - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        off += static_cast<std::size_t>(n);
    }
}

void Log::event(const std::string& json_object) {
    if (!json_) return;
    fmt::print(stdout, "{}\n", json_object);
    std::fflush(stdout);
}

std::string Daemon::render_stats() const {
    auto t = programs_.totals();
    auto& c = *stats_;
    auto set = [](std::atomic<std::uint64_t>& a, std::uint64_t v) {
        a.store(v, std::memory_order_relaxed);
    };
    set(c.sockets, t.c[TCPFIX_C_CONNECTS]);  // attach sees sockets when they connect
    set(c.connects, t.c[TCPFIX_C_CONNECTS]);
    set(c.connects_matched, t.c[TCPFIX_C_CONNECTS_MATCHED]);
    for (int e = 0; e < policy::Counters::kMaxErrno && e < TCPFIX_MAX_ERRNO; ++e)
        set(c.connect_errors[e], t.c[TCPFIX_C_ERRNO + e]);
    set(c.connect_timeouts, t.c[TCPFIX_C_ERRNO + ETIMEDOUT]);
    c.connect_latency.assign(&t.c[TCPFIX_C_LATENCY]);
    set(c.closes, time_wait_events_);
    set(c.closes_rst, time_wait_destroyed_);
    set(c.close_wait_reaped, close_wait_reaped_);
    std::uint64_t binds = 0;
    std::string bind_failed;
    for (int i = 0; i < TCPFIX_MAX_ADDRS && i < policy::Counters::kMaxSourceAddrs; ++i) {
        set(c.source_addr_binds_by[i], t.c[TCPFIX_C_BINDS + i]);
        binds += t.c[TCPFIX_C_BINDS + i];
    }
    set(c.source_addr_binds, binds);

    std::string policy_json = "{";
    for (const auto& [name, value] : s_.config.given)
        policy_json += (policy_json.size() > 1 ? "," : "") + policy::json_quote(name) + ":" +
                       policy::json_quote(value);
    policy_json += "}";
    std::vector<std::string> names;
    for (const auto& ip : s_.config.source_addrs) names.push_back(policy::to_string(ip));
    std::vector<std::string_view> views(names.begin(), names.end());
    policy::StatsContext ctx;
    ctx.tag = s_.config.tag;
    ctx.pid = ::getpid();
    ctx.policy_json = policy_json;
    ctx.source_addr_names = views.data();
    ctx.source_addr_count = views.size();
    std::string buf(1 << 17, '\0');
    bool prom = policy::wants_prometheus(s_.config.stats_path);
    std::size_t n = prom
                        ? policy::render_stats_prom(c, ctx, s_.config.given, buf.data(), buf.size())
                        : policy::render_stats_json(c, ctx, buf.data(), buf.size());
    buf.resize(n);
    if (n == 0) return buf;
    std::uint64_t failed_binds = 0;
    for (int i = 0; i < TCPFIX_MAX_ADDRS; ++i) failed_binds += t.c[TCPFIX_C_BIND_FAILED + i];
    struct Extra {
        const char* name;
        const char* help;
        std::uint64_t value;
    };
    const Extra extras[] = {
        {"syn_retransmits", "SYNs sent again by matched connects", t.c[TCPFIX_C_SYN_RETRANSMITS]},
        {"connects_established", "matched connects that completed", t.c[TCPFIX_C_ESTABLISHED]},
        {"connects_failed", "matched connects that ended before completing", t.c[TCPFIX_C_FAILED]},
        {"time_wait_destroyed", "TIME_WAIT entries destroyed (--close rst)", time_wait_destroyed_},
        {"time_wait_gone", "TIME_WAIT entries already gone when looked for", time_wait_gone_},
        {"close_wait_seen", "matched sockets that entered CLOSE_WAIT", close_wait_seen_},
        {"close_wait_closed", "... closed by the application in time", close_wait_left_},
        {"close_wait_swept", "CLOSE_WAIT sockets older than the attach found", close_wait_swept_},
        {"source_skipped", "matched connects from sockets the application bound",
         t.c[TCPFIX_C_SOURCE_SKIPPED]},
        {"source_bind_failed", "bpf_bind() refusals", failed_binds},
        {"events_lost", "events the ring buffer had no room for", t.c[TCPFIX_C_EVENTS_LOST]},
        {"foreign_netns", "events from sockets in another network namespace", foreign_netns_},
    };
    if (prom) {
        auto tag = policy::json_quote(s_.config.tag);  // a quoted, escaped label value
        for (const auto& x : extras)
            buf += fmt::format(
                "# HELP tcpfix_attach_{0}_total {1}\n# TYPE tcpfix_attach_{0}_total counter\n"
                "tcpfix_attach_{0}_total{{tag={2}}} {3}\n",
                x.name, x.help, tag, x.value);
        return buf;
    }
    // The preload's object, and what only attach knows in "attach".
    while (!buf.empty() && (buf.back() == '\n' || buf.back() == '}')) {
        bool brace = buf.back() == '}';
        buf.pop_back();
        if (brace) break;
    }
    buf += fmt::format(",\"attach\":{{\"cgroup\":{},\"hz\":{},\"syn_rto_jiffies\":{}",
                       policy::json_quote(s_.cgroup), programs_.hz(), programs_.rto_jiffies());
    for (const auto& x : extras) buf += fmt::format(",\"{}\":{}", x.name, x.value);
    const auto& life = time_wait_lifetime_;
    buf += fmt::format(
        ",\"time_wait_lifetime_us\":{{\"count\":{},\"p50\":{:.1f},\"p99\":{:.1f},"
        "\"max\":{:.1f}}}}}}}\n",
        life.count(), life.percentile_us(0.5), life.percentile_us(0.99), life.max_us());
    return buf;
}

void Daemon::write_stats() {
    if (stats_path_.empty()) return;
    auto text = render_stats();
    if (text.empty()) return;
    auto tmp = fmt::format("{}.tmp.{}", stats_path_, ::getpid());
    ::unlink(tmp.c_str());
    bool prom = policy::wants_prometheus(s_.config.stats_path);
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                 prom ? 0644 : 0600));
    bool ok = static_cast<bool>(fd);
    for (std::size_t off = 0; ok && off < text.size();) {
        ssize_t n = ::write(fd.get(), text.data() + off, text.size() - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            ok = false;
        else
            off += static_cast<std::size_t>(n);
    }
    fd.reset();
    if (!ok || ::rename(tmp.c_str(), stats_path_.c_str()) != 0) {
        int err = errno;
        ::unlink(tmp.c_str());
        log_.line(policy::LogLevel::Warn, fmt::format("cannot write TCPFIX_STATS {}: {}",
                                                      stats_path_, policy::errno_name(err)));
    }
}

void Daemon::maybe_write_stats(std::uint64_t now) {
    if (stats_path_.empty() || now < next_stats_ns_) return;
    next_stats_ns_ = now + kStatsRefreshNs;
    auto t = programs_.totals();
    std::uint64_t activity =
        t.c[TCPFIX_C_CONNECTS] + time_wait_events_ + close_wait_seen_ + close_wait_swept_;
    if (activity == stats_activity_) return;  // an idle cgroup: nothing new to say
    stats_activity_ = activity;
    write_stats();
}

}  // namespace tcpfix::tools::attach
