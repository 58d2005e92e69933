// TCPFIX_SHARE: maps /dev/shm/tcpfix-<euid>-<name>.v<layout> on the first
// matched connect, creating it if it is not there.
//
// Creation is atomic: the segment is made and initialised under a temporary
// name (O_CREAT|O_EXCL, 0600), then link()ed to its real name, which fails
// if another process got there first (then that one is opened instead). So a
// segment under its real name is always complete. Opening never follows a
// symbolic link (O_NOFOLLOW), and a segment is used only if it is a regular
// file of this process's effective user, closed to other users, of the size
// its header declares, and its header passes policy::share::validate. Anything
// else: one warning, and the process paces on its own, as without a share.
#include "preload/share.hpp"

#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>

#include "preload/connect_policy.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

namespace tcpfix::share {

namespace ps = policy::share;

namespace detail {
std::atomic<int> g_state{0};
}

namespace {

enum State : int { kOff = 0, kIdle, kAttaching, kAttached };

constexpr std::uint32_t kPidMaxLimit = 4 * 1024 * 1024;  // PID_MAX_LIMIT on 64-bit

const std::string* g_name = nullptr;  // TCPFIX_SHARE, lives as long as the config
char g_path[PATH_MAX];
ps::Segment g_segment;
std::atomic<ps::Proc*> g_proc{nullptr};
std::atomic<long> g_proc_pid{0};  // the PID g_proc was claimed for (0: none yet)
std::uint64_t g_identity = 0;
std::atomic<bool> g_full_warned{false};
std::atomic<bool> g_claiming{false};  // a thread is claiming the process slot
std::atomic<unsigned> g_tmp_counter{0};

void give_up() {
    detail::g_state.store(kOff, std::memory_order_release);
}

template <typename... T>
void warn_fallback(fmt::format_string<T...> f, T&&... args) {
    char why[600];
    auto r = fmt::format_to_n(why, sizeof why - 1, f, std::forward<T>(args)...);
    log::at(policy::LogLevel::Warn,
            "TCPFIX_SHARE={}: {} {}; this process paces its connects on its own", *g_name, g_path,
            std::string_view(why, r.size < sizeof why - 1 ? r.size : sizeof why - 1));
}

void close_fd(int fd) {
    real::close.get()(fd);
}

// Start time (clock ticks since boot) of process `pid` (0: this one), or 0.
std::uint64_t start_ticks(std::uint32_t pid) {
    char path[40];
    auto r = pid == 0 ? fmt::format_to_n(path, sizeof path - 1, "/proc/self/stat")
                      : fmt::format_to_n(path, sizeof path - 1, "/proc/{}/stat", pid);
    path[r.size] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[1024];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close_fd(fd);
    if (n <= 0) return 0;
    return ps::parse_stat_start_ticks(std::string_view(buf, static_cast<std::size_t>(n)))
        .value_or(0);
}

// A slot whose owner has gone: no such process, or the PID now belongs to a
// process that started at another time.
bool owner_dead(std::uint64_t owner) {
    std::uint32_t pid = ps::identity_pid(owner);
    if (pid == 0 || pid > kPidMaxLimit) return true;  // no process has that PID: a corrupt slot
    if (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return true;
    std::uint32_t start = ps::identity_start(owner);
    if (start == 0) return false;
    std::uint64_t now = start_ticks(pid);
    return now != 0 && static_cast<std::uint32_t>(now) != start;
}

// fstat() without glibc 2.33's fstat symbol (the library loads on glibc
// 2.17): the system call, whose struct stat is glibc's on Linux.
int fstat_raw(int fd, struct stat* st) {
#ifdef SYS_fstat
    long r = real::raw_syscall(SYS_fstat, fd, reinterpret_cast<long>(st));
#else
    long r = real::raw_syscall(SYS_newfstatat, fd, reinterpret_cast<long>(""),
                               reinterpret_cast<long>(st), AT_EMPTY_PATH);
#endif
    if (r < 0) {
        errno = static_cast<int>(-r);
        return -1;
    }
    return 0;
}

// Maps an opened segment file after checking what it is. nullptr (and one
// warning) when it cannot be trusted.
void* map_existing(int fd, std::uint32_t uid, std::size_t* size) {
    struct stat st;
    if (fstat_raw(fd, &st) != 0) {
        warn_fallback("cannot be examined ({})", policy::errno_name(errno));
        return nullptr;
    }
    if (!S_ISREG(st.st_mode)) {
        warn_fallback("is not a regular file");
        return nullptr;
    }
    if (st.st_uid != uid) {
        warn_fallback("belongs to uid {}, not to this process's effective uid {}", st.st_uid, uid);
        return nullptr;
    }
    if ((st.st_mode & 077) != 0) {
        warn_fallback("is open to other users (mode {:04o}; tcpfix makes it 0600)",
                      st.st_mode & 07777);
        return nullptr;
    }
    const std::size_t largest = ps::segment_size(ps::kMaxEntries, ps::kMaxProcs);
    if (st.st_size < static_cast<off_t>(ps::kHeaderSize) ||
        static_cast<std::size_t>(st.st_size) > largest) {
        warn_fallback(
            "{} ({} bytes)",
            ps::describe(st.st_size < static_cast<off_t>(ps::kHeaderSize) ? ps::Problem::TooSmall
                                                                          : ps::Problem::Size),
            static_cast<long long>(st.st_size));
        return nullptr;
    }
    *size = static_cast<std::size_t>(st.st_size);
    void* base = mmap(nullptr, *size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        warn_fallback("cannot be mapped ({})", policy::errno_name(errno));
        return nullptr;
    }
    ps::Problem p = ps::validate(base, *size, uid, *g_name);
    if (p != ps::Problem::None) {
        munmap(base, *size);
        warn_fallback("{}", ps::describe(p));
        return nullptr;
    }
    return base;
}

// Makes the segment under a temporary name and links it into place. Returns
// the mapping, or nullptr with *lost set when another process's segment is
// already there (open that one), or nullptr (one warning) on an error.
void* create(std::uint32_t uid, bool* lost) {
    char file[160], tmp[PATH_MAX];
    ps::format_file_name(file, sizeof file, uid, *g_name);
    auto r = fmt::format_to_n(tmp, sizeof tmp - 1, "/dev/shm/.{}.{}.{}", file, runtime::pid(),
                              g_tmp_counter.fetch_add(1));
    tmp[r.size < sizeof tmp - 1 ? r.size : sizeof tmp - 1] = '\0';
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        warn_fallback("cannot be created ({} on {})", policy::errno_name(errno), tmp);
        return nullptr;
    }
    const std::size_t size = ps::segment_size(ps::kDefaultEntries, ps::kDefaultProcs);
    void* base = MAP_FAILED;
    bool ok = fchmod(fd, 0600) == 0 && ftruncate(fd, static_cast<off_t>(size)) == 0 &&
              (base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) != MAP_FAILED;
    int err = errno;
    close_fd(fd);
    if (!ok) {
        unlink(tmp);
        warn_fallback("cannot be created ({})", policy::errno_name(err));
        return nullptr;
    }
    ps::initialise(base, ps::kDefaultEntries, ps::kDefaultProcs, *g_name, uid,
                   static_cast<std::int64_t>(time(nullptr)));
    int linked = link(tmp, g_path);
    err = errno;
    unlink(tmp);
    if (linked == 0) return base;
    munmap(base, size);
    if (err == EEXIST) {
        *lost = true;
        return nullptr;
    }
    warn_fallback("cannot be created ({})", policy::errno_name(err));
    return nullptr;
}

bool attach() {
    int expected = kIdle;
    if (!detail::g_state.compare_exchange_strong(expected, kAttaching, std::memory_order_acq_rel))
        return expected == kAttached;  // another thread is attaching: this connect goes without
    runtime::ErrnoGuard keep_errno;
    const std::uint32_t uid = geteuid();
    char file[160];
    ps::format_file_name(file, sizeof file, uid, *g_name);
    auto r = fmt::format_to_n(g_path, sizeof g_path - 1, "/dev/shm/{}", file);
    g_path[r.size < sizeof g_path - 1 ? r.size : sizeof g_path - 1] = '\0';
    void* base = nullptr;
    int attempt = 0;
    for (; attempt < 4 && base == nullptr; ++attempt) {
        int fd = open(g_path, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
        if (fd >= 0) {
            std::size_t size = 0;
            base = map_existing(fd, uid, &size);
            close_fd(fd);
            if (base == nullptr) break;
            continue;
        }
        if (errno != ENOENT) {
            if (errno == ELOOP)
                warn_fallback("is a symbolic link (never followed)");
            else
                warn_fallback("cannot be opened ({})", policy::errno_name(errno));
            break;
        }
        bool lost = false;
        base = create(uid, &lost);
        if (base == nullptr && !lost) break;
    }
    if (base == nullptr && attempt == 4)
        warn_fallback("was made by another process and removed again before it could be opened, "
                      "four times");
    if (base == nullptr) {
        give_up();
        return false;
    }
    g_segment = ps::Segment(base);
    detail::g_state.store(kAttached, std::memory_order_release);
    log::at(policy::LogLevel::Debug, "TCPFIX_SHARE={}: attached {}", *g_name, g_path);
    return true;
}

// This process's slot (claimed once per process: again in a forked child).
ps::Proc* own_proc() {
    long pid = runtime::pid();
    if (__builtin_expect(g_proc_pid.load(std::memory_order_acquire) == pid, 1))
        return g_proc.load(std::memory_order_relaxed);
    // One thread claims; another one arriving meanwhile (or a signal handler
    // on this one) goes uncounted this once rather than wait.
    if (g_claiming.exchange(true, std::memory_order_acquire)) return nullptr;
    runtime::ErrnoGuard keep_errno;
    std::uint64_t identity = ps::proc_identity(static_cast<std::uint32_t>(pid), start_ticks(0));
    ps::Proc* p = g_segment.claim_proc(identity, owner_dead);
    if (p == nullptr)
        log::at(policy::LogLevel::Info,
                "TCPFIX_SHARE={}: all {} process slots are taken; this process is not counted "
                "as attached",
                *g_name, g_segment.proc_count());
    g_identity = identity;
    g_proc.store(p, std::memory_order_relaxed);
    g_proc_pid.store(pid, std::memory_order_release);
    g_claiming.store(false, std::memory_order_release);
    return p;
}

}  // namespace

namespace detail {

policy::share::Entry* entry_slow(const policy::Endpoint& dest) {
    int state = g_state.load(std::memory_order_acquire);
    if (state != kAttached && (state != kIdle || !attach())) return nullptr;
    own_proc();
    ps::Entry* e = g_segment.find_or_add(dest, static_cast<std::uint32_t>(runtime::pid()));
    if (e == nullptr && !g_full_warned.exchange(true, std::memory_order_relaxed))
        log::at(policy::LogLevel::Warn,
                "TCPFIX_SHARE={}: the share's table of {} destinations is full; {} and other new "
                "destinations are "
                "paced by each process on its own",
                *g_name, g_segment.entry_count(), dest);
    return e;
}

policy::share::Entry* entry_remembered(const policy::Endpoint& dest, policy::DestinationState& local) {
    ps::Entry* e = entry_slow(dest);
    if (e != nullptr && !runtime::counters().destinations.is_other(local))
        local.shared.store(e, std::memory_order_release);
    return e;
}

}  // namespace detail

void init(const policy::Config& config, bool secure) {
    if (config.share.empty()) return;
    if (secure) {
        log::write_line(policy::LogLevel::Warn,
                        "TCPFIX_SHARE ignored in a set-user-ID or otherwise secure process");
        return;
    }
    g_name = &config.share;
    detail::g_state.store(kIdle, std::memory_order_release);
}

int mark_waiting(ps::Entry& e) {
    ps::Proc* p = own_proc();
    return p != nullptr ? ps::mark_waiting(*p, g_segment.index_of(e)) : -1;
}

void unmark_waiting(int record) {
    if (record < 0) return;
    if (ps::Proc* p = g_proc.load(std::memory_order_relaxed)) ps::unmark_waiting(*p, record);
}

bool wait_for_wake(ps::Entry& e, std::uint32_t seen, std::int64_t until, bool nonblocking) {
    runtime::ErrnoGuard keep_errno;
    for (;;) {
        if (e.wake.load(std::memory_order_acquire) != seen) return true;
        std::int64_t left = until - runtime::now_ns();
        if (left <= 0) return true;
        timespec ts{static_cast<time_t>(left / 1'000'000'000),
                    static_cast<long>(left % 1'000'000'000)};
        // A shared (not private) futex: the word lives in a file mapping, so
        // processes mapping it wait on the same futex.
        long r = real::raw_syscall(SYS_futex, reinterpret_cast<long>(&e.wake), FUTEX_WAIT,
                                   static_cast<long>(seen), reinterpret_cast<long>(&ts));
        if (r == 0 || r == -EAGAIN || r == -ETIMEDOUT) continue;
        if (r == -EINTR) {
            if (!nonblocking && !connect_policy::handlers_restart()) return false;
            continue;
        }
        // No futex here (or a fault on a corrupt word): sleep in short steps.
        timespec step{0, std::min<long>(left, 10'000'000)};
        if (nanosleep(&step, nullptr) != 0 && errno == EINTR && !nonblocking &&
            !connect_policy::handlers_restart())
            return false;
    }
}

void wake_all(ps::Entry& e) {
    real::raw_syscall(SYS_futex, reinterpret_cast<long>(&e.wake), FUTEX_WAKE, INT_MAX);
}

void after_fork_in_child() {
    g_claiming.store(false, std::memory_order_relaxed);
    g_proc.store(nullptr, std::memory_order_relaxed);
    g_proc_pid.store(0, std::memory_order_relaxed);
}

void detach() {
    if (detail::g_state.load(std::memory_order_acquire) != kAttached) return;
    ps::Proc* p = g_proc.load(std::memory_order_relaxed);
    if (p != nullptr && g_proc_pid.load(std::memory_order_relaxed) == runtime::pid()) {
        g_segment.release_proc(*p, g_identity);
        g_proc.store(nullptr, std::memory_order_relaxed);
    }
}

}  // namespace tcpfix::share
