/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Pod-side capture: rows O1–O17 (frames leaving a pod, TC ingress of its host veth) and
 * I1–I18 (frames entering it, TC egress) of docs/datapath.md.
 */
#ifndef AMBIENT_REDIRECT_REDIRECT_H
#define AMBIENT_REDIRECT_REDIRECT_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ambient_redirect.h"
#include "maps.h"
#include "parse.h"

enum redirect_verdict {
	V_PASS = 0,
	V_DROP,
	V_REDIRECT,
};

/* The slot's flags, whether or not it describes a live ztunnel (DNS capture is policy). */
static __always_inline __u16 redirect_ztunnel_flags(void)
{
	__u32 slot = ZTUNNEL_SLOT;
	struct ztunnel_info *zt = bpf_map_lookup_elem(&ztunnel, &slot);

	return zt ? zt->flags : 0;
}

/* The live ztunnel, or NULL: then what would be redirected is dropped (fail closed). */
static __always_inline struct ztunnel_info *redirect_ztunnel_slot(void)
{
	__u32 slot = ZTUNNEL_SLOT;
	struct ztunnel_info *zt = bpf_map_lookup_elem(&ztunnel, &slot);

	if (!zt || !(zt->flags & ZT_F_PRESENT) || !zt->ifindex)
		return NULL;
	return zt;
}


/* A TCP SYN without ACK: the first segment of a new connection. */
static __always_inline int redirect_tcp_opening(const struct flow *f)
{
	return f->proto == IPPROTO_TCP && (f->tcp_flags & (FLOW_TCP_SYN | FLOW_TCP_ACK)) == FLOW_TCP_SYN;
}

/*
 * The host_flows key of a frame's flow, seen from the pod: `inbound` frames go to the pod
 * (its side is the destination), outbound ones come from it.
 *
 * The key is put together in registers and stored a word at a time: the lookup hashes it
 * a word at a time, and a word the CPU must piece together from narrower stores still in
 * flight (a 2-byte port, a 1-byte protocol) stalls the load, which cost more than the hash
 * itself (docs/datapath.md, "Cost").
 */
union redirect_host_flow4 {
	struct host_flow4_key k;
	__u64 w[2];
};

union redirect_host_flow6 {
	struct host_flow_key k;
	__u64 w[5];
};

/* 1 and the address's IPv4 part when it is IPv4-mapped (every IPv4 frame's are), else 0. */
static __always_inline int redirect_addr_v4(const struct addr_key *a, __be32 *v4)
{
	__u32 w[4];

	__builtin_memcpy(w, a->addr, sizeof(w));
	if (w[0] || w[1] || w[2] != bpf_htonl(0x0000ffff))
		return 0;
	*v4 = w[3];
	return 1;
}

/*
 * A flow between two IPv4-mapped addresses (an IPv4 frame's, or an IPv6 frame's with such
 * addresses, which names the same flow) is keyed in host_flows4 by their IPv4 parts; any
 * other in host_flows. `src4`/`dst4` are set for the former.
 */
static __always_inline int redirect_host_flow_is4(const struct flow *f, __be32 *src4, __be32 *dst4)
{
	if (f->l3 == L3_IPV4) {
		*src4 = f->src4;
		*dst4 = f->dst4;
		return 1;
	}
	return redirect_addr_v4(&f->src, src4) && redirect_addr_v4(&f->dst, dst4);
}

static __always_inline void redirect_host_flow4_key(union redirect_host_flow4 *key, const struct flow *f, __be32 src4,
						    __be32 dst4, bool inbound)
{
	union redirect_host_flow4 u = {};

	u.k.pod = inbound ? dst4 : src4;
	u.k.peer = inbound ? src4 : dst4;
	u.k.pod_port = inbound ? f->dport : f->sport;
	u.k.peer_port = inbound ? f->sport : f->dport;
	u.k.proto = f->proto;
	key->w[0] = u.w[0];
	key->w[1] = u.w[1];
}

static __always_inline void redirect_host_flow6_key(union redirect_host_flow6 *key, const struct flow *f, bool inbound)
{
	union redirect_host_flow6 u = {};

	u.k.pod_port = inbound ? f->dport : f->sport;
	u.k.peer_port = inbound ? f->sport : f->dport;
	u.k.proto = f->proto;
	__builtin_memcpy(&key->w[0], inbound ? &f->dst : &f->src, sizeof(key->k.pod));
	__builtin_memcpy(&key->w[2], inbound ? &f->src : &f->dst, sizeof(key->k.peer));
	key->w[4] = u.w[4];
}

