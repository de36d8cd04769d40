// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The capture programs; docs/datapath.md is their spec, row by row.
 *
 * Kept loadable on 4.20 kernels: -mcpu=v2, no global data, loops unrolled. Entry points
 * that need a newer helper (bpf_redirect_peer 5.10, bpf_sk_assign 5.7) are separate
 * programs; the loader loads only the variants the kernel's probes allow.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ambient_redirect.h"
#include "maps.h"
#include "parse.h"
#include "redirect.h"
#include "ztunnel.h"

/* O1–O17: frames leaving an enrolled pod (TC ingress of its host veth). */
SEC("tc")
int out_redirect(struct __sk_buff *skb)
{
	return redirect_capture_outbound(skb, false);
}

SEC("tc")
int out_redir_peer(struct __sk_buff *skb)
{
	return redirect_capture_outbound(skb, true);
}

/* I1–I18: frames entering an enrolled pod (TC egress of its host veth). */
SEC("tc")
int in_redirect(struct __sk_buff *skb)
{
	return redirect_capture_inbound(skb);
}

/* Z1–Z10: ztunnel's eth0, TPROXY rules pick the listener by mark. */
SEC("tc")
int zt_mark(struct __sk_buff *skb)
{
	return zt_deliver(skb, false);
}

/* Z1–Z11: ztunnel's eth0, the socket is assigned here. */
SEC("tc")
int zt_assign(struct __sk_buff *skb)
{
	return zt_deliver(skb, true);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
