/*
 * oldkernel: runs a command as if on an older Linux, for the tests of how
 * tcpfix degrades where a kernel facility is missing (README "Old kernels").
 *
 * usage: oldkernel [--kernel X.Y] [--no-bind-address-no-port]
 *                  [--no-local-port-range] [--no-close-range]
 *                  [--no-siocoutqnsd] [--no-getrandom] [--no-wipeonfork]
 *                  [--tcp-info-len BYTES] [--no-unspec-connect]
 *                  [--count-calls FILE] -- CMD [ARGS]
 *
 * A seccomp filter (libseccomp) installed in the child before it executes CMD
 * answers the calls an old kernel would refuse with the errno that kernel
 * gives:
 *   IP_BIND_ADDRESS_NO_PORT (4.2)   setsockopt(IPPROTO_IP, 24)  -> ENOPROTOOPT
 *   IP_LOCAL_PORT_RANGE (6.3)       setsockopt(IPPROTO_IP, 51)  -> ENOPROTOOPT
 *   close_range (5.9)                                           -> ENOSYS
 *   SIOCOUTQNSD (2.6.36)            ioctl(SIOCOUTQNSD)          -> EINVAL
 *   getrandom (3.17)                                            -> ENOSYS
 *   MADV_WIPEONFORK (4.14)          madvise(MADV_WIPEONFORK)    -> EINVAL
 * and two that need more than an errno, through a user-space supervisor (this
 * process, SECCOMP_RET_USER_NOTIF):
 *   --tcp-info-len N   getsockopt(IPPROTO_TCP, TCP_INFO) returns only the
 *                      first N bytes, as a kernel with a shorter struct
 *                      tcp_info does (104: Linux 3.10, no byte counters);
 *                      the supervisor takes the socket with pidfd_getfd(),
 *                      asks the real kernel and writes the short answer into
 *                      the caller's memory;
 *   --no-unspec-connect  connect() with an AF_UNSPEC address fails with
 *                      EINVAL (a sandbox refusing the disconnect); every
 *                      other connect() proceeds untouched.
 * --kernel X.Y[.Z] turns on everything a kernel older than that lacks, e.g.
 * --kernel 3.10 (CentOS 7's) or 4.18 (RHEL 8's).
 *
 * --count-calls FILE counts, through the same supervisor, the calls tcpfix's
 * close decision makes — getsockopt(TCP_INFO), ioctl(SIOCOUTQ) and
 * ioctl(SIOCOUTQNSD), whether answered or refused — and writes them to FILE
 * when CMD ends, as {"tcp_info":N,"siocoutq":N,"siocoutqnsd":N}.
 *
 * The filter is inherited by CMD's children. Exits with CMD's status (128+N
 * if a signal N ended it); SIGTERM and SIGINT are passed on to CMD.
 * Prints nothing itself unless something fails ("oldkernel: ...", status
 * 125; 126/127 when CMD cannot be run).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/seccomp.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <seccomp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#ifndef IP_LOCAL_PORT_RANGE
#define IP_LOCAL_PORT_RANGE 51
#endif
#ifndef SIOCOUTQNSD
#define SIOCOUTQNSD 0x894B
#endif
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif
#ifndef __NR_close_range
#define __NR_close_range 436
#endif
#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif
#ifndef __NR_pidfd_getfd
#define __NR_pidfd_getfd 438
#endif

struct options {
    int no_port, no_range, no_close_range, no_outqnsd, no_getrandom, no_unspec, no_wipeonfork;
    int tcp_info_len;       /* 0: untouched */
    const char* count_path; /* NULL: nothing counted */
};

/* What --count-calls counts. */
static struct { unsigned long tcp_info, siocoutq, siocoutqnsd; } g_calls;

static volatile sig_atomic_t g_child;

static void die(const char* what) {
    fprintf(stderr, "oldkernel: %s: %s\n", what, strerror(errno));
    exit(125);
}

