// The `tcpfix` command on every glibc from 2.17 (README "Runs on every glibc
// from 2.17"), while staying a dynamically linked program — so the library
// can be preloaded into it (`tcpfix run -- tcpfix churn ...`, `tcpfix ab`).
//
// The command links libstdc++ and libgcc statically (RHEL 8 and CentOS 7 have
// older ones than the build machine's compiler needs). Those archives, and
// glibc's own start file, were built against the build machine's glibc and
// reference what it has: `__libc_start_main@GLIBC_2.34`, `stat@GLIBC_2.33`,
// `pthread_create@GLIBC_2.34`, `_dl_find_object@GLIBC_2.35`... An older loader
// refuses to start a program that asks for a version its libc lacks.
//
// So every such reference is redirected at link time (`-Wl,--wrap=NAME`, the
// list is TCPFIX_CLI_WRAPS in CMakeLists.txt) to a __wrap_NAME defined here,
// which either calls the same function at its oldest version (every newer
// glibc keeps those as compatibility symbols) or, for what did not exist in
// 2.17, does the work itself. The floor audit (ctest floor.audit) names any
// reference above 2.17 that slips past this list; tests/floor/startprobe
// checks the start-up and shutdown below on Debian 11, 12 and 13.
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#if !defined(__x86_64__)
#error "tools/glibc_compat.cpp knows x86-64's oldest glibc versions only; build with TCPFIX_CLI_FLOOR=OFF"
#endif

#define TCPFIX_OLD(name, sym) __asm__(".symver " #name "," #sym "@GLIBC_2.2.5")

