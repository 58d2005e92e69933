/*
 * rst_writer: a client that writes and closes at once, the case where an RST
 * on close() could lose data. Connects, writes BYTES of a fixed pattern,
 * optionally a final message (a protocol's "QUIT\r\n"), then close()s
 * immediately, without reading or waiting.
 *
 * usage: rst_writer [-b BYTES] [-f TEXT] [-s SNDBUF] [-n COUNT] [-S] HOST PORT
 *   -b BYTES   payload size (default 0)
 *   -f TEXT    written after the payload, as given
 *   -s SNDBUF  SO_SNDBUF set before connect (shrinks the send queue)
 *   -n COUNT   connections, one after the other (default 1)
 *   -S         shutdown(SHUT_WR) before close (a half-closing client)
 *
 * Prints one JSON line per connection:
 *   {"conn":0,"local_port":40001,"sent":N,"fnv1a":"<16 hex>","close_rc":0,
 *    "errno_kept":true}
 * (errno_kept: a successful close() left errno as it was before the call),
 * or {"conn":0,"error":"connect","errno":"ECONNREFUSED"} on failure.
 * Exit status 0 if every connection was written and closed, 1 otherwise.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "progutil.h"

static uint64_t fnv_update(uint64_t h, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static int write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int main(int argc, char *argv[]) {
    long bytes = 0, sndbuf = 0, count = 1;
    const char *final_text = NULL;
    int half_close = 0, opt;
    while ((opt = getopt(argc, argv, "b:f:s:n:S")) != -1) {
        switch (opt) {
        case 'b': bytes = parse_long(optarg, "bytes", 0, 1L << 32); break;
        case 'f': final_text = optarg; break;
        case 's': sndbuf = parse_long(optarg, "sndbuf", 1, 1 << 30); break;
        case 'n': count = parse_long(optarg, "count", 1, 100000); break;
        case 'S': half_close = 1; break;
        default:
            fprintf(stderr, "usage: rst_writer [-b BYTES] [-f TEXT] [-s SNDBUF] [-n COUNT] [-S] "
                            "HOST PORT\n");
            return 64;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "usage: rst_writer [-b BYTES] [-f TEXT] [-s SNDBUF] [-n COUNT] [-S] "
                        "HOST PORT\n");
        return 64;
    }
    const char *host = argv[optind];
    long port = parse_long(argv[optind + 1], "port", 1, 65535);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct sockaddr_storage ss;
    socklen_t sslen = ip_literal(host, port, &ss);
    if (sslen == 0) {
        fprintf(stderr, "rst_writer: bad host: %s\n", host);
        return 64;
    }

    /* The payload: byte i is (i * 31 + 7) mod 256, the same for every connection. */
    const size_t block = 1 << 16;
    unsigned char *pattern = malloc(block);
    if (!pattern) return 1;
    for (size_t i = 0; i < block; i++) pattern[i] = (unsigned char)(i * 31 + 7);

    int failures = 0;
    for (long k = 0; k < count; k++) {
        int fd = socket(ss.ss_family, SOCK_STREAM, 0);
        if (fd < 0) {
            printf("{\"conn\":%ld,\"error\":\"socket\",\"errno\":\"%s\"}\n", k, errno_name(errno));
            failures++;
            continue;
        }
        if (sndbuf > 0) {
            int v = (int)sndbuf;
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
        }
        if (connect(fd, (struct sockaddr *)&ss, sslen) < 0) {
            printf("{\"conn\":%ld,\"error\":\"connect\",\"errno\":\"%s\"}\n", k, errno_name(errno));
            close(fd);
            failures++;
            continue;
        }
        struct sockaddr_storage local;
        socklen_t llen = sizeof local;
        unsigned local_port = 0;
        if (getsockname(fd, (struct sockaddr *)&local, &llen) == 0)
            local_port = ip_port(&local);
        uint64_t h = 14695981039346656037ULL;
        long sent = 0;
        int werr = 0;
        for (long off = 0; off < bytes;) {
            size_t n = (size_t)(bytes - off) < block ? (size_t)(bytes - off) : block;
            if (write_all(fd, pattern, n) < 0) {
                werr = errno;
                break;
            }
            h = fnv_update(h, pattern, n);
            off += (long)n;
            sent += (long)n;
        }
        if (!werr && final_text) {
            size_t n = strlen(final_text);
            if (write_all(fd, (const unsigned char *)final_text, n) < 0)
                werr = errno;
            else {
                h = fnv_update(h, (const unsigned char *)final_text, n);
                sent += (long)n;
            }
        }
        if (werr) {
            printf("{\"conn\":%ld,\"error\":\"write\",\"errno\":\"%s\",\"sent\":%ld}\n", k,
                   errno_name(werr), sent);
            close(fd);
            failures++;
            continue;
        }
        if (half_close) shutdown(fd, SHUT_WR);
        errno = EXDEV; /* a value close() has no reason to produce */
        int rc = close(fd);
        int after = errno;
        printf("{\"conn\":%ld,\"local_port\":%u,\"sent\":%ld,\"fnv1a\":\"%016llx\",\"close_rc\":%d,"
               "\"errno_kept\":%s}\n",
               k, local_port, sent, (unsigned long long)h, rc,
               (rc == 0 && after == EXDEV) ? "true" : "false");
        if (rc != 0) failures++;
    }
    free(pattern);
    return failures ? 1 : 0;
}
