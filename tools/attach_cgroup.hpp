// Where `tcpfix attach` attaches: a cgroup v2 directory, found from a path,
// a systemd unit, or made fresh for a command. The cgroup2 mount is read from
// /proc/self/mountinfo (hybrid hosts mount it at /sys/fs/cgroup/unified,
// unified ones at /sys/fs/cgroup), never assumed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tools/fd.hpp"

namespace tcpfix::tools::attach {

// The first cgroup2 mount point of this mount namespace. Throws UsageError
// ("cgroup v2 is not mounted ...") when there is none.
std::string cgroup2_mount();

// --cgroup PATH: a directory of the cgroup2 file system, given as a file
// system path (/sys/fs/cgroup/unified/system.slice/x.service) or relative to
// the mount as /proc/PID/cgroup shows it (/system.slice/x.service). Returns
// the directory's canonical path; throws UsageError naming what is wrong.
std::string resolve_cgroup(const std::string& given, const std::string& mount);

// --unit NAME: the unit's cgroup. With systemd running, what `systemctl show
// -p ControlGroup` says; otherwise systemd's convention for system services,
// MOUNT/system.slice/NAME. Throws UsageError when the unit has no cgroup
// (not running, or no such unit), saying where it looked.
std::string resolve_unit(const std::string& unit, const std::string& mount);

// The calling process's own cgroup v2 directory (from /proc/self/cgroup).
std::string own_cgroup(const std::string& mount);

// The cgroup's id, as the kernel reports it for sockets (its inode number).
std::uint64_t cgroup_id(const std::string& dir);

// The ids of `dir` and every cgroup below it: BPF programs attached to a
// cgroup apply to its descendants too.
std::vector<std::uint64_t> subtree_ids(const std::string& dir);

// An open descriptor of the cgroup directory (what BPF attaches to).
Fd open_cgroup(const std::string& dir);

// A cgroup made for `tcpfix attach -- CMD`, beside the daemon's own
// (OWN/tcpfix-attach.PID), removed by remove(): processes still in it (CMD's
// children that outlived it) are moved to the parent first, so it can go.
class ChildCgroup {
  public:
    ChildCgroup(const std::string& mount, int pid);
    ~ChildCgroup();
    ChildCgroup(const ChildCgroup&) = delete;
    ChildCgroup& operator=(const ChildCgroup&) = delete;

    const std::string& path() const { return path_; }
    // Moves the calling process in (call in the child, before exec). Returns
    // 0 or an errno value; async-signal-safe.
    int enter_self() const;
    // Returns the number of processes that had to be moved out first.
    int remove();

  private:
    std::string path_;
    std::string parent_;
    std::string procs_;  // path_ + "/cgroup.procs", prepared for enter_self()
    bool removed_ = false;
};

}  // namespace tcpfix::tools::attach
