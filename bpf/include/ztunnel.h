/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ztunnel-side delivery: rows Z1–Z11 of docs/datapath.md, on ztunnel's eth0 inside its
 * netns. What our pod programs redirected arrives here with a foreign address; a mark
 * (turned into local delivery by policy routing) and, where the kernel has
 * bpf_sk_assign, the socket it belongs to, hand it to ztunnel with its original
 * destination intact.
 */
#ifndef AMBIENT_REDIRECT_ZTUNNEL_H
#define AMBIENT_REDIRECT_ZTUNNEL_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ambient_redirect.h"
#include "maps.h"
#include "parse.h"
#include "redirect.h" /* the ztunnel slot's flags, DNS capture, ICMP errors */

enum zt_class {
	ZC_PASS = 0, /* not captured traffic */
	ZC_DROP,
	ZC_DELIVER,
};

/* The flags of an enrolled pod's entry, or 0 when the address is no enrolled pod. */
static __always_inline __u16 zt_enrolled_flags(const struct addr_key *a)
{
	struct pod_info *p = bpf_map_lookup_elem(&pods, a);

	return p && (p->flags & POD_F_ENROLLED) ? p->flags : 0;
}

/* Z1–Z10: the class of a frame and, for delivery, its mark. */
static __always_inline enum zt_class zt_classify(const struct flow *f, __u32 *mark)
{
	__u16 src_flags;
	int outbound;

	if (f->l3 != L3_IPV4 && f->l3 != L3_IPV6)
		return ZC_PASS;                                  /* Z1 */
	src_flags = zt_enrolled_flags(&f->src);
	outbound = src_flags != 0;
	if (!outbound && !zt_enrolled_flags(&f->dst))
		return ZC_PASS;                                  /* Z2 */
	if (f->l4 == L4_BAD_CHAIN)
		return ZC_DROP;                                  /* Z3 */
	if (f->l4 != L4_OK)
		return ZC_DROP;                                  /* Z10: other protocol, truncated */
	if (f->nonfirst_frag) {
		if (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP) {
			*mark = outbound ? ZT_MARK_OUTBOUND : ZT_MARK_INBOUND;
			return ZC_DELIVER;                       /* Z9 */
		}
		return ZC_DROP;                                  /* Z10 */
	}
	if (outbound && f->dport == bpf_htons(FLOW_PORT_DNS) &&
	    (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP) && redirect_dns_captured(redirect_ztunnel_flags(), src_flags)) {
		*mark = ZT_MARK_DNS;
		return ZC_DELIVER;                               /* Z5: UDP and TCP */
	}
	if (outbound && f->proto == IPPROTO_TCP) {
		*mark = ZT_MARK_OUTBOUND;
		return ZC_DELIVER;                               /* Z4 */
	}
	if (!outbound && f->proto == IPPROTO_TCP) {
		*mark = f->dport == bpf_htons(ZTUNNEL_PORT_HBONE) ? ZT_MARK_HBONE : ZT_MARK_INBOUND;
		return ZC_DELIVER;                               /* Z6, Z7 */
	}
	if (parse_is_icmp(f) && redirect_icmp_error(f)) {
		*mark = ZT_MARK_LOCAL;
		return ZC_DELIVER;                               /* Z8 */
	}
	return ZC_DROP;                                          /* Z10 */
}

/* A socket lookup tuple for the frame, with the destination port replaced if asked. */
static __always_inline __u32 zt_tuple(const struct flow *f, struct bpf_sock_tuple *t, __be16 dport)
{
	__builtin_memset(t, 0, sizeof(*t));
	if (f->l3 == L3_IPV4) {
		t->ipv4.saddr = f->src4;
		t->ipv4.daddr = f->dst4;
		t->ipv4.sport = f->sport;
		t->ipv4.dport = dport;
		return sizeof(t->ipv4);
	}
	__builtin_memcpy(t->ipv6.saddr, f->src.addr, 16);
	__builtin_memcpy(t->ipv6.daddr, f->dst.addr, 16);
	t->ipv6.sport = f->sport;
	t->ipv6.dport = dport;
	return sizeof(t->ipv6);
}

static __always_inline __be16 zt_listener_port(__u32 mark)
{
	switch (mark) {
	case ZT_MARK_OUTBOUND:
		return bpf_htons(ZTUNNEL_PORT_OUTBOUND);
	case ZT_MARK_INBOUND:
		return bpf_htons(ZTUNNEL_PORT_INBOUND);
	case ZT_MARK_HBONE:
		return bpf_htons(ZTUNNEL_PORT_HBONE);
	default:
		return bpf_htons(ZTUNNEL_PORT_DNS);
	}
}

/*
 * Z4–Z7, Z11: a connection's segments go to its established socket, a new connection's
 * SYN to ztunnel's listener. A SYN whose 4-tuple still has the previous connection's
 * TIME_WAIT socket cannot be assigned: the kernel refuses a new request beside it, and
 * only TPROXY can retire it (nf_tproxy_handle_time_wait), so that SYN is left to the
 * TPROXY rules with ZT_MARK_TPROXY.
 */
static __always_inline int zt_assign_socket(struct __sk_buff *skb, const struct flow *f, __u32 *mark)
{
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	__u32 len;
	long err;

	if (*mark == ZT_MARK_DNS && f->proto == IPPROTO_UDP) {
		len = zt_tuple(f, &t, zt_listener_port(*mark));
		sk = bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return TC_ACT_SHOT;                      /* Z11 */
		goto assign;
	}
	len = zt_tuple(f, &t, f->dport);
	sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		if (sk->state == BPF_TCP_TIME_WAIT && (f->tcp_flags & (FLOW_TCP_SYN | FLOW_TCP_ACK)) == FLOW_TCP_SYN) {
			bpf_sk_release(sk);
			*mark |= ZT_MARK_TPROXY;
			return TC_ACT_OK;
		}
		if (sk->state != BPF_TCP_LISTEN)
			goto assign;
		bpf_sk_release(sk);
	}
	len = zt_tuple(f, &t, zt_listener_port(*mark));
	sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_SHOT;                              /* Z11 */
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return TC_ACT_SHOT;                              /* Z11 */
	}
assign:
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? TC_ACT_SHOT : TC_ACT_OK;
}

static __always_inline int zt_deliver(struct __sk_buff *skb, bool assign)
{
	int verdict = TC_ACT_OK;
	__u32 mark = 0;
	struct flow f;

	parse_frame(skb, &f);
	switch (zt_classify(&f, &mark)) {
	case ZC_PASS:
		return TC_ACT_OK;
	case ZC_DROP:
		return TC_ACT_SHOT;
	default:
		break;
	}
	/* Errors and fragments find their socket in the stack; the rest is assigned here. */
	if (assign && mark != ZT_MARK_LOCAL && !f.nonfirst_frag)
		verdict = zt_assign_socket(skb, &f, &mark);
	/* One store to skb->mark: the verifier refuses a ctx pointer the compiler offsets. */
	skb->mark = mark;
	return verdict;
}

#endif
