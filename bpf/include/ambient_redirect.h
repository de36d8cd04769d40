/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Layouts and constants shared by the BPF programs and the controller.
 *
 * The controller never copies these structs by hand: src/bpf/layout.generated.ts is
 * generated from the compiled object's BTF (`make layout`), and a test fails when the two
 * disagree. Every byte is named; the comment on each field gives its byte order.
 *
 * No SEC(), helpers or map definitions here: this header is plain data.
 * docs/datapath.md is the verdict spec the programs implement.
 */
#ifndef AMBIENT_REDIRECT_H
#define AMBIENT_REDIRECT_H

#include <linux/types.h>

#ifndef MAX_PODS
#define MAX_PODS 65536
#endif
#ifndef MAX_DNS_SERVERS
#define MAX_DNS_SERVERS 64
#endif
/* Host-originated flows to enrolled pods remembered at once (LRU: the oldest go). */
#ifndef MAX_HOST_FLOWS
#define MAX_HOST_FLOWS 16384
#endif
/* IPv6 extension headers walked before giving up (no loops on 4.20: unrolled). */
#ifndef MAX_IPV6_EXT
#define MAX_IPV6_EXT 4
#endif

/* The one slot of the ztunnel map. */
#define ZTUNNEL_SLOT 0

/*
 * The counters map's slot 0: frames on a veth the controller has recorded no slot for
 * (a hook outliving its pod's entries for a moment, a pod entry written without one).
 * The controller hands out slots 1..MAX_PODS, one per pod veth.
 */
#define COUNTERS_NO_SLOT 0

/* Ports ztunnel listens on inside its netns. */
#define ZTUNNEL_PORT_OUTBOUND 15001
#define ZTUNNEL_PORT_INBOUND 15006
#define ZTUNNEL_PORT_HBONE 15008
#define ZTUNNEL_PORT_DNS 15053

/*
 * Marks the ztunnel-side program sets on what it delivers (inside ztunnel's netns). Every
 * one has ZT_MARK_LOCAL, which policy routing turns into local delivery; the class bits
 * pick the TPROXY port where sockets are not assigned by BPF.
 */
#define ZT_MARK_MASK 0x0f00
#define ZT_MARK_LOCAL 0x0800     /* deliver locally: ICMP errors for ztunnel's sockets */
#define ZT_MARK_OUTBOUND 0x0900  /* -> 15001 */
#define ZT_MARK_INBOUND 0x0a00   /* -> 15006 */
#define ZT_MARK_HBONE 0x0b00     /* -> 15008 */
#define ZT_MARK_DNS 0x0c00       /* -> 15053 */
/* zt_assign could not assign the socket (a SYN meeting a TIME_WAIT socket): the TPROXY
 * rules, which can retire that socket, take over. */
#define ZT_MARK_TPROXY 0x1000

enum pod_flags {
	POD_F_ENROLLED = 1 << 0,       /* capture this pod; clear: the pod's traffic passes */
	POD_F_DNS_CAPTURE = 1 << 1,    /* this pod's DNS is captured whatever the slot says */
	POD_F_NO_DNS_CAPTURE = 1 << 2, /* this pod's DNS is not captured whatever the slot says */
	POD_F_BYPASS_INBOUND = 1 << 3, /* frames to the pod pass uncaptured (and their flows' replies) */
};

enum ztunnel_flags {
	ZT_F_PRESENT = 1 << 0,      /* the slot describes a live ztunnel; clear: fail closed */
	ZT_F_DNS_CAPTURE = 1 << 1,  /* DNS (UDP and TCP to port 53) goes to ztunnel's 15053 */
	ZT_F_NON_TCP_DROP = 1 << 2, /* UDP but captured DNS, and ICMP but errors: drop; clear: pass */
};

/* Key of the pods and dns_servers maps: an IP address. */
struct addr_key {
	__u8 addr[16]; /* network order; IPv4 as the mapped address ::ffff:a.b.c.d */
};

