/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The XDP hook of the pod-side outbound capture (docs/datapath.md, "XDP (pod-side
 * outbound)"): rows O1–O17 on a frame at the XDP hook of an enrolled pod's host veth.
 *
 * The frame is parsed by parse.h's walk with the XDP accessors (direct packet access at
 * bounded offsets, no skb metadata) into the same struct flow, and the verdict itself is
 * redirect.h's, unchanged: l3_verdict, the O7–O10 checks and l4_verdict take a struct
 * flow, not an skb. Lengths are the frame's: data_end - data (veth hands its XDP program
 * a linear frame).
 * One thing the hook adds: before a redirect, an offloaded TCP/UDP checksum is completed
 * (xdp_complete_csum), since an XDP redirect carries the bytes and not the skb's checksum state.
 */
#ifndef AMBIENT_REDIRECT_XDP_H
#define AMBIENT_REDIRECT_XDP_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ambient_redirect.h"
#include "maps.h"
#include "parse.h"
#include "redirect.h"

static __always_inline __u32 xdp_len(const struct xdp_md *ctx)
{
	return parse_len((void *)ctx, true);
}

/*
 * parse.h's walk over an XDP frame (parse_frame_at). One difference, which the hook
 * imposes: a VLAN tag a veth offloaded into skb metadata is not in an XDP frame and no XDP
 * field shows it; only tags in the frame are O3 here (see docs/datapath.md, "XDP (pod-side
 * outbound)").
 */
static __always_inline void xdp_parse_frame(struct xdp_md *ctx, struct flow *f)
{
	parse_frame_at(ctx, true, f);
}

/* --- completing an offloaded checksum (docs/datapath.md, "XDP (pod-side outbound)") -------- */

/* One step of xdp_csum_range: `n` bytes (a multiple of 4, at most 512: bpf_csum_diff's
 * limit) at `off` added to `*sum` when at least `n` are left; -1 when not in the frame. */
#define XDP_CSUM_STEP(n)                                                                     \
	if (len >= (n)) {                                                                    \
		__u8 *p;                                                                     \
		long r;                                                                      \
		if (off > PARSE_XDP_MAX_OFF)                                                 \
			return -1;                                                           \
		p = (__u8 *)(long)ctx->data + off;                                           \
		if ((void *)(p + (n)) > (void *)(long)ctx->data_end)                         \
			return -1;                                                           \
		r = bpf_csum_diff(0, 0, (__be32 *)p, (n), *sum);                             \
		if (r < 0)                                                                   \
			return -1;                                                           \
		*sum = (__u32)r;                                                             \
		off += (n);                                                                  \
		len -= (n);                                                                  \
	}

/* The one's complement sum of `len` bytes at `off` (any length up to 4096), into `*sum`. */
static __always_inline int xdp_csum_range(const struct xdp_md *ctx, __u32 off, __u32 len, __u32 *sum)
{
	__u8 tail[4] = {};
	__u32 rest;
	long r;

	if (len > PARSE_XDP_MAX_OFF)
		return -1;
	XDP_CSUM_STEP(512)
	XDP_CSUM_STEP(512)
	XDP_CSUM_STEP(512)
	XDP_CSUM_STEP(512)
	XDP_CSUM_STEP(512)
	XDP_CSUM_STEP(512)
	XDP_CSUM_STEP(512)
	XDP_CSUM_STEP(512)
	XDP_CSUM_STEP(256)
	XDP_CSUM_STEP(128)
	XDP_CSUM_STEP(64)
	XDP_CSUM_STEP(32)
	XDP_CSUM_STEP(16)
	XDP_CSUM_STEP(8)
	XDP_CSUM_STEP(4)
	/* 0-3 bytes left: summed as one word padded with zeros, as the checksum defines. */
	rest = len;
	if (rest >= 1 && parse_xdp_load(ctx, off, &tail[0], 1) < 0)
		return -1;
	if (rest >= 2 && parse_xdp_load(ctx, off + 1, &tail[1], 1) < 0)
		return -1;
	if (rest >= 3 && parse_xdp_load(ctx, off + 2, &tail[2], 1) < 0)
		return -1;
	r = bpf_csum_diff(0, 0, (__be32 *)tail, 4, *sum);
	if (r < 0)
		return -1;
	*sum = (__u32)r;
	return 0;
}

/* csum_fold: the 16-bit one's complement of a 32-bit partial sum, in wire order. */
static __always_inline __u16 xdp_csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/*
 * The pod's eth0 offloads TCP/UDP checksums: its stack leaves only the pseudo-header sum in
 * the field and the skb says so (CHECKSUM_PARTIAL), which an XDP redirect does not carry.
 * So before a redirect: a TCP or UDP frame that is no fragment (IPv4: MF clear, offset 0;
 * IPv6: no extension header), whose L4 length (from the IP header; for UDP also its own
 * length field) is in the frame, and whose checksum does not verify, is taken to be
 * offloaded and completed the way the device would: field := the one's complement of the
 * folded sum of the L4 bytes as they are (the field's pseudo-header sum included). A checksum that verifies, an IPv4 UDP checksum of 0 (none) and anything else
 * are left alone.
 */
