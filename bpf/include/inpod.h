/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Layouts and constants of the in-pod capture (bpf/inpod.bpf.c; docs/datapath.md, "In-pod
 * capture"), shared by its programs and the agent. Plain data, as ambient_redirect.h:
 * src/bpf/inpod-layout.generated.ts is generated from the object's BTF.
 */
#ifndef AMBIENT_REDIRECT_INPOD_H
#define AMBIENT_REDIRECT_INPOD_H

#include <linux/types.h>

/* Kubelet-probe flows the node has open to in-pod pods at once (LRU: the oldest go). */
#ifndef MAX_PROBE_FLOWS
#define MAX_PROBE_FLOWS 16384
#endif

/*
 * SYNs handed over at once to ztunnel's listeners through the kernel's TIME_WAIT path
 * (inpod_handoff); an entry lives from the TC program's write to the socket lookup of the
 * same frame, or, for a SYN whose lookup never came, until the agent sweeps its
 * generation. A full map drops the SYN: fail closed.
 */
#ifndef MAX_HANDOFFS
#define MAX_HANDOFFS 4096
#endif

/*
 * A handoff's generation (docs/datapath.md, "TIME_WAIT: the handoff"): bits
 * INPOD_HANDOFF_GEN_SHIFT and up of CLOCK_MONOTONIC in ns (2^31 ns, 2.1 s a generation),
 * modulo INPOD_HANDOFF_GENS. inpod_lookup finds an entry of its own generation and of the
 * one before; the agent deletes only entries two generations old, which no program writes
 * or looks up any more.
 */
#define INPOD_HANDOFF_GEN_SHIFT 31
#define INPOD_HANDOFF_GENS 4

/*
 * ztunnel's listeners kept in inpod_listeners (one per pod address, port and family that
 * had a SYN handed over). Best effort: a full map only costs the churn it saves.
 */
#ifndef MAX_INPOD_LISTENERS
#define MAX_INPOD_LISTENERS 16384
#endif

/* ztunnel's in-pod listeners: the same ports as in its own netns. */
#define INPOD_PORT_OUTBOUND 15001
#define INPOD_PORT_INBOUND 15006
#define INPOD_PORT_HBONE 15008
#define INPOD_PORT_DNS 15053

/* ztunnel's SO_MARK (1337) under Istio's mask: its traffic is never captured. */
#define INPOD_ZTUNNEL_MARK 0x539
#define INPOD_ZTUNNEL_MARK_MASK 0xfff

/*
 * The mark inpod_out puts on a frame it loops back into the pod: inpod_in knows by it that
 * the frame is the pod's own (a mark does not survive a veth into another netns, so no
 * frame from outside carries it), and policy routing turns it into local delivery.
 */
#define INPOD_MARK_LOOP 0x20000

/* The source the node's own connections to in-pod pods are rewritten to (Istio's). */
#define INPOD_PROBE_ADDR4 0xa9fe077f /* 169.254.7.127, host order */

#ifndef MAX_INPOD_PODS
#define MAX_INPOD_PODS 65536
#endif

/* Policy routing in the pod's netns: fwmark INPOD_MARK_LOOP -> this table (local default dev lo). */
#define INPOD_ROUTE_TABLE 135
#define INPOD_RULE_PREF 135

/*
 * The local route: `iif lo ipproto tcp fwmark 0/0xfff lookup INPOD_ROUTE_TABLE` at this
 * priority sends the pod's own TCP (not ztunnel's) to lo, where inpod_lo_in takes its SYNs
 * to ztunnel's listener; the table's route carries the pod's address as its source.
 */
#define INPOD_RULE_PREF_LOCAL 136
/* `to <probe address> ipproto tcp lookup main` before it: the app's answers to probes leave. */
#define INPOD_RULE_PREF_PROBE 134

/* The one slot of the inpod_config map. */
#define INPOD_CONFIG_SLOT 0

enum inpod_flags {
	INPOD_F_DNS_CAPTURE = 1 << 0, /* UDP and TCP to port 53 go to ztunnel's 15053 */
};

/* A pod's annotations, by its address (inpod_overrides). */
enum inpod_override_flags {
	INPOD_O_DNS_CAPTURE = 1 << 0,    /* dns-capture "true": this pod's DNS goes to 15053 */
	INPOD_O_NO_DNS_CAPTURE = 1 << 1, /* dns-capture "false": this pod's DNS is not captured */
	INPOD_O_BYPASS_INBOUND = 1 << 2, /* bypass-inbound-capture "true": inbound TCP reaches the pod */
};

/* Value of the inpod_overrides map, keyed by the pod's address (struct addr_key). */
struct inpod_override {
	__u32 flags; /* enum inpod_override_flags, host order */
};

/* Value of the inpod_config map's single slot. */
struct inpod_config {
	__u32 flags; /* enum inpod_flags, host order */
};

/*
 * Key of the probe_flows map: a TCP flow the node opened to an in-pod pod, whose source the
 * host-side program rewrote to the probe address.
 */
struct probe_flow_key {
	__u8 pod[16];     /* the pod's address, network order; IPv4 as ::ffff:a.b.c.d */
	__u16 pod_port;   /* network order */
	__u16 node_port;  /* network order */
	__u8 family;      /* 4 or 6 */
	__u8 pad[3];      /* 0 */
};

/* Value of the probe_flows map. */
struct probe_flow_info {
	__u8 node[16]; /* the node's original source address, network order (IPv4 as the key's) */
};

/*
 * Key of the inpod_handoff map: a TCP SYN whose 4-tuple meets a TIME_WAIT socket in the pod's
 * netns, as the receiving stack sees it (docs/datapath.md, "TIME_WAIT: the handoff"). Its
 * value is ztunnel's listener, which inpod_lookup gives the kernel's listener lookup.
 */
struct inpod_handoff_key {
	__u8 remote[16];    /* the SYN's source, network order; IPv4 as ::ffff:a.b.c.d */
	__u8 local[16];     /* its destination, likewise */
	__u16 remote_port;  /* network order */
	__u16 local_port;   /* network order */
	__u8 family;        /* 4 or 6 */
	__u8 gen;           /* the generation it was written in, 0 to INPOD_HANDOFF_GENS - 1 */
	__u8 pad[2];        /* 0 */
};

/*
 * Key of the inpod_listeners map: ztunnel's listener that took a handed-over SYN, by the
 * pod's address the SYN carried (its source outbound, its destination inbound), the port
 * and the SYN's family. The map holds each such listener for as long as it lives, so that
 * the socket's sockmap state (its psock) is not torn down and rebuilt on every handoff:
 * an inpod_handoff update that met that teardown on the other CPU failed with EBUSY and
 * lost the SYN (docs/datapath.md, "TIME_WAIT: the handoff"). No program reads it.
 */
struct inpod_listener_key {
	__u8 pod[16];  /* network order; IPv4 as ::ffff:a.b.c.d */
	__u16 port;    /* the listener's port, network order */
	__u8 family;   /* 4 or 6: the SYN's */
	__u8 pad;      /* 0 */
};

/*
 * Value of the inpod_pods map, the agent's record of what it did in a pod's netns (no
 * program reads it), keyed by the netns's inode number (__u64, host order): uninstall
 * undoes exactly that, after a restart too.
 */
struct inpod_pod {
	__u32 eth_ifindex;  /* the pod's interface inside its netns, host order */
	__u32 host_ifindex; /* the pod's host veth in the node's netns, host order */
	__u32 flags;        /* enum inpod_pod_flags, host order */
	__u32 pad;          /* 0 */
};

enum inpod_pod_flags {
	INPOD_POD_QDISC_POD = 1 << 0,    /* we created the clsact qdisc on the pod's interface */
	INPOD_POD_QDISC_HOST = 1 << 1,   /* we created the one on its host veth */
	INPOD_POD_ACCEPT_LOCAL = 1 << 2, /* accept_local was already 1 (remove leaves it so) */
	INPOD_POD_QDISC_VM = 1 << 3,     /* we created the clsact qdisc on a VM interface (remove deletes those left empty) */
	INPOD_POD_QDISC_LO = 1 << 4,     /* we created the clsact qdisc on lo */
	INPOD_POD_RP_FILTER_SET = 1 << 5, /* we wrote rp_filter 2 (loose) on the pod's interface: its IPv4 was strict */
	INPOD_POD_RP_FILTER_WAS_1 = 1 << 6, /* ... and the interface's own value was 1 (else 0, under all=1) */
};

#endif /* AMBIENT_REDIRECT_INPOD_H */
