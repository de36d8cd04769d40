// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The baseline of `ambient-redirect bench`: a TC program that does nothing. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int bench_empty(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
