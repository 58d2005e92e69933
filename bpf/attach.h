/* What crosses between tcpfix attach's BPF programs (attach.bpf.c) and the
 * daemon (tools/attach_*.cpp): the configuration it writes before loading,
 * the counters it reads, the events it receives. C, so that both clang's BPF
 * target (with vmlinux.h) and g++ read it; fixed sizes only. */
#ifndef TCPFIX_BPF_ATTACH_H
#define TCPFIX_BPF_ATTACH_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define TCPFIX_MAX_RULES 32    /* TCPFIX_MATCH items */
#define TCPFIX_MAX_ADDRS 32    /* TCPFIX_SOURCE_ADDRS, as policy::Counters::kMaxSourceAddrs */
#define TCPFIX_MAX_ERRNO 134   /* as policy::Counters::kMaxErrno */
#define TCPFIX_LAT_BUCKETS 160 /* as policy::LatencyHistogram::kBuckets */

/* One TCPFIX_MATCH item. family 0 matches any address; port 0 any port.
 * IPv4 addresses sit in addr[0..3]; IPv4-mapped IPv6 destinations are
 * compared as IPv4, as the library does. */
struct tcpfix_rule {
	__u8 family; /* 0, AF_INET (2) or AF_INET6 (10) */
	__u8 prefix_len;
	__u16 port; /* host byte order */
	__u8 addr[16];
};

/* One TCPFIX_SOURCE_ADDRS entry, with its place in the list as given (the
 * index of its counters). */
struct tcpfix_source {
	__u32 index;
	__u8 addr[16]; /* IPv4 in addr[0..3] */
};

/* cfg_flags */
#define TCPFIX_WANT_TIME_WAIT 1u  /* --close rst: report FIN_WAIT2/CLOSING -> CLOSE */
#define TCPFIX_WANT_CLOSE_WAIT 2u /* --reap-close-wait: report CLOSE_WAIT in and out */
#define TCPFIX_RECORD_PID 4u	  /* bpf_get_current_pid_tgid() works in sock_ops */
#define TCPFIX_RECORD_NETNS 8u	  /* bpf_get_netns_cookie() works in sock_ops */

/* The per-CPU counter array: fixed counters first, then the ranges. */
enum tcpfix_counter {
	TCPFIX_C_CONNECTS,	   /* active TCP connects that sent a SYN */
	TCPFIX_C_CONNECTS_MATCHED, /* ... whose destination passes TCPFIX_MATCH */
	TCPFIX_C_SYN_RTO_SET,	   /* matched connects given the SYN RTO */
	TCPFIX_C_SYN_RETRANSMITS,  /* SYNs sent again by matched connects */
	TCPFIX_C_ESTABLISHED,	   /* matched connects that completed */
	TCPFIX_C_FAILED,	   /* matched connects that ended in SYN_SENT */
	TCPFIX_C_SOURCE_SKIPPED,   /* matched connects from a socket the app bound itself */
	TCPFIX_C_EVENTS_LOST,	   /* ring buffer full: an event the daemon never saw */
	TCPFIX_C_STORAGE_FAILED,   /* no socket storage: a connect tracked without pid */
	TCPFIX_C_FIXED,
	TCPFIX_C_ERRNO = TCPFIX_C_FIXED,			  /* [errno]: failed connects */
	TCPFIX_C_LATENCY = TCPFIX_C_ERRNO + TCPFIX_MAX_ERRNO,	  /* [bucket]: completed connects */
	TCPFIX_C_BINDS = TCPFIX_C_LATENCY + TCPFIX_LAT_BUCKETS,	  /* [source]: bpf_bind() done */
	TCPFIX_C_BIND_FAILED = TCPFIX_C_BINDS + TCPFIX_MAX_ADDRS, /* [source]: bpf_bind() refused */
	TCPFIX_C_COUNT = TCPFIX_C_BIND_FAILED + TCPFIX_MAX_ADDRS,
};

/* What a ring-buffer event reports. */
enum tcpfix_event_kind {
	TCPFIX_EV_CLOSE_WAIT = 1,      /* the peer closed; the application has not */
	TCPFIX_EV_LEFT_CLOSE_WAIT = 2, /* ... and now it has (or the socket died) */
	TCPFIX_EV_TIME_WAIT = 3, /* FIN_WAIT2 or CLOSING -> CLOSE: a TIME_WAIT entry now stands
				    in the socket's place (tcp_time_wait() hashes it first) */
};

struct tcpfix_event {
	__u64 cookie;  /* the socket's cookie (the TIME_WAIT entry has its own) */
	__u64 netns;   /* its network namespace's cookie (0: the kernel cannot say) */
	__u64 time_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 pid;     /* the process that connected (0: unknown) */
	__u8 kind;
	__u8 family; /* the socket's: AF_INET or AF_INET6 */
	__u8 old_state, new_state;
	__u16 local_port, remote_port; /* host byte order */
	__u8 local[16], remote[16];    /* as the socket holds them: IPv4 in [0..3] */
	char comm[16];
};

/* The pieces of the BPF programs' logic that have a twin in policy/, here
 * so that the unit tests can hold them side by side
 * (tests/unit/attach_shared_test.cpp). Always inlined: no BPF subprograms. */
#define TCPFIX_INLINE static inline __attribute__((always_inline))

/* policy::LatencyHistogram::bucket_of: four buckets per power of two from
 * 1 us, without a count-leading-zeros instruction. */
TCPFIX_INLINE __u32 tcpfix_latency_bucket(__u64 ns)
{
	__u64 v, quarter_ns, sub, b;
	__u32 exp = 0;

	if (ns < 1000)
		return 0;
	v = ns / 1000;
	if (v >> 32) {
		exp += 32;
		v >>= 32;
	}
	if (v >> 16) {
		exp += 16;
		v >>= 16;
	}
	if (v >> 8) {
		exp += 8;
		v >>= 8;
	}
	if (v >> 4) {
		exp += 4;
		v >>= 4;
	}
	if (v >> 2) {
		exp += 2;
		v >>= 2;
	}
	if (v >> 1) {
		exp += 1;
	}
	quarter_ns = 250ull << exp;
	sub = (ns - 4 * quarter_ns) / quarter_ns;
	b = 1 + (__u64)exp * 4 + sub;
	return b < TCPFIX_LAT_BUCKETS ? (__u32)b : TCPFIX_LAT_BUCKETS - 1;
}

/* policy::MatchRule::matches for an endpoint already normalised (IPv4-mapped
 * IPv6 as IPv4): family, address bytes, port in host byte order. */
TCPFIX_INLINE int tcpfix_rule_matches(const volatile struct tcpfix_rule *r, __u8 family,
				      const __u8 *addr, __u16 port)
{
	__u32 bits = r->prefix_len;

	if (r->port != 0 && r->port != port)
		return 0;
	if (r->family == 0)
		return 1;
	if (r->family != family)
		return 0;
	for (int i = 0; i < 16; i++) {
		__u8 mask;

		if (bits == 0)
			return 1;
		mask = bits >= 8 ? 0xff : (__u8)(0xff << (8 - bits));
		if ((r->addr[i] ^ addr[i]) & mask)
			return 0;
		bits = bits >= 8 ? bits - 8 : 0;
	}
	return 1;
}

#endif
