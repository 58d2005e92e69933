/*
 * fd_exerciser: one descriptor edge case per run, for the integration tests
 * to check under the preload. TCP scenarios connect to a sink_server (HOST
 * PORT) and print each connection's local port, so the test can look up the
 * PEER's view of it (bytes, FIN or RST); the exerciser checks its own side
 * (return values, errno, data through the remaining descriptors).
 *
 * usage: fd_exerciser SCENARIO [HOST PORT] [-b BYTES] [-m METHOD] [-c CREATOR]
 *                     [-- CMD ARGS]
 *
 * TCP scenarios (HOST PORT of a sink):
 *   dup-close-orig     A; D = dup(A) (or -m dup2|dup3|fcntl-dupfd|
 *                      fcntl-dupfd-cloexec, or dup2-over-copy|dup3-over-copy:
 *                      D = dup(A), then dup2/dup3(A, D) over that copy);
 *                      close(A); pause; write "ALIVE"
 *                      (or -b BYTES of payload) through D; close(D).
 *                      Peer: the data, then the end only at close(D).
 *   dup2-sock-over-sock A, B; dup2(A, B) (B's connection is closed by it);
 *                      close(A); write "VIA-B" through B; close(B).
 *   dup2-file-over-sock A; dup2(file, A) (A's connection is closed by it);
 *                      A is now the file: write, close, read back.
 *   close-range        A, B, C and a file in one fd range; close_range() over
 *                      it; then a file reusing a freed number, and a new
 *                      connection D closed with close().
 *   closefrom          the same with closefrom().
 *   syscall-close      A; syscall(SYS_close, A); a second one fails EBADF.
 *   double-close       A; close(A) = 0; close(A) = -1 EBADF.
 *   fork-exec          A; fork; the child execs CMD (default /bin/true) with
 *                      A inherited; the parent waits, writes "PARENT" through
 *                      A, closes it, then opens and closes a new connection B.
 *   fork-child-close   A; fork; the child close()s A and exits; the parent
 *                      then writes "PARENT" through A and closes it.
 *   fork-parent-close  A; fork; the parent close()s A at once; the child
 *                      writes "CHILD" through A 100 ms later and closes it.
 *   spawn-child-writes A; posix_spawn() a child (no fork handlers run) that
 *                      inherits A and, 200 ms later, writes "ALIVE" (or
 *                      -b BYTES) through it; the parent closes its A at
 *                      once; the child closes the last reference.
 *   unannounced-child  A (close-on-exec); a child made without fork
 *                      handlers (-c CREATOR) acts on A (-m ACTION); the
 *                      parent waits for it, then writes "PARENT" (or -b
 *                      BYTES) through A and closes it. A child sharing the
 *                      parent's memory then execs /bin/true; one with a copy
 *                      of it calls exit() (tcpfix's exit handling runs).
 *                      CREATOR, sharing: vfork, __vfork, clone-vm
 *                      (clone(CLONE_VM|CLONE_VFORK) on a stack of its own);
 *                      copying: syscall-clone (syscall(SYS_clone, SIGCHLD,
 *                      0, 0, 0, 0)), syscall-fork (syscall(SYS_fork)),
 *                      inline-clone (the clone system call from an inline
 *                      syscall instruction on x86-64: no libc function at all).
 *                      ACTION: close (close(A)), dup2 (a /dev/null descriptor
 *                      dup2'ed over A, as the JDK's launcher does), dup-close
 *                      (dup(A), then close(A)), exit (nothing on A; with a
 *                      copying CREATOR, exit() with A open).
 *   accept-side        listens on HOST PORT, accepts one connection, writes
 *                      "HELLO" and closes it (an accepted socket).
 * Non-TCP scenarios (no HOST PORT):
 *   file   pipe   udp   unix   tcp-unconnected
 *
 * Output: JSON lines, {"pid":N} first, {"conn":"A","local_port":40001} for
 * each connection,
 * {"check":..., "ok":bool, ...} for each self-check, and last
 * {"result":"ok"} or {"result":"fail"}. Exit 0 if all self-checks passed,
 * 1 if one failed, 64 on a usage error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "progutil.h"

/* Built against an older glibc too (the portability tests compile the
 * clients in a Debian 11 userland, glibc 2.31): there close_range() and
 * closefrom() are not in libc, and a program calls the system call itself. */
