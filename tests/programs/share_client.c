/*
 * share_client: one process of a pool that connects to one destination over
 * and over (socket, connect, close), recording when each connect returned.
 * The share tests start many of these under TCPFIX_SHARE.
 *
 * usage: share_client [-n COUNT] [-d DURATION_MS] [-N] [-q] HOST PORT
 *   -n COUNT        stop after COUNT attempts (default: no limit)
 *   -d DURATION_MS  stop after this long (default 10000)
 *   -N              connect non-blocking and poll for the outcome, as
 *                   php-redis and libmariadb do (default: blocking)
 *   -q              no list of times, only the counts
 *
 * Prints one JSON line at the end (also on SIGTERM):
 *   {"pid":P,"attempts":N,"ok":N,"refused":N,"other":N,"start":S,"end":E,
 *    "times":[t,...],"results":"orr..."}
 * where times are CLOCK_MONOTONIC seconds at which each connect returned
 * (the same clock in every process of the host) and results holds one letter
 * per attempt: o ok, r refused, x anything else.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "progutil.h"

#define MAX_RECORDED 200000

static double times[MAX_RECORDED];
static char results[MAX_RECORDED + 1];
static volatile sig_atomic_t stop;

static void on_term(int sig) {
    (void)sig;
    stop = 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 0, or the errno the connect ended with. */
static int attempt(const struct sockaddr_storage *ss, socklen_t len, int nonblocking) {
    int fd = socket(ss->ss_family, SOCK_STREAM | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return errno;
    int err = 0;
    if (connect(fd, (const struct sockaddr *)ss, len) != 0) {
        err = errno;
        if (nonblocking && err == EINPROGRESS) {
            struct pollfd p = {fd, POLLOUT, 0};
            if (poll(&p, 1, 5000) == 1) {
                socklen_t l = sizeof err;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) != 0) err = errno;
            } else {
                err = ETIMEDOUT;
            }
        }
    }
    close(fd);
    return err;
}

int main(int argc, char *argv[]) {
    long count = -1, duration_ms = 10000;
    int nonblocking = 0, quiet = 0, opt;
    while ((opt = getopt(argc, argv, "n:d:Nq")) != -1) {
        switch (opt) {
            case 'n': count = parse_long(optarg, "count", 0, 100000000); break;
            case 'd': duration_ms = parse_long(optarg, "duration", 1, 3600000); break;
            case 'N': nonblocking = 1; break;
            case 'q': quiet = 1; break;
            default:
                fprintf(stderr, "usage: share_client [-n COUNT] [-d DURATION_MS] [-N] [-q] HOST PORT\n");
                return 64;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "usage: share_client [-n COUNT] [-d DURATION_MS] [-N] [-q] HOST PORT\n");
        return 64;
    }
    long port = parse_long(argv[optind + 1], "port", 1, 65535);
    struct sockaddr_storage ss;
    socklen_t len = ip_literal(argv[optind], port, &ss);
    if (len == 0) {
        fprintf(stderr, "share_client: not an IP literal: %s\n", argv[optind]);
        return 64;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);  /* no SA_RESTART: a paced connect ends with EINTR */

    long attempts = 0, ok = 0, refused = 0, other = 0;
    double start = now_s(), end = start + (double)duration_ms / 1000;
    while (!stop && (count < 0 || attempts < count) && now_s() < end) {
        int err = attempt(&ss, len, nonblocking);
        if (stop && err == EINTR) break;
        double t = now_s();
        char r = err == 0 ? 'o' : err == ECONNREFUSED ? 'r' : 'x';
        if (err == 0) ++ok;
        else if (err == ECONNREFUSED) ++refused;
        else ++other;
        if (attempts < MAX_RECORDED) {
            times[attempts] = t;
            results[attempts] = r;
        }
        ++attempts;
    }
    long recorded = attempts < MAX_RECORDED ? attempts : MAX_RECORDED;
    results[recorded] = '\0';
    printf("{\"pid\":%d,\"attempts\":%ld,\"ok\":%ld,\"refused\":%ld,\"other\":%ld,\"start\":%.6f,\"end\":%.6f,"
           "\"results\":\"%s\",\"times\":[",
           (int)getpid(), attempts, ok, refused, other, start, now_s(), quiet ? "" : results);
    for (long i = 0; !quiet && i < recorded; ++i) printf("%s%.6f", i ? "," : "", times[i]);
    printf("]}\n");
    return 0;
}
