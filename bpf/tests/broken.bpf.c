// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The kernel matrix's negative control (docs/kernel-matrix.md): our outbound program's
 * first step, reading the ethertype, with the bounds check left out. Every verifier must
 * reject it ("invalid access to packet"); a kernel that loads it proves the matrix blind.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int broken_no_bounds_check(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	struct ethhdr *eth = data;

	/* Missing: if ((void *)(eth + 1) > (void *)(long)skb->data_end) return TC_ACT_SHOT; */
	return eth->h_proto == __builtin_bswap16(ETH_P_IP) ? TC_ACT_OK : TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