#if !defined(__GLIBC__) || !__GLIBC_PREREQ(2, 34)
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
static int close_range(unsigned first, unsigned last, int flags) {
    return (int)syscall(SYS_close_range, first, last, flags);
}
static void closefrom(int lowfd) { (void)syscall(SYS_close_range, (unsigned)lowfd, ~0u, 0); }
#endif

static int failures = 0;
static const char *host_arg = NULL;
static long port_arg = 0;
static long bytes_arg = -1;
static const char *method_arg = "dup";
static const char *creator_arg = "vfork";
static char **child_cmd = NULL;

static void check(int ok, const char *what, const char *fmt, ...) {
    printf("{\"check\":\"%s\",\"ok\":%s", what, ok ? "true" : "false");
    if (fmt && *fmt) {
        char buf[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        printf(",%s", buf);
    }
    printf("}\n");
    if (!ok) failures++;
}

static void msleep(long ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static socklen_t make_addr(struct sockaddr_storage *ss, const char *host, long port) {
    socklen_t len = ip_literal(host, port, ss);
    if (len == 0) {
        fprintf(stderr, "fd_exerciser: bad host: %s\n", host);
        exit(64);
    }
    return len;
}

static unsigned local_port_of(int fd) {
    struct sockaddr_storage local;
    socklen_t llen = sizeof local;
    if (getsockname(fd, (struct sockaddr *)&local, &llen) != 0) return 0;
    return ip_port(&local);
}

/* A connected TCP socket to the sink, announced as `label`; exits on failure. */
static int connect_sink(const char *label) {
    if (!host_arg) {
        fprintf(stderr, "fd_exerciser: this scenario needs HOST PORT\n");
        exit(64);
    }
    struct sockaddr_storage ss;
    socklen_t len = make_addr(&ss, host_arg, port_arg);
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&ss, len) < 0) {
        printf("{\"conn\":\"%s\",\"error\":\"%s\"}\n{\"result\":\"fail\"}\n", label,
               errno_name(errno));
        exit(1);
    }
    printf("{\"conn\":\"%s\",\"fd\":%d,\"local_port\":%u}\n", label, fd, local_port_of(fd));
    return fd;
}

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Writes "ALIVE", or -b BYTES of payload, through fd; checks it went out. */
static void write_payload(int fd, const char *what) {
    int rc;
    long n;
    if (bytes_arg < 0) {
        n = 5;
        rc = write_all(fd, "ALIVE", 5);
    } else {
        static unsigned char block[1 << 16];
        for (size_t i = 0; i < sizeof block; i++) block[i] = (unsigned char)(i * 31 + 7);
        rc = 0;
        for (long off = 0; off < bytes_arg && rc == 0;) {
            size_t chunk = (size_t)(bytes_arg - off) < sizeof block ? (size_t)(bytes_arg - off)
                                                                     : sizeof block;
            rc = write_all(fd, block, chunk);
            off += (long)chunk;
        }
        n = bytes_arg;
    }
    check(rc == 0, what, "\"bytes\":%ld,\"errno\":\"%s\"", n, rc == 0 ? "0" : errno_name(errno));
}

/* close(fd) must succeed and leave errno as it was. */
static void close_ok(int fd, const char *what) {
    errno = EXDEV;
    int rc = close(fd);
    int err = errno;
    check(rc == 0 && err == EXDEV, what, "\"rc\":%d,\"errno\":\"%s\"", rc,
          err == EXDEV ? "unchanged" : errno_name(err));
}

static int fd_is_open(int fd) { return fcntl(fd, F_GETFD) != -1 || errno != EBADF; }

static int make_temp_file(char *path, size_t cap) {
    snprintf(path, cap, "/tmp/fd_exerciser.XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("mkstemp");
        exit(1);
    }
    return fd;
}

static void check_file_content(const char *path, const char *want, const char *what) {
    char got[256] = {0};
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, got, sizeof got - 1) : -1;
    if (fd >= 0) close(fd);
    check(n == (ssize_t)strlen(want) && memcmp(got, want, strlen(want)) == 0, what,
          "\"read\":%zd", n);
}

/* ---- TCP scenarios ---- */