static void usage(void) {
    fprintf(stderr,
            "usage: oldkernel [--kernel X.Y] [--no-bind-address-no-port] [--no-local-port-range]\n"
            "                 [--no-close-range] [--no-siocoutqnsd] [--no-getrandom] [--no-wipeonfork]\n"
            "                 [--tcp-info-len BYTES] [--no-unspec-connect] [--count-calls FILE]\n"
            "                 -- CMD [ARGS]\n");
    exit(125);
}

/* Everything a kernel older than major.minor[.patch] lacks. */
static void older_than(struct options* o, const char* version) {
    unsigned major = 0, minor = 0, patch = 0;
    if (sscanf(version, "%u.%u.%u", &major, &minor, &patch) < 2) usage();
    unsigned v = (major * 1000 + minor) * 1000 + patch;
    if (v < 6003000) o->no_range = 1;
    if (v < 5009000) o->no_close_range = 1;
    if (v < 4014000) o->no_wipeonfork = 1;
    if (v < 4006000) o->tcp_info_len = 144; /* up to tcpi_segs_in: no tcpi_notsent_bytes */
    if (v < 4002000) o->no_port = 1;
    if (v < 4001000) o->tcp_info_len = 104; /* struct tcp_info up to tcpi_total_retrans */
    if (v < 3017000) o->no_getrandom = 1;
    if (v < 2006036) o->no_outqnsd = 1;
}

static void rule(scmp_filter_ctx ctx, uint32_t action, int nr, unsigned n, ...) {
    struct scmp_arg_cmp cmp[3];
    va_list ap;
    va_start(ap, n);
    for (unsigned i = 0; i < n; ++i) cmp[i] = va_arg(ap, struct scmp_arg_cmp);
    va_end(ap);
    int rc = seccomp_rule_add_array(ctx, action, nr, n, cmp);
    if (rc < 0) {
        errno = -rc;
        die("seccomp_rule_add");
    }
}

static int install_filter(const struct options* o) {
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (ctx == NULL) die("seccomp_init");
    if (o->no_port)
        rule(ctx, SCMP_ACT_ERRNO(ENOPROTOOPT), SCMP_SYS(setsockopt), 2, SCMP_A1(SCMP_CMP_EQ, IPPROTO_IP),
             SCMP_A2(SCMP_CMP_EQ, IP_BIND_ADDRESS_NO_PORT));
    if (o->no_range)
        rule(ctx, SCMP_ACT_ERRNO(ENOPROTOOPT), SCMP_SYS(setsockopt), 2, SCMP_A1(SCMP_CMP_EQ, IPPROTO_IP),
             SCMP_A2(SCMP_CMP_EQ, IP_LOCAL_PORT_RANGE));
    if (o->no_close_range) rule(ctx, SCMP_ACT_ERRNO(ENOSYS), __NR_close_range, 0);
    /* Counted, the ioctls go to the supervisor, which refuses SIOCOUTQNSD itself. */
    const int count = o->count_path != NULL;
    if (o->no_outqnsd && !count)
        rule(ctx, SCMP_ACT_ERRNO(EINVAL), SCMP_SYS(ioctl), 1, SCMP_A1(SCMP_CMP_EQ, SIOCOUTQNSD));
    if (count) {
        rule(ctx, SCMP_ACT_NOTIFY, SCMP_SYS(ioctl), 1, SCMP_A1(SCMP_CMP_EQ, SIOCOUTQ));
        rule(ctx, SCMP_ACT_NOTIFY, SCMP_SYS(ioctl), 1, SCMP_A1(SCMP_CMP_EQ, SIOCOUTQNSD));
    }
    if (o->no_getrandom) rule(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(getrandom), 0);
    if (o->no_wipeonfork)
        rule(ctx, SCMP_ACT_ERRNO(EINVAL), SCMP_SYS(madvise), 1, SCMP_A2(SCMP_CMP_EQ, MADV_WIPEONFORK));
    int notify = o->tcp_info_len > 0 || o->no_unspec || count;
    if (o->tcp_info_len > 0 || count)
        rule(ctx, SCMP_ACT_NOTIFY, SCMP_SYS(getsockopt), 2, SCMP_A1(SCMP_CMP_EQ, IPPROTO_TCP),
             SCMP_A2(SCMP_CMP_EQ, TCP_INFO));
    if (o->no_unspec) rule(ctx, SCMP_ACT_NOTIFY, SCMP_SYS(connect), 0);
    int rc = seccomp_load(ctx);
    if (rc < 0) {
        errno = -rc;
        die("seccomp_load");
    }
    int fd = notify ? seccomp_notify_fd(ctx) : -1;
    seccomp_release(ctx);
    return fd;
}

