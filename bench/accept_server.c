/*
 * accept_server: the cheapest peer for short connections that never closes
 * first: accept, wait for the client's close (EOF or RST), close. So every
 * connection's TIME_WAIT, if any, is the client's, as in a prober's
 * incident; a server that closed as soon as it accepted would race the
 * client and take some TIME_WAIT entries to its own side, handing the client
 * ports it should not have.
 *
 * usage: accept_server [-a ADDR] [-p PORT] [-t DURATION_MS]
 *   -a  IPv4 listen address (127.0.0.1)
 *   -p  port (5000)
 *   -t  exit after this long (600000); SIGTERM/SIGINT also end it
 *
 * Listens with the largest backlog the kernel allows (net.core.somaxconn),
 * prints `ready port=N` once listening and `accepted=N` at exit. One thread:
 * a connection whose client has not closed yet waits in an epoll set.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "progutil.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1";
    long port = 5000, duration_ms = 600000;
    int opt;
    while ((opt = getopt(argc, argv, "a:p:t:")) != -1) {
        switch (opt) {
            case 'a': addr = optarg; break;
            case 'p': port = parse_long(optarg, "port", 0, 65535); break;
            case 't': duration_ms = parse_long(optarg, "duration", 1, 24L * 3600 * 1000); break;
            default:
                fprintf(stderr, "usage: accept_server [-a ADDR] [-p PORT] [-t DURATION_MS]\n");
                return 64;
        }
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;  /* no SA_RESTART: a signal ends poll() */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1) {
        fprintf(stderr, "accept_server: bad address %s\n", addr);
        return 64;
    }
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(l, (struct sockaddr *)&sin, sizeof sin) != 0 || listen(l, 65535) != 0) {
        perror("accept_server: listen");
        return 1;
    }
    socklen_t len = sizeof sin;
    getsockname(l, (struct sockaddr *)&sin, &len);
    printf("ready port=%d\n", ntohs(sin.sin_port));
    fflush(stdout);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev) != 0) {
        perror("accept_server: epoll");
        return 1;
    }
    long long end = now_ms() + duration_ms;
    long accepted = 0;
    char buf[4096];
    struct epoll_event events[256];
    while (!stop) {
        long long left = end - now_ms();
        if (left <= 0) break;
        int n = epoll_wait(ep, events, 256, left > 1000 ? 1000 : (int)left);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd != l) {
                /* The client spoke or closed: drain; close at EOF or error. */
                ssize_t r;
                while ((r = read(fd, buf, sizeof buf)) > 0) {
                }
                if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) close(fd);
                continue;
            }
            for (;;) {
                int c = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (c < 0) break;  /* EAGAIN, or a transient error: epoll says when to retry */
                accepted++;
                /* Usually the client has already closed: EOF at once, no epoll. */
                ssize_t r;
                while ((r = read(c, buf, sizeof buf)) > 0) {
                }
                if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                    close(c);
                    continue;
                }
                struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev) != 0) close(c);
            }
        }
    }
    printf("accepted=%ld\n", accepted);
    return 0;
}
