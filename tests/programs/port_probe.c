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

#include "progutil.h"

int main(int argc, char *argv[]) {
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: port_probe HOST PORT COUNT [INTERVAL_US]\n");
        return 64;
    }
    long port = parse_long(argv[2], "port", 1, 65535);
    long count = parse_long(argv[3], "count", 0, 10000000);
    long interval_us = argc == 5 ? parse_long(argv[4], "interval_us", 0, 60000000) : 0;

    struct sockaddr_storage ss;
    socklen_t sslen = ip_literal(argv[1], port, &ss);
    if (sslen == 0) {
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
