/*
 * A small preload library that counts the close() and socket() calls it sees,
 * for the "two preloads" tests: whichever order LD_PRELOAD lists it and
 * libtcpfix.so in, both must see every call. Its constructor uses sockets
 * before libtcpfix.so's constructor has run (a later preload initialises
 * first), as an early caller would.
 *
 * At exit it appends one JSON line to $CLOSE_COUNTER_OUT (or stderr):
 *   {"pid":N,"closes":N,"sockets":N,"early":"ok"|"...","ld_preload":"..."}
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static atomic_long closes, sockets;
static const char *early = "not run";

static int (*next_close)(int);
static int (*next_socket)(int, int, int);

int close(int fd) {
    atomic_fetch_add(&closes, 1);
    if (next_close == NULL) next_close = (int (*)(int))dlsym(RTLD_NEXT, "close");
    return next_close(fd);
}

int socket(int domain, int type, int protocol) {
    atomic_fetch_add(&sockets, 1);
    if (next_socket == NULL) next_socket = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    return next_socket(domain, type, protocol);
}

__attribute__((constructor)) static void counter_start(void) {
    /* Through the global symbol table, as the application would: reaches
       libtcpfix.so's hooks before its constructor when it comes first. */
    int (*g_socket)(int, int, int) = (int (*)(int, int, int))dlsym(RTLD_DEFAULT, "socket");
    int (*g_close)(int) = (int (*)(int))dlsym(RTLD_DEFAULT, "close");
    int fd = g_socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        early = "socket failed";
        return;
    }
    if (g_close(fd) != 0) {
        early = "close failed";
        return;
    }
    errno = 0;
    if (g_close(fd) != -1 || errno != EBADF) {
        early = "double close did not fail with EBADF";
        return;
    }
    early = "ok";
}

__attribute__((destructor)) static void counter_report(void) {
    char line[1024];
    const char *preload = getenv("LD_PRELOAD");
    int n = snprintf(line, sizeof line, "{\"pid\":%d,\"closes\":%ld,\"sockets\":%ld,\"early\":\"%s\",\"ld_preload\":\"%s\"}\n",
                     (int)getpid(), atomic_load(&closes), atomic_load(&sockets), early, preload ? preload : "");
    const char *out = getenv("CLOSE_COUNTER_OUT");
    int fd = out ? open(out, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600) : 2;
    if (fd < 0) return;
    if (write(fd, line, (size_t)n) < 0) {
    }
    if (fd != 2) close(fd);
}