static void sc_dup_close_orig(void) {
    int a = connect_sink("A");
    int d;
    if (strcmp(method_arg, "dup") == 0)
        d = dup(a);
    else if (strcmp(method_arg, "dup2") == 0)
        d = dup2(a, 40);
    else if (strcmp(method_arg, "dup3") == 0)
        d = dup3(a, 41, O_CLOEXEC);
    else if (strcmp(method_arg, "dup2-over-copy") == 0 || strcmp(method_arg, "dup3-over-copy") == 0) {
        /* D already a copy of A: dup2/dup3 replaces one copy by another. */
        d = dup(a);
        int r = method_arg[3] == '2' ? dup2(a, d) : dup3(a, d, O_CLOEXEC);
        check(r == d, "dup_over_copy", "\"rc\":%d,\"errno\":\"%s\"", r, r == d ? "0" : errno_name(errno));
    } else if (strcmp(method_arg, "fcntl-dupfd") == 0)
        d = fcntl(a, F_DUPFD, 50);
    else if (strcmp(method_arg, "fcntl-dupfd-cloexec") == 0)
        d = fcntl(a, F_DUPFD_CLOEXEC, 60);
    else {
        fprintf(stderr, "fd_exerciser: unknown -m %s\n", method_arg);
        exit(64);
    }
    check(d >= 0 && d != a, "dup", "\"method\":\"%s\",\"fd\":%d", method_arg, d);
    if (strcmp(method_arg, "dup3") == 0 || strcmp(method_arg, "dup3-over-copy") == 0 ||
        strcmp(method_arg, "fcntl-dupfd-cloexec") == 0)
        check((fcntl(d, F_GETFD) & FD_CLOEXEC) != 0, "cloexec_set", NULL);
    close_ok(a, "close_original");
    msleep(150);
    write_payload(d, "write_through_dup");
    close_ok(d, "close_dup");
}

static void sc_dup2_sock_over_sock(void) {
    int a = connect_sink("A");
    int b = connect_sink("B");
    int r = dup2(a, b);
    check(r == b, "dup2", "\"rc\":%d", r);
    close_ok(a, "close_A");
    msleep(100);
    int rc = write_all(b, "VIA-B", 5);
    check(rc == 0, "write_via_B", "\"errno\":\"%s\"", rc == 0 ? "0" : errno_name(errno));
    close_ok(b, "close_B");
}

static void sc_dup2_file_over_sock(void) {
    int a = connect_sink("A");
    char path[64];
    int f = make_temp_file(path, sizeof path);
    int r = dup2(f, a);
    check(r == a, "dup2", "\"rc\":%d", r);
    close_ok(f, "close_file_original");
    int rc = write_all(a, "FILEDATA", 8);
    check(rc == 0, "write_file_via_old_socket_fd", NULL);
    close_ok(a, "close_file");
    check_file_content(path, "FILEDATA", "file_content");
    unlink(path);
    /* The number is free again: a new connection on it must work normally. */
    int c = connect_sink("C");
    close_ok(c, "close_C");
}

static void sc_close_range(int use_closefrom) {
    int a = connect_sink("A");
    char path[64];
    int f = make_temp_file(path, sizeof path);
    int b = connect_sink("B");
    int c = connect_sink("C");
    int lo = a, hi = a;
    int all[4] = {a, f, b, c};
    for (int i = 0; i < 4; i++) {
        if (all[i] < lo) lo = all[i];
        if (all[i] > hi) hi = all[i];
    }
    errno = EXDEV;
    int rc;
    if (use_closefrom) {
        closefrom(lo);
        rc = 0;
    } else {
        rc = close_range((unsigned)lo, (unsigned)hi, 0);
    }
    check(rc == 0 && (use_closefrom || errno == EXDEV), use_closefrom ? "closefrom" : "close_range",
          "\"lo\":%d,\"hi\":%d,\"rc\":%d", lo, hi, rc);
    int still_open = 0;
    for (int i = 0; i < 4; i++) still_open += fd_is_open(all[i]);
    check(still_open == 0, "all_closed", "\"still_open\":%d", still_open);
    /* A file on a freed number behaves as a file. */
    int g = open(path, O_WRONLY | O_TRUNC);
    check(g >= 0, "reopen_file", "\"fd\":%d", g);
    check(write_all(g, "AFTER", 5) == 0, "write_file", NULL);
    close_ok(g, "close_file");
    check_file_content(path, "AFTER", "file_content");
    unlink(path);
    msleep(50);
    int d = connect_sink("D");
    close_ok(d, "close_D");
}

