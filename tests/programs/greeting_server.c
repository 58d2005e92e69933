/*
 * greeting_server: the server side of incident 001, reduced to what the
 * leak needs: accept, write a greeting at once (132 bytes by default: what
 * sat unread in each leaked socket's receive queue in the incident), then,
 * after a delay, close. The client never answers, so the close is a FIN and
 * the client's socket goes to CLOSE_WAIT with the greeting unread, exactly
 * as when MariaDB gives up on a silent client after its connect_timeout.
 *
 * usage: greeting_server [-a ADDR] [-p PORT] [-g BYTES] [-d DELAY_MS]
 *                        [-t DURATION_MS] [-n MAX_OPEN]
 *   -a  listen address, IPv4 or IPv6 literal (127.0.0.1)
 *   -p  port (3306); 0 picks one
 *   -g  greeting size in bytes (132)
 *   -d  close each connection this long after accepting it (200)
 *   -t  exit after this long (30000); SIGTERM/SIGINT also end it
 *   -n  at most this many connections open at once (4096); at the limit
 *       the server stops accepting until one is closed
 *
 * Prints `ready port=N` once listening and, at exit,
 *   accepted=N closed=N max_open=N
 * Single-threaded: one poll() loop over the listener and a FIFO of
 * connections ordered by their close deadline (the delay is constant).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "progutil.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

struct conn {
    int fd;
    long long close_at;
};

int main(int argc, char *argv[]) {
    const char *addr = "127.0.0.1";
    long port = 3306, greeting = 132, delay_ms = 200, duration_ms = 30000, max_open = 4096;
    int opt;
    while ((opt = getopt(argc, argv, "a:p:g:d:t:n:")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'p': port = parse_long(optarg, "port", 0, 65535); break;
        case 'g': greeting = parse_long(optarg, "greeting size", 0, 65536); break;
        case 'd': delay_ms = parse_long(optarg, "delay", 0, 3600000); break;
        case 't': duration_ms = parse_long(optarg, "duration", 1, 3600000); break;
        case 'n': max_open = parse_long(optarg, "max open", 1, 1000000); break;
        default:
            fprintf(stderr, "usage: greeting_server [-a ADDR] [-p PORT] [-g BYTES] [-d DELAY_MS] "
                            "[-t DURATION_MS] [-n MAX_OPEN]\n");
            return 64;
        }
    }

    /* Room for max_open connections plus the listener and stdio. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)max_open + 16) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)max_open + 16 ? rl.rlim_max : (rlim_t)max_open + 16;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    struct sockaddr_storage ss;
    socklen_t sslen = ip_literal(addr, port, &ss);
    if (sslen == 0) {
        fprintf(stderr, "greeting_server: bad address: %s\n", addr);
        return 64;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(lfd, (struct sockaddr *)&ss, sslen) < 0 || listen(lfd, 4096) < 0) {
        perror("greeting_server: listen");
        return 1;
    }
    sslen = sizeof ss;
    getsockname(lfd, (struct sockaddr *)&ss, &sslen);
    unsigned short bound = ip_port(&ss);
    printf("ready port=%u\n", bound);
    fflush(stdout);

    char *hello = malloc((size_t)greeting + 1);
    struct conn *ring = calloc((size_t)max_open, sizeof *ring);
    if (!hello || !ring) return 1;
    for (long i = 0; i < greeting; i++) hello[i] = (char)('a' + i % 26);

    long head = 0, open_now = 0, peak = 0, accepted = 0, closed = 0;
    long long deadline = now_ms() + duration_ms;
    while (!stop) {
        long long now = now_ms();
        if (now >= deadline) break;
        /* Close everything whose time has come (the FIFO is in deadline order). */
        while (open_now > 0 && ring[head].close_at <= now) {
            close(ring[head].fd);
            head = (head + 1) % max_open;
            open_now--;
            closed++;
        }
        long long wake = deadline;
        if (open_now > 0 && ring[head].close_at < wake) wake = ring[head].close_at;
        int timeout = (int)(wake - now);
        if (timeout > 100) timeout = 100;
        struct pollfd p = {.fd = lfd, .events = open_now < max_open ? POLLIN : 0};
        int n = poll(&p, 1, timeout < 0 ? 0 : timeout);
        if (n < 0 && errno != EINTR) {
            perror("greeting_server: poll");
            break;
        }
        if (n <= 0 || !(p.revents & POLLIN)) continue;
        /* Accept what is queued, up to the open-connection limit. */
        while (open_now < max_open) {
            int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (cfd < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                    errno != ECONNABORTED)
                    perror("greeting_server: accept");
                break;
            }
            accepted++;
            if (greeting > 0 && write(cfd, hello, (size_t)greeting) < 0) { /* peer gone */ }
            long tail = (head + open_now) % max_open;
            ring[tail].fd = cfd;
            ring[tail].close_at = now_ms() + delay_ms;
            open_now++;
            if (open_now > peak) peak = open_now;
        }
    }
    while (open_now > 0) {
        close(ring[head].fd);
        head = (head + 1) % max_open;
        open_now--;
        closed++;
    }
    close(lfd);
    printf("accepted=%ld closed=%ld max_open=%ld\n", accepted, closed, peak);
    fflush(stdout);
    free(ring);
    free(hello);
    return 0;
}
