/*
 * sink_server: the peer whose view the integration tests check. Accepts TCP
 * connections, reads each until EOF or an error, and reports per connection
 * how many bytes arrived, a hash of them, the last few bytes and how the
 * stream ended: "EOF" (the client sent FIN) or "ECONNRESET" (RST).
 *
 * usage: sink_server [-a ADDR] -p PORT [-n CONNS] [-t MS] [-d US] [-c BYTES]
 *                    [-r BYTES] [-g TEXT] [-x MS]
 *   -a ADDR   listen address, IPv4 or IPv6 literal (default 127.0.0.1)
 *   -p PORT   listen port
 *   -n CONNS  exit after this many connections have ended (default: no limit)
 *   -t MS     exit after this long in any case (default 30000)
 *   -d US     sleep this long after every read: a slow reader (default 0)
 *   -c BYTES  read size (default 65536)
 *   -r BYTES  SO_RCVBUF of the listener, inherited by accepted sockets
 *   -g TEXT   send TEXT to each client right after accepting it
 *   -x MS     close each connection from this side MS after accepting it
 *
 * Output, one JSON object a line (stdout, line-buffered):
 *   {"event":"ready","port":P,"pid":PID}
 *   {"event":"end","peer":"127.0.0.1:40001","bytes":N,"fnv1a":"<16 hex>",
 *    "end":"EOF"|"ECONNRESET"|"E...","tail":"QUIT\r\n","ms":T}
 *   {"event":"exit","accepted":N,"ended":N,"reason":"count"|"timeout"|"signal"}
 * A connection this side closed itself (-x) ends with "end":"LOCAL_CLOSE".
 * Exit status 0, or 64 on a usage error, 1 if the listener cannot be set up.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "progutil.h"

#define MAX_CONNS 4096
#define TAIL_LEN 16

struct conn {
    int fd;
    char peer[INET6_ADDRSTRLEN + 8];
    uint64_t bytes;
    uint64_t fnv;
    unsigned char tail[TAIL_LEN];
    size_t tail_len;
    int64_t accepted_ms;
};

static volatile sig_atomic_t stop_signal = 0;
static void on_signal(int sig) { stop_signal = sig; }

static void print_json_string(const unsigned char *s, size_t n) {
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = s[i];
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch == '\r')
            fputs("\\r", stdout);
        else if (ch == '\n')
            fputs("\\n", stdout);
        else if (ch < 0x20 || ch >= 0x7f)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static void report_end(struct conn *c, const char *how) {
    printf("{\"event\":\"end\",\"peer\":\"%s\",\"bytes\":%llu,\"fnv1a\":\"%016llx\",\"end\":\"%s\","
           "\"tail\":",
           c->peer, (unsigned long long)c->bytes, (unsigned long long)c->fnv, how);
    print_json_string(c->tail, c->tail_len);
    printf(",\"ms\":%lld}\n", (long long)(now_ms() - c->accepted_ms));
}

static void absorb(struct conn *c, const unsigned char *buf, size_t n) {
    for (size_t i = 0; i < n; i++) {
        c->fnv ^= buf[i];
        c->fnv *= 1099511628211ULL;
    }
    c->bytes += n;
    if (n >= TAIL_LEN) {
        memcpy(c->tail, buf + n - TAIL_LEN, TAIL_LEN);
        c->tail_len = TAIL_LEN;
    } else {
        size_t keep = c->tail_len + n > TAIL_LEN ? TAIL_LEN - n : c->tail_len;
        memmove(c->tail, c->tail + c->tail_len - keep, keep);
        memcpy(c->tail + keep, buf, n);
        c->tail_len = keep + n;
    }
}

int main(int argc, char *argv[]) {
    const char *addr = "127.0.0.1";
    long port = -1, max_ended = 0, timeout_ms = 30000, delay_us = 0, chunk = 65536, rcvbuf = 0,
         close_after_ms = -1;
    const char *greeting = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "a:p:n:t:d:c:r:g:x:")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'p': port = parse_long(optarg, "port", 1, 65535); break;
        case 'n': max_ended = parse_long(optarg, "conns", 0, 100000000); break;
        case 't': timeout_ms = parse_long(optarg, "timeout", 1, 3600000); break;
        case 'd': delay_us = parse_long(optarg, "delay", 0, 10000000); break;
        case 'c': chunk = parse_long(optarg, "chunk", 1, 16 << 20); break;
        case 'r': rcvbuf = parse_long(optarg, "rcvbuf", 1, 1 << 30); break;
        case 'g': greeting = optarg; break;
        case 'x': close_after_ms = parse_long(optarg, "close-after", 0, 3600000); break;
        default:
            fprintf(stderr, "usage: sink_server [-a ADDR] -p PORT [-n CONNS] [-t MS] [-d US] "
                            "[-c BYTES] [-r BYTES] [-g TEXT] [-x MS]\n");
            return 64;
        }
    }
    if (port < 0 || optind != argc) {
        fprintf(stderr, "sink_server: -p PORT is required\n");
        return 64;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct sockaddr_storage ss;
    socklen_t sslen = ip_literal(addr, port, &ss);
    if (sslen == 0) {
        fprintf(stderr, "sink_server: bad address: %s\n", addr);
        return 64;
    }
    int lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) {
        perror("sink_server: socket");
        return 1;
    }
    if (ss.ss_family == AF_INET6) setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (rcvbuf > 0) {
        int v = (int)rcvbuf;
        setsockopt(lfd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
    }
    if (bind(lfd, (struct sockaddr *)&ss, sslen) < 0 || listen(lfd, 1024) < 0) {
        perror("sink_server: bind/listen");
        return 1;
    }
    printf("{\"event\":\"ready\",\"port\":%ld,\"pid\":%ld}\n", port, (long)getpid());

    static struct conn conns[MAX_CONNS];
    static struct pollfd pfds[MAX_CONNS + 1];
    size_t nconns = 0;
    long accepted = 0, ended = 0;
    unsigned char *buf = malloc((size_t)chunk);
    if (!buf) return 1;
    const int64_t deadline = now_ms() + timeout_ms;
    const char *reason = "timeout";

    for (;;) {
        if (stop_signal) {
            reason = "signal";
            break;
        }
        if (max_ended > 0 && ended >= max_ended) {
            reason = "count";
            break;
        }
        int64_t now = now_ms();
        if (now >= deadline) break;
        int wait_ms = (int)(deadline - now);
        if (wait_ms > 100) wait_ms = 100;
        pfds[0].fd = nconns < MAX_CONNS ? lfd : -1;
        pfds[0].events = POLLIN;
        for (size_t i = 0; i < nconns; i++) {
            pfds[i + 1].fd = conns[i].fd;
            pfds[i + 1].events = POLLIN;
            pfds[i + 1].revents = 0;
        }
        int n = poll(pfds, nconns + 1, wait_ms);
        if (n < 0 && errno != EINTR) {
            perror("sink_server: poll");
            break;
        }
        /* Read what is there on existing connections first. */
        for (size_t i = 0; n > 0 && i < nconns; i++) {
            if (!pfds[i + 1].revents) continue;
            struct conn *c = &conns[i];
            ssize_t got = read(c->fd, buf, (size_t)chunk);
            const char *how = NULL;
            if (got > 0) {
                absorb(c, buf, (size_t)got);
            } else if (got == 0) {
                how = "EOF";
            } else if (errno != EINTR && errno != EAGAIN) {
                how = errno_name(errno);
            }
            if (delay_us > 0) usleep((useconds_t)delay_us);
            if (how) {
                report_end(c, how);
                close(c->fd);
                c->fd = -1;
                ended++;
            }
        }
        /* Connections this side closes by itself (-x). */
        if (close_after_ms >= 0) {
            int64_t t = now_ms();
            for (size_t i = 0; i < nconns; i++) {
                struct conn *c = &conns[i];
                if (c->fd >= 0 && t - c->accepted_ms >= close_after_ms) {
                    report_end(c, "LOCAL_CLOSE");
                    close(c->fd);
                    c->fd = -1;
                    ended++;
                }
            }
        }
        /* Compact. */
        size_t w = 0;
        for (size_t i = 0; i < nconns; i++)
            if (conns[i].fd >= 0) conns[w++] = conns[i];
        nconns = w;
        if (n > 0 && (pfds[0].revents & POLLIN)) {
            struct sockaddr_storage peer;
            socklen_t plen = sizeof peer;
            int cfd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
            if (cfd >= 0) {
                struct conn *c = &conns[nconns++];
                memset(c, 0, sizeof *c);
                c->fd = cfd;
                c->fnv = 14695981039346656037ULL;
                c->accepted_ms = now_ms();
                char host[INET6_ADDRSTRLEN] = "?";
                unsigned short pport = 0;
                if (peer.ss_family == AF_INET) {
                    struct sockaddr_in *p = (struct sockaddr_in *)&peer;
                    inet_ntop(AF_INET, &p->sin_addr, host, sizeof host);
                    pport = ntohs(p->sin_port);
                    snprintf(c->peer, sizeof c->peer, "%s:%u", host, pport);
                } else {
                    struct sockaddr_in6 *p = (struct sockaddr_in6 *)&peer;
                    inet_ntop(AF_INET6, &p->sin6_addr, host, sizeof host);
                    pport = ntohs(p->sin6_port);
                    snprintf(c->peer, sizeof c->peer, "[%s]:%u", host, pport);
                }
                accepted++;
                if (greeting) {
                    ssize_t wr = write(cfd, greeting, strlen(greeting));
                    (void)wr;
                }
            }
        }
    }
    for (size_t i = 0; i < nconns; i++) {
        report_end(&conns[i], "OPEN_AT_EXIT");
        close(conns[i].fd);
    }
    printf("{\"event\":\"exit\",\"accepted\":%ld,\"ended\":%ld,\"reason\":\"%s\"}\n", accepted, ended,
           reason);
    free(buf);
    return 0;
}
