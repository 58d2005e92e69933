/*
 * timed_client: one connect() as a careful application makes it, with
 * everything a connect deadline could disturb written down afterwards.
 *
 * Before connecting it sets TCP_NODELAY, SO_KEEPALIVE and SO_RCVBUF (and,
 * if asked, SO_SNDTIMEO), notes the descriptor number, its inode, how many
 * descriptors are open, O_NONBLOCK and FD_CLOEXEC. Then it connects:
 *   blocking     one blocking connect();
 *   nonblocking  fcntl(O_NONBLOCK) as php-redis and libmariadb do,
 *                connect() = EINPROGRESS, poll(POLLOUT) for up to -w ms,
 *                getsockopt(SO_ERROR).
 * Optionally a SIGALRM (setitimer) arrives -s ms after the connect started,
 * caught by a handler with or without SA_RESTART (-r).
 *
 * usage: timed_client [-m blocking|nonblocking] [-c] [-w MS] [-s MS] [-r]
 *                     [-t MS] [-b BYTES] HOST PORT
 *   -m MODE   blocking (default) or nonblocking
 *   -c        create the socket with SOCK_CLOEXEC (else FD_CLOEXEC is clear)
 *   -w MS     non-blocking mode: how long to poll (default 5000)
 *   -s MS     raise SIGALRM this long after connect() is called
 *   -r        the SIGALRM handler is installed with SA_RESTART
 *   -t MS     SO_SNDTIMEO before connect (bounds a blocking connect)
 *   -b BYTES  SO_RCVBUF to set (default 65536; the kernel doubles it)
 *
 * Each signal caught writes {"event":"signal","ms":T} to stderr at once.
 * At the end one JSON line on stdout:
 *   {"mode":..,"fd_before":3,"fd_after":3,"ino_before":..,"ino_after":..,
 *    "open_fds_before":N,"open_fds_after":N,"connect_errno":"EINPROGRESS"|null,
 *    "connect_ms":T,"poll_ret":N|null,"poll_revents":N|null,
 *    "so_error":"ETIMEDOUT"|null,"result":"OK"|"ETIMEDOUT"|"POLL_TIMEOUT"|...,
 *    "elapsed_ms":T,"nonblock_before":0|1,"nonblock_after":0|1,
 *    "cloexec_before":0|1,"cloexec_after":0|1,"nodelay_after":1,
 *    "keepalive_after":1,"rcvbuf_before":N,"rcvbuf_after":N,
 *    "sndtimeo_after_ms":N,"local_port":P,"signals":N,"signal_ms":T|null}
 * fd_after is the descriptor number if it still names an open socket after
 * the connect, else -1. local_port is getsockname()'s port after the
 * connect (0 when the socket has none). Exit 0 when the run completed
 * (whatever the connect did), 64 on a usage error, 1 if set-up failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "progutil.h"

static volatile sig_atomic_t signals_caught = 0;
static volatile int64_t first_signal_us = -1;
static int64_t start_us = 0;

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *what) {
    fprintf(stderr, "timed_client: %s: %s\n", what, errno_name(errno));
    exit(1);
}

/* Async-signal-safe: a counter, a clock read and one write(). */
static void on_alarm(int sig) {
    (void)sig;
    int saved = errno;
    int64_t t = now_us();
    if (first_signal_us < 0) first_signal_us = t;
    signals_caught++;
    char line[64];
    int n = snprintf(line, sizeof line, "{\"event\":\"signal\",\"ms\":%.3f}\n",
                     (t - start_us) / 1000.0);
    if (n > 0) (void)!write(2, line, (size_t)n);
    errno = saved;
}

static int open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

static int int_opt(int fd, int level, int name) {
    int v = -1;
    socklen_t len = sizeof v;
    if (getsockopt(fd, level, name, &v, &len) != 0) return -1;
    return v;
}