static void sc_syscall_close(void) {
    int a = connect_sink("A");
    errno = EXDEV;
    long rc = syscall(SYS_close, a);
    check(rc == 0 && errno == EXDEV, "syscall_close", "\"rc\":%ld", rc);
    check(!fd_is_open(a), "closed", NULL);
    errno = 0;
    rc = syscall(SYS_close, a);
    check(rc == -1 && errno == EBADF, "syscall_close_again", "\"rc\":%ld,\"errno\":\"%s\"", rc,
          errno_name(errno));
}

static void sc_double_close(void) {
    int a = connect_sink("A");
    close_ok(a, "close");
    errno = 0;
    int rc = close(a);
    check(rc == -1 && errno == EBADF, "close_again", "\"rc\":%d,\"errno\":\"%s\"", rc,
          errno_name(errno));
    errno = 0;
    rc = close(-1);
    check(rc == -1 && errno == EBADF, "close_minus_one", "\"rc\":%d,\"errno\":\"%s\"", rc,
          errno_name(errno));
}

static int wait_child(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void sc_fork_exec(void) {
    int a = connect_sink("A");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (child_cmd && child_cmd[0]) {
            execv(child_cmd[0], child_cmd);
        } else {
            execl("/bin/true", "true", (char *)NULL);
        }
        _exit(127);
    }
    check(pid > 0, "fork", NULL);
    int st = wait_child(pid);
    check(st == 0, "child_status", "\"status\":%d", st);
    msleep(50);
    int rc = write_all(a, "PARENT", 6);
    check(rc == 0, "write_after_child", "\"errno\":\"%s\"", rc == 0 ? "0" : errno_name(errno));
    close_ok(a, "close_A");
    int b = connect_sink("B");
    close_ok(b, "close_B");
}

static void sc_fork_child_close(void) {
    int a = connect_sink("A");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int rc = close(a);
        _exit(rc == 0 ? 0 : 3);
    }
    int st = wait_child(pid);
    check(st == 0, "child_close", "\"status\":%d", st);
    msleep(100);
    int rc = write_all(a, "PARENT", 6);
    check(rc == 0, "write_after_child_close", "\"errno\":\"%s\"",
          rc == 0 ? "0" : errno_name(errno));
    close_ok(a, "close_A");
}

static void sc_fork_parent_close(void) {
    int a = connect_sink("A");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        msleep(100);
        int rc = write_all(a, "CHILD", 5);
        int rc2 = close(a);
        _exit(rc == 0 && rc2 == 0 ? 0 : 3);
    }
    close_ok(a, "parent_close_A");
    int st = wait_child(pid);
    check(st == 0, "child_wrote_and_closed", "\"status\":%d", st);
}

/* posix_spawn() (clone(CLONE_VFORK) inside glibc: no fork handlers run)
 * of a child that inherits A and writes -b BYTES (default 5) through it;
 * the parent closes its copy of A at once and waits. The last reference,
 * and all the data, are the child's. */
static void sc_spawn_child_writes(const char *self) {
    extern char **environ;
    int a = connect_sink("A");
    char fdbuf[16], bytesbuf[32];
    snprintf(fdbuf, sizeof fdbuf, "%d", a);
    snprintf(bytesbuf, sizeof bytesbuf, "%ld", bytes_arg < 0 ? 5L : bytes_arg);
    char *argv[] = {(char *)"fd_exerciser", (char *)"child-write", fdbuf, bytesbuf, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, self, NULL, NULL, argv, environ);
    check(rc == 0, "posix_spawn", "\"rc\":%d", rc);
    close_ok(a, "parent_close_A");
    int st = rc == 0 ? wait_child(pid) : -1;
    check(st == 0, "child_wrote_and_closed", "\"status\":%d", st);
}

/* The spawned child's side: after 200 ms, write BYTES of payload to FD,
 * close it. */
static int child_write(int fd, long bytes) {
    msleep(200); /* the parent has closed its copy by now */
    bytes_arg = bytes;
    write_payload(fd, "child_write");
    close_ok(fd, "child_close");
    return failures ? 1 : 0;
}

/* ---- unannounced-child ---- */

extern pid_t __vfork(void);
extern char **environ;

