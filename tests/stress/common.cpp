#include "tests/stress/common.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

namespace stress {

std::int64_t now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

void sleep_us(long us) {
    timespec ts{us / 1'000'000, (us % 1'000'000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void sleep_ms(long ms) { sleep_us(ms * 1000); }

void Failures::add_text(std::string text) {
    count_.fetch_add(1);
    std::lock_guard lock(mu_);
    if (kept_.size() < 25) kept_.push_back(std::move(text));
}

bool Failures::report(std::string_view what) const {
    std::lock_guard lock(mu_);
    for (const auto& k : kept_) fmt::print(stderr, "FAIL {}: {}\n", what, k);
    if (count_.load() > kept_.size())
        fmt::print(stderr, "FAIL {}: ... and {} more\n", what, count_.load() - kept_.size());
    return count_.load() == 0;
}

Failures& failures() {
    static Failures* f = new Failures;  // outlives every thread
    return *f;
}

namespace {

std::string env(const char* name) {
    const char* v = getenv(name);
    return v ? v : "";
}

std::int64_t loose_duration_ns(const std::string& v) {
    char* end = nullptr;
    double n = strtod(v.c_str(), &end);
    std::string unit = end ? end : "";
    if (unit == "ns") return static_cast<std::int64_t>(n);
    if (unit == "us") return static_cast<std::int64_t>(n * 1e3);
    if (unit == "ms") return static_cast<std::int64_t>(n * 1e6);
    return static_cast<std::int64_t>(n * 1e9);
}

}  // namespace

bool library_loaded(std::string_view name) {
    struct Ctx {
        std::string_view name;
        bool found;
    } ctx{name, false};
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) {
            auto* c = static_cast<Ctx*>(data);
            if (info->dlpi_name != nullptr && std::string_view(info->dlpi_name).find(c->name) != std::string_view::npos)
                c->found = true;
            return 0;
        },
        &ctx);
    return ctx.found;
}

Policy read_policy() {
    Policy p;
    p.loaded = library_loaded("libtcpfix");
    bool any = false;
    for (char** e = environ; *e != nullptr; ++e) {
        std::string_view kv(*e);
        auto eq = kv.find('=');
        if (kv.rfind("TCPFIX_", 0) == 0 && eq != std::string_view::npos && eq + 1 < kv.size()) any = true;
    }
    p.active = p.loaded && any && env("TCPFIX_DISABLE") != "1";
    p.close = env("TCPFIX_CLOSE");
    p.timeout = !env("TCPFIX_CONNECT_TIMEOUT").empty();
    p.retries = p.timeout && !env("TCPFIX_CONNECT_RETRIES").empty()
                    ? static_cast<unsigned>(atoi(env("TCPFIX_CONNECT_RETRIES").c_str()))
                    : 0;
    p.reap = !env("TCPFIX_REAP_CLOSE_WAIT").empty();
    if (p.reap) p.reap_ns = loose_duration_ns(env("TCPFIX_REAP_CLOSE_WAIT"));
    p.backoff = !env("TCPFIX_RECONNECT_BACKOFF").empty();
    p.rate = !env("TCPFIX_CONNECT_RATE").empty();
    p.source_addrs = !env("TCPFIX_SOURCE_ADDRS").empty();
    p.match = !env("TCPFIX_MATCH").empty();
    return p;
}

namespace {

// The log_path= prefixes of the sanitizer runtimes: their report files open
// whenever a report comes, and are not the application's descriptors.
std::vector<std::string> sanitizer_log_prefixes() {
    std::vector<std::string> out;
    for (const char* var : {"ASAN_OPTIONS", "TSAN_OPTIONS", "UBSAN_OPTIONS"}) {
        std::string v = env(var);
        auto at = v.find("log_path=");
        if (at == std::string::npos) continue;
        auto end = v.find(':', at);
        out.push_back(v.substr(at + 9, end == std::string::npos ? std::string::npos : end - at - 9));
    }
    return out;
}

}  // namespace

// Reads /proc/self/fd with raw system calls, not opendir(): the soak samples
// it while the workers run, and the workers close some descriptors with
// syscall(SYS_close) and close_range(), which ThreadSanitizer's descriptor
// model does not see; a directory descriptor reusing such a number then
// reads as a race between this thread and the worker (seen once in CI).
std::set<int> open_fds() {
    static const std::vector<std::string> ignored = sanitizer_log_prefixes();
    std::set<int> out;
    long dir = syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return out;
    alignas(8) char buf[4096];
    for (;;) {
        long n = syscall(SYS_getdents64, dir, buf, sizeof buf);
        if (n <= 0) break;
        for (long at = 0; at < n;) {
            const auto* e = reinterpret_cast<const dirent64*>(buf + at);
            at += e->d_reclen;
            if (e->d_name[0] == '.') continue;
            int fd = atoi(e->d_name);
            if (fd == dir) continue;
            if (!ignored.empty()) {
                std::string target = describe_fd(fd);
                bool skip = false;
                for (const auto& prefix : ignored) skip |= target.rfind(prefix, 0) == 0;
                if (skip) continue;
            }
            out.insert(fd);
        }
    }
    syscall(SYS_close, dir);
    return out;
}

std::string describe_fd(int fd) {
    char path[64], target[256];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n < 0) return "?";
    target[n] = '\0';
    return target;
}

long rss_kb() {
    std::ifstream f("/proc/self/statm");
    long size = 0, resident = 0;
    f >> size >> resident;
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

int raise_fd_limit(bool* above_65536) {
    rlimit lim{};
    getrlimit(RLIMIT_NOFILE, &lim);
    rlimit want{100000, std::max<rlim_t>(lim.rlim_max, 100000)};
    if (setrlimit(RLIMIT_NOFILE, &want) == 0) {
        if (above_65536) *above_65536 = true;
        return 99999;
    }
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
    getrlimit(RLIMIT_NOFILE, &lim);
    if (above_65536) *above_65536 = lim.rlim_cur > 65537;
    return static_cast<int>(std::min<rlim_t>(lim.rlim_cur, 1 << 24) - 1);
}

sockaddr_in loopback(std::uint16_t port, std::uint32_t host) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(host);
    return a;
}

std::uint16_t local_port(int fd) {
    sockaddr_in a{};
    socklen_t len = sizeof a;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return 0;
    return ntohs(a.sin_port);
}

int listen_loopback(int backlog, std::uint16_t* port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a = loopback(0);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, backlog) != 0) {
        perror("stress: listener");
        exit(70);
    }
    *port = local_port(fd);
    return fd;
}

