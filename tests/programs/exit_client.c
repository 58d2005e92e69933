/*
 * exit_client: a client that ends without ever calling close(), as many
 * short-lived command-line clients do. Connects, writes a final message on
 * each connection, and ends the process with the connections still open.
 *
 * usage: exit_client [-m MODE] [-f TEXT] [-n CONNS] HOST PORT
 *   -m MODE   how the process ends (default exit):
 *               exit    exit(0)
 *               return  return 0 from main
 *               atexit  exit(0), with an atexit handler that writes "late\n"
 *                       on every connection first (the application's own
 *                       handlers run before tcpfix's)
 *               stdio   the message goes through fdopen()'s buffer, which
 *                       stdio flushes only after every exit handler
 *               _exit   _exit(0): no exit handler runs
 *               signal  killed by SIGTERM (default action)
 *   -f TEXT   the final message (default "bye\n")
 *   -n CONNS  connections, all open at the end (default 1)
 *
 * Prints {"conn":I,"local_port":P} per connection (flushed) before it ends.
 * Exit status 0 (or death by SIGTERM for -m signal); 1 if a connect failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "progutil.h"

#define MAX_CONNS 64

static int g_fds[MAX_CONNS];
static long g_count;

static void write_late(void) {
    for (long i = 0; i < g_count; i++)
        if (write(g_fds[i], "late\n", 5) != 5) perror("exit_client: write late");
}

int main(int argc, char *argv[]) {
    const char *mode = "exit", *text = "bye\n";
    long count = 1;
    int opt;
    while ((opt = getopt(argc, argv, "m:f:n:")) != -1) {
        switch (opt) {
            case 'm': mode = optarg; break;
            case 'f': text = optarg; break;
            case 'n': count = parse_long(optarg, "connection count", 1, MAX_CONNS); break;
            default: fprintf(stderr, "usage: exit_client [-m MODE] [-f TEXT] [-n CONNS] HOST PORT\n"); return 64;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "usage: exit_client [-m MODE] [-f TEXT] [-n CONNS] HOST PORT\n");
        return 64;
    }
    const char *known[] = {"exit", "return", "atexit", "stdio", "_exit", "signal"};
    int ok = 0;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) ok |= strcmp(mode, known[i]) == 0;
    if (!ok) {
        fprintf(stderr, "exit_client: unknown mode %s\n", mode);
        return 64;
    }
    struct sockaddr_storage ss;
    socklen_t len = ip_literal(argv[optind], parse_long(argv[optind + 1], "port", 1, 65535), &ss);
    if (len == 0) {
        fprintf(stderr, "exit_client: not an IP address: %s\n", argv[optind]);
        return 64;
    }
    for (g_count = 0; g_count < count; g_count++) {
        int fd = socket(ss.ss_family, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&ss, len) != 0) {
            printf("{\"conn\":%ld,\"error\":\"connect\",\"errno\":\"%s\"}\n", g_count, errno_name(errno));
            return 1;
        }
        g_fds[g_count] = fd;
        struct sockaddr_storage local;
        socklen_t llen = sizeof local;
        getsockname(fd, (struct sockaddr *)&local, &llen);
        printf("{\"conn\":%ld,\"local_port\":%u}\n", g_count, ip_port(&local));
    }
    fflush(stdout);
    for (long i = 0; i < count; i++) {
        if (strcmp(mode, "stdio") == 0) {
            FILE *f = fdopen(g_fds[i], "w");
            if (f == NULL || fputs(text, f) == EOF) return 1;  /* buffered until exit */
        } else if (write(g_fds[i], text, strlen(text)) != (ssize_t)strlen(text)) {
            perror("exit_client: write");
            return 1;
        }
    }
    if (strcmp(mode, "atexit") == 0) atexit(write_late);
    if (strcmp(mode, "_exit") == 0) _exit(0);
    if (strcmp(mode, "signal") == 0) raise(SIGTERM);
    if (strcmp(mode, "return") == 0) return 0;
    exit(0);
}
