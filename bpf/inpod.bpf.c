// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The in-pod capture (docs/datapath.md, "In-pod capture"): ztunnel listens inside each
 * enrolled pod's netns, and these programs hand the pod's TCP (and DNS) to its sockets
 * there, with no iptables in the pod.
 *
 * - inpod_out, TC egress of the pod's eth0 (rows PO1-PO10): a frame to capture is looped
 *   back into eth0's ingress (destination MAC := eth0's own, bpf_redirect with
 *   BPF_F_INGRESS) with INPOD_MARK_LOOP; a socket whose connection's other end is in the
 *   pod (ztunnel's) is marked (inpod_captured), and all it sends later loops too.
 * - inpod_in, TC ingress of the pod's eth0 (rows PL1-PL4, PI1-PI9): the frame's socket is found
 *   (its connection's, else ztunnel's listener) and assigned with bpf_sk_assign; the
 *   loop mark, kept, makes policy routing deliver the foreign destination locally.
 * - inpod_host_in / inpod_host_out, TC egress / ingress of the pod's host veth (rows
 *   PH1-PH9): the node's own TCP to the pod leaves with the probe source, which the pod's
 *   programs let through uncaptured, and nothing else may carry.
 * - inpod_lookup, the socket lookup (SK_LOOKUP) of the pod's netns: a SYN that meets a
 *   TIME_WAIT cannot be assigned at TC; inpod_in leaves ztunnel's listener in
 *   inpod_handoff and this program gives it to the kernel's listener lookup on the
 *   TIME_WAIT path (rows PL5, PI8, PK1-PK3). One entry per SYN in flight: a copy of it
 *   that meets the entry is dropped; the lookup takes the entry.
 * - inpod_vm_in, TC ingress of each interface the pod's reroute-virtual-interfaces
 *   annotation lists (a VM's tap, rows PV1-PV5): its TCP goes to ztunnel's 15001 as the
 *   pod's outbound, before routing could forward it.
 * - inpod_reuseport_probe: the delivery probe (src/capture/inpod/probe.ts).
 *
 * Needs bpf_sk_assign on SO_REUSEPORT sockets (6.5): the agent probes it and falls back
 * to the iptables in-pod capture where it is missing.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ambient_redirect.h"
#include "parse.h"
#include "inpod.h"

/* inpod_config: 0 -> { flags DNS_CAPTURE } */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct inpod_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_config SEC(".maps");

/* probe_flows: { pod ::ffff:198.18.0.10, 8080, 41234, 4 } -> { node ::ffff:198.19.0.1 } */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_PROBE_FLOWS);
	__type(key, struct probe_flow_key);
	__type(value, struct probe_flow_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} probe_flows SEC(".maps");

/* inpod_overrides (the agent's, from each pod's annotations): ::ffff:198.18.0.10 -> { BYPASS_INBOUND } */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_INPOD_PODS);
	__type(key, struct addr_key);
	__type(value, struct inpod_override);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_overrides SEC(".maps");