/* Value of the pods map. */
struct pod_info {
	__u32 ifindex; /* host-side veth of the pod, host order; the pod's traffic must
			* arrive on it and its inbound traffic leave through it */
	__u8 mac[6];   /* the pod's eth0 MAC, wire order (0 when unknown) */
	__u16 flags;   /* enum pod_flags, host order */
	__u32 slot;    /* the veth's index in counters, host order: every address of the pod
			* has its veth's (COUNTERS_NO_SLOT: counted in slot 0) */
};

/* Value of the veth_slots map, keyed by a pod's host veth ifindex (__u32, host order). */
struct veth_slot {
	__u32 slot; /* the veth's index in counters (as in its pods entries), host order */
};

/* Value of the ztunnel map's single slot. */
struct ztunnel_info {
	__u32 ifindex;      /* ztunnel's host-side veth, host order; 0 = no ztunnel */
	__u32 peer_ifindex; /* ztunnel's eth0 inside its netns, host order */
	__u8 mac[6];        /* ztunnel's eth0 MAC, wire order: the rewritten dst MAC */
	__u16 flags;        /* enum ztunnel_flags, host order */
	__u64 netns_cookie; /* ztunnel's netns cookie, host order; 0 = unknown */
};

/* Value of the dns_servers map: the key is a cluster DNS server; the value says no more. */
struct dns_info {
	__u32 flags; /* reserved, 0 */
};

/*
 * Key of the host_flows map: a TCP/UDP flow the node itself opened to an enrolled pod over
 * IPv6 (IPv4's are in host_flows4), written from the pod's side so that both directions
 * build the same key.
 */
struct host_flow_key {
	struct addr_key pod;  /* the pod's address (as in pods) */
	struct addr_key peer; /* the node's address the flow came from */
	__u16 pod_port;       /* network order */
	__u16 peer_port;      /* network order */
	__u8 proto;           /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad[3];          /* 0 */
};

/*
 * Key of the host_flows4 map: host_flows's key for an IPv4 flow. A map of its own because
 * a lookup hashes every byte of the key, and 16 bytes hash in a third of the time of 40
 * (docs/datapath.md, "Cost"): the pod's own TCP segments each ask for one (O10).
 */
struct host_flow4_key {
	__be32 pod;     /* the pod's address, network order */
	__be32 peer;    /* the node's address the flow came from, network order */
	__u16 pod_port;  /* network order */
	__u16 peer_port; /* network order */
	__u8 proto;      /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad[3];     /* 0 */
};

/* Value of the host_flows and host_flows4 maps. */
struct host_flow_info {
	__u32 ifindex; /* the pod's host veth the flow went out on, host order */
};

/* Key of the qdiscs map: a clsact qdisc the controller created (uninstall removes only those). */
struct qdisc_key {
	__u32 ifindex; /* host order */
	__u32 netns;   /* enum qdisc_netns, host order */
};

enum qdisc_netns {
	QDISC_NETNS_NODE = 0,    /* a pod's host veth, in the node's netns */
	QDISC_NETNS_ZTUNNEL = 1, /* ztunnel's eth0, in its netns */
};

/* Value of the qdiscs map. */
struct qdisc_info {
	__u32 flags; /* enum qdisc_flags, host order */
};

enum qdisc_flags {
	QDISC_F_CREATED = 1 << 0,   /* we created it: uninstall may remove it once empty */
	QDISC_F_RP_FILTER = 1 << 1, /* we changed its rp_filter: bits 2-3 hold the old value,
				     * bits 4-5 ours; uninstall puts the old one back while ours
				     * is still there. ifindex 0 is conf.all, 0xffffffff conf.default */
};

/*
 * Value of the per-CPU counters array, indexed by the slot the controller gave the pod's
 * host veth (__u32, pod_info.slot and veth_slots).
 */
struct pod_counters {
	__u64 redirected_packets; /* host order, all of them */
	__u64 redirected_bytes;
	__u64 dropped_packets;
	__u64 dropped_bytes;
	__u64 passed_packets;
	__u64 passed_bytes;
};

#endif /* AMBIENT_REDIRECT_H */
