#include "tools/attach_cgroup.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>

#include "tools/command.hpp"

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

namespace tcpfix::tools::attach {
namespace fs = std::filesystem;
namespace {

bool is_cgroup2_dir(const std::string& path) {
    struct statfs sfs {};
    struct stat st {};
    return ::statfs(path.c_str(), &sfs) == 0 && sfs.f_type == CGROUP2_SUPER_MAGIC &&
           ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_mount(const std::string& field) {
    std::string out;
    for (std::size_t i = 0; i < field.size(); ++i) {
        if (field[i] == '\\' && i + 3 < field.size()) {
            int v = 0;
            bool ok = true;
            for (int k = 1; k <= 3; ++k) {
                char c = field[i + k];
                if (c < '0' || c > '7') ok = false;
                v = v * 8 + (c - '0');
            }
            if (ok) {
                out += static_cast<char>(v);
                i += 3;
                continue;
            }
        }
        out += field[i];
    }
    return out;
}

// Moves every process listed in `from`/cgroup.procs to `to`/cgroup.procs;
// returns how many were moved.
int move_processes(const std::string& from, const std::string& to) {
    int moved = 0;
    for (int round = 0; round < 10; ++round) {  // forks racing with us: go again
        std::ifstream in(from + "/cgroup.procs");
        std::vector<std::string> pids;
        for (std::string pid; std::getline(in, pid);)
            if (!pid.empty()) pids.push_back(pid);
        if (pids.empty()) break;
        for (const auto& pid : pids) {
            std::ofstream out(to + "/cgroup.procs");
            out << pid << std::flush;
            if (out) ++moved;
        }
    }
    return moved;
}

// What `systemctl show -p ControlGroup --value UNIT` prints, or nullopt when
// systemctl cannot say (not found, failed).
std::optional<std::string> systemd_control_group(const std::string& unit) {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return std::nullopt;
    pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(out[1], 1);
        ::execlp("systemctl", "systemctl", "show", "-p", "ControlGroup", "--value", "--",
                 unit.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    ::close(out[1]);
    std::string text;
    char buf[512];
    for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) > 0;)
        text.append(buf, static_cast<std::size_t>(n));
    ::close(out[0]);
    int status = 0;
    if (pid < 0 || ::waitpid(pid, &status, 0) < 0) return std::nullopt;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return std::nullopt;
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    return text;
}

}  // namespace

std::string cgroup2_mount() {
    std::ifstream in("/proc/self/mountinfo");
    for (std::string line; std::getline(in, line);) {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        auto dash = line.find(" - ");
        if (dash == std::string::npos) continue;
        std::istringstream tail(line.substr(dash + 3));
        std::string fstype;
        tail >> fstype;
        if (fstype != "cgroup2") continue;
        std::istringstream head(line.substr(0, dash));
        std::string id, parent, dev, root, point;
        head >> id >> parent >> dev >> root >> point;
        if (root != "/") continue;  // a bind mount of a subtree (a container's view)
        return unescape_mount(point);
    }
    throw UsageError(
        "attach: cgroup v2 is not mounted here (no cgroup2 line in /proc/self/mountinfo); "
        "tcpfix attach needs the unified hierarchy (Linux 4.5+), on hybrid hosts at "
        "/sys/fs/cgroup/unified; `ip netns exec` hides it (it mounts /sys anew): enter a "
        "namespace with `nsenter --net=/run/netns/NAME` instead");
}

std::string resolve_cgroup(const std::string& given, const std::string& mount) {
    if (given.empty()) throw UsageError("attach: --cgroup: an empty path");
    std::vector<std::string> tried;
    if (given.front() == '/') {
        if (is_cgroup2_dir(given)) return fs::canonical(given).string();
        tried.push_back(given);
    }
    auto relative = given.front() == '/' ? mount + given : mount + "/" + given;
    if (is_cgroup2_dir(relative)) {
        auto canonical = fs::canonical(relative).string();
        if (canonical == mount || canonical.starts_with(mount + "/")) return canonical;
    }
    tried.push_back(relative);
    throw UsageError(fmt::format(
        "attach: --cgroup {}: no such cgroup v2 directory (looked at {}; cgroup2 is mounted at {})",
        given, fmt::join(tried, " and "), mount));
}

std::string resolve_unit(const std::string& unit, const std::string& mount) {
    static constexpr std::string_view kTypes[] = {".service", ".scope", ".slice"};
    bool typed = false;
    for (auto t : kTypes) typed = typed || (unit.size() > t.size() && unit.ends_with(t));
    if (!typed || unit.find('/') != std::string::npos || unit.front() == '.')
        throw UsageError(fmt::format(
            "attach: --unit {}: expected a unit name such as nginx.service (or a .scope or "
            ".slice)",
            unit));
    bool systemd = ::access("/run/systemd/system", F_OK) == 0;
    if (systemd) {
        // systemd knows where the unit lives (Slice=, scopes, transient units).
        if (auto group = systemd_control_group(unit)) {
            if (group->empty())
                throw UsageError(fmt::format(
                    "attach: --unit {}: systemd has no cgroup for it (is it running?)", unit));
            auto dir = mount + *group;
            if (is_cgroup2_dir(dir)) return fs::canonical(dir).string();
            throw UsageError(fmt::format(
                "attach: --unit {}: systemd names the cgroup {}, but {} is not a cgroup v2 "
                "directory",
                unit, *group, dir));
        }
    }
    auto dir = mount + "/system.slice/" + unit;
    if (is_cgroup2_dir(dir)) return fs::canonical(dir).string();
    throw UsageError(fmt::format(
        "attach: --unit {}: no cgroup at {} ({}); start the unit first, or name its cgroup "
        "with --cgroup",
        unit, dir,
        systemd ? "systemctl could not say either"
                : "systemd is not running here, so its convention system.slice/NAME was used"));
}

std::string own_cgroup(const std::string& mount) {
    std::ifstream in("/proc/self/cgroup");
    for (std::string line; std::getline(in, line);) {
        if (line.starts_with("0::")) {
            auto rel = line.substr(3);
            return rel == "/" ? mount : mount + rel;
        }
    }
    throw std::runtime_error("/proc/self/cgroup has no cgroup v2 line (0::)");
}

std::uint64_t cgroup_id(const std::string& dir) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) throw_errno(("stat " + dir).c_str());
    return st.st_ino;
}

