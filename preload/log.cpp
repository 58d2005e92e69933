#include "preload/log.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>

#include "preload/fdtable.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

namespace tcpfix::log {

namespace detail {
std::atomic<int> g_level{static_cast<int>(policy::LogLevel::Warn)};
}

namespace {

using detail::g_level;
std::atomic<int> g_fd{2};
const char* g_path = nullptr;  // TCPFIX_LOG_FILE, or nullptr for stderr
thread_local bool t_in_log = false;

constexpr std::string_view kLevelNames[] = {"off", "error", "warn", "info", "debug"};

int open_log(const char* path) {
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0) fdtable::track_owned(fd);
    return fd;
}

}  // namespace

void init(const policy::Config& config, bool secure) {
    g_level.store(static_cast<int>(config.log), std::memory_order_relaxed);
    if (config.log_file.empty() || config.log == policy::LogLevel::Off) return;
    if (secure) {
        write_line(policy::LogLevel::Warn,
                   "TCPFIX_LOG_FILE ignored in a set-user-ID or otherwise secure process; logging "
                   "to stderr");
        return;
    }
    g_path = config.log_file.c_str();  // the config lives for the process's lifetime
    int fd = open_log(g_path);
    if (fd < 0) {
        at(policy::LogLevel::Warn, "cannot open TCPFIX_LOG_FILE {}: {}; logging to stderr",
           g_path, policy::errno_name(errno));
        g_path = nullptr;
        return;
    }
    g_fd.store(fd, std::memory_order_release);
}

void write_line(policy::LogLevel level, std::string_view msg) {
    if (t_in_log) return;
    t_in_log = true;
    runtime::ErrnoGuard keep_errno;
    int fd = g_fd.load(std::memory_order_acquire);
    if (fd < 0 && g_path != nullptr) {
        // The application took our descriptor number back; open the file anew.
        int fresh = open_log(g_path);
        int expected = -1;
        if (fresh >= 0 && !g_fd.compare_exchange_strong(expected, fresh)) {
            fdtable::take(fresh);
            real::close.get()(fresh);
            fresh = expected;
        }
        fd = fresh >= 0 ? fresh : 2;
    }
    const policy::Config* config = runtime::active() ? &runtime::config() : nullptr;
    char buf[1024];
    std::string_view tag = config != nullptr ? std::string_view(config->tag) : std::string_view();
    auto r = tag.empty()
                 ? fmt::format_to_n(buf, sizeof buf - 1, "tcpfix[{}] {}: {}", runtime::pid(),
                                    kLevelNames[static_cast<int>(level)], msg)
                 : fmt::format_to_n(buf, sizeof buf - 1, "tcpfix[{}] tag={} {}: {}", runtime::pid(),
                                    tag, kLevelNames[static_cast<int>(level)], msg);
    std::size_t n = r.size < sizeof buf - 1 ? r.size : sizeof buf - 1;
    buf[n++] = '\n';
    for (std::size_t off = 0; off < n;) {
        ssize_t w = write(fd, buf + off, n - off);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            break;
        }
        off += static_cast<std::size_t>(w);
    }
    t_in_log = false;
}

void forget_fd(int fd) {
    int expected = fd;
    g_fd.compare_exchange_strong(expected, -1, std::memory_order_acq_rel);
}

void refuse(std::string_view line) {
    char buf[1200];
    auto r = fmt::format_to_n(buf, sizeof buf - 1, "{}", line);
    std::size_t n = r.size < sizeof buf - 1 ? r.size : sizeof buf - 1;
    buf[n++] = '\n';
    (void)!write(2, buf, n);
    _exit(2);
}

}  // namespace tcpfix::log
