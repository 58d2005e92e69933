/*
 * connload: short connections to one destination, the way a prober or a
 * connection-per-request client makes them (blocking socket, connect,
 * close), counted so a benchmark can read rates and latencies.
 *
 * usage: connload rate    HOST PORT -d DURATION_MS [-r [-i]]
 *        connload latency HOST PORT -d DURATION_MS -t THREADS -p PER_THREAD_HZ
 *                         [-g GRACE_MS] [-r]
 *
 *   rate     one thread, as fast as it goes, for DURATION_MS; prints
 *            successful connects and failures per second of the run
 *   latency  THREADS threads, each starting an attempt every 1/PER_THREAD_HZ
 *            seconds (an absolute schedule, staggered between threads; a
 *            thread that fell behind starts the next at once) until
 *            DURATION_MS; then waits at most GRACE_MS (default 4000) for the
 *            attempts still in flight, which are counted as "pending" with
 *            the time they had waited so far
 *   -r       close with SO_LINGER {1,0} (an RST, no TIME_WAIT), as a
 *            hand-patched prober does; default: a normal close
 *   -i       with -r: ask getsockopt(TCP_INFO) first, as TCPFIX_CLOSE=rst
 *            does to learn that nothing is unsent or unacknowledged (the
 *            kernel's share of what a safe RST costs)
 *
 * HOST is an IPv4 literal. Prints one JSON line:
 *   rate:    {"mode":"rate","elapsed_ms":..,"attempts":..,"ok":..,
 *             "errors":{"EADDRNOTAVAIL":..},"first_eaddrnotavail_ms":..,
 *             "ok_per_s":[..],"fail_per_s":[..]}
 *   latency: {"mode":"latency","attempts":..,"ok":..,"pending":..,
 *             "errors":{..},"latency_ms":{"p50":..,"p90":..,"p99":..,"max":..},
 *             "ok_latency_ms":{...}}
 *   (latency_ms covers every attempt: a failure counts with the time it took,
 *   a pending attempt with the time it had waited; ok_latency_ms only the
 *   successful ones.)
 * Exit 0 whatever the connects did; 1 on a setup failure; 64 on a usage error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "progutil.h"

enum { MAX_SECONDS = 3600, MAX_THREADS = 256, MAX_ERRNO = 4096 };

static struct sockaddr_in g_dest;
static int g_rst;
static int g_rst_probe;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until(long long t) {
    struct timespec ts = {(time_t)(t / 1000000000LL), (long)(t % 1000000000LL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void print_errors(const atomic_long *errors) {
    printf("\"errors\":{");
    int first = 1;
    for (int e = 0; e < MAX_ERRNO; e++) {
        long n = atomic_load(&errors[e]);
        if (n == 0) continue;
        printf("%s\"%s\":%ld", first ? "" : ",", errno_name(e), n);
        first = 0;
    }
    printf("}");
}

/* One attempt: 0 or the errno of the first call that failed. */
static int attempt(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return errno;
    int err = 0;
    if (connect(fd, (struct sockaddr *)&g_dest, sizeof g_dest) != 0) err = errno;
    if (err == 0 && g_rst) {
        if (g_rst_probe) {
            struct tcp_info info;
            socklen_t len = sizeof info;
            if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) err = errno;
        }
        struct linger l = {1, 0};
        (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    close(fd);
    return err;
}

static atomic_long g_errors[MAX_ERRNO];

static void count_error(int err) {
    atomic_fetch_add(&g_errors[err > 0 && err < MAX_ERRNO ? err : 0], 1);
}

/* -- rate ----------------------------------------------------------------- */

static int run_rate(long duration_ms) {
    long seconds = (duration_ms + 999) / 1000;
    static long ok_per_s[MAX_SECONDS], fail_per_s[MAX_SECONDS];
    long attempts = 0, ok = 0;
    long long first_eaddrnotavail = -1;
    long long start = now_ns(), end = start + duration_ms * 1000000LL, t = start;
    while (t < end) {
        int err = attempt();
        t = now_ns();
        long sec = (long)((t - start) / 1000000000LL);
        if (sec >= seconds) sec = seconds - 1;
        attempts++;
        if (err == 0) {
            ok++;
            ok_per_s[sec]++;
        } else {
            fail_per_s[sec]++;
            count_error(err);
            if (err == EADDRNOTAVAIL && first_eaddrnotavail < 0) first_eaddrnotavail = t - start;
        }
    }
    printf("{\"mode\":\"rate\",\"rst\":%s,\"elapsed_ms\":%.1f,\"attempts\":%ld,\"ok\":%ld,",
           g_rst ? "true" : "false", (double)(t - start) / 1e6, attempts, ok);
    print_errors(g_errors);
    printf(",\"first_eaddrnotavail_ms\":%.1f,\"ok_per_s\":[",
           first_eaddrnotavail < 0 ? -1.0 : (double)first_eaddrnotavail / 1e6);
    for (long s = 0; s < seconds; s++) printf("%s%ld", s ? "," : "", ok_per_s[s]);
    printf("],\"fail_per_s\":[");
    for (long s = 0; s < seconds; s++) printf("%s%ld", s ? "," : "", fail_per_s[s]);
    printf("]}\n");
    return 0;
}

/* -- latency -------------------------------------------------------------- */

struct worker {
    pthread_t thread;
    long long first_due, period, end;
    long capacity;
    pthread_mutex_t lock;  /* guards what follows; never held across connect() */
    long long *lat_ns;     /* per finished attempt; negative: failed */
    long done;
    long long in_flight_since;  /* 0: idle */
    int finished;
};

static void *work(void *arg) {
    struct worker *w = arg;
    for (long k = 0;; k++) {
        long long due = w->first_due + k * w->period;
        if (due >= w->end || k >= w->capacity) break;
        sleep_until(due);
        /* A thread that fell behind (a connect that took seconds) does not
         * catch up past the end: attempts after it would only be cut off. */
        if (now_ns() >= w->end) break;
        long long t0 = now_ns();
        pthread_mutex_lock(&w->lock);
        w->in_flight_since = t0;
        pthread_mutex_unlock(&w->lock);
        int err = attempt();
        long long lat = now_ns() - t0;
        if (err != 0) count_error(err);
        pthread_mutex_lock(&w->lock);
        w->lat_ns[w->done++] = err == 0 ? lat : -lat - 1;
        w->in_flight_since = 0;
        pthread_mutex_unlock(&w->lock);
    }
    pthread_mutex_lock(&w->lock);
    w->finished = 1;
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static void print_percentiles(const char *name, long long *v, long n) {
    qsort(v, (size_t)n, sizeof *v, cmp_ll);
    printf("\"%s\":", name);
    if (n == 0) {
        printf("{\"p50\":null,\"p90\":null,\"p99\":null,\"max\":null}");
        return;
    }
    /* nearest rank */
    long i50 = (n * 50 + 99) / 100 - 1, i90 = (n * 90 + 99) / 100 - 1, i99 = (n * 99 + 99) / 100 - 1;
    printf("{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f}", (double)v[i50] / 1e6,
           (double)v[i90] / 1e6, (double)v[i99] / 1e6, (double)v[n - 1] / 1e6);
}

static int run_latency(long duration_ms, long threads, long hz, long grace_ms) {
    static struct worker workers[MAX_THREADS];
    long long start = now_ns() + 20000000LL;  /* 20 ms to start every thread */
    long long period = 1000000000LL / hz;
    long capacity = duration_ms * hz / 1000 + 2;
    for (long i = 0; i < threads; i++) {
        struct worker *w = &workers[i];
        w->first_due = start + period * i / threads;
        w->period = period;
        w->end = start + duration_ms * 1000000LL;
        w->capacity = capacity;
        pthread_mutex_init(&w->lock, NULL);
        w->lat_ns = calloc((size_t)capacity, sizeof *w->lat_ns);
        if (w->lat_ns == NULL) {
            perror("connload: calloc");
            return 1;
        }
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 64 * 1024);
        int e = pthread_create(&w->thread, &attr, work, w);
        pthread_attr_destroy(&attr);
        if (e != 0) {
            errno = e;
            perror("connload: pthread_create");
            return 1;
        }
    }
    sleep_until(start + duration_ms * 1000000LL);
    long long cutoff = start + (duration_ms + grace_ms) * 1000000LL;
    for (;;) {
        int all = 1;
        for (long i = 0; i < threads; i++) {
            pthread_mutex_lock(&workers[i].lock);
            all &= workers[i].finished;
            pthread_mutex_unlock(&workers[i].lock);
        }
        if (all || now_ns() >= cutoff) break;
        struct timespec ts = {0, 10000000L};
        nanosleep(&ts, NULL);
    }
    long long at = now_ns();
    long total = 0;
    for (long i = 0; i < threads; i++) total += workers[i].capacity + 1;
    long long *all = calloc((size_t)total, sizeof *all);
    long long *oks = calloc((size_t)total, sizeof *oks);
    if (all == NULL || oks == NULL) {
        perror("connload: calloc");
        return 1;
    }
    long n_all = 0, n_ok = 0, pending = 0;
    for (long i = 0; i < threads; i++) {
        struct worker *w = &workers[i];
        pthread_mutex_lock(&w->lock);  /* the thread stays out until _exit */
        for (long k = 0; k < w->done; k++) {
            long long v = w->lat_ns[k];
            if (v >= 0) {
                all[n_all++] = v;
                oks[n_ok++] = v;
            } else {
                all[n_all++] = -v - 1;
            }
        }
        if (w->in_flight_since != 0) {
            all[n_all++] = at - w->in_flight_since;
            pending++;
        }
    }
    printf("{\"mode\":\"latency\",\"rst\":%s,\"threads\":%ld,\"per_thread_hz\":%ld,"
           "\"duration_ms\":%ld,\"attempts\":%ld,\"ok\":%ld,\"pending\":%ld,",
           g_rst ? "true" : "false", threads, hz, duration_ms, n_all, n_ok, pending);
    print_errors(g_errors);
    printf(",");
    print_percentiles("latency_ms", all, n_all);
    printf(",");
    print_percentiles("ok_latency_ms", oks, n_ok);
    printf("}\n");
    fflush(stdout);
    _exit(0);  /* threads still blocked in connect() end with the process */
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: connload rate HOST PORT -d MS [-r [-i]]\n"
                        "       connload latency HOST PORT -d MS -t THREADS -p HZ [-g MS] [-r]\n");
        return 64;
    }
    const char *mode = argv[1];
    memset(&g_dest, 0, sizeof g_dest);
    g_dest.sin_family = AF_INET;
    if (inet_pton(AF_INET, argv[2], &g_dest.sin_addr) != 1) {
        fprintf(stderr, "connload: bad HOST (IPv4 literal): %s\n", argv[2]);
        return 64;
    }
    g_dest.sin_port = htons((unsigned short)parse_long(argv[3], "PORT", 1, 65535));
    long duration_ms = 5000, threads = 1, hz = 10, grace_ms = 4000;
    int opt;
    optind = 4;
    while ((opt = getopt(argc, argv, "d:t:p:g:ri")) != -1) {
        switch (opt) {
            case 'd': duration_ms = parse_long(optarg, "duration", 1, MAX_SECONDS * 1000L); break;
            case 't': threads = parse_long(optarg, "threads", 1, MAX_THREADS); break;
            case 'p': hz = parse_long(optarg, "rate per thread", 1, 100000); break;
            case 'g': grace_ms = parse_long(optarg, "grace", 0, 600000); break;
            case 'r': g_rst = 1; break;
            case 'i': g_rst_probe = 1; break;
            default: return 64;
        }
    }
    if (strcmp(mode, "rate") == 0) return run_rate(duration_ms);
    if (strcmp(mode, "latency") == 0) return run_latency(duration_ms, threads, hz, grace_ms);
    fprintf(stderr, "connload: unknown mode %s\n", mode);
    return 64;
}
