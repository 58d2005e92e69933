/*
 * port_probe: incident 000's HA-arbiter prober, unmodified in what it does
 * to the socket: socket(), SO_SNDTIMEO/SO_RCVTIMEO of 2 s, a blocking
 * connect(), close(). No SO_LINGER: every successful probe leaves a
 * TIME_WAIT entry behind unless something (tcpfix) changes the close.
 *
 * usage: port_probe HOST PORT COUNT [INTERVAL_US]
 *
 * HOST is an IPv4 or IPv6 literal. Prints one line per failed probe
 *   probe 17: connect: EADDRNOTAVAIL (Cannot assign requested address)
 * and a final summary line
 *   ok=N eaddrnotavail=N other=N
 * Exits 0 whatever the probes did (the summary is the result); 64 on a
 * usage error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* "EADDRNOTAVAIL" (glibc 2.32+), or "E?" for a number glibc does not name. */
static const char *errno_name(int err) {
    const char *name = strerrorname_np(err);
    return name ? name : "E?";
}

static long parse_long(const char *s, const char *what, long lo, long hi) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "port_probe: bad %s: %s\n", what, s);
        exit(64);
    }
    return v;
}

int main(int argc, char *argv[]) {
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: port_probe HOST PORT COUNT [INTERVAL_US]\n");
        return 64;
    }
    long port = parse_long(argv[2], "port", 1, 65535);
    long count = parse_long(argv[3], "count", 0, 10000000);
    long interval_us = argc == 5 ? parse_long(argv[4], "interval_us", 0, 60000000) : 0;

    struct sockaddr_storage ss;
    socklen_t sslen;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, argv[1], &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((unsigned short)port);
        sslen = sizeof *sin;
    } else if (inet_pton(AF_INET6, argv[1], &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((unsigned short)port);
        sslen = sizeof *sin6;
    } else {
        fprintf(stderr, "port_probe: bad host (IPv4/IPv6 literal expected): %s\n", argv[1]);
        return 64;
    }

    long ok = 0, eaddrnotavail = 0, other = 0;
    for (long i = 0; i < count; i++) {
        if (i > 0 && interval_us > 0) usleep((useconds_t)interval_us);
        int cfd = socket(ss.ss_family, SOCK_STREAM, 0);
        if (cfd == -1) {
            int err = errno;
            printf("probe %ld: socket: %s (%s)\n", i, errno_name(err), strerror(err));
            other++;
            continue;
        }
        struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
        if (setsockopt(cfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0 ||
            setsockopt(cfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) {
            int err = errno;
            printf("probe %ld: setsockopt: %s (%s)\n", i, errno_name(err), strerror(err));
        }
        if (connect(cfd, (struct sockaddr *)&ss, sslen) == -1) {
            int err = errno;
            printf("probe %ld: connect: %s (%s)\n", i, errno_name(err), strerror(err));
            if (err == EADDRNOTAVAIL)
                eaddrnotavail++;
            else
                other++;
        } else {
            ok++;
        }
        close(cfd);
    }
    printf("ok=%ld eaddrnotavail=%ld other=%ld\n", ok, eaddrnotavail, other);
    return 0;
}
