/* Checks what early_lib's constructor saw, then does real work under the
   preload: the hooks must be sane whatever ran before tcpfix's constructor. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

extern int early_socket_result, early_close_result, early_close_errno;

int main(void) {
    if (early_socket_result < 0 || early_close_result != 0 || early_close_errno != EBADF) {
        fprintf(stderr, "early: socket=%d close=%d errno=%d\n", early_socket_result, early_close_result,
                early_close_errno);
        return 1;
    }
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(l, (struct sockaddr*)&a, sizeof a) || listen(l, 4) || getsockname(l, (struct sockaddr*)&a, &len))
        return 2;
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr*)&a, sizeof a) != 0) return 3;
    int s = accept(l, NULL, NULL);
    if (close(c) != 0) return 4;
    char b;
    ssize_t n = read(s, &b, 1);
    /* Under TCPFIX_CLOSE=rst the peer sees a reset. */
    if (!(n < 0 && errno == ECONNRESET)) {
        fprintf(stderr, "peer read %zd errno %d: expected ECONNRESET\n", n, errno);
        return 5;
    }
    puts("ok");
    return 0;
}