/* The child's ACTION on A (marker: a /dev/null descriptor); 0 if it went as
 * planned. Only calls a vfork() child may make. */
static int child_action(const char *action, int a, int marker) {
    if (strcmp(action, "close") == 0) return close(a) == 0 ? 0 : 3;
    if (strcmp(action, "dup2") == 0) return dup2(marker, a) == a ? 0 : 4;
    if (strcmp(action, "dup-close") == 0) return dup(a) >= 0 && close(a) == 0 ? 0 : 5;
    return strcmp(action, "exit") == 0 ? 0 : 6;
}

/* A child sharing the memory ends by exec'ing /bin/true. */
static void child_exec_true(void) {
    char *argv[] = {(char *)"true", NULL};
    execve("/bin/true", argv, environ);
    _exit(127);
}

struct clone_vm_args {
    const char *action;
    int a, marker;
};

static int clone_vm_child(void *p) {
    const struct clone_vm_args *args = p;
    int rc = child_action(args->action, args->a, args->marker);
    if (rc != 0) _exit(rc);
    child_exec_true();
    return 127;
}

/* vfork() or __vfork(), in a function of its own: nothing of the caller's
 * frame is live across it. */
__attribute__((noinline)) static pid_t vfork_acting(int use___vfork, const char *action, int a,
                                                    int marker) {
    pid_t pid = use___vfork ? __vfork() : vfork();
    if (pid == 0) {
        int rc = child_action(action, a, marker);
        if (rc != 0) _exit(rc);
        child_exec_true();
    }
    return pid;
}

/* clone(SIGCHLD) as a raw system call: the child gets a copy of this memory
 * and runs on (its copy of) this stack, like fork(), and no libc or tcpfix
 * code learns of it. */
static long inline_clone(void) {
#if defined(__x86_64__)
    long ret;
    register long r10 __asm__("r10") = 0;
    register long r8 __asm__("r8") = 0;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "0"((long)SYS_clone), "D"((long)SIGCHLD), "S"(0L), "d"(0L), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return ret;
#else
    return syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
#endif
}

static void sc_unannounced_child(void) {
    int a = connect_sink("A");
    check(fcntl(a, F_SETFD, FD_CLOEXEC) == 0, "cloexec", NULL);
    int marker = open("/dev/null", O_RDWR | O_CLOEXEC);
    check(marker >= 0, "marker", NULL);
    const char *action = method_arg;
    fflush(stdout);
    long pid;
    if (strcmp(creator_arg, "vfork") == 0 || strcmp(creator_arg, "__vfork") == 0) {
        pid = vfork_acting(strcmp(creator_arg, "__vfork") == 0, action, a, marker);
    } else if (strcmp(creator_arg, "clone-vm") == 0) {
        static char stack[256 * 1024] __attribute__((aligned(16)));
        struct clone_vm_args args = {action, a, marker};
        pid = clone(clone_vm_child, stack + sizeof stack, CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
    } else {
        if (strcmp(creator_arg, "syscall-clone") == 0) {
            pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
        } else if (strcmp(creator_arg, "syscall-fork") == 0) {
#ifdef SYS_fork
            pid = syscall(SYS_fork);
#else
            pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
#endif
        } else if (strcmp(creator_arg, "inline-clone") == 0) {
            pid = inline_clone();
        } else {
            fprintf(stderr, "fd_exerciser: unknown -c %s\n", creator_arg);
            exit(64);
        }
        if (pid == 0) {
            int rc = child_action(action, a, marker);
            exit(rc);  /* exit(), not _exit(): the exit handling must leave A alone too */
        }
    }
    check(pid > 0, "child", "\"creator\":\"%s\",\"pid\":%ld", creator_arg, pid);
    int st = pid > 0 ? wait_child((pid_t)pid) : -1;
    check(st == 0, "child_status", "\"status\":%d", st);
    close(marker);
    msleep(50);
    if (bytes_arg < 0) {
        int rc = write_all(a, "PARENT", 6);
        check(rc == 0, "write_after_child", "\"errno\":\"%s\"", rc == 0 ? "0" : errno_name(errno));
    } else {
        write_payload(a, "write_after_child");
    }
    close_ok(a, "close_A");
}

static void sc_accept_side(void) {
    struct sockaddr_storage ss;
    socklen_t len = make_addr(&ss, host_arg, port_arg);
    int lfd = socket(ss.ss_family, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&ss, len) < 0 || listen(lfd, 8) < 0) {
        printf("{\"check\":\"listen\",\"ok\":false,\"errno\":\"%s\"}\n{\"result\":\"fail\"}\n",
               errno_name(errno));
        exit(1);
    }
    printf("{\"event\":\"ready\"}\n");
    fflush(stdout);
    int c = accept(lfd, NULL, NULL);
    check(c >= 0, "accept", NULL);
    printf("{\"conn\":\"accepted\",\"fd\":%d,\"local_port\":%u}\n", c, local_port_of(c));
    check(write_all(c, "HELLO", 5) == 0, "write_hello", NULL);
    close_ok(c, "close_accepted");
    close_ok(lfd, "close_listener");
}