/*
 * inpod_handoff (written by inpod_in and inpod_vm_in, read and emptied by inpod_lookup; an
 * entry no lookup took goes with the agent's sweep of its generation,
 * src/capture/inpod/handoffs.ts):
 * { ::ffff:198.18.0.10:41234 -> ::ffff:198.19.0.2:8080, 4, gen 1 } -> ztunnel's 15001 listener
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MAX_HANDOFFS);
	__type(key, struct inpod_handoff_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_handoff SEC(".maps");

/*
 * inpod_listeners (written and read by the handoff alone: inpod_in, inpod_vm_in): { ::ffff:198.18.0.10, 15001, 4 }
 * -> ztunnel's 15001 listener, kept while it lives (the kernel removes a closed socket)
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MAX_INPOD_LISTENERS);
	__type(key, struct inpod_listener_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_listeners SEC(".maps");

/*
 * inpod_captured: the pod's sockets whose connection has its other end in the pod -> 1 (set
 * by inpod_out when its lookup finds that end, read by it). Such a connection is ztunnel's
 * (the pod's outbound, or ztunnel's inbound leg to the app), so every later segment of the
 * socket loops too, also once ztunnel's end is gone and a lookup would no longer find it.
 * Not cloned to an accepted socket (no BPF_F_CLONE); the kernel frees an entry with its socket.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_captured SEC(".maps");

/*
 * inpod_tc_running: 0 -> 1 while inpod_out, inpod_in or inpod_vm_in runs on this CPU. Their
 * socket lookups reach the listener lookup, which runs inpod_lookup nested inside them; it
 * reads this to leave inpod_handoff alone there. Per CPU: a TC program runs to its end on
 * one CPU with bottom halves off, so no other lookup of the stack runs there meanwhile.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_tc_running SEC(".maps");

/* inpod_pods (the agent's record): netns inode 4026532890 -> { eth 2, host 14, QDISC_POD } */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_INPOD_PODS);
	__type(key, __u64);
	__type(value, struct inpod_pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_pods SEC(".maps");

/* Marks this CPU as running one of the TC programs (inpod_tc_running), or no longer. */
static __always_inline void tc_running(__u32 on)
{
	__u32 slot = 0;
	__u32 *v = bpf_map_lookup_elem(&inpod_tc_running, &slot);

	if (v)
		*v = on;
}

/* The TC program `name`: name##_frame with this CPU marked as running it. */
#define FLAGGED_TC(name)                                     \
	SEC("tc")                                            \
	int name(struct __sk_buff *skb)                      \
	{                                                    \
		int verdict;                                 \
                                                             \
		tc_running(1);                               \
		verdict = name##_frame(skb);                 \
		tc_running(0);                               \
		return verdict;                              \
	}

/* Whether inpod_lookup runs nested in a lookup of one of the TC programs. */
static __always_inline bool in_tc(void)
{
	__u32 slot = 0;
	__u32 *v = bpf_map_lookup_elem(&inpod_tc_running, &slot);

	return v && *v;
}

#define DNS_PORT 53
#define F_SYN 0x02
#define F_ACK 0x10

/* The pod's annotation flags (enum inpod_override_flags), 0 when it has none. */
static __always_inline __u32 overrides_of(const struct addr_key *pod)
{
	struct inpod_override *o = bpf_map_lookup_elem(&inpod_overrides, pod);

	return o ? o->flags : 0;
}

/* DNS capture for the pod at `pod`: its annotation, else the node's setting. */
static __always_inline bool dns_capture(const struct addr_key *pod)
{
	__u32 slot = INPOD_CONFIG_SLOT;
	struct inpod_config *c;
	__u32 o = overrides_of(pod);

	if (o & INPOD_O_DNS_CAPTURE)
		return true;
	if (o & INPOD_O_NO_DNS_CAPTURE)
		return false;
	c = bpf_map_lookup_elem(&inpod_config, &slot);
	return c && (c->flags & INPOD_F_DNS_CAPTURE);
}

static __always_inline bool is_ip(const struct flow *f)
{
	return f->l3 == L3_IPV4 || f->l3 == L3_IPV6;
}

static __always_inline bool tcp_syn(const struct flow *f)
{
	return (f->tcp_flags & (F_SYN | F_ACK)) == F_SYN;
}

/* One extension header of the walk below: 1 when it is a fragment header. */
static __always_inline int ipv6_frag_step(struct __sk_buff *skb, __u8 *nh, __u32 *off)
{
	__u8 h[2];

	if (*nh == IPPROTO_FRAGMENT)
		return 1;
	if (!parse_ipv6_ext(*nh) || bpf_skb_load_bytes(skb, *off, h, 2) < 0) {
		*nh = IPPROTO_NONE;
		return 0;
	}
	*off += parse_ipv6_hdr_len(*nh, h[1]);
	*nh = h[0];
	return 0;
}

/*
 * Any fragment, first or later: a fragment's socket assignment does not survive
 * reassembly (the stack orphans fragments), so captured protocols never travel in them.
 * IPv6: a fragment header among the first MAX_IPV6_EXT headers (a longer chain is
 * L4_BAD_CHAIN already).
 */
static __always_inline bool fragmented(struct __sk_buff *skb, const struct flow *f)
{
	__u32 off = ETH_HLEN + 40;
	__u8 nh;
	int i;

	if (f->l3 == L3_IPV4) {
		__be16 frag;

		if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &frag, 2) < 0)
			return true;
		return (bpf_ntohs(frag) & 0x3fff) != 0;
	}
	if (f->nonfirst_frag)
		return true;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &nh, 1) < 0)
		return true;
#pragma unroll
	for (i = 0; i < MAX_IPV6_EXT; i++)
		if (ipv6_frag_step(skb, &nh, &off))
			return true;
	return false;
}

/* The frame's tuple; `dport` replaces its destination port, `reverse` swaps the ends. */
static __always_inline __u32 tuple_of(const struct flow *f, struct bpf_sock_tuple *t, __be16 dport, bool reverse)
{
	__builtin_memset(t, 0, sizeof(*t));
	if (f->l3 == L3_IPV4) {
		t->ipv4.saddr = reverse ? f->dst4 : f->src4;
		t->ipv4.daddr = reverse ? f->src4 : f->dst4;
		t->ipv4.sport = reverse ? f->dport : f->sport;
		t->ipv4.dport = reverse ? f->sport : dport;
		return sizeof(t->ipv4);
	}
	__builtin_memcpy(t->ipv6.saddr, reverse ? f->dst.addr : f->src.addr, 16);
	__builtin_memcpy(t->ipv6.daddr, reverse ? f->src.addr : f->dst.addr, 16);
	t->ipv6.sport = reverse ? f->dport : f->sport;
	t->ipv6.dport = reverse ? f->sport : dport;
	return sizeof(t->ipv6);
}

