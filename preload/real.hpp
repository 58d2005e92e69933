// The real libc functions behind each hook, resolved once with dlsym(RTLD_NEXT).
// A hook may run before tcpfix's constructor (another library's constructor can
// call close), so each symbol also resolves lazily on first use. The compiler
// checks every signature against libc's own declaration (decltype(&::name)).
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>

namespace tcpfix::real {

// Resolves `name` past this library; aborts with a message if the answer lies
// in this library itself (a loop) or a required symbol is missing.
void* resolve(const char* name, bool required);

template <typename Fn>
class Symbol {
public:
    constexpr Symbol(const char* name, bool required) : name_(name), required_(required) {}

    // The real function if already resolved, else nullptr.
    Fn* peek() const { return fn_.load(std::memory_order_acquire); }

    // The real function, or nullptr for an optional one libc lacks.
    Fn* get() {
        Fn* fn = fn_.load(std::memory_order_acquire);
        if (__builtin_expect(fn != nullptr, 1)) return fn;
        fn = reinterpret_cast<Fn*>(resolve(name_, required_));
        fn_.store(fn, std::memory_order_release);
        return fn;
    }

private:
    const char* name_;
    bool required_;
    std::atomic<Fn*> fn_{nullptr};
};

extern Symbol<decltype(::socket)> socket;
extern Symbol<decltype(::connect)> connect;
extern Symbol<decltype(::close)> close;
extern Symbol<decltype(::bind)> bind;
extern Symbol<decltype(::accept)> accept;
extern Symbol<decltype(::accept4)> accept4;
extern Symbol<decltype(::dup)> dup;
extern Symbol<decltype(::dup2)> dup2;
extern Symbol<decltype(::dup3)> dup3;
extern Symbol<int(int, int, ...)> fcntl;
extern Symbol<int(int, int, ...)> fcntl64;
extern Symbol<int(unsigned, unsigned, int)> close_range;
extern Symbol<void(int)> closefrom;
extern Symbol<long(long, ...)> syscall;
extern Symbol<decltype(::setsockopt)> setsockopt;
extern Symbol<decltype(::getsockopt)> getsockopt;
extern Symbol<int(pid_t*, const char*, const posix_spawn_file_actions_t*, const posix_spawnattr_t*, char* const[], char* const[])> posix_spawn;
extern Symbol<int(pid_t*, const char*, const posix_spawn_file_actions_t*, const posix_spawnattr_t*, char* const[], char* const[])> posix_spawnp;
extern Symbol<decltype(::system)> system;
extern Symbol<decltype(::popen)> popen;
extern Symbol<decltype(::fdopen)> fdopen;
extern Symbol<int(const char*, char* const[], char* const[])> execve;
extern Symbol<int(const char*, char* const[])> execv;
extern Symbol<int(const char*, char* const[])> execvp;
extern Symbol<int(const char*, char* const[], char* const[])> execvpe;

// Resolves every symbol (called from the constructor, so hooks are warm).
void resolve_all();

// A raw system call that needs no resolved symbol: the fallback while dlsym
// itself re-enters a hook on this thread. Returns -errno on failure.
long raw_syscall(long n, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0, long a5 = 0,
                 long a6 = 0);

// True while this thread is inside dlsym for a real symbol.
bool resolving();

}  // namespace tcpfix::real
