/*
 * short_conn_client: the short-connection client of incident 002 (what
 * stands in front of haproxy there), unmodified in what it does to the
 * socket: per connection socket(), a blocking connect(), write a request,
 * read until the expected reply has arrived, close() -- gracefully, so the
 * client closes first and, on a direct connection, keeps the TIME_WAIT; in
 * front of a proxy, its FIN is what the proxy passes on to its backend.
 *
 * usage: short_conn_client [-q REQUEST] [-e BYTES] [-t MS] [-i US] [-R]
 *                          HOST PORT COUNT
 *   -q REQUEST  bytes to send after connecting, a newline appended (none)
 *   -e BYTES    reply bytes to wait for before closing; fewer (EOF, reset,
 *               timeout) is a failure (0: do not read)
 *   -t MS       SO_SNDTIMEO/SO_RCVTIMEO of each socket (2000)
 *   -i US       pause between connections (0)
 *   -R          close with SO_LINGER {1,0} (RST) instead of gracefully
 *
 * HOST is an IPv4 or IPv6 literal. Prints a line for each of the first 20
 * failures,
 *   conn 17: connect: EADDRNOTAVAIL
 * and then one JSON summary line:
 *   {"attempts":N,"ok":N,"first_failure":I|-1,
 *    "failures":{"connect:EADDRNOTAVAIL":N,"reply:EOF":N,...}}
 * A failure is named PHASE:WHAT with PHASE socket|connect|write|reply and
 * WHAT an errno name, EOF (the peer closed before the whole reply) or
 * TIMEOUT. Exits 0 whatever the connections did, 64 on a usage error.
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

#define MAX_KINDS 32
#define SHOWN_FAILURES 20

struct kind {
    char name[64];
    long count;
};

static struct kind kinds[MAX_KINDS];
static int nkinds = 0;
static long failures_shown = 0;

static void fail(long i, const char *phase, const char *what) {
    char name[64];
    snprintf(name, sizeof name, "%s:%s", phase, what);
    int k = 0;
    while (k < nkinds && strcmp(kinds[k].name, name) != 0) k++;
    if (k == nkinds && nkinds < MAX_KINDS) {
        snprintf(kinds[k].name, sizeof kinds[k].name, "%s", name);
        kinds[k].count = 0;
        nkinds++;
    }
    if (k < nkinds) kinds[k].count++;
    if (failures_shown++ < SHOWN_FAILURES) printf("conn %ld: %s: %s\n", i, phase, what);
}

/* Reads until `want` bytes arrived; 0 on success or the name of what ended it. */
static const char *read_reply(int fd, long want) {
    char buf[4096];
    long got = 0;
    while (got < want) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n == 0) return "EOF";
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return "TIMEOUT";
            return errno_name(errno);
        }
        got += n;
    }
    return NULL;
}

int main(int argc, char *argv[]) {
    const char *request = NULL;
    long expect = 0, timeout_ms = 2000, interval_us = 0;
    int rst = 0;
    int opt;
    while ((opt = getopt(argc, argv, "q:e:t:i:R")) != -1) {
        switch (opt) {
        case 'q': request = optarg; break;
        case 'e': expect = parse_long(optarg, "reply bytes", 0, 1 << 30); break;
        case 't': timeout_ms = parse_long(optarg, "timeout", 1, 600000); break;
        case 'i': interval_us = parse_long(optarg, "interval", 0, 60000000); break;
        case 'R': rst = 1; break;
        default: return 64;
        }
    }
    if (argc - optind != 3) {
        fprintf(stderr, "usage: short_conn_client [-q REQUEST] [-e BYTES] [-t MS] [-i US] [-R] "
                        "HOST PORT COUNT\n");
        return 64;
    }
    long port = parse_long(argv[optind + 1], "port", 1, 65535);
    long count = parse_long(argv[optind + 2], "count", 0, 10000000);

    struct sockaddr_storage ss;
    socklen_t sslen = ip_literal(argv[optind], port, &ss);
    if (sslen == 0) {
        fprintf(stderr, "short_conn_client: bad host (IPv4/IPv6 literal expected): %s\n", argv[optind]);
        return 64;
    }

    char *line = NULL;
    size_t line_len = 0;
    if (request != NULL) {
        line_len = strlen(request) + 1;
        line = malloc(line_len + 1);
        if (line == NULL) return 1;
        snprintf(line, line_len + 1, "%s\n", request);
    }

    long ok = 0, first_failure = -1;
    for (long i = 0; i < count; i++) {
        if (i > 0 && interval_us > 0) usleep((useconds_t)interval_us);
        int fd = socket(ss.ss_family, SOCK_STREAM, 0);
        if (fd == -1) {
            fail(i, "socket", errno_name(errno));
            if (first_failure < 0) first_failure = i;
            continue;
        }
        struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        const char *phase = NULL, *what = NULL;
        if (connect(fd, (struct sockaddr *)&ss, sslen) == -1) {
            phase = "connect";
            what = errno_name(errno);
        }
        if (phase == NULL && line != NULL) {
            size_t off = 0;
            while (off < line_len) {
                ssize_t n = send(fd, line + off, line_len - off, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) {
                    phase = "write";
                    what = n < 0 ? errno_name(errno) : "EOF";
                    break;
                }
                off += (size_t)n;
            }
        }
        if (phase == NULL && expect > 0) {
            what = read_reply(fd, expect);
            if (what != NULL) phase = "reply";
        }
        if (rst) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(fd);
        if (phase == NULL) {
            ok++;
        } else {
            fail(i, phase, what);
            if (first_failure < 0) first_failure = i;
        }
    }
    printf("{\"attempts\":%ld,\"ok\":%ld,\"first_failure\":%ld,\"failures\":{", count, ok, first_failure);
    for (int k = 0; k < nkinds; k++) printf("%s\"%s\":%ld", k ? "," : "", kinds[k].name, kinds[k].count);
    printf("}}\n");
    free(line);
    return 0;
}