/* Records the frame's flow as one the node opened to the pod behind the veth `ifindex`. */
static __always_inline void redirect_host_flow_record(const struct flow *f, bool inbound, __u32 ifindex)
{
	struct host_flow_info h = { .ifindex = ifindex };
	__be32 src4, dst4;

	/* A full map evicts its oldest flow (LRU); a failed write only costs the reply. */
	if (redirect_host_flow_is4(f, &src4, &dst4)) {
		union redirect_host_flow4 k;

		redirect_host_flow4_key(&k, f, src4, dst4, inbound);
		bpf_map_update_elem(&host_flows4, &k, &h, BPF_ANY);
	} else {
		union redirect_host_flow6 k;

		redirect_host_flow6_key(&k, f, inbound);
		bpf_map_update_elem(&host_flows, &k, &h, BPF_ANY);
	}
}

/* The frame's flow is one the node opened to the pod behind the veth `ifindex`. */
static __always_inline int redirect_host_flow_known(const struct flow *f, bool inbound, __u32 ifindex)
{
	struct host_flow_info *h;
	__be32 src4, dst4;

	if (redirect_host_flow_is4(f, &src4, &dst4)) {
		union redirect_host_flow4 k;

		redirect_host_flow4_key(&k, f, src4, dst4, inbound);
		h = bpf_map_lookup_elem(&host_flows4, &k);
	} else {
		union redirect_host_flow6 k;

		redirect_host_flow6_key(&k, f, inbound);
		h = bpf_map_lookup_elem(&host_flows, &k);
	}
	return h && h->ifindex == ifindex;
}

/*
 * I11: a frame the node itself sent (skb->ingress_ifindex 0: it came in on no device)
 * opens or continues a flow the node owns. A UDP datagram or a TCP SYN records the flow;
 * other TCP segments pass only on a recorded one (a SYN-ACK of the node answers a
 * connection someone else opened, which ztunnel may own).
 */
static __always_inline int redirect_host_originated(struct __sk_buff *skb, const struct flow *f)
{
	if (skb->ingress_ifindex != 0 || !parse_has_ports(f))
		return 0;
	if (f->proto == IPPROTO_UDP || redirect_tcp_opening(f)) {
		redirect_host_flow_record(f, true, skb->ifindex);
		return 1;
	}
	return redirect_host_flow_known(f, true, skb->ifindex);
}

/*
 * I11b: a pod that bypasses inbound capture gets every frame; a UDP datagram or TCP SYN
 * from a peer is recorded so that the pod's answers pass too (O10), not only the peer's
 * side. The pod cannot open such a flow itself: its SYN is captured.
 */
static __always_inline void redirect_bypassed_flow(struct __sk_buff *skb, const struct flow *f)
{
	if (!parse_has_ports(f) || !(f->proto == IPPROTO_UDP || redirect_tcp_opening(f)))
		return;
	redirect_host_flow_record(f, true, skb->ifindex);
}

/* O10: the pod answering a flow the node opened (never a SYN of its own); `ifindex` is
 * the veth the frame arrived on (the TC and the XDP hook alike). */
static __always_inline int redirect_host_flow_reply(__u32 ifindex, const struct flow *f)
{
	if (!parse_has_ports(f) || redirect_tcp_opening(f))
		return 0;
	return redirect_host_flow_known(f, false, ifindex);
}

static __always_inline int redirect_dns_server(const struct addr_key *a)
{
	return bpf_map_lookup_elem(&dns_servers, a) != NULL;
}

/*
 * Where a frame's verdict is counted: the slot of the pod entry that vouched for it (the
 * lookup the verdict needed anyway), else SLOT_OF_VETH: the veth's slot from veth_slots,
 * asked only then (frames judged before or without their pod's entry).
 */
#define SLOT_OF_VETH 0xffffffff

