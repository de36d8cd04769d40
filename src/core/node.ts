/**
 * What the node looks like to the core: its links and single-address routes as plain data
 * (host/netinfo.ts reads them from the kernel), and the one question the core asks of them.
 */
export interface Link {
  ifindex: number;
  name: string;
  mac: string;
  /** For a veth whose peer is in another netns: the peer's ifindex there. */
  peerIfindex?: number;
  /** ...and that netns' id as seen from here. */
  peerNetnsId?: number;
}

export interface HostNet {
  links: Map<number, Link>;
  /** Single-address routes (/32, /128) of the main table: pod IP -> link name. */
  hostRoutes: Map<string, string>;
  /** Named netns (from /var/run/netns) by their id as seen from here. */
  netnsById: Map<number, string>;
}

/** The host link a pod IP is routed to, or undefined. */
export function hostLinkFor(net: HostNet, ip: string): Link | undefined {
  const dev = net.hostRoutes.get(ip);
  if (!dev) return undefined;
  for (const l of net.links.values()) if (l.name === dev) return l;
  return undefined;
}
