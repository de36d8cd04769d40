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

/**
 * A pod's sandbox as the node sees it: the host veth its IPs were placed on (and the
 * netns id of the veth's peer, where known). A pods-map entry stays bound to it: an IP
 * whose route moves to another veth is another sandbox's now, not this pod's.
 */
export interface SandboxBinding {
  ifindex: number;
  /** The veth's name; null when learnt from a pinned entry (an agent restart). */
  name: string | null;
  peerNetnsId: number | null;
  /** The CNI announcement (sandbox container ID) the binding was made under, or null. */
  announced: string | null;
  /** The pod's IPs when bound, joined. */
  ips: string;
}

/** What placement needs to know of an enrolled pod, by IP. */
export interface EnrolledRef {
  uid: string;
  /** deletionTimestamp is set. */
  terminating: boolean;
  /** All the pod's IPs as the membership knows them now. */
  ips: readonly string[];
  /** The last sandbox the CNI gate announced for this UID (its container ID), or null. */
  announced: string | null;
  /** Pod flags beyond ENROLLED from its annotations (values.ts overrideFlags); 0 when absent. */
  flags?: number;
}

export interface Placement {
  /** IP -> the host veth its entry and hook go on. */
  links: Map<string, Link>;
  /** The bindings after this pass, by UID (only pods still enrolled). */
  bindings: Map<string, SandboxBinding>;
  /** Enrolled IPs left out on purpose, with why. */
  refused: { ip: string; uid: string; reason: string }[];
  /** Enrolled IPs with no host route yet. */
  unplaced: string[];
}

function bindTo(link: Link, ref: EnrolledRef): SandboxBinding {
  return { ifindex: link.ifindex, name: link.name, peerNetnsId: link.peerNetnsId ?? null, announced: ref.announced, ips: ref.ips.join() };
}

/**
 * The bound veth, if it still exists: the same device (ifindex, and name and peer netns
 * where known), or a veth recreated under the same name into the same peer netns (the
 * same sandbox: its netns is what makes it one).
 */
function boundLink(b: SandboxBinding, net: HostNet): Link | undefined {
  const link = net.links.get(b.ifindex);
  const same = (l: Link) =>
    (b.name === null || l.name === b.name) && (b.peerNetnsId === null || l.peerNetnsId === undefined || l.peerNetnsId === b.peerNetnsId);
  if (link && same(link)) return link;
  if (b.name === null || b.peerNetnsId === null) return undefined;
  for (const l of net.links.values()) if (l.name === b.name && l.peerNetnsId === b.peerNetnsId) return l;
  return undefined;
}

/**
 * Places each enrolled pod's IPs on its own sandbox (issue 15, item 5). A pod is bound to
 * the veth its IPs route to when first placed (or, after a restart, to the veth its pinned
 * entry names). While that veth exists, the entries stay on it. When it is gone:
 * - the pod is terminating: its entries are dropped (the sandbox was torn down);
 * - there is evidence the pod has a new sandbox (the CNI gate announced this UID again,
 *   or the API shows the pod with other IPs): it is bound to where its IPs route now;
 * - otherwise its IPs are refused: a runtime may have handed them to a new pod the API
 *   does not show yet, which must not be captured with this pod's identity.
 */