enum conn {
	CONN_NONE = 0, /* no socket of a connection holds the 4-tuple */
	CONN_OPEN,     /* an established, opening or closing socket holds it */
	CONN_TIME_WAIT,
};

/* The connection a TCP frame belongs to in this netns, seen from its receiving end. */
static __always_inline enum conn tcp_conn(struct __sk_buff *skb, const struct flow *f)
{
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	enum conn c = CONN_NONE;
	__u32 len = tuple_of(f, &t, f->dport, false);

	sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return CONN_NONE;
	if (sk->state == BPF_TCP_TIME_WAIT)
		c = CONN_TIME_WAIT;
	else if (sk->state != BPF_TCP_LISTEN)
		c = CONN_OPEN;
	bpf_sk_release(sk);
	return c;
}

/* Whether a socket of this netns sends from the frame's source (any, a listener too). */
static __always_inline bool tcp_sender_socket(struct __sk_buff *skb, const struct flow *f)
{
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	__u32 len = tuple_of(f, &t, 0, true);

	sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return false;
	bpf_sk_release(sk);
	return true;
}

/* ztunnel's listener (TCP) or socket (UDP) on `port` for this frame, or NULL. */
static __always_inline struct bpf_sock *ztunnel_socket(struct __sk_buff *skb, const struct flow *f, __u16 port)
{
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	__u32 len = tuple_of(f, &t, bpf_htons(port), false);

	if (f->proto == IPPROTO_UDP)
		return bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (sk && sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return NULL;
	}
	return sk;
}

/* The frame is DNS the pod (its source) sends and DNS capture takes. */
static __always_inline bool dns_out(const struct flow *f)
{
	return (f->proto == IPPROTO_UDP || f->proto == IPPROTO_TCP) && f->dport == bpf_htons(DNS_PORT) && dns_capture(&f->src);
}

/* The handoff generation of now (INPOD_HANDOFF_GEN_SHIFT). */
static __always_inline __u8 handoff_gen(void)
{
	return (bpf_ktime_get_ns() >> INPOD_HANDOFF_GEN_SHIFT) & (INPOD_HANDOFF_GENS - 1);
}

/* The handoff key of a frame, as the stack's listener lookup will see it, in generation `gen`. */
static __always_inline void handoff_key(struct inpod_handoff_key *k, const struct flow *f, __u8 gen)
{
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->remote, f->src.addr, 16);
	__builtin_memcpy(k->local, f->dst.addr, 16);
	k->remote_port = f->sport;
	k->local_port = f->dport;
	k->family = f->l3 == L3_IPV4 ? 4 : 6;
	k->gen = gen;
}

/* --- inpod_out: TC egress of eth0 in the pod's netns --------------------------------- */

enum out_verdict {
	OUT_PASS = 0,
	OUT_DROP,
	OUT_LOOP,
};

/* The full socket that sends the frame, or NULL (a forwarded frame; a TIME_WAIT's or a request's). */
static __always_inline struct bpf_sock *sender(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;

	return sk ? bpf_sk_fullsock(sk) : NULL;
}

/* PO7: the frame's socket is marked captured (inpod_captured). */
static __always_inline bool captured_socket(struct __sk_buff *skb)
{
	struct bpf_sock *sk = sender(skb);

	return sk && bpf_sk_storage_get(&inpod_captured, sk, 0, 0);
}

/*
 * PO7: marks the frame's socket captured, its connection's other end being in this netns.
 * False only when it could not be marked (no memory): the segment is dropped, and TCP sends
 * it again. A frame with no full socket (forwarded, a request's, a TIME_WAIT's) is not marked.
 */
static __always_inline bool mark_captured(struct __sk_buff *skb)
{
	struct bpf_sock *sk = sender(skb);

	return !sk || bpf_sk_storage_get(&inpod_captured, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
}

static __always_inline enum out_verdict out_verdict(struct __sk_buff *skb, const struct flow *f)
{
	struct bpf_sock *sk;

	if (!is_ip(f))
		return f->l3 == L3_ARP ? OUT_PASS : OUT_DROP;    /* PO1 */
	if ((skb->mark & INPOD_ZTUNNEL_MARK_MASK) == INPOD_ZTUNNEL_MARK)
		return OUT_PASS;                                 /* PO2 */
	if (f->l4 == L4_BAD_CHAIN)
		return OUT_DROP;                                 /* PO3 */
	if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP)
		return OUT_PASS;                                 /* PO4 */
	if (f->proto == IPPROTO_UDP && (f->l4 != L4_OK || f->nonfirst_frag || !dns_out(f)))
		return OUT_PASS;                                 /* PO5 */
	if (f->l4 != L4_OK || fragmented(skb, f))
		return OUT_DROP;                                 /* PO6 */
	if (f->proto == IPPROTO_UDP) {
		sk = ztunnel_socket(skb, f, INPOD_PORT_DNS);
		if (!sk)
			return OUT_DROP;                         /* PO8 */
		bpf_sk_release(sk);
		return OUT_LOOP;                                 /* PO8 */
	}
	/* A new connection loops without a lookup here: inpod_in's own (PL3-PL5) finds
	 * ztunnel's listener for it or drops it, so a lookup here would only repeat them. */
	if (tcp_syn(f))
		return OUT_LOOP;                                 /* PO8 */
	/* The socket's mark first: it outlives ztunnel's end, which the lookup needs. */
	if (captured_socket(skb))
		return OUT_LOOP;                                 /* PO7 */
	if (tcp_conn(skb, f) != CONN_NONE)
		return mark_captured(skb) ? OUT_LOOP : OUT_DROP; /* PO7 */
	if (tcp_sender_socket(skb, f))
		return OUT_PASS;                                 /* PO9 */
	return OUT_DROP;                                         /* PO10 */
}

