/* What the small C programs of tests/programs and bench share: numbers from
 * the command line, errno names, a monotonic clock, IP literals. Each program
 * is one file that includes this once, after defining _GNU_SOURCE. Messages
 * carry the program's name (program_invocation_short_name). */
#ifndef TCPFIX_PROGUTIL_H
#define TCPFIX_PROGUTIL_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define PROGUTIL_MAYBE_UNUSED __attribute__((unused))

/* "EADDRNOTAVAIL" ("0" for 0), or "E?" for a number glibc does not name.
 * The portability tests build these programs against glibc 2.31 too, which
 * has no strerrorname_np: there, the names the tests look for. */
#if defined(__GLIBC__) && __GLIBC_PREREQ(2, 32)
PROGUTIL_MAYBE_UNUSED static const char *errno_name(int err) {
    const char *name = strerrorname_np(err);
    return name ? name : "E?";
}
#else
PROGUTIL_MAYBE_UNUSED static const char *errno_name(int err) {
    switch (err) {
#define PROGUTIL_NAME(e) case e: return #e;
        PROGUTIL_NAME(EPERM) PROGUTIL_NAME(ENOENT) PROGUTIL_NAME(EINTR) PROGUTIL_NAME(EIO)
        PROGUTIL_NAME(EBADF) PROGUTIL_NAME(EAGAIN) PROGUTIL_NAME(ENOMEM) PROGUTIL_NAME(EACCES)
        PROGUTIL_NAME(EFAULT) PROGUTIL_NAME(EBUSY) PROGUTIL_NAME(EEXIST) PROGUTIL_NAME(EINVAL)
        PROGUTIL_NAME(EMFILE) PROGUTIL_NAME(ENOSPC) PROGUTIL_NAME(EPIPE) PROGUTIL_NAME(ENOSYS)
        PROGUTIL_NAME(ENOTSOCK) PROGUTIL_NAME(ENOPROTOOPT) PROGUTIL_NAME(EOPNOTSUPP)
        PROGUTIL_NAME(EAFNOSUPPORT) PROGUTIL_NAME(EADDRINUSE) PROGUTIL_NAME(EADDRNOTAVAIL)
        PROGUTIL_NAME(ENETDOWN) PROGUTIL_NAME(ENETUNREACH) PROGUTIL_NAME(ECONNABORTED)
        PROGUTIL_NAME(ECONNRESET) PROGUTIL_NAME(ENOBUFS) PROGUTIL_NAME(EISCONN)
        PROGUTIL_NAME(ENOTCONN) PROGUTIL_NAME(ETIMEDOUT) PROGUTIL_NAME(ECONNREFUSED)
        PROGUTIL_NAME(EHOSTDOWN) PROGUTIL_NAME(EHOSTUNREACH) PROGUTIL_NAME(EALREADY)
        PROGUTIL_NAME(EINPROGRESS)
#undef PROGUTIL_NAME
        case 0: return "0";
        default: return "E?";
    }
}
#endif

/* A decimal in [lo, hi], or the program exits 64 naming `what`. */
PROGUTIL_MAYBE_UNUSED static long parse_long(const char *s, const char *what, long lo, long hi) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "%s: bad %s: %s\n", program_invocation_short_name, what, s);
        exit(64);
    }
    return v;
}

PROGUTIL_MAYBE_UNUSED static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* HOST (an IPv4 or IPv6 literal) and PORT into *ss: the address's length, or
 * 0 when HOST is neither. */
PROGUTIL_MAYBE_UNUSED static socklen_t ip_literal(const char *host, long port, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((unsigned short)port);
        return sizeof *sin;
    }
    if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((unsigned short)port);
        return sizeof *sin6;
    }
    return 0;
}

/* The port of an IPv4 or IPv6 address, in host order. */
PROGUTIL_MAYBE_UNUSED static unsigned short ip_port(const struct sockaddr_storage *ss) {
    return ntohs(ss->ss_family == AF_INET ? ((const struct sockaddr_in *)ss)->sin_port
                                          : ((const struct sockaddr_in6 *)ss)->sin6_port);
}

#endif
