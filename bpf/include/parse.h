/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Frame parsing shared by every program: one pass that records what docs/datapath.md's
 * rows ask about, so each program decides in the spec's order from plain fields.
 *
 * Fixed headers are read with direct packet access; variable offsets (IPv4 options,
 * IPv6 extension headers, L4) at TC with bpf_skb_load_bytes, which also copes with
 * non-linear skbs. Lengths are skb->len's, as the spec says. The XDP hook (xdp.h) walks
 * the same code over its frame (parse_frame_at, below).
 */
#ifndef AMBIENT_REDIRECT_PARSE_H
#define AMBIENT_REDIRECT_PARSE_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ambient_redirect.h"

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* Bits of struct flow's tcp_flags (the TCP header's flags byte). */
#define FLOW_TCP_SYN 0x02
#define FLOW_TCP_ACK 0x10

/* DNS's well-known port, in host order (compare with bpf_htons). */
#define FLOW_PORT_DNS 53

enum l3_kind {
	L3_SHORT = 0,  /* not even an Ethernet header */
	L3_ARP,
	L3_VLAN,
	L3_OTHER,      /* an ethertype we do not carry */
	L3_BAD_IP,     /* IPv4/IPv6 whose fixed header is truncated or malformed */
	L3_IPV4,
	L3_IPV6,
};

enum l4_kind {
	L4_OK = 0,     /* TCP/UDP/ICMP with its header in the frame (or a non-first fragment) */
	L4_BAD_CHAIN,  /* IPv6: chain too long, truncated, or ending in another protocol */
	L4_OTHER,      /* another IP protocol */
	L4_TRUNCATED,  /* TCP/UDP/ICMP header cut short */
};

struct flow {
	struct addr_key src;
	struct addr_key dst;
	__be32 src4, dst4;  /* IPv4 only, for socket lookups */
	__u8 l3;            /* enum l3_kind */
	__u8 l4;            /* enum l4_kind */
	__u8 proto;         /* IPPROTO_TCP/UDP/ICMP/ICMPV6 or other */
	__u8 nonfirst_frag; /* no L4 header to look at */
	__be16 sport, dport; /* valid for TCP/UDP with L4_OK and !nonfirst_frag */
	__u8 icmp_type;      /* valid for ICMP with L4_OK and !nonfirst_frag */
	__u8 tcp_flags;      /* valid for TCP when its ports were read */
	__u8 pad[2];
	__u32 l4_off;        /* offset of the L4 header */
};

static __always_inline void parse_addr_from_v4(struct addr_key *k, __be32 a)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->addr[10] = 0xff;
	k->addr[11] = 0xff;
	__builtin_memcpy(&k->addr[12], &a, sizeof(a));
}

/* ICMP of the frame's own family: ICMPv6 inside IPv4 is just another protocol. */
static __always_inline int parse_is_icmp(const struct flow *f)
{
	return f->l3 == L3_IPV4 ? f->proto == IPPROTO_ICMP : f->proto == IPPROTO_ICMPV6;
}

static __always_inline int parse_ipv6_ext(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
	       nh == IPPROTO_FRAGMENT || nh == IPPROTO_AH;
}

/* The largest L4 offset read in place: Ethernet, a 40-byte IPv6 header, no extensions
 * (IPv4's largest is 14 + 60). A bound the verifier can check the packet pointer by. */
#define PARSE_DIRECT_L4_MAX (14 + 60)

/*
 * The largest offset an XDP frame is read at. A frame at a veth's XDP hook fits a page (the
 * kernel caps the veth's MTU for that), so 4096 loses nothing; the bound lets the verifier
 * see the pointer arithmetic as bounded.
 */
#define PARSE_XDP_MAX_OFF 4096

/*
 * One parser for both hooks. Every function below takes the program's context and
 * `xdp`, a constant at each call site (parse_frame: an skb at TC; xdp.h's xdp_parse_frame:
 * an XDP frame), so that after inlining only one hook's reads are left. What differs
 * between the hooks is confined to the three accessors here:
 *   - lengths: skb->len at TC (which counts paged data), data_end - data at XDP (veth hands
 *     its XDP program a linear frame);
 *   - reads at a variable offset: bpf_skb_load_bytes at TC, which copes with non-linear
 *     skbs; direct access under PARSE_XDP_MAX_OFF at XDP, which has no such helper;
 *   - a VLAN tag offloaded into skb metadata (veths do that) shows at TC only: no XDP field
 *     shows it (docs/datapath.md, "XDP (pod-side outbound)").
 */

/* Copies `len` (a constant) bytes at `off` of an XDP frame; -1 when they are not all in it. */
static __always_inline int parse_xdp_load(const struct xdp_md *ctx, __u32 off, void *to, const __u32 len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *p;

	if (off > PARSE_XDP_MAX_OFF)
		return -1;
	p = (__u8 *)data + off;
	if ((void *)(p + len) > data_end)
		return -1;
	__builtin_memcpy(to, p, len);
	return 0;
}

