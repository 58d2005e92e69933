/*
 * big_tls_client: a client whose static TLS is large (a 256 KiB __thread
 * buffer, as some programs have). tcpfix's watchdog thread must still start:
 * it is what ends a non-blocking connect at TCPFIX_CONNECT_TIMEOUT (and
 * refreshes the stats and reaps CLOSE_WAIT). glibc refuses (EINVAL) a thread
 * whose requested stack cannot hold the static TLS.
 *
 * Connects non-blocking to a listener whose queue is full (the handshake
 * hangs), polls up to 3 s, and expects SO_ERROR = ETIMEDOUT well before that.
 * Run with TCPFIX_CONNECT_TIMEOUT=200ms. Prints one line; exit 0 if the
 * deadline was enforced, 1 if not.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static __thread char big[256 * 1024];

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(void) {
    memset(big, 1, sizeof big);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 0) || getsockname(l, (struct sockaddr *)&a, &len)) {
        perror("big_tls_client: listener");
        return 2;
    }
    int filler = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(filler, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("big_tls_client: filler");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    long t0 = now_ms();
    int r = connect(fd, (struct sockaddr *)&a, sizeof a);
    if (r == 0 || errno != EINPROGRESS) {
        printf("big_tls_client: connect gave %d (%s), expected EINPROGRESS\n", r, strerror(errno));
        return 1;
    }
    struct pollfd p = {fd, POLLOUT, 0};
    int n = poll(&p, 1, 3000);
    long took = now_ms() - t0;
    int err = 0;
    socklen_t elen = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
    int ok = n == 1 && err == ETIMEDOUT && took < 1500;
    printf("big_tls_client: %s: poll %d after %ld ms, SO_ERROR %s (static TLS %zu KiB)\n",
           ok ? "deadline enforced" : "deadline NOT enforced", n, took, err ? strerrorname_np(err) : "0",
           sizeof big / 1024);
    return ok ? 0 : 1;
}
