#include "preload/real.hpp"

#include <dlfcn.h>
#include <sys/syscall.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace tcpfix::real {

Symbol<decltype(::socket)> socket{"socket", true};
Symbol<decltype(::connect)> connect{"connect", true};
Symbol<decltype(::close)> close{"close", true};
Symbol<decltype(::bind)> bind{"bind", true};
Symbol<decltype(::accept)> accept{"accept", true};
Symbol<decltype(::accept4)> accept4{"accept4", true};
Symbol<decltype(::dup)> dup{"dup", true};
Symbol<decltype(::dup2)> dup2{"dup2", true};
Symbol<decltype(::dup3)> dup3{"dup3", true};
Symbol<int(int, int, ...)> fcntl{"fcntl", true};
Symbol<int(int, int, ...)> fcntl64{"fcntl64", false};
Symbol<int(unsigned, unsigned, int)> close_range{"close_range", false};
Symbol<void(int)> closefrom{"closefrom", false};
Symbol<long(long, ...)> syscall{"syscall", true};
Symbol<decltype(::setsockopt)> setsockopt{"setsockopt", true};
Symbol<decltype(::getsockopt)> getsockopt{"getsockopt", true};
Symbol<int(pid_t*, const char*, const posix_spawn_file_actions_t*, const posix_spawnattr_t*, char* const[], char* const[])> posix_spawn{"posix_spawn", true};
Symbol<int(pid_t*, const char*, const posix_spawn_file_actions_t*, const posix_spawnattr_t*, char* const[], char* const[])> posix_spawnp{"posix_spawnp", true};
Symbol<decltype(::system)> system{"system", true};
Symbol<decltype(::popen)> popen{"popen", true};
Symbol<decltype(::fdopen)> fdopen{"fdopen", true};
Symbol<int(const char*, char* const[], char* const[])> execve{"execve", true};
Symbol<int(const char*, char* const[])> execv{"execv", true};
Symbol<int(const char*, char* const[])> execvp{"execvp", true};
Symbol<int(const char*, char* const[], char* const[])> execvpe{"execvpe", true};

namespace {

thread_local bool t_resolving = false;

void die(const char* what, const char* name) {
    // No allocation, no stdio: this runs wherever the first hook ran.
    const char* parts[] = {"tcpfix: ", what, " ", name, "; aborting\n"};
    for (const char* p : parts) (void)raw_syscall(SYS_write, 2, reinterpret_cast<long>(p), static_cast<long>(std::strlen(p)));
    std::abort();
}

}  // namespace

bool resolving() { return t_resolving; }

void* resolve(const char* name, bool required) {
    t_resolving = true;
    void* fn = dlsym(RTLD_NEXT, name);
    if (fn == nullptr) {
        // LD_PRELOAD named libc before tcpfix: nothing comes "next", so ask libc itself.
        if (void* libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD)) fn = dlsym(libc, name);
    }
    t_resolving = false;
    if (fn == nullptr) {
        if (required) die("cannot find the real", name);
        return nullptr;
    }
    Dl_info mine{}, theirs{};
    if (dladdr(reinterpret_cast<void*>(&resolve), &mine) != 0 && dladdr(fn, &theirs) != 0 &&
        mine.dli_fbase == theirs.dli_fbase)
        die("the real symbol resolves to tcpfix itself:", name);
    return fn;
}

void resolve_all() {
    (void)socket.get();
    (void)connect.get();
    (void)close.get();
    (void)bind.get();
    (void)accept.get();
    (void)accept4.get();
    (void)dup.get();
    (void)dup2.get();
    (void)dup3.get();
    (void)fcntl.get();
    (void)fcntl64.get();
    (void)close_range.get();
    (void)closefrom.get();
    (void)syscall.get();
    (void)setsockopt.get();
    (void)getsockopt.get();
    (void)posix_spawn.get();
    (void)posix_spawnp.get();
    (void)system.get();
    (void)popen.get();
    (void)execve.get();
    (void)execv.get();
    (void)execvp.get();
    (void)execvpe.get();
}

long raw_syscall(long n, long a1, long a2, long a3, long a4, long a5, long a6) {
#if defined(__x86_64__)
    long ret;
    register long r10 __asm__("r10") = a4;
    register long r8 __asm__("r8") = a5;
    register long r9 __asm__("r9") = a6;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a1;
    register long x1 __asm__("x1") = a2;
    register long x2 __asm__("x2") = a3;
    register long x3 __asm__("x3") = a4;
    register long x4 __asm__("x4") = a5;
    register long x5 __asm__("x5") = a6;
    __asm__ volatile("svc 0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                     : "memory");
    return x0;
#else
#error "tcpfix needs a raw system call for this architecture"
#endif
}

}  // namespace tcpfix::real