/* ---- non-TCP scenarios ---- */

static void sc_file(void) {
    char path[64];
    int f = make_temp_file(path, sizeof path);
    check(write_all(f, "hello file", 10) == 0, "write", NULL);
    int d = dup(f);
    close_ok(d, "close_dup");
    check(write_all(f, "!", 1) == 0, "write_after_dup_close", NULL);
    close_ok(f, "close");
    check_file_content(path, "hello file!", "content");
    unlink(path);
}

static void sc_pipe(void) {
    int p[2];
    check(pipe(p) == 0, "pipe", NULL);
    check(write_all(p[1], "pipe data", 9) == 0, "write", NULL);
    close_ok(p[1], "close_write_end");
    char buf[32];
    ssize_t n = read(p[0], buf, sizeof buf);
    check(n == 9 && memcmp(buf, "pipe data", 9) == 0, "read_data", "\"n\":%zd", n);
    n = read(p[0], buf, sizeof buf);
    check(n == 0, "read_eof", "\"n\":%zd", n);
    close_ok(p[0], "close_read_end");
}

static void sc_udp(void) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    int r = socket(AF_INET, SOCK_DGRAM, 0);
    check(r >= 0 && bind(r, (struct sockaddr *)&a, sizeof a) == 0 &&
              getsockname(r, (struct sockaddr *)&a, &alen) == 0,
          "udp_bind", NULL);
    struct timeval tv = {.tv_sec = 2};
    setsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    check(connect(s, (struct sockaddr *)&a, sizeof a) == 0, "udp_connect", NULL);
    check(send(s, "dgram", 5, 0) == 5, "udp_send", NULL);
    close_ok(s, "close_connected_udp");
    char buf[32];
    ssize_t n = recv(r, buf, sizeof buf, 0);
    check(n == 5 && memcmp(buf, "dgram", 5) == 0, "udp_recv", "\"n\":%zd", n);
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    check(sendto(u, "two", 3, 0, (struct sockaddr *)&a, sizeof a) == 3, "udp_sendto", NULL);
    close_ok(u, "close_unconnected_udp");
    n = recv(r, buf, sizeof buf, 0);
    check(n == 3 && memcmp(buf, "two", 3) == 0, "udp_recv_2", "\"n\":%zd", n);
    close_ok(r, "close_receiver");
}

static void sc_unix(void) {
    int sv[2];
    check(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair", NULL);
    check(write_all(sv[0], "abc", 3) == 0, "write", NULL);
    close_ok(sv[0], "close_writer");
    char buf[16];
    ssize_t n = read(sv[1], buf, sizeof buf);
    check(n == 3 && memcmp(buf, "abc", 3) == 0, "read_data", "\"n\":%zd", n);
    n = read(sv[1], buf, sizeof buf);
    check(n == 0, "read_eof", "\"n\":%zd,\"errno\":\"%s\"", n, n < 0 ? errno_name(errno) : "0");
    close_ok(sv[1], "close_reader");

    /* A listening AF_UNIX socket and a connect() to it (abstract address). */
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path + 1, sizeof un.sun_path - 1, "fd_exerciser.%ld", (long)getpid());
    socklen_t ulen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
                                 strlen(un.sun_path + 1));
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    check(l >= 0 && bind(l, (struct sockaddr *)&un, ulen) == 0 && listen(l, 4) == 0, "unix_listen",
          NULL);
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    check(connect(c, (struct sockaddr *)&un, ulen) == 0, "unix_connect", NULL);
    int s = accept(l, NULL, NULL);
    check(s >= 0, "unix_accept", NULL);
    check(write_all(c, "xyz", 3) == 0, "unix_write", NULL);
    close_ok(c, "close_unix_client");
    n = read(s, buf, sizeof buf);
    check(n == 3 && memcmp(buf, "xyz", 3) == 0, "unix_read_data", "\"n\":%zd", n);
    n = read(s, buf, sizeof buf);
    check(n == 0, "unix_read_eof", "\"n\":%zd,\"errno\":\"%s\"", n,
          n < 0 ? errno_name(errno) : "0");
    close_ok(s, "close_unix_accepted");
    close_ok(l, "close_unix_listener");
}

