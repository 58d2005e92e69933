// SPDX-License-Identifier: GPL-2.0
/* tcpfix attach: the policies the kernel can carry, for every program in a
 * cgroup (static and Go binaries, set-user-ID programs, whole services).
 *
 *   tcpfix_sockops     sock_ops: the SYN RTO of matched connects
 *                      (TIMEOUT_INIT), their outcome and latency, and their
 *                      state changes into the ring buffer (CLOSE_WAIT in and
 *                      out; FIN_WAIT2/CLOSING -> CLOSE, when a TIME_WAIT
 *                      entry takes the socket's place)
 *   tcpfix_connect4/6  cgroup/connect4, connect6: bind a matched connect
 *                      from an unbound socket to the next source address,
 *                      port 0 (IP_BIND_ADDRESS_NO_PORT semantics)
 *
 * Everything that acts on a socket afterwards (destroying a TIME_WAIT entry,
 * reaping a CLOSE_WAIT leak) is the daemon's, over sock_diag: sock_ops can
 * neither abort a connection nor set SO_LINGER.
 *
 * The configuration is read-only data the daemon fills before loading, so
 * the verifier prunes what is switched off. GPL: bpf_sk_storage and the
 * ring buffer are GPL-only helpers. */
#include "vmlinux.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "attach.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6

char LICENSE[] SEC("license") = "GPL";

extern int CONFIG_HZ __kconfig;

const volatile __u64 cfg_syn_rto_ns = 0; /* 0: the kernel's own initial RTO */
const volatile __u32 cfg_flags = 0;
const volatile __u32 cfg_rule_count = 0; /* 0: every destination */
const volatile struct tcpfix_rule cfg_rules[TCPFIX_MAX_RULES] = {};
const volatile __u32 cfg_source4_count = 0;
const volatile struct tcpfix_source cfg_source4[TCPFIX_MAX_ADDRS] = {};
const volatile __u32 cfg_source6_count = 0;
const volatile struct tcpfix_source cfg_source6[TCPFIX_MAX_ADDRS] = {};

/* The SYN RTO the kernel was given, in jiffies (for the daemon to report). */
__u32 syn_rto_jiffies = 0;
/* Round-robin positions over the source addresses. */
__u64 next_source4 = 0, next_source6 = 0;

struct counters {
	__u64 c[TCPFIX_C_COUNT];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counters);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* What the daemon's log needs about a matched connection, kept with the
 * socket (freed with it) from its connect on. */
struct tcpfix_sk {
	__u64 connect_ns;
	__u32 pid;
	__u32 pad;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tcpfix_sk);
} sk_info SEC(".maps");

static __always_inline void count(__u32 index, __u64 n)
{
	__u32 zero = 0;
	struct counters *c = bpf_map_lookup_elem(&counters, &zero);

	if (c && index < TCPFIX_C_COUNT)
		__sync_fetch_and_add(&c->c[index], n);
}

/* An endpoint as the rules see it: IPv4-mapped IPv6 turned into IPv4. */
struct endpoint {
	__u8 family;
	__u16 port;
	__u8 addr[16];
};

static __always_inline void set_ip6(struct endpoint *ep, const __u32 *ip6)
{
	if (ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0xffff)) {
		ep->family = AF_INET;
		__builtin_memcpy(ep->addr, &ip6[3], 4);
		return;
	}
	ep->family = AF_INET6;
	__builtin_memcpy(ep->addr, ip6, 16);
}

/* TCPFIX_MATCH, as policy::Matcher::matches reads it. */
static __always_inline bool matches(const struct endpoint *ep)
{
	if (cfg_rule_count == 0)
		return true;
	for (int i = 0; i < TCPFIX_MAX_RULES; i++) {
		if (i >= cfg_rule_count)
			break;
		if (tcpfix_rule_matches(&cfg_rules[i], ep->family, ep->addr, ep->port))
			return true;
	}
	return false;
}

static __always_inline void skops_remote(const struct bpf_sock_ops *s, struct endpoint *ep)
{
	/* remote_port holds the network-order port in its upper half. */
	ep->port = (__u16)bpf_ntohl(s->remote_port);
	if (s->family == AF_INET6) {
		__u32 ip6[4] = {s->remote_ip6[0], s->remote_ip6[1], s->remote_ip6[2],
				s->remote_ip6[3]};
		set_ip6(ep, ip6);
	} else {
		__u32 ip4 = s->remote_ip4;
		ep->family = AF_INET;
		__builtin_memcpy(ep->addr, &ip4, 4);
	}
}

static __always_inline __u32 rto_jiffies(void)
{
	__u64 hz = CONFIG_HZ > 0 ? CONFIG_HZ : 1000;
	__u64 j = (cfg_syn_rto_ns * hz + 999999999ull) / 1000000000ull;

	return j == 0 ? 1 : (__u32)j;
}

