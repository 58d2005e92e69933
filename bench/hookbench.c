/*
 * hookbench: the calls tcpfix hooks, in tight loops, for measuring what the
 * hooks add. The same binary runs unpreloaded and under every configuration,
 * so whatever it costs on its own cancels out of the comparison.
 *
 * usage: hookbench OP N [BATCHES [paired]]
 *
 *   close_file     eventfd() + close(): close() of a non-socket descriptor
 *                  (eventfd is not hooked; it only makes a fresh descriptor),
 *                  in a process that holds one TCP socket, as a program that
 *                  uses the network does (so the library's descriptor table
 *                  is in use, not empty)
 *   socket_close   socket(AF_INET, SOCK_STREAM) + close()
 *   connect_close  socket() + blocking connect() to a listener on 127.0.0.1
 *                  of this process + close(); the same thread accept()s and
 *                  closes the server end after the client's close (so the
 *                  loop is deterministic: no second process, no scheduler)
 *   dup2_socket    dup2() of a TCP socket onto a fixed descriptor that holds
 *                  the previous copy (the common case: the table stays as it is)
 *   dup2_swap      dup2() of two TCP sockets in turn onto one fixed
 *                  descriptor, so each call replaces a copy of the other
 *                  socket (the hook's take, count, release and share path)
 *   dup2_file      the same with an eventfd (one TCP socket held, as above)
 *   close_lat      N times: connect to the listener, one request and its reply
 *                  (the server's kernel is then in interactive mode and
 *                  delays the ACK of the client's next bytes: 40 ms on
 *                  loopback), a final "QUIT\r\n", and close() at once — the
 *                  close a database client makes. Reports how long close()
 *                  itself took, not a loop:
 *                  {"op":"close_lat","n":N,"close_us":{"p50":..,"p90":..,
 *                   "p99":..,"max":..,"mean":..}}
 *   mem            opens N TCP sockets with socket(), then reports the
 *                  process's memory (/proc/self/smaps_rollup); N = 0 is an
 *                  idle process
 *
 * Loop ops run 200 warm-up iterations (a fixed count, so it cancels out of a
 * two-N instruction count), then BATCHES (default 5) timed batches of N
 * iterations each, and print one JSON line with each batch's wall time and
 * process CPU time (user + system, every thread) per iteration:
 *   {"op":"close_file","n":N,"batches":B,"ns_per_iter":[...],
 *    "cpu_ns_per_iter":[...]}
 * With `paired`, BATCHES pairs of batches alternate, in the same process,
 * between libc's own functions (looked up in libc.so.6 itself, so they
 * bypass any preload: exactly what the unpreloaded program runs) and the
 * functions the program links to (the hooks, when preloaded), ABBA order:
 *   {"op":..,"n":N,"pairs":P,"distinct":true,"direct_cpu":[..],
 *    "hooked_cpu":[..],"direct_wall":[..],"hooked_wall":[..]}
 * Adjacent batches share the machine's load, so the pair's ratio is far
 * less noisy than two processes compared. `distinct` is false when the
 * program links to libc's functions directly (not preloaded: an A/A run).
 * mem prints {"op":"mem","n":N,"rss_kb":..,"pss_kb":..,"anon_kb":..,
 *   "private_dirty_kb":..}.
 * Any failing call is fatal (exit 1, naming the call): a benchmark of an
 * error path would measure the wrong thing. Exit 64 on a usage error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "progutil.h"

enum { WARMUP = 200, MAX_BATCHES = 100, DUP_TARGET = 900 };

static void die(const char *what) {
    fprintf(stderr, "hookbench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static long long clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* -- the functions measured -------------------------------------------- */

/* Every loop calls through this table: the program's own symbols (the hooks
 * under a preload) or libc's, looked up in libc.so.6 itself. */
struct fns {
    int (*socket)(int, int, int);
    int (*connect)(int, const struct sockaddr *, socklen_t);
    int (*accept)(int, struct sockaddr *, socklen_t *);
    int (*close)(int);
    int (*dup2)(int, int);
};

static struct fns linked = {socket, connect, accept, close, dup2};
static struct fns direct;
static struct fns f;  /* what the loops call */

static void *libc_symbol(void *libc, const char *name) {
    void *p = dlsym(libc, name);
    if (p == NULL) {
        fprintf(stderr, "hookbench: dlsym(libc.so.6, %s): %s\n", name, dlerror());
        exit(1);
    }
    return p;
}

static void resolve_direct(void) {
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    if (libc == NULL) {
        fprintf(stderr, "hookbench: dlopen(libc.so.6): %s\n", dlerror());
        exit(1);
    }
    direct.socket = (int (*)(int, int, int))libc_symbol(libc, "socket");
    direct.connect = (int (*)(int, const struct sockaddr *, socklen_t))libc_symbol(libc, "connect");
    direct.accept = (int (*)(int, struct sockaddr *, socklen_t *))libc_symbol(libc, "accept");
    direct.close = (int (*)(int))libc_symbol(libc, "close");
    direct.dup2 = (int (*)(int, int))libc_symbol(libc, "dup2");
}