static __always_inline int inpod_out_frame(struct __sk_buff *skb)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct flow f;

	parse_frame(skb, &f);
	switch (out_verdict(skb, &f)) {
	case OUT_PASS:
		return TC_ACT_OK;
	case OUT_DROP:
		return TC_ACT_SHOT;
	default:
		break;
	}
	/* Frames addressed to another host are PACKET_OTHERHOST on ingress and never reach IP. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	skb->mark = INPOD_MARK_LOOP;
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

FLAGGED_TC(inpod_out)

/* --- inpod_in: TC ingress of eth0 in the pod's netns ---------------------------------- */

/* The probe address of the frame's family, as a key (no global data: built here). */
static __always_inline void probe_addr(struct addr_key *a, bool v4)
{
	if (v4) {
		parse_addr_from_v4(a, bpf_htonl(INPOD_PROBE_ADDR4));
		return;
	}
	/* fd16:9254:7127:1337:ffff:ffff:ffff:ffff */
	*(__be32 *)&a->addr[0] = bpf_htonl(0xfd169254);
	*(__be32 *)&a->addr[4] = bpf_htonl(0x71271337);
	*(__be32 *)&a->addr[8] = 0xffffffff;
	*(__be32 *)&a->addr[12] = 0xffffffff;
}

/* 16 bytes equal (no memcmp in BPF: two 8-byte words, copied to be aligned). */
static __always_inline bool addr16_eq(const __u8 *a, const __u8 *b)
{
	__u64 x[2], y[2];

	__builtin_memcpy(x, a, 16);
	__builtin_memcpy(y, b, 16);
	return x[0] == y[0] && x[1] == y[1];
}

static __always_inline bool is_probe_addr(const struct flow *f, const struct addr_key *a)
{
	struct addr_key p;

	probe_addr(&p, f->l3 == L3_IPV4);
	return addr16_eq(a->addr, p.addr);
}

/* Assigns ztunnel's socket on `port`; no socket (or a refusal) drops: fail closed. */
static __always_inline int deliver(struct __sk_buff *skb, const struct flow *f, __u16 port)
{
	struct bpf_sock *sk = ztunnel_socket(skb, f, port);
	long err;

	if (!sk)
		return TC_ACT_SHOT;
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? TC_ACT_SHOT : TC_ACT_OK;
}

/*
 * The pod's own socket that sent this SYN, still opening (SYN_SENT): proof that the source
 * address is this netns's own, which a raw socket's forged frame does not have.
 */
static __always_inline bool connecting_socket(struct __sk_buff *skb, const struct flow *f)
{
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	bool opening;
	__u32 len = tuple_of(f, &t, 0, true);

	sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return false;
	opening = sk->state == BPF_TCP_SYN_SENT;
	bpf_sk_release(sk);
	return opening;
}

/*
 * Keeps the listener in inpod_listeners under the pod's address (a no-op once it is there).
 * Without it the handoff entry is the listener's only sockmap link, and inpod_lookup's
 * delete of it tears down the socket's sockmap state, which the next handoff builds
 * again; an update that meets the teardown on the other CPU fails (EBUSY).
 * Looked up first: an update links the socket (an allocation, the psock's lock) before
 * it finds the key taken, and every handoff would pay for that.
 */
static __always_inline void keep_listener(struct bpf_sock *sk, const struct flow *f, const struct addr_key *pod, __u16 port)
{
	struct inpod_listener_key k;
	struct bpf_sock *kept;

	__builtin_memset(&k, 0, sizeof(k));
	__builtin_memcpy(k.pod, pod->addr, 16);
	k.port = bpf_htons(port);
	k.family = f->l3 == L3_IPV4 ? 4 : 6;
	kept = bpf_map_lookup_elem(&inpod_listeners, &k);
	if (kept) {
		bpf_sk_release(kept);
		return;
	}
	bpf_map_update_elem(&inpod_listeners, &k, sk, BPF_NOEXIST);
}

