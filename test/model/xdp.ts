/**
 * The reference model of the XDP hook of the pod-side outbound capture (docs/datapath.md,
 * "XDP (pod-side outbound)"): rows O1–O17 decide as they do at TC (test/model/datapath.ts's
 * `outbound`, unchanged), and the hook only changes how a verdict is carried out:
 * pass → XDP_PASS (frame untouched), drop → XDP_DROP, redirect → XDP_REDIRECT with the
 * destination MAC rewritten to ztunnel's eth0. `I` is the device the frame arrived on
 * (xdp_md->ingress_ifindex).
 */
import { type ModelCtx, type ModelState, outbound, type Verdict } from './datapath.js';

export type XdpActionName = 'XDP_PASS' | 'XDP_DROP' | 'XDP_REDIRECT';

export interface XdpVerdict {
  action: XdpActionName;
  /** The spec row that decided, e.g. 'O8'. */
  row: string;
  /** XDP_REDIRECT: the destination MAC written into the frame (ztunnel's eth0). */
  rewrittenDstMac?: string;
  /** XDP_REDIRECT: the device the frame is handed to (ztunnel's host veth). */
  redirectIfindex?: number;
}

/** The action that carries out a TC verdict at XDP. */
export function xdpAction(v: Verdict): XdpActionName {
  switch (v.verdict) {
    case 'pass':
      return 'XDP_PASS';
    case 'drop':
      return 'XDP_DROP';
    case 'redirect':
      return 'XDP_REDIRECT';
    default:
      throw new Error(`row ${v.row}: no XDP action for ${v.verdict}`);
  }
}

/** xdp_out on a frame that arrived on `ctx.ifindex` (an enrolled pod's host veth). */
export function xdpOutbound(frame: Buffer, state: ModelState, ctx: Pick<ModelCtx, 'ifindex'>): XdpVerdict {
  const v = outbound(frame, state, { ifindex: ctx.ifindex });
  const action = xdpAction(v);
  if (action !== 'XDP_REDIRECT') return { action, row: v.row };
  return { action, row: v.row, rewrittenDstMac: v.rewrittenDstMac!, redirectIfindex: state.ztunnel.ifindex };
}

/** BPF_PROG_RUN refuses XDP frames shorter than an Ethernet header (EINVAL). */
export function xdpRunnable(frame: Buffer): boolean {
  return frame.length >= 14;
}
