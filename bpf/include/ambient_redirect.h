/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Layouts shared by the BPF programs and the controller.
 *
 * The controller never copies these structs by hand: src/bpf/layout.generated.ts is
 * generated from the compiled object's BTF (`make layout`), and a test fails when the two
 * disagree. Every byte is named; the comment on each field gives its byte order.
 *
 * No SEC(), helpers or map definitions here: this header is plain data.
 */
#ifndef AMBIENT_REDIRECT_H
#define AMBIENT_REDIRECT_H

#include <linux/types.h>

#ifndef MAX_PODS
#define MAX_PODS 65536
#endif

/* The one slot of the ztunnel map. */
#define ZTUNNEL_SLOT 0

/* Pod ports ztunnel listens on inside its netns. */
#define ZTUNNEL_PORT_OUTBOUND 15001
#define ZTUNNEL_PORT_INBOUND 15006
#define ZTUNNEL_PORT_HBONE 15008
#define ZTUNNEL_PORT_DNS 15053

enum pod_flags {
	POD_F_ENROLLED = 1 << 0, /* capture this pod's traffic */
};

enum ztunnel_flags {
	ZT_F_PRESENT = 1 << 0,     /* the slot describes a live ztunnel */
	ZT_F_DNS_CAPTURE = 1 << 1, /* redirect DNS (port 53) to ztunnel too */
};

/* Key of the pods map: the pod's IP. */
struct pod_key {
	__u8 addr[16]; /* network order; IPv4 as the mapped address ::ffff:a.b.c.d */
};

/* Value of the pods map. */
struct pod_info {
	__u32 ifindex; /* host-side veth of the pod, host order; traffic from the pod must
			* arrive on it (anti-spoofing) */
	__u8 mac[6];   /* the pod's eth0 MAC, wire order */
	__u16 flags;   /* enum pod_flags, host order */
};

/* Value of the ztunnel map's single slot. */
struct ztunnel_info {
	__u32 ifindex;      /* ztunnel's host-side veth, host order; 0 = no ztunnel */
	__u32 peer_ifindex; /* ztunnel's eth0 inside its netns, host order */
	__u8 mac[6];        /* ztunnel's eth0 MAC, wire order: the rewritten dst MAC */
	__u16 flags;        /* enum ztunnel_flags, host order */
	__u64 netns_cookie; /* ztunnel's netns cookie, host order; 0 = unknown */
};

#endif /* AMBIENT_REDIRECT_H */