/*
 * A SYN meeting a TIME_WAIT (PL5, PI8, PV5): the kernel refuses a new request beside it, so
 * no bpf_sk_assign. The frame passes with ztunnel's listener left in inpod_handoff, under
 * this generation; the stack retires the TIME_WAIT and asks the listener lookup, where
 * inpod_lookup takes the entry and gives it ztunnel's listener. No listener, or no room:
 * dropped (fail closed). An entry already there is another copy of the SYN, on its way to
 * its own lookup: this copy is dropped, since were both to pass, the first lookup would
 * take the one entry and the second would be the kernel's own (the app's listener, around
 * ztunnel); the client sends the SYN again if it needs to. `pod` is the pod's address in
 * the SYN (its source outbound, its destination inbound).
 */
static __always_inline int handoff(struct __sk_buff *skb, const struct flow *f, const struct addr_key *pod, __u16 port)
{
	struct inpod_handoff_key k;
	struct bpf_sock *sk = ztunnel_socket(skb, f, port);
	long err;

	if (!sk)
		return TC_ACT_SHOT;
	keep_listener(sk, f, pod, port);
	handoff_key(&k, f, handoff_gen());
	err = bpf_map_update_elem(&inpod_handoff, &k, sk, BPF_NOEXIST);
	bpf_sk_release(sk);
	return err ? TC_ACT_SHOT : TC_ACT_OK;
}

/*
 * PI7 for a SYN: the connection socket TC found is assigned, so the stack takes the SYN to
 * it (a challenge ACK from an established socket, the SYN-ACK again from a request). Passed
 * instead, the SYN would meet the listener lookup, the app's listener, should that socket
 * close in between (a reset of the connection on another CPU). Looked up again: a socket
 * gone (or become a TIME_WAIT) meanwhile drops the SYN, and the client sends it again.
 */
static __always_inline int assign_conn(struct __sk_buff *skb, const struct flow *f)
{
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	__u32 len = tuple_of(f, &t, f->dport, false);
	long err;

	sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_SHOT;
	if (sk->state == BPF_TCP_LISTEN || sk->state == BPF_TCP_TIME_WAIT) {
		bpf_sk_release(sk);
		return TC_ACT_SHOT;
	}
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? TC_ACT_SHOT : TC_ACT_OK;
}

/*
 * A SYN the pod itself sent (looped by inpod_out, PL2-PL5; or routed to lo, PR8-PR10): an
 * open connection's passes; a new connection's goes to ztunnel's listener (15001, 15053 for
 * DNS it captures), or nowhere; one meeting a TIME_WAIT is handed over, but only for the
 * pod's own connecting socket.
 */
static __always_inline int outbound_syn(struct __sk_buff *skb, const struct flow *f)
{
	enum conn c = tcp_conn(skb, f);
	__u16 port;

	if (c == CONN_OPEN)
		return TC_ACT_OK;
	port = dns_out(f) ? INPOD_PORT_DNS : INPOD_PORT_OUTBOUND;
	if (c == CONN_NONE)
		return deliver(skb, f, port);
	if (!connecting_socket(skb, f))
		return TC_ACT_SHOT;
	return handoff(skb, f, &f->src, port);
}

/* PL1-PL5: the pod's own frame, looped back by inpod_out (the mark stays: routing needs it). */
static __always_inline int in_looped(struct __sk_buff *skb, const struct flow *f)
{

	if (!is_ip(f) || f->l4 != L4_OK || f->nonfirst_frag || fragmented(skb, f))
		return TC_ACT_SHOT;                              /* PL1 */
	if (f->proto == IPPROTO_UDP)
		return dns_out(f) ? deliver(skb, f, INPOD_PORT_DNS) : TC_ACT_SHOT; /* PL4, PL1 */
	if (f->proto != IPPROTO_TCP)
		return TC_ACT_SHOT;                              /* PL1 */
	/* inpod_out loops a segment that is not a SYN only for a connection it found (PO7):
	 * no second lookup for the rest of a captured connection. */
	if (!tcp_syn(f))
		return TC_ACT_OK;                                /* PL2 */
	return outbound_syn(skb, f);                             /* PL2-PL5 */
}

