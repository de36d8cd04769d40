// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Stand-ins for a primary CNI's programs on an enrolled pod's host veth, one per verdict,
 * for the coexistence matrix (test/kernel/cni-coexist.test.ts; docs/datapath.md,
 * "Beside the primary CNI's programs"). Each counts the frames it sees in `seen`
 * (key 0: on the host veth's ingress, frames from the pod; key 1: on its egress, frames to
 * the pod), so a test can tell whether it ran at all, then returns:
 *
 * - foreign_ok: TC_ACT_OK (tcx: TCX_PASS), the walk ends, the frame goes on;
 * - foreign_next: TC_ACT_UNSPEC (tcx: TCX_NEXT), the next program or filter decides;
 * - foreign_drop: TC_ACT_SHOT (tcx: TCX_DROP);
 * - foreign_redir: frames from the pod bpf_redirect_neigh to the device in
 *   `target[0]` (the node's uplink: what Cilium's BPF host routing does), frames to the
 *   pod TC_ACT_OK.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} target SEC(".maps");

/* 1 on the host veth's ingress (a frame from the pod), 0 on its egress. */
static __always_inline int count(struct __sk_buff *skb)
{
	int from_pod = skb->ingress_ifindex == skb->ifindex;
	__u32 key = from_pod ? 0 : 1;
	__u64 *n = bpf_map_lookup_elem(&seen, &key);

	if (n)
		__sync_fetch_and_add(n, 1);
	return from_pod;
}

SEC("tc")
int foreign_ok(struct __sk_buff *skb)
{
	count(skb);
	return TC_ACT_OK;
}

SEC("tc")
int foreign_next(struct __sk_buff *skb)
{
	count(skb);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int foreign_drop(struct __sk_buff *skb)
{
	count(skb);
	return TC_ACT_SHOT;
}

SEC("tc")
int foreign_redir(struct __sk_buff *skb)
{
	__u32 key = 0;
	__u32 *ifindex;

	if (!count(skb))
		return TC_ACT_OK;
	ifindex = bpf_map_lookup_elem(&target, &key);
	if (!ifindex || !*ifindex)
		return TC_ACT_SHOT;
	return bpf_redirect_neigh(*ifindex, NULL, 0, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
