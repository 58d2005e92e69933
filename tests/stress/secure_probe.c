/*
 * secure_probe: what a (possibly set-user-ID) client sees of tcpfix. Prints
 * one JSON line:
 *   {"pid":N,"at_secure":0|1,"ruid":N,"euid":N,"tcpfix_loaded":true|false,
 *    "peer_end":"ECONNRESET"|"EOF"|"..."}
 * after making one loopback connection through its own listener and closing
 * it (under TCPFIX_CLOSE=rst the peer sees ECONNRESET: proof that tcpfix is
 * in force). With --wait it first prints {"pid":N} and waits for a line on
 * stdin (so a test can prepare files that name the PID).
 * Exit status 0, or 1 if the connection could not be made.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <link.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/socket.h>
#include <unistd.h>

static int find_tcpfix(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    if (info->dlpi_name && strstr(info->dlpi_name, "libtcpfix")) *(int *)data = 1;
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "--wait") == 0) {
        printf("{\"pid\":%d}\n", (int)getpid());
        char line[64];
        if (!fgets(line, sizeof line, stdin)) return 1;
    }
    int loaded = 0;
    dl_iterate_phdr(find_tcpfix, &loaded);

    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4) ||
        getsockname(l, (struct sockaddr *)&a, &len)) {
        perror("secure_probe: listener");
        return 1;
    }
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("secure_probe: connect");
        return 1;
    }
    int s = accept(l, NULL, NULL);
    close(c);
    const char *end = "timeout";
    struct pollfd p = {s, POLLIN, 0};
    if (poll(&p, 1, 2000) == 1) {
        char b;
        ssize_t n = read(s, &b, 1);
        end = n == 0 ? "EOF" : n < 0 ? strerrorname_np(errno) : "data";
    }
    close(s);
    close(l);
    printf("{\"pid\":%d,\"at_secure\":%lu,\"ruid\":%d,\"euid\":%d,\"tcpfix_loaded\":%s,\"peer_end\":\"%s\"}\n",
           (int)getpid(), getauxval(AT_SECURE), (int)getuid(), (int)geteuid(), loaded ? "true" : "false", end);
    return 0;
}
