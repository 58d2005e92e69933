// The few C++ runtime entry points libtcpfix.so needs, so that it links no
// libstdc++ and no unwinder at all (CMake links it with the C driver).
//
// Why: a statically linked libstdc++/libgcc_eh carries references to the glibc
// it was built against (__libc_single_threaded 2.32, _dl_find_object 2.35,
// arc4random 2.36), which an older loader refuses; a dynamically linked one
// needs the GLIBCXX_ version of the build machine's compiler, which RHEL 8 or
// CentOS 7 do not have — and would tie every host process to one libstdc++.
// The library is compiled without exceptions and RTTI and uses only the
// header-only parts of the standard library (string_view, array, optional,
// variant, atomic; a few strings and vectors at start-up); what those headers
// call out of line is defined here, and kept local by the version script
// (symbols.map: `local: *`), so a host's own C++ runtime is never involved.
//
// Allocation failure and the standard library's "cannot happen" errors (a
// vector past max_size) cannot be thrown here: they end the process with one
// line, which is what the uncaught exception would have done.
#include <sys/syscall.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>

#include "preload/real.hpp"

namespace {

[[noreturn]] void fatal(const char* what) {
    const char* parts[] = {"tcpfix: ", what, "; aborting\n"};
    for (const char* p : parts)
        (void)tcpfix::real::raw_syscall(SYS_write, 2, reinterpret_cast<long>(p),
                                        static_cast<long>(std::strlen(p)));
    std::abort();
}

void* allocate(std::size_t size) {
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
    fatal("out of memory");
}

void* allocate_aligned(std::size_t size, std::align_val_t align) {
    void* p = nullptr;
    if (posix_memalign(&p, static_cast<std::size_t>(align), size == 0 ? 1 : size) == 0) return p;
    fatal("out of memory");
}

}  // namespace

void* operator new(std::size_t size) {
    return allocate(size);
}
void* operator new[](std::size_t size) {
    return allocate(size);
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
    return std::malloc(size == 0 ? 1 : size);
}
void* operator new(std::size_t size, std::align_val_t align) {
    return allocate_aligned(size, align);
}
void operator delete(void* p) noexcept {
    std::free(p);
}
void operator delete[](void* p) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
    std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
    std::free(p);
}

// What libstdc++'s headers call when built with -fno-exceptions (bits/functexcept.h).
namespace std {
void __throw_bad_alloc() {
    fatal("out of memory");
}
void __throw_bad_array_new_length() {
    fatal("bad array length");
}
void __throw_length_error(const char* what) {
    fatal(what);
}
void __throw_logic_error(const char* what) {
    fatal(what);
}
void __throw_out_of_range(const char* what) {
    fatal(what);
}
void __throw_out_of_range_fmt(const char* what, ...) {
    fatal(what);
}
void __throw_invalid_argument(const char* what) {
    fatal(what);
}
void __throw_bad_function_call() {
    fatal("bad function call");
}
}  // namespace std

extern "C" {
void tcpfix_format_failed() {
    fatal("format error");
}
void __cxa_pure_virtual() {
    fatal("pure virtual call");
}
void __cxa_deleted_virtual() {
    fatal("deleted virtual call");
}
}
