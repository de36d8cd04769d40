/**
 * The pure core: from who is enrolled and what the node looks like, compute the state the
 * data path must have; diff it against what the kernel holds. Plain data in, plain data
 * out; no kernel, no processes.
 */
import { hostLinkFor, type HostNet, type Link } from './node.js';
import { PodFlags, ZtunnelFlags, type PodInfo, type ZtunnelInfo } from './values.js';

/** Where ztunnel is, as far as the host can tell. */
export interface ZtunnelPlacement {
  hostLink: Link;
  /** ztunnel's eth0 inside its netns. */
  peer: Link;
  /** ztunnel's netns, by its name under /var/run/netns. */
  netns: string;
}

export interface Desired {
  /** pods map: pod IP -> value */
  pods: Map<string, PodInfo>;
  /** The ztunnel slot, or null when there is no ztunnel (the programs then fail closed). */
  ztunnel: ZtunnelInfo | null;
  /** Where ztunnel is (for modes that configure its netns), or null. */
  ztunnelPlacement: ZtunnelPlacement | null;
  /** Host veths that carry our capture program (TC ingress). */
  hooks: Set<number>;
  /** Enrolled pods the node cannot place yet (no route to their IP): retried next pass. */
  unplaced: string[];
}

export function ztunnelInfo(z: ZtunnelPlacement): ZtunnelInfo {
  return { ifindex: z.hostLink.ifindex, peerIfindex: z.peer.ifindex, mac: z.peer.mac, flags: ZtunnelFlags.PRESENT, netnsCookie: 0n };
}

export function desiredState(enrolled: Iterable<string>, net: HostNet, ztunnel: ZtunnelPlacement | null): Desired {
  const pods = new Map<string, PodInfo>();
  const hooks = new Set<number>();
  const unplaced: string[] = [];
  for (const ip of enrolled) {
    const link = hostLinkFor(net, ip);
    if (!link) {
      unplaced.push(ip);
      continue;
    }
    pods.set(ip, { ifindex: link.ifindex, mac: '00:00:00:00:00:00', flags: PodFlags.ENROLLED });
    hooks.add(link.ifindex);
  }
  return { pods, ztunnel: ztunnel ? ztunnelInfo(ztunnel) : null, ztunnelPlacement: ztunnel, hooks, unplaced };
}

export interface PodDiff {
  upserts: Map<string, PodInfo>;
  deletes: string[];
}

const samePod = (a: PodInfo, b: PodInfo) => a.ifindex === b.ifindex && a.mac === b.mac && a.flags === b.flags;

export function diffPods(desired: ReadonlyMap<string, PodInfo>, actual: ReadonlyMap<string, PodInfo>): PodDiff {
  const upserts = new Map<string, PodInfo>();
  for (const [ip, want] of desired) {
    const have = actual.get(ip);
    if (!have || !samePod(have, want)) upserts.set(ip, want);
  }
  const deletes = [...actual.keys()].filter((ip) => !desired.has(ip));
  return { upserts, deletes };
}

export function diffHooks(desired: ReadonlySet<number>, actual: ReadonlySet<number>): { attach: number[]; detach: number[] } {
  return {
    attach: [...desired].filter((i) => !actual.has(i)),
    detach: [...actual].filter((i) => !desired.has(i)),
  };
}
