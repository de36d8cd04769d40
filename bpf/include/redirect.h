/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Pod-side capture: rows O1–O17 (frames leaving a pod, TC ingress of its host veth) and
 * I1–I18 (frames entering it, TC egress) of docs/datapath.md.
 */
#ifndef AMBIENT_REDIRECT_REDIRECT_H
#define AMBIENT_REDIRECT_REDIRECT_H

#include <linux/pkt_cls.h>

#define DNS_PORT 53

enum verdict {
	V_PASS = 0,
	V_DROP,
	V_REDIRECT,
};

/* The slot's flags, whether or not it describes a live ztunnel (DNS capture is policy). */
static __always_inline __u16 ztunnel_flags(void)
{
	__u32 slot = ZTUNNEL_SLOT;
	struct ztunnel_info *zt = bpf_map_lookup_elem(&ztunnel, &slot);

	return zt ? zt->flags : 0;
}

/* The live ztunnel, or NULL: then what would be redirected is dropped (fail closed). */
static __always_inline struct ztunnel_info *ztunnel_slot(void)
{
	__u32 slot = ZTUNNEL_SLOT;
	struct ztunnel_info *zt = bpf_map_lookup_elem(&ztunnel, &slot);

	if (!zt || !(zt->flags & ZT_F_PRESENT) || !zt->ifindex)
		return NULL;
	return zt;
}

static __always_inline int host_bypass(const struct addr_key *a)
{
	struct host_info *h = bpf_map_lookup_elem(&host_addrs, a);

	return h && (h->flags & HOST_F_BYPASS);
}

static __always_inline void count(__u32 ifindex, enum verdict v, __u64 len)
{
	struct pod_counters *c = bpf_map_lookup_elem(&counters, &ifindex);

	if (!c) {
		struct pod_counters zero = {};

		bpf_map_update_elem(&counters, &ifindex, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&counters, &ifindex);
		if (!c)
			return;
	}
	/* Per-CPU values: no other CPU writes this copy. */
	if (v == V_REDIRECT) {
		c->redirected_packets++;
		c->redirected_bytes += len;
	} else if (v == V_DROP) {
		c->dropped_packets++;
		c->dropped_bytes += len;
	} else {
		c->passed_packets++;
		c->passed_bytes += len;
	}
}

/* O1–O6 / I1–I6: only IPv4 and IPv6 with a sound fixed header go on. */
static __always_inline int l3_verdict(const struct flow *f, enum verdict *v)
{
	if (f->l3 == L3_ARP) {
		*v = V_PASS;
		return 1;
	}
	if (f->l3 != L3_IPV4 && f->l3 != L3_IPV6) {
		*v = V_DROP;
		return 1;
	}
	return 0;
}

/*
 * The rows after the addresses are judged, common to both directions: the extension
 * chain, fragments, protocols, DNS without capture, fail closed, redirect.
 * `dns_port` is the port that marks DNS in this direction (dst outbound, src inbound).
 */
static __always_inline enum verdict l4_verdict(const struct flow *f, const struct ztunnel_info *zt,
					       __be16 dns_port)
{
	if (f->l4 == L4_BAD_CHAIN)
		return V_DROP;                                   /* O11, I12 */
	if (f->nonfirst_frag && f->l4 == L4_OK)                  /* O12, I13 */
		return zt ? V_REDIRECT : V_DROP;
	if (f->l4 == L4_OTHER)
		return V_DROP;                                   /* O13, I14 */
	if (f->l4 == L4_TRUNCATED && !is_icmp(f))
		return V_DROP;                                   /* O14, I15 */
	if (f->proto == IPPROTO_UDP && dns_port == bpf_htons(DNS_PORT) &&
	    !(ztunnel_flags() & ZT_F_DNS_CAPTURE))
		return V_PASS;                                   /* O15, I16 */
	if (!zt)
		return V_DROP;                                   /* O16, I17 */
	return V_REDIRECT;                                       /* O17, I18 */
}

static __always_inline int do_redirect(struct __sk_buff *skb, const struct ztunnel_info *zt, bool peer)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	/* ztunnel's netns only takes frames addressed to its own eth0. A direct write: the
	 * verifier makes the head writable once, cheaper than bpf_skb_store_bytes. */
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth->h_dest, zt->mac, ETH_ALEN);
	if (peer)
		return bpf_redirect_peer(zt->ifindex, 0);
	return bpf_redirect(zt->ifindex, 0);
}

static __always_inline int finish(struct __sk_buff *skb, enum verdict v, const struct ztunnel_info *zt,
				  bool peer)
{
	count(skb->ifindex, v, skb->len);
	if (v == V_PASS)
		return TC_ACT_OK;
	if (v == V_DROP || !zt)
		return TC_ACT_SHOT;
	return do_redirect(skb, zt, peer);
}

static __always_inline enum verdict outbound_verdict(struct __sk_buff *skb, const struct flow *f,
						     const struct ztunnel_info *zt)
{
	struct pod_info *pod;
	enum verdict v;

	if (l3_verdict(f, &v))
		return v;                                        /* O1–O6 */
	if (f->l3 == L3_IPV6 && ipv6_link_local(&f->dst))
		return V_PASS;                                   /* O7 */
	pod = bpf_map_lookup_elem(&pods, &f->src);
	if (!pod || pod->ifindex != skb->ifindex)
		return V_DROP;                                   /* O8 */
	if (!(pod->flags & POD_F_ENROLLED))
		return V_PASS;                                   /* O9 */
	if (host_bypass(&f->dst))
		return V_PASS;                                   /* O10 */
	return l4_verdict(f, zt, f->dport);
}

static __always_inline int capture_outbound(struct __sk_buff *skb, bool peer)
{
	struct ztunnel_info *zt = ztunnel_slot();
	struct flow f;

	parse_frame(skb, &f, false);
	return finish(skb, outbound_verdict(skb, &f, zt), zt, peer);
}

static __always_inline enum verdict inbound_verdict(struct __sk_buff *skb, const struct flow *f,
						    const struct ztunnel_info *zt)
{
	struct pod_info *pod;
	enum verdict v;

	if (l3_verdict(f, &v))
		return v;                                        /* I1–I6 */
	if (zt && skb->ingress_ifindex == zt->ifindex)
		return V_PASS;                                   /* I7 */
	if (f->l3 == L3_IPV6 && (ipv6_link_local(&f->src) || ipv6_link_local(&f->dst)))
		return V_PASS;                                   /* I8 */
	pod = bpf_map_lookup_elem(&pods, &f->dst);
	if (!pod || pod->ifindex != skb->ifindex)
		return V_DROP;                                   /* I9 */
	if (!(pod->flags & POD_F_ENROLLED))
		return V_PASS;                                   /* I10 */
	if (host_bypass(&f->src))
		return V_PASS;                                   /* I11 */
	return l4_verdict(f, zt, f->sport);
}

static __always_inline int capture_inbound(struct __sk_buff *skb)
{
	struct ztunnel_info *zt = ztunnel_slot();
	struct flow f;

	parse_frame(skb, &f, false);
	return finish(skb, inbound_verdict(skb, &f, zt), zt, false);
}

#endif
