/*
 * leak_client: incident 001's leak pattern, exactly, without sysbench:
 *
 *   loop { socket(); connect(HOST, PORT) (blocking);
 *          success: read nothing, never close (the descriptor is leaked);
 *          failure: report the errno, close the socket;
 *          usleep(INTERVAL_US) }
 *
 * which is what sysbench's reconnect loop does with Connector/C 3.1: every
 * try connects, the server's greeting sits unread in the receive queue, the
 * server eventually closes and the client's socket stays in CLOSE_WAIT,
 * holding its ephemeral port, for as long as the process lives.
 *
 * usage: leak_client HOST PORT MAX_ATTEMPTS DURATION_MS [INTERVAL_US]
 *
 * HOST is an IPv4 or IPv6 literal; INTERVAL_US defaults to 1000 (sysbench's
 * usleep(1000)). Stops after MAX_ATTEMPTS connects or DURATION_MS, whichever
 * comes first. The first 5 failures of each kind are printed as
 *   attempt 1234: connect: EADDRNOTAVAIL (Cannot assign requested address)
 * then, at the end,
 *   first_eaddrnotavail_ms=N cpu_ms=N fds_leaked=N elapsed_ms=N
 *   attempts=N connected=N eaddrnotavail=N other=N
 * (first_eaddrnotavail_ms is -1 if it never happened; cpu_ms is the
 * process's user+system CPU time from getrusage, threads included.)
 * The leaked descriptors are left to exit() to close. Exit status 0 whatever
 * the connects did; 64 on a usage error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "progutil.h"

enum { PRINT_LIMIT = 5 };

static long long cpu_ms(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return ((long long)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}

int main(int argc, char *argv[]) {
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: leak_client HOST PORT MAX_ATTEMPTS DURATION_MS [INTERVAL_US]\n");
        return 64;
    }
    long port = parse_long(argv[2], "port", 1, 65535);
    long max_attempts = parse_long(argv[3], "max_attempts", 0, 100000000);
    long duration_ms = parse_long(argv[4], "duration_ms", 0, 3600000);
    long interval_us = argc == 6 ? parse_long(argv[5], "interval_us", 0, 60000000) : 1000;

    struct sockaddr_storage ss;
    socklen_t sslen = ip_literal(argv[1], port, &ss);
    if (sslen == 0) {
        fprintf(stderr, "leak_client: bad host (IPv4/IPv6 literal expected): %s\n", argv[1]);
        return 64;
    }

    long long start = now_ms(), deadline = start + duration_ms, first_eaddrnotavail = -1;
    long attempts = 0, connected = 0, eaddrnotavail = 0, other = 0;
    while (attempts < max_attempts && now_ms() < deadline) {
        if (attempts > 0 && interval_us > 0) usleep((useconds_t)interval_us);
        attempts++;
        int fd = socket(ss.ss_family, SOCK_STREAM, 0);
        if (fd == -1) {
            int err = errno;
            if (other++ < PRINT_LIMIT)
                printf("attempt %ld: socket: %s (%s)\n", attempts, errno_name(err), strerror(err));
            continue;
        }
        if (connect(fd, (struct sockaddr *)&ss, sslen) == 0) {
            connected++;  /* the leak: no read, no close */
            continue;
        }
        int err = errno;
        if (err == EADDRNOTAVAIL) {
            if (first_eaddrnotavail < 0) first_eaddrnotavail = now_ms() - start;
            if (eaddrnotavail++ < PRINT_LIMIT)
                printf("attempt %ld: connect: %s (%s)\n", attempts, errno_name(err), strerror(err));
        } else if (other++ < PRINT_LIMIT) {
            printf("attempt %ld: connect: %s (%s)\n", attempts, errno_name(err), strerror(err));
        }
        close(fd);  /* a failed connect is closed, as the client library does */
    }
    printf("first_eaddrnotavail_ms=%lld cpu_ms=%lld fds_leaked=%ld elapsed_ms=%lld\n",
           first_eaddrnotavail, cpu_ms(), connected, now_ms() - start);
    printf("attempts=%ld connected=%ld eaddrnotavail=%ld other=%ld\n", attempts, connected,
           eaddrnotavail, other);
    fflush(stdout);
    return 0;
}