static void send_fd(int sock, int fd) {
    char byte = 0;
    struct iovec iov = {&byte, 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(sock, &msg, 0) != 1) die("sendmsg");
}

static int recv_fd(int sock) {
    char byte;
    struct iovec iov = {&byte, 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    ssize_t n = recvmsg(sock, &msg, 0);
    if (n == 0) return -1; /* the child found nothing to notify about, or failed */
    if (n < 0) die("recvmsg");
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    if (c == NULL || c->cmsg_type != SCM_RIGHTS) return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

static int peek(pid_t pid, uint64_t addr, void* out, size_t len) {
    struct iovec local = {out, len}, remote = {(void*)(uintptr_t)addr, len};
    return process_vm_readv(pid, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

static int poke(pid_t pid, uint64_t addr, const void* in, size_t len) {
    struct iovec local = {(void*)in, len}, remote = {(void*)(uintptr_t)addr, len};
    return process_vm_writev(pid, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

/* The thread group (process) of a thread: pidfd_open wants a process. */
static pid_t tgid_of(pid_t tid) {
    char path[64], line[128];
    snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
    FILE* f = fopen(path, "r");
    if (f == NULL) return -1;
    pid_t tgid = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "Tgid: %d", &tgid) == 1) break;
    fclose(f);
    return tgid;
}

/* getsockopt(TCP_INFO) answered with the first tcp_info_len bytes only. */
static void short_tcp_info(const struct seccomp_notif* req, struct seccomp_notif_resp* resp, int tcp_info_len) {
    uint64_t optval = req->data.args[3], optlen_addr = req->data.args[4];
    socklen_t asked;
    if (peek(req->pid, optlen_addr, &asked, sizeof asked) != 0) {
        resp->error = -EFAULT;
        return;
    }
    pid_t tgid = tgid_of(req->pid);
    int pidfd = tgid > 0 ? (int)syscall(__NR_pidfd_open, tgid, 0) : -1;
    int sock = pidfd >= 0 ? (int)syscall(__NR_pidfd_getfd, pidfd, (int)req->data.args[0], 0) : -1;
    if (pidfd >= 0) close(pidfd);
    if (sock < 0) {
        resp->error = -EBADF;
        return;
    }
    unsigned char info[512];
    socklen_t len = asked < (socklen_t)tcp_info_len ? asked : (socklen_t)tcp_info_len;
    if (len > sizeof info) len = sizeof info;
    if (getsockopt(sock, IPPROTO_TCP, TCP_INFO, info, &len) != 0) {
        resp->error = -errno;
    } else if (poke(req->pid, optval, info, len) != 0 || poke(req->pid, optlen_addr, &len, sizeof len) != 0) {
        resp->error = -EFAULT;
    }
    close(sock);
}

static void handle(int nfd, const struct options* o, struct seccomp_notif* req, struct seccomp_notif_resp* resp) {
    memset(req, 0, sizeof *req);
    if (seccomp_notify_receive(nfd, req) != 0) return; /* the caller died meanwhile */
    memset(resp, 0, sizeof *resp);
    resp->id = req->id;
    if (req->data.nr == SCMP_SYS(getsockopt)) { /* only TCP_INFO comes here */
        ++g_calls.tcp_info;
        if (o->tcp_info_len > 0)
            short_tcp_info(req, resp, o->tcp_info_len);
        else
            resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    } else if (req->data.nr == SCMP_SYS(ioctl)) { /* only SIOCOUTQ and SIOCOUTQNSD come here */
        if (req->data.args[1] == SIOCOUTQNSD) {
            ++g_calls.siocoutqnsd;
            if (o->no_outqnsd)
                resp->error = -EINVAL;
            else
                resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        } else {
            ++g_calls.siocoutq;
            resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        }
    } else if (req->data.nr == SCMP_SYS(connect)) {
        sa_family_t family = AF_INET;
        if (req->data.args[2] >= sizeof family) (void)peek(req->pid, req->data.args[1], &family, sizeof family);
        if (family == AF_UNSPEC) resp->error = -EINVAL;
        else resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    } else {
        resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    }
    if (seccomp_notify_id_valid(nfd, req->id) != 0) return;
    (void)seccomp_notify_respond(nfd, resp);
}

static void pass_on(int sig) {
    if (g_child > 0) kill(g_child, sig);
}

int main(int argc, char** argv) {
    struct options o = {0};
    int i = 1;
    for (; i < argc; ++i) {
        const char* a = argv[i];
        if (strcmp(a, "--") == 0) {
            ++i;
            break;
        } else if (strcmp(a, "--kernel") == 0 && i + 1 < argc) {
            older_than(&o, argv[++i]);
        } else if (strcmp(a, "--no-bind-address-no-port") == 0) {
            o.no_port = 1;
        } else if (strcmp(a, "--no-local-port-range") == 0) {
            o.no_range = 1;
        } else if (strcmp(a, "--no-close-range") == 0) {
            o.no_close_range = 1;
        } else if (strcmp(a, "--no-siocoutqnsd") == 0) {
            o.no_outqnsd = 1;
        } else if (strcmp(a, "--no-getrandom") == 0) {
            o.no_getrandom = 1;
        } else if (strcmp(a, "--no-wipeonfork") == 0) {
            o.no_wipeonfork = 1;
        } else if (strcmp(a, "--no-unspec-connect") == 0) {
            o.no_unspec = 1;
        } else if (strcmp(a, "--count-calls") == 0 && i + 1 < argc) {
            o.count_path = argv[++i];
        } else if (strcmp(a, "--tcp-info-len") == 0 && i + 1 < argc) {
            char* end;
            long n = strtol(argv[++i], &end, 10);
            if (*end != '\0' || n < 8 || n > 512) usage();
            o.tcp_info_len = (int)n;
        } else {
            usage();
        }
    }
    if (i >= argc) usage();

    int sp[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) != 0) die("socketpair");
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        close(sp[0]);
        int nfd = install_filter(&o);
        if (nfd >= 0) {
            send_fd(sp[1], nfd);
            close(nfd);
        }
        close(sp[1]);
        execvp(argv[i], &argv[i]);
        fprintf(stderr, "oldkernel: %s: %s\n", argv[i], strerror(errno));
        _exit(errno == ENOENT ? 127 : 126);
    }
    g_child = child;
    struct sigaction sa = {0};
    sa.sa_handler = pass_on;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    close(sp[1]);
    int nfd = recv_fd(sp[0]);
    close(sp[0]);

    struct seccomp_notif* req = NULL;
    struct seccomp_notif_resp* resp = NULL;
    if (nfd >= 0 && seccomp_notify_alloc(&req, &resp) != 0) die("seccomp_notify_alloc");
    int status = 0;
    for (;;) {
        pid_t w = waitpid(child, &status, nfd >= 0 ? WNOHANG : 0);
        if (w == child) break;
        if (w < 0 && errno != EINTR) die("waitpid");
        if (nfd < 0) continue;
        struct pollfd p = {nfd, POLLIN, 0};
        int r = poll(&p, 1, 50);
        if (r > 0 && (p.revents & POLLIN)) handle(nfd, &o, req, resp);
    }
    if (o.count_path != NULL) {
        FILE* f = fopen(o.count_path, "w");
        if (f == NULL) die(o.count_path);
        fprintf(f, "{\"tcp_info\":%lu,\"siocoutq\":%lu,\"siocoutqnsd\":%lu}\n", g_calls.tcp_info,
                g_calls.siocoutq, g_calls.siocoutqnsd);
        if (fclose(f) != 0) die(o.count_path);
    }
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}