/* -- the loops ---------------------------------------------------------- */

struct ctx {
    int listener;
    struct sockaddr_in addr;
    int dup_socket;
    int dup_socket2;
    int dup_file;
};

static void close_file(struct ctx *c, long n) {
    (void)c;
    for (long i = 0; i < n; i++) {
        int fd = eventfd(0, 0);
        if (fd < 0) die("eventfd");
        if (f.close(fd) != 0) die("close");
    }
}

static void socket_close(struct ctx *c, long n) {
    (void)c;
    for (long i = 0; i < n; i++) {
        int fd = f.socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (f.close(fd) != 0) die("close");
    }
}

static void connect_close(struct ctx *c, long n) {
    for (long i = 0; i < n; i++) {
        int fd = f.socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (f.connect(fd, (struct sockaddr *)&c->addr, sizeof c->addr) != 0) die("connect");
        int conn = f.accept(c->listener, NULL, NULL);
        if (conn < 0) die("accept");
        if (f.close(fd) != 0) die("close");
        if (f.close(conn) != 0) die("close (server end)");
    }
}

static void dup2_socket(struct ctx *c, long n) {
    for (long i = 0; i < n; i++)
        if (f.dup2(c->dup_socket, DUP_TARGET) != DUP_TARGET) die("dup2");
}

static void dup2_swap(struct ctx *c, long n) {
    for (long i = 0; i < n; i++)
        if (f.dup2((i & 1) ? c->dup_socket2 : c->dup_socket, DUP_TARGET) != DUP_TARGET) die("dup2");
}

static void dup2_file(struct ctx *c, long n) {
    for (long i = 0; i < n; i++)
        if (f.dup2(c->dup_file, DUP_TARGET) != DUP_TARGET) die("dup2");
}

static void setup_listener(struct ctx *c) {
    c->listener = socket(AF_INET, SOCK_STREAM, 0);
    if (c->listener < 0) die("socket (listener)");
    memset(&c->addr, 0, sizeof c->addr);
    c->addr.sin_family = AF_INET;
    c->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof c->addr;
    if (bind(c->listener, (struct sockaddr *)&c->addr, len) != 0) die("bind");
    if (listen(c->listener, 128) != 0) die("listen");
    if (getsockname(c->listener, (struct sockaddr *)&c->addr, &len) != 0) die("getsockname");
}

/* -- close() latency with the last ACK due --------------------------------- */

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static void xfer(int from, int to, const char *msg) {
    char buf[64];
    size_t len = strlen(msg);
    if (write(from, msg, len) != (ssize_t)len) die("write");
    if (read(to, buf, sizeof buf) != (ssize_t)len) die("read");
}

static int run_close_lat(long n) {
    struct ctx c;
    setup_listener(&c);
    long long *took = calloc((size_t)(n > 0 ? n : 1), sizeof *took);
    if (took == NULL) die("calloc");
    double sum = 0;
    for (long i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (connect(fd, (struct sockaddr *)&c.addr, sizeof c.addr) != 0) die("connect");
        int conn = accept(c.listener, NULL, NULL);
        if (conn < 0) die("accept");
        xfer(fd, conn, "SELECT 1;");
        xfer(conn, fd, "1 row");
        if (write(fd, "QUIT\r\n", 6) != 6) die("write QUIT");
        long long t0 = clock_ns(CLOCK_MONOTONIC);
        if (close(fd) != 0) die("close");
        took[i] = clock_ns(CLOCK_MONOTONIC) - t0;
        sum += (double)took[i];
        if (close(conn) != 0) die("close (server end)");
    }
    qsort(took, (size_t)n, sizeof *took, cmp_ll);
#define PCT(q) (n > 0 ? (double)took[(long)((double)(n - 1) * (q))] / 1000.0 : 0.0)
    printf("{\"op\":\"close_lat\",\"n\":%ld,\"close_us\":{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,"
           "\"max\":%.1f,\"mean\":%.1f}}\n",
           n, PCT(0.5), PCT(0.9), PCT(0.99), PCT(1.0), n > 0 ? sum / (double)n / 1000.0 : 0.0);
#undef PCT
    fflush(stdout);
    free(took);
    return 0;
}

/* -- memory --------------------------------------------------------------- */

static long rollup_kb(const char *text, const char *field) {
    const char *p = strstr(text, field);
    if (p == NULL) return -1;
    return strtol(p + strlen(field), NULL, 10);
}

