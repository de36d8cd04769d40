/** Finding ztunnel on the node: its host veth, and its eth0 inside its own netns. */
import type { ZtunnelPlacement } from '../core/desired.js';
import { hostLinkFor, readLinksIn, type HostNet } from '../host/netinfo.js';
import type { CommandRunner } from '../host/runner.js';

export class ZtunnelNotFound extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ZtunnelNotFound';
  }
}

/**
 * Places ztunnel from its pod IP: the route to it names its host veth; the veth's peer
 * netns id names its netns (through /var/run/netns), where its eth0 has the MAC we need.
 */
export async function placeZtunnelByIp(ip: string, net: HostNet, runner: CommandRunner): Promise<ZtunnelPlacement> {
  const hostLink = hostLinkFor(net, ip);
  if (!hostLink) throw new ZtunnelNotFound(`no host route to ztunnel's IP ${ip}`);
  if (hostLink.peerIfindex === undefined || hostLink.peerNetnsId === undefined) {
    throw new ZtunnelNotFound(`${hostLink.name} (route to ztunnel ${ip}) is not a veth into another netns`);
  }
  const netns = net.netnsById.get(hostLink.peerNetnsId);
  if (!netns) throw new ZtunnelNotFound(`ztunnel's netns (id ${hostLink.peerNetnsId}) has no name under /var/run/netns`);
  const peer = (await readLinksIn(runner, netns)).get(hostLink.peerIfindex);
  if (!peer) throw new ZtunnelNotFound(`ztunnel's eth0 (ifindex ${hostLink.peerIfindex}) not found in netns ${netns}`);
  return { hostLink, peer, netns };
}