static __always_inline void report(struct bpf_sock_ops *s, __u8 kind, __u32 old_state,
				   __u32 new_state)
{
	struct tcpfix_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count(TCPFIX_C_EVENTS_LOST, 1);
		return;
	}
	e->cookie = bpf_get_socket_cookie(s);
	e->netns = (cfg_flags & TCPFIX_RECORD_NETNS) ? bpf_get_netns_cookie(s) : 0;
	e->time_ns = bpf_ktime_get_ns();
	e->kind = kind;
	e->family = (__u8)s->family;
	e->old_state = (__u8)old_state;
	e->new_state = (__u8)new_state;
	e->local_port = (__u16)s->local_port;
	e->remote_port = (__u16)bpf_ntohl(s->remote_port);
	if (s->family == AF_INET6) {
		__u32 l[4] = {s->local_ip6[0], s->local_ip6[1], s->local_ip6[2], s->local_ip6[3]};
		__u32 r[4] = {s->remote_ip6[0], s->remote_ip6[1], s->remote_ip6[2],
			      s->remote_ip6[3]};
		__builtin_memcpy(e->local, l, 16);
		__builtin_memcpy(e->remote, r, 16);
	} else {
		__u32 l = s->local_ip4, r = s->remote_ip4;
		__builtin_memset(e->local, 0, 16);
		__builtin_memset(e->remote, 0, 16);
		__builtin_memcpy(e->local, &l, 4);
		__builtin_memcpy(e->remote, &r, 4);
	}
	e->pid = 0;
	__builtin_memset(e->comm, 0, sizeof(e->comm));
	struct bpf_sock *sk = s->sk;
	if (sk) {
		struct tcpfix_sk *info = bpf_sk_storage_get(&sk_info, sk, 0, 0);
		if (info) {
			e->pid = info->pid;
			__builtin_memcpy(e->comm, info->comm, sizeof(e->comm));
		}
	}
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void on_connect(struct bpf_sock_ops *s)
{
	struct endpoint ep = {};

	count(TCPFIX_C_CONNECTS, 1);
	skops_remote(s, &ep);
	if (!matches(&ep))
		return;
	count(TCPFIX_C_CONNECTS_MATCHED, 1);
	if (cfg_syn_rto_ns)
		count(TCPFIX_C_SYN_RTO_SET, 1);

	struct bpf_sock *sk = s->sk;
	struct tcpfix_sk *info =
	    sk ? bpf_sk_storage_get(&sk_info, sk, 0, BPF_SK_STORAGE_GET_F_CREATE) : 0;
	if (info) {
		info->connect_ns = bpf_ktime_get_ns();
		/* TCP_CONNECT_CB runs in the connect() call: the caller is current. */
		if (cfg_flags & TCPFIX_RECORD_PID) {
			info->pid = (__u32)(bpf_get_current_pid_tgid() >> 32);
			bpf_get_current_comm(info->comm, sizeof(info->comm));
		}
	} else {
		count(TCPFIX_C_STORAGE_FAILED, 1);
	}
	/* State changes (outcome, CLOSE_WAIT, TIME_WAIT) and SYN retransmits
	 * of this connection from now on. */
	bpf_sock_ops_cb_flags_set(s, s->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG |
					 BPF_SOCK_OPS_RETRANS_CB_FLAG);
}

static __always_inline void on_established(struct bpf_sock_ops *s)
{
	struct bpf_sock *sk = s->sk;
	struct tcpfix_sk *info;

	if (!(s->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG))
		return; /* not a matched connect */
	count(TCPFIX_C_ESTABLISHED, 1);
	info = sk ? bpf_sk_storage_get(&sk_info, sk, 0, 0) : 0;
	if (info && info->connect_ns)
		count(TCPFIX_C_LATENCY +
			  tcpfix_latency_bucket(bpf_ktime_get_ns() - info->connect_ns),
		      1);
	/* Retransmits of data are none of our business. */
	bpf_sock_ops_cb_flags_set(s, s->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_RETRANS_CB_FLAG);
}

static __always_inline void on_state(struct bpf_sock_ops *s, __u32 old_state, __u32 new_state)
{
	if (old_state == BPF_TCP_SYN_SENT && new_state == BPF_TCP_CLOSE) {
		/* The handshake failed (refused, timed out) or was abandoned. */
		__u32 err = 0;
		struct bpf_sock *sk = s->sk;
		struct tcp_sock *tp = sk ? bpf_skc_to_tcp_sock(sk) : 0;
		if (tp)
			err = (__u32)tp->inet_conn.icsk_inet.sk.sk_err;
		count(TCPFIX_C_FAILED, 1);
		if (err > 0 && err < TCPFIX_MAX_ERRNO)
			count(TCPFIX_C_ERRNO + err, 1);
		return;
	}
	if (cfg_flags & TCPFIX_WANT_CLOSE_WAIT) {
		if (new_state == BPF_TCP_CLOSE_WAIT)
			report(s, TCPFIX_EV_CLOSE_WAIT, old_state, new_state);
		else if (old_state == BPF_TCP_CLOSE_WAIT)
			report(s, TCPFIX_EV_LEFT_CLOSE_WAIT, old_state, new_state);
	}
	if ((cfg_flags & TCPFIX_WANT_TIME_WAIT) && new_state == BPF_TCP_CLOSE &&
	    (old_state == BPF_TCP_FIN_WAIT2 || old_state == BPF_TCP_CLOSING))
		report(s, TCPFIX_EV_TIME_WAIT, old_state, new_state);
}

