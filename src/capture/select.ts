/**
 * Which capture mode and which tunnel a node gets: pure functions of the request and the
 * kernel's facts (release and libbpf feature probes, gathered by host/kernel.ts), so that
 * any kernel, a 4.19 one included, can be simulated in a test.
 *
 * The probes decide, the release only cross-checks them: a probe answer the release
 * cannot explain (a 4.19 kernel offering bpf_redirect_peer, a 6.x kernel without
 * SCHED_CLS) is an error, never a silent fallback.
 */

export type { RequestedMode, RequestedTunnel, SelectedMode, Tunnel } from '../core/modes.js';
import type { RequestedMode, RequestedTunnel, SelectedMode, Tunnel } from '../core/modes.js';

export type { BpfProbes, KernelFacts } from '../host/kernel.js';
import type { BpfProbes, KernelFacts } from '../host/kernel.js';

export interface ModeSelection {
  mode: SelectedMode;
  /** One sentence for the log line, the metric's label and `status`. */
  reason: string;
  /** True when `ebpf` was asked for and the node gets `iptables`. */
  fallback: boolean;
}

export class KernelFactsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KernelFactsError';
  }
}

/** ebpf mode's floor: bpf_sk_lookup_tcp and friends arrived in 4.20. */
export const EBPF_FLOOR = { major: 4, minor: 20 } as const;

/** Features and the release that introduced each: a probe saying yes below it is a lie. */
const INTRODUCED: readonly [keyof BpfProbes, number, number, string][] = [
  ['skLookupTcp', 4, 20, 'bpf_sk_lookup_tcp'],
  ['skAssign', 5, 7, 'bpf_sk_assign'],
  ['redirectPeer', 5, 10, 'bpf_redirect_peer'],
];
/** Features every kernel at or above the floor has: a probe saying no there is a lie. */
const REQUIRED: readonly [keyof BpfProbes, string][] = [
  ['schedCls', 'BPF_PROG_TYPE_SCHED_CLS'],
  ['redirect', 'bpf_redirect'],
  ['skLookupTcp', 'bpf_sk_lookup_tcp'],
];

export function parseRelease(release: string): { major: number; minor: number } | null {
  const m = /^(\d+)\.(\d+)/.exec(release);
  return m ? { major: Number(m[1]), minor: Number(m[2]) } : null;
}

const atLeast = (v: { major: number; minor: number }, major: number, minor: number) => v.major > major || (v.major === major && v.minor >= minor);

/** Throws KernelFactsError when a probe answer contradicts the release. */
export function checkConsistency(facts: KernelFacts): void {
  const v = parseRelease(facts.release);
  const p = facts.probes;
  if (!v || !p) return;
  for (const [key, major, minor, what] of INTRODUCED) {
    if (p[key] && !atLeast(v, major, minor)) {
      throw new KernelFactsError(
        `kernel ${facts.release} is older than ${major}.${minor} but the probe says ${what} exists: the release or the probe is wrong; refusing to guess`,
      );
    }
  }
  if (atLeast(v, EBPF_FLOOR.major, EBPF_FLOOR.minor)) {
    const missing = REQUIRED.filter(([key]) => !p[key]).map(([, what]) => what);
    if (missing.length > 0) {
      throw new KernelFactsError(
        `kernel ${facts.release} should offer ${missing.join(', ')} but the probe says no: the release or the probe is wrong (BPF restricted by LSM or config?); refusing to guess`,
      );
    }
  }
}

/** Why ebpf mode cannot run on these facts, or null when it can. */
function ebpfBlocker(facts: KernelFacts): string | null {
  if (!facts.probes) return `the BPF feature probes failed (${facts.probeError ?? 'unknown error'})`;
  const v = parseRelease(facts.release);
  if (v && !atLeast(v, EBPF_FLOOR.major, EBPF_FLOOR.minor)) {
    return `kernel ${facts.release} is older than ${EBPF_FLOOR.major}.${EBPF_FLOOR.minor}, the floor of ebpf mode`;
  }
  const missing = REQUIRED.filter(([key]) => !facts.probes![key]).map(([, what]) => what);
  if (missing.length > 0) return `the kernel lacks ${missing.join(', ')}`;
  return null;
}

/**
 * The capture mode for a request. `iptables` is honoured as asked (no probe needed);
 * `auto` takes ebpf when the kernel can; `ebpf` where it cannot falls back loudly.
 */
export function selectMode(requested: RequestedMode, facts: KernelFacts): ModeSelection {
  if (requested === 'iptables') return { mode: 'iptables', reason: 'iptables mode requested', fallback: false };
  checkConsistency(facts);
  const blocker = ebpfBlocker(facts);
  if (blocker === null) {
    const why = requested === 'ebpf' ? 'ebpf mode requested' : 'auto';
    return { mode: 'ebpf', reason: `${why}: kernel ${facts.release} passes the BPF feature probes`, fallback: false };
  }
  if (requested === 'ebpf') {
    return { mode: 'iptables', reason: `ebpf mode requested but ${blocker}: falling back to iptables mode`, fallback: true };
  }
  return { mode: 'iptables', reason: `auto: ${blocker}`, fallback: false };
}

export interface TunnelSelection {
  tunnel: Tunnel;
  reason: string;
}

/** Geneve unless the kernel has no driver for it (then VXLAN) or VXLAN is asked for. */
export function selectTunnel(requested: RequestedTunnel, facts: Pick<KernelFacts, 'geneve' | 'release'>): TunnelSelection {
  if (requested === 'vxlan') return { tunnel: 'vxlan', reason: 'VXLAN requested' };
  if (requested === 'geneve') {
    if (facts.geneve === false)
      throw new KernelFactsError(`Geneve tunnel requested but kernel ${facts.release} has no Geneve driver (CONFIG_GENEVE); use --tunnel vxlan or auto`);
    return { tunnel: 'geneve', reason: 'Geneve requested' };
  }
  if (facts.geneve === false) return { tunnel: 'vxlan', reason: `kernel ${facts.release} has no Geneve driver: VXLAN instead` };
  return { tunnel: 'geneve', reason: facts.geneve ? 'the kernel has a Geneve driver' : 'default (could not tell whether the kernel has Geneve)' };
}