int refusing_socket(std::uint16_t* port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a = loopback(0);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        perror("stress: refusing socket");
        exit(70);
    }
    *port = local_port(fd);
    return fd;
}

int connect_wait(int fd, const sockaddr_in& to, bool nonblocking, int timeout_ms) {
    if (connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) == 0) return 0;
    int err = errno;
    if (!nonblocking || err != EINPROGRESS) return err;
    std::int64_t deadline = now_ns() + static_cast<std::int64_t>(timeout_ms) * 1'000'000;
    for (;;) {
        pollfd p{fd, POLLOUT, 0};
        int left = static_cast<int>((deadline - now_ns()) / 1'000'000);
        if (left <= 0) return ETIMEDOUT;
        int n = poll(&p, 1, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return n == 0 ? ETIMEDOUT : errno;
        int so = 0;
        socklen_t len = sizeof so;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &len) != 0) return errno;
        return so;
    }
}

void block_signal(int sig) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

// --- Server -------------------------------------------------------------------

namespace {
constexpr std::uint64_t kTagData = 1ull << 40, kTagClosing = 2ull << 40, kTagWake = 3ull << 40,
                        kTagConn = 4ull << 40;
}

Server::Server(int backlog) {
    data_ = listen_loopback(backlog, &data_port_);
    closing_ = listen_loopback(backlog, &closing_port_);
    refused_ = refusing_socket(&refused_port_);
}

Server::~Server() {
    stop();
    close_listeners();
}

void Server::start() {
    epoll_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_ < 0 || pipe2(wake_, O_CLOEXEC) != 0) {
        perror("stress: server");
        exit(70);
    }
    // Accepting runs until EAGAIN.
    fcntl(data_, F_SETFL, fcntl(data_, F_GETFL) | O_NONBLOCK);
    fcntl(closing_, F_SETFL, fcntl(closing_, F_GETFL) | O_NONBLOCK);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kTagData;
    epoll_ctl(epoll_, EPOLL_CTL_ADD, data_, &ev);
    ev.data.u64 = kTagClosing;
    epoll_ctl(epoll_, EPOLL_CTL_ADD, closing_, &ev);
    ev.data.u64 = kTagWake;
    epoll_ctl(epoll_, EPOLL_CTL_ADD, wake_[0], &ev);
    thread_ = std::thread([this] { run(); });
}

void Server::stop() {
    if (!thread_.joinable()) return;
    char b = 'x';
    (void)!write(wake_[1], &b, 1);
    thread_.join();
    close(wake_[0]);
    close(wake_[1]);
    close(epoll_);
}

bool Server::wait_quiet(int timeout_ms) {
    std::int64_t deadline = now_ns() + static_cast<std::int64_t>(timeout_ms) * 1'000'000;
    while (open_conns.load() != 0) {
        if (now_ns() > deadline) return false;
        sleep_ms(5);
    }
    return true;
}

int Server::close_listeners() {
    int n = 0;
    for (int* fd : {&data_, &closing_, &refused_}) {
        if (*fd >= 0) {
            close(*fd);
            *fd = -1;
            ++n;
        }
    }
    return n;
}