static __always_inline void redirect_count(__u32 ifindex, __u32 slot, enum redirect_verdict v, __u64 len)
{
	struct pod_counters *c;

	if (slot == SLOT_OF_VETH) {
		struct veth_slot *vs = bpf_map_lookup_elem(&veth_slots, &ifindex);

		slot = vs ? vs->slot : COUNTERS_NO_SLOT;
	}
	/* An array: no entry to create; a slot beyond it is not counted. */
	c = bpf_map_lookup_elem(&counters, &slot);
	if (!c)
		return;
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
static __always_inline int redirect_l3_verdict(const struct flow *f, enum redirect_verdict *v)
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

/* The pod's own DNS capture setting (its annotation) wins over the node's. */
static __always_inline bool redirect_dns_captured(__u16 zt_flags, __u16 pod_flags)
{
	if (pod_flags & POD_F_DNS_CAPTURE)
		return true;
	if (pod_flags & POD_F_NO_DNS_CAPTURE)
		return false;
	return zt_flags & ZT_F_DNS_CAPTURE;
}

/* ICMP errors (v4 3, 11, 12; v6 1-4) concern a socket, ztunnel's for captured flows. */
static __always_inline int redirect_icmp_error(const struct flow *f)
{
	if (f->l3 == L3_IPV4)
		return f->icmp_type == 3 || f->icmp_type == 11 || f->icmp_type == 12;
	return f->icmp_type >= 1 && f->icmp_type <= 4;
}

/* The --non-tcp policy for what ztunnel does not proxy: pass uncaptured, or drop. */
static __always_inline enum redirect_verdict redirect_non_tcp(__u16 zt_flags)
{
	return (zt_flags & ZT_F_NON_TCP_DROP) ? V_DROP : V_PASS;
}

/*
 * The rows after the addresses are judged, common to both directions: the extension
 * chain, fragments, protocols, DNS, the non-TCP policy, fail closed, redirect.
 * `dns_port` and `server` are the port and address that mark DNS in this direction
 * (destination outbound, source inbound); only outbound DNS is captured (ztunnel's
 * answers come back from its netns, row I7).
 */
static __always_inline enum redirect_verdict redirect_l4_verdict(const struct flow *f, const struct ztunnel_info *zt,
					       __be16 dns_port, const struct addr_key *server,
					       bool outbound, __u16 pod_flags)
{
	__u16 ztf = redirect_ztunnel_flags();
	bool dns = f->proto == IPPROTO_UDP && dns_port == bpf_htons(FLOW_PORT_DNS);

	if (f->l4 == L4_BAD_CHAIN)
		return V_DROP;                                   /* O11, I12 */
	if (f->nonfirst_frag && f->l4 == L4_OK) {
		if (f->proto != IPPROTO_TCP && !(ztf & ZT_F_NON_TCP_DROP))
			return V_PASS;                           /* O12, I13: UDP/ICMP, pass policy */
		return zt ? V_REDIRECT : V_DROP;                 /* O12, I13 */
	}
	if (f->l4 == L4_OTHER)
		return V_DROP;                                   /* O13, I14 */
	if (f->l4 == L4_TRUNCATED)
		return V_DROP;                                   /* O14, I15 */
	if (dns && outbound && redirect_dns_captured(ztf, pod_flags))
		return zt ? V_REDIRECT : V_DROP;                 /* O16, O17 */
	if (dns && !redirect_dns_captured(ztf, pod_flags) && redirect_dns_server(server))
		return V_PASS;                                   /* O15, I16 */
	if (f->proto == IPPROTO_UDP || (parse_is_icmp(f) && !redirect_icmp_error(f)))
		return redirect_non_tcp(ztf);                             /* O15b, I16b */
	if (!zt)
		return V_DROP;                                   /* O16, I17 */
	return V_REDIRECT;                                       /* O17, I18 */
}

static __always_inline int redirect_to_ztunnel(struct __sk_buff *skb, const struct ztunnel_info *zt, bool peer)
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

static __always_inline int redirect_finish(struct __sk_buff *skb, enum redirect_verdict v, __u32 slot,
					   const struct ztunnel_info *zt, bool peer)
{
	redirect_count(skb->ifindex, slot, v, skb->len);
	/* Pass hands the frame on to whatever runs after us on the hook (a primary CNI's
	 * filter attached before the agent started), which then decides as if we were not
	 * there; with nothing after us the kernel passes it (docs/datapath.md, "Beside the
	 * primary CNI's programs"). TC_ACT_OK would end the walk and keep that CNI's
	 * routing, NAT and policy from an enrolled pod's uncaptured traffic. */
	if (v == V_PASS)
		return TC_ACT_UNSPEC;
	if (v == V_DROP || !zt)
		return TC_ACT_SHOT;
	return redirect_to_ztunnel(skb, zt, peer);
}

/*
 * O1–O17 for a frame that arrived on the veth `ifindex` (the TC and the XDP hook alike);
 * `slot` is where to count it (SLOT_OF_VETH until the pod's entry vouches for the frame).
 */
static __always_inline enum redirect_verdict redirect_outbound_verdict(__u32 ifindex, const struct flow *f,
						     const struct ztunnel_info *zt, __u32 *slot)
{
	struct pod_info *pod;
	enum redirect_verdict v;

	*slot = SLOT_OF_VETH;
	if (redirect_l3_verdict(f, &v))
		return v;                                        /* O1–O6 */
	if (parse_ipv6_nd_or_mld(f) && parse_ipv6_link_local(&f->dst))
		return V_PASS;                                   /* O7 */
	pod = bpf_map_lookup_elem(&pods, &f->src);
	if (!pod || pod->ifindex != ifindex)
		return V_DROP;                                   /* O8 */
	*slot = pod->slot;
	if (!(pod->flags & POD_F_ENROLLED))
		return V_PASS;                                   /* O9 */
	/* O10 comes before O11–O17 in the spec, but its only verdict is pass: asked after
	 * them, and only when they would not pass, it gives the same verdict and spares
	 * what passes anyway (UDP under --non-tcp pass, DNS to a known server) the
	 * host_flows lookup, the dearest of the path (its 40-byte key). */
	v = redirect_l4_verdict(f, zt, f->dport, &f->dst, true, pod->flags);
	if (v != V_PASS && redirect_host_flow_reply(ifindex, f))
		return V_PASS;                                   /* O10 */
	return v;
}

static __always_inline int redirect_capture_outbound(struct __sk_buff *skb, bool peer)
{
	struct ztunnel_info *zt = redirect_ztunnel_slot();
	enum redirect_verdict v;
	struct flow f;
	__u32 slot;

	parse_frame(skb, &f);
	v = redirect_outbound_verdict(skb->ifindex, &f, zt, &slot);
	return redirect_finish(skb, v, slot, zt, peer);
}

/* I1–I18; `slot` as for redirect_outbound_verdict (ztunnel's deliveries, I7, count in the veth's). */
static __always_inline enum redirect_verdict redirect_inbound_verdict(struct __sk_buff *skb, const struct flow *f,
						    const struct ztunnel_info *zt, __u32 *slot)
{
	struct pod_info *pod;
	enum redirect_verdict v;

	*slot = SLOT_OF_VETH;
	if (redirect_l3_verdict(f, &v))
		return v;                                        /* I1–I6 */
	if (zt && skb->ingress_ifindex == zt->ifindex)
		return V_PASS;                                   /* I7 */
	if (parse_ipv6_nd_or_mld(f) && (parse_ipv6_link_local(&f->src) || parse_ipv6_link_local(&f->dst)))
		return V_PASS;                                   /* I8 */
	pod = bpf_map_lookup_elem(&pods, &f->dst);
	if (!pod || pod->ifindex != skb->ifindex)
		return V_DROP;                                   /* I9 */
	*slot = pod->slot;
	if (!(pod->flags & POD_F_ENROLLED))
		return V_PASS;                                   /* I10 */
	if (redirect_host_originated(skb, f))
		return V_PASS;                                   /* I11 */
	if (pod->flags & POD_F_BYPASS_INBOUND) {
		redirect_bypassed_flow(skb, f);
		return V_PASS;                                   /* I11b */
	}
	return redirect_l4_verdict(f, zt, f->sport, &f->src, false, pod->flags);
}

static __always_inline int redirect_capture_inbound(struct __sk_buff *skb)
{
	struct ztunnel_info *zt = redirect_ztunnel_slot();
	enum redirect_verdict v;
	struct flow f;
	__u32 slot;

	parse_frame(skb, &f);
	v = redirect_inbound_verdict(skb, &f, zt, &slot);
	return redirect_finish(skb, v, slot, zt, false);
}

#endif
