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
 * What `auto` picks, and why. TC until the TC/XDP benchmark (docs/benchmarks.md) shows the
 * XDP hook cheaper: XDP on a veth also turns off the pod's software GSO, caps the veth's
 * MTU and needs ztunnel's eth0 in NAPI mode, costs TC does not have.
 */
export const AUTO_HOOK: { hook: Hook; why: string } = {
  hook: 'tc',
  why: 'tc until a benchmark shows xdp cheaper (xdp also turns off the pod’s GSO and caps its veth’s MTU)',
};

/**
 * The pod-side outbound hook of a node. Only the node topology's ebpf capture has one; with
 * `xdp` asked where there is none (the in-pod capture, iptables mode asked for), the caller
 * refuses the flags (src/config.ts); where iptables is a fallback chosen at run time, the
 * request is logged as not applying (a node whose kernel lacks the BPF features runs no BPF).
 */
export function selectHook(requested: RequestedHook, capture: { ztunnelMode: 'node' | 'inpod'; mode: SelectedMode }): HookSelection {
  if (capture.ztunnelMode !== 'node') return { hook: null, reason: `--hook ${requested} does not apply: the in-pod capture has no host-veth hook` };
  if (capture.mode !== 'ebpf') return { hook: null, reason: `--hook ${requested} does not apply: iptables mode runs no BPF program` };
  if (requested === 'auto') return { hook: AUTO_HOOK.hook, reason: `auto: ${AUTO_HOOK.why}` };
  return { hook: requested, reason: `${requested} requested` };
}

/** Whether a --hook request contradicts the other flags (refused at start, exit 2), and why. */
export function hookConflict(requested: RequestedHook, flags: { ztunnelMode: 'node' | 'inpod'; mode: RequestedMode }): string | null {
  if (requested !== 'xdp') return null;
  if (flags.ztunnelMode !== 'node')
    return '--hook xdp needs --ztunnel-mode node: the in-pod capture (inpod mode) runs inside each pod’s netns and has no host-veth hook to choose';
  if (flags.mode === 'iptables') return '--hook xdp needs --mode ebpf (or auto): iptables mode runs no BPF program';
  return null;
}