static __always_inline int inpod_in_frame(struct __sk_buff *skb)
{
	struct flow f;
	enum conn c;

	parse_frame(skb, &f);
	if (skb->mark == INPOD_MARK_LOOP)
		return in_looped(skb, &f);                       /* PL1-PL5 */
	if (!is_ip(&f))
		return f.l3 == L3_ARP ? TC_ACT_OK : TC_ACT_SHOT; /* PI1 */
	if (f.l4 == L4_BAD_CHAIN)
		return TC_ACT_SHOT;                              /* PI2 */
	if (f.proto != IPPROTO_TCP)
		return TC_ACT_OK;                                /* PI3 */
	if (f.l4 != L4_OK || fragmented(skb, &f))
		return TC_ACT_SHOT;                              /* PI4 */
	if (is_probe_addr(&f, &f.src))
		return TC_ACT_OK;                                /* PI5 */
	/* Before the connection check: a SYN meeting a TIME_WAIT on 15008 is the kernel's to
	 * handle (its listener is ztunnel's; inpod_lookup finds no handoff for it). */
	if (f.dport == bpf_htons(INPOD_PORT_HBONE))
		return TC_ACT_OK;                                /* PI6 */
	c = tcp_conn(skb, &f);
	if (c == CONN_OPEN && tcp_syn(&f))
		return assign_conn(skb, &f);                     /* PI7 */
	if (c == CONN_OPEN || (c == CONN_TIME_WAIT && !tcp_syn(&f)))
		return TC_ACT_OK;                                /* PI7 */
	if (overrides_of(&f.dst) & INPOD_O_BYPASS_INBOUND)
		return TC_ACT_OK;                                /* PI7b */
	if (c == CONN_TIME_WAIT)
		return handoff(skb, &f, &f.dst, INPOD_PORT_INBOUND); /* PI8 */
	return deliver(skb, &f, INPOD_PORT_INBOUND);             /* PI9 */
}

FLAGGED_TC(inpod_in)

/* --- inpod_lo_in: TC ingress of lo in the pod's netns ------------------------------------ */

/*
 * The destination is this netns's own as the kernel chose it: loopback (127.0.0.0/8, ::1),
 * or the source itself (a socket not bound elsewhere that connects to one of the netns's
 * addresses gets that address as its source). Routes of the local table come before the
 * local route's rule, so such a SYN never came by that rule; a SYN the rule sent has the
 * pod's address as its source and a foreign destination.
 */
static __always_inline bool to_itself(const struct flow *f)
{
	__u64 w[2];

	if (f->l3 == L3_IPV4)
		return (bpf_ntohl(f->dst4) >> 24) == 127 || f->dst4 == f->src4;
	if (addr16_eq(f->dst.addr, f->src.addr))
		return true;
	__builtin_memcpy(w, f->dst.addr, 16);
	return w[0] == 0 && w[1] == bpf_cpu_to_be64(1);
}

/*
 * Everything on lo is delivered in this netns: nothing here can leave the pod, so the one
 * question is which socket a new connection reaches. The local route (INPOD_RULE_PREF_LOCAL)
 * sends the pod's own TCP to foreign destinations here, so its SYNs are given to ztunnel's
 * listener as inpod_in gives a looped one (rows PR1-PR10).
 */
static __always_inline int inpod_lo_in_frame(struct __sk_buff *skb)
{
	struct flow f;

	parse_frame(skb, &f);
	if (!is_ip(&f))
		return f.l3 == L3_ARP ? TC_ACT_OK : TC_ACT_SHOT; /* PR1 */
	if (f.l4 == L4_BAD_CHAIN)
		return TC_ACT_SHOT;                              /* PR2 */
	if (f.proto != IPPROTO_TCP)
		return TC_ACT_OK;                                /* PR3 */
	if (f.l4 != L4_OK || fragmented(skb, &f))
		return TC_ACT_SHOT;                              /* PR4 */
	if ((skb->mark & INPOD_ZTUNNEL_MARK_MASK) == INPOD_ZTUNNEL_MARK)
		return TC_ACT_OK;                                /* PR5 */
	if (!tcp_syn(&f))
		return TC_ACT_OK;                                /* PR6 */
	if (to_itself(&f))
		return TC_ACT_OK;                                /* PR7 */
	return outbound_syn(skb, &f);                            /* PR8-PR10 */
}

FLAGGED_TC(inpod_lo_in)

/* --- inpod_vm_in: TC ingress of a VM's interface inside the pod's netns ------------------ */

/*
 * An interface the pod's `reroute-virtual-interfaces` annotation lists (a VM's tap): its
 * TCP is the pod's outbound, whatever its source (the VM's own address, or one the pod
 * NATs later). It goes to ztunnel's 15001 before routing could forward it, as inpod_in
 * delivers a looped frame: the loop mark makes policy routing deliver the foreign
 * destination locally, to the socket bpf_sk_assign picked (rows PV1-PV5).
 */