static __always_inline void xdp_complete_csum(struct xdp_md *ctx, const struct flow *f)
{
	__u32 l4_len, pseudo = 0, l4 = 0, frame_len = xdp_len(ctx);
	__u8 ph[40] = {};
	__u16 field, done;
	__u8 h[8];
	long r;

	if (!parse_has_ports(f))
		return;
	if (f->l3 == L3_IPV4) {
		__u16 tot, frag;

		if (parse_xdp_load(ctx, 14 + 2, h, 6) < 0)
			return;
		tot = (__u16)h[0] << 8 | h[1];
		frag = (__u16)h[4] << 8 | h[5];
		if (frag & 0x3fff)
			return;
		if (14 + tot > frame_len || 14 + tot < f->l4_off)
			return;
		l4_len = 14 + tot - f->l4_off;
		__builtin_memcpy(&ph[0], &f->src4, 4);
		__builtin_memcpy(&ph[4], &f->dst4, 4);
		ph[9] = f->proto;
		ph[10] = l4_len >> 8;
		ph[11] = l4_len & 0xff;
		r = bpf_csum_diff(0, 0, (__be32 *)ph, 12, 0);
	} else {
		__u16 plen;

		if (f->l4_off != 14 + 40)
			return; /* extension headers: left alone */
		if (parse_xdp_load(ctx, 14 + 4, h, 2) < 0)
			return;
		plen = (__u16)h[0] << 8 | h[1];
		if (14 + 40 + (__u32)plen > frame_len)
			return;
		l4_len = plen;
		__builtin_memcpy(&ph[0], f->src.addr, 16);
		__builtin_memcpy(&ph[16], f->dst.addr, 16);
		ph[34] = l4_len >> 8;
		ph[35] = l4_len & 0xff;
		ph[39] = f->proto;
		r = bpf_csum_diff(0, 0, (__be32 *)ph, 40, 0);
	}
	if (r < 0)
		return;
	pseudo = (__u32)r;
	if (l4_len < (f->proto == IPPROTO_TCP ? 20 : 8))
		return;
	if (parse_xdp_load(ctx, f->l4_off, h, 8) < 0)
		return;
	if (f->proto == IPPROTO_UDP) {
		if (((__u32)h[4] << 8 | h[5]) != l4_len)
			return;
		__builtin_memcpy(&field, &h[6], 2);
		if (f->l3 == L3_IPV4 && field == 0)
			return;
	}
	if (xdp_csum_range(ctx, f->l4_off, l4_len, &l4) < 0)
		return;
	{
		__u64 total = (__u64)pseudo + l4;

		if (xdp_csum_fold((__u32)((total & 0xffffffff) + (total >> 32))) == 0)
			return; /* it verifies */
	}
	done = xdp_csum_fold(l4);
	if (f->proto == IPPROTO_UDP && done == 0)
		done = 0xffff;
	{
		__u32 at = f->l4_off + (f->proto == IPPROTO_TCP ? 16 : 6);
		__u8 *p;

		if (at > PARSE_XDP_MAX_OFF)
			return;
		p = (__u8 *)(long)ctx->data + at;
		if ((void *)(p + 2) > (void *)(long)ctx->data_end)
			return;
		__builtin_memcpy(p, &done, 2);
	}
}

/*
 * The XDP action of a verdict, counted as TC's are. A redirect completes an offloaded
 * checksum (xdp_complete_csum), rewrites the destination MAC to ztunnel's eth0 and hands the frame to ztunnel's host veth, whose transmit puts it
 * on ztunnel's eth0's receive queue: that queue exists only in NAPI mode (an XDP program
 * on ztunnel's eth0, or GRO on it from 5.13), else the kernel drops the frame. Dropped
 * either way, never around ztunnel.
 */
static __always_inline int xdp_finish(struct xdp_md *ctx, enum redirect_verdict v, __u32 slot,
				      const struct ztunnel_info *zt, const struct flow *f)
{
	void *data, *data_end;
	struct ethhdr *eth;

	redirect_count(ctx->ingress_ifindex, slot, v, xdp_len(ctx));
	if (v == V_PASS)
		return XDP_PASS;
	if (v == V_DROP || !zt)
		return XDP_DROP;
	xdp_complete_csum(ctx, f);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, zt->mac, ETH_ALEN);
	return bpf_redirect(zt->ifindex, 0);
}

static __always_inline int xdp_capture_outbound(struct xdp_md *ctx)
{
	struct ztunnel_info *zt = redirect_ztunnel_slot();
	enum redirect_verdict v;
	struct flow f;
	__u32 slot;

	xdp_parse_frame(ctx, &f);
	v = redirect_outbound_verdict(ctx->ingress_ifindex, &f, zt, &slot);
	return xdp_finish(ctx, v, slot, zt, &f);
}

#endif
