/* A library whose constructor uses sockets before libtcpfix's constructor has
   run (the application's own libraries initialise before a preloaded one). */
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

int early_socket_result = -100;
int early_close_result = -100;
int early_close_errno = -100;

__attribute__((constructor)) static void early(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    early_socket_result = fd;
    early_close_result = close(fd);
    errno = 0;
    close(-1);
    early_close_errno = errno;
}
