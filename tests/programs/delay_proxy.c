/*
 * delay_proxy: a PostgreSQL server that answers Terminate late, made from a
 * real one. Listens on TCP, relays each client to the server's Unix socket
 * (so the relay uses no ephemeral port of its own), and holds the client's
 * Terminate message ('X', length 4) for DELAY_MS before passing it on. The
 * server then closes and its FIN reaches the client DELAY_MS late; the
 * relay's kernel, in interactive mode after the query's reply, delays the
 * ACK of those 5 bytes to send it with that FIN (up to 40 ms) — what a
 * loaded PostgreSQL does on its own.
 *
 * usage: delay_proxy -l PORT -u UNIX_SOCKET_PATH [-d DELAY_MS] [-t SECONDS]
 *   -l PORT    TCP port on 127.0.0.1
 *   -u PATH    the server's socket, e.g. /tmp/pg/.s.PGSQL.5432
 *   -d MS      how long Terminate is held (default 30)
 *   -t SECONDS exit after this long in any case (default 300)
 *
 * Prints {"event":"ready","port":P} once listening, and at exit
 * {"event":"exit","relayed":N,"terminates":N}. One process, one poll() loop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "progutil.h"

#define MAX_PAIRS 256
#define BUF 65536

/* The client's side of the protocol, parsed only to find message boundaries:
 * untyped packets (int32 length first: SSLRequest, GSSENCRequest, the
 * startup packet) until the startup packet, then typed messages. */
struct parser {
    int typed;           /* past the startup packet */
    unsigned char hdr[8];
    int hdr_len;         /* bytes of the current header read so far */
    uint32_t left;       /* payload bytes of the current message still to come */
    unsigned char type;
};

struct pair {
    int client, server;
    struct parser p;
    unsigned char held[BUF];  /* client bytes waiting to go to the server */
    size_t held_len;
    long long release_ms;     /* 0: nothing held back */
    int client_eof;
};

static struct pair g_pairs[MAX_PAIRS];
static volatile sig_atomic_t g_stop;

static void on_signal(int sig) { (void)sig; g_stop = 1; }

/* Feeds client bytes to the parser; true when they end with a whole Terminate. */
static int ends_with_terminate(struct parser *p, const unsigned char *b, size_t n) {
    int terminate = 0;
    for (size_t i = 0; i < n; i++) {
        terminate = 0;
        if (p->left > 0) {
            p->left--;
            continue;
        }
        p->hdr[p->hdr_len++] = b[i];
        int need = p->typed ? 5 : 8;
        if (p->hdr_len < need) continue;
        if (p->typed) {
            p->type = p->hdr[0];
            uint32_t len = (uint32_t)p->hdr[1] << 24 | (uint32_t)p->hdr[2] << 16 | (uint32_t)p->hdr[3] << 8 | p->hdr[4];
            p->left = len >= 4 ? len - 4 : 0;
            terminate = p->type == 'X' && len == 4;
        } else {
            uint32_t len = (uint32_t)p->hdr[0] << 24 | (uint32_t)p->hdr[1] << 16 | (uint32_t)p->hdr[2] << 8 | p->hdr[3];
            uint32_t code = (uint32_t)p->hdr[4] << 24 | (uint32_t)p->hdr[5] << 16 | (uint32_t)p->hdr[6] << 8 | p->hdr[7];
            p->left = len >= 8 ? len - 8 : 0;
            /* SSLRequest and GSSENCRequest come before the startup packet. */
            if (code != 80877103u && code != 80877104u) p->typed = 1;
        }
        p->hdr_len = 0;
    }
    return terminate && p->left == 0;
}