/* The frame's length, as each hook's rows count it. */
static __always_inline __u32 parse_len(void *ctx, const bool xdp)
{
	if (xdp)
		return (__u32)(((struct xdp_md *)ctx)->data_end - ((struct xdp_md *)ctx)->data);
	return ((struct __sk_buff *)ctx)->len;
}

/* `len` (a constant) bytes at `off`; negative when the frame does not hold them. */
static __always_inline long parse_load(void *ctx, const bool xdp, __u32 off, void *to, const __u32 len)
{
	if (xdp)
		return parse_xdp_load(ctx, off, to, len);
	return bpf_skb_load_bytes(ctx, off, to, len);
}

/*
 * The first 14 bytes at `off` (the most parse_l4 wants) copied from the frame's linear
 * part, when they are all in it: a bounds check and loads, where bpf_skb_load_bytes is a
 * helper call (a third of the parse's cost under BPF_PROG_RUN). 0 when they are not (a
 * header in paged data, an IPv6 extension chain, a frame shorter than 14 bytes past
 * `off`): the caller then loads them. Either way the bytes are the frame's own.
 */
static __always_inline int parse_l4_direct(struct __sk_buff *skb, __u32 off, __u8 *hdr)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u8 *p;

	if (off > PARSE_DIRECT_L4_MAX)
		return 0;
	p = data + off;
	if ((void *)(p + 14) > data_end)
		return 0;
	__builtin_memcpy(hdr, p, 14);
	return 1;
}

/* The L4 header's first bytes into hdr: 14 for TCP (its flags included), else 4. */
static __always_inline long parse_load_l4(void *ctx, const bool xdp, const struct flow *f, __u8 *hdr)
{
	if (xdp)
		return f->proto == IPPROTO_TCP ? parse_xdp_load(ctx, f->l4_off, hdr, 14) : parse_xdp_load(ctx, f->l4_off, hdr, 4);
	if (parse_l4_direct(ctx, f->l4_off, hdr))
		return 0;
	return bpf_skb_load_bytes(ctx, f->l4_off, hdr, f->proto == IPPROTO_TCP ? 14 : 4);
}

/* Reads the L4 header fields the spec needs; sets l4 to OK or TRUNCATED. */
static __always_inline void parse_l4(void *ctx, const bool xdp, struct flow *f)
{
	__u8 hdr[14];
	__u32 need;

	if (f->proto == IPPROTO_TCP)
		need = 20;
	else if (f->proto == IPPROTO_UDP || parse_is_icmp(f))
		need = 8;
	else {
		f->l4 = L4_OTHER;
		return;
	}
	if (f->nonfirst_frag) {
		f->l4 = L4_OK;
		return;
	}
	if (f->l4_off + need > parse_len(ctx, xdp)) {
		f->l4 = L4_TRUNCATED;
		return;
	}
	f->l4 = L4_OK;
	/* TCP's flags too (byte 13); the header is 20 bytes, so they are there. */
	if (parse_load_l4(ctx, xdp, f, hdr) < 0) {
		f->l4 = L4_TRUNCATED;
		return;
	}
	if (f->proto == IPPROTO_TCP)
		f->tcp_flags = hdr[13];
	if (parse_is_icmp(f)) {
		f->icmp_type = hdr[0];
	} else {
		__builtin_memcpy(&f->sport, &hdr[0], 2);
		__builtin_memcpy(&f->dport, &hdr[2], 2);
	}
}

static __always_inline __u32 parse_ipv6_hdr_len(__u8 type, __u8 hdrlen)
{
	return type == IPPROTO_AH ? ((__u32)hdrlen + 2) * 4 : ((__u32)hdrlen + 1) * 8;
}

