/* Force-included (-include) into every source of libtcpfix.so.
 *
 * The library must load on every glibc from 2.17 on, whatever glibc it was
 * built against. A reference to a libc function carries the version that
 * function had in the build machine's libc: on Debian 12 `dlsym` is
 * GLIBC_2.34, `pthread_sigmask` GLIBC_2.32, `pow` GLIBC_2.29. An older loader
 * refuses a preload that asks for a version it does not have, fatally, so the
 * client would not start at all (KERNEL-FACTS 11).
 *
 * Every newer glibc keeps the old versions of these functions as
 * compatibility symbols, so binding each reference to its oldest version
 * works on old and new alike. These are the functions the library uses whose
 * default version is newer than 2.17; the audit test
 * (tests/integration/test_portability.py, and tests/floor/audit.py in ctest)
 * names any symbol above the floor, so a new one cannot slip in unnoticed.
 * Functions with no version at or below 2.17 at all (stat, fstat: 2.33;
 * strerrorname_np: 2.32; arc4random: 2.36; getrandom: 2.25; close_range:
 * 2.34) must not be called: the library uses system calls or its own code
 * instead.
 *
 * Where dlsym and pthread_* live before 2.34 (libdl, libpthread), CMake names
 * those libraries as dependencies; the version strings are the same.
 */
#ifndef TCPFIX_GLIBC_FLOOR_H
#define TCPFIX_GLIBC_FLOOR_H

#if defined(__x86_64__)
#define TCPFIX_GLIBC_BASE "GLIBC_2.2.5"
#elif defined(__aarch64__)
#define TCPFIX_GLIBC_BASE "GLIBC_2.17"
#else
#error "tcpfix: add this architecture's oldest glibc version to preload/glibc_floor.h"
#endif

#define TCPFIX_PIN(sym) __asm__(".symver " #sym "," #sym "@" TCPFIX_GLIBC_BASE)

/* libdl before 2.34 */
TCPFIX_PIN(dlsym);
TCPFIX_PIN(dlopen);
TCPFIX_PIN(dladdr);
TCPFIX_PIN(dlerror);
TCPFIX_PIN(dlclose);
/* libpthread before 2.34 (2.32 for pthread_sigmask) */
TCPFIX_PIN(pthread_create);
TCPFIX_PIN(pthread_once);
TCPFIX_PIN(pthread_sigmask);
TCPFIX_PIN(pthread_join);
TCPFIX_PIN(pthread_detach);
TCPFIX_PIN(pthread_key_create);
TCPFIX_PIN(pthread_getspecific);
TCPFIX_PIN(pthread_setspecific);
TCPFIX_PIN(pthread_mutex_trylock);
TCPFIX_PIN(pthread_attr_setstacksize);
/* libm: new error handling in 2.29, same results */
TCPFIX_PIN(pow);
TCPFIX_PIN(exp);
TCPFIX_PIN(log);

#undef TCPFIX_PIN

#ifdef __cplusplus
/* fmt, built without exceptions, would still construct a std::runtime_error
 * (libstdc++'s, out of line) for a format error before asserting. The
 * library's format strings are checked at compile time, so this cannot
 * happen; if it did, preload/cxxrt.cpp ends the process with one line. */
extern "C" [[noreturn]] void tcpfix_format_failed(void);
#define FMT_THROW(x) tcpfix_format_failed()
#endif

#endif