static __always_inline int inpod_vm_in_frame(struct __sk_buff *skb)
{
	struct flow f;
	enum conn c;

	parse_frame(skb, &f);
	if (!is_ip(&f))
		return f.l3 == L3_ARP ? TC_ACT_OK : TC_ACT_SHOT; /* PV1 */
	if (f.l4 == L4_BAD_CHAIN)
		return TC_ACT_SHOT;                              /* PV2 */
	if (f.proto != IPPROTO_TCP)
		return TC_ACT_OK;                                /* PV1: forwarded, judged by inpod_out */
	if (f.l4 != L4_OK || fragmented(skb, &f))
		return TC_ACT_SHOT;                              /* PV2 */
	skb->mark = INPOD_MARK_LOOP;
	c = tcp_conn(skb, &f);
	if (c == CONN_OPEN || (c == CONN_TIME_WAIT && !tcp_syn(&f)))
		return TC_ACT_OK;                                /* PV3: ztunnel's side of it */
	if (!tcp_syn(&f))
		return TC_ACT_SHOT;                              /* PV4: no connection to forward it around */
	if (c == CONN_TIME_WAIT)
		return handoff(skb, &f, &f.src, INPOD_PORT_OUTBOUND); /* PV5 */
	return deliver(skb, &f, INPOD_PORT_OUTBOUND);            /* PV5 */
}

FLAGGED_TC(inpod_vm_in)

/* --- the pod's host veth: the node's own TCP gets the probe source -------------------- */

static __always_inline void probe_key(struct probe_flow_key *k, const struct flow *f, bool to_pod)
{
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->pod, to_pod ? f->dst.addr : f->src.addr, 16);
	k->pod_port = to_pod ? f->dport : f->sport;
	k->node_port = to_pod ? f->sport : f->dport;
	k->family = f->l3 == L3_IPV4 ? 4 : 6;
}

#define IPV4_SRC_OFF (ETH_HLEN + 12)
#define IPV4_DST_OFF (ETH_HLEN + 16)
#define IPV6_SRC_OFF (ETH_HLEN + 8)
#define IPV6_DST_OFF (ETH_HLEN + 24)
#define IPV4_CSUM_OFF (ETH_HLEN + 10)

/* Rewrites the source (or destination) address, fixing the IPv4 and TCP checksums. */
static __always_inline int rewrite_addr(struct __sk_buff *skb, const struct flow *f, bool source, const __u8 *to)
{
	__u32 tcp_csum = f->l4_off + 16;

	if (f->l3 == L3_IPV4) {
		__be32 from = source ? f->src4 : f->dst4;
		__be32 new4;

		__builtin_memcpy(&new4, to + 12, 4);
		if (bpf_l4_csum_replace(skb, tcp_csum, from, new4, BPF_F_PSEUDO_HDR | 4) < 0 ||
		    bpf_l3_csum_replace(skb, IPV4_CSUM_OFF, from, new4, 4) < 0 ||
		    bpf_skb_store_bytes(skb, source ? IPV4_SRC_OFF : IPV4_DST_OFF, &new4, 4, 0) < 0)
			return -1;
		return 0;
	} else {
		__u8 from[16];
		__s64 diff;

		__builtin_memcpy(from, source ? f->src.addr : f->dst.addr, 16);
		diff = bpf_csum_diff((__be32 *)from, 16, (__be32 *)to, 16, 0);
		if (diff < 0 || bpf_l4_csum_replace(skb, tcp_csum, 0, diff, BPF_F_PSEUDO_HDR) < 0 ||
		    bpf_skb_store_bytes(skb, source ? IPV6_SRC_OFF : IPV6_DST_OFF, to, 16, 0) < 0)
			return -1;
		return 0;
	}
}

/* TC egress of the pod's host veth: frames to the pod. */
SEC("tc")
int inpod_host_in(struct __sk_buff *skb)
{
	struct probe_flow_key k;
	struct probe_flow_info *known, v;
	struct addr_key probe;
	struct flow f;

	parse_frame(skb, &f);
	if (!is_ip(&f))
		return TC_ACT_OK;                                /* PH1 */
	if (is_probe_addr(&f, &f.src))
		return TC_ACT_SHOT;                              /* PH2 */
	if (skb->ingress_ifindex != 0 || f.proto != IPPROTO_TCP || f.l4 != L4_OK || f.nonfirst_frag)
		return TC_ACT_OK;                                /* PH3 */
	probe_key(&k, &f, true);
	if (tcp_syn(&f)) {
		__builtin_memcpy(v.node, f.src.addr, 16);
		/* A full map evicts its oldest flow (LRU). */
		if (bpf_map_update_elem(&probe_flows, &k, &v, BPF_ANY) < 0)
			return TC_ACT_SHOT;                      /* PH4 */
	} else {
		known = bpf_map_lookup_elem(&probe_flows, &k);
		if (!known || !addr16_eq(known->node, f.src.addr))
			return TC_ACT_OK;                        /* PH6 */
	}
	probe_addr(&probe, f.l3 == L3_IPV4);
	return rewrite_addr(skb, &f, true, probe.addr) < 0 ? TC_ACT_SHOT : TC_ACT_OK; /* PH4, PH5 */
}