int main(int argc, char *argv[]) {
    int nonblocking = 0, cloexec = 0, restart = 0;
    long wait_ms = 5000, signal_ms = 0, sndtimeo_ms = 0, rcvbuf = 65536;
    int opt;
    while ((opt = getopt(argc, argv, "m:cw:s:rt:b:")) != -1) {
        switch (opt) {
            case 'm':
                if (strcmp(optarg, "blocking") == 0) nonblocking = 0;
                else if (strcmp(optarg, "nonblocking") == 0) nonblocking = 1;
                else {
                    fprintf(stderr, "timed_client: bad mode: %s\n", optarg);
                    return 64;
                }
                break;
            case 'c': cloexec = 1; break;
            case 'w': wait_ms = parse_long(optarg, "poll ms", 0, 600000); break;
            case 's': signal_ms = parse_long(optarg, "signal ms", 1, 600000); break;
            case 'r': restart = 1; break;
            case 't': sndtimeo_ms = parse_long(optarg, "SO_SNDTIMEO ms", 1, 600000); break;
            case 'b': rcvbuf = parse_long(optarg, "SO_RCVBUF", 1024, 1 << 24); break;
            default: return 64;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr,
                "usage: timed_client [-m blocking|nonblocking] [-c] [-w MS] [-s MS] [-r] "
                "[-t MS] [-b BYTES] HOST PORT\n");
        return 64;
    }
    const char *host = argv[optind];
    long port = parse_long(argv[optind + 1], "port", 1, 65535);

    struct sockaddr_storage ss;
    socklen_t sslen = ip_literal(host, port, &ss);
    if (sslen == 0) {
        fprintf(stderr, "timed_client: not an IP literal: %s\n", host);
        return 64;
    }

    if (signal_ms > 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_alarm;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = restart ? SA_RESTART : 0;
        if (sigaction(SIGALRM, &sa, NULL) != 0) die("sigaction");
    }

    int fd = socket(ss.ss_family, SOCK_STREAM | (cloexec ? SOCK_CLOEXEC : 0), 0);
    if (fd < 0) die("socket");
    int one = 1, rb = (int)rcvbuf;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) die("TCP_NODELAY");
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) != 0) die("SO_KEEPALIVE");
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rb, sizeof rb) != 0) die("SO_RCVBUF");
    if (sndtimeo_ms > 0) {
        struct timeval tv = {sndtimeo_ms / 1000, (sndtimeo_ms % 1000) * 1000};
        if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) die("SO_SNDTIMEO");
    }
    if (nonblocking) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) die("O_NONBLOCK");
    }
    struct stat st;
    if (fstat(fd, &st) != 0) die("fstat");
    unsigned long ino_before = (unsigned long)st.st_ino;
    int fds_before = open_fds();
    int nonblock_before = (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
    int cloexec_before = (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0;
    int rcvbuf_before = int_opt(fd, SOL_SOCKET, SO_RCVBUF);

    start_us = now_us();
    if (signal_ms > 0) {
        struct itimerval it;
        memset(&it, 0, sizeof it);
        it.it_value.tv_sec = signal_ms / 1000;
        it.it_value.tv_usec = (signal_ms % 1000) * 1000;
        if (setitimer(ITIMER_REAL, &it, NULL) != 0) die("setitimer");
    }
    int r = connect(fd, (struct sockaddr *)&ss, sslen);
    int connect_err = r == 0 ? 0 : errno;
    int64_t connect_done_us = now_us();

    int poll_ret = -2, revents = 0, so_err = -1;
    const char *result;
    if (r == 0) {
        result = "OK";
    } else if (nonblocking && connect_err == EINPROGRESS) {
        int64_t deadline = connect_done_us + wait_ms * 1000;
        for (int spins = 0; spins < 1000; ++spins) {
            int64_t left = deadline - now_us();
            struct pollfd p = {fd, POLLOUT, 0};
            poll_ret = poll(&p, 1, left > 0 ? (int)((left + 999) / 1000) : 0);
            revents = p.revents;
            if (poll_ret >= 0 || errno != EINTR) break;
        }
        if (poll_ret > 0) {
            int e = 0;
            socklen_t len = sizeof e;
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0) die("SO_ERROR");
            so_err = e;
            result = e == 0 ? "OK" : errno_name(e);
        } else if (poll_ret == 0) {
            result = "POLL_TIMEOUT";
        } else {
            result = "POLL_ERROR";
        }
    } else {
        result = errno_name(connect_err);
    }
    int64_t end_us = now_us();
    if (signal_ms > 0) {
        struct itimerval off;
        memset(&off, 0, sizeof off);
        setitimer(ITIMER_REAL, &off, NULL);
    }

    int fd_after = -1;
    unsigned long ino_after = 0;
    if (fcntl(fd, F_GETFD) >= 0 && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) {
        fd_after = fd;
        ino_after = (unsigned long)st.st_ino;
    }
    int fds_after = open_fds();
    int nonblock_after = (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
    int cloexec_after = (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0;
    struct timeval tv = {0, 0};
    socklen_t tvlen = sizeof tv;
    getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, &tvlen);
    struct sockaddr_storage local;
    socklen_t local_len = sizeof local;
    int local_port = 0;
    if (getsockname(fd, (struct sockaddr *)&local, &local_len) == 0)
        local_port = local.ss_family == AF_INET6
                         ? ntohs(((struct sockaddr_in6 *)&local)->sin6_port)
                         : ntohs(((struct sockaddr_in *)&local)->sin_port);

    char poll_ret_s[16] = "null", revents_s[16] = "null", so_err_s[32] = "null",
         connect_errno_s[32] = "null", signal_ms_s[32] = "null";
    if (poll_ret != -2) {
        snprintf(poll_ret_s, sizeof poll_ret_s, "%d", poll_ret);
        snprintf(revents_s, sizeof revents_s, "%d", revents);
    }
    if (so_err >= 0)
        snprintf(so_err_s, sizeof so_err_s, "\"%s\"", so_err == 0 ? "0" : errno_name(so_err));
    if (r != 0) snprintf(connect_errno_s, sizeof connect_errno_s, "\"%s\"", errno_name(connect_err));
    if (first_signal_us >= 0)
        snprintf(signal_ms_s, sizeof signal_ms_s, "%.3f", (first_signal_us - start_us) / 1000.0);

    printf("{\"mode\":\"%s\",\"fd_before\":%d,\"fd_after\":%d,\"ino_before\":%lu,\"ino_after\":%lu,"
           "\"open_fds_before\":%d,\"open_fds_after\":%d,\"connect_errno\":%s,\"connect_ms\":%.3f,"
           "\"poll_ret\":%s,\"poll_revents\":%s,\"so_error\":%s,\"result\":\"%s\","
           "\"elapsed_ms\":%.3f,\"nonblock_before\":%d,\"nonblock_after\":%d,"
           "\"cloexec_before\":%d,\"cloexec_after\":%d,\"nodelay_after\":%d,"
           "\"keepalive_after\":%d,\"rcvbuf_before\":%d,\"rcvbuf_after\":%d,"
           "\"sndtimeo_after_ms\":%ld,\"local_port\":%d,\"signals\":%d,\"signal_ms\":%s}\n",
           nonblocking ? "nonblocking" : "blocking", fd, fd_after, ino_before, ino_after,
           fds_before, fds_after, connect_errno_s, (connect_done_us - start_us) / 1000.0,
           poll_ret_s, revents_s, so_err_s, result, (end_us - start_us) / 1000.0,
           nonblock_before, nonblock_after, cloexec_before, cloexec_after,
           int_opt(fd, IPPROTO_TCP, TCP_NODELAY), int_opt(fd, SOL_SOCKET, SO_KEEPALIVE),
           rcvbuf_before, int_opt(fd, SOL_SOCKET, SO_RCVBUF),
           (long)tv.tv_sec * 1000 + tv.tv_usec / 1000, local_port, (int)signals_caught,
           signal_ms_s);
    fflush(stdout);
    close(fd);
    return 0;
}