static int write_all(int fd, const unsigned char *b, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static void drop(struct pair *pr) {
    if (pr->client >= 0) close(pr->client);
    if (pr->server >= 0) close(pr->server);
    memset(pr, 0, sizeof *pr);
    pr->client = pr->server = -1;
}

int main(int argc, char *argv[]) {
    long port = 0, delay_ms = 30, max_s = 300;
    const char *unix_path = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "l:u:d:t:")) != -1) {
        switch (opt) {
            case 'l': port = parse_long(optarg, "port", 1, 65535); break;
            case 'u': unix_path = optarg; break;
            case 'd': delay_ms = parse_long(optarg, "delay", 0, 10000); break;
            case 't': max_s = parse_long(optarg, "time limit", 1, 86400); break;
            default: fprintf(stderr, "usage: delay_proxy -l PORT -u PATH [-d MS] [-t S]\n"); return 64;
        }
    }
    if (port == 0 || unix_path == NULL || strlen(unix_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, "usage: delay_proxy -l PORT -u PATH [-d MS] [-t S]\n");
        return 64;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < MAX_PAIRS; i++) g_pairs[i].client = g_pairs[i].server = -1;

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_storage ss;
    socklen_t slen = ip_literal("127.0.0.1", port, &ss);
    if (bind(lfd, (struct sockaddr *)&ss, slen) != 0 || listen(lfd, 128) != 0) {
        perror("delay_proxy: listen");
        return 1;
    }
    printf("{\"event\":\"ready\",\"port\":%ld}\n", port);
    fflush(stdout);

    long relayed = 0, terminates = 0;
    long long end_ms = now_ms() + max_s * 1000;
    static unsigned char buf[BUF];
    while (!g_stop && now_ms() < end_ms) {
        struct pollfd pfd[1 + 2 * MAX_PAIRS];
        int who[1 + 2 * MAX_PAIRS];
        int n = 0;
        pfd[n] = (struct pollfd){lfd, POLLIN, 0};
        who[n++] = -1;
        long long now = now_ms(), next = now + 100;
        for (int i = 0; i < MAX_PAIRS; i++) {
            struct pair *pr = &g_pairs[i];
            if (pr->client < 0) continue;
            if (pr->release_ms != 0) {
                if (pr->release_ms <= now) {
                    if (write_all(pr->server, pr->held, pr->held_len) != 0) {
                        drop(pr);
                        continue;
                    }
                    pr->held_len = 0;
                    pr->release_ms = 0;
                } else if (pr->release_ms < next) {
                    next = pr->release_ms;
                }
            }
            /* Nothing more is read from a client whose Terminate is held. */
            if (pr->release_ms == 0 && !pr->client_eof) {
                pfd[n] = (struct pollfd){pr->client, POLLIN, 0};
                who[n++] = i;
            }
            pfd[n] = (struct pollfd){pr->server, POLLIN, 0};
            who[n++] = MAX_PAIRS + i;
        }
        int r = poll(pfd, (nfds_t)n, (int)(next > now ? next - now : 0));
        if (r < 0) {
            if (errno == EINTR) continue;
            perror("delay_proxy: poll");
            return 1;
        }
        for (int k = 0; k < n && r > 0; k++) {
            if (pfd[k].revents == 0) continue;
            if (who[k] == -1) {
                int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                if (c < 0) continue;
                int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                struct sockaddr_un ua = {.sun_family = AF_UNIX};
                strcpy(ua.sun_path, unix_path);
                int slot = -1;
                for (int i = 0; i < MAX_PAIRS && slot < 0; i++)
                    if (g_pairs[i].client < 0) slot = i;
                if (s < 0 || slot < 0 || connect(s, (struct sockaddr *)&ua, sizeof ua) != 0) {
                    close(c);
                    if (s >= 0) close(s);
                    continue;
                }
                memset(&g_pairs[slot], 0, sizeof g_pairs[slot]);
                g_pairs[slot].client = c;
                g_pairs[slot].server = s;
                relayed++;
                continue;
            }
            int i = who[k] % MAX_PAIRS;
            struct pair *pr = &g_pairs[i];
            if (pr->client < 0) continue;
            if (who[k] < MAX_PAIRS) {  /* client -> server */
                ssize_t got = read(pr->client, buf, sizeof buf);
                if (got <= 0) {
                    pr->client_eof = 1;
                    shutdown(pr->server, SHUT_WR);
                    continue;
                }
                if (ends_with_terminate(&pr->p, buf, (size_t)got) && delay_ms > 0) {
                    memcpy(pr->held, buf, (size_t)got);
                    pr->held_len = (size_t)got;
                    pr->release_ms = now_ms() + delay_ms;
                    terminates++;
                } else if (write_all(pr->server, buf, (size_t)got) != 0) {
                    drop(pr);
                }
            } else {  /* server -> client */
                ssize_t got = read(pr->server, buf, sizeof buf);
                if (got <= 0 || write_all(pr->client, buf, (size_t)got) != 0) drop(pr);  /* the server closed: close the client */
            }
        }
    }
    printf("{\"event\":\"exit\",\"relayed\":%ld,\"terminates\":%ld}\n", relayed, terminates);
    return 0;
}