/* TC ingress of the pod's host veth: frames from the pod. */
SEC("tc")
int inpod_host_out(struct __sk_buff *skb)
{
	struct probe_flow_key k;
	struct probe_flow_info *known;
	__u8 node[16];
	struct flow f;

	parse_frame(skb, &f);
	if (!is_ip(&f) || !is_probe_addr(&f, &f.dst))
		return TC_ACT_OK;                                /* PH7 */
	if (f.proto != IPPROTO_TCP || f.l4 != L4_OK || f.nonfirst_frag)
		return TC_ACT_SHOT;                              /* PH9 */
	probe_key(&k, &f, false);
	known = bpf_map_lookup_elem(&probe_flows, &k);
	if (!known)
		return TC_ACT_SHOT;                              /* PH9 */
	__builtin_memcpy(node, known->node, 16);
	return rewrite_addr(skb, &f, false, node) < 0 ? TC_ACT_SHOT : TC_ACT_OK; /* PH8 */
}

/* --- inpod_lookup: the socket lookup of the pod's netns ------------------------------- */

#define AF_INET 2
#define AF_INET6 10

/*
 * Runs on every listener (and unconnected UDP) lookup in the pod's netns; acts only on a
 * TCP lookup whose 4-tuple a TC program handed over, in this generation or the one before
 * (PK1): gives it ztunnel's listener and takes the entry. Each entry has one SYN on its
 * way to a lookup (a copy meeting it was dropped at TC), so each such SYN finds one. An
 * entry no lookup took (a SYN the TIME_WAIT answered itself) is the agent's to sweep.
 * Anything else: the kernel's own lookup (PK3).
 */
SEC("sk_lookup")
int inpod_lookup(struct bpf_sk_lookup *ctx)
{
	struct inpod_handoff_key k;
	struct bpf_sock *sk;
	long err;
	__u8 gen;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;                                  /* PK3 */
	/* A lookup of our own TC programs (what holds this 4-tuple in the kernel's view): an
	 * entry taken here would be missing to the SYN it waits for. */
	if (in_tc())
		return SK_PASS;                                  /* PK3 */
	__builtin_memset(&k, 0, sizeof(k));
	if (ctx->family == AF_INET) {
		__be32 r = ctx->remote_ip4, l = ctx->local_ip4;

		k.remote[10] = k.remote[11] = 0xff;
		k.local[10] = k.local[11] = 0xff;
		__builtin_memcpy(&k.remote[12], &r, 4);
		__builtin_memcpy(&k.local[12], &l, 4);
		k.family = 4;
	} else if (ctx->family == AF_INET6) {
		__u32 r[4], l[4];

		r[0] = ctx->remote_ip6[0];
		r[1] = ctx->remote_ip6[1];
		r[2] = ctx->remote_ip6[2];
		r[3] = ctx->remote_ip6[3];
		l[0] = ctx->local_ip6[0];
		l[1] = ctx->local_ip6[1];
		l[2] = ctx->local_ip6[2];
		l[3] = ctx->local_ip6[3];
		__builtin_memcpy(k.remote, r, 16);
		__builtin_memcpy(k.local, l, 16);
		k.family = 6;
	} else {
		return SK_PASS;                                  /* PK3 */
	}
	/* remote_port: network order in the low 16 bits (a 16-bit field from 5.19). */
	k.remote_port = (__u16)ctx->remote_port;
	k.local_port = bpf_htons((__u16)ctx->local_port);
	gen = handoff_gen();
	k.gen = gen;
	sk = bpf_map_lookup_elem(&inpod_handoff, &k);
	if (!sk) {
		k.gen = (gen + INPOD_HANDOFF_GENS - 1) & (INPOD_HANDOFF_GENS - 1);
		sk = bpf_map_lookup_elem(&inpod_handoff, &k);
	}
	if (!sk)
		return SK_PASS;                                  /* PK3 */
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	bpf_map_delete_elem(&inpod_handoff, &k);
	return err ? SK_DROP : SK_PASS;                          /* PK2, PK1 */
}

/* --- the delivery probe ------------------------------------------------------------- */

/*
 * Loaded on lo of a throwaway netns by the agent (src/capture/inpod/probe.ts): a UDP
 * datagram to port INPOD_PROBE_TO is assigned to the SO_REUSEPORT socket on
 * INPOD_PROBE_REUSEPORT. The agent learns which socket received it.
 */
#define INPOD_PROBE_TO 15999
#define INPOD_PROBE_REUSEPORT 15998

SEC("tc")
int inpod_reuseport_probe(struct __sk_buff *skb)
{
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	struct flow f;

	parse_frame(skb, &f);
	if (f.l3 != L3_IPV4 || f.proto != IPPROTO_UDP || f.l4 != L4_OK || f.dport != bpf_htons(INPOD_PROBE_TO))
		return TC_ACT_OK;
	__builtin_memset(&t, 0, sizeof(t));
	t.ipv4.saddr = f.src4;
	t.ipv4.daddr = f.dst4;
	t.ipv4.sport = f.sport;
	t.ipv4.dport = bpf_htons(INPOD_PROBE_REUSEPORT);
	sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_OK;
	bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
