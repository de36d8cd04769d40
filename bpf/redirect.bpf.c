// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Pod capture programs, attached to TC hooks of pods' host-side veths.
 *
 * Kept loadable on 4.20 kernels: -mcpu=v2, no global data, no loops; the programs that
 * use a newer helper (bpf_redirect_peer, 5.10) are separate entry points, and the loader
 * only loads the variant the kernel's probes allow.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ambient_redirect.h"

/* pods: ::ffff:198.18.0.10 -> { ifindex 12, mac 0a:58:c6:12:00:0a, flags ENROLLED } */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PODS);
	__type(key, struct pod_key);
	__type(value, struct pod_info);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pods SEC(".maps");

/* ztunnel: 0 -> { ifindex 7, peer_ifindex 2, mac 0a:58:c6:12:00:02, flags PRESENT } */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ztunnel_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ztunnel SEC(".maps");

#include "redirect.h"

SEC("tc")
int out_redirect(struct __sk_buff *skb)
{
	return capture_outbound(skb, false);
}

SEC("tc")
int out_redir_peer(struct __sk_buff *skb)
{
	return capture_outbound(skb, true);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