static __always_inline void parse_ipv6_chain(void *ctx, const bool xdp, struct flow *f, __u8 nh)
{
	int i;

#pragma unroll
	for (i = 0; i < MAX_IPV6_EXT; i++) {
		__u8 h[4];
		__u32 len;

		if (!parse_ipv6_ext(nh))
			break;
		if (parse_load(ctx, xdp, f->l4_off, h, 2) < 0) {
			f->l4 = L4_BAD_CHAIN;
			return;
		}
		len = nh == IPPROTO_FRAGMENT ? 8 : parse_ipv6_hdr_len(nh, h[1]);
		if (f->l4_off + len > parse_len(ctx, xdp)) {
			f->l4 = L4_BAD_CHAIN;
			return;
		}
		if (nh == IPPROTO_FRAGMENT) {
			__u16 off;

			if (parse_load(ctx, xdp, f->l4_off, h, 4) < 0) {
				f->l4 = L4_BAD_CHAIN;
				return;
			}
			off = ((__u16)h[2] << 8 | h[3]) & 0xfff8;
			nh = h[0];
			f->l4_off += len;
			if (off) {
				/* The rest is payload: the protocol is the fragment header's. */
				f->nonfirst_frag = 1;
				break;
			}
			continue;
		}
		nh = h[0];
		f->l4_off += len;
	}
	f->proto = nh;
	if (!f->nonfirst_frag && parse_ipv6_ext(nh)) {
		f->l4 = L4_BAD_CHAIN; /* longer than MAX_IPV6_EXT */
		return;
	}
	if (nh != IPPROTO_TCP && nh != IPPROTO_UDP && nh != IPPROTO_ICMPV6) {
		f->l4 = L4_BAD_CHAIN; /* ESP, no-next-header, anything else */
		return;
	}
	parse_l4(ctx, xdp, f);
}

/* The walk of both hooks; parse_frame and xdp.h's xdp_parse_frame name the hook. */
static __always_inline void parse_frame_at(void *ctx, const bool xdp, struct flow *f)
{
	void *data = xdp ? (void *)(long)((struct xdp_md *)ctx)->data : (void *)(long)((struct __sk_buff *)ctx)->data;
	void *data_end = xdp ? (void *)(long)((struct xdp_md *)ctx)->data_end : (void *)(long)((struct __sk_buff *)ctx)->data_end;
	struct ethhdr *eth = data;
	__u16 proto;

	__builtin_memset(f, 0, sizeof(*f));
	if ((void *)(eth + 1) > data_end) {
		f->l3 = L3_SHORT;
		return;
	}
	/* A tag offloaded into skb metadata (veths do that) is a tag all the same. */
	if (!xdp && ((struct __sk_buff *)ctx)->vlan_present) {
		f->l3 = L3_VLAN;
		return;
	}
	proto = bpf_ntohs(eth->h_proto);
	if (proto == ETH_P_ARP) {
		f->l3 = L3_ARP;
		return;
	}
	if (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
		f->l3 = L3_VLAN;
		return;
	}
	if (proto == ETH_P_IP) {
		struct iphdr *ip = (void *)(eth + 1);
		__u32 ihl;

		if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5) {
			f->l3 = L3_BAD_IP;
			return;
		}
		ihl = ip->ihl * 4;
		if (sizeof(*eth) + ihl > parse_len(ctx, xdp)) {
			f->l3 = L3_BAD_IP;
			return;
		}
		f->l3 = L3_IPV4;
		f->src4 = ip->saddr;
		f->dst4 = ip->daddr;
		parse_addr_from_v4(&f->src, ip->saddr);
		parse_addr_from_v4(&f->dst, ip->daddr);
		f->proto = ip->protocol;
		f->nonfirst_frag = (bpf_ntohs(ip->frag_off) & 0x1fff) != 0;
		f->l4_off = sizeof(*eth) + ihl;
		parse_l4(ctx, xdp, f);
		return;
	}
	if (proto == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end || ip6->version != 6) {
			f->l3 = L3_BAD_IP;
			return;
		}
		f->l3 = L3_IPV6;
		__builtin_memcpy(f->src.addr, &ip6->saddr, 16);
		__builtin_memcpy(f->dst.addr, &ip6->daddr, 16);
		f->l4_off = sizeof(*eth) + sizeof(*ip6);
		parse_ipv6_chain(ctx, xdp, f, ip6->nexthdr);
		return;
	}
	f->l3 = L3_OTHER;
}

/* An skb at a TC hook. */
static __always_inline void parse_frame(struct __sk_buff *skb, struct flow *f)
{
	parse_frame_at(skb, false, f);
}

/* fe80::/10 and ff02::/16: never forwarded by the host. */
static __always_inline int parse_ipv6_link_local(const struct addr_key *a)
{
	return (a->addr[0] == 0xfe && (a->addr[1] & 0xc0) == 0x80) ||
	       (a->addr[0] == 0xff && a->addr[1] == 0x02);
}

/* ICMPv6 neighbour discovery (133-137) or MLD (130-132, 143), header in the frame. */
static __always_inline int parse_ipv6_nd_or_mld(const struct flow *f)
{
	if (f->l3 != L3_IPV6 || f->proto != IPPROTO_ICMPV6 || f->l4 != L4_OK || f->nonfirst_frag)
		return 0;
	return (f->icmp_type >= 130 && f->icmp_type <= 137) || f->icmp_type == 143;
}

/* TCP or UDP whose ports were read: a flow the host_flows map can name. */
static __always_inline int parse_has_ports(const struct flow *f)
{
	return (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP) && f->l4 == L4_OK && !f->nonfirst_frag;
}

#endif
