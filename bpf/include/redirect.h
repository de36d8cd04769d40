/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Outbound capture: from an enrolled pod's host veth (TC ingress) straight to ztunnel. */
#ifndef AMBIENT_REDIRECT_REDIRECT_H
#define AMBIENT_REDIRECT_REDIRECT_H

static __always_inline void pod_key_v4(struct pod_key *key, __be32 addr)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->addr[10] = 0xff;
	key->addr[11] = 0xff;
	__builtin_memcpy(&key->addr[12], &addr, sizeof(addr));
}

static __always_inline int redirect_to_ztunnel(struct __sk_buff *skb,
					       const struct ztunnel_info *zt, bool peer)
{
	/* ztunnel's netns only accepts frames addressed to its own eth0. */
	if (bpf_skb_store_bytes(skb, 0, zt->mac, ETH_ALEN, 0) < 0)
		return TC_ACT_SHOT;
	if (peer)
		return bpf_redirect_peer(zt->ifindex, 0);
	return bpf_redirect(zt->ifindex, 0);
}

static __always_inline int capture_outbound(struct __sk_buff *skb, bool peer)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct pod_key key;
	struct pod_info *pod;
	struct ztunnel_info *zt;
	__u32 slot = ZTUNNEL_SLOT;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return TC_ACT_OK;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return TC_ACT_OK;

	pod_key_v4(&key, ip->saddr);
	pod = bpf_map_lookup_elem(&pods, &key);
	if (!pod || !(pod->flags & POD_F_ENROLLED))
		return TC_ACT_OK;

	zt = bpf_map_lookup_elem(&ztunnel, &slot);
	/* An enrolled pod never reaches the network around ztunnel. */
	if (!zt || !(zt->flags & ZT_F_PRESENT) || !zt->ifindex)
		return TC_ACT_SHOT;
	return redirect_to_ztunnel(skb, zt, peer);
}

#endif