SEC("sockops")
int tcpfix_sockops(struct bpf_sock_ops *s)
{
	struct endpoint ep = {};

	switch (s->op) {
	case BPF_SOCK_OPS_TIMEOUT_INIT:
		/* Asked for the initial RTO: of the SYN on an active connect
		 * (a full socket in SYN_SENT), of the SYN-ACK for a request
		 * socket. Asked more than once per connect: same answer. */
		if (!cfg_syn_rto_ns || !s->is_fullsock || s->state != BPF_TCP_SYN_SENT)
			break;
		skops_remote(s, &ep);
		if (!matches(&ep))
			break;
		s->reply = (int)rto_jiffies();
		syn_rto_jiffies = (__u32)s->reply;
		break;
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		on_connect(s);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		on_established(s);
		break;
	case BPF_SOCK_OPS_RETRANS_CB:
		if (s->state == BPF_TCP_SYN_SENT)
			count(TCPFIX_C_SYN_RETRANSMITS, 1);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		on_state(s, s->args[0], s->args[1]);
		break;
	default:
		break;
	}
	return 1;
}

/* The next source address of the list for this family, round robin;
 * NULL when there is none. */
static __always_inline const volatile struct tcpfix_source *next_source(bool ipv4)
{
	__u32 n = ipv4 ? cfg_source4_count : cfg_source6_count;
	__u64 turn;

	if (n == 0)
		return 0;
	turn = __sync_fetch_and_add(ipv4 ? &next_source4 : &next_source6, 1);
	/* 32-bit arithmetic and a mask: an index the verifier can bound. */
	__u32 i = ((__u32)turn % n) & (TCPFIX_MAX_ADDRS - 1);
	return ipv4 ? &cfg_source4[i] : &cfg_source6[i];
}

static __always_inline void count_bind(__u32 index, long err)
{
	if (index >= TCPFIX_MAX_ADDRS)
		return;
	count(err == 0 ? TCPFIX_C_BINDS + index : TCPFIX_C_BIND_FAILED + index, 1);
}

SEC("cgroup/connect4")
int tcpfix_connect4(struct bpf_sock_addr *ctx)
{
	struct endpoint ep = {};
	struct bpf_sock *sk = ctx->sk;
	__u32 dst = ctx->user_ip4;

	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP || !sk)
		return 1;
	ep.family = AF_INET;
	ep.port = bpf_ntohs((__u16)ctx->user_port);
	__builtin_memcpy(ep.addr, &dst, 4);
	if (!matches(&ep))
		return 1;
	if (sk->src_ip4 != 0 || sk->src_port != 0) {
		count(TCPFIX_C_SOURCE_SKIPPED, 1); /* the application chose its own */
		return 1;
	}
	const volatile struct tcpfix_source *src = next_source(true);
	if (!src)
		return 1;
	struct sockaddr_in sa = {};
	sa.sin_family = AF_INET;
	__builtin_memcpy(&sa.sin_addr.s_addr, (const void *)src->addr, 4);
	count_bind(src->index, bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)));
	return 1;
}

SEC("cgroup/connect6")
int tcpfix_connect6(struct bpf_sock_addr *ctx)
{
	struct endpoint ep = {};
	struct bpf_sock *sk = ctx->sk;
	__u32 dst[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};

	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP || !sk)
		return 1;
	ep.port = bpf_ntohs((__u16)ctx->user_port);
	set_ip6(&ep, dst);
	if (!matches(&ep))
		return 1;
	if (sk->src_ip6[0] != 0 || sk->src_ip6[1] != 0 || sk->src_ip6[2] != 0 ||
	    sk->src_ip6[3] != 0 || sk->src_port != 0) {
		count(TCPFIX_C_SOURCE_SKIPPED, 1);
		return 1;
	}
	/* An IPv4 destination on an IPv6 socket takes an IPv4 source, mapped. */
	bool ipv4 = ep.family == AF_INET;
	const volatile struct tcpfix_source *src = next_source(ipv4);
	if (!src)
		return 1;
	struct sockaddr_in6 sa = {};
	sa.sin6_family = AF_INET6;
	if (ipv4) {
		sa.sin6_addr.in6_u.u6_addr32[2] = bpf_htonl(0xffff);
		__builtin_memcpy(&sa.sin6_addr.in6_u.u6_addr32[3], (const void *)src->addr, 4);
	} else {
		__builtin_memcpy(&sa.sin6_addr, (const void *)src->addr, 16);
	}
	count_bind(src->index, bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)));
	return 1;
}
