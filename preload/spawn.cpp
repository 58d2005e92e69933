// posix_spawn(), system(), popen() and the exec family: a program started in
// a child that ran no fork() handlers (glibc spawns with clone(CLONE_VFORK);
// vfork + exec) may hold every socket of this process that is not
// close-on-exec. Each start bumps the spawn epoch, so such sockets are later
// closed gracefully, never with an RST that could cut the child's data short.
// An exec from a vfork child bumps the epoch in the parent's memory, which it
// shares. An exec also settles the sockets held for a background decision
// (hold.hpp) — not from a vfork child, whose memory is the parent's.
#include "preload/fdtable.hpp"
#include "preload/hooks.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

using namespace tcpfix;

namespace {

void announce_spawn() {
    if (runtime::active()) fdtable::bump_spawn_epoch();
}

// An exec replaces this program: the sockets held for a background decision
// are settled first (at most 50 ms); exec would close them anyway
// (close-on-exec), normally, without the RST they may have earned.
void before_exec() {
    announce_spawn();
    hooks::settle_before_exec();
}

}  // namespace

// As the real posix_spawn(): 0 or an error number.
extern "C" __attribute__((visibility("default"))) int posix_spawn(pid_t* pid, const char* path,
                                                                  const posix_spawn_file_actions_t* actions,
                                                                  const posix_spawnattr_t* attr, char* const argv[],
                                                                  char* const envp[]) {
    announce_spawn();
    return real::posix_spawn.get()(pid, path, actions, attr, argv, envp);
}

// As the real posix_spawnp(): 0 or an error number.
extern "C" __attribute__((visibility("default"))) int posix_spawnp(pid_t* pid, const char* file,
                                                                   const posix_spawn_file_actions_t* actions,
                                                                   const posix_spawnattr_t* attr, char* const argv[],
                                                                   char* const envp[]) {
    announce_spawn();
    return real::posix_spawnp.get()(pid, file, actions, attr, argv, envp);
}

// As the real system().
extern "C" __attribute__((visibility("default"))) int system(const char* command) {
    if (command != nullptr) announce_spawn();
    return real::system.get()(command);
}

// As the real popen().
extern "C" __attribute__((visibility("default"))) FILE* popen(const char* command, const char* mode) {
    announce_spawn();
    return real::popen.get()(command, mode);
}

// The exec family returns only on failure, with errno as the real call set it.
extern "C" __attribute__((visibility("default"))) int execve(const char* path, char* const argv[],
                                                             char* const envp[]) noexcept {
    before_exec();
    return real::execve.get()(path, argv, envp);
}

extern "C" __attribute__((visibility("default"))) int execv(const char* path, char* const argv[]) noexcept {
    before_exec();
    return real::execv.get()(path, argv);
}

extern "C" __attribute__((visibility("default"))) int execvp(const char* file, char* const argv[]) noexcept {
    before_exec();
    return real::execvp.get()(file, argv);
}

extern "C" __attribute__((visibility("default"))) int execvpe(const char* file, char* const argv[],
                                                              char* const envp[]) noexcept {
    before_exec();
    return real::execvpe.get()(file, argv, envp);
}
