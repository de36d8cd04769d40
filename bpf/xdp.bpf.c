// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The XDP hook of the pod-side outbound capture: docs/datapath.md, rows O1–O17, as
 * "XDP (pod-side outbound)" there says they apply at XDP. Same maps as build/redirect.bpf.o
 * (maps.h, pinned by name), so either hook runs on the agent's pins.
 *
 * -mcpu=v2 and no global data as redirect.bpf.c; veths run XDP natively from 4.19.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ambient_redirect.h"
#include "maps.h"
#include "parse.h"
#include "redirect.h"
#include "xdp.h"

/* O1–O17: frames leaving an enrolled pod (XDP of its host veth). */
SEC("xdp")
int xdp_out(struct xdp_md *ctx)
{
	return xdp_capture_outbound(ctx);
}

/*
 * Passes every frame. Attached to the XDP hook of ztunnel's eth0 it puts that veth end in
 * NAPI mode, which an XDP_REDIRECT to ztunnel's host veth needs to deliver on kernels
 * before 5.13 (GRO on ztunnel's eth0 does the same from 5.13).
 */
SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
