/**
 * What the controller needs to know about the node's links and routes: this netns's read
 * in bulk over rtnetlink in-process (src/host/netlink.ts; no process per pass), another
 * netns's with one `ip -n NS -j` call (never one process per pod).
 */
import type { HostNet, Link } from '../core/node.js';
import { AF_INET, AF_INET6, dumpLinks, dumpRoutes, hostRoutes, netnsIds, type NlLink } from './netlink.js';
import type { CommandRunner } from './runner.js';
import { netnsPath, withNetns } from '../bpf/netns.js';

export type { HostNet, Link } from '../core/node.js';
export { hostLinkFor } from '../core/node.js';

interface IpLink {
  ifindex: number;
  ifname: string;
  address?: string;
  link_index?: number;
  link_netnsid?: number;
}
interface IpRoute {
  dst: string;
  dev?: string;
  type?: string;
}
interface IpNetns {
  name: string;
  id?: number;
}

function parseJson<T>(what: string, text: string): T[] {
  const trimmed = text.trim();
  if (trimmed === '') return [];
  const v: unknown = JSON.parse(trimmed);
  if (!Array.isArray(v)) throw new Error(`${what}: expected a JSON array`);
  return v as T[];
}

export function parseLinks(text: string): Map<number, Link> {
  const out = new Map<number, Link>();
  for (const l of parseJson<IpLink>('ip link', text)) {
    const link: Link = { ifindex: l.ifindex, name: l.ifname, mac: l.address ?? '00:00:00:00:00:00' };
    if (l.link_netnsid !== undefined && l.link_index !== undefined) {
      link.peerIfindex = l.link_index;
      link.peerNetnsId = l.link_netnsid;
    }
    out.set(l.ifindex, link);
  }
  return out;
}

export function parseHostRoutes(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const r of parseJson<IpRoute>('ip route', text)) {
    if (!r.dev || (r.type && r.type !== 'unicast')) continue;
    // `ip -j route` prints a host route's dst without a prefix length.
    if (r.dst.includes('/') || r.dst === 'default') continue;
    out.set(r.dst, r.dev);
  }
  return out;
}

export function parseNetns(text: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const n of parseJson<IpNetns>('ip netns', text)) if (n.id !== undefined) out.set(n.id, n.name);
  return out;
}

/** Links as the controller sees them (a veth's peer only when it lives in another netns). */
export function linksFromNetlink(links: readonly NlLink[]): Map<number, Link> {
  const out = new Map<number, Link>();
  for (const l of links) {
    const link: Link = { ifindex: l.ifindex, name: l.name, mac: l.mac ?? '00:00:00:00:00:00' };
    if (l.link !== undefined && l.link !== 0 && l.linkNetnsId !== undefined && l.linkNetnsId >= 0) {
      link.peerIfindex = l.link;
      link.peerNetnsId = l.linkNetnsId;
    }
    out.set(l.ifindex, link);
  }
  return out;
}

/**
 * This netns's links, main-table host routes and netns ids, over rtnetlink. `_runner` is
 * kept for the callers' shape (and the tests' fakes); nothing is spawned.
 */
export async function readHostNet(_runner?: CommandRunner): Promise<HostNet> {
  const nl = dumpLinks();
  const links = linksFromNetlink(nl);
  const routes = new Map<string, string>();
  for (const family of [AF_INET, AF_INET6] as const) {
    for (const [ip, oif] of hostRoutes(dumpRoutes(family))) {
      const dev = links.get(oif)?.name;
      if (dev) routes.set(ip, dev);
    }
  }
  return { links, hostRoutes: routes, netnsById: netnsIds() };
}

/**
 * The links of a named netns (for the MAC of ztunnel's eth0), over rtnetlink from inside
 * it: every pass asks, and an `ip -n` process per pass cost a fork of the agent (ms on a
 * busy node, on the event loop). `_runner` is kept for the callers' shape.
 */
export async function readLinksIn(_runner: CommandRunner, netns: string): Promise<Map<number, Link>> {
  return withNetns(netnsPath(netns), () => linksFromNetlink(dumpLinks()));
}

/** Each device's kind (`veth`, `netkit`, ...; null for none): over rtnetlink here, one `ip -d -j link show` in another netns. */
export async function linkKinds(runner: CommandRunner, netns?: string): Promise<Map<number, string | null>> {
  if (!netns) return new Map(dumpLinks().map((l) => [l.ifindex, l.kind ?? null]));
  const ns = ['-n', netns];
  const text = (await runner.run(['ip', ...ns, '-d', '-j', 'link', 'show'])).trim();
  const out = new Map<number, string | null>();
  if (text === '') return out;
  for (const l of JSON.parse(text) as { ifindex: number; linkinfo?: { info_kind?: string } }[]) out.set(l.ifindex, l.linkinfo?.info_kind ?? null);
  return out;
}
