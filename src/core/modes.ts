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