void Server::run() {
    block_signal(SIGALRM);
    block_signal(SIGUSR1);
    epoll_event events[256];
    std::vector<char> storage(65536);
    char* buf = storage.data();
    for (;;) {
        int n = epoll_wait(epoll_, events, 256, 1000);
        if (n < 0 && errno == EINTR) continue;
        for (int i = 0; i < n; ++i) {
            std::uint64_t tag = events[i].data.u64 & (0xffull << 40);
            if (tag == kTagWake) {
                // Drain what is still open, then leave.
                return;
            }
            if (tag == kTagData || tag == kTagClosing) {
                int l = tag == kTagData ? data_ : closing_;
                // A bounded batch: the listener is level-triggered, so what is
                // left is reported again, after the connections already open
                // have had their turn. Accepting until EAGAIN let a backlog fed
                // by four churning threads outrun the loop on two cores, and
                // the process ran out of descriptors (EMFILE in the client).
                for (int batch = 0; batch < 64; ++batch) {
                    int c = accept4(l, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0) break;
                    accepted.fetch_add(1);
                    if (tag == kTagData) accepted_data.fetch_add(1);
                    if (tag == kTagClosing) {
                        close(c);
                        closed_at_once.fetch_add(1);
                        continue;
                    }
                    open_conns.fetch_add(1);
                    epoll_event ev{};
                    ev.events = EPOLLIN | EPOLLRDHUP;
                    ev.data.u64 = kTagConn | static_cast<std::uint32_t>(c);
                    epoll_ctl(epoll_, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            int c = static_cast<int>(events[i].data.u64 & 0xffffffffu);
            for (;;) {
                ssize_t r = read(c, buf, storage.size());
                if (r > 0) {
                    bytes.fetch_add(static_cast<std::uint64_t>(r));
                    continue;
                }
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
                if (r == 0) ended_eof.fetch_add(1);
                else if (errno == ECONNRESET) ended_rst.fetch_add(1);
                else ended_other.fetch_add(1);
                epoll_ctl(epoll_, EPOLL_CTL_DEL, c, nullptr);
                close(c);
                open_conns.fetch_sub(1);
                break;
            }
        }
    }
}

// --- expectations and stats -----------------------------------------------------

void Expectations::write() const {
    const char* dir = getenv("STRESS_DIR");
    if (dir == nullptr) return;
    std::string path = fmt::format("{}/expect-{}.txt", dir, getpid());
    FILE* f = fopen(path.c_str(), "w");
    if (f == nullptr) return;
    for (const auto& l : lines_) fmt::print(f, "{}\n", l);
    fclose(f);
}

namespace {

struct JsonCursor {
    std::string_view s;
    std::size_t i = 0;
    void ws() {
        while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r')) ++i;
    }
    bool string(std::string* out) {
        if (i >= s.size() || s[i] != '"') return false;
        ++i;
        while (i < s.size() && s[i] != '"') {
            if (s[i] == '\\') ++i;
            if (out && i < s.size()) out->push_back(s[i]);
            ++i;
        }
        ++i;
        return i <= s.size();
    }
    bool skip_value() {
        ws();
        if (i >= s.size()) return false;
        if (s[i] == '"') return string(nullptr);
        if (s[i] == '{' || s[i] == '[') {
            int depth = 0;
            while (i < s.size()) {
                char c = s[i];
                if (c == '"') {
                    if (!string(nullptr)) return false;
                    continue;
                }
                if (c == '{' || c == '[') ++depth;
                if (c == '}' || c == ']') --depth;
                ++i;
                if (depth == 0) return true;
            }
            return false;
        }
        while (i < s.size() && s[i] != ',' && s[i] != '}' && s[i] != ']') ++i;
        return true;
    }
    // Positions the cursor at the value of `key` in the object starting here.
    bool find(std::string_view key) {
        ws();
        if (i >= s.size() || s[i] != '{') return false;
        ++i;
        for (;;) {
            ws();
            std::string k;
            if (!string(&k)) return false;
            ws();
            if (i >= s.size() || s[i] != ':') return false;
            ++i;
            ws();
            if (k == key) return true;
            if (!skip_value()) return false;
            ws();
            if (i < s.size() && s[i] == ',') {
                ++i;
                continue;
            }
            return false;
        }
    }
};

}  // namespace

std::optional<long long> json_number(std::string_view json, std::string_view key) {
    JsonCursor c{json};
    std::string_view rest = key;
    for (;;) {
        auto dot = rest.find('.');
        if (!c.find(rest.substr(0, dot))) return std::nullopt;
        if (dot == std::string_view::npos) break;
        rest.remove_prefix(dot + 1);
    }
    c.ws();
    std::size_t start = c.i;
    while (c.i < json.size() && (isdigit(static_cast<unsigned char>(json[c.i])) || json[c.i] == '-')) ++c.i;
    if (c.i == start) return std::nullopt;
    return std::stoll(std::string(json.substr(start, c.i - start)));
}

std::string read_file(const std::string& path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::string stats_path_for(long pid) {
    const char* dir = getenv("STRESS_DIR");
    return fmt::format("{}/stats-{}.json", dir ? dir : "/tmp", pid);
}

}  // namespace stress