static void sc_tcp_unconnected(void) {
    int a = socket(AF_INET, SOCK_STREAM, 0);
    check(a >= 0, "socket", NULL);
    close_ok(a, "close_never_connected");
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    check(bind(l, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(l, 4) == 0, "listen", NULL);
    close_ok(l, "close_listener");
}

int main(int argc, char *argv[]) {
    if (argc < 2) {
        fprintf(stderr, "usage: fd_exerciser SCENARIO [HOST PORT] [-b BYTES] [-m METHOD] "
                        "[-c CREATOR] [-- CMD ARGS]\n");
        return 64;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    const char *scenario = argv[1];
    if (strcmp(scenario, "child-write") == 0 && argc == 4)
        return child_write(atoi(argv[2]), strtol(argv[3], NULL, 10));
    printf("{\"pid\":%ld}\n", (long)getpid());
    int i = 2;
    if (i + 1 < argc && argv[i][0] != '-') {
        host_arg = argv[i];
        char *end = NULL;
        port_arg = strtol(argv[i + 1], &end, 10);
        if (!end || *end || port_arg < 1 || port_arg > 65535) {
            fprintf(stderr, "fd_exerciser: bad port: %s\n", argv[i + 1]);
            return 64;
        }
        i += 2;
    }
    for (; i < argc; i++) {
        if (strcmp(argv[i], "-b") == 0 && i + 1 < argc) {
            bytes_arg = strtol(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "-m") == 0 && i + 1 < argc) {
            method_arg = argv[++i];
        } else if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            creator_arg = argv[++i];
        } else if (strcmp(argv[i], "--") == 0) {
            child_cmd = &argv[i + 1];
            break;
        } else {
            fprintf(stderr, "fd_exerciser: unexpected argument: %s\n", argv[i]);
            return 64;
        }
    }

    if (strcmp(scenario, "dup-close-orig") == 0) sc_dup_close_orig();
    else if (strcmp(scenario, "dup2-sock-over-sock") == 0) sc_dup2_sock_over_sock();
    else if (strcmp(scenario, "dup2-file-over-sock") == 0) sc_dup2_file_over_sock();
    else if (strcmp(scenario, "close-range") == 0) sc_close_range(0);
    else if (strcmp(scenario, "closefrom") == 0) sc_close_range(1);
    else if (strcmp(scenario, "syscall-close") == 0) sc_syscall_close();
    else if (strcmp(scenario, "double-close") == 0) sc_double_close();
    else if (strcmp(scenario, "fork-exec") == 0) sc_fork_exec();
    else if (strcmp(scenario, "fork-child-close") == 0) sc_fork_child_close();
    else if (strcmp(scenario, "fork-parent-close") == 0) sc_fork_parent_close();
    else if (strcmp(scenario, "spawn-child-writes") == 0) sc_spawn_child_writes("/proc/self/exe");
    else if (strcmp(scenario, "unannounced-child") == 0) sc_unannounced_child();
    else if (strcmp(scenario, "accept-side") == 0) sc_accept_side();
    else if (strcmp(scenario, "file") == 0) sc_file();
    else if (strcmp(scenario, "pipe") == 0) sc_pipe();
    else if (strcmp(scenario, "udp") == 0) sc_udp();
    else if (strcmp(scenario, "unix") == 0) sc_unix();
    else if (strcmp(scenario, "tcp-unconnected") == 0) sc_tcp_unconnected();
    else {
        fprintf(stderr, "fd_exerciser: unknown scenario: %s\n", scenario);
        return 64;
    }
    printf("{\"result\":\"%s\"}\n", failures ? "fail" : "ok");
    return failures ? 1 : 0;
}