extern "C" {

// ---- start-up: __libc_start_main ------------------------------------------
// glibc 2.34's start file passes no init function: __libc_start_main@2.34 runs
// the program's constructors itself. The old __libc_start_main (the only one
// before 2.34, kept since as a compatibility symbol) runs the `init` it is
// given, and nothing if it is given none; so this passes one that does what
// libc_nonshared's __libc_csu_init did: preinit array, _init, init array.
// Destructors need nothing: the loader runs the program's fini array at exit
// on every version.

extern void (*__preinit_array_start[])(int, char**, char**) __attribute__((visibility("hidden")));
extern void (*__preinit_array_end[])(int, char**, char**) __attribute__((visibility("hidden")));
extern void (*__init_array_start[])(int, char**, char**) __attribute__((visibility("hidden")));
extern void (*__init_array_end[])(int, char**, char**) __attribute__((visibility("hidden")));
void _init(void);

static void tcpfix_csu_init(int argc, char** argv, char** envp) {
    for (auto** f = __preinit_array_start; f != __preinit_array_end; ++f) (*f)(argc, argv, envp);
    _init();
    for (auto** f = __init_array_start; f != __init_array_end; ++f) (*f)(argc, argv, envp);
}

using Main = int (*)(int, char**, char**);
int tcpfix_libc_start_main_old(Main, int, char**, void (*)(int, char**, char**), void (*)(void),
                               void (*)(void), void*);
TCPFIX_OLD(tcpfix_libc_start_main_old, __libc_start_main);

int __wrap___libc_start_main(Main main, int argc, char** argv, void (*)(int, char**, char**),
                             void (*)(void), void (*rtld_fini)(void), void* stack_end) {
    return tcpfix_libc_start_main_old(main, argc, argv, tcpfix_csu_init, nullptr, rtld_fini, stack_end);
}

// ---- the same function, at its oldest version --------------------------------
#define TCPFIX_FORWARD(ret, name, params, args)             \
    ret tcpfix_old_##name params;                           \
    TCPFIX_OLD(tcpfix_old_##name, name);                    \
    ret __wrap_##name params { return tcpfix_old_##name args; }

TCPFIX_FORWARD(int, pthread_create, (pthread_t * t, const pthread_attr_t* a, void* (*f)(void*), void* arg),
               (t, a, f, arg))
TCPFIX_FORWARD(int, pthread_join, (pthread_t t, void** r), (t, r))
TCPFIX_FORWARD(int, pthread_detach, (pthread_t t), (t))
TCPFIX_FORWARD(int, pthread_once, (pthread_once_t * o, void (*f)(void)), (o, f))
TCPFIX_FORWARD(int, pthread_key_create, (pthread_key_t * k, void (*d)(void*)), (k, d))
TCPFIX_FORWARD(int, pthread_sigmask, (int how, const sigset_t* set, sigset_t* old), (how, set, old))
TCPFIX_FORWARD(int, glob,
               (const char* pattern, int flags, int (*err)(const char*, int), glob_t* out),
               (pattern, flags, err, out))
TCPFIX_FORWARD(void, globfree, (glob_t * g), (g))
// libbpf reads an in-memory kconfig with fmemopen (new semantics in 2.22 for
// writing and binary modes; reading, all it does, is the same before).
TCPFIX_FORWARD(FILE*, fmemopen, (void* buf, size_t size, const char* mode), (buf, size, mode))

// fcntl64 (2.28) is fcntl on 64-bit: off_t is already 64 bits.
int tcpfix_old_fcntl(int fd, int cmd, ...);
TCPFIX_OLD(tcpfix_old_fcntl, fcntl);
int __wrap_fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void* arg = va_arg(ap, void*);
    va_end(ap);
    return tcpfix_old_fcntl(fd, cmd, arg);
}

// libstdc++'s thread support asks for __pthread_key_create (weakly) to know
// whether threads are linked in: the same function as pthread_key_create.
int __wrap___pthread_key_create(pthread_key_t* k, void (*d)(void*)) { return tcpfix_old_pthread_key_create(k, d); }

// ---- stat and friends: before 2.33 these were wrappers of __xstat -----------
int __xstat(int, const char*, struct stat*);
int __lxstat(int, const char*, struct stat*);
int __fxstat(int, int, struct stat*);
int __fxstatat(int, int, const char*, struct stat*, int);
constexpr int kStatVer = 1;  // _STAT_VER_LINUX on x86-64

int __wrap_stat(const char* path, struct stat* st) { return __xstat(kStatVer, path, st); }
int __wrap_lstat(const char* path, struct stat* st) { return __lxstat(kStatVer, path, st); }
int __wrap_fstat(int fd, struct stat* st) { return __fxstat(kStatVer, fd, st); }
int __wrap_fstat64(int fd, struct stat* st) { return __fxstat(kStatVer, fd, st); }
int __wrap_stat64(const char* path, struct stat* st) { return __xstat(kStatVer, path, st); }
int __wrap_lstat64(const char* path, struct stat* st) { return __lxstat(kStatVer, path, st); }
int __wrap_fstatat(int dirfd, const char* path, struct stat* st, int flags) {
    return __fxstatat(kStatVer, dirfd, path, st, flags);
}
int __wrap_fstatat64(int dirfd, const char* path, struct stat* st, int flags) {
    return __fxstatat(kStatVer, dirfd, path, st, flags);
}

// ---- what 2.17 did not have --------------------------------------------------

// libstdc++ skips atomic reference counts while this says the process has one
// thread (2.32). Never claiming so costs an atomic instruction, nothing else.
char __wrap___libc_single_threaded = 0;

// getentropy (2.25): the getrandom system call (Linux 3.17), else /dev/urandom.
int __wrap_getentropy(void* buf, size_t len) {
    if (len > 256) {
        errno = EIO;
        return -1;
    }
    auto* p = static_cast<unsigned char*>(buf);
    size_t got = 0;
    while (got < len) {
        long r = syscall(SYS_getrandom, p + got, len - got, 0);
        if (r > 0) {
            got += static_cast<size_t>(r);
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else {
            break;
        }
    }
    if (got == len) return 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    while (got < len) {
        ssize_t r = read(fd, p + got, len - got);
        if (r <= 0 && !(r < 0 && errno == EINTR)) break;
        if (r > 0) got += static_cast<size_t>(r);
    }
    close(fd);
    if (got == len) return 0;
    errno = EIO;
    return -1;
}

// arc4random (2.36), for std::random_device: four bytes of getentropy.
uint32_t __wrap_arc4random(void) {
    uint32_t v = 0;
    if (__wrap_getentropy(&v, sizeof v) != 0) abort();
    return v;
}

// _dl_find_object (2.35), which GCC 12's unwinder asks for the exception
// tables of the code at an address: what the unwinder used before, the
// loader's list of objects (dl_iterate_phdr), gives the same answer.
struct FindObject {
    uintptr_t pc;
    dl_find_object* out;
    bool found;
};

static int find_object_in(dl_phdr_info* info, size_t, void* data) {
    auto* q = static_cast<FindObject*>(data);
    uintptr_t lo = UINTPTR_MAX, hi = 0, eh = 0;
    bool inside = false;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        uintptr_t start = info->dlpi_addr + ph.p_vaddr;
        if (ph.p_type == PT_LOAD) {
            if (start < lo) lo = start;
            if (start + ph.p_memsz > hi) hi = start + ph.p_memsz;
            if (q->pc >= start && q->pc < start + ph.p_memsz) inside = true;
        } else if (ph.p_type == PT_GNU_EH_FRAME) {
            eh = start;
        }
    }
    if (!inside) return 0;
    memset(q->out, 0, sizeof *q->out);
    q->out->dlfo_map_start = reinterpret_cast<void*>(lo);
    q->out->dlfo_map_end = reinterpret_cast<void*>(hi);
    q->out->dlfo_eh_frame = reinterpret_cast<void*>(eh);
    q->found = eh != 0;
    return 1;
}

int tcpfix_old_dladdr1(const void*, Dl_info*, void**, int);
__asm__(".symver tcpfix_old_dladdr1,dladdr1@GLIBC_2.3.3");  // libdl's, before 2.34

int __wrap__dl_find_object(void* address, dl_find_object* result) {
    FindObject q{reinterpret_cast<uintptr_t>(address), result, false};
    dl_iterate_phdr(find_object_in, &q);
    if (!q.found) return -1;
    Dl_info info;
    link_map* map = nullptr;
    if (tcpfix_old_dladdr1(address, &info, reinterpret_cast<void**>(&map), RTLD_DL_LINKMAP) != 0)
        result->dlfo_link_map = map;
    return 0;
}

}  // extern "C"
