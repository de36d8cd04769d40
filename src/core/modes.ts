/**
 * The capture vocabulary, declared once: which mode a node asks for and gets, the ebpf
 * mode's outbound variant and inbound delivery, and the iptables mode's tunnel.
 */

/** What --mode asks for. */
export type RequestedMode = 'ebpf' | 'iptables' | 'auto';
/** The mode a node runs (mode selection's answer). */
export type SelectedMode = 'ebpf' | 'iptables';
/** ebpf mode's outbound program: bpf_redirect_peer (5.10) or plain bpf_redirect. */
export type Variant = 'redirect_peer' | 'redirect';
/** How ebpf mode hands inbound traffic to ztunnel's socket. */
export type Delivery = 'sk_assign' | 'tproxy';
/** What --tunnel asks for, and the tunnel iptables mode builds. */
export type RequestedTunnel = 'geneve' | 'vxlan' | 'auto';
export type Tunnel = 'geneve' | 'vxlan';
/**
 * What --non-tcp does with what ztunnel does not proxy (UDP but captured DNS, ICMP but
 * errors): pass it uncaptured (Istio's behaviour) or drop it (docs/datapath.md O15b).
 */
export type NonTcpPolicy = 'pass' | 'drop';
export const NON_TCP_POLICIES: readonly NonTcpPolicy[] = ['pass', 'drop'];

/**
 * The hook of the pod-side outbound program (node topology, ebpf mode): TC ingress of the
 * enrolled pod's host veth, or that veth's XDP hook (docs/datapath.md, "The outbound hook").
 */
export type Hook = 'tc' | 'xdp';
export type RequestedHook = Hook | 'auto';
export const REQUESTED_HOOKS: readonly RequestedHook[] = ['tc', 'xdp', 'auto'];

export interface HookSelection {
  /** null: the capture that runs has no pod-side outbound hook to choose (inpod, iptables). */
  hook: Hook | null;
  /** One sentence for the log line and `status`. */
  reason: string;
}

/**
 * What `auto` picks, and why: the TC/XDP benchmark's figures (docs/benchmarks.md, both
 * hooks side by side in one run, 2026-12-01). XDP lost or tied on every workload: the
 * pod's stream fell to 0.32× (XDP on a veth turns off the pod's software GSO, so the pod
 * sends MTU-sized frames), connections/s to 0.88×, request/response tied (1.01×, interval
 * 0.95-1.13), and the floods it was expected to win (UDP and SYNs from an enrolled pod,
 * UDP and SYNs from a forged source, dropped at the XDP hook) cost 1.14-1.27× the CPU per
 * frame of TC's, the frames crossing the veth to the peer's NAPI one by one instead of
 * TC's direct path.
 */
export const AUTO_HOOK: { hook: Hook; why: string } = {
  hook: 'tc',
  why: 'tc (xdp measured slower or even on every workload: stream 0.32×, connections/s 0.88×, request/response 1.01×; floods, forged-source drops too, 1.14-1.27× the CPU per frame)',
};

/**
 * The pod-side outbound hook of a node. Only the node topology's ebpf capture has one; with
 * `xdp` asked where there is none (the in-pod capture, iptables mode asked for), the caller
 * refuses the flags (src/config.ts); where iptables is a fallback chosen at run time, the
 * request is logged as not applying (a node whose kernel lacks the BPF features runs no BPF).
 */
export function selectHook(
  requested: RequestedHook,
  capture: { ztunnelMode: 'node' | 'inpod'; mode: SelectedMode; release?: string },
): HookSelection & { fallback?: true } {
  if (capture.ztunnelMode !== 'node') return { hook: null, reason: `--hook ${requested} does not apply: the in-pod capture has no host-veth hook` };
  if (capture.mode !== 'ebpf') return { hook: null, reason: `--hook ${requested} does not apply: iptables mode runs no BPF program` };
  if (requested === 'auto') return { hook: AUTO_HOOK.hook, reason: `auto: ${AUTO_HOOK.why}` };
  const m = /^(\d+)\.(\d+)/.exec(capture.release ?? '');
  if (requested === 'xdp' && m && (Number(m[1]) < XDP_FLOOR.major || (Number(m[1]) === XDP_FLOOR.major && Number(m[2]) < XDP_FLOOR.minor)))
    return {
      hook: 'tc',
      fallback: true,
      reason: `xdp requested but kernel ${capture.release} is older than ${XDP_FLOOR.major}.${XDP_FLOOR.minor}, whose verifier takes xdp_out (up to 1,000,000 instructions processed; 4.20's limit is 131,072): falling back to tc`,
    };
  return { hook: requested, reason: `${requested} requested` };
}

/**
 * The XDP hook's floor: xdp_out's verifier cost (300,000-700,000 instructions processed,
 * docs/kernel-matrix.md) needs the 1,000,000 limit that came in 5.2.
 */
export const XDP_FLOOR = { major: 5, minor: 2 } as const;

/** Whether a --hook request contradicts the other flags (refused at start, exit 2), and why. */
export function hookConflict(requested: RequestedHook, flags: { ztunnelMode: 'node' | 'inpod'; mode: RequestedMode }): string | null {
  if (requested !== 'xdp') return null;
  if (flags.ztunnelMode !== 'node')
    return '--hook xdp needs --ztunnel-mode node: the in-pod capture (inpod mode) runs inside each pod’s netns and has no host-veth hook to choose';
  if (flags.mode === 'iptables') return '--hook xdp needs --mode ebpf (or auto): iptables mode runs no BPF program';
  return null;
}