static int run_mem(long n) {
    for (long i = 0; i < n; i++)
        if (socket(AF_INET, SOCK_STREAM, 0) < 0) die("socket");
    char text[8192];
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (f == NULL) die("/proc/self/smaps_rollup");
    size_t got = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[got] = '\0';
    printf("{\"op\":\"mem\",\"n\":%ld,\"rss_kb\":%ld,\"pss_kb\":%ld,\"anon_kb\":%ld,"
           "\"private_dirty_kb\":%ld}\n",
           n, rollup_kb(text, "\nRss:"), rollup_kb(text, "\nPss:"),
           rollup_kb(text, "\nAnonymous:"), rollup_kb(text, "\nPrivate_Dirty:"));
    fflush(stdout);
    return 0;  /* the sockets are left to exit() */
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 5 || (argc == 5 && strcmp(argv[4], "paired") != 0)) {
        fprintf(stderr, "usage: hookbench OP N [BATCHES [paired]]\n"
                        "  OP: close_file socket_close connect_close dup2_socket dup2_file close_lat mem\n");
        return 64;
    }
    const char *op = argv[1];
    long n = parse_long(argv[2], "N", 0, 1000000000L);
    long batches = argc >= 4 ? parse_long(argv[3], "BATCHES", 1, MAX_BATCHES) : 5;
    int paired = argc == 5;
    if (strcmp(op, "mem") == 0) return run_mem(n);
    if (strcmp(op, "close_lat") == 0) return run_close_lat(n);
    f = linked;

    struct ctx c = {.listener = -1, .dup_socket = -1, .dup_socket2 = -1, .dup_file = -1};
    void (*loop)(struct ctx *, long) = NULL;
    if (strcmp(op, "close_file") == 0) {
        loop = close_file;
        c.dup_socket = socket(AF_INET, SOCK_STREAM, 0);
        if (c.dup_socket < 0) die("socket");
    } else if (strcmp(op, "socket_close") == 0) {
        loop = socket_close;
    } else if (strcmp(op, "connect_close") == 0) {
        loop = connect_close;
        setup_listener(&c);
    } else if (strcmp(op, "dup2_socket") == 0) {
        loop = dup2_socket;
        c.dup_socket = socket(AF_INET, SOCK_STREAM, 0);
        if (c.dup_socket < 0) die("socket");
    } else if (strcmp(op, "dup2_swap") == 0) {
        loop = dup2_swap;
        c.dup_socket = socket(AF_INET, SOCK_STREAM, 0);
        c.dup_socket2 = socket(AF_INET, SOCK_STREAM, 0);
        if (c.dup_socket < 0 || c.dup_socket2 < 0) die("socket");
    } else if (strcmp(op, "dup2_file") == 0) {
        loop = dup2_file;
        c.dup_socket = socket(AF_INET, SOCK_STREAM, 0);
        if (c.dup_socket < 0) die("socket");
        c.dup_file = eventfd(0, 0);
        if (c.dup_file < 0) die("eventfd");
    } else {
        fprintf(stderr, "hookbench: unknown OP %s\n", op);
        return 64;
    }

    if (paired) {
        resolve_direct();
        f = direct;
        loop(&c, WARMUP);
        f = linked;
        loop(&c, WARMUP);
        static double cpu[2][MAX_BATCHES], wall[2][MAX_BATCHES];
        for (long b = 0; b < batches; b++) {
            for (int k = 0; k < 2; k++) {
                int which = (b & 1) ? 1 - k : k;  /* ABBA: 0 = direct, 1 = linked */
                f = which == 0 ? direct : linked;
                long long c0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID), t0 = clock_ns(CLOCK_MONOTONIC);
                loop(&c, n);
                long long t1 = clock_ns(CLOCK_MONOTONIC), c1 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
                cpu[which][b] = n > 0 ? (double)(c1 - c0) / (double)n : 0.0;
                wall[which][b] = n > 0 ? (double)(t1 - t0) / (double)n : 0.0;
            }
        }
        int distinct = direct.close != linked.close;
        printf("{\"op\":\"%s\",\"n\":%ld,\"pairs\":%ld,\"distinct\":%s", op, n, batches,
               distinct ? "true" : "false");
        const char *names[4] = {"direct_cpu", "hooked_cpu", "direct_wall", "hooked_wall"};
        double *rows[4] = {cpu[0], cpu[1], wall[0], wall[1]};
        for (int r = 0; r < 4; r++) {
            printf(",\"%s\":[", names[r]);
            for (long b = 0; b < batches; b++) printf("%s%.2f", b ? "," : "", rows[r][b]);
            printf("]");
        }
        printf("}\n");
        fflush(stdout);
        return 0;
    }

    loop(&c, WARMUP);
    double per_iter[MAX_BATCHES], cpu_per_iter[MAX_BATCHES];
    for (long b = 0; b < batches; b++) {
        long long c0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID), t0 = clock_ns(CLOCK_MONOTONIC);
        loop(&c, n);
        long long t1 = clock_ns(CLOCK_MONOTONIC), c1 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
        per_iter[b] = n > 0 ? (double)(t1 - t0) / (double)n : 0.0;
        cpu_per_iter[b] = n > 0 ? (double)(c1 - c0) / (double)n : 0.0;
    }
    printf("{\"op\":\"%s\",\"n\":%ld,\"batches\":%ld,\"ns_per_iter\":[", op, n, batches);
    for (long b = 0; b < batches; b++) printf("%s%.2f", b ? "," : "", per_iter[b]);
    printf("],\"cpu_ns_per_iter\":[");
    for (long b = 0; b < batches; b++) printf("%s%.2f", b ? "," : "", cpu_per_iter[b]);
    printf("]}\n");
    fflush(stdout);
    return 0;
}
