import { describe, expect, it } from 'vitest';
import { hostLinkFor, parseHostRoutes, parseLinks, parseNetns } from '../../src/host/netinfo.js';

describe('ip -j parsing', () => {
  it('reads veth peers, host routes and netns ids', () => {
    const links = parseLinks(
      JSON.stringify([
        { ifindex: 1, ifname: 'lo', address: '00:00:00:00:00:00' },
        { ifindex: 4, link_index: 2, ifname: 'arp0', address: 'ee:3c:8f:a6:4e:d1', link_netnsid: 1 },
      ]),
    );
    expect(links.get(4)).toEqual({ ifindex: 4, name: 'arp0', mac: 'ee:3c:8f:a6:4e:d1', peerIfindex: 2, peerNetnsId: 1 });
    expect(links.get(1)?.peerIfindex).toBeUndefined();

    const routes = parseHostRoutes(
      JSON.stringify([
        { dst: 'default', gateway: '10.0.0.1', dev: 'eth0' },
        { dst: '198.19.0.0/24', dev: 'aro', scope: 'link' },
        { dst: '198.18.0.10', dev: 'arp0', scope: 'link' },
        { dst: '198.18.0.66', type: 'blackhole' },
      ]),
    );
    expect([...routes]).toEqual([['198.18.0.10', 'arp0']]);
    expect(parseNetns('[{"name":"a"},{"name":"b","id":1}]')).toEqual(new Map([[1, 'b']]));
    expect(hostLinkFor({ links, hostRoutes: routes, netnsById: new Map() }, '198.18.0.10')?.ifindex).toBe(4);
    expect(hostLinkFor({ links, hostRoutes: routes, netnsById: new Map() }, '198.18.0.11')).toBeUndefined();
  });

  it('treats empty output as no entries and rejects non-arrays', () => {
    expect(parseLinks('').size).toBe(0);
    expect(() => parseLinks('{}')).toThrow(/JSON array/);
  });
});