std::vector<std::uint64_t> subtree_ids(const std::string& dir) {
    std::vector<std::uint64_t> ids;
    std::vector<std::string> todo{dir};
    while (!todo.empty() && ids.size() < 100000) {
        auto d = std::move(todo.back());
        todo.pop_back();
        struct stat st {};
        if (::stat(d.c_str(), &st) != 0) continue;  // removed meanwhile
        ids.push_back(st.st_ino);
        std::unique_ptr<DIR, int (*)(DIR*)> listing(::opendir(d.c_str()), ::closedir);
        if (!listing) continue;
        while (auto* e = ::readdir(listing.get())) {
            if (e->d_type != DT_DIR || e->d_name[0] == '.') continue;
            todo.push_back(d + "/" + e->d_name);
        }
    }
    return ids;
}

Fd open_cgroup(const std::string& dir) {
    Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd) throw_errno(("open " + dir).c_str());
    return fd;
}

ChildCgroup::ChildCgroup(const std::string& mount, int pid) {
    parent_ = own_cgroup(mount);
    path_ = fmt::format("{}/tcpfix-attach.{}", parent_, pid);
    if (::mkdir(path_.c_str(), 0755) != 0) {
        int err = errno;
        throw std::runtime_error(
            fmt::format("cannot create the cgroup {}: {}", path_, std::strerror(err)));
    }
    procs_ = path_ + "/cgroup.procs";
}

ChildCgroup::~ChildCgroup() {
    try {
        remove();
    } catch (...) {
    }
}

int ChildCgroup::enter_self() const {
    int fd = ::open(procs_.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    int err = ::write(fd, "0", 1) == 1 ? 0 : errno;
    ::close(fd);
    return err;
}

int ChildCgroup::remove() {
    if (removed_) return 0;
    removed_ = true;  // one try, one message
    int moved = 0;
    for (int attempt = 0; attempt < 100; ++attempt) {
        if (::rmdir(path_.c_str()) == 0 || errno == ENOENT) return moved;
        if (errno != EBUSY) break;
        moved += move_processes(path_, parent_);
        ::usleep(10000);  // a process that just exited leaves the cgroup a moment later
    }
    int err = errno;
    throw std::runtime_error(
        fmt::format("cannot remove the cgroup {}: {}", path_, std::strerror(err)));
}

}  // namespace tcpfix::tools::attach
