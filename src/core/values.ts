/**
 * The values the data path's maps hold for a pod and for ztunnel, as the core computes
 * them: plain data. src/bpf/codec.ts turns them into bytes with the generated layouts.
 *
 * The flags mirror the shared header's enum pod_flags and enum ztunnel_flags
 * (bpf/include/ambient_redirect.h); the core imports nothing of ours, so they are written
 * here, and test/build/layout.test.ts fails when they and the generated constants differ.
 */

/** Flags of pod_info (enum pod_flags). */
export const PodFlags = { ENROLLED: 1, DNS_CAPTURE: 2, NO_DNS_CAPTURE: 4, BYPASS_INBOUND: 8 } as const;
/** Flags of ztunnel_info (enum ztunnel_flags). */
export const ZtunnelFlags = { PRESENT: 1, DNS_CAPTURE: 2, NON_TCP_DROP: 4 } as const;

/** The pod entry's flags beyond ENROLLED that a pod's annotations ask for (docs/datapath.md "Flags"). */
export function overrideFlags(o: { bypassInbound: boolean; dnsCapture: boolean | null }): number {
  return (
    (o.bypassInbound ? PodFlags.BYPASS_INBOUND : 0) | (o.dnsCapture === true ? PodFlags.DNS_CAPTURE : o.dnsCapture === false ? PodFlags.NO_DNS_CAPTURE : 0)
  );
}

export interface PodInfo {
  ifindex: number;
  mac: string;
  flags: number;
  /**
   * The veth's slot in the counters array (ebpf mode: src/core/slots.ts hands them out);
   * absent or 0: none, the frames count in slot 0.
   */
  slot?: number;
}

export interface ZtunnelInfo {
  ifindex: number;
  peerIfindex: number;
  mac: string;
  flags: number;
  netnsCookie: bigint;
}