export function placeBySandbox(
  enrolled: ReadonlyMap<string, EnrolledRef>,
  net: HostNet,
  prev: ReadonlyMap<string, SandboxBinding>,
  actual: ReadonlyMap<string, PodInfo>,
): Placement {
  const out: Placement = { links: new Map(), bindings: new Map(), refused: [], unplaced: [] };
  const byUid = new Map<string, { ref: EnrolledRef; ips: string[] }>();
  for (const [ip, ref] of enrolled) {
    const e = byUid.get(ref.uid);
    if (e) e.ips.push(ip);
    else byUid.set(ref.uid, { ref, ips: [ip] });
  }
  for (const [uid, { ref, ips }] of byUid) {
    let b = prev.get(uid);
    if (!b) {
      // No binding in memory: a pinned entry on a veth other than the route's is the
      // pod's previous sandbox (placed by an earlier run), not to be moved without evidence.
      // (ifindex 0: a mode whose entries name no veth, iptables' ipset.)
      for (const ip of ips) {
        const have = actual.get(ip);
        if (have && have.ifindex > 0 && have.ifindex !== hostLinkFor(net, ip)?.ifindex) {
          b = { ifindex: have.ifindex, name: null, peerNetnsId: null, announced: null, ips: ref.ips.join() };
          break;
        }
      }
    }
    let link = b ? boundLink(b, net) : undefined;
    if (b && !link) {
      if (ref.terminating) {
        for (const ip of ips) out.refused.push({ ip, uid, reason: 'terminating and its sandbox is gone' });
        out.bindings.set(uid, b);
        continue;
      }
      const evidence = (ref.announced !== null && ref.announced !== b.announced) || ref.ips.join() !== b.ips;
      if (!evidence) {
        for (const ip of ips)
          out.refused.push({
            ip,
            uid,
            reason: `its sandbox (veth ifindex ${b.ifindex}${b.name ? ` ${b.name}` : ''}) is gone and nothing shows the IP's new sandbox is this pod's`,
          });
        out.bindings.set(uid, b);
        continue;
      }
      b = undefined; // rebind below, on the evidence
    }
    if (!b || !link) {
      // First placement: the veth the pod's IPs route to.
      const first = ips.map((ip) => hostLinkFor(net, ip)).find((l) => l !== undefined);
      if (!first) {
        out.unplaced.push(...ips);
        continue;
      }
      link = first;
      b = bindTo(link, ref);
    } else if (b.name === null || b.ifindex !== link.ifindex) {
      b = { ...b, ifindex: link.ifindex, name: link.name, peerNetnsId: link.peerNetnsId ?? null };
    }
    out.bindings.set(uid, b);
    for (const ip of ips) {
      const routed = hostLinkFor(net, ip);
      if (!routed) out.unplaced.push(ip);
      else if (routed.ifindex !== link.ifindex) out.refused.push({ ip, uid, reason: `routes to ${routed.name}, not the pod's sandbox ${link.name}` });
      else out.links.set(ip, link);
    }
  }
  return out;
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
  /** Enrolled IPs placement refused (see placeBySandbox). */
  refused: Placement['refused'];
}

export function ztunnelInfo(z: ZtunnelPlacement): ZtunnelInfo {
  return { ifindex: z.hostLink.ifindex, peerIfindex: z.peer.ifindex, mac: z.peer.mac, flags: ZtunnelFlags.PRESENT, netnsCookie: 0n };
}

/**
 * Without `placement`, each enrolled IP goes on the veth its host route names (static
 * membership: IPs without identity); with it, on the pod's bound sandbox.
 */
export function desiredState(
  enrolled: Iterable<string>,
  net: HostNet,
  ztunnel: ZtunnelPlacement | null,
  placement?: Placement,
  refs?: ReadonlyMap<string, EnrolledRef>,
): Desired {
  const pods = new Map<string, PodInfo>();
  const hooks = new Set<number>();
  const unplaced: string[] = placement ? [...placement.unplaced] : [];
  for (const ip of placement ? placement.links.keys() : enrolled) {
    const link = placement ? placement.links.get(ip) : hostLinkFor(net, ip);
    if (!link) {
      unplaced.push(ip);
      continue;
    }
    pods.set(ip, { ifindex: link.ifindex, mac: '00:00:00:00:00:00', flags: PodFlags.ENROLLED | (refs?.get(ip)?.flags ?? 0) });
    hooks.add(link.ifindex);
  }
  return { pods, ztunnel: ztunnel ? ztunnelInfo(ztunnel) : null, ztunnelPlacement: ztunnel, hooks, unplaced, refused: placement ? placement.refused : [] };
}

export interface PodDiff {
  upserts: Map<string, PodInfo>;
  deletes: string[];
}

/**
 * What to write and delete so that the kernel holds `desired`. `slots`: each veth's
 * counters slot (ebpf mode's, src/core/slots.ts), which every entry must carry (a veth
 * without one: 0); without it, entries carry the slot `desired` gives (iptables mode: none).
 * Only the entries written are copied.
 */
export function diffPods(desired: ReadonlyMap<string, PodInfo>, actual: ReadonlyMap<string, PodInfo>, slots?: ReadonlyMap<number, number>): PodDiff {
  const upserts = new Map<string, PodInfo>();
  for (const [ip, want] of desired) {
    const have = actual.get(ip);
    const slot = slots ? (slots.get(want.ifindex) ?? 0) : (want.slot ?? 0);
    if (have && have.ifindex === want.ifindex && have.mac === want.mac && have.flags === want.flags && (have.slot ?? 0) === slot) continue;
    upserts.set(ip, slots ? { ...want, slot } : want);
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
