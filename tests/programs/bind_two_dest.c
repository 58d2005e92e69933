/*
 * bind_two_dest: a client that binds its sockets itself, the way a proxy
 * with a configured source address does: two TCP sockets, each bound to
 * ADDR:0, each connected to a different listener. Without
 * IP_BIND_ADDRESS_NO_PORT every bind(port 0) reserves a port for every
 * destination; with it (TCPFIX_BIND_NO_PORT=1) the port is chosen at
 * connect() time per 4-tuple, so two destinations can share one port.
 *
 * usage: bind_two_dest [-s] ADDR HOST PORT1 PORT2
 *   ADDR   the local IPv4 address both sockets bind to (port 0)
 *   HOST   the listeners' IPv4 address
 *   -s     sequential: bind+connect the first socket, then the second
 *          (default: bind both, then connect both)
 *
 * Prints one JSON object per socket, in order, then exits 0 whatever the
 * calls did (the lines are the result), 64 on a usage error:
 *   {"sock":1,"bind":"OK"|"EADDRINUSE"|...,"connect":"OK"|"E..."|"SKIPPED",
 *    "local_port":P}
 * local_port is what getsockname() says after the last call that worked
 * (0 while no port is chosen yet). Both sockets stay open until both are
 * done, so the second one competes with the first.
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

struct sock {
    int fd;
    int bind_err;     /* 0 = OK, -1 = not tried yet */
    int connect_err;  /* 0 = OK, -1 = not tried (skipped) */
};

static long parse_port(const char *s) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 1 || v > 65535) {
        fprintf(stderr, "bind_two_dest: bad port: %s\n", s);
        exit(64);
    }
    return v;
}

static void parse_addr(const char *s, struct sockaddr_in *out, long port) {
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, s, &out->sin_addr) != 1) {
        fprintf(stderr, "bind_two_dest: bad IPv4 address: %s\n", s);
        exit(64);
    }
}

static void do_bind(struct sock *k, const struct sockaddr_in *local) {
    k->bind_err = bind(k->fd, (const struct sockaddr *)local, sizeof *local) == 0 ? 0 : errno;
}

static void do_connect(struct sock *k, const struct sockaddr_in *dest) {
    if (k->bind_err != 0) return; /* a socket whose bind failed is not connected: skipped */
    k->connect_err = connect(k->fd, (const struct sockaddr *)dest, sizeof *dest) == 0 ? 0 : errno;
}

static int local_port(int fd) {
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    if (getsockname(fd, (struct sockaddr *)&sin, &len) != 0) return -1;
    return ntohs(sin.sin_port);
}

int main(int argc, char *argv[]) {
    int sequential = 0;
    int opt;
    while ((opt = getopt(argc, argv, "s")) != -1) {
        if (opt == 's')
            sequential = 1;
        else
            return 64;
    }
    if (argc - optind != 4) {
        fprintf(stderr, "usage: bind_two_dest [-s] ADDR HOST PORT1 PORT2\n");
        return 64;
    }
    struct sockaddr_in local, dest[2];
    parse_addr(argv[optind], &local, 0);
    local.sin_port = 0;
    parse_addr(argv[optind + 1], &dest[0], parse_port(argv[optind + 2]));
    parse_addr(argv[optind + 1], &dest[1], parse_port(argv[optind + 3]));

    struct sock k[2];
    for (int i = 0; i < 2; i++) {
        k[i].fd = socket(AF_INET, SOCK_STREAM, 0);
        k[i].bind_err = -1;
        k[i].connect_err = -1;
        if (k[i].fd < 0) {
            perror("bind_two_dest: socket");
            return 1;
        }
        struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
        setsockopt(k[i].fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    if (sequential) {
        for (int i = 0; i < 2; i++) {
            do_bind(&k[i], &local);
            do_connect(&k[i], &dest[i]);
        }
    } else {
        for (int i = 0; i < 2; i++) do_bind(&k[i], &local);
        for (int i = 0; i < 2; i++) do_connect(&k[i], &dest[i]);
    }
    for (int i = 0; i < 2; i++) {
        printf("{\"sock\":%d,\"bind\":\"%s\",\"connect\":\"%s\",\"local_port\":%d}\n", i + 1,
               k[i].bind_err == 0 ? "OK" : errno_name(k[i].bind_err),
               k[i].connect_err == 0 ? "OK" : k[i].connect_err < 0 ? "SKIPPED" : errno_name(k[i].connect_err),
               local_port(k[i].fd));
    }
    fflush(stdout);
    for (int i = 0; i < 2; i++) close(k[i].fd);
    return 0;
}
