// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * A stand-in for another project's program on a hook we use (a primary CNI's filter at a
 * lower tc priority, or a tcx program): it ends every packet's walk with a verdict of its
 * own, so a program after it never runs. The ordering test (test/kernel/ordering.test.ts)
 * puts it ahead of ours and expects readiness to say so.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int foreign_pass(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
